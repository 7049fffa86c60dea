//! Giving memory back to the system after a burst.
//!
//! glibc's malloc keeps freed memory in its arenas: after 10,000 calls in flight the
//! worker's RSS stayed at its peak. [`trim_after_bursts`] calls `malloc_trim(0)` (which
//! returns every free page of every arena, not only the top of the heap) when the load
//! has fallen to half of its last high mark, and once more when idle. It runs a few
//! times per burst, never on the hot path; elsewhere than glibc it does nothing.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A high mark below this is not a burst worth trimming after.
const MIN_BURST: usize = 256;
/// How often the load is looked at.
const PERIOD: Duration = Duration::from_millis(500);

/// Return free memory to the system; `false` where glibc's `malloc_trim` is not
/// there. The `switchyard` binary allocates with mimalloc (`src/main.rs`): its free
/// pages are returned by `mi_collect`; glibc's, for whatever still allocates there (and
/// for tests and examples, which keep the system allocator), by `malloc_trim`.
pub fn trim() -> bool {
    // SAFETY: mi_collect walks this thread's heap and the abandoned segments and
    // releases free pages; it has no preconditions and is thread-safe.
    unsafe { libmimalloc_sys::mi_collect(true) };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases the allocator's free lists; it
        // is thread-safe (it takes each arena's lock) and has no preconditions.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// When to trim, given the load seen at each tick.
#[derive(Debug, Default)]
struct Policy {
    /// The highest load since the last trim.
    high: usize,
    /// Something ran since the last trim at idle.
    busy_since_idle_trim: bool,
    /// The previous tick's load.
    last: usize,
}

impl Policy {
    fn tick(&mut self, now: usize) -> bool {
        self.high = self.high.max(now);
        if now > 0 {
            self.busy_since_idle_trim = true;
        }
        let falling = self.high >= MIN_BURST && now <= self.high / 2;
        // Idle for two ticks in a row: the last jobs' results are out.
        let idle = now == 0 && self.last == 0 && self.busy_since_idle_trim;
        self.last = now;
        if falling || idle {
            self.high = now;
            if now == 0 {
                self.busy_since_idle_trim = false;
            }
            return true;
        }
        false
    }
}

/// Until `stop`: trim after bursts of `load()` (jobs or calls in flight).
pub async fn trim_after_bursts(load: impl Fn() -> usize, stop: CancellationToken) {
    let mut policy = Policy::default();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if policy.tick(load()) {
            let started = std::time::Instant::now();
            if trim() {
                tracing::debug!(
                    took_us = started.elapsed().as_micros() as u64,
                    "malloc_trim"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_when_a_burst_halves_and_once_when_idle() {
        let mut p = Policy::default();
        let trims: Vec<bool> = [
            0, 0, 100, 0, 0, 0, 10_000, 9_000, 5_000, 4_000, 2_000, 0, 0, 0,
        ]
        .into_iter()
        .map(|n| p.tick(n))
        .collect();
        assert_eq!(
            trims,
            [
                false, false, false, false, true, false, // small load: one trim at idle
                false, false, true, false, true, // halved from 10,000, then from 4,000
                true, false, false, // down to 0 from 2,000; no second idle trim
            ]
        );
    }

    #[test]
    fn trim_runs() {
        let v: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 4096]).collect();
        drop(v);
        assert_eq!(trim(), cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
