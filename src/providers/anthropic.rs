//! Anthropic Messages API: `POST {base_url}/v1/messages`.
//!
//! The canonical (OpenAI chat) request becomes a top-level `system` string and
//! alternating `user` / `assistant` messages of content blocks: assistant tool calls are
//! `tool_use` blocks, tool messages `tool_result` blocks in a user message. Anthropic has
//! no JSON mode, so a JSON `response_format` is an instruction appended to the system
//! prompt (with the schema when one is given).

use super::http::{clip, secret_header};
use super::ratelimit_headers::{self, retry_after};
use super::tools::{self, Choice};
use super::{http, stream, ChatRequest, ChatResponse, FailureClass, Provider, ProviderError};
use crate::config::ProviderConfig;
use crate::job::{
    Content, ContentPart, FunctionCall, FunctionType, Message, Output, ResponseFormat, Role,
    ToolCall, Usage,
};
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The API version every request names.
const VERSION: &str = "2023-06-01";
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Appended to the system prompt when JSON is asked for.
const JSON_INSTRUCTION: &str =
    "Respond with a single JSON object only: no prose before or after it, no Markdown code fences.";

pub struct Anthropic {
    url: String,
    key: Option<SecretString>,
    client: http::Pool,
    max_response_bytes: usize,
}

impl Anthropic {
    pub fn new(
        p: &ProviderConfig,
        key: Option<SecretString>,
        client: http::Pool,
        max_response_bytes: usize,
    ) -> Self {
        Anthropic {
            url: format!("{}/v1/messages", p.base_url.trim_end_matches('/')),
            key,
            client,
            max_response_bytes,
        }
    }
}

impl Anthropic {
    /// The request for `req`, streamed or not.
    fn post<'a>(
        &'a self,
        req: &ChatRequest<'_>,
        stream: bool,
    ) -> Result<http::Post<'a>, ProviderError> {
        let mut body = build_body(req)?;
        if stream {
            body["stream"] = Value::Bool(true);
        }
        // The JSON tree is dropped once encoded: only the bytes wait for the answer.
        let mut post = http::Post::json(&self.url, &body)?
            .header(ANTHROPIC_VERSION, HeaderValue::from_static(VERSION));
        if let Some(key) = &self.key {
            post = post.header(X_API_KEY, secret_header(key)?);
        }
        Ok(post)
    }
}

http_provider!(Anthropic, stream::anthropic::Assembler);

/// One HTTP answer to `req` read into the adapter's result, without the network (what
/// `fuzz/` fuzzes).
pub fn read_answer(
    req: &ChatRequest<'_>,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    let rate = ratelimit_headers::anthropic(headers);
    super::read_answer_with(
        req,
        (status, headers, body),
        rate,
        |status, body| parse_success(status, body, wants_json(req.response_format)),
        classify,
    )
}

fn wants_json(f: Option<&ResponseFormat>) -> bool {
    matches!(
        f,
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
    )
}

fn invalid(message: String) -> ProviderError {
    ProviderError::new(FailureClass::InvalidRequest, None, message)
}

/// The Messages API body for a canonical request.
pub(crate) fn build_body(req: &ChatRequest<'_>) -> Result<Value, ProviderError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, blocks) = match m.role {
            Role::System => {
                let t = m.text();
                if !t.is_empty() {
                    system.push(t);
                }
                continue;
            }
            Role::User => ("user", content_blocks(m, i)?),
            Role::Assistant => {
                let mut blocks = content_blocks(m, i)?;
                for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                    let input =
                        tools::arguments_object(&c.function.arguments).ok_or_else(|| {
                            invalid(format!(
                            "messages[{i}].tool_calls[{j}].function.arguments: not a JSON object"
                        ))
                        })?;
                    blocks.push(json!({"type": "tool_use", "id": c.id,
                        "name": c.function.name, "input": input}));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    invalid(format!(
                        "messages[{i}].tool_call_id: required for a tool message"
                    ))
                })?;
                let mut block = json!({"type": "tool_result", "tool_use_id": id});
                let text = m.text();
                if !text.is_empty() {
                    block["content"] = Value::String(text);
                }
                ("user", vec![block])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    match req.response_format {
        Some(ResponseFormat::JsonObject) => system.push(JSON_INSTRUCTION.to_string()),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let mut s = JSON_INSTRUCTION.to_string();
            if let Some(schema) = &json_schema.schema {
                s.push_str(" It must conform to this JSON schema:\n");
                s.push_str(&schema.to_string());
            }
            system.push(s);
        }
        Some(ResponseFormat::Text) | None => {}
    }

    let mut body = Map::new();
    body.insert("model".into(), Value::from(req.model));
    body.insert("max_tokens".into(), Value::from(req.max_tokens));
    if !system.is_empty() {
        body.insert("system".into(), Value::String(system.join("\n\n")));
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), Value::from(t.clamp(0.0, 1.0)));
    }
    if let Some(stop) = req.stop.filter(|s| !s.is_empty()) {
        body.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(list) = req.tools.filter(|t| !t.is_empty()) {
        let defs: Vec<Value> = list
            .iter()
            .map(|t| {
                let mut schema = t
                    .function
                    .parameters
                    .clone()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                if let Some(o) = schema.as_object_mut() {
                    o.entry("type").or_insert_with(|| Value::from("object"));
                }
                let mut def = json!({"name": t.function.name});
                if let Some(d) = &t.function.description {
                    def["description"] = Value::from(d.as_str());
                }
                def["input_schema"] = schema;
                def
            })
            .collect();
        body.insert("tools".into(), Value::Array(defs));
        let choice = match tools::choice(req.tool_choice) {
            Some(Choice::Auto) => Some(json!({"type": "auto"})),
            Some(Choice::Required) => Some(json!({"type": "any"})),
            Some(Choice::Named(name)) => Some(json!({"type": "tool", "name": name})),
            Some(Choice::None) => Some(json!({"type": "none"})),
            None => None,
        };
        if let Some(c) = choice {
            body.insert("tool_choice".into(), c);
        }
    }
    Ok(Value::Object(body))
}

/// A message's content as text and image blocks (empty texts dropped: Anthropic
/// refuses them).
fn content_blocks(m: &Message, i: usize) -> Result<Vec<Value>, ProviderError> {
    match &m.content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![json!({"type": "text", "text": t})]),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p {
                    ContentPart::Text { text } if text.is_empty() => {}
                    ContentPart::Text { text } => out.push(json!({"type": "text", "text": text})),
                    ContentPart::ImageUrl { image_url } => {
                        out.push(image_block(&image_url.url).ok_or_else(|| {
                            invalid(format!(
                                "messages[{i}].content[{j}].image_url.url: Anthropic takes base64 data: URLs and http(s) URLs only"
                            ))
                        })?)
                    }
                }
            }
            Ok(out)
        }
    }
}

fn image_block(url: &str) -> Option<Value> {
    if let Some((media_type, data)) = tools::data_url(url) {
        return Some(json!({"type": "image", "source":
            {"type": "base64", "media_type": media_type, "data": data}}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        .then(|| json!({"type": "image", "source": {"type": "url", "url": url}}))
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Only the usage of a message whose other fields are unreadable (it is still billed).
#[derive(Deserialize)]
struct WireBilled {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// `thinking`, `redacted_thinking`, server tool blocks …: not part of the answer.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// The usage of a (possibly incomplete) message body, when it has one.
pub(crate) fn billed_usage(body: &Value) -> Option<Usage> {
    WireBilled::deserialize(body).ok()?.usage.map(usage)
}

/// Anthropic's `input_tokens` leaves out cache reads and writes: ours counts them all.
fn usage(u: WireUsage) -> Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    let written = u.cache_creation_input_tokens.unwrap_or(0);
    let input = u.input_tokens.saturating_add(read).saturating_add(written);
    let cached = read.min(input);
    Usage {
        input_tokens: input,
        cached_input_tokens: cached,
        cache_write_tokens: written.min(input - cached),
        output_tokens: u.output_tokens,
        reasoning_tokens: 0,
    }
}

fn parse_success(
    status: u16,
    bytes: &[u8],
    json_requested: bool,
) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(bytes).map_err(|e| {
        let billed = serde_json::from_slice::<WireBilled>(bytes).ok();
        ProviderError::new(
            FailureClass::ServerError,
            Some(status),
            format!("unreadable message: {e}"),
        )
        .with_usage(billed.and_then(|b| b.usage).map(usage))
    })?;
    let billed = wire.usage.map(usage);
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for block in wire.content {
        match block {
            WireBlock::Text { text: t } => text.get_or_insert_with(String::new).push_str(&t),
            WireBlock::ToolUse { id, name, input } => {
                let input = if input.is_null() { json!({}) } else { input };
                calls.push(ToolCall {
                    id,
                    kind: FunctionType::Function,
                    function: FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                });
            }
            WireBlock::Other => {}
        }
    }
    let stop = wire.stop_reason.unwrap_or_default();
    if stop == "refusal" && text.as_deref().is_none_or(|t| t.trim().is_empty()) && calls.is_empty()
    {
        return Err(ProviderError::new(
            FailureClass::ContentFiltered,
            Some(status),
            "the model refused to answer (stop_reason: refusal)",
        )
        .with_usage(billed));
    }
    if json_requested {
        text = text.map(|t| strip_code_fence(&t));
    }
    let usage = billed.unwrap_or_default();
    Ok(ChatResponse {
        rate: None,
        output: Output {
            content: text,
            tool_calls: calls,
            finish_reason: normalise_finish(&stop).to_string(),
        },
        usage,
    })
}

fn normalise_finish(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A reply wrapped in a Markdown code fence despite the instruction, unwrapped.
fn strip_code_fence(t: &str) -> String {
    let s = t.trim();
    let inner = s
        .strip_prefix("```")
        .and_then(|r| r.strip_suffix("```"))
        .map(|r| {
            r.split_once('\n').map_or(r, |(lang, body)| {
                if lang.trim().chars().all(|c| c.is_ascii_alphanumeric()) {
                    body
                } else {
                    r
                }
            })
        });
    match inner {
        Some(body) => body.trim().to_string(),
        None => t.to_string(),
    }
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Option<Value>,
}

/// Classify a non-2xx answer from its status, error type, message and headers.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<WireError>(body)
        .ok()
        .map(|e| e.error);
    let kind = parsed.as_ref().map_or("", |e| e.kind.as_str());
    let message = match &parsed {
        Some(e) if !e.message.is_empty() => clip(&e.message),
        _ => clip(&String::from_utf8_lossy(body)),
    };
    let lower = message.to_ascii_lowercase();
    let error_code = parsed
        .as_ref()
        .and_then(|e| e.details.as_ref())
        .and_then(|d| d.get("error_code"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let spend_limit = error_code == "enforced_spend_limit_reached"
        || lower.contains("credit balance")
        || lower.contains("spend limit")
        || lower.contains("usage limits");
    let too_long = lower.contains("prompt is too long")
        || lower.contains("exceed context limit")
        || lower.contains("context window");
    let class = match status {
        529 | 503 => FailureClass::Overloaded,
        _ if kind == "overloaded_error" => FailureClass::Overloaded,
        429 if spend_limit => FailureClass::QuotaExhausted,
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        402 => FailureClass::QuotaExhausted,
        413 => FailureClass::ContextTooLong,
        400 if too_long => FailureClass::ContextTooLong,
        400 if spend_limit => FailureClass::QuotaExhausted,
        408 | 504 => FailureClass::Timeout,
        s if s >= 500 => FailureClass::ServerError,
        _ => match kind {
            "authentication_error" | "permission_error" => FailureClass::Auth,
            "billing_error" => FailureClass::QuotaExhausted,
            "request_too_large" => FailureClass::ContextTooLong,
            _ => FailureClass::InvalidRequest,
        },
    };
    let mut err = ProviderError::new(class, Some(status), message);
    if class == FailureClass::RateLimited {
        err.retry_after = retry_after(headers).or_else(|| ratelimit_reset(headers));
    } else if class.is_transient() {
        err.retry_after = retry_after(headers);
    }
    err
}

/// When the exhausted limits (`anthropic-ratelimit-*-remaining: 0`) are back: the latest
/// of their `-reset` times (RFC 3339), since the request needs every one of them.
fn ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    let get = |k: String| {
        headers
            .get(k.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let mut best: Option<Duration> = None;
    for limit in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let remaining = get(format!("anthropic-ratelimit-{limit}-remaining"));
        if remaining.and_then(|r| r.parse::<u64>().ok()) != Some(0) {
            continue;
        }
        let Some(reset) = get(format!("anthropic-ratelimit-{limit}-reset"))
            .and_then(|r| chrono::DateTime::parse_from_rfc3339(r).ok())
        else {
            continue;
        };
        let wait = ratelimit_headers::wait_until(reset);
        best = Some(best.map_or(wait, |b| b.max(wait)));
    }
    best
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
