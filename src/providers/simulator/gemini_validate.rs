//! Gemini `generateContent` request checks. Field names are accepted in camelCase or
//! snake_case (proto JSON); unknown names are refused like the real API does
//! (`Invalid JSON payload received. Unknown name "x" at 'generation_config': Cannot find
//! field.`), including inside `Schema` objects, whose fields are the OpenAPI subset
//! Gemini documents (so `additionalProperties`, `$ref`, `oneOf` … are refused).

use serde_json::{Map, Value};

use super::text;

/// A Google error: HTTP status and message (status name derived from the code).
pub(crate) struct GErr(pub u16, pub String);

fn bad(message: String) -> GErr {
    GErr(400, message)
}

type R<T> = Result<T, GErr>;

/// A checked request.
pub(crate) struct GenRequest {
    pub limit: Option<u64>,
    pub stops: Vec<String>,
    pub mime: String,
    /// `responseSchema` with its types lower-cased, ready for generation.
    pub schema: Option<Value>,
    /// `(name, parameters)` per function declaration.
    pub functions: Vec<(String, Option<Value>)>,
    /// `AUTO`, `ANY`, `NONE` or `VALIDATED`.
    pub mode: String,
    pub allowed: Vec<String>,
    pub thinking_budget: Option<i64>,
    pub prompt_tokens: u64,
    /// Text of the last content when it is a user turn of plain text.
    pub last_user_text: Option<String>,
}

const TOP: &[&str] = &[
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
    "cachedContent",
];
const CONTENT: &[&str] = &["role", "parts"];
const PART: &[&str] = &[
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
];
const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
];
const GEN_CONFIG: &[&str] = &[
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
    "responseModalities",
    "speechConfig",
    "mediaResolution",
    "enableEnhancedCivicAnswers",
];
const THINKING: &[&str] = &["thinkingBudget", "includeThoughts", "thinkingLevel"];
const TOOL: &[&str] = &[
    "functionDeclarations",
    "googleSearch",
    "googleSearchRetrieval",
    "codeExecution",
    "urlContext",
];
const FUNCTION: &[&str] = &[
    "name",
    "description",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
    "behavior",
];
const TOOL_CONFIG: &[&str] = &["functionCallingConfig"];
const CALLING: &[&str] = &["mode", "allowedFunctionNames"];
const SCHEMA: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];
const MIME_TYPES: &[&str] = &[
    "text/plain",
    "application/json",
    "application/xml",
    "application/yaml",
    "text/x.enum",
];

/// `response_mime_type` → `responseMimeType`.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `generationConfig.responseMimeType` → `generation_config.response_mime_type`.
fn snake(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Copy of `obj` with camelCase keys, refusing keys not in `allowed`.
pub(crate) fn fields(
    obj: &Map<String, Value>,
    allowed: &[&str],
    path: &str,
) -> R<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in obj {
        let c = camel(k);
        if !allowed.contains(&c.as_str()) {
            let at = if path.is_empty() {
                String::new()
            } else {
                format!(" at '{}'", snake(path))
            };
            return Err(bad(format!(
                "Invalid JSON payload received. Unknown name \"{k}\"{at}: Cannot find field."
            )));
        }
        out.insert(c, v.clone());
    }
    Ok(out)
}

fn object<'a>(v: &'a Value, path: &str) -> R<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        bad(format!(
            "Invalid JSON payload received. Invalid value at '{}' ({v}): expected an object.",
            snake(path)
        ))
    })
}

fn array<'a>(v: &'a Value, path: &str) -> R<&'a Vec<Value>> {
    v.as_array().ok_or_else(|| {
        bad(format!(
            "Invalid JSON payload received. Invalid value at '{}' ({v}): expected a list.",
            snake(path)
        ))
    })
}

/// `generationConfig`'s numeric fields and their proto types.
const GEN_NUMBERS: &[(&str, &str)] = &[
    ("temperature", "TYPE_FLOAT"),
    ("topP", "TYPE_FLOAT"),
    ("topK", "TYPE_INT32"),
    ("candidateCount", "TYPE_INT32"),
    ("maxOutputTokens", "TYPE_INT32"),
    ("presencePenalty", "TYPE_FLOAT"),
    ("frequencyPenalty", "TYPE_FLOAT"),
    ("seed", "TYPE_INT32"),
];

/// Proto JSON's rule for a number: a JSON number, or a string holding one (an integer
/// for int fields); anything else is `Invalid value at 'generation_config.temperature'
/// (TYPE_FLOAT), "hot"`.
fn check_numbers(gc: &Map<String, Value>) -> R<()> {
    for (name, ty) in GEN_NUMBERS {
        let Some(v) = gc.get(*name).filter(|v| !v.is_null()) else {
            continue;
        };
        let int = *ty == "TYPE_INT32";
        let ok = match v {
            Value::Number(n) => !int || n.is_i64() || n.is_u64(),
            Value::String(s) if int => s.trim().parse::<i64>().is_ok(),
            Value::String(s) => s.trim().parse::<f64>().is_ok(),
            _ => false,
        };
        if !ok {
            return Err(bad(format!(
                "Invalid JSON payload received. Invalid value at 'generation_config.{}' ({ty}), {v}",
                snake(name).trim_start_matches('_')
            )));
        }
    }
    Ok(())
}

fn field_err(path: &str, what: &str) -> GErr {
    bad(format!(
        "* GenerateContentRequest.{}: {what}\n",
        snake(path)
    ))
}

/// Check a `Schema` object and return it normalised (camelCase keys, lower-case types).
fn schema(v: &Value, path: &str) -> R<Value> {
    let m = fields(object(v, path)?, SCHEMA, path)?;
    let mut out = Map::new();
    for (k, val) in m {
        let norm = match k.as_str() {
            "type" => {
                let t = val.as_str().unwrap_or("").to_ascii_lowercase();
                let ok = [
                    "string", "number", "integer", "boolean", "array", "object", "null",
                ];
                if !ok.contains(&t.as_str()) {
                    return Err(bad(format!(
                        "Invalid JSON payload received. Invalid value at '{}.type' ({val}): expected one of STRING, NUMBER, INTEGER, BOOLEAN, ARRAY, OBJECT, NULL.",
                        snake(path)
                    )));
                }
                Value::String(t)
            }
            "properties" => {
                let mut props = Map::new();
                for (name, sub) in object(&val, &format!("{path}.properties"))? {
                    props.insert(
                        name.clone(),
                        schema(sub, &format!("{path}.properties[{name}].value"))?,
                    );
                }
                Value::Object(props)
            }
            "items" => schema(&val, &format!("{path}.items"))?,
            "anyOf" => Value::Array(
                array(&val, &format!("{path}.anyOf"))?
                    .iter()
                    .enumerate()
                    .map(|(i, s)| schema(s, &format!("{path}.anyOf[{i}]")))
                    .collect::<R<Vec<_>>>()?,
            ),
            _ => val,
        };
        out.insert(k, norm);
    }
    Ok(Value::Object(out))
}

fn part_text_chars(p: &Map<String, Value>) -> usize {
    let mut n = p
        .get("text")
        .and_then(Value::as_str)
        .map_or(0, |t| t.chars().count());
    for k in [
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
    ] {
        if let Some(v) = p.get(k) {
            n += v.to_string().len();
        }
    }
    n
}

struct Turn {
    role: String,
    calls: usize,
    responses: usize,
    text: String,
}

fn check_content(c: &Value, path: &str, chars: &mut usize, images: &mut u64) -> R<Turn> {
    let c = fields(object(c, path)?, CONTENT, path)?;
    let role = match c.get("role") {
        None | Some(Value::Null) => "user".to_owned(),
        Some(Value::String(r)) if r == "user" || r == "model" => r.clone(),
        Some(_) => return Err(bad("Please use a valid role: user, model.".into())),
    };
    let parts = match c.get("parts") {
        None | Some(Value::Null) => &Vec::new(),
        Some(v) => array(v, &format!("{path}.parts"))?,
    };
    if parts.is_empty() {
        return Err(field_err(
            &format!("{path}.parts"),
            "contents.parts must not be empty.",
        ));
    }
    let mut turn = Turn {
        role,
        calls: 0,
        responses: 0,
        text: String::new(),
    };
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{path}.parts[{j}]");
        let p = fields(object(p, &pp)?, PART, &pp)?;
        let data: Vec<&str> = PART_DATA
            .iter()
            .copied()
            .filter(|k| p.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        if data.is_empty() {
            return Err(field_err(
                &format!("{pp}.data"),
                "required oneof field 'data' must have one initialized field",
            ));
        }
        if data.len() > 1 {
            return Err(bad(format!(
                "Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '{}'",
                snake(data.get(1).copied().unwrap_or(""))
            )));
        }
        if let Some(f) = p.get("functionCall") {
            if f.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(field_err(
                    &format!("{pp}.function_call.name"),
                    "Name cannot be empty.",
                ));
            }
            turn.calls += 1;
        }
        if let Some(f) = p.get("functionResponse") {
            if f.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(field_err(
                    &format!("{pp}.function_response.name"),
                    "Name cannot be empty.",
                ));
            }
            turn.responses += 1;
        }
        if let Some(d) = p.get("inlineData") {
            let ok = d.get("mimeType").or_else(|| d.get("mime_type")).is_some()
                && d.get("data").is_some();
            if !ok {
                return Err(field_err(
                    &format!("{pp}.inline_data"),
                    "mime_type and data are required.",
                ));
            }
            *images += 1;
        }
        if p.contains_key("fileData") {
            *images += 1;
        }
        if let Some(t) = p.get("text") {
            let t = t.as_str().ok_or_else(|| bad(format!(
                "Invalid JSON payload received. Invalid value at '{}.text' ({t}): expected a string.",
                snake(&pp)
            )))?;
            turn.text.push_str(t);
        }
        *chars += part_text_chars(&p);
    }
    Ok(turn)
}

/// Check a request body (a JSON object) for `model`.
pub(crate) fn validate(body: &Map<String, Value>, model: &str) -> R<GenRequest> {
    let body = fields(body, TOP, "")?;
    let contents = match body.get("contents") {
        None | Some(Value::Null) => &Vec::new(),
        Some(v) => array(v, "contents")?,
    };
    if contents.is_empty() {
        return Err(field_err("contents", "contents is not specified"));
    }
    let mut chars = 0usize;
    let mut images = 0u64;
    let mut turns = Vec::with_capacity(contents.len());
    for (i, c) in contents.iter().enumerate() {
        turns.push(check_content(
            c,
            &format!("contents[{i}]"),
            &mut chars,
            &mut images,
        )?);
    }
    for (i, t) in turns.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|k| turns.get(k));
        if t.responses > 0 {
            match prev {
                Some(p) if p.calls > 0 && p.role == "model" => {
                    if p.calls != t.responses {
                        return Err(bad("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".into()));
                    }
                }
                _ => return Err(bad("Please ensure that function response turn comes immediately after a function call turn.".into())),
            }
        }
        if t.calls > 0 && prev.is_none_or(|p| p.role != "user") {
            return Err(bad("Please ensure that function call turn comes immediately after a user turn or after a function response turn.".into()));
        }
    }
    if let Some(si) = body.get("systemInstruction").filter(|v| !v.is_null()) {
        check_content(si, "system_instruction", &mut chars, &mut images)?;
    }
    let gc = match body.get("generationConfig").filter(|v| !v.is_null()) {
        Some(g) => fields(
            object(g, "generationConfig")?,
            GEN_CONFIG,
            "generationConfig",
        )?,
        None => Map::new(),
    };
    check_numbers(&gc)?;
    if let Some(t) = gc.get("temperature").and_then(Value::as_f64) {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad(format!("Unable to submit request because it has a temperature value of {t} but the supported range is from 0 (inclusive) to 2.0001 (exclusive). Update the value and try again.")));
        }
    }
    let limit = match gc.get("maxOutputTokens").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Some(n as u64),
            _ => {
                return Err(field_err(
                    "generationConfig.maxOutputTokens",
                    "max_output_tokens must be positive.",
                ))
            }
        },
    };
    let stops: Vec<String> = match gc.get("stopSequences").filter(|v| !v.is_null()) {
        None => Vec::new(),
        Some(v) => array(v, "generationConfig.stopSequences")?
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
    };
    if stops.len() > 5 {
        return Err(bad(format!("Unable to submit request because it has {} stop sequences but the maximum allowed is 5. Remove some stop sequences and try again.", stops.len())));
    }
    if let Some(n) = gc.get("candidateCount").and_then(Value::as_i64) {
        if !(1..=8).contains(&n) {
            return Err(field_err(
                "generationConfig.candidateCount",
                "candidate_count must be between 1 and 8.",
            ));
        }
    }
    let mime = gc
        .get("responseMimeType")
        .and_then(Value::as_str)
        .unwrap_or("text/plain")
        .to_owned();
    if !MIME_TYPES.contains(&mime.as_str()) {
        return Err(field_err("generationConfig.responseMimeType", "allowed mimetypes are `text/plain`, `application/json`, `application/xml`, `application/yaml` and `text/x.enum`."));
    }
    let schema_v = match gc.get("responseSchema").filter(|v| !v.is_null()) {
        Some(s) => {
            if mime != "application/json" && mime != "text/x.enum" {
                return Err(field_err("generationConfig.responseSchema", "response_schema requires response_mime_type to be application/json or text/x.enum."));
            }
            chars += s.to_string().len();
            Some(schema(s, "generationConfig.responseSchema")?)
        }
        None => gc
            .get("responseJsonSchema")
            .filter(|v| v.is_object())
            .cloned(),
    };
    let thinking_budget = match gc.get("thinkingConfig").filter(|v| !v.is_null()) {
        Some(t) => {
            let t = fields(
                object(t, "generationConfig.thinkingConfig")?,
                THINKING,
                "generationConfig.thinkingConfig",
            )?;
            let b = t.get("thinkingBudget").and_then(Value::as_i64);
            if b == Some(0) && model.contains("pro") {
                return Err(bad(
                    "Budget 0 is invalid. This model only works in thinking mode.".into(),
                ));
            }
            b
        }
        None => None,
    };
    let functions = check_tools(body.get("tools"), &mut chars)?;
    let (mode, allowed) = check_tool_config(body.get("toolConfig"), &functions)?;
    let last_user_text = turns
        .last()
        .filter(|t| t.role == "user" && t.responses == 0)
        .map(|t| t.text.clone());
    Ok(GenRequest {
        limit,
        stops,
        mime,
        schema: schema_v,
        functions,
        mode,
        allowed,
        thinking_budget,
        prompt_tokens: text::estimate_tokens(chars, contents.len()) + 258 * images,
        last_user_text,
    })
}

fn check_tools(tools: Option<&Value>, chars: &mut usize) -> R<Vec<(String, Option<Value>)>> {
    let Some(tools) = tools.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    *chars += tools.to_string().len();
    let mut out = Vec::new();
    for (i, t) in array(tools, "tools")?.iter().enumerate() {
        let tp = format!("tools[{i}]");
        let t = fields(object(t, &tp)?, TOOL, &tp)?;
        let Some(decls) = t.get("functionDeclarations").filter(|v| !v.is_null()) else {
            continue;
        };
        for (j, d) in array(decls, &format!("{tp}.functionDeclarations"))?
            .iter()
            .enumerate()
        {
            let dp = format!("{tp}.functionDeclarations[{j}]");
            let d = fields(object(d, &dp)?, FUNCTION, &dp)?;
            let name = d.get("name").and_then(Value::as_str).unwrap_or("");
            let mut chars_ok = name.chars();
            let ok = chars_ok
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.len() <= 64
                && chars_ok.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(field_err(&format!("{dp}.name"), "Invalid function name. Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.) or dashes (-), with a maximum length of 64."));
            }
            let params = match d.get("parameters").filter(|v| !v.is_null()) {
                Some(p) => Some(schema(p, &format!("{dp}.parameters"))?),
                None => d
                    .get("parametersJsonSchema")
                    .filter(|v| v.is_object())
                    .cloned(),
            };
            out.push((name.to_owned(), params));
        }
    }
    Ok(out)
}

fn check_tool_config(
    tc: Option<&Value>,
    functions: &[(String, Option<Value>)],
) -> R<(String, Vec<String>)> {
    let Some(tc) = tc.filter(|v| !v.is_null()) else {
        return Ok(("AUTO".into(), Vec::new()));
    };
    let tc = fields(object(tc, "toolConfig")?, TOOL_CONFIG, "toolConfig")?;
    let Some(fc) = tc.get("functionCallingConfig").filter(|v| !v.is_null()) else {
        return Ok(("AUTO".into(), Vec::new()));
    };
    let path = "toolConfig.functionCallingConfig";
    let fc = fields(object(fc, path)?, CALLING, path)?;
    let mode = fc
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("AUTO")
        .to_ascii_uppercase();
    let mode = if mode == "MODE_UNSPECIFIED" {
        "AUTO".to_owned()
    } else {
        mode
    };
    if !["AUTO", "ANY", "NONE", "VALIDATED"].contains(&mode.as_str()) {
        return Err(bad(format!("Invalid JSON payload received. Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\"")));
    }
    let allowed: Vec<String> = fc
        .get("allowedFunctionNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if !allowed.is_empty() && mode != "ANY" && mode != "VALIDATED" {
        return Err(field_err(
            "toolConfig.functionCallingConfig.allowedFunctionNames",
            "allowed_function_names can only be set when mode is ANY or VALIDATED.",
        ));
    }
    if let Some(unknown) = allowed
        .iter()
        .find(|a| !functions.iter().any(|(n, _)| n == *a))
    {
        return Err(field_err(
            "toolConfig.functionCallingConfig.allowedFunctionNames",
            &format!("function '{unknown}' is not declared in tools."),
        ));
    }
    Ok((mode, allowed))
}
