//! OpenAI chat completions: `POST /v1/chat/completions` (and `/chat/completions`).
//!
//! Authentication is `Authorization: Bearer sk-…`; requests are checked as in
//! `openai_validate.rs`; answers are deterministic (`text.rs`). Streaming
//! (`"stream": true`) is answered as server-sent events in one body.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::openai_validate::{content_text, validate, ChatRequest, Format, OaError, ToolChoice};
use super::state::go_duration;
use super::text::{self, Finish};
use super::{
    header_str, hname, injected_status, json_response, Call, Fault, RateSnapshot, Simulator,
};

const API: &str = "openai";

pub(super) fn error_body(e: &OaError) -> Value {
    json!({"error": {"message": e.message, "type": e.typ, "param": e.param, "code": e.code}})
}

pub(super) fn base_headers(call: &Call) -> Vec<(HeaderName, String)> {
    vec![
        (hname("x-request-id"), format!("req_{}", call.request_id)),
        (hname("openai-processing-ms"), call.elapsed_ms().to_string()),
        (hname("openai-version"), "2020-10-01".to_owned()),
    ]
}

pub(super) fn rate_headers(snap: &RateSnapshot) -> Vec<(HeaderName, String)> {
    vec![
        (
            hname("x-ratelimit-limit-requests"),
            snap.requests_limit.to_string(),
        ),
        (
            hname("x-ratelimit-remaining-requests"),
            snap.requests_remaining.to_string(),
        ),
        (hname("x-ratelimit-reset-requests"), go_duration(snap.reset)),
        (
            hname("x-ratelimit-limit-tokens"),
            snap.tokens_limit.to_string(),
        ),
        (
            hname("x-ratelimit-remaining-tokens"),
            snap.tokens_remaining.to_string(),
        ),
        (hname("x-ratelimit-reset-tokens"), go_duration(snap.reset)),
    ]
}

pub(super) fn error(call: &Call, e: &OaError, snap: Option<&RateSnapshot>) -> Response {
    let mut headers = base_headers(call);
    if let Some(s) = snap {
        headers.extend(rate_headers(s));
    }
    call.respond(e.status, headers, &error_body(e))
}

fn auth_error(message: &str, code: Option<&'static str>) -> OaError {
    OaError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        typ: "invalid_request_error",
        param: None,
        code,
    }
}

pub(super) fn check_auth(headers: &HeaderMap, no_auth: bool) -> Result<(), OaError> {
    if no_auth {
        return Ok(());
    }
    let key = header_str(headers, "authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match key {
        None => Err(auth_error(
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            None,
        )),
        Some(k) if !k.starts_with("sk-") => Err(auth_error(
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            Some("invalid_api_key"),
        )),
        Some(_) => Ok(()),
    }
}

pub(super) fn fault_response(call: &Call, fault: &Fault, mut snap: RateSnapshot) -> Response {
    let mut headers = base_headers(call);
    let (status, body) = match *fault {
        Fault::RateLimited {
            tokens,
            limit,
            used,
            requested,
            retry_after_s,
        } => {
            if tokens {
                snap.tokens_remaining = 0;
            } else {
                snap.requests_remaining = 0;
            }
            headers.push((hname("retry-after"), retry_after_s.to_string()));
            let (what, unit) = if tokens {
                ("tokens", "TPM")
            } else {
                ("requests", "RPM")
            };
            let message = format!(
                "Rate limit reached for {} in organization org-simulator on {what} per min ({unit}): Limit {limit}, Used {used}, Requested {requested}. Please try again in {retry_after_s}s. Visit https://platform.openai.com/account/rate-limits to learn more.",
                call.model
            );
            (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": message, "type": what, "param": null, "code": "rate_limit_exceeded"}}),
            )
        }
        Fault::Injected {
            status,
            retry_after_s,
        } => {
            let status = injected_status(API, status);
            let body = match status.as_u16() {
                429 => {
                    snap.requests_remaining = 0;
                    snap.reset = std::time::Duration::from_secs(retry_after_s);
                    headers.push((hname("retry-after"), retry_after_s.to_string()));
                    let message = format!(
                        "Rate limit reached for {} in organization org-simulator on requests per min (RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in {retry_after_s}s. Visit https://platform.openai.com/account/rate-limits to learn more.",
                        call.model,
                        limit = snap.requests_limit
                    );
                    json!({"error": {"message": message, "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
                }
                500 => {
                    json!({"error": {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error", "param": null, "code": null}})
                }
                503 => {
                    json!({"error": {"message": "The engine is currently overloaded, please try again later.", "type": "server_error", "param": null, "code": null}})
                }
                s if s >= 500 => {
                    json!({"error": {"message": format!("The server had an error ({s}) while processing your request. Sorry about that!"), "type": "server_error", "param": null, "code": null}})
                }
                s => {
                    json!({"error": {"message": format!("Simulated {s} error."), "type": "invalid_request_error", "param": null, "code": null}})
                }
            };
            (status, body)
        }
    };
    headers.extend(rate_headers(&snap));
    call.respond(status, headers, &body)
}

/// One generated choice.
struct Choice {
    message: Value,
    finish_reason: &'static str,
    tokens: u64,
    reasoning_tokens: u64,
}

fn reasoning_budget(effort: &str, seed: u64) -> u64 {
    let base = match effort {
        "minimal" => return 0,
        "low" => 64,
        "high" => 512,
        _ => 192,
    };
    base + seed % 64
}

/// Which tools the model calls, if any.
fn tools_to_call(req: &ChatRequest) -> Vec<&(String, Option<Value>)> {
    let mentioned: Vec<_> = match &req.last_user_text {
        Some(t) => req
            .tools
            .iter()
            .filter(|(n, _)| text::mentions(t, n))
            .collect(),
        None => Vec::new(),
    };
    let mut calls = match &req.tool_choice {
        ToolChoice::None => Vec::new(),
        ToolChoice::Named(name) => req
            .tools
            .iter()
            .filter(|(n, _)| n == name)
            .take(1)
            .collect(),
        ToolChoice::Required if mentioned.is_empty() => req.tools.iter().take(1).collect(),
        ToolChoice::Required | ToolChoice::Auto => mentioned,
    };
    if !req.parallel_tool_calls {
        calls.truncate(1);
    }
    calls
}

fn make_choice(req: &ChatRequest, messages: &Value, index: u64) -> Choice {
    let seed = text::seed_of(messages, index);
    let reasoning = req
        .reasoning
        .as_deref()
        .map(|e| reasoning_budget(e, seed))
        .unwrap_or(0);
    let calls = tools_to_call(req);
    if !calls.is_empty() {
        let mut tokens = reasoning;
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|(name, params)| {
                let args = text::tool_args(params.as_ref(), seed ^ text::fnv1a(name.as_bytes()));
                let args = serde_json::to_string(&args).unwrap_or_else(|_| "{}".into());
                tokens += text::json_tokens(name) + text::json_tokens(&args);
                json!({"id": text::random_id("call_", 24), "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        return Choice {
            message: json!({"role": "assistant", "content": null, "tool_calls": tool_calls, "refusal": null, "annotations": []}),
            finish_reason: "tool_calls",
            tokens,
            reasoning_tokens: reasoning,
        };
    }
    // Reasoning tokens count against the completion limit first.
    if let Some(limit) = req.limit.filter(|l| *l <= reasoning) {
        return Choice {
            message: json!({"role": "assistant", "content": "", "refusal": null, "annotations": []}),
            finish_reason: "length",
            tokens: limit,
            reasoning_tokens: limit,
        };
    }
    let limit = req.limit.map(|l| l - reasoning);
    let (content, tokens, cut) = match &req.format {
        Format::Text => {
            let g = text::generate_text(seed, limit, &req.stops);
            (g.text, g.tokens, g.finish == Finish::Length)
        }
        Format::JsonObject => text::limit_json(text::json_object(seed).to_string(), limit),
        Format::JsonSchema(schema) => {
            text::limit_json(text::value_for_schema(schema, seed).to_string(), limit)
        }
    };
    Choice {
        message: json!({"role": "assistant", "content": content, "refusal": null, "annotations": []}),
        finish_reason: if cut { "length" } else { "stop" },
        tokens: tokens + reasoning,
        reasoning_tokens: reasoning,
    }
}

fn usage(prompt: u64, completion: u64, reasoning: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": text::cached_tokens(prompt), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// The chat-completions handler.
/// The first steps of every OpenAI request (chat and embeddings): admission (latency,
/// hang, shutdown), an outage, the key, a JSON object body. `Err` is the answer to send.
pub(super) async fn admit_request(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &Bytes,
    log_body: bool,
) -> Result<(Call, Value), Response> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let model = parsed
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str);
    let logged = parsed.as_ref().filter(|_| log_body);
    let Some(call) = sim.admit(API, model, body.len(), logged).await else {
        let e = OaError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "The server is shutting down.".into(),
            typ: "server_error",
            param: None,
            code: None,
        };
        return Err(json_response(e.status, Vec::new(), &error_body(&e)));
    };
    if let Some(f) = call.outage() {
        return Err(fault_response(&call, &f, call.peek()));
    }
    if let Err(e) = check_auth(headers, call.knobs.no_auth) {
        return Err(error(&call, &e, None));
    }
    let Some(body) = parsed.filter(Value::is_object) else {
        let e = OaError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)".into(),
            None,
            None,
        );
        return Err(error(&call, &e, Some(&call.peek())));
    };
    Ok((call, body))
}

/// The answer for a model the `unknown_model` knob says does not exist.
pub(super) fn model_not_found(call: &Call, model: &str) -> Response {
    error(call, &model_not_found_error(model), Some(&call.peek()))
}

pub(crate) async fn chat_completions(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (call, body) = match admit_request(&sim, &headers, &body, true).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let req = match validate(&body) {
        Ok(r) => r,
        Err(e) => return error(&call, &e, Some(&call.peek())),
    };
    if call.knobs.unknown_model {
        return model_not_found(&call, &req.model);
    }
    let (fault, mut snap) = call.check_faults(req.prompt_tokens);
    if let Some(f) = fault {
        return fault_response(&call, &f, snap);
    }
    let messages = body.get("messages").cloned().unwrap_or(Value::Null);
    let choices: Vec<Choice> = (0..req.n)
        .map(|i| make_choice(&req, &messages, i))
        .collect();
    let completion: u64 = choices.iter().map(|c| c.tokens).sum();
    let reasoning: u64 = choices.iter().map(|c| c.reasoning_tokens).sum();
    call.commit_tokens(completion, &mut snap);
    let usage = usage(req.prompt_tokens, completion, reasoning);
    let id = text::random_id("chatcmpl-", 29);
    let created = chrono::Utc::now().timestamp();
    let mut headers = base_headers(&call);
    headers.extend(rate_headers(&snap));
    if req.stream {
        let events = stream_body(&id, created, &req, &choices, &usage);
        // What OpenAI sends when a completion fails after it started streaming.
        let error = json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": null, "code": null}});
        return call.respond_sse(
            headers,
            "text/event-stream; charset=utf-8",
            events,
            format!("data: {error}\n\n"),
        );
    }
    let body = completion_body(&id, created, &req, &choices, usage);
    call.respond(StatusCode::OK, headers, &body)
}

fn completion_body(
    id: &str,
    created: i64,
    req: &ChatRequest,
    choices: &[Choice],
    usage: Value,
) -> Value {
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"index": i, "message": c.message, "logprobs": null, "finish_reason": c.finish_reason}))
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_sim",
    })
}

/// OpenAI's 404 for a model it does not know.
fn model_not_found_error(model: &str) -> OaError {
    OaError {
        status: StatusCode::NOT_FOUND,
        message: format!("The model `{model}` does not exist or you do not have access to it."),
        typ: "invalid_request_error",
        param: None,
        code: Some("model_not_found"),
    }
}

/// The answer to one chat-completions body without the HTTP around it (a batch line):
/// the 200 completion, or the 4xx the live endpoint would give, as (status, body).
pub(super) fn answer_body(body: &Value) -> (StatusCode, Value) {
    let req = match validate(body) {
        Ok(r) => r,
        Err(e) => return (e.status, error_body(&e)),
    };
    if req.model.starts_with("no-such-") {
        let e = model_not_found_error(&req.model);
        return (e.status, error_body(&e));
    }
    let messages = body.get("messages").cloned().unwrap_or(Value::Null);
    let choices: Vec<Choice> = (0..req.n)
        .map(|i| make_choice(&req, &messages, i))
        .collect();
    let completion_tokens: u64 = choices.iter().map(|c| c.tokens).sum();
    let reasoning: u64 = choices.iter().map(|c| c.reasoning_tokens).sum();
    let usage = usage(req.prompt_tokens, completion_tokens, reasoning);
    let id = text::random_id("chatcmpl-", 29);
    let created = chrono::Utc::now().timestamp();
    (
        StatusCode::OK,
        completion_body(&id, created, &req, &choices, usage),
    )
}

/// The streamed form of an answer, one SSE event each: role chunk, content (or
/// tool-call) chunks of a few words, a finish chunk per choice, an optional usage chunk,
/// then `[DONE]`.
fn stream_body(
    id: &str,
    created: i64,
    req: &ChatRequest,
    choices: &[Choice],
    usage: &Value,
) -> Vec<String> {
    let usage_field = if req.include_usage {
        Some(Value::Null)
    } else {
        None
    };
    let chunk = |index: usize, delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": req.model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if let (Some(u), Some(obj)) = (&usage_field, c.as_object_mut()) {
            obj.insert("usage".into(), u.clone());
        }
        format!("data: {c}\n\n")
    };
    let mut out = Vec::new();
    for (i, c) in choices.iter().enumerate() {
        out.push(chunk(
            i,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ));
        if let Some(calls) = c.message.get("tool_calls").and_then(Value::as_array) {
            for (k, call) in calls.iter().enumerate() {
                let delta = json!({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}]});
                out.push(chunk(i, delta, None));
            }
        } else {
            let content = content_text(c.message.get("content"));
            let words: Vec<&str> = content.split_inclusive(' ').collect();
            for piece in words.chunks(4) {
                out.push(chunk(i, json!({"content": piece.concat()}), None));
            }
        }
        out.push(chunk(i, json!({}), Some(c.finish_reason)));
    }
    if req.include_usage {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": req.model,
            "system_fingerprint": "fp_sim", "choices": [], "usage": usage});
        out.push(format!("data: {c}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
#[path = "openai_tests.rs"]
mod tests;
