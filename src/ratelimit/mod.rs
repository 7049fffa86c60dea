//! Rate limits per provider, cluster-wide: `rpm` / `tpm` mean at most that many requests
//! / tokens in any 60 s across the whole pool of workers. Owns admission to a provider
//! call; the worker asks before each call and says afterwards what the call used.
//!
//! - **Window**: each worker logs its own admissions ([`window::Log`]); an admission
//!   counts for 60 s plus `ratelimit.margin_ms` (the time between admission and the
//!   request reaching the provider). A sliding log, not a bucket: no burst above the
//!   limit in any window.
//! - **Shares**: workers announce themselves on `<prefix>.ctl.heartbeat` every
//!   `ratelimit.heartbeat_ms` ([`cluster`]) with their share and their log (and, for
//!   the console, their breakers that are not closed). A worker's
//!   share is the limit divided by the live members (the remainder to the lowest ids),
//!   and it admits only while (a) its own window holds fewer than its share and (b) its
//!   own window plus, for every other worker, the larger of that worker's share and its
//!   reported window, stays under the limit. (b) makes joins safe (a newcomer sees what
//!   the others used) and departures exact (a gone worker's reported log still counts
//!   until it leaves the window; only its unused share comes back, after
//!   `member_timeout_ms`). A share shrinks at once and grows only a heartbeat after it
//!   was announced, so the others always bound a worker by at least what it may use. A
//!   worker that does not hear its own heartbeat back for `member_timeout_ms` minus one
//!   heartbeat admits nothing: the others may have counted it gone.
//!   The one gap: a worker killed outright may have admitted calls after its last
//!   heartbeat (at most one heartbeat's worth); a worker that stops announces it leaves,
//!   with its log.
//! - **Tokens** are reserved at admission (input estimate + `max_tokens`) and corrected
//!   to what the call used ([`Permit::settle`]). A provider's rate-limit headers hold
//!   back further: a window it reports exhausted is not called until it resets, and one
//!   with `remaining` left gets at most `remaining / members` more from this worker
//!   until it resets.
//! - **Cool-down**: a 429 with a retry delay holds that provider+model on every worker
//!   (`<prefix>.ctl.cooldown`).
//! - **Waiting**: a job whose candidates are all at their limit waits for the earliest
//!   one, in a queue per provider ordered high → normal → low, within a priority the
//!   earliest `deadline` first (jobs without one after every deadline), first come first
//!   served among equals ([`Turn`]). Nothing here fails a job.
//!
//! Time is tokio's (`tokio::time::Instant`, `sleep`): tests run on a paused clock.

mod cluster;
#[cfg(test)]
mod tests;
mod window;

pub use cluster::{breaker_report, heartbeat_subject, BreakerFeed, Report, ReportBreaker};

use crate::config::Config;
use crate::job::Priority;
use crate::providers::ratelimit_headers::{RateReading, Window};
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use window::{Log, PeerLog};

/// The length of the window the limits are stated over.
pub const MINUTE: Duration = Duration::from_secs(60);

/// What one call asks of a provider: one request and `tokens` tokens.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub provider: &'a str,
    /// The upstream model id (holds and provider readings are per provider+model).
    pub model: &'a str,
    pub tokens: u64,
}

/// A waiting job's place in a provider's queue: its priority first (high → low), then
/// its deadline (earliest first; none: after every deadline), then its arrival. A job
/// without a deadline costs nothing more than its priority did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    priority: Priority,
    /// Milliseconds since the epoch; `i64::MAX` without a deadline.
    deadline_ms: i64,
}

impl Turn {
    pub fn new(priority: Priority, deadline: Option<DateTime<Utc>>) -> Turn {
        Turn {
            priority,
            deadline_ms: deadline.map_or(i64::MAX, |d| d.timestamp_millis()),
        }
    }

    /// The queue's order without the arrival.
    fn rank(self) -> (usize, i64) {
        (self.priority.index(), self.deadline_ms)
    }
}

impl From<Priority> for Turn {
    fn from(priority: Priority) -> Turn {
        Turn::new(priority, None)
    }
}

/// Requests and tokens of a limit, a share or a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Amount {
    requests: u64,
    tokens: u64,
}

impl Amount {
    fn min(self, o: Amount) -> Amount {
        Amount {
            requests: self.requests.min(o.requests),
            tokens: self.tokens.min(o.tokens),
        }
    }
    fn covers(self, o: Amount) -> bool {
        self.requests >= o.requests && self.tokens >= o.tokens
    }
}

/// `limit` split over `members`: `rank` (0-based, by worker id) gets the floor, plus one
/// when it is among the first `limit % members`, so the shares add up to the limit.
fn split(limit: u64, members: usize, rank: usize) -> u64 {
    let n = members.max(1) as u64;
    limit / n + u64::from((rank as u64) < limit % n)
}

struct ProviderState {
    rpm: Option<u64>,
    tpm: Option<u64>,
    log: Log,
    /// What this worker enforces on itself.
    share: Amount,
    /// What its last heartbeat told the others it may use.
    announced: Amount,
    /// Waiting jobs: ([`Turn::rank`], arrival) → how to wake that job. Only the first is
    /// woken when capacity may have come back (it wakes the next when it leaves), so a
    /// change costs the same with 10 or 10,000 jobs waiting.
    queue: BTreeMap<QueueKey, Arc<Notify>>,
}

impl ProviderState {
    fn limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }
    fn limit(&self) -> Amount {
        Amount {
            requests: self.rpm.unwrap_or(u64::MAX),
            tokens: self.tpm.unwrap_or(u64::MAX),
        }
    }
    /// Tokens an ask counts for: at least 1, at most the share (a call larger than the
    /// share would never fit; it goes when the window is empty).
    fn tokens_of(&self, asked: u64) -> u64 {
        match self.tpm {
            Some(_) => asked.clamp(1, self.share.tokens.max(1)),
            None => asked,
        }
    }
}

/// (priority index, deadline in ms or `i64::MAX`, arrival).
type QueueKey = (usize, i64, u64);

/// What another worker last said about one provider.
struct PeerLimit {
    share: Amount,
    log: PeerLog,
}

struct Peer {
    heard: Instant,
    leaving: bool,
    limits: HashMap<String, PeerLimit>,
}

impl Peer {
    fn live(&self, now: Instant, timeout: Duration) -> bool {
        !self.leaving && now < self.heard + timeout
    }
}

/// What a provider's headers said is left, for this worker, until when.
#[derive(Debug, Clone, Copy)]
struct Headroom {
    requests: Option<(u64, Instant)>,
    tokens: Option<(u64, Instant)>,
}

struct Me {
    id: String,
    clustered: bool,
    /// When this worker last heard its own heartbeat.
    echo: Instant,
    members: usize,
}

/// Values per provider and model, looked up by `&str`s (no key is built per call).
struct ByModel<V>(HashMap<String, HashMap<String, V>>);

impl<V> Default for ByModel<V> {
    fn default() -> Self {
        ByModel(HashMap::new())
    }
}

impl<V> ByModel<V> {
    fn get(&self, provider: &str, model: &str) -> Option<&V> {
        self.0.get(provider)?.get(model)
    }
    fn get_mut(&mut self, provider: &str, model: &str) -> Option<&mut V> {
        self.0.get_mut(provider)?.get_mut(model)
    }
    fn entry(
        &mut self,
        provider: &str,
        model: &str,
    ) -> std::collections::hash_map::Entry<'_, String, V> {
        if !self.0.contains_key(provider) {
            self.0.insert(provider.to_string(), HashMap::new());
        }
        self.0
            .get_mut(provider)
            .map(|m| m.entry(model.to_string()))
            .unwrap_or_else(|| unreachable!("inserted above"))
    }
    fn remove(&mut self, provider: &str, model: &str) {
        if let Some(m) = self.0.get_mut(provider) {
            m.remove(model);
        }
    }
}

struct State {
    providers: HashMap<String, ProviderState>,
    /// Provider+model held until then (cool-downs, exhausted windows).
    holds: ByModel<Instant>,
    headroom: ByModel<Headroom>,
    peers: HashMap<String, Peer>,
    me: Me,
    seq: u64,
    /// Times a waiting job woke up and looked at its queue (what waiting costs; the
    /// tests count it).
    looks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    window: Duration,
    heartbeat: Duration,
    member_timeout: Duration,
}

impl Timing {
    /// Longer than this without hearing itself and a worker admits nothing.
    fn self_hold(&self) -> Duration {
        self.member_timeout.saturating_sub(self.heartbeat)
    }
}

/// What a check found.
enum Check {
    Go,
    /// This provider+model is held until then (wait outside the queue).
    Held(Instant),
    /// The provider's limits are used up; something changes by then at the latest.
    Later(Instant),
}

struct Inner {
    timing: Timing,
    state: Mutex<State>,
    /// Permits alive: calls admitted and not yet settled.
    calling: AtomicUsize,
    /// Jobs waiting in a queue or out a hold.
    waiting: AtomicUsize,
    link: OnceLock<cluster::Link>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Capacity may have come back: wake the first job waiting for each provider (none
    /// when no job waits, the common case: one atomic load).
    fn changed(&self) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.lock().wake_heads();
    }
}

/// The limiters of every provider; cheap to clone (shared).
#[derive(Clone)]
pub struct Limiters {
    inner: Arc<Inner>,
}

/// One admitted call. Settle it with what the call used; dropping it keeps the full
/// reservation.
#[must_use = "settle the permit with the call's usage"]
pub struct Permit {
    inner: Arc<Inner>,
    provider: String,
    id: u64,
}

impl Permit {
    /// Correct the reserved tokens to `used` (what the provider reported), or keep the
    /// reservation when it reported nothing.
    pub fn settle(self, used: Option<u64>) {
        let Some(used) = used else { return };
        {
            let mut st = self.inner.lock();
            if let Some(p) = st.providers.get_mut(&self.provider) {
                if p.tpm.is_some() {
                    p.log.set_tokens(self.id, used.max(1));
                } else {
                    p.log.set_tokens(self.id, used);
                }
            }
        }
        self.inner.changed();
    }
}

impl Permit {
    /// The call was not made after all (the job turned out to be another delivery's, or
    /// over its budget): its admission no longer counts against the limits.
    pub fn cancel(self) {
        {
            let mut st = self.inner.lock();
            if let Some(p) = st.providers.get_mut(&self.provider) {
                p.log.remove(self.id);
            }
        }
        self.inner.changed();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.calling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a waiting job out of its queue however its wait ends.
struct Queued<'a> {
    inner: &'a Inner,
    provider: &'a str,
    key: QueueKey,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(p) = st.providers.get_mut(self.provider) {
            p.queue.remove(&self.key);
            // The next in line looks at the limits now: there may be room for it too.
            if let Some(next) = p.queue.values().next() {
                next.notify_one();
            }
        }
    }
}

/// Counts a job as waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl State {
    /// The most the other workers can have in the window of `provider` ending at `now`:
    /// a live worker the larger of its share and its reported window, a gone one its
    /// reported window. Also the next moment one of their entries leaves the window.
    fn others(&self, provider: &str, now: Instant, t: &Timing) -> (Amount, Option<Instant>) {
        let mut sum = Amount::default();
        let mut next: Option<Instant> = None;
        for peer in self.peers.values() {
            let Some(pl) = peer.limits.get(provider) else {
                continue;
            };
            let (r, tok) = pl.log.in_window(now, t.window);
            let (r, tok) = if peer.live(now, t.member_timeout) {
                (r.max(pl.share.requests), tok.max(pl.share.tokens))
            } else {
                (r, tok)
            };
            sum.requests = sum.requests.saturating_add(r);
            sum.tokens = sum.tokens.saturating_add(tok);
            next = min_opt(next, pl.log.next_expiry(now, t.window));
        }
        (sum, next)
    }

    fn check(&mut self, ask: &Ask<'_>, now: Instant, t: &Timing) -> Check {
        let (provider, model) = (ask.provider, ask.model);
        if let Some(until) = self.holds.get(provider, model).copied() {
            if until > now {
                return Check::Held(until);
            }
            self.holds.remove(provider, model);
        }
        if let Some(h) = self.headroom.get(provider, model).copied() {
            let mut live = false;
            if let Some((left, until)) = h.requests.filter(|(_, u)| *u > now) {
                live = true;
                if left == 0 {
                    return Check::Held(until);
                }
            }
            if let Some((left, until)) = h.tokens.filter(|(_, u)| *u > now) {
                live = true;
                if left < ask.tokens.max(1) {
                    return Check::Held(until);
                }
            }
            if !live {
                self.headroom.remove(provider, model);
            }
        }
        let (others, peers_next) = self.others(ask.provider, now, t);
        let clustered_and_unheard =
            self.me.clustered && now.saturating_duration_since(self.me.echo) > t.self_hold();
        let Some(p) = self.providers.get_mut(ask.provider) else {
            return Check::Go;
        };
        if !p.limited() {
            return Check::Go;
        }
        if clustered_and_unheard {
            return Check::Later(now + t.heartbeat);
        }
        p.log.prune(now, t.window);
        let later = || {
            let next = min_opt(p.log.next_expiry(t.window), peers_next);
            Check::Later(next.unwrap_or(now + t.heartbeat).min(now + t.heartbeat))
        };
        let limit = p.limit();
        let own = Amount {
            requests: p.log.requests(),
            tokens: p.log.tokens(),
        };
        let want = Amount {
            requests: 1,
            tokens: p.tokens_of(ask.tokens),
        };
        let fits = |mine: u64, want: u64, share: u64, others: u64, limit: u64| {
            mine.saturating_add(want) <= share
                && mine.saturating_add(want).saturating_add(others) <= limit
        };
        if p.rpm.is_some()
            && !fits(
                own.requests,
                want.requests,
                p.share.requests,
                others.requests,
                limit.requests,
            )
        {
            return later();
        }
        if p.tpm.is_some()
            && !fits(
                own.tokens,
                want.tokens,
                p.share.tokens,
                others.tokens,
                limit.tokens,
            )
        {
            return later();
        }
        Check::Go
    }

    /// Take what `ask` needs (after a [`Check::Go`]); returns the permit's id.
    fn take(&mut self, ask: &Ask<'_>, now: Instant) -> u64 {
        self.seq += 1;
        let id = self.seq;
        if let Some(p) = self.providers.get_mut(ask.provider) {
            if p.limited() {
                let tokens = p.tokens_of(ask.tokens);
                p.log.push(now, id, tokens);
            }
        }
        if let Some(h) = self.headroom.get_mut(ask.provider, ask.model) {
            if let Some((left, _)) = &mut h.requests {
                *left = left.saturating_sub(1);
            }
            if let Some((left, _)) = &mut h.tokens {
                *left = left.saturating_sub(ask.tokens);
            }
        }
        id
    }

    /// Someone whose turn is the same or earlier (priority, then deadline) is already
    /// waiting for `provider`.
    fn queued_ahead(&self, provider: &str, turn: Turn) -> bool {
        self.providers
            .get(provider)
            .and_then(|p| p.queue.keys().next())
            .is_some_and(|&(prio, deadline, _)| (prio, deadline) <= turn.rank())
    }

    /// Wake the first job of every provider's queue (a wake-up given while it is not
    /// listening is kept for it: none is lost).
    fn wake_heads(&self) {
        for p in self.providers.values() {
            if let Some(first) = p.queue.values().next() {
                first.notify_one();
            }
        }
    }

    fn hold(&mut self, provider: &str, model: &str, until: Instant) {
        let e = self.holds.entry(provider, model).or_insert(until);
        *e = (*e).max(until);
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Limiters {
    /// Limits from the config, for this worker alone until it joins a cluster
    /// ([`Limiters::join`]): then it shares them with the other workers.
    pub fn new(config: &Config) -> Limiters {
        let providers = config
            .providers
            .iter()
            .map(|p| {
                let rpm = p.rpm.map(u64::from);
                let tpm = p.tpm.map(u64::from);
                let full = Amount {
                    requests: rpm.unwrap_or(0),
                    tokens: tpm.unwrap_or(0),
                };
                let state = ProviderState {
                    rpm,
                    tpm,
                    log: Log::default(),
                    share: full,
                    announced: full,
                    queue: BTreeMap::new(),
                };
                (p.name.clone(), state)
            })
            .collect();
        let r = &config.ratelimit;
        let timing = Timing {
            window: MINUTE + Duration::from_millis(r.margin_ms),
            heartbeat: Duration::from_millis(r.heartbeat_ms.max(1)),
            member_timeout: Duration::from_millis(r.member_timeout_ms.max(1)),
        };
        Limiters {
            inner: Arc::new(Inner {
                timing,
                state: Mutex::new(State {
                    providers,
                    holds: ByModel::default(),
                    headroom: ByModel::default(),
                    peers: HashMap::new(),
                    me: Me {
                        id: String::new(),
                        clustered: false,
                        echo: Instant::now(),
                        members: 1,
                    },
                    seq: 0,
                    looks: 0,
                }),
                calling: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                link: OnceLock::new(),
            }),
        }
    }

    /// A config reload: each provider's `rpm` / `tpm` become the new ones (a new provider
    /// gets its own state). Alone, this worker enforces them at once; in a cluster its
    /// next heartbeat splits them again (a lower limit binds from then on). What was
    /// used in the window still counts.
    pub fn reconfigure(&self, config: &Config) {
        let mut st = self.inner.lock();
        let clustered = st.me.clustered;
        for p in &config.providers {
            let rpm = p.rpm.map(u64::from);
            let tpm = p.tpm.map(u64::from);
            let full = Amount {
                requests: rpm.unwrap_or(0),
                tokens: tpm.unwrap_or(0),
            };
            let state = st
                .providers
                .entry(p.name.clone())
                .or_insert_with(|| ProviderState {
                    rpm,
                    tpm,
                    log: Log::default(),
                    share: if clustered { Amount::default() } else { full },
                    announced: if clustered { Amount::default() } else { full },
                    queue: BTreeMap::new(),
                });
            state.rpm = rpm;
            state.tpm = tpm;
            if !clustered {
                state.share = full;
                state.announced = full;
            }
        }
        drop(st);
        self.inner.changed();
    }

    /// Calls admitted and not yet settled (permits alive).
    pub fn calling(&self) -> usize {
        self.inner.calling.load(Ordering::Relaxed)
    }

    /// How many times waiting jobs woke up and looked at their queue.
    #[cfg(test)]
    fn looks(&self) -> u64 {
        self.inner.lock().looks
    }

    /// Jobs waiting for capacity right now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Learn from a provider's rate-limit headers: a window it reports exhausted is not
    /// called again until it resets; one with `remaining` left gets at most
    /// `remaining / members` more calls (tokens) from this worker until it resets.
    pub fn observe(&self, provider: &str, model: &str, reading: Option<&RateReading>) {
        let Some(reading) = reading else { return };
        let now = Instant::now();
        {
            let mut st = self.inner.lock();
            if let Some(hold) = reading.hold_off() {
                st.hold(provider, model, now + hold);
            }
            let members = st.me.members.max(1) as u64;
            let part = |w: &Window| match (w.remaining, w.reset) {
                (Some(left), Some(reset)) if left > 0 => Some((left / members, now + reset)),
                _ => None,
            };
            let h = Headroom {
                requests: part(&reading.requests),
                tokens: part(&reading.tokens),
            };
            if h.requests.is_some() || h.tokens.is_some() {
                st.headroom.entry(provider, model).insert_entry(h);
            } else {
                st.headroom.remove(provider, model);
            }
        }
        self.inner.changed();
    }

    /// A 429 asked to wait `retry_after`: hold `provider`/`model` that long here and on
    /// every other worker.
    pub async fn cool_down(&self, provider: &str, model: &str, retry_after: Option<Duration>) {
        let Some(d) = retry_after.filter(|d| !d.is_zero()) else {
            return;
        };
        self.inner.lock().hold(provider, model, Instant::now() + d);
        if let Some(link) = self.inner.link.get() {
            link.announce_cooldown(provider, model, d).await;
        }
    }

    /// Admit one call to `ask`, waiting as long as it takes (drop the future to give up).
    pub async fn admit(&self, ask: Ask<'_>, turn: impl Into<Turn>) -> Permit {
        let turn = turn.into();
        loop {
            if let Some((_, permit)) = self.admit_first(&[ask], turn).await {
                return permit;
            }
        }
    }

    /// Admit a call to the first of `asks` (in order) that the limits let go now; when
    /// none can, wait for the one expected to be free first, in its `turn`. Returns its
    /// index and the permit; `None` only when `asks` is empty. Drop the future to give up.
    pub async fn admit_first(
        &self,
        asks: &[Ask<'_>],
        turn: impl Into<Turn>,
    ) -> Option<(usize, Permit)> {
        let turn = turn.into();
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let (i, when, held) = match self.scan(asks, turn) {
                Ok(admitted) => return Some(admitted),
                Err(earliest) => earliest?,
            };
            waiting.get_or_insert_with(|| Waiting::new(&self.inner.waiting));
            if held {
                tokio::time::sleep_until(when).await;
                continue;
            }
            if let Some(permit) = self.wait_in_queue(&asks[i], turn).await {
                return Some((i, permit));
            }
        }
    }

    /// Admit a call to the first of `asks` (in order) that the limits let go right now,
    /// without waiting (a hedge, which is made only when it need not wait). `None`: none
    /// can go now.
    pub fn try_admit_first(
        &self,
        asks: &[Ask<'_>],
        turn: impl Into<Turn>,
    ) -> Option<(usize, Permit)> {
        self.scan(asks, turn.into()).ok()
    }

    /// Admit the first of `asks` that may go now, or say which is expected to be free
    /// first: (index, when, held outside the queue); `None` inside when `asks` is empty.
    #[allow(clippy::type_complexity)]
    fn scan(
        &self,
        asks: &[Ask<'_>],
        turn: Turn,
    ) -> Result<(usize, Permit), Option<(usize, Instant, bool)>> {
        let t = self.inner.timing;
        let now = Instant::now();
        let mut earliest: Option<(usize, Instant, bool)> = None;
        let mut st = self.inner.lock();
        for (i, ask) in asks.iter().enumerate() {
            let found = if st.queued_ahead(ask.provider, turn) {
                Check::Later(now)
            } else {
                st.check(ask, now, &t)
            };
            let (when, held) = match found {
                Check::Go => {
                    let id = st.take(ask, now);
                    drop(st);
                    return Ok((i, self.permit(ask.provider, id)));
                }
                Check::Held(until) => (until, true),
                Check::Later(at) => (at, false),
            };
            if earliest.is_none_or(|(_, w, _)| when < w) {
                earliest = Some((i, when, held));
            }
        }
        Err(earliest)
    }

    /// Wait in `ask.provider`'s queue until this job is first and the limits let it go.
    /// `None`: its model became held meanwhile (the caller waits that out, then asks
    /// again).
    async fn wait_in_queue(&self, ask: &Ask<'_>, turn: Turn) -> Option<Permit> {
        let t = self.inner.timing;
        let wake = Arc::new(Notify::new());
        let key = {
            let mut st = self.inner.lock();
            st.seq += 1;
            let (priority, deadline) = turn.rank();
            let key = (priority, deadline, st.seq);
            st.providers
                .get_mut(ask.provider)?
                .queue
                .insert(key, wake.clone());
            key
        };
        let queued = Queued {
            inner: &self.inner,
            provider: ask.provider,
            key,
        };
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let next = {
                let mut st = self.inner.lock();
                st.looks += 1;
                let first = st
                    .providers
                    .get(ask.provider)
                    .and_then(|p| p.queue.keys().next())
                    == Some(&key);
                if first {
                    match st.check(ask, now, &t) {
                        Check::Go => {
                            let id = st.take(ask, now);
                            drop(st);
                            // The queue guard takes it out and wakes the next one.
                            drop(queued);
                            return Some(self.permit(ask.provider, id));
                        }
                        Check::Held(_) => return None,
                        Check::Later(at) => Some(at),
                    }
                } else {
                    None
                }
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn permit(&self, provider: &str, id: u64) -> Permit {
        self.inner.calling.fetch_add(1, Ordering::Relaxed);
        Permit {
            inner: self.inner.clone(),
            provider: provider.to_string(),
            id,
        }
    }
}
