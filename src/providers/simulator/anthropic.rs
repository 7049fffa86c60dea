//! Anthropic Messages API: `POST /v1/messages` (`"stream": true`: server-sent events).
//!
//! Headers: the key (`x-api-key`, or `Authorization: Bearer` as the current Python SDK
//! sends it) and `anthropic-version` are required. The body is checked like
//! the real API (extra fields, roles, block types, tool_use/tool_result pairing …).
//! Prompt caching: when any block or tool carries `cache_control` and the prompt is at
//! least 1024 tokens, half of it (rounded down to 128) is reported as
//! `cache_read_input_tokens`, and `input_tokens` excludes it, as Anthropic does.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use chrono::SecondsFormat;
use serde_json::{json, Value};

use super::anthropic_validate::{invalid, validate, AErr, MsgRequest};
use super::text::{self, Finish};
use super::{
    header_str, hname, injected_status, json_response, Call, Fault, RateSnapshot, Simulator,
};

const API: &str = "anthropic";
/// API versions the reference documents; a later date (what a newer SDK pins) is taken
/// too.
const VERSIONS: &[&str] = &["2023-06-01", "2023-01-01"];

/// The key and version headers: the key in `x-api-key`, or as `Authorization: Bearer`
/// (what the current Python SDK sends for an API key); `anthropic-version` one of
/// [`VERSIONS`] or a later `YYYY-MM-DD` date.
pub(super) fn check_headers(headers: &HeaderMap) -> Result<(), AErr> {
    let bearer = header_str(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match header_str(headers, "x-api-key").map(str::trim).or(bearer) {
        None => {
            return Err(AErr(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required".into(),
            ))
        }
        Some("") => {
            return Err(AErr(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key".into(),
            ))
        }
        Some(_) => {}
    }
    match header_str(headers, "anthropic-version") {
        None => Err(invalid("anthropic-version: header is required".into())),
        Some(v) if !known_version(v) => {
            Err(invalid(format!("anthropic-version: invalid version '{v}'")))
        }
        Some(_) => Ok(()),
    }
}

/// One of [`VERSIONS`], or a well-formed date after the newest of them.
fn known_version(v: &str) -> bool {
    let date = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    VERSIONS.contains(&v) || (date && v > "2023-06-01")
}
fn base_headers(call: &Call) -> Vec<(HeaderName, String)> {
    vec![(hname("request-id"), format!("req_{}", call.request_id))]
}

fn rate_headers(snap: &RateSnapshot) -> Vec<(HeaderName, String)> {
    let reset = chrono::Utc::now()
        + chrono::Duration::milliseconds(i64::try_from(snap.reset.as_millis()).unwrap_or(0));
    let reset = reset.to_rfc3339_opts(SecondsFormat::Secs, true);
    vec![
        (
            hname("anthropic-ratelimit-requests-limit"),
            snap.requests_limit.to_string(),
        ),
        (
            hname("anthropic-ratelimit-requests-remaining"),
            snap.requests_remaining.to_string(),
        ),
        (hname("anthropic-ratelimit-requests-reset"), reset.clone()),
        (
            hname("anthropic-ratelimit-tokens-limit"),
            snap.tokens_limit.to_string(),
        ),
        (
            hname("anthropic-ratelimit-tokens-remaining"),
            snap.tokens_remaining.to_string(),
        ),
        (hname("anthropic-ratelimit-tokens-reset"), reset),
    ]
}

fn error(call: &Call, e: &AErr, mut headers: Vec<(HeaderName, String)>) -> Response {
    headers.extend(base_headers(call));
    let body = json!({"type": "error", "error": {"type": e.1, "message": e.2},
        "request_id": format!("req_{}", call.request_id)});
    call.respond(e.0, headers, &body)
}

fn fault_response(call: &Call, fault: &Fault, mut snap: RateSnapshot) -> Response {
    let mut headers = Vec::new();
    let e = match *fault {
        Fault::RateLimited {
            tokens,
            limit,
            retry_after_s,
            ..
        } => {
            headers.push((hname("retry-after"), retry_after_s.to_string()));
            let what = if tokens {
                snap.tokens_remaining = 0;
                "input tokens"
            } else {
                snap.requests_remaining = 0;
                "requests"
            };
            AErr(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!(
                "This request would exceed the rate limit for your organization of {limit} {what} per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later."
            ))
        }
        Fault::Injected {
            status,
            retry_after_s,
        } => {
            let status = injected_status(API, status);
            match status.as_u16() {
                429 => {
                    snap.requests_remaining = 0;
                    snap.reset = std::time::Duration::from_secs(retry_after_s);
                    headers.push((hname("retry-after"), retry_after_s.to_string()));
                    AErr(status, "rate_limit_error", format!(
                        "This request would exceed the rate limit for your organization of {} requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.",
                        snap.requests_limit
                    ))
                }
                529 => AErr(status, "overloaded_error", "Overloaded".into()),
                400 => AErr(
                    status,
                    "invalid_request_error",
                    "Simulated invalid request.".into(),
                ),
                401 => AErr(status, "authentication_error", "invalid x-api-key".into()),
                403 => AErr(
                    status,
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.".into(),
                ),
                404 => AErr(
                    status,
                    "not_found_error",
                    "The requested resource could not be found.".into(),
                ),
                413 => AErr(
                    status,
                    "request_too_large",
                    "Request exceeds the maximum allowed number of bytes.".into(),
                ),
                _ => AErr(status, "api_error", "Internal server error".into()),
            }
        }
    };
    headers.extend(rate_headers(&snap));
    error(call, &e, headers)
}

/// The `/v1/messages` handler.
pub(crate) async fn messages(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str);
    let Some(call) = sim.admit(API, model, body.len(), parsed.as_ref()).await else {
        let body = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        return json_response(StatusCode::SERVICE_UNAVAILABLE, Vec::new(), &body);
    };
    if let Some(f) = call.outage() {
        return fault_response(&call, &f, call.peek());
    }
    if let Err(e) = check_headers(&headers) {
        return error(&call, &e, Vec::new());
    }
    let Some(Value::Object(body)) = parsed else {
        return error(&call, &invalid("There was an error parsing the body of your request. Please check that it is valid JSON.".into()), Vec::new());
    };
    let req = match validate(&body) {
        Ok(r) => r,
        Err(e) => return error(&call, &e, rate_headers(&call.peek())),
    };
    if call.knobs.unknown_model {
        let e = AErr(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("model: {}", req.model),
        );
        return error(&call, &e, rate_headers(&call.peek()));
    }
    let (fault, mut snap) = call.check_faults(req.prompt_tokens);
    if let Some(f) = fault {
        return fault_response(&call, &f, snap);
    }
    let (out, output_tokens) = message_json(&req, &body);
    call.commit_tokens(output_tokens, &mut snap);
    let mut headers = base_headers(&call);
    headers.extend(rate_headers(&snap));
    if req.stream {
        // What Anthropic sends when the API is overloaded after the stream started.
        let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let error = format!("event: error\ndata: {error}\n\n");
        return call.respond_sse(
            headers,
            "text/event-stream; charset=utf-8",
            stream_events(&out),
            error,
        );
    }
    call.respond(StatusCode::OK, headers, &out)
}

/// The message answering a valid request (and its output tokens): what `/v1/messages`
/// answers with a 200, and a batch's succeeded result holds.
pub(super) fn message_json(
    req: &MsgRequest,
    body: &serde_json::Map<String, Value>,
) -> (Value, u64) {
    let messages = body.get("messages").cloned().unwrap_or(Value::Null);
    let seed = text::seed_of(&json!([body.get("system"), messages]), 0);
    let mut content = Vec::new();
    let mut output_tokens = 0u64;
    let mut limit = req.max_tokens;
    if let Some(budget) = req.thinking_budget {
        let thinking = text::generate_text(seed ^ 0x0074_6869_6e6b, Some(budget.min(limit)), &[]);
        output_tokens += thinking.tokens;
        limit -= thinking.tokens.min(limit);
        content.push(json!({"type": "thinking", "thinking": thinking.text, "signature": text::random_id("sig_", 48)}));
    }
    let mentioned: Vec<&(String, Value)> = match &req.last_user_text {
        Some(t) => req
            .tools
            .iter()
            .filter(|(n, _)| text::mentions(t, n))
            .collect(),
        None => Vec::new(),
    };
    let calls: Vec<&(String, Value)> = match (req.choice.0.as_str(), &req.choice.1) {
        ("none", _) => Vec::new(),
        ("tool", Some(name)) => req
            .tools
            .iter()
            .filter(|(n, _)| n == name)
            .take(1)
            .collect(),
        ("any", _) if mentioned.is_empty() => req.tools.iter().take(1).collect(),
        _ => mentioned,
    };
    let (stop_reason, stop_sequence) = if let (true, Some(schema)) =
        (calls.is_empty(), &req.format_schema)
    {
        // Structured outputs: the text is JSON of the schema (cut short at max_tokens).
        let v = text::value_for_schema(schema, seed);
        let (s, tokens, cut) = text::limit_json(v.to_string(), Some(limit));
        output_tokens += tokens;
        content.push(json!({"type": "text", "text": s}));
        (if cut { "max_tokens" } else { "end_turn" }, Value::Null)
    } else if calls.is_empty() {
        let g = text::generate_text(seed, Some(limit), &req.stops);
        output_tokens += g.tokens;
        content.push(json!({"type": "text", "text": g.text}));
        match g.finish {
            Finish::Stop => ("end_turn", Value::Null),
            Finish::Length => ("max_tokens", Value::Null),
            Finish::StopSequence(s) => ("stop_sequence", Value::String(s)),
        }
    } else {
        for (name, schema) in calls {
            let input = text::tool_args(Some(schema), seed ^ text::fnv1a(name.as_bytes()));
            output_tokens += text::json_tokens(name) + text::json_tokens(&input.to_string());
            content.push(json!({"type": "tool_use", "id": text::random_id("toolu_01", 22), "name": name, "input": input}));
        }
        ("tool_use", Value::Null)
    };
    let cache_read = if req.cache_marked {
        text::cached_tokens(req.prompt_tokens)
    } else {
        0
    };
    let out = json!({
        "id": text::random_id("msg_01", 22),
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": req.prompt_tokens - cache_read,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cache_read,
            "output_tokens": output_tokens,
            "service_tier": "standard"
        }
    });
    (out, output_tokens)
}

/// A whole message as the Messages API streams it: `message_start` (input usage,
/// `output_tokens` 1), a `ping`, per block `content_block_start` / deltas of a few
/// words (`text_delta`, `input_json_delta`, `thinking_delta` + `signature_delta`) /
/// `content_block_stop`, `message_delta` (stop reason, output usage), `message_stop`.
fn stream_events(out: &Value) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut start = out.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let blocks = out["content"].as_array().cloned().unwrap_or_default();
    for (i, block) in blocks.iter().enumerate() {
        let delta = |d: Value| {
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": d}),
            )
        };
        let (first, deltas) = match block["type"].as_str() {
            Some("text") => {
                let t = block["text"].as_str().unwrap_or("");
                let words: Vec<&str> = t.split_inclusive(' ').collect();
                let ds = words
                    .chunks(4)
                    .map(|w| delta(json!({"type": "text_delta", "text": w.concat()})))
                    .collect();
                (json!({"type": "text", "text": ""}), ds)
            }
            Some("tool_use") => {
                let input = block["input"].to_string();
                let mid = (0..=input.len() / 2)
                    .rev()
                    .find(|&k| input.is_char_boundary(k))
                    .unwrap_or(0);
                let ds = [&input[..mid], &input[mid..]]
                    .iter()
                    .map(|p| delta(json!({"type": "input_json_delta", "partial_json": p})))
                    .collect();
                let mut first = block.clone();
                first["input"] = json!({});
                (first, ds)
            }
            Some("thinking") => {
                let ds = vec![
                    delta(json!({"type": "thinking_delta", "thinking": block["thinking"]})),
                    delta(json!({"type": "signature_delta", "signature": block["signature"]})),
                ];
                (json!({"type": "thinking", "thinking": ""}), ds)
            }
            _ => (block.clone(), Vec::new()),
        };
        events.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": first}),
        ));
        events.extend(deltas);
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": out["stop_reason"], "stop_sequence": out["stop_sequence"]},
        "usage": {"output_tokens": out["usage"]["output_tokens"]}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
#[path = "anthropic_tests.rs"]
mod tests;
