//! Gemini: `POST /v1beta/models/{model}:generateContent` (also under `/v1/`), plus
//! `:streamGenerateContent` (the whole answer as one chunk; SSE with `?alt=sse`) and
//! `:countTokens`. `:batchGenerateContent` (v1beta) is Batch Mode (`gemini_batch.rs`).
//!
//! The key comes from `x-goog-api-key` or `?key=`. Thinking models (ids containing
//! `2.5`, `gemini-3` or `thinking`) report `thoughtsTokenCount`, and their thoughts count
//! against `maxOutputTokens` as at Google (a small limit gives `MAX_TOKENS` and no
//! parts). `cachedContentTokenCount` (implicit caching) appears only when non-zero.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::gemini_validate::{validate, GErr, GenRequest};
use super::text::{self, Finish};
use super::{header_str, hname, injected_status, json_response, Call, Fault, Simulator};

const API: &str = "gemini";

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if code >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

pub(crate) fn error_body(code: u16, message: &str, details: Option<Value>) -> Value {
    let mut e = json!({"code": code, "message": message, "status": status_name(code)});
    if let (Some(d), Some(obj)) = (details, e.as_object_mut()) {
        obj.insert("details".into(), d);
    }
    json!({ "error": e })
}

fn resp_headers(call: &Call) -> Vec<(HeaderName, String)> {
    vec![(
        hname("server-timing"),
        format!("gfet4t7; dur={}", call.elapsed_ms()),
    )]
}

fn error(call: &Call, e: &GErr, details: Option<Value>) -> Response {
    let status = StatusCode::from_u16(e.0).unwrap_or(StatusCode::BAD_REQUEST);
    call.respond(status, resp_headers(call), &error_body(e.0, &e.1, details))
}

fn fault_response(call: &Call, fault: &Fault) -> Response {
    let quota = |limit: u64, metric: &str, retry: u64| {
        let details = json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": format!("generativelanguage.googleapis.com/{metric}"),
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                "quotaDimensions": {"location": "global", "model": call.model},
                "quotaValue": limit.to_string()}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{retry}s")}
        ]);
        let e = GErr(429, format!("You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. Please retry in {retry}s."));
        error(call, &e, Some(details))
    };
    match *fault {
        Fault::RateLimited {
            tokens,
            limit,
            retry_after_s,
            ..
        } => {
            let metric = if tokens {
                "generate_content_paid_tier_input_token_count"
            } else {
                "generate_content_paid_tier_requests"
            };
            quota(limit, metric, retry_after_s)
        }
        Fault::Injected {
            status,
            retry_after_s,
        } => {
            let status = injected_status(API, status).as_u16();
            let message = match status {
                429 => return quota(call.knobs.rpm.unwrap_or(super::state::DEFAULT_RPM), "generate_content_paid_tier_requests", retry_after_s),
                503 => "The model is overloaded. Please try again later.",
                504 => "Deadline expired before operation could complete.",
                s if s >= 500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                _ => "Request contains an invalid argument.",
            };
            error(call, &GErr(status, message.to_owned()), None)
        }
    }
}

/// The API key, from `x-goog-api-key` or `?key=`: missing (403) or empty (400) is refused
/// as Google refuses it.
pub(crate) fn check_key(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(), (GErr, Option<Value>)> {
    let key = header_str(headers, "x-goog-api-key")
        .map(str::to_owned)
        .or_else(|| query.get("key").cloned());
    match key.as_deref().map(str::trim) {
        None => Err((GErr(403, "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.".into()), None)),
        Some("") => {
            let details = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]);
            Err((
                GErr(400, "API key not valid. Please pass a valid API key.".into()),
                Some(details),
            ))
        }
        Some(_) => Ok(()),
    }
}

fn is_thinking_model(model: &str) -> bool {
    model.contains("2.5") || model.contains("gemini-3") || model.contains("thinking")
}

/// `POST /v1beta/models/{model}:{method}`.
pub(crate) async fn generate_v1beta(
    State(sim): State<Simulator>,
    Path(rest): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.ok().map(|q| q.0);
    if let Some(model) = rest
        .trim_start_matches('/')
        .strip_suffix(":batchGenerateContent")
    {
        let query = query.unwrap_or_default();
        return super::gemini_batch::create(&sim, model, &query, &headers, &body);
    }
    handle(sim, "v1beta", rest, query, headers, body).await
}

/// `POST /v1/models/{model}:{method}`.
pub(crate) async fn generate_v1(
    State(sim): State<Simulator>,
    Path(rest): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(sim, "v1", rest, query.ok().map(|q| q.0), headers, body).await
}

async fn handle(
    sim: Simulator,
    version: &str,
    rest: String,
    query: Option<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rest = rest.trim_start_matches('/');
    let (model, method) = rest.rsplit_once(':').unwrap_or((rest, ""));
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let Some(call) = sim
        .admit(API, Some(model), body.len(), parsed.as_ref())
        .await
    else {
        let b = error_body(503, "The service is currently unavailable.", None);
        return json_response(StatusCode::SERVICE_UNAVAILABLE, Vec::new(), &b);
    };
    if let Some(f) = call.outage() {
        return fault_response(&call, &f);
    }
    let query = query.unwrap_or_default();
    if let Err((e, details)) = check_key(&headers, &query) {
        return error(&call, &e, details);
    }
    if !["generateContent", "streamGenerateContent", "countTokens"].contains(&method) {
        let e = GErr(404, format!("models/{model} is not found for API version {version}, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."));
        return error(&call, &e, None);
    }
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => o,
        _ => {
            return error(
                &call,
                &GErr(
                    400,
                    "Invalid JSON payload received. Unexpected token.".into(),
                ),
                None,
            )
        }
    };
    let req = match validate(&body, model) {
        Ok(r) => r,
        Err(e) => return error(&call, &e, None),
    };
    if call.knobs.unknown_model {
        let e = GErr(404, format!("models/{model} is not found for API version {version}, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."));
        return error(&call, &e, None);
    }
    if method == "countTokens" {
        let out = json!({"totalTokens": req.prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": req.prompt_tokens}]});
        return call.respond(StatusCode::OK, resp_headers(&call), &out);
    }
    let (fault, mut snap) = call.check_faults(req.prompt_tokens);
    if let Some(f) = fault {
        return fault_response(&call, &f);
    }
    let seed = text::seed_of(
        &json!([body.get("systemInstruction"), body.get("contents")]),
        0,
    );
    let out = answer(&req, model, seed);
    let used = out["usageMetadata"]["totalTokenCount"]
        .as_u64()
        .unwrap_or(0);
    call.commit_tokens(used.saturating_sub(req.prompt_tokens), &mut snap);
    if method == "streamGenerateContent" {
        let chunks = stream_chunks(&out);
        if query.get("alt").is_some_and(|a| a == "sse") {
            let events = chunks
                .iter()
                .map(|c| format!("data: {c}\r\n\r\n"))
                .collect();
            // What Gemini sends when generation fails after it started streaming.
            let error = json!({"error": {"code": 503, "status": "UNAVAILABLE",
                "message": "The model is overloaded. Please try again later."}});
            let error = format!("data: {error}\r\n\r\n");
            return call.respond_sse(resp_headers(&call), "text/event-stream", events, error);
        }
        let text = Value::Array(chunks).to_string();
        let ct = "application/json; charset=UTF-8";
        return call.respond_raw(StatusCode::OK, resp_headers(&call), ct, text);
    }
    call.respond(StatusCode::OK, resp_headers(&call), &out)
}

/// A whole answer as the chunks `:streamGenerateContent` sends: its text a few words at a
/// time, each chunk with the usage so far (`candidatesTokenCount` growing), the last one
/// with the other parts (function calls), the `finishReason` and the whole usage.
fn stream_chunks(out: &Value) -> Vec<Value> {
    let parts = out
        .pointer("/candidates/0/content/parts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text: String = parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    let others: Vec<Value> = parts
        .into_iter()
        .filter(|p| p.get("text").is_none())
        .collect();
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let pieces: Vec<String> = words.chunks(4).map(<[&str]>::concat).collect();
    let usage = &out["usageMetadata"];
    let prompt = usage["promptTokenCount"].as_u64().unwrap_or(0);
    let generated = usage["candidatesTokenCount"].as_u64().unwrap_or(0);
    let n = pieces.len().max(1) as u64;
    let mut chunks = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let mut parts = vec![json!({ "text": piece })];
        let mut candidate = json!({"content": {"role": "model"}, "index": 0});
        let usage_now = if last {
            parts.extend(others.iter().cloned());
            candidate["finishReason"] = out["candidates"][0]["finishReason"].clone();
            usage.clone()
        } else {
            let so_far = generated * (i as u64 + 1) / n;
            json!({"promptTokenCount": prompt, "candidatesTokenCount": so_far,
                "totalTokenCount": prompt + so_far})
        };
        candidate["content"]["parts"] = Value::Array(parts);
        chunks.push(
            json!({"candidates": [candidate], "usageMetadata": usage_now,
            "modelVersion": out["modelVersion"], "responseId": out["responseId"]}),
        );
    }
    if pieces.is_empty() {
        chunks.push(out.clone());
    }
    chunks
}

/// The deterministic `GenerateContentResponse`.
pub(crate) fn answer(req: &GenRequest, model: &str, seed: u64) -> Value {
    let thoughts = if is_thinking_model(model) {
        let dynamic = 256 + seed % 256;
        match req.thinking_budget {
            Some(0) => 0,
            Some(b) if b > 0 => dynamic.min(b as u64),
            _ => dynamic,
        }
    } else {
        0
    };
    let thoughts = req.limit.map_or(thoughts, |l| thoughts.min(l));
    let visible_limit = req.limit.map(|l| l - thoughts);
    let allowed = |name: &str| req.allowed.is_empty() || req.allowed.iter().any(|a| a == name);
    let candidates: Vec<&(String, Option<Value>)> =
        req.functions.iter().filter(|(n, _)| allowed(n)).collect();
    let mentioned: Vec<&(String, Option<Value>)> = match &req.last_user_text {
        Some(t) => candidates
            .iter()
            .copied()
            .filter(|(n, _)| text::mentions(t, n))
            .collect(),
        None => Vec::new(),
    };
    let calls = match req.mode.as_str() {
        "NONE" => Vec::new(),
        "ANY" if mentioned.is_empty() => candidates.into_iter().take(1).collect(),
        _ => mentioned,
    };
    let mut parts = Vec::new();
    let mut out_tokens = 0u64;
    let mut finish = "STOP";
    if visible_limit == Some(0) {
        finish = "MAX_TOKENS";
    } else if !calls.is_empty() {
        for (name, params) in calls {
            let args = text::tool_args(params.as_ref(), seed ^ text::fnv1a(name.as_bytes()));
            out_tokens += text::json_tokens(name) + text::json_tokens(&args.to_string());
            parts.push(json!({"functionCall": {"name": name, "args": args}}));
        }
    } else if req.mime == "application/json" {
        let v = match &req.schema {
            Some(s) => text::value_for_schema(s, seed),
            None => text::json_object(seed),
        };
        let (s, t, cut) = text::limit_json(v.to_string(), visible_limit);
        out_tokens += t;
        if cut {
            finish = "MAX_TOKENS";
        }
        parts.push(json!({ "text": s }));
    } else if let (Some(choices), "text/x.enum") = (
        req.schema
            .as_ref()
            .and_then(|s| s.get("enum"))
            .and_then(Value::as_array),
        req.mime.as_str(),
    ) {
        let pick = choices.get((seed % choices.len().max(1) as u64) as usize);
        let s = pick.and_then(Value::as_str).unwrap_or("").to_owned();
        out_tokens += text::json_tokens(&s);
        parts.push(json!({ "text": s }));
    } else {
        let g = text::generate_text(seed, visible_limit, &req.stops);
        out_tokens += g.tokens;
        if g.finish == Finish::Length {
            finish = "MAX_TOKENS";
        }
        parts.push(json!({ "text": g.text }));
    }
    let content = if parts.is_empty() {
        json!({"role": "model"})
    } else {
        json!({"parts": parts, "role": "model"})
    };
    let mut usage = json!({
        "promptTokenCount": req.prompt_tokens,
        "candidatesTokenCount": out_tokens,
        "totalTokenCount": req.prompt_tokens + out_tokens + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": req.prompt_tokens}],
    });
    if let Some(u) = usage.as_object_mut() {
        let cached = text::cached_tokens(req.prompt_tokens);
        if cached > 0 {
            u.insert("cachedContentTokenCount".into(), json!(cached));
        }
        if thoughts > 0 {
            u.insert("thoughtsTokenCount".into(), json!(thoughts));
        }
        if out_tokens == 0 {
            u.remove("candidatesTokenCount");
        }
    }
    json!({
        "candidates": [{"content": content, "finishReason": finish, "index": 0}],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": text::random_id("", 22),
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
#[path = "gemini_tests.rs"]
mod tests;
