//! Sliding-window logs, pure: this worker's own admissions of one provider ([`Log`]),
//! and what another worker last reported of its own ([`PeerLog`]). An entry counts for
//! exactly one window (60 s plus the configured margin) from its admission, so a limit
//! enforced on a log holds over every window, not just on average.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Reports group entries by second of admission.
const BUCKET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Instant,
    id: u64,
    tokens: u64,
}

/// One worker's admissions to one provider in the current window.
#[derive(Debug, Default)]
pub struct Log {
    entries: VecDeque<Entry>,
    tokens: u64,
}

impl Log {
    /// Forget what is out of the window ending at `now`.
    pub fn prune(&mut self, now: Instant, window: Duration) {
        while let Some(e) = self.entries.front() {
            if e.at + window > now {
                break;
            }
            self.tokens = self.tokens.saturating_sub(e.tokens);
            self.entries.pop_front();
        }
    }

    pub fn requests(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Where admission `id` is. Ids rise with every admission and entries leave only
    /// from the front or one by one, so the log stays sorted by id: a binary search, not
    /// a scan (a window holds a minute of admissions: 300,000 at 5,000 calls/s, and every
    /// call's settle looked its id up from the front).
    fn find(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    /// Admissions are pushed in time order (the clock never goes back) and in the order
    /// of their ids.
    pub fn push(&mut self, at: Instant, id: u64, tokens: u64) {
        debug_assert!(self.entries.back().is_none_or(|e| e.id < id));
        self.tokens = self.tokens.saturating_add(tokens);
        self.entries.push_back(Entry { at, id, tokens });
    }

    /// Correct an admission's tokens (to what the call used); false when it has left the
    /// window already.
    pub fn set_tokens(&mut self, id: u64, tokens: u64) -> bool {
        let Some(i) = self.find(id) else {
            return false;
        };
        let e = &mut self.entries[i];
        self.tokens = self.tokens.saturating_sub(e.tokens).saturating_add(tokens);
        e.tokens = tokens;
        true
    }

    /// Take an admission back out (its call was never made); false when it has left the
    /// window already.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(i) = self.find(id) else {
            return false;
        };
        if let Some(e) = self.entries.remove(i) {
            self.tokens = self.tokens.saturating_sub(e.tokens);
        }
        true
    }

    /// When the oldest entry leaves the window: the next moment the log shrinks.
    pub fn next_expiry(&self, window: Duration) -> Option<Instant> {
        self.entries.front().map(|e| e.at + window)
    }

    /// The log for a report, in whole-second buckets by age at `now`: `(age of the newest
    /// entry of the bucket in ms, requests, tokens)`. Each bucket is dated by its newest
    /// entry, so a reader keeps counting it at least as long as it counts here.
    pub fn buckets(&self, now: Instant) -> Vec<[u64; 3]> {
        let mut out: Vec<[u64; 3]> = Vec::new();
        let mut current: Option<u128> = None;
        // Newest first, so the first entry seen of each bucket is its newest.
        for e in self.entries.iter().rev() {
            let age = now.saturating_duration_since(e.at);
            let slot = age.as_millis() / BUCKET.as_millis();
            match (current, out.last_mut()) {
                (Some(s), Some(b)) if s == slot => {
                    b[1] += 1;
                    b[2] = b[2].saturating_add(e.tokens);
                }
                _ => {
                    current = Some(slot);
                    out.push([age.as_millis() as u64, 1, e.tokens]);
                }
            }
        }
        out
    }
}

/// Another worker's admissions to one provider, as it last reported them, dated on this
/// worker's clock (received time minus age: a little late, so counted a little longer).
#[derive(Debug, Default, Clone)]
pub struct PeerLog {
    /// `(admitted at, requests, tokens)`, any order.
    entries: Vec<(Instant, u64, u64)>,
}

impl PeerLog {
    pub fn from_buckets(received: Instant, buckets: &[[u64; 3]]) -> PeerLog {
        let entries = buckets
            .iter()
            .map(|[age_ms, r, t]| {
                let at = received
                    .checked_sub(Duration::from_millis(*age_ms))
                    .unwrap_or(received);
                (at, *r, *t)
            })
            .collect();
        PeerLog { entries }
    }

    /// Requests and tokens still in the window ending at `now`.
    pub fn in_window(&self, now: Instant, window: Duration) -> (u64, u64) {
        self.entries
            .iter()
            .filter(|(at, _, _)| *at + window > now)
            .fold((0, 0), |(r, t), (_, er, et)| {
                (r.saturating_add(*er), t.saturating_add(*et))
            })
    }

    /// The next moment an entry leaves the window ending after `now`.
    pub fn next_expiry(&self, now: Instant, window: Duration) -> Option<Instant> {
        self.entries
            .iter()
            .map(|(at, _, _)| *at + window)
            .filter(|t| *t > now)
            .min()
    }

    pub fn is_empty_at(&self, now: Instant, window: Duration) -> bool {
        self.in_window(now, window) == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn entries_leave_the_window_after_exactly_its_length() {
        let t0 = Instant::now();
        let mut log = Log::default();
        log.push(t0, 1, 10);
        tokio::time::advance(Duration::from_secs(30)).await;
        log.push(Instant::now(), 2, 5);
        assert_eq!((log.requests(), log.tokens()), (2, 15));
        assert_eq!(log.next_expiry(W), Some(t0 + W));
        log.prune(t0 + W - Duration::from_millis(1), W);
        assert_eq!(log.requests(), 2);
        log.prune(t0 + W, W);
        assert_eq!((log.requests(), log.tokens()), (1, 5));
        assert!(log.set_tokens(2, 7));
        assert!(!log.set_tokens(1, 7), "entry 1 is out of the window");
        assert_eq!(log.tokens(), 7);
        // A call that was admitted and then not made leaves the log.
        log.push(Instant::now(), 3, 4);
        assert_eq!((log.requests(), log.tokens()), (2, 11));
        assert!(log.remove(2));
        assert_eq!((log.requests(), log.tokens()), (1, 4));
        assert!(!log.remove(2), "already gone");
    }

    #[test]
    fn admissions_are_found_by_id_among_many_with_gaps() {
        let now = Instant::now();
        let mut log = Log::default();
        // Ids rise but skip (other providers' admissions take ids from the same count).
        for id in (1..=30_000u64).map(|i| i * 3) {
            log.push(now, id, 1);
        }
        assert!(log.remove(45_000));
        assert!(!log.remove(45_000), "already gone");
        assert!(!log.set_tokens(45_001, 5), "no such admission");
        assert!(log.set_tokens(45_003, 5));
        assert!(log.set_tokens(3, 2));
        assert!(log.set_tokens(90_000, 9));
        assert_eq!(log.requests(), 29_999);
        assert_eq!(log.tokens(), 29_999 - 3 + 5 + 2 + 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_is_read_back_as_at_least_as_long_lived() {
        let t0 = Instant::now();
        let mut log = Log::default();
        for (i, ms) in [0u64, 300, 900, 1200, 2500].iter().enumerate() {
            let at = t0 + Duration::from_millis(*ms);
            tokio::time::advance(at - Instant::now()).await;
            log.push(at, i as u64, 100);
        }
        let now = t0 + Duration::from_millis(2600);
        let buckets = log.buckets(now);
        assert_eq!(buckets.iter().map(|b| b[1]).sum::<u64>(), 5);
        assert_eq!(buckets.iter().map(|b| b[2]).sum::<u64>(), 500);
        let peer = PeerLog::from_buckets(now, &buckets);
        // At every later moment the peer view counts at least what the log counts.
        let mut t = now;
        while t < now + W + Duration::from_secs(3) {
            let mut own = Log::default();
            for (i, ms) in [0u64, 300, 900, 1200, 2500].iter().enumerate() {
                own.push(t0 + Duration::from_millis(*ms), i as u64, 100);
            }
            own.prune(t, W);
            let (r, tok) = peer.in_window(t, W);
            assert!(r >= own.requests() && tok >= own.tokens(), "at {t:?}");
            t += Duration::from_millis(100);
        }
        assert!(peer.is_empty_at(now + W + Duration::from_secs(3), W));
    }
}
