//! The HTTP client every adapter uses, and what all wire formats share: sending a JSON
//! body, timeouts and connection errors, Retry-After.

use super::{FailureClass, ProviderError};
use crate::config::ProviderConfig;
use reqwest::header::HeaderMap;
use std::time::Duration;

/// One pooled client per provider: keep-alive, connect and request timeouts, HTTP/2 where
/// the server offers it through TLS ALPN (or always, with `http2_prior_knowledge`).
pub fn client(p: &ProviderConfig) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(p.connect_timeout_s))
        .timeout(Duration::from_secs(p.timeout_s))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        // A burst of thousands of concurrent calls opens thousands of HTTP/1.1
        // connections (~45 KB each in the worker); keep only enough warm ones afterwards.
        .pool_max_idle_per_host(512)
        .http2_adaptive_window(true)
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")));
    if p.http2_prior_knowledge {
        b = b.http2_prior_knowledge();
    }
    b.build()
}

/// A transport failure (no HTTP status) as a provider error. The URL is dropped from the
/// message: some providers take the key in the query string.
pub fn transport_error(e: reqwest::Error) -> ProviderError {
    let class = if e.is_timeout() {
        FailureClass::Timeout
    } else if e.is_connect() {
        FailureClass::Connection
    } else if e.is_decode() || e.is_body() {
        FailureClass::ServerError
    } else {
        FailureClass::Connection
    };
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ProviderError::new(class, None, msg)
}

/// `retry-after`: seconds, or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.signed_duration_since(chrono::Utc::now());
    delta.to_std().ok()
}

/// OpenAI's reset format: `1s`, `6m0s`, `150ms`, `1h2m3.5s`.
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
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    if !num.is_empty() {
        return None;
    }
    any.then(|| Duration::from_secs_f64(total))
}

/// An API key as a header value that is never printed (`Debug` shows `Sensitive`).
pub fn secret_header(
    key: &secrecy::SecretString,
) -> Result<reqwest::header::HeaderValue, ProviderError> {
    use secrecy::ExposeSecret;
    let mut v = reqwest::header::HeaderValue::from_str(key.expose_secret()).map_err(|_| {
        ProviderError::new(
            FailureClass::Auth,
            None,
            "the API key holds characters that cannot be sent in a header",
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Cut a provider's error message to a size fit for a result and a log line.
pub fn clip(s: &str) -> String {
    const MAX: usize = 500;
    if s.contains('\0') {
        return clip(&s.replace('\0', ""));
    }
    if s.contains("sk-") || s.contains("AIza") {
        return clip(&redact_keys(s));
    }
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Providers echo (masked) keys in auth errors: drop anything that looks like one.
fn redact_keys(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let t = w.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
            if t.starts_with("sk-") || t.starts_with("AIza") {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_provider_messages_are_redacted() {
        let m = clip("Incorrect API key provided: sk-proj-****abcd. You can find your API key");
        assert_eq!(
            m,
            "Incorrect API key provided: [redacted] You can find your API key"
        );
        assert!(!clip("bad key AIzaSyA-123456").contains("AIza"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("12"), None);
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after", "garbage".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let s = "é".repeat(400);
        let c = clip(&s);
        assert!(c.len() <= 504);
    }
}
