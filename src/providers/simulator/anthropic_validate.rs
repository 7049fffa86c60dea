//! Anthropic Messages API request checks, with the real API's messages
//! (`invalid_request_error`, pydantic-style `field: problem` texts).

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::text;

const KNOWN_PARAMS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "system",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "output_config",
];
const BLOCK_TYPES: &str = "'text', 'image', 'document', 'search_result', 'thinking', 'redacted_thinking', 'tool_use', 'tool_result'";

/// An Anthropic error: HTTP status, error type, message.
pub(crate) struct AErr(pub StatusCode, pub &'static str, pub String);

pub(crate) fn invalid(message: String) -> AErr {
    AErr(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

type R<T> = Result<T, AErr>;

/// A checked request.
pub(crate) struct MsgRequest {
    pub model: String,
    pub max_tokens: u64,
    pub stops: Vec<String>,
    /// `(name, input_schema)` per tool.
    pub tools: Vec<(String, Value)>,
    /// `auto` | `any` | `tool` | `none`, and the forced tool name.
    pub choice: (String, Option<String>),
    pub thinking_budget: Option<u64>,
    pub prompt_tokens: u64,
    pub cache_marked: bool,
    pub last_user_text: Option<String>,
    /// `"stream": true`: answer with server-sent events.
    pub stream: bool,
    /// `output_config.format` (structured outputs): the JSON schema the text answers.
    pub format_schema: Option<Value>,
}

#[derive(Default)]
struct Tally {
    chars: usize,
    images: u64,
    cache_marked: bool,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a valid boolean",
        Value::Number(_) => "a valid number",
        Value::String(_) => "a valid string",
        Value::Array(_) => "a valid list",
        Value::Object(_) => "a valid dictionary",
    }
}

fn expect_str<'a>(v: Option<&'a Value>, path: &str) -> R<&'a str> {
    match v {
        None | Some(Value::Null) => Err(invalid(format!("{path}: Field required"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("{path}: Input should be a valid string"))),
    }
}

fn note_cache(v: &Value, tally: &mut Tally) {
    if v.get("cache_control").is_some_and(|c| !c.is_null()) {
        tally.cache_marked = true;
    }
}

fn check_blocks(path: &str, role: &str, blocks: &[Value], tally: &mut Tally) -> R<()> {
    for (j, b) in blocks.iter().enumerate() {
        let p = format!("{path}.{j}");
        if !b.is_object() {
            return Err(invalid(format!(
                "{p}: Input should be a valid dictionary or object to extract fields from"
            )));
        }
        note_cache(b, tally);
        let ty = expect_str(b.get("type"), &format!("{p}.type"))?;
        match ty {
            "text" => {
                let t = expect_str(b.get("text"), &format!("{p}.text"))?;
                if t.is_empty() {
                    return Err(invalid(
                        "messages: text content blocks must be non-empty".into(),
                    ));
                }
                tally.chars += t.chars().count();
            }
            "image" | "document" => {
                let src = b
                    .get("source")
                    .filter(|s| s.is_object())
                    .ok_or_else(|| invalid(format!("{p}.source: Field required")))?;
                let st = expect_str(src.get("type"), &format!("{p}.source.type"))?;
                if !["base64", "url", "file", "text", "content"].contains(&st) {
                    return Err(invalid(format!("{p}.source: Input tag '{st}' found using 'type' does not match any of the expected tags: 'base64', 'url', 'file'")));
                }
                tally.images += 1;
            }
            "tool_use" if role == "assistant" => {
                expect_str(b.get("id"), &format!("{p}.id"))?;
                tally.chars += expect_str(b.get("name"), &format!("{p}.name"))?
                    .chars()
                    .count();
                match b.get("input") {
                    Some(Value::Object(o)) => {
                        tally.chars += Value::Object(o.clone()).to_string().len()
                    }
                    None | Some(Value::Null) => {
                        return Err(invalid(format!("{p}.input: Field required")))
                    }
                    Some(_) => {
                        return Err(invalid(format!(
                            "{p}.input: Input should be a valid dictionary"
                        )))
                    }
                }
            }
            "tool_result" if role == "user" => {
                expect_str(b.get("tool_use_id"), &format!("{p}.tool_use_id"))?;
                match b.get("content") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => tally.chars += s.chars().count(),
                    Some(Value::Array(inner)) => {
                        check_blocks(&format!("{p}.content"), role, inner, tally)?
                    }
                    Some(_) => {
                        return Err(invalid(format!(
                            "{p}.content: Input should be a valid string"
                        )))
                    }
                }
            }
            "thinking" | "redacted_thinking" if role == "assistant" => {}
            "tool_use" | "thinking" | "redacted_thinking" | "tool_result" => {
                return Err(invalid(format!(
                    "{p}: `{ty}` blocks are not allowed in `{role}` messages"
                )));
            }
            "search_result" => {}
            other => {
                return Err(invalid(format!("{p}: Input tag '{other}' found using 'type' does not match any of the expected tags: {BLOCK_TYPES}")));
            }
        }
    }
    Ok(())
}

fn ids_of(m: &Value, ty: &str, key: &str) -> Vec<String> {
    m.get("content")
        .and_then(Value::as_array)
        .map(|bs| {
            bs.iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some(ty))
                .filter_map(|b| b.get(key).and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn check_messages(messages: &[Value], tally: &mut Tally) -> R<()> {
    for (i, m) in messages.iter().enumerate() {
        let p = format!("messages.{i}");
        let Some(obj) = m.as_object() else {
            return Err(invalid(format!(
                "{p}: Input should be a valid dictionary or object to extract fields from"
            )));
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !["role", "content"].contains(&k.as_str()))
        {
            return Err(invalid(format!("{p}.{k}: Extra inputs are not permitted")));
        }
        let role = expect_str(obj.get("role"), &format!("{p}.role"))?;
        if role == "system" {
            return Err(invalid("messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".into()));
        }
        if role != "user" && role != "assistant" {
            return Err(invalid(format!(
                "{p}.role: Input should be 'user' or 'assistant'"
            )));
        }
        if i == 0 && role != "user" {
            return Err(invalid(
                "messages: first message must use the \"user\" role".into(),
            ));
        }
        match obj.get("content") {
            None | Some(Value::Null) => {
                return Err(invalid(format!("{p}.content: Field required")))
            }
            Some(Value::String(s)) => {
                if s.is_empty() && !(role == "assistant" && i + 1 == messages.len()) {
                    return Err(invalid(format!("{p}: all messages must have non-empty content except for the optional final assistant message")));
                }
                tally.chars += s.chars().count();
            }
            Some(Value::Array(blocks)) => {
                check_blocks(&format!("{p}.content"), role, blocks, tally)?
            }
            Some(v) => {
                return Err(invalid(format!(
                    "{p}.content: Input should be a valid string or list, got {}",
                    type_name(v)
                )))
            }
        }
        // tool_use blocks need tool_result blocks in the very next message, and back.
        let uses = ids_of(m, "tool_use", "id");
        if !uses.is_empty() {
            let next_results = messages
                .get(i + 1)
                .map(|n| ids_of(n, "tool_result", "tool_use_id"))
                .unwrap_or_default();
            let missing: Vec<&str> = uses
                .iter()
                .filter(|u| !next_results.contains(u))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(invalid(format!("{p}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.", missing.join(", "))));
            }
        }
        let results = ids_of(m, "tool_result", "tool_use_id");
        if !results.is_empty() {
            let prev_uses = i
                .checked_sub(1)
                .and_then(|k| messages.get(k))
                .map(|n| ids_of(n, "tool_use", "id"))
                .unwrap_or_default();
            let stray: Vec<&str> = results
                .iter()
                .filter(|r| !prev_uses.contains(r))
                .map(String::as_str)
                .collect();
            if !stray.is_empty() {
                return Err(invalid(format!("{p}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: {}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message.", stray.join(", "))));
            }
        }
    }
    Ok(())
}

pub(crate) fn validate(body: &Map<String, Value>) -> R<MsgRequest> {
    if let Some(k) = body.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
        return Err(invalid(format!("{k}: Extra inputs are not permitted")));
    }
    let model = expect_str(body.get("model"), "model")?.to_owned();
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err(invalid("max_tokens: Field required".into())),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => n as u64,
            Some(_) => {
                return Err(invalid(
                    "max_tokens: Input should be greater than or equal to 1".into(),
                ))
            }
            None => {
                return Err(invalid(
                    "max_tokens: Input should be a valid integer".into(),
                ))
            }
        },
    };
    let messages = match body.get("messages") {
        None | Some(Value::Null) => return Err(invalid("messages: Field required".into())),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(invalid("messages: at least one message is required".into()))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("messages: Input should be a valid list".into())),
    };
    let mut tally = Tally::default();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => tally.chars += s.chars().count(),
        Some(Value::Array(blocks)) => {
            for (j, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(invalid(format!("system.{j}.type: Input should be 'text'")));
                }
                note_cache(b, &mut tally);
                tally.chars += expect_str(b.get("text"), &format!("system.{j}.text"))?
                    .chars()
                    .count();
            }
        }
        Some(_) => {
            return Err(invalid(
                "system: Input should be a valid string or list".into(),
            ))
        }
    }
    check_messages(messages, &mut tally)?;
    for (key, max) in [("temperature", 1.0), ("top_p", 1.0)] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            let x = v
                .as_f64()
                .ok_or_else(|| invalid(format!("{key}: Input should be a valid number")))?;
            if x < 0.0 {
                return Err(invalid(format!(
                    "{key}: Input should be greater than or equal to 0"
                )));
            }
            if x > max {
                return Err(invalid(format!(
                    "{key}: Input should be less than or equal to {max}"
                )));
            }
        }
    }
    let stops = match body.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().map(str::to_owned).ok_or_else(|| {
                    invalid(format!(
                        "stop_sequences.{i}: Input should be a valid string"
                    ))
                })
            })
            .collect::<R<Vec<_>>>()?,
        Some(_) => {
            return Err(invalid(
                "stop_sequences: Input should be a valid list".into(),
            ))
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream: Input should be a valid boolean".into())),
    };
    let tools = check_tools(body.get("tools"), &mut tally)?;
    let choice = check_tool_choice(body.get("tool_choice"), &tools)?;
    let thinking_budget = match body.get("thinking").filter(|v| !v.is_null()) {
        None => None,
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("disabled") => None,
            Some("enabled") => {
                let b = t.get("budget_tokens").and_then(Value::as_u64).ok_or_else(|| invalid("thinking.enabled.budget_tokens: Field required".into()))?;
                if b < 1024 {
                    return Err(invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into()));
                }
                if b >= max_tokens {
                    return Err(invalid("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size".into()));
                }
                if body.get("temperature").and_then(Value::as_f64).is_some_and(|t| t != 1.0) {
                    return Err(invalid("`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#important-considerations-when-using-extended-thinking".into()));
                }
                Some(b)
            }
            _ => return Err(invalid("thinking: Input tag found using 'type' does not match any of the expected tags: 'enabled', 'disabled'".into())),
        },
    };
    let format_schema = check_output_config(body.get("output_config"), &mut tally)?;
    let prompt_tokens = text::estimate_tokens(tally.chars, messages.len()) + 85 * tally.images;
    let last_user_text = messages
        .last()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(bs)) => bs
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        });
    Ok(MsgRequest {
        model,
        max_tokens,
        stops,
        tools,
        choice,
        thinking_budget,
        prompt_tokens,
        cache_marked: tally.cache_marked,
        last_user_text,
        stream,
        format_schema,
    })
}

/// `output_config`: `effort` (`low` … `max`) and `format`, structured outputs: `{"type":
/// "json_schema", "schema": {…}}` (what the current SDKs send, `messages.parse` too).
/// The schema counts as input, as the API's does.
fn check_output_config(oc: Option<&Value>, tally: &mut Tally) -> R<Option<Value>> {
    let Some(oc) = oc.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Some(obj) = oc.as_object() else {
        return Err(invalid(
            "output_config: Input should be a valid dictionary".into(),
        ));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["effort", "format"].contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "output_config.{k}: Extra inputs are not permitted"
        )));
    }
    match obj.get("effort") {
        None | Some(Value::Null) => {}
        Some(Value::String(e))
            if ["low", "medium", "high", "xhigh", "max"].contains(&e.as_str()) => {}
        Some(_) => {
            return Err(invalid(
                "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
                    .into(),
            ))
        }
    }
    let Some(format) = obj.get("format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(invalid(
            "output_config.format.type: Input should be 'json_schema'".into(),
        ));
    }
    if let Some(k) = format
        .as_object()
        .and_then(|f| f.keys().find(|k| !["type", "schema"].contains(&k.as_str())))
    {
        return Err(invalid(format!(
            "output_config.format.{k}: Extra inputs are not permitted"
        )));
    }
    match format.get("schema") {
        Some(s @ Value::Object(_)) => {
            tally.chars += s.to_string().len();
            Ok(Some(s.clone()))
        }
        None | Some(Value::Null) => Err(invalid(
            "output_config.format.schema: Field required".into(),
        )),
        Some(_) => Err(invalid(
            "output_config.format.schema: Input should be a valid dictionary".into(),
        )),
    }
}

fn check_tools(tools: Option<&Value>, tally: &mut Tally) -> R<Vec<(String, Value)>> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("tools: Input should be a valid list".into())),
    };
    tally.chars += Value::Array(list.clone()).to_string().len();
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        note_cache(t, tally);
        let name = expect_str(t.get("name"), &format!("tools.{i}.custom.name"))?;
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(invalid(format!(
                "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            )));
        }
        if t.get("type")
            .and_then(Value::as_str)
            .is_some_and(|ty| ty != "custom")
        {
            // Server tools (web_search …) have a type and no input_schema.
            continue;
        }
        let schema = match t.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(invalid(format!(
                    "tools.{i}.custom.input_schema: Field required"
                )))
            }
            Some(_) => {
                return Err(invalid(format!(
                    "tools.{i}.custom.input_schema: Input should be a valid dictionary"
                )))
            }
        };
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(invalid(format!(
                "tools.{i}.custom.input_schema.type: Input should be 'object'"
            )));
        }
        out.push((name.to_owned(), schema));
    }
    Ok(out)
}

fn check_tool_choice(tc: Option<&Value>, tools: &[(String, Value)]) -> R<(String, Option<String>)> {
    let Some(tc) = tc.filter(|v| !v.is_null()) else {
        return Ok(("auto".into(), None));
    };
    let ty = expect_str(tc.get("type"), "tool_choice.type")?;
    match ty {
        "auto" | "any" | "none" => Ok((ty.to_owned(), None)),
        "tool" => {
            let name = expect_str(tc.get("name"), "tool_choice.tool.name")?;
            if !tools.iter().any(|(n, _)| n == name) {
                return Err(invalid(format!("Tool '{name}' not found in provided tools")));
            }
            Ok((ty.to_owned(), Some(name.to_owned())))
        }
        other => Err(invalid(format!("tool_choice: Input tag '{other}' found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"))),
    }
}
