//! Shared simulator state: profile (and when it took effect, for outage windows),
//! counters, the request log, per-model rate windows and `fail_first` counts. Every
//! lock here is a short std `Mutex`/`RwLock` section, never held across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::log::{LogEntry, RequestLog, DEFAULT_LOG_CAPACITY};
use super::{FaultProfile, Knobs, Stats};

/// Request limit reported in headers when the profile sets no `rpm`.
pub(crate) const DEFAULT_RPM: u64 = 10_000;
/// Token limit reported in headers when the profile sets no `tpm`.
pub(crate) const DEFAULT_TPM: u64 = 10_000_000;
/// Length of a rate-limit window.
const WINDOW: Duration = Duration::from_secs(60);

/// Why a valid request is not answered normally.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fault {
    /// The simulator's own `rpm` / `tpm` limit was hit.
    RateLimited {
        /// `true` for the token limit, `false` for the request limit.
        tokens: bool,
        limit: u64,
        used: u64,
        requested: u64,
        retry_after_s: u64,
    },
    /// `fail_first` or `error_rate` injected `status`.
    Injected { status: u16, retry_after_s: u64 },
}

/// Rate-limit state of one `<api>/<model>` window, for response headers.
#[derive(Clone, Debug)]
pub(crate) struct RateSnapshot {
    pub requests_limit: u64,
    pub requests_remaining: u64,
    pub tokens_limit: u64,
    pub tokens_remaining: u64,
    /// Time until the window (and so both limits) resets.
    pub reset: Duration,
}

#[derive(Debug)]
struct ModelState {
    window_start: Instant,
    requests: u64,
    tokens: u64,
    /// Requests that reached the fault stage since the profile was set.
    fault_seen: u64,
    /// Streamed answers started since the profile was set (`stream_fail_first`).
    streams_seen: u64,
}

impl ModelState {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            requests: 0,
            tokens: 0,
            fault_seen: 0,
            streams_seen: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.requests = 0;
            self.tokens = 0;
        }
    }

    fn snapshot(&self, knobs: &Knobs, now: Instant) -> RateSnapshot {
        let rl = knobs.rpm.unwrap_or(DEFAULT_RPM);
        let tl = knobs.tpm.unwrap_or(DEFAULT_TPM);
        RateSnapshot {
            requests_limit: rl,
            requests_remaining: rl.saturating_sub(self.requests),
            tokens_limit: tl,
            tokens_remaining: tl.saturating_sub(self.tokens),
            reset: WINDOW.saturating_sub(now.duration_since(self.window_start)),
        }
    }
}

/// The current profile and the moment it took effect (outage windows count from it).
struct Active {
    profile: Arc<FaultProfile>,
    since: Instant,
}

pub(super) struct Inner {
    profile: RwLock<Active>,
    total: AtomicU64,
    by_key: Mutex<BTreeMap<String, u64>>,
    models: Mutex<HashMap<String, ModelState>>,
    release: Mutex<CancellationToken>,
    log: RequestLog,
}

fn log_capacity(profile: &FaultProfile) -> usize {
    profile.log_capacity.unwrap_or(DEFAULT_LOG_CAPACITY)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whole seconds until `d` has passed, at least 1.
fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl Inner {
    pub(super) fn new(profile: FaultProfile) -> Self {
        let log = RequestLog::new(log_capacity(&profile));
        Self {
            profile: RwLock::new(Active {
                profile: Arc::new(profile),
                since: Instant::now(),
            }),
            total: AtomicU64::new(0),
            by_key: Mutex::new(BTreeMap::new()),
            models: Mutex::new(HashMap::new()),
            release: Mutex::new(CancellationToken::new()),
            log,
        }
    }

    pub(super) fn profile(&self) -> Arc<FaultProfile> {
        self.profile_since().0
    }

    /// The profile and the moment it took effect.
    pub(super) fn profile_since(&self) -> (Arc<FaultProfile>, Instant) {
        let guard = self.profile.read().unwrap_or_else(|e| e.into_inner());
        (Arc::clone(&guard.profile), guard.since)
    }

    pub(super) fn set_profile(&self, profile: FaultProfile) {
        self.log.set_capacity(log_capacity(&profile));
        {
            let mut guard = self.profile.write().unwrap_or_else(|e| e.into_inner());
            *guard = Active {
                profile: Arc::new(profile),
                since: Instant::now(),
            };
        }
        for state in lock(&self.models).values_mut() {
            state.fault_seen = 0;
            state.streams_seen = 0;
        }
    }

    /// Outage windows of the current profile count from now (the server starts).
    fn restart_clock(&self) {
        let mut guard = self.profile.write().unwrap_or_else(|e| e.into_inner());
        guard.since = Instant::now();
    }

    pub(super) fn log(&self, entry: LogEntry) {
        self.log.push(entry);
    }

    pub(super) fn log_newest(&self, limit: usize) -> Vec<LogEntry> {
        self.log.newest(limit)
    }

    pub(super) fn reset(&self) {
        // Hold the counter lock while zeroing the total so that a snapshot never sees
        // a total that disagrees with the map.
        let mut by_key = lock(&self.by_key);
        by_key.clear();
        self.total.store(0, Ordering::Relaxed);
        drop(by_key);
        lock(&self.models).clear();
        self.log.clear();
    }

    pub(super) fn record(&self, key: &str, status: &str) {
        let full = format!("{key}/{status}");
        let mut by_key = lock(&self.by_key);
        self.total.fetch_add(1, Ordering::Relaxed);
        match by_key.get_mut(&full) {
            Some(n) => *n += 1,
            None => {
                by_key.insert(full, 1);
            }
        }
    }

    pub(super) fn stats(&self) -> Stats {
        let by_key = lock(&self.by_key);
        Stats {
            total: self.total.load(Ordering::Relaxed),
            by_key: by_key.clone(),
        }
    }

    /// The token that releases held (hanging or sleeping) requests at shutdown.
    pub(super) fn release_token(&self) -> CancellationToken {
        lock(&self.release).clone()
    }

    /// Release every held request. The token stays cancelled (later requests are not
    /// held either) until the next [`Inner::arm`].
    pub(super) fn release_held(&self) {
        lock(&self.release).cancel();
    }

    /// The server starts: hold requests again (a new `serve` after an earlier
    /// shutdown) and count outage windows from now.
    pub(super) fn arm(&self) {
        {
            let mut token = lock(&self.release);
            if token.is_cancelled() {
                *token = CancellationToken::new();
            }
        }
        self.restart_clock();
    }

    pub(super) fn peek(&self, key: &str, knobs: &Knobs) -> RateSnapshot {
        let now = Instant::now();
        let mut models = lock(&self.models);
        match models.get_mut(key) {
            Some(state) => {
                state.roll(now);
                state.snapshot(knobs, now)
            }
            None => ModelState::new(now).snapshot(knobs, now),
        }
    }

    pub(super) fn commit_tokens(&self, key: &str, tokens: u64) {
        if let Some(state) = lock(&self.models).get_mut(key) {
            state.tokens = state.tokens.saturating_add(tokens);
        }
    }

    /// Whether the streamed answer starting now breaks mid-way (`stream_fail_first`,
    /// `stream_error_rate`).
    pub(super) fn stream_breaks(&self, key: &str, knobs: &Knobs) -> bool {
        let now = Instant::now();
        let mut models = lock(&self.models);
        let state = models
            .entry(key.to_owned())
            .or_insert_with(|| ModelState::new(now));
        state.streams_seen += 1;
        state.streams_seen <= knobs.stream_fail_first
            || (knobs.stream_error_rate > 0.0 && rand::random::<f64>() < knobs.stream_error_rate)
    }

    pub(super) fn check_faults(
        &self,
        key: &str,
        knobs: &Knobs,
        prompt_tokens: u64,
    ) -> (Option<Fault>, RateSnapshot) {
        let now = Instant::now();
        let mut models = lock(&self.models);
        let state = models
            .entry(key.to_owned())
            .or_insert_with(|| ModelState::new(now));
        state.roll(now);
        let retry_real = ceil_secs(WINDOW.saturating_sub(now.duration_since(state.window_start)));
        if let Some(rpm) = knobs.rpm {
            if state.requests >= rpm {
                let fault = Fault::RateLimited {
                    tokens: false,
                    limit: rpm,
                    used: state.requests,
                    requested: 1,
                    retry_after_s: retry_real,
                };
                return (Some(fault), state.snapshot(knobs, now));
            }
        }
        if let Some(tpm) = knobs.tpm {
            if state.tokens.saturating_add(prompt_tokens) > tpm {
                let fault = Fault::RateLimited {
                    tokens: true,
                    limit: tpm,
                    used: state.tokens,
                    requested: prompt_tokens,
                    retry_after_s: retry_real,
                };
                return (Some(fault), state.snapshot(knobs, now));
            }
        }
        state.requests += 1;
        state.tokens = state.tokens.saturating_add(prompt_tokens);
        state.fault_seen += 1;
        let injected = state.fault_seen <= knobs.fail_first
            || (knobs.error_rate > 0.0 && rand::random::<f64>() < knobs.error_rate);
        let fault = injected.then_some(Fault::Injected {
            status: knobs.error_status,
            retry_after_s: knobs.retry_after_s,
        });
        (fault, state.snapshot(knobs, now))
    }
}

/// OpenAI's reset format: `"17ms"`, `"1s"`, `"7.66s"`, `"6m0s"`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mins = ms / 60_000;
    let rest_ms = ms % 60_000;
    let secs = if rest_ms % 1000 == 0 {
        format!("{}s", rest_ms / 1000)
    } else {
        let s = format!("{:.3}", rest_ms as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    };
    if mins > 0 {
        format!("{mins}m{secs}")
    } else {
        secs
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn knobs(profile: &FaultProfile) -> Knobs {
        Knobs::resolve(profile, "m")
    }

    #[test]
    fn go_duration_formats_like_openai() {
        assert_eq!(go_duration(Duration::from_millis(17)), "17ms");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(7660)), "7.66s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(61_500)), "1m1.5s");
    }

    #[test]
    fn fail_first_then_success_and_restart_on_set_profile() {
        let p = FaultProfile {
            fail_first: 2,
            error_status: 503,
            ..Default::default()
        };
        let inner = Inner::new(p.clone());
        let k = knobs(&p);
        let outcomes: Vec<bool> = (0..4)
            .map(|_| inner.check_faults("openai/m", &k, 10).0.is_some())
            .collect();
        assert_eq!(outcomes, vec![true, true, false, false]);
        // Another model has its own count.
        assert!(inner.check_faults("openai/other", &k, 10).0.is_some());
        inner.set_profile(p);
        assert_eq!(
            inner.check_faults("openai/m", &k, 10).0,
            Some(Fault::Injected {
                status: 503,
                retry_after_s: 1
            })
        );
    }

    #[test]
    fn rpm_and_tpm_limits() {
        let p = FaultProfile {
            rpm: Some(2),
            tpm: Some(100),
            ..Default::default()
        };
        let inner = Inner::new(p.clone());
        let k = knobs(&p);
        let (f, snap) = inner.check_faults("k", &k, 10);
        assert!(f.is_none());
        assert_eq!((snap.requests_limit, snap.requests_remaining), (2, 1));
        assert_eq!(snap.tokens_remaining, 90);
        let (f, _) = inner.check_faults("k", &k, 95);
        assert!(matches!(f, Some(Fault::RateLimited { tokens: true, .. })));
        assert!(inner.check_faults("k", &k, 10).0.is_none());
        let (f, snap) = inner.check_faults("k", &k, 10);
        match f {
            Some(Fault::RateLimited {
                tokens: false,
                limit: 2,
                used: 2,
                retry_after_s,
                ..
            }) => assert!((1..=60).contains(&retry_after_s)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(snap.requests_remaining, 0);
        inner.reset();
        assert!(inner.check_faults("k", &k, 10).0.is_none());
    }

    #[test]
    fn error_rate_one_always_fails_zero_never() {
        let always = FaultProfile {
            error_rate: 1.0,
            ..Default::default()
        };
        let inner = Inner::new(always.clone());
        let k = knobs(&always);
        assert!((0..20).all(|_| inner.check_faults("k", &k, 1).0.is_some()));
        let k = knobs(&FaultProfile::default());
        assert!((0..20).all(|_| inner.check_faults("k2", &k, 1).0.is_none()));
    }

    #[test]
    fn record_counts_and_total() {
        let inner = Inner::new(FaultProfile::default());
        inner.record("openai/m", "200");
        inner.record("openai/m", "200");
        inner.record("openai/m", "400");
        let s = inner.stats();
        assert_eq!(s.total, 3);
        assert_eq!(s.by_key.get("openai/m/200"), Some(&2));
        assert_eq!(s.calls("openai", "m"), 3);
    }
}
