//! One provider+model's circuit breaker, its 429 cool-down, its latency average and its
//! latency histogram.
//!
//! Closed: calls go ahead, and each answer lands in a ring of one-second buckets. A
//! server-side failure (5xx, overloaded, timeout, connection error, an unusable body)
//! opens the breaker when it makes `consecutive_failures` in a row, or when the window
//! holds at least `min_calls` calls of which at least `error_rate` failed. Open: every
//! call is skipped for the open period. Then half-open: `half_open_probes` calls at a
//! time go ahead; a success closes the breaker (with a clean window), a failure opens it
//! again for twice as long (up to `max_open_s`). Client errors (4xx: bad request, auth,
//! context too long, quota, content filter) say nothing about the server's health and
//! count neither way. A 429 does not count either: it starts a cool-down until its
//! Retry-After (1 s without one), during which the model is skipped like an open one.
//!
//! Time is `tokio::time::Instant`, passed in, so tests run on a paused clock.

use super::latency::Histogram;
use crate::config::HealthConfig;
use crate::providers::FailureClass;
use std::time::Duration;
use tokio::time::Instant;

/// Breaker states, with the value of the `switchyard_breaker_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl State {
    pub const ALL: [State; 3] = [State::Closed, State::HalfOpen, State::Open];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// May a call to this provider+model be made now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Go,
    /// Half-open: go ahead as the probe; its outcome decides the breaker's state.
    /// Its outcome must be recorded (`CallOutcome::Abandoned` when no call is made).
    Probe,
    /// Do not call; the model may be called again in about this long.
    Skip(SkipReason, Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The breaker is open.
    Open,
    /// Half-open, and its probes are all under way.
    Probing,
    /// The provider answered 429 and its Retry-After has not passed.
    CoolingDown,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Open => "breaker_open",
            SkipReason::Probing => "breaker_probing",
            SkipReason::CoolingDown => "cooling_down",
        }
    }
}

/// What became of a call that was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Succeeded,
    Failed {
        class: FailureClass,
        retry_after: Option<Duration>,
    },
    /// No answer to judge by: after all no call was made (the local rate limit, the
    /// worker stopping), or it was cut short by us.
    Abandoned,
}

/// Does this failure say the provider's side is unwell?
pub fn counts_as_failure(class: FailureClass) -> bool {
    matches!(
        class,
        FailureClass::ServerError
            | FailureClass::Overloaded
            | FailureClass::Timeout
            | FailureClass::Connection
    )
}

/// The `[health]` section, checked and in the units the breaker uses.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub enabled: bool,
    pub window_s: u64,
    pub min_calls: u32,
    pub error_rate: f64,
    pub consecutive_failures: u32,
    pub open: Duration,
    pub max_open: Duration,
    pub half_open_probes: u32,
    pub ewma_alpha: f64,
}

impl Settings {
    pub fn from_config(c: &HealthConfig) -> Settings {
        Settings {
            enabled: c.enabled,
            window_s: c.window_s.max(1),
            min_calls: c.min_calls.max(1),
            error_rate: c.error_rate,
            consecutive_failures: c.consecutive_failures.max(1),
            open: Duration::from_secs(c.open_s.max(1)),
            max_open: Duration::from_secs(c.max_open_s.max(c.open_s).max(1)),
            half_open_probes: c.half_open_probes.max(1),
            ewma_alpha: c.ewma_alpha,
        }
    }
}

/// A change of state, for the registry to log and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the breaker's epoch that this bucket holds.
    sec: u64,
    ok: u32,
    failed: u32,
}

/// How long a skipped caller is told to wait while the probes are under way.
const PROBING_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Breaker {
    state: State,
    /// Open: until when.
    open_until: Instant,
    /// The current open period (doubled by each failed probe).
    open_for: Duration,
    /// Half-open: probes admitted and not yet recorded, and when the last was admitted.
    probes_out: u32,
    probe_at: Instant,
    consecutive: u32,
    cool_until: Option<Instant>,
    buckets: Box<[Bucket]>,
    epoch: Instant,
    ewma_s: Option<f64>,
    /// Successful calls' latencies, and hedged calls cut short at the time they ran, for
    /// quantiles (the hedge delay).
    latency: Histogram,
    /// Transitions into each state, indexed by `State as usize`.
    transitions: [u64; 3],
    /// When the state last changed, and why (for the heartbeat's breaker notes).
    changed_at: Instant,
    reason: String,
}

/// A breaker as the heartbeat tells it (see [`Breaker::look`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    /// The state as seen now (an open breaker whose time is up is half-open).
    pub state: State,
    /// Since when it is in its state (the last change; the breaker's creation if none).
    pub since: Instant,
    /// Failures in a row counted so far.
    pub failures: u32,
    /// Open: when it may be probed.
    pub open_until: Option<Instant>,
    /// A 429's cool-down: until when.
    pub cool_until: Option<Instant>,
    /// Why it last changed state (empty if it never did).
    pub reason: String,
}

impl Breaker {
    pub fn new(s: &Settings, now: Instant) -> Breaker {
        Breaker {
            state: State::Closed,
            open_until: now,
            open_for: s.open,
            probes_out: 0,
            probe_at: now,
            consecutive: 0,
            cool_until: None,
            buckets: vec![Bucket::default(); s.window_s as usize].into_boxed_slice(),
            epoch: now,
            ewma_s: None,
            latency: Histogram::new(now),
            transitions: [0; 3],
            changed_at: now,
            reason: String::new(),
        }
    }

    pub fn allow(&mut self, s: &Settings, now: Instant) -> (Admit, Option<Transition>) {
        if !s.enabled {
            return (Admit::Go, None);
        }
        let cooling = self.cool_until.filter(|&u| u > now);
        if self.state == State::Open && now < self.open_until {
            let until = cooling.map_or(self.open_until, |c| c.max(self.open_until));
            return (Admit::Skip(SkipReason::Open, until - now), None);
        }
        if let Some(c) = cooling {
            return (Admit::Skip(SkipReason::CoolingDown, c - now), None);
        }
        let mut change = None;
        if self.state == State::Open {
            let waited = self.open_for.as_secs();
            change = Some(self.set(
                State::HalfOpen,
                format!("open for {waited} s: probing"),
                now,
            ));
        }
        match self.state {
            State::Closed => (Admit::Go, change),
            _ => {
                // A probe whose outcome never came (its task was dropped) is given up
                // after the longest open period, so the breaker cannot stick half-open.
                if self.probes_out > 0 && now.duration_since(self.probe_at) > s.max_open {
                    self.probes_out = 0;
                }
                if self.probes_out >= s.half_open_probes {
                    return (Admit::Skip(SkipReason::Probing, PROBING_RETRY), change);
                }
                self.probes_out += 1;
                self.probe_at = now;
                (Admit::Probe, change)
            }
        }
    }

    pub fn record(
        &mut self,
        s: &Settings,
        outcome: CallOutcome,
        latency: Duration,
        now: Instant,
    ) -> Option<Transition> {
        match outcome {
            CallOutcome::Succeeded => {
                let x = latency.as_secs_f64();
                self.ewma_s = Some(match self.ewma_s {
                    Some(e) => s.ewma_alpha * x + (1.0 - s.ewma_alpha) * e,
                    None => x,
                });
                self.latency.record(latency, now);
                if !s.enabled {
                    return None;
                }
                self.bucket(now).ok += 1;
                self.consecutive = 0;
                if self.state == State::HalfOpen {
                    self.clear_window();
                    self.open_for = s.open;
                    return Some(self.set(State::Closed, "probe succeeded".into(), now));
                }
                None
            }
            CallOutcome::Failed { class, .. } if s.enabled && counts_as_failure(class) => {
                self.bucket(now).failed += 1;
                self.consecutive = self.consecutive.saturating_add(1);
                match self.state {
                    State::HalfOpen => {
                        self.open_for = (self.open_for * 2).min(s.max_open);
                        self.open_until = now + self.open_for;
                        let secs = self.open_for.as_secs();
                        Some(self.set(
                            State::Open,
                            format!("probe failed ({}): open {secs} s", class.as_str()),
                            now,
                        ))
                    }
                    State::Closed => {
                        let reason = self.trips(s, now)?;
                        self.open_for = s.open;
                        self.open_until = now + self.open_for;
                        Some(self.set(State::Open, reason, now))
                    }
                    State::Open => None,
                }
            }
            CallOutcome::Failed {
                class: FailureClass::RateLimited,
                retry_after,
            } if s.enabled => {
                let d = retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(s.max_open);
                let until = now + d;
                self.cool_until = Some(self.cool_until.map_or(until, |c| c.max(until)));
                self.release_probe();
                None
            }
            // A client error, or no answer at all: the probe slot is free again.
            _ => {
                self.release_probe();
                None
            }
        }
    }

    /// Why the window's failures open the breaker, if they do.
    fn trips(&self, s: &Settings, now: Instant) -> Option<String> {
        if self.consecutive >= s.consecutive_failures {
            return Some(format!("{} failures in a row", self.consecutive));
        }
        let (ok, failed) = self.window(now);
        let total = ok + failed;
        if total >= u64::from(s.min_calls) && failed as f64 >= s.error_rate * total as f64 {
            return Some(format!(
                "{failed} of {total} calls failed in {} s",
                s.window_s
            ));
        }
        None
    }

    fn release_probe(&mut self) {
        if self.state == State::HalfOpen {
            self.probes_out = self.probes_out.saturating_sub(1);
        }
    }

    fn set(&mut self, to: State, reason: String, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        self.probes_out = 0;
        self.transitions[to as usize] += 1;
        self.changed_at = now;
        self.reason.clone_from(&reason);
        Transition { from, to, reason }
    }

    fn sec(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_secs()
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let sec = self.sec(now);
        let n = self.buckets.len() as u64;
        let b = &mut self.buckets[(sec % n) as usize];
        if b.sec != sec {
            *b = Bucket {
                sec,
                ok: 0,
                failed: 0,
            };
        }
        b
    }

    /// (succeeded, failed) calls in the window ending now.
    fn window(&self, now: Instant) -> (u64, u64) {
        let sec = self.sec(now);
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.sec <= sec && b.sec + n > sec)
            .fold((0, 0), |(ok, f), b| {
                (ok + u64::from(b.ok), f + u64::from(b.failed))
            })
    }

    fn clear_window(&mut self) {
        self.buckets.fill(Bucket::default());
        self.consecutive = 0;
    }

    /// The state as seen now: an open breaker whose period is over is half-open (it
    /// becomes so on the next call).
    pub fn state(&self, now: Instant) -> State {
        if self.state == State::Open && now >= self.open_until {
            State::HalfOpen
        } else {
            self.state
        }
    }

    /// Until when a call would be skipped (open, cooling down, or probes all out).
    pub fn blocked_until(&self, s: &Settings, now: Instant) -> Option<Instant> {
        if !s.enabled {
            return None;
        }
        let open = (self.state == State::Open && now < self.open_until).then_some(self.open_until);
        let cool = self.cool_until.filter(|&c| c > now);
        let probing = (self.state == State::HalfOpen && self.probes_out >= s.half_open_probes)
            .then(|| now + PROBING_RETRY);
        [open, cool, probing].into_iter().flatten().max()
    }

    pub fn ewma(&self) -> Option<Duration> {
        self.ewma_s
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    }

    /// A hedged call cut short after `at_least` (see `Health::record_cut`).
    pub fn record_cut(&mut self, at_least: Duration, now: Instant) {
        self.latency.record(at_least, now);
    }

    /// The `q` latency quantile (0..1) of the successful calls of the last one to two
    /// minutes; `None` until there are enough of them.
    pub fn quantile(&mut self, q: f64, now: Instant) -> Option<Duration> {
        self.latency.quantile(q, now)
    }

    pub fn transitions(&self) -> [u64; 3] {
        self.transitions
    }

    /// The breaker as the heartbeat tells it, read now. An open breaker whose time is
    /// up reads half-open since its open period ended.
    pub fn look(&self, now: Instant) -> Look {
        let state = self.state(now);
        let since = if state == self.state {
            self.changed_at
        } else {
            self.open_until
        };
        Look {
            state,
            since,
            failures: self.consecutive,
            open_until: (state == State::Open).then_some(self.open_until),
            cool_until: self.cool_until.filter(|&c| c > now),
            reason: self.reason.clone(),
        }
    }
}
