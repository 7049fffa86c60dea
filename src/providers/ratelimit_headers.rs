//! Every wait a provider asks for in its headers: the rate-limit headers every response
//! carries, read into one [`RateReading`] that the limiter can act on (stop sending to a
//! provider+model whose window is exhausted until it resets, instead of collecting
//! 429s), and `Retry-After`. Headers are untrusted input: every wait read here saturates
//! at [`MAX_WAIT`], and nothing here panics on any value.

use reqwest::header::{HeaderMap, HeaderName};
use std::time::Duration;

/// The longest wait any header may ask for; longer (or absurd) values saturate here.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// A number of seconds as a wait, saturating at [`MAX_WAIT`] (infinity too); `None` for
/// NaN and negative numbers.
pub fn wait_from_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    if secs >= MAX_WAIT.as_secs_f64() {
        return Some(MAX_WAIT);
    }
    // -0.0 is the only value left that `from_secs_f64` might not take as zero.
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO))
}

/// The wait until an instant the provider names: zero when it is past, at most
/// [`MAX_WAIT`].
pub(crate) fn wait_until(when: chrono::DateTime<chrono::FixedOffset>) -> Duration {
    when.signed_duration_since(chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO)
        .min(MAX_WAIT)
}

/// `retry-after-ms` (milliseconds, OpenAI), else `retry-after`: seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| Some(headers.get(k)?.to_str().ok()?.trim());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(d) = wait_from_secs(ms / 1000.0) {
            return Some(d);
        }
    }
    let v = get("retry-after")?;
    if let Ok(s) = v.parse::<f64>() {
        return wait_from_secs(s);
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(wait_until(when))
}

/// Go's duration format (OpenAI's resets, Gemini's `retryDelay`): `1s`, `6m0s`,
/// `150ms`, `1h2m3.5s`, `20us`; saturating at [`MAX_WAIT`].
pub fn parse_go_duration(v: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = v.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1e-3
            }
            'm' => 60.0,
            's' => 1.0,
            'u' | 'µ' | 'n' if chars.peek() == Some(&'s') => {
                chars.next();
                if c == 'n' {
                    1e-9
                } else {
                    1e-6
                }
            }
            _ => return None,
        };
        // Saturates at infinity, never NaN: every term is finite or +inf, never negative.
        total += n * unit;
        any = true;
    }
    if !num.is_empty() || !any {
        return None;
    }
    wait_from_secs(total)
}

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

fn num(h: &HeaderMap, k: &HeaderName) -> Option<u64> {
    h.get(k)?.to_str().ok()?.trim().parse().ok()
}

fn text<'a>(h: &'a HeaderMap, k: &HeaderName) -> Option<&'a str> {
    h.get(k)?.to_str().ok()
}

/// The names of one window's three headers (limit, remaining, reset), known at compile
/// time: read on every answer, so no name is built or parsed per call.
type Names = [HeaderName; 3];

const OPENAI: [Names; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

const ANTHROPIC: [Names; 2] = [
    [
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ],
];

/// OpenAI (and compatible servers that copy it): `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
/// resets as Go durations (`6m0s`, `1s`, `150ms`).
pub fn openai(h: &HeaderMap) -> Option<RateReading> {
    let window = |[limit, remaining, reset]: &Names| Window {
        limit: num(h, limit),
        remaining: num(h, remaining),
        reset: text(h, reset).and_then(parse_go_duration),
    };
    let r = RateReading {
        requests: window(&OPENAI[0]),
        tokens: window(&OPENAI[1]),
    };
    (!r.is_empty()).then_some(r)
}

/// Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets as
/// RFC 3339 instants.
pub fn anthropic(h: &HeaderMap) -> Option<RateReading> {
    let window = |[limit, remaining, reset]: &Names| Window {
        limit: num(h, limit),
        remaining: num(h, remaining),
        reset: text(h, reset)
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v.trim()).ok())
            .map(wait_until),
    };
    let r = RateReading {
        requests: window(&ANTHROPIC[0]),
        tokens: window(&ANTHROPIC[1]),
    };
    (!r.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(parse_go_duration("20us"), Some(Duration::from_micros(20)));
        assert_eq!(
            parse_go_duration("2m3.5s"),
            Some(Duration::from_secs_f64(123.5))
        );
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(MAX_WAIT));
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("12"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration("."), None);
    }

    #[test]
    fn huge_durations_saturate() {
        // Values like these panicked in Duration::from_secs_f64 (or in the limiter's
        // `Instant + Duration`) before waits were saturated.
        let huge = "9".repeat(400);
        for v in [
            "99999999999999999999h".to_string(),
            format!("{huge}s"),
            format!("{huge}h{huge}h"),
            "2562047788015216h".to_string(),
            "5124095576030431h".to_string(),
            "2h".to_string(),
        ] {
            assert_eq!(parse_go_duration(&v), Some(MAX_WAIT), "{v}");
        }
        assert_eq!(wait_from_secs(f64::INFINITY), Some(MAX_WAIT));
        assert_eq!(wait_from_secs(f64::NAN), None);
        assert_eq!(wait_from_secs(-1.0), None);
        assert_eq!(wait_from_secs(-0.0), Some(Duration::ZERO));
        assert_eq!(wait_from_secs(f64::MAX), Some(MAX_WAIT));
    }

    #[test]
    fn retry_after_seconds_ms_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert("retry-after-ms", "NaN".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.remove("retry-after-ms");
        h.insert("retry-after", "garbage".parse().unwrap());
        assert_eq!(retry_after(&h), None);
        for (v, want) in [
            ("1e300", Some(MAX_WAIT)),
            ("inf", Some(MAX_WAIT)),
            ("NaN", None),
            ("-5", None),
            ("Fri, 31 Dec 9999 23:59:59 GMT", Some(MAX_WAIT)),
            ("Wed, 21 Oct 2015 07:28:00 GMT", Some(Duration::ZERO)),
        ] {
            h.insert("retry-after", v.parse().unwrap());
            assert_eq!(retry_after(&h), want, "{v}");
        }
    }

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

    #[test]
    fn far_resets_saturate() {
        let h = headers(&[
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "9999-12-31T23:59:59Z"),
        ]);
        assert_eq!(anthropic(&h).unwrap().hold_off(), Some(MAX_WAIT));
        let h = headers(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "99999999999999999999h"),
        ]);
        assert_eq!(openai(&h).unwrap().hold_off(), Some(MAX_WAIT));
    }
}
