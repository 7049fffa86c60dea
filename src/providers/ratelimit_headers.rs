//! The rate-limit headers every provider response carries, read into one
//! [`RateReading`] that the limiter can act on (stop sending to a provider+model whose
//! window is exhausted until it resets, instead of collecting 429s).

use super::http::parse_go_duration;
use reqwest::header::HeaderMap;
use std::time::Duration;

/// One window's state: what is left and when it refills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Time until the window is full again (or at least no longer exhausted).
    pub reset: Option<Duration>,
}

impl Window {
    pub fn exhausted(&self) -> bool {
        self.remaining == Some(0)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateReading {
    pub requests: Window,
    pub tokens: Window,
}

impl RateReading {
    fn is_empty(&self) -> bool {
        *self == RateReading::default()
    }

    /// How long to hold off, when a window is exhausted.
    pub fn hold_off(&self) -> Option<Duration> {
        [self.requests, self.tokens]
            .iter()
            .filter(|w| w.exhausted())
            .map(|w| w.reset.unwrap_or(Duration::from_secs(1)))
            .max()
    }
}

fn num(h: &HeaderMap, k: &str) -> Option<u64> {
    h.get(k)?.to_str().ok()?.trim().parse().ok()
}

fn text<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
    h.get(k)?.to_str().ok()
}

/// OpenAI (and compatible servers that copy it): `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
/// resets as Go durations (`6m0s`, `1s`, `150ms`).
pub fn openai(h: &HeaderMap) -> Option<RateReading> {
    let window = |kind: &str| Window {
        limit: num(h, &format!("x-ratelimit-limit-{kind}")),
        remaining: num(h, &format!("x-ratelimit-remaining-{kind}")),
        reset: text(h, &format!("x-ratelimit-reset-{kind}")).and_then(parse_go_duration),
    };
    let r = RateReading {
        requests: window("requests"),
        tokens: window("tokens"),
    };
    (!r.is_empty()).then_some(r)
}

/// Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets as
/// RFC 3339 instants.
pub fn anthropic(h: &HeaderMap) -> Option<RateReading> {
    let window = |kind: &str| Window {
        limit: num(h, &format!("anthropic-ratelimit-{kind}-limit")),
        remaining: num(h, &format!("anthropic-ratelimit-{kind}-remaining")),
        reset: text(h, &format!("anthropic-ratelimit-{kind}-reset"))
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
            .map(|t| {
                (t.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
            }),
    };
    let r = RateReading {
        requests: window("requests"),
        tokens: window("tokens"),
    };
    (!r.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn openai_headers() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1.5s"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-tokens", "199000"),
            ("x-ratelimit-reset-tokens", "300ms"),
        ]);
        let r = openai(&h).unwrap();
        assert_eq!(r.requests.limit, Some(500));
        assert!(r.requests.exhausted());
        assert_eq!(r.tokens.remaining, Some(199_000));
        assert_eq!(r.hold_off(), Some(Duration::from_millis(1500)));
        assert_eq!(openai(&HeaderMap::new()), None);
    }

    #[test]
    fn anthropic_headers() {
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", &soon),
        ]);
        let r = anthropic(&h).unwrap();
        assert_eq!(r.requests.remaining, Some(49));
        let hold = r.hold_off().unwrap();
        assert!(
            hold > Duration::from_secs(8) && hold <= Duration::from_secs(10),
            "{hold:?}"
        );
    }
}
