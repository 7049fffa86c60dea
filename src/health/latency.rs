//! A latency histogram per provider+model for quantile estimates (the hedge delay's p95):
//! fixed buckets, four per doubling from 1 ms (each bound ~19% above the last) up to
//! about 17 minutes, counted in two halves of a sliding span so the estimate follows a
//! model that turns slow. Recording is an index computation and an add; nothing
//! allocates after [`Histogram::new`].

use std::time::Duration;
use tokio::time::Instant;

/// Buckets per doubling of the latency.
const PER_DOUBLING: f64 = 4.0;
/// Bucket `i` holds latencies up to `2^(i / 4)` ms; the last one everything above.
const BUCKETS: usize = 81;
/// Each half of the sliding span: the estimate covers the last one to two of these.
pub const HALF_SPAN: Duration = Duration::from_secs(60);
/// Fewer calls than this in the span give no estimate.
pub const MIN_SAMPLES: u32 = 20;

#[derive(Debug)]
pub struct Histogram {
    /// The half being filled, and the one before it.
    current: [u32; BUCKETS],
    previous: [u32; BUCKETS],
    current_total: u32,
    previous_total: u32,
    current_since: Instant,
}

/// The upper bound of bucket `i`.
fn bound(i: usize) -> Duration {
    Duration::from_secs_f64((i as f64 / PER_DOUBLING).exp2() / 1000.0)
}

fn index(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1000.0;
    if ms <= 1.0 {
        return 0;
    }
    let i = (ms.log2() * PER_DOUBLING).ceil();
    if i.is_finite() {
        (i as usize).min(BUCKETS - 1)
    } else {
        BUCKETS - 1
    }
}

impl Histogram {
    pub fn new(now: Instant) -> Histogram {
        Histogram {
            current: [0; BUCKETS],
            previous: [0; BUCKETS],
            current_total: 0,
            previous_total: 0,
            current_since: now,
        }
    }

    /// Move the halves along to `now`.
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.current_since);
        if age < HALF_SPAN {
            return;
        }
        if age < HALF_SPAN * 2 {
            self.previous = self.current;
            self.previous_total = self.current_total;
            self.current_since += HALF_SPAN;
        } else {
            self.previous = [0; BUCKETS];
            self.previous_total = 0;
            self.current_since = now;
        }
        self.current = [0; BUCKETS];
        self.current_total = 0;
    }

    pub fn record(&mut self, latency: Duration, now: Instant) {
        self.roll(now);
        let i = index(latency);
        self.current[i] = self.current[i].saturating_add(1);
        self.current_total = self.current_total.saturating_add(1);
    }

    /// The latency at or below which a `q` share (0..1) of the span's calls answered: the
    /// upper bound of the bucket that holds it (so at most ~19% high, never low), or
    /// `None` with fewer than [`MIN_SAMPLES`] calls.
    pub fn quantile(&mut self, q: f64, now: Instant) -> Option<Duration> {
        self.roll(now);
        let total = self.current_total.saturating_add(self.previous_total);
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * f64::from(total)).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for i in 0..BUCKETS {
            seen += u64::from(self.current[i]) + u64::from(self.previous[i]);
            if seen >= rank {
                return Some(bound(i));
            }
        }
        Some(bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_bound_what_they_hold() {
        for n in [0, 1, 2, 3, 7, 50, 99, 100, 101, 250, 1000, 60_000] {
            let i = index(ms(n));
            assert!(
                bound(i) >= ms(n),
                "{n} ms in bucket {i} up to {:?}",
                bound(i)
            );
            if i > 0 {
                assert!(bound(i - 1) < ms(n), "{n} ms belongs below bucket {i}");
            }
            assert!(bound(i).as_secs_f64() <= (n.max(1) as f64 / 1000.0) * 1.19 + 1e-9);
        }
        assert_eq!(index(Duration::from_secs(100_000)), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn quantiles_of_a_known_mix() {
        let now = Instant::now();
        let mut h = Histogram::new(now);
        for _ in 0..(MIN_SAMPLES - 1) {
            h.record(ms(50), now);
        }
        assert_eq!(h.quantile(0.95, now), None, "too few calls");
        let mut h = Histogram::new(now);
        // 95 calls at 50 ms, 5 at 2 s: p95 is in the fast part, p99 in the slow.
        for _ in 0..95 {
            h.record(ms(50), now);
        }
        for _ in 0..5 {
            h.record(ms(2000), now);
        }
        let p95 = h.quantile(0.95, now).unwrap();
        assert!(p95 >= ms(50) && p95 < ms(60), "{p95:?}");
        let p99 = h.quantile(0.99, now).unwrap();
        assert!(p99 >= ms(2000) && p99 < ms(2400), "{p99:?}");
        let p50 = h.quantile(0.5, now).unwrap();
        assert_eq!(p50, p95);
    }

    #[tokio::test(start_paused = true)]
    async fn old_calls_leave_the_span() {
        let start = Instant::now();
        let mut h = Histogram::new(start);
        for _ in 0..100 {
            h.record(ms(10), start);
        }
        // Within the span the fast calls still count …
        let later = start + HALF_SPAN + ms(1);
        for _ in 0..100 {
            h.record(ms(800), later);
        }
        let p = h.quantile(0.4, later).unwrap();
        assert!(p < ms(12), "{p:?}");
        // … and after two halves only the slow ones do.
        let much_later = start + HALF_SPAN * 2 + ms(2);
        let p = h.quantile(0.4, much_later).unwrap();
        assert!(p >= ms(800) && p < ms(960), "{p:?}");
        // After a long silence nothing is left.
        assert_eq!(h.quantile(0.95, start + HALF_SPAN * 10), None);
    }
}
