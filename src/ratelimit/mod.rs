//! Token-bucket rate limits per provider: requests per minute and tokens per minute
//! (GCRA via `governor`). Bursts are one second's worth of requests and ten seconds'
//! worth of tokens, so no 60 s window sees much more than the configured figure.
//!
//! These limits are per worker process: with N workers, configure rpm/tpm divided by N
//! (a cluster-wide limiter is future work, see the README).
//!
//! Time is tokio's (`tokio::time::Instant`, `sleep`), and the buckets read it through
//! [`TokioClock`]: tests run on a paused clock (`tokio::time::pause` / `advance`), never
//! sleeping.

use crate::config::Config;
use crate::providers::ratelimit_headers::RateReading;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Governor's clock on tokio's time, so a paused tokio clock stops the buckets too.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

struct ProviderLimits {
    requests: Option<Bucket>,
    tokens: Option<(Bucket, u32)>,
}

pub struct Limiters {
    by_provider: HashMap<String, ProviderLimits>,
    clock: TokioClock,
    /// Provider+model windows the provider itself reported exhausted, until when.
    held: Mutex<HashMap<(String, String), Instant>>,
}

/// The outcome of asking for capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Capacity taken; go ahead.
    Go,
    /// Not before this long: longer than the caller is willing to wait.
    Wait(Duration),
}

impl Limiters {
    pub fn new(config: &Config) -> Limiters {
        let clock = TokioClock;
        let mut by_provider = HashMap::new();
        for p in &config.providers {
            let requests = p.rpm.and_then(NonZeroU32::new).map(|rpm| {
                let burst = NonZeroU32::new((rpm.get() / 60).max(1)).unwrap_or(NonZeroU32::MIN);
                RateLimiter::direct_with_clock(Quota::per_minute(rpm).allow_burst(burst), clock)
            });
            let tokens = p.tpm.and_then(NonZeroU32::new).map(|tpm| {
                let burst = (tpm.get() / 6).max(1);
                let b = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
                (
                    RateLimiter::direct_with_clock(Quota::per_minute(tpm).allow_burst(b), clock),
                    burst,
                )
            });
            by_provider.insert(p.name.clone(), ProviderLimits { requests, tokens });
        }
        Limiters {
            by_provider,
            clock,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Learn from a provider's rate-limit headers: a window it reports exhausted is not
    /// sent to again until it resets.
    pub fn observe(&self, provider: &str, model: &str, reading: Option<&RateReading>) {
        let Some(hold) = reading.and_then(RateReading::hold_off) else {
            return;
        };
        if let Ok(mut held) = self.held.lock() {
            let until = Instant::now() + hold;
            let e = held
                .entry((provider.to_string(), model.to_string()))
                .or_insert(until);
            *e = (*e).max(until);
        }
    }

    /// Time left before `provider`/`model` may be called again, per its own headers.
    fn held_for(&self, provider: &str, model: &str) -> Option<Duration> {
        let mut held = self.held.lock().ok()?;
        let key = (provider.to_string(), model.to_string());
        let until = *held.get(&key)?;
        let now = Instant::now();
        if until <= now {
            held.remove(&key);
            return None;
        }
        Some(until - now)
    }

    /// Take one request and `tokens` tokens of `provider`'s capacity, waiting up to
    /// `max_wait` for it.
    pub async fn admit(
        &self,
        provider: &str,
        model: &str,
        tokens: u64,
        max_wait: Duration,
    ) -> Admission {
        let deadline = Instant::now() + max_wait;
        if let Some(wait) = self.held_for(provider, model) {
            if wait > max_wait {
                return Admission::Wait(wait);
            }
            tokio::time::sleep(wait).await;
        }
        let Some(l) = self.by_provider.get(provider) else {
            return Admission::Go;
        };
        if let Some(r) = &l.requests {
            loop {
                match r.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        if Instant::now() + wait > deadline {
                            return Admission::Wait(wait);
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        if let Some((t, burst)) = &l.tokens {
            let n = NonZeroU32::new(tokens.clamp(1, u64::from(*burst)) as u32)
                .unwrap_or(NonZeroU32::MIN);
            loop {
                match t.check_n(n) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        if Instant::now() + wait > deadline {
                            return Admission::Wait(wait);
                        }
                        tokio::time::sleep(wait).await;
                    }
                    // n is clamped to the burst, so this cannot happen; admit rather than stall.
                    Err(_) => break,
                }
            }
        }
        Admission::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use crate::providers::ratelimit_headers::{RateReading, Window};

    fn limiters(limits: &str) -> Limiters {
        let text = format!(
            "[[providers]]\nname = \"p\"\nkind = \"openai_compatible\"\nbase_url = \"http://x\"\n{limits}\n"
        );
        Limiters::new(&FileConfig::from_toml_with_env(&text, "t", &[]).unwrap())
    }

    async fn admit(l: &Limiters, model: &str, tokens: u64, max_wait: Duration) -> Admission {
        l.admit("p", model, tokens, max_wait).await
    }

    /// `model` must wait exactly `wait` now (`max_wait` zero), and is admitted once it
    /// has passed.
    async fn must_wait_exactly(l: &Limiters, model: &str, tokens: u64, wait: Duration) {
        assert_eq!(
            admit(l, model, tokens, Duration::ZERO).await,
            Admission::Wait(wait)
        );
        tokio::time::advance(wait).await;
        assert_eq!(admit(l, model, tokens, Duration::ZERO).await, Admission::Go);
    }

    /// How long an admission willing to wait `max_wait` took to go ahead.
    async fn admitted_after(l: &Limiters, tokens: u64, max_wait: Duration) -> Duration {
        let start = Instant::now();
        assert_eq!(admit(l, "m", tokens, max_wait).await, Admission::Go);
        start.elapsed()
    }

    fn exhausted_for(reset: Duration) -> RateReading {
        RateReading {
            requests: Window {
                limit: Some(10),
                remaining: Some(0),
                reset: Some(reset),
            },
            tokens: Window::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_must_wait() {
        let l = limiters("rpm = 60"); // burst 1, one per second
        assert_eq!(admit(&l, "m", 1, Duration::ZERO).await, Admission::Go);
        match admit(&l, "m", 1, Duration::from_millis(10)).await {
            Admission::Wait(d) => assert_eq!(d, Duration::from_secs(1)),
            Admission::Go => panic!("second request inside a second must wait"),
        }
        tokio::time::advance(Duration::from_millis(400)).await;
        must_wait_exactly(&l, "m", 1, Duration::from_millis(600)).await;
        assert_eq!(
            l.admit("unknown", "m", 1, Duration::ZERO).await,
            Admission::Go
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_within_max_wait_is_waited_out() {
        let l = limiters("rpm = 60");
        assert_eq!(admit(&l, "m", 1, Duration::ZERO).await, Admission::Go);
        assert_eq!(
            admitted_after(&l, 1, Duration::from_secs(2)).await,
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_windows_reported_by_the_provider_are_held() {
        let l = limiters("rpm = 600");
        l.observe("p", "m", Some(&exhausted_for(Duration::from_secs(30))));
        match admit(&l, "m", 1, Duration::from_millis(10)).await {
            Admission::Wait(d) => assert_eq!(d, Duration::from_secs(30)),
            Admission::Go => panic!("held window admitted a call"),
        }
        // Other models of the provider are not held.
        assert_eq!(admit(&l, "other", 1, Duration::ZERO).await, Admission::Go);
        // A reading with capacity left holds nothing.
        let fine = RateReading {
            requests: Window {
                remaining: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        l.observe("p", "x", Some(&fine));
        assert_eq!(admit(&l, "x", 1, Duration::ZERO).await, Admission::Go);
        // The hold ends when the window resets.
        tokio::time::advance(Duration::from_secs(29)).await;
        must_wait_exactly(&l, "m", 1, Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_hold_extends_an_earlier_one_and_never_shortens_it() {
        let l = limiters("");
        l.observe("p", "m", Some(&exhausted_for(Duration::from_secs(10))));
        l.observe("p", "m", Some(&exhausted_for(Duration::from_secs(5))));
        assert_eq!(
            admitted_after(&l, 1, Duration::from_secs(20)).await,
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_one_second_of_requests() {
        let l = limiters("rpm = 600"); // 10 per second
        for _ in 0..10 {
            assert_eq!(admit(&l, "m", 1, Duration::ZERO).await, Admission::Go);
        }
        must_wait_exactly(&l, "m", 1, Duration::from_millis(100)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_burst_is_ten_seconds_and_refills_at_the_rate() {
        let l = limiters("tpm = 6000"); // 100 tokens per second, burst 1000
        assert_eq!(admit(&l, "m", 1000, Duration::ZERO).await, Admission::Go);
        must_wait_exactly(&l, "m", 200, Duration::from_secs(2)).await;
        // More than the burst is clamped to the burst, so it is admitted eventually.
        assert_eq!(
            admitted_after(&l, 50_000, Duration::from_secs(60)).await,
            Duration::from_secs(10)
        );
    }
}
