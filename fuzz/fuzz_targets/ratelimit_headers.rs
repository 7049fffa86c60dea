//! Every reader of wait times and rate-limit windows from headers: OpenAI's and
//! Anthropic's rate-limit headers, Retry-After (and retry-after-ms), Go-style durations
//! (OpenAI resets, Gemini's RetryInfo). Input: header lines (see answer.rs).
#![no_main]

#[path = "answer.rs"]
mod answer;

use answer::MAX_WAIT;
use libfuzzer_sys::fuzz_target;
use switchyard::providers::ratelimit_headers::{self as rh, RateReading};

fuzz_target!(|data: &[u8]| {
    let h = answer::headers(data);
    for r in [rh::openai(&h), rh::anthropic(&h)].into_iter().flatten() {
        check_reading(&r);
    }
    if let Some(d) = rh::retry_after(&h) {
        assert!(d <= MAX_WAIT, "{d:?}");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(d) = rh::parse_go_duration(s) {
            assert!(d <= MAX_WAIT, "{s:?}: {d:?}");
        }
    }
});

fn check_reading(r: &RateReading) {
    for w in [r.requests, r.tokens] {
        assert!(w.reset.is_none_or(|d| d <= MAX_WAIT), "{r:?}");
    }
    assert!(r.hold_off().is_none_or(|d| d <= MAX_WAIT), "{r:?}");
}
