//! The input format the adapter and header targets share, and the checks every adapter's
//! answer must pass. Input:
//!
//! ```text
//! 429 json            <- status, and "json" to ask for a JSON response_format
//! retry-after: 7      <- headers, one per line
//!                     <- an empty line
//! {"error": ...}      <- the body, any bytes
//! ```
//! Bytes without an empty line are a 200 body.

#![allow(dead_code)] // each target uses part of it

use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;
use switchyard::job::{Message, ResponseFormat, Tool};
use switchyard::providers::{ChatRequest, ChatResponse, ProviderError};

/// The longest wait any header or body may ask for, after saturation.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

pub struct Answer<'a> {
    pub status: u16,
    pub json: bool,
    pub headers: HeaderMap,
    pub body: &'a [u8],
}

pub fn headers(text: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        h.append(k, v);
    }
    h
}

pub fn answer(data: &[u8]) -> Answer<'_> {
    let Some(split) = data.windows(2).position(|w| w == b"\n\n") else {
        return Answer {
            status: 200,
            json: false,
            headers: HeaderMap::new(),
            body: data,
        };
    };
    let head = &data[..split];
    let (first, rest) = match head.iter().position(|&b| b == b'\n') {
        Some(i) => (&head[..i], &head[i + 1..]),
        None => (head, &[][..]),
    };
    let first = String::from_utf8_lossy(first);
    let mut words = first.split_whitespace();
    let status = words
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=999).contains(s))
        .unwrap_or(200);
    Answer {
        status,
        json: words.any(|w| w == "json"),
        headers: headers(rest),
        body: &data[split + 2..],
    }
}

/// The tools the fuzzed request offers, so returned tool calls are checked too.
pub fn tools() -> Vec<Tool> {
    let json = r#"[
      {"type": "function", "function": {"name": "get_weather", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
      {"type": "function", "function": {"name": "ping"}}
    ]"#;
    serde_json::from_str(json).unwrap()
}

pub fn request<'a>(
    messages: &'a [Message],
    tools: &'a [Tool],
    format: &'a ResponseFormat,
    json: bool,
) -> ChatRequest<'a> {
    ChatRequest {
        model: "m",
        messages,
        max_tokens: 256,
        temperature: None,
        stop: None,
        response_format: json.then_some(format),
        tools: Some(tools),
        tool_choice: None,
    }
}

/// Run one adapter's `read_answer` on the input and check what comes out.
pub fn check(
    data: &[u8],
    read: impl Fn(&ChatRequest<'_>, u16, &HeaderMap, &[u8]) -> Result<ChatResponse, ProviderError>,
) {
    let a = answer(data);
    let tools = tools();
    let format = ResponseFormat::JsonObject;
    let req = request(&[], &tools, &format, a.json);
    match read(&req, a.status, &a.headers, a.body) {
        Ok(r) => {
            assert!((200..300).contains(&a.status), "success from {}", a.status);
            let u = r.usage;
            assert!(u.cached_input_tokens <= u.input_tokens, "{u:?}");
            assert!(
                u.cache_write_tokens <= u.input_tokens - u.cached_input_tokens,
                "{u:?}"
            );
            if let Some(rate) = r.rate {
                assert!(rate.hold_off().is_none_or(|d| d <= MAX_WAIT), "{rate:?}");
            }
        }
        Err(e) => {
            assert!(e.retry_after.is_none_or(|d| d <= MAX_WAIT), "{e:?}");
            if let Some(u) = e.usage {
                assert!(u.cached_input_tokens <= u.input_tokens, "{u:?}");
            }
            let _ = e.to_string();
        }
    }
}
