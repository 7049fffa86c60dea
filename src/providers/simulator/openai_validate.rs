//! OpenAI chat-completions request checks, with the real API's messages, `param` and
//! `code` values (400 `invalid_request_error`).

use axum::http::StatusCode;
use serde_json::Value;

use super::openai_messages::{check_message, check_tool_sequence};
use super::{schema, text};

/// An OpenAI error answer.
#[derive(Debug, Clone)]
pub(crate) struct OaError {
    pub status: StatusCode,
    pub message: String,
    pub typ: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl OaError {
    pub(crate) fn invalid(
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
            typ: "invalid_request_error",
            param,
            code,
        }
    }
}

pub(super) type R<T> = Result<T, OaError>;

/// `response_format`.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    Text,
    JsonObject,
    JsonSchema(Value),
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A checked chat-completions request.
#[derive(Debug, Clone)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub limit: Option<u64>,
    pub stops: Vec<String>,
    pub format: Format,
    /// `(name, parameters schema)` per function tool.
    pub tools: Vec<(String, Option<Value>)>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    pub n: u64,
    pub stream: bool,
    pub include_usage: bool,
    /// Reasoning effort for reasoning models (`None` for other models).
    pub reasoning: Option<String>,
    pub prompt_tokens: u64,
    /// Text of the last message when it is a user message.
    pub last_user_text: Option<String>,
}

const KNOWN_PARAMS: &[&str] = &[
    "messages",
    "model",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];
/// Whether OpenAI treats `model` as a reasoning model (o-series, gpt-5).
pub(crate) fn is_reasoning_model(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"].iter().any(|p| {
        m.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    }) && !m.contains("-chat")
}

/// "a string", "an integer" … as OpenAI words types in errors.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn invalid_type(param: &str, expected: &str, got: &Value) -> OaError {
    OaError::invalid(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
        Some(param.to_owned()),
        Some("invalid_type"),
    )
}

pub(super) fn missing(param: &str) -> OaError {
    OaError::invalid(
        format!("Missing required parameter: '{param}'."),
        Some(param.to_owned()),
        Some("missing_required_parameter"),
    )
}

pub(super) fn invalid_value(param: &str, got: &str, supported: &str) -> OaError {
    OaError::invalid(
        format!("Invalid value: '{got}'. Supported values are: {supported}."),
        Some(param.to_owned()),
        Some("invalid_value"),
    )
}

pub(super) fn empty_array(param: &str) -> OaError {
    OaError::invalid(
        format!("Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty array instead."),
        Some(param.to_owned()),
        Some("empty_array"),
    )
}

fn number_range(body: &Value, param: &str, min: f64, max: f64) -> R<Option<f64>> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let x = v
                .as_f64()
                .ok_or_else(|| invalid_type(param, "a decimal", v))?;
            if x < min {
                return Err(OaError::invalid(
                    format!("Invalid '{param}': decimal below minimum value. Expected a value >= {min}, but got {x} instead."),
                    Some(param.to_owned()),
                    Some("decimal_below_min_value"),
                ));
            }
            if x > max {
                return Err(OaError::invalid(
                    format!("Invalid '{param}': decimal above maximum value. Expected a value <= {max}, but got {x} instead."),
                    Some(param.to_owned()),
                    Some("decimal_above_max_value"),
                ));
            }
            Ok(Some(x))
        }
    }
}

fn positive_int(body: &Value, param: &str, max: u64) -> R<Option<u64>> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = match v.as_i64() {
                Some(n) => n,
                None if v.as_u64().is_some() => i64::MAX,
                None => return Err(invalid_type(param, "an integer", v)),
            };
            if n < 1 {
                return Err(OaError::invalid(
                    format!("Invalid '{param}': integer below minimum value. Expected a value >= 1, but got {n} instead."),
                    Some(param.to_owned()),
                    Some("integer_below_min_value"),
                ));
            }
            if n as u64 > max {
                return Err(OaError::invalid(
                    format!("Invalid '{param}': integer above maximum value. Expected a value <= {max}, but got {n} instead."),
                    Some(param.to_owned()),
                    Some("integer_above_max_value"),
                ));
            }
            Ok(Some(n as u64))
        }
    }
}

fn unsupported_param(param: &str, message: String) -> OaError {
    OaError::invalid(
        message,
        Some(param.to_owned()),
        Some("unsupported_parameter"),
    )
}

/// Everything the token estimate needs, gathered while checking messages.
#[derive(Default)]
pub(super) struct Tally {
    pub chars: usize,
    pub images: u64,
}

/// Check a chat-completions body (already known to be a JSON object).
/// Refuse a field not in `known`, then read the required `model` (as the API does, for
/// chat and embeddings alike).
pub(super) fn known_params_and_model(
    obj: &serde_json::Map<String, Value>,
    known: &[&str],
) -> R<String> {
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(OaError::invalid(
            format!("Unrecognized request argument supplied: {k}"),
            None,
            None,
        ));
    }
    match obj.get("model") {
        None | Some(Value::Null) => Err(OaError::invalid(
            "you must provide a model parameter".into(),
            Some("model".into()),
            None,
        )),
        Some(Value::String(m)) => Ok(m.clone()),
        Some(v) => Err(invalid_type("model", "a string", v)),
    }
}

pub(crate) fn validate(body: &Value) -> R<ChatRequest> {
    let Some(obj) = body.as_object() else {
        return Err(invalid_type("body", "an object", body));
    };
    let model = known_params_and_model(obj, KNOWN_PARAMS)?;
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(a)) if a.is_empty() => return Err(empty_array("messages")),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(invalid_type("messages", "an array of objects", v)),
    };
    let mut tally = Tally::default();
    for (i, m) in messages.iter().enumerate() {
        check_message(i, m, &mut tally)?;
    }
    check_tool_sequence(messages)?;

    let reasoning_model = is_reasoning_model(&model);
    let max_tokens = positive_int(body, "max_tokens", u64::MAX)?;
    let max_completion = positive_int(body, "max_completion_tokens", u64::MAX)?;
    if max_tokens.is_some() && max_completion.is_some() {
        return Err(OaError::invalid(
            "max_tokens and max_completion_tokens cannot both be set. Use max_completion_tokens."
                .into(),
            Some("max_tokens".into()),
            Some("invalid_request"),
        ));
    }
    if reasoning_model && max_tokens.is_some() {
        return Err(unsupported_param(
            "max_tokens",
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into(),
        ));
    }
    let temperature = number_range(body, "temperature", 0.0, 2.0)?;
    if reasoning_model && temperature.is_some_and(|t| t != 1.0) {
        return Err(OaError::invalid(
            format!(
                "Unsupported value: 'temperature' does not support {} with this model. Only the default (1) value is supported.",
                temperature.unwrap_or_default()
            ),
            Some("temperature".into()),
            Some("unsupported_value"),
        ));
    }
    number_range(body, "top_p", 0.0, 1.0)?;
    number_range(body, "presence_penalty", -2.0, 2.0)?;
    number_range(body, "frequency_penalty", -2.0, 2.0)?;
    let n = positive_int(body, "n", 128)?.unwrap_or(1);
    let stops = check_stop(body.get("stop"))?;
    let format = check_format(body.get("response_format"), messages, &mut tally)?;
    let tools = check_tools(body.get("tools"), &mut tally)?;
    let tool_choice = check_tool_choice(body.get("tool_choice"), &tools)?;
    let parallel_tool_calls = match body.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(invalid_type("parallel_tool_calls", "a boolean", v)),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(invalid_type("stream", "a boolean", v)),
    };
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(OaError::invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.".into(),
                Some("stream_options".into()),
                None,
            ))
        }
        Some(Value::Object(o)) => o.get("include_usage") == Some(&Value::Bool(true)),
        Some(v) => return Err(invalid_type("stream_options", "an object", v)),
    };
    let reasoning = match body.get("reasoning_effort") {
        None | Some(Value::Null) => reasoning_model.then(|| "medium".to_owned()),
        Some(_) if !reasoning_model => {
            return Err(unsupported_param(
                "reasoning_effort",
                "Unsupported parameter: 'reasoning_effort' is not supported with this model."
                    .into(),
            ))
        }
        Some(Value::String(e)) if ["minimal", "low", "medium", "high"].contains(&e.as_str()) => {
            Some(e.clone())
        }
        Some(Value::String(e)) => {
            return Err(invalid_value(
                "reasoning_effort",
                e,
                "'minimal', 'low', 'medium', and 'high'",
            ))
        }
        Some(v) => return Err(invalid_type("reasoning_effort", "a string", v)),
    };
    let prompt_tokens = text::estimate_tokens(tally.chars, messages.len()) + 85 * tally.images;
    let last_user_text = messages
        .last()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")));
    Ok(ChatRequest {
        model,
        limit: max_completion.or(max_tokens),
        stops,
        format,
        tools,
        tool_choice,
        parallel_tool_calls,
        n,
        stream,
        include_usage,
        reasoning,
        prompt_tokens,
        last_user_text,
    })
}

/// All text of a message's content (string, or the text of its parts).
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn check_stop(stop: Option<&Value>) -> R<Vec<String>> {
    match stop {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(list)) => {
            if list.len() > 4 {
                return Err(OaError::invalid(
                    format!("Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length {} instead.", list.len()),
                    Some("stop".into()),
                    Some("array_above_max_length"),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid_type(&format!("stop[{i}]"), "a string", s))
                })
                .collect()
        }
        Some(v) => Err(invalid_type(
            "stop",
            "one of a string or array of strings",
            v,
        )),
    }
}

fn check_format(rf: Option<&Value>, messages: &[Value], tally: &mut Tally) -> R<Format> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    if !rf.is_object() {
        return Err(invalid_type("response_format", "an object", rf));
    }
    let ty = match rf.get("type") {
        None | Some(Value::Null) => return Err(missing("response_format.type")),
        Some(Value::String(t)) => t.as_str(),
        Some(v) => return Err(invalid_type("response_format.type", "a string", v)),
    };
    match ty {
        "text" => Ok(Format::Text),
        "json_object" => {
            let says_json = messages.iter().any(|m| {
                content_text(m.get("content"))
                    .to_ascii_lowercase()
                    .contains("json")
            });
            if !says_json {
                return Err(OaError::invalid(
                    "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.".into(),
                    Some("messages".into()),
                    None,
                ));
            }
            Ok(Format::JsonObject)
        }
        "json_schema" => {
            let Some(js) = rf.get("json_schema").filter(|v| !v.is_null()) else {
                return Err(missing("response_format.json_schema"));
            };
            match js.get("name") {
                Some(Value::String(n))
                    if !n.is_empty()
                        && n.len() <= 64
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {}
                Some(Value::String(_)) => {
                    return Err(OaError::invalid(
                        "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.".into(),
                        Some("response_format.json_schema.name".into()),
                        Some("invalid_value"),
                    ))
                }
                None | Some(Value::Null) => return Err(missing("response_format.json_schema.name")),
                Some(v) => {
                    return Err(invalid_type("response_format.json_schema.name", "a string", v))
                }
            }
            let schema = js.get("schema").cloned().unwrap_or(Value::Null);
            if js.get("strict") == Some(&Value::Bool(true)) {
                if let Some(problem) = schema::strict_problem(&schema) {
                    let name = js.get("name").and_then(Value::as_str).unwrap_or("");
                    return Err(OaError::invalid(
                        format!("Invalid schema for response_format '{name}': {problem}"),
                        Some("response_format".into()),
                        None,
                    ));
                }
            }
            if !schema.is_null() && !schema.is_object() {
                return Err(invalid_type(
                    "response_format.json_schema.schema",
                    "an object",
                    &schema,
                ));
            }
            tally.chars += serde_json::to_string(&schema).map(|s| s.len()).unwrap_or(0);
            Ok(Format::JsonSchema(schema))
        }
        other => Err(invalid_value(
            "response_format.type",
            other,
            "'json_object', 'json_schema', and 'text'",
        )),
    }
}

fn check_tools(tools: Option<&Value>, tally: &mut Tally) -> R<Vec<(String, Option<Value>)>> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) if a.is_empty() => return Err(empty_array("tools")),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(invalid_type("tools", "an array of objects", v)),
    };
    tally.chars += serde_json::to_string(list).map(|s| s.len()).unwrap_or(0);
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        match t.get("type") {
            Some(Value::String(ty)) if ty == "function" => {}
            None | Some(Value::Null) => return Err(missing(&format!("{p}.type"))),
            Some(Value::String(ty)) => {
                return Err(invalid_value(
                    &format!("{p}.type"),
                    ty,
                    "'function' and 'custom'",
                ))
            }
            Some(v) => return Err(invalid_type(&format!("{p}.type"), "a string", v)),
        }
        let Some(f) = t.get("function").filter(|f| !f.is_null()) else {
            return Err(missing(&format!("{p}.function")));
        };
        let name = match f.get("name") {
            Some(Value::String(n)) => n.clone(),
            None | Some(Value::Null) => return Err(missing(&format!("{p}.function.name"))),
            Some(v) => return Err(invalid_type(&format!("{p}.function.name"), "a string", v)),
        };
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(OaError::invalid(
                format!("Invalid '{p}.function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."),
                Some(format!("{p}.function.name")),
                Some("invalid_value"),
            ));
        }
        let params = f.get("parameters").filter(|v| !v.is_null()).cloned();
        if let Some(ps) = &params {
            let strict = f.get("strict") == Some(&Value::Bool(true));
            if let Some(problem) = strict.then(|| schema::strict_problem(ps)).flatten() {
                return Err(OaError::invalid(
                    format!("Invalid schema for function '{name}': {problem}"),
                    Some(format!("{p}.function.parameters")),
                    Some("invalid_function_parameters"),
                ));
            }
            if !ps.is_object() {
                return Err(invalid_type(
                    &format!("{p}.function.parameters"),
                    "an object",
                    ps,
                ));
            }
        }
        out.push((name, params));
    }
    Ok(out)
}

fn check_tool_choice(tc: Option<&Value>, tools: &[(String, Option<Value>)]) -> R<ToolChoice> {
    let Some(tc) = tc.filter(|v| !v.is_null()) else {
        return Ok(if tools.is_empty() {
            ToolChoice::None
        } else {
            ToolChoice::Auto
        });
    };
    if tools.is_empty() {
        return Err(OaError::invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.".into(),
            Some("tool_choice".into()),
            None,
        ));
    }
    match tc {
        Value::String(s) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            other => Err(invalid_value(
                "tool_choice",
                other,
                "'none', 'auto', and 'required'",
            )),
        },
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(missing("tool_choice.type"));
            }
            let Some(name) = name else {
                return Err(missing("tool_choice.function.name"));
            };
            if !tools.iter().any(|(n, _)| n == name) {
                return Err(OaError::invalid(
                    format!("Invalid value for 'tool_choice': function '{name}' is not among the provided 'tools'."),
                    Some("tool_choice".into()),
                    Some("invalid_value"),
                ));
            }
            Ok(ToolChoice::Named(name.to_owned()))
        }
        v => Err(invalid_type("tool_choice", "one of a string or object", v)),
    }
}
