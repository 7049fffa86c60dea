//! Wall-clock time for logic that depends on it (budget periods, deadlines), injected so
//! tests can run it on tokio's paused clock instead of sleeping.

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at a given time and runs with tokio's clock, so
/// `tokio::time::pause()` / `advance()` move it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: DateTime<Utc>,
    at: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start: DateTime<Utc>) -> TokioClock {
        TokioClock {
            start,
            at: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.at.elapsed()).unwrap_or_default();
        self.start + elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        let c = TokioClock::starting_at(t0);
        assert_eq!(c.now(), t0);
        tokio::time::advance(std::time::Duration::from_secs(120)).await;
        assert_eq!(c.now(), t0 + chrono::Duration::seconds(120));
    }
}
