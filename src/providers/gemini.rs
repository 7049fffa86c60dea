//! Gemini API: `POST {base_url}/models/{model}:generateContent` (base_url ends in
//! `/v1beta`).
//!
//! The canonical (OpenAI chat) request becomes `systemInstruction` plus `contents` of
//! role `user` / `model` with `parts`: assistant tool calls are `functionCall` parts, tool
//! messages `functionResponse` parts (named after the call they answer). JSON output is
//! `responseMimeType` (+ `responseSchema`, in Gemini's OpenAPI subset). The key travels in
//! the `x-goog-api-key` header, never in the URL.

use super::http::{clip, secret_header};
use super::ratelimit_headers::{parse_go_duration, retry_after};
use super::tools::{self, Choice};
use super::{http, stream, ChatRequest, ChatResponse, FailureClass, Provider, ProviderError};
use crate::config::ProviderConfig;
use crate::job::{
    Content, ContentPart, FunctionCall, FunctionType, Message, Output, ResponseFormat, Role,
    ToolCall, Usage,
};
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Duration;

const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

pub struct Gemini {
    base: String,
    key: Option<SecretString>,
    client: http::Pool,
    max_response_bytes: usize,
}

impl Gemini {
    pub fn new(
        p: &ProviderConfig,
        key: Option<SecretString>,
        client: http::Pool,
        max_response_bytes: usize,
    ) -> Self {
        Gemini {
            base: p.base_url.trim_end_matches('/').to_string(),
            key,
            client,
            max_response_bytes,
        }
    }

    fn url(&self, model: &str, stream: bool) -> String {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        format!("{}/models/{model}:{method}", self.base)
    }

    /// The request for `req`, streamed or not.
    fn post(
        &self,
        req: &ChatRequest<'_>,
        stream: bool,
    ) -> Result<http::Post<'static>, ProviderError> {
        // The JSON tree is dropped once encoded: only the bytes wait for the answer.
        let mut post = http::Post::json(self.url(req.model, stream), &build_body(req)?)?;
        if let Some(key) = &self.key {
            post = post.header(X_GOOG_API_KEY, secret_header(key)?);
        }
        Ok(post)
    }
}

http_provider!(Gemini, stream::gemini::Assembler);

/// One HTTP answer to `req` read into the adapter's result, without the network (what
/// `fuzz/` fuzzes).
pub fn read_answer(
    req: &ChatRequest<'_>,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    let rate = None; // Gemini sends no rate-limit headers.
    super::read_answer_with(req, (status, headers, body), rate, parse_success, classify)
}

fn invalid(message: String) -> ProviderError {
    ProviderError::new(FailureClass::InvalidRequest, None, message)
}

/// The `generateContent` body for a canonical request.
pub(crate) fn build_body(req: &ChatRequest<'_>) -> Result<Value, ProviderError> {
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Tool call id → function name, from the assistant messages seen so far.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System => {
                let t = m.text();
                if !t.is_empty() {
                    system.push(t);
                }
                continue;
            }
            Role::User => ("user", content_parts(m, i)?),
            Role::Assistant => {
                let mut parts = content_parts(m, i)?;
                for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                    let args = tools::arguments_object(&c.function.arguments).ok_or_else(|| {
                        invalid(format!(
                            "messages[{i}].tool_calls[{j}].function.arguments: not a JSON object"
                        ))
                    })?;
                    call_names.insert(c.id.as_str(), c.function.name.as_str());
                    parts.push(json!({"functionCall": {"name": c.function.name, "args": args}}));
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let name = call_names
                    .get(id)
                    .copied()
                    .or(m.name.as_deref())
                    .ok_or_else(|| {
                        invalid(format!(
                            "messages[{i}].tool_call_id: {id:?} answers no earlier assistant tool call"
                        ))
                    })?;
                let text = m.text();
                let content = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => Value::String(text),
                };
                (
                    "user",
                    vec![
                        json!({"functionResponse": {"name": name, "response": {"content": content}}}),
                    ],
                )
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((r, p)) if *r == role => p.extend(parts),
            _ => contents.push((role, parts)),
        }
    }

    let mut body = Map::new();
    let contents = contents
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    let mut config = Map::new();
    if let Some(t) = req.temperature {
        config.insert("temperature".into(), Value::from(t.clamp(0.0, 2.0)));
    }
    config.insert("maxOutputTokens".into(), Value::from(req.max_tokens));
    if let Some(stop) = req.stop.filter(|s| !s.is_empty()) {
        config.insert("stopSequences".into(), json!(stop));
    }
    match req.response_format {
        Some(ResponseFormat::JsonObject) => {
            config.insert("responseMimeType".into(), Value::from("application/json"));
        }
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            config.insert("responseMimeType".into(), Value::from("application/json"));
            if let Some(s) = &json_schema.schema {
                config.insert("responseSchema".into(), tools::gemini_schema(s));
            }
        }
        Some(ResponseFormat::Text) | None => {}
    }
    body.insert("generationConfig".into(), Value::Object(config));
    if let Some(list) = req.tools.filter(|t| !t.is_empty()) {
        let decls: Vec<Value> = list
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.function.name});
                if let Some(desc) = &t.function.description {
                    d["description"] = Value::from(desc.as_str());
                }
                // Gemini refuses an OBJECT without properties: a tool without
                // parameters declares none.
                let params = t.function.parameters.as_ref().map(tools::gemini_schema);
                if let Some(p) = params.filter(|p| {
                    p.get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|m| !m.is_empty())
                }) {
                    d["parameters"] = p;
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
        let calling = match tools::choice(req.tool_choice) {
            Some(Choice::Auto) => Some(json!({"mode": "AUTO"})),
            Some(Choice::Required) => Some(json!({"mode": "ANY"})),
            Some(Choice::None) => Some(json!({"mode": "NONE"})),
            Some(Choice::Named(name)) => {
                Some(json!({"mode": "ANY", "allowedFunctionNames": [name]}))
            }
            None => None,
        };
        if let Some(c) = calling {
            body.insert("toolConfig".into(), json!({ "functionCallingConfig": c }));
        }
    }
    Ok(Value::Object(body))
}

/// A user or assistant message's content as text and media parts (empty texts dropped).
fn content_parts(m: &Message, i: usize) -> Result<Vec<Value>, ProviderError> {
    match &m.content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![json!({ "text": t })]),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p {
                    ContentPart::Text { text } if text.is_empty() => {}
                    ContentPart::Text { text } => out.push(json!({ "text": text })),
                    ContentPart::ImageUrl { image_url } => {
                        out.push(image_part(&image_url.url).ok_or_else(|| {
                            invalid(format!(
                                "messages[{i}].content[{j}].image_url.url: Gemini takes base64 data: URLs and http(s) URLs only"
                            ))
                        })?)
                    }
                }
            }
            Ok(out)
        }
    }
}

fn image_part(url: &str) -> Option<Value> {
    if let Some((mime, data)) = tools::data_url(url) {
        return Some(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        .then(|| json!({"fileData": {"mimeType": tools::guess_image_mime(url), "fileUri": url}}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    prompt_feedback: Option<WirePromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
}

/// Only the usage of a response whose other fields are unreadable (it is still billed).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBilled {
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    /// A thought summary (`includeThoughts`), not part of the answer.
    #[serde(default)]
    thought: bool,
    #[serde(default)]
    function_call: Option<WireCall>,
}

#[derive(Deserialize)]
struct WireCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
    #[serde(default)]
    block_reason_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

/// Finish reasons that mean the output was blocked.
const FILTERED: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

/// Gemini's output count leaves out thinking tokens, which are billed as output.
/// The usage of a (possibly incomplete) response body, when it has one.
pub(crate) fn billed_usage(body: &Value) -> Option<Usage> {
    WireBilled::deserialize(body)
        .ok()?
        .usage_metadata
        .map(usage)
}

fn usage(u: WireUsage) -> Usage {
    Usage {
        input_tokens: u.prompt_token_count,
        cached_input_tokens: u.cached_content_token_count.min(u.prompt_token_count),
        cache_write_tokens: 0,
        output_tokens: u
            .candidates_token_count
            .saturating_add(u.thoughts_token_count),
        reasoning_tokens: u.thoughts_token_count,
    }
}

fn parse_success(status: u16, bytes: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(bytes).map_err(|e| {
        let billed = serde_json::from_slice::<WireBilled>(bytes).ok();
        ProviderError::new(
            FailureClass::ServerError,
            Some(status),
            format!("unreadable generateContent response: {e}"),
        )
        .with_usage(billed.and_then(|b| b.usage_metadata).map(usage))
    })?;
    let billed = wire.usage_metadata.map(usage);
    let usage = billed.unwrap_or_default();
    let Some(candidate) = wire.candidates.into_iter().next() else {
        let err = match wire.prompt_feedback.and_then(|f| {
            f.block_reason
                .map(|r| (r, f.block_reason_message.unwrap_or_default()))
        }) {
            Some((reason, msg)) => ProviderError::new(
                FailureClass::ContentFiltered,
                Some(status),
                clip(format!("prompt blocked ({reason}) {msg}").trim_end()),
            ),
            None => ProviderError::new(
                FailureClass::ServerError,
                Some(status),
                "generateContent response without candidates",
            ),
        };
        return Err(err.with_usage(billed));
    };
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
        if let Some(f) = part.function_call {
            let args = if f.args.is_null() { json!({}) } else { f.args };
            calls.push(ToolCall {
                id: f.id.filter(|id| !id.is_empty()).unwrap_or_else(new_call_id),
                kind: FunctionType::Function,
                function: FunctionCall {
                    name: f.name,
                    arguments: args.to_string(),
                },
            });
        } else if let Some(t) = part.text.filter(|_| !part.thought) {
            text.get_or_insert_with(String::new).push_str(&t);
        }
    }
    let reason = candidate.finish_reason.unwrap_or_default();
    let empty = calls.is_empty() && text.as_deref().is_none_or(str::is_empty);
    let finish = match reason.as_str() {
        "MAX_TOKENS" => "length",
        r if FILTERED.contains(&r) => {
            if empty {
                return Err(ProviderError::new(
                    FailureClass::ContentFiltered,
                    Some(status),
                    format!("the answer was blocked (finishReason {reason})"),
                )
                .with_usage(billed));
            }
            "content_filter"
        }
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" if empty => {
            return Err(ProviderError::new(
                FailureClass::ServerError,
                Some(status),
                format!("the model produced an unusable function call (finishReason {reason})"),
            )
            .with_usage(billed));
        }
        _ if !calls.is_empty() => "tool_calls",
        _ => "stop",
    };
    Ok(ChatResponse {
        rate: None,
        output: Output {
            content: text,
            tool_calls: calls,
            finish_reason: finish.to_string(),
        },
        usage,
    })
}

/// Gemini's function calls carry no id (usually): make one, OpenAI-style.
fn new_call_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

fn parse_error(body: &[u8]) -> Option<WireErrorBody> {
    // `:streamGenerateContent` wraps errors in an array; accept both.
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Array(mut a) if !a.is_empty() => serde_json::from_value::<WireError>(a.remove(0))
            .ok()
            .map(|e| e.error),
        v => serde_json::from_value::<WireError>(v).ok().map(|e| e.error),
    }
}

fn detail<'a>(details: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    let full = format!("type.googleapis.com/{kind}");
    details
        .iter()
        .filter(move |d| d.get("@type").and_then(Value::as_str) == Some(full.as_str()))
}

/// Classify a non-2xx answer from its status, `google.rpc` status name, message and
/// details.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed = parse_error(body);
    let message = match &parsed {
        Some(e) if !e.message.is_empty() => clip(&e.message),
        _ => clip(&String::from_utf8_lossy(body)),
    };
    let details: &[Value] = parsed.as_ref().map_or(&[], |e| &e.details);
    let rpc_status = parsed.as_ref().map_or("", |e| e.status.as_str());
    let lower = message.to_ascii_lowercase();
    let per_day = lower.contains("per day")
        || detail(details, "google.rpc.QuotaFailure")
            .filter_map(|d| d.get("violations").and_then(Value::as_array))
            .flatten()
            .any(|v| {
                ["quotaId", "quotaMetric"].iter().any(|k| {
                    v.get(*k).and_then(Value::as_str).is_some_and(|s| {
                        s.contains("PerDay") || s.to_ascii_lowercase().contains("per_day")
                    })
                })
            });
    let bad_key = detail(details, "google.rpc.ErrorInfo").any(|d| {
        d.get("reason")
            .and_then(Value::as_str)
            .is_some_and(|r| r.starts_with("API_KEY_"))
    }) || lower.contains("api key not valid");
    let too_long =
        lower.contains("exceeds the maximum number of tokens") || lower.contains("token count");
    let class = match status {
        429 if per_day => FailureClass::QuotaExhausted,
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        400 if bad_key => FailureClass::Auth,
        400 if too_long => FailureClass::ContextTooLong,
        408 | 504 => FailureClass::Timeout,
        503 => FailureClass::Overloaded,
        s if s >= 500 => FailureClass::ServerError,
        _ if rpc_status == "UNAUTHENTICATED" || rpc_status == "PERMISSION_DENIED" => {
            FailureClass::Auth
        }
        _ => FailureClass::InvalidRequest,
    };
    let mut err = ProviderError::new(class, Some(status), message);
    if class == FailureClass::RateLimited {
        err.retry_after = retry_info(details).or_else(|| retry_after(headers));
    } else if class.is_transient() {
        err.retry_after = retry_after(headers).or_else(|| retry_info(details));
    }
    err
}

/// `google.rpc.RetryInfo.retryDelay`: a protobuf Duration in JSON, `"7s"`, `"1.5s"`.
fn retry_info(details: &[Value]) -> Option<Duration> {
    detail(details, "google.rpc.RetryInfo")
        .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .find_map(parse_go_duration)
}

#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
