//! Gemini API: `POST {base_url}/models/{model}:generateContent` (base_url ends in
//! `/v1beta`).
//!
//! The canonical (OpenAI chat) request becomes `systemInstruction` plus `contents` of
//! role `user` / `model` with `parts`: assistant tool calls are `functionCall` parts, tool
//! messages `functionResponse` parts (named after the call they answer). JSON output is
//! `responseMimeType` (+ `responseSchema`, in Gemini's OpenAPI subset). The key travels in
//! the `x-goog-api-key` header, never in the URL.

use super::http::{clip, parse_go_duration, retry_after, secret_header, transport_error};
use super::tools::{self, Choice};
use super::{ChatRequest, ChatResponse, FailureClass, Provider, ProviderError};
use crate::config::ProviderConfig;
use crate::job::{
    Content, ContentPart, FunctionCall, FunctionType, Message, Output, ResponseFormat, Role,
    ToolCall, Usage,
};
use futures::future::BoxFuture;
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Duration;

pub struct Gemini {
    base: String,
    key: Option<SecretString>,
    client: reqwest::Client,
}

impl Gemini {
    pub fn new(p: &ProviderConfig, key: Option<SecretString>, client: reqwest::Client) -> Self {
        Gemini {
            base: p.base_url.trim_end_matches('/').to_string(),
            key,
            client,
        }
    }

    fn url(&self, model: &str) -> String {
        let model = model.strip_prefix("models/").unwrap_or(model);
        format!("{}/models/{model}:generateContent", self.base)
    }
}

impl Provider for Gemini {
    fn chat<'a>(
        &'a self,
        req: ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            let body = build_body(&req)?;
            let mut http = self.client.post(self.url(req.model)).json(&body);
            if let Some(key) = &self.key {
                http = http.header("x-goog-api-key", secret_header(key)?);
            }
            let resp = http.send().await.map_err(transport_error)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(transport_error)?;
            if !status.is_success() {
                return Err(classify(status.as_u16(), &headers, &bytes));
            }
            parse_success(&bytes).and_then(|r| tools::checked(req.tools, r))
        })
    }
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

fn parse_success(bytes: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(bytes).map_err(|e| {
        ProviderError::new(
            FailureClass::ServerError,
            Some(200),
            format!("unreadable generateContent response: {e}"),
        )
    })?;
    let usage = wire.usage_metadata.map_or_else(Usage::default, |u| Usage {
        input_tokens: u.prompt_token_count,
        cached_input_tokens: u.cached_content_token_count.min(u.prompt_token_count),
        output_tokens: u.candidates_token_count + u.thoughts_token_count,
        reasoning_tokens: u.thoughts_token_count,
    });
    let Some(candidate) = wire.candidates.into_iter().next() else {
        return Err(
            match wire.prompt_feedback.and_then(|f| {
                f.block_reason
                    .map(|r| (r, f.block_reason_message.unwrap_or_default()))
            }) {
                Some((reason, msg)) => ProviderError::new(
                    FailureClass::ContentFiltered,
                    Some(200),
                    clip(format!("prompt blocked ({reason}) {msg}").trim_end()),
                ),
                None => ProviderError::new(
                    FailureClass::ServerError,
                    Some(200),
                    "generateContent response without candidates",
                ),
            },
        );
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
                    Some(200),
                    format!("the answer was blocked (finishReason {reason})"),
                ));
            }
            "content_filter"
        }
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" if empty => {
            return Err(ProviderError::new(
                FailureClass::ServerError,
                Some(200),
                format!("the model produced an unusable function call (finishReason {reason})"),
            ));
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
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::job::{FunctionDef, ImageUrl, JsonSchemaFormat, Tool};

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/gemini/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn msg(role: Role, content: Option<Content>) -> Message {
        Message {
            role,
            content,
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }

    fn text(role: Role, t: &str) -> Message {
        msg(role, Some(Content::Text(t.into())))
    }

    fn weather_tool() -> Tool {
        Tool {
            kind: FunctionType::Function,
            function: FunctionDef {
                name: "get_weather".into(),
                description: Some("Current weather for a city".into()),
                parameters: Some(json!({"type": "object", "additionalProperties": false,
                    "properties": {"city": {"type": "string"},
                        "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", null]}},
                    "required": ["city"]})),
                strict: Some(true),
            },
        }
    }

    fn ping_tool() -> Tool {
        Tool {
            kind: FunctionType::Function,
            function: FunctionDef {
                name: "ping".into(),
                description: None,
                parameters: Some(json!({"type": "object", "properties": {}})),
                strict: None,
            },
        }
    }

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            kind: FunctionType::Function,
            function: FunctionCall {
                name: name.into(),
                arguments: args.into(),
            },
        }
    }

    fn conversation() -> Vec<Message> {
        let mut assistant = msg(Role::Assistant, None);
        assistant.tool_calls = Some(vec![
            call("call_a", "get_weather", r#"{"city":"Paris"}"#),
            call("call_b", "ping", ""),
        ]);
        let mut weather = text(Role::Tool, r#"{"temp_c":21}"#);
        weather.tool_call_id = Some("call_a".into());
        let mut pong = text(Role::Tool, "pong");
        pong.tool_call_id = Some("call_b".into());
        vec![
            text(Role::System, "You are terse."),
            text(Role::System, "Answer in English."),
            msg(
                Role::User,
                Some(Content::Parts(vec![
                    ContentPart::Text {
                        text: "What is in these pictures, and the weather in Paris?".into(),
                    },
                    ContentPart::ImageUrl {
                        image_url: ImageUrl {
                            url: "data:image/png;base64,iVBORw0KGgo=".into(),
                            detail: None,
                        },
                    },
                    ContentPart::ImageUrl {
                        image_url: ImageUrl {
                            url: "https://example.com/cat.webp".into(),
                            detail: None,
                        },
                    },
                ])),
            ),
            assistant,
            weather,
            pong,
            text(Role::User, "Thanks. Summarise as JSON."),
        ]
    }

    #[test]
    fn builds_a_multi_turn_tool_conversation() {
        let messages = conversation();
        let tools = [weather_tool(), ping_tool()];
        let stop = ["END".to_string()];
        let format = ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: "summary".into(),
                description: None,
                schema: Some(
                    json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object", "properties": {"summary": {"type": "string"},
                        "temp_c": {"type": "number"}},
                    "required": ["summary"], "additionalProperties": false}),
                ),
                strict: Some(true),
            },
        };
        let choice = json!({"type": "function", "function": {"name": "get_weather"}});
        let req = ChatRequest {
            model: "gemini-2.0-flash",
            messages: &messages,
            max_tokens: 512,
            temperature: Some(0.2),
            stop: Some(&stop),
            response_format: Some(&format),
            tools: Some(&tools),
            tool_choice: Some(&choice),
        };
        let body = build_body(&req).unwrap();
        let expected = json!({
            "contents": [
                {"role": "user", "parts": [
                    {"text": "What is in these pictures, and the weather in Paris?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp"}}
                ]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "ping", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"content": {"temp_c": 21}}}},
                    {"functionResponse": {"name": "ping", "response": {"content": "pong"}}},
                    {"text": "Thanks. Summarise as JSON."}
                ]}
            ],
            "systemInstruction": {"parts": [{"text": "You are terse.\n\nAnswer in English."}]},
            "generationConfig": {
                "temperature": 0.2,
                "maxOutputTokens": 512,
                "stopSequences": ["END"],
                "responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT",
                    "properties": {"summary": {"type": "STRING"}, "temp_c": {"type": "NUMBER"}},
                    "required": ["summary"]}
            },
            "tools": [{"functionDeclarations": [
                {"name": "get_weather", "description": "Current weather for a city",
                 "parameters": {"type": "OBJECT", "properties": {
                     "city": {"type": "STRING"},
                     "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"], "nullable": true}},
                  "required": ["city"]}},
                {"name": "ping"}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn tool_choices_json_object_and_plain_requests() {
        let messages = vec![text(Role::User, "hi")];
        let tools = [ping_tool()];
        let mut req = ChatRequest {
            model: "m",
            messages: &messages,
            max_tokens: 16,
            temperature: None,
            stop: None,
            response_format: None,
            tools: None,
            tool_choice: None,
        };
        assert_eq!(
            build_body(&req).unwrap(),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": 16}})
        );
        req.tools = Some(&tools);
        for (canonical, mode) in [
            (json!("auto"), "AUTO"),
            (json!("required"), "ANY"),
            (json!("none"), "NONE"),
        ] {
            let body = build_body(&ChatRequest {
                tool_choice: Some(&canonical),
                ..req
            })
            .unwrap();
            assert_eq!(
                body["toolConfig"],
                json!({"functionCallingConfig": {"mode": mode}})
            );
        }
        let body = build_body(&ChatRequest {
            response_format: Some(&ResponseFormat::JsonObject),
            ..req
        })
        .unwrap();
        assert_eq!(
            body["generationConfig"],
            json!({"maxOutputTokens": 16, "responseMimeType": "application/json"})
        );
    }

    #[test]
    fn a_tool_answer_needs_its_call() {
        let mut tool = text(Role::Tool, "42");
        tool.tool_call_id = Some("call_zzz".into());
        let messages = vec![text(Role::User, "hi"), tool];
        let req = ChatRequest {
            model: "m",
            messages: &messages,
            max_tokens: 16,
            temperature: None,
            stop: None,
            response_format: None,
            tools: None,
            tool_choice: None,
        };
        let e = build_body(&req).unwrap_err();
        assert_eq!(e.class, FailureClass::InvalidRequest);
        assert!(e.message.contains("call_zzz"), "{}", e.message);
    }

    #[test]
    fn model_paths() {
        let p: ProviderConfig = toml::from_str(
            r#"name = "gemini"
kind = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta/"
api_key_env = "GEMINI_API_KEY""#,
        )
        .unwrap();
        let g = Gemini::new(&p, None, reqwest::Client::new());
        let want = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent";
        assert_eq!(g.url("gemini-2.0-flash"), want);
        assert_eq!(g.url("models/gemini-2.0-flash"), want);
    }

    #[test]
    fn parses_a_text_answer() {
        let r = parse_success(&fixture("text.json")).unwrap();
        assert_eq!(
            r.output,
            Output {
                content: Some("Paris is the capital of France.".into()),
                tool_calls: vec![],
                finish_reason: "stop".into()
            }
        );
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 8,
                cached_input_tokens: 0,
                output_tokens: 7,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn parses_a_function_call() {
        let r = parse_success(&fixture("function_call.json")).unwrap();
        assert_eq!(r.output.finish_reason, "tool_calls");
        assert_eq!(r.output.content, None);
        let c = &r.output.tool_calls[0];
        assert!(c.id.starts_with("call_") && c.id.len() == 29, "{}", c.id);
        assert_eq!(c.function.name, "get_weather");
        assert_eq!(c.function.arguments, r#"{"city":"Paris","unit":"celsius"}"#);
        assert!(tools::check_tool_calls(&[weather_tool()], &r.output.tool_calls).is_ok());
    }

    #[test]
    fn parses_thinking_max_tokens_and_cache_usage() {
        let r = parse_success(&fixture("max_tokens.json")).unwrap();
        assert_eq!(r.output.finish_reason, "length");
        assert_eq!(r.output.content, None);
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 12,
                cached_input_tokens: 0,
                output_tokens: 63,
                reasoning_tokens: 63
            }
        );
        let r = parse_success(&fixture("cache_thinking.json")).unwrap();
        assert_eq!(
            r.output.content.as_deref(),
            Some("Liability is capped at twelve months of fees.")
        );
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 4242,
                cached_input_tokens: 4096,
                output_tokens: 11 + 347,
                reasoning_tokens: 347
            }
        );
    }

    #[test]
    fn blocked_answers_are_content_filtered() {
        let e = parse_success(&fixture("safety.json")).unwrap_err();
        assert_eq!(e.class, FailureClass::ContentFiltered);
        let e = parse_success(&fixture("prompt_blocked.json")).unwrap_err();
        assert_eq!(e.class, FailureClass::ContentFiltered);
        assert!(e.message.contains("PROHIBITED_CONTENT"), "{}", e.message);
    }

    #[test]
    fn rate_limit_with_retry_info() {
        let e = classify(429, &HeaderMap::new(), &fixture("error_429.json"));
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(26)));
        assert_eq!(
            retry_info(&[
                json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"})
            ]),
            Some(Duration::from_millis(1500))
        );
        let e = classify(
            429,
            &HeaderMap::new(),
            br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn classifies_errors() {
        let h = HeaderMap::new();
        let cases = [
            (429, "error_quota_day.json", FailureClass::QuotaExhausted),
            (503, "error_503.json", FailureClass::Overloaded),
            (500, "error_500.json", FailureClass::ServerError),
            (504, "error_504.json", FailureClass::Timeout),
            (400, "error_context.json", FailureClass::ContextTooLong),
            (400, "error_key.json", FailureClass::Auth),
            (403, "error_403.json", FailureClass::Auth),
            (400, "error_400.json", FailureClass::InvalidRequest),
            (404, "error_404.json", FailureClass::InvalidRequest),
        ];
        for (status, file, class) in cases {
            let e = classify(status, &h, &fixture(file));
            assert_eq!(e.class, class, "{file}");
            assert_eq!(e.status, Some(status));
            assert!(
                !e.message.is_empty() && !e.message.starts_with('{'),
                "{file}: {}",
                e.message
            );
        }
        // The streaming endpoint's array-wrapped error.
        let e = classify(503, &h, br#"[{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}]"#);
        assert_eq!(e.class, FailureClass::Overloaded);
        assert_eq!(
            e.message,
            "The model is overloaded. Please try again later."
        );
    }

    #[test]
    fn the_key_is_a_sensitive_header() {
        let v = secret_header(&SecretString::from("AIza-secret")).unwrap();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("secret"));
    }
}
