//! Token-bucket rate limits per provider: requests per minute and tokens per minute
//! (GCRA via `governor`). Bursts are one second's worth of requests and ten seconds'
//! worth of tokens, so no 60 s window sees much more than the configured figure.
//!
//! These limits are per worker process: with N workers, configure rpm/tpm divided by N
//! (a cluster-wide limiter is future work, see the README).

use crate::config::Config;
use crate::providers::ratelimit_headers::RateReading;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct ProviderLimits {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, u32)>,
}

pub struct Limiters {
    by_provider: HashMap<String, ProviderLimits>,
    clock: DefaultClock,
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
        let mut by_provider = HashMap::new();
        for p in &config.providers {
            let requests = p.rpm.and_then(NonZeroU32::new).map(|rpm| {
                let burst = NonZeroU32::new((rpm.get() / 60).max(1)).unwrap_or(NonZeroU32::MIN);
                RateLimiter::direct(Quota::per_minute(rpm).allow_burst(burst))
            });
            let tokens = p.tpm.and_then(NonZeroU32::new).map(|tpm| {
                let burst = (tpm.get() / 6).max(1);
                let b = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
                (
                    RateLimiter::direct(Quota::per_minute(tpm).allow_burst(b)),
                    burst,
                )
            });
            by_provider.insert(p.name.clone(), ProviderLimits { requests, tokens });
        }
        Limiters {
            by_provider,
            clock: DefaultClock::default(),
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
        let deadline = tokio::time::Instant::now() + max_wait;
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
                        if tokio::time::Instant::now() + wait > deadline {
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
                        if tokio::time::Instant::now() + wait > deadline {
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

    fn limiters(rpm: u32) -> Limiters {
        let text = format!(
            "[[providers]]\nname = \"p\"\nkind = \"openai_compatible\"\nbase_url = \"http://x\"\nrpm = {rpm}\n"
        );
        Limiters::new(&FileConfig::from_toml_with_env(&text, "t", &[]).unwrap())
    }

    #[tokio::test]
    async fn requests_beyond_the_burst_must_wait() {
        let l = limiters(60); // burst 1, one per second
        assert_eq!(l.admit("p", "m", 1, Duration::ZERO).await, Admission::Go);
        match l.admit("p", "m", 1, Duration::from_millis(10)).await {
            Admission::Wait(d) => assert!(d > Duration::from_millis(500), "{d:?}"),
            Admission::Go => panic!("second request inside a second must wait"),
        }
        assert_eq!(
            l.admit("unknown", "m", 1, Duration::ZERO).await,
            Admission::Go
        );
    }

    #[tokio::test]
    async fn exhausted_windows_reported_by_the_provider_are_held() {
        use crate::providers::ratelimit_headers::{RateReading, Window};
        let l = limiters(600);
        let reading = RateReading {
            requests: Window {
                limit: Some(10),
                remaining: Some(0),
                reset: Some(Duration::from_secs(30)),
            },
            tokens: Window::default(),
        };
        l.observe("p", "m", Some(&reading));
        match l.admit("p", "m", 1, Duration::from_millis(10)).await {
            Admission::Wait(d) => assert!(d > Duration::from_secs(29), "{d:?}"),
            Admission::Go => panic!("held window admitted a call"),
        }
        // Other models of the provider are not held.
        assert_eq!(
            l.admit("p", "other", 1, Duration::ZERO).await,
            Admission::Go
        );
        // A reading with capacity left holds nothing.
        let fine = RateReading {
            requests: Window {
                remaining: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        l.observe("p", "x", Some(&fine));
        assert_eq!(l.admit("p", "x", 1, Duration::ZERO).await, Admission::Go);
    }

    #[tokio::test]
    async fn burst_is_one_second_of_requests() {
        let l = limiters(600); // 10 per second
        for _ in 0..10 {
            assert_eq!(l.admit("p", "m", 1, Duration::ZERO).await, Admission::Go);
        }
        assert!(matches!(
            l.admit("p", "m", 1, Duration::ZERO).await,
            Admission::Wait(_)
        ));
    }
}
