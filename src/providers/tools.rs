//! What the adapters share about tools and content: the canonical `tool_choice`, the
//! check of returned tool calls against the request's tools, the conversion of a JSON
//! Schema into Gemini's OpenAPI subset, and reading `data:` image URLs.

use super::{ChatResponse, FailureClass, ProviderError};
use crate::job::{Tool, ToolCall, Usage};
use serde_json::{Map, Value};

/// The canonical (OpenAI) `tool_choice`, read once for every wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice<'a> {
    Auto,
    None,
    /// The model must call some tool (OpenAI `required`).
    Required,
    /// The model must call this tool.
    Named(&'a str),
}

/// `"auto" | "none" | "required" | {"type": "function", "function": {"name": ..}}`;
/// `None` when absent (or a shape no adapter knows, which the job schema refuses).
pub(crate) fn choice(v: Option<&Value>) -> Option<Choice<'_>> {
    match v? {
        Value::String(s) => match s.as_str() {
            "auto" => Some(Choice::Auto),
            "none" => Some(Choice::None),
            "required" | "any" => Some(Choice::Required),
            _ => None,
        },
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| o.get("name"))
            .and_then(Value::as_str)
            .map(Choice::Named),
        _ => None,
    }
}

/// Check the tool calls a model returned: each names one of the request's tools, its
/// arguments are a JSON object, and every property the tool's `parameters` schema lists
/// as `required` is present. A light check, not a JSON-schema validator.
pub fn check_tool_calls(tools: &[Tool], calls: &[ToolCall]) -> Result<(), String> {
    for call in calls {
        let name = &call.function.name;
        let Some(tool) = tools.iter().find(|t| &t.function.name == name) else {
            return Err(format!(
                "tool call {}: the model called {name:?}, which is not one of the request's tools",
                call.id
            ));
        };
        let args = match serde_json::from_str::<Value>(&call.function.arguments) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(format!(
                    "tool call {} to {name:?}: arguments are not a JSON object: {}",
                    call.id,
                    super::http::clip(&call.function.arguments)
                ))
            }
        };
        let required = tool
            .function
            .parameters
            .as_ref()
            .and_then(|p| p.get("required"))
            .and_then(Value::as_array);
        for field in required.into_iter().flatten().filter_map(Value::as_str) {
            if !args.contains_key(field) {
                return Err(format!(
                    "tool call {} to {name:?}: required argument {field:?} is missing",
                    call.id
                ));
            }
        }
    }
    Ok(())
}

/// [`check_tool_calls`] on an adapter's answer: a bad call is the provider's fault and
/// worth another try (elsewhere), so it fails the call as a server error, which carries
/// the answer's (billed) usage.
pub(crate) fn checked(
    tools: Option<&[Tool]>,
    resp: ChatResponse,
) -> Result<ChatResponse, ProviderError> {
    match check_tool_calls(tools.unwrap_or_default(), &resp.output.tool_calls) {
        Ok(()) => Ok(resp),
        Err(msg) => Err(
            ProviderError::new(FailureClass::ServerError, Some(200), msg)
                .with_usage((resp.usage != Usage::default()).then_some(resp.usage)),
        ),
    }
}

/// A tool's `arguments` string as the JSON object some wire formats want (`""` is `{}`).
pub(crate) fn arguments_object(args: &str) -> Option<Map<String, Value>> {
    if args.trim().is_empty() {
        return Some(Map::new());
    }
    match serde_json::from_str(args) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A `data:<mime>;base64,<data>` URL's media type and data.
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    let mime = mime.split(';').next().unwrap_or("");
    Some((if mime.is_empty() { "image/jpeg" } else { mime }, data))
}

/// An image's media type from its URL's extension; JPEG when it says nothing.
pub(crate) fn guess_image_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => "image/jpeg",
    }
}

/// How deep `$ref`s are followed (recursive schemas are cut there).
const MAX_REF_DEPTH: usize = 8;

/// A JSON Schema as Gemini's `Schema` (an OpenAPI 3.0 subset): upper-case `type`,
/// `nullable` instead of `"null"` types, `$ref`s inlined, `oneOf` as `anyOf`, only the
/// fields Gemini knows (`additionalProperties`, `$schema`, `strict`, `const` … dropped or
/// rewritten), string-only `enum`, and `required` limited to declared properties.
pub(crate) fn gemini_schema(schema: &Value) -> Value {
    Value::Object(convert(schema, schema, 0))
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    if reference == "#" {
        return Some(root);
    }
    let path = reference.strip_prefix("#/")?;
    let mut at = root;
    for seg in path.split('/') {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        at = at.get(seg.as_str())?;
    }
    Some(at)
}

fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

fn convert(s: &Value, root: &Value, depth: usize) -> Map<String, Value> {
    let Some(obj) = s.as_object() else {
        return Map::new();
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let mut out = match resolve(root, r) {
            Some(target) if depth < MAX_REF_DEPTH => convert(target, root, depth + 1),
            _ => Map::from_iter([("type".to_string(), Value::from("OBJECT"))]),
        };
        if let Some(d) = obj.get("description") {
            out.insert("description".into(), d.clone());
        }
        return out;
    }
    let mut out = Map::new();
    let mut nullable = obj.get("nullable") == Some(&Value::Bool(true));
    let mut types: Vec<String> = match obj.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if types.iter().any(|t| t == "null") {
        nullable = true;
        types.retain(|t| t != "null");
    }
    // Alternatives: `oneOf` is `anyOf` here; a null branch is `nullable`; one branch left
    // is that branch.
    let mut alternatives: Vec<&Value> = Vec::new();
    for key in ["anyOf", "oneOf"] {
        if let Some(list) = obj.get(key).and_then(Value::as_array) {
            alternatives.extend(list.iter());
        }
    }
    if alternatives.iter().any(|a| is_null_schema(a)) {
        nullable = true;
        alternatives.retain(|a| !is_null_schema(a));
    }
    match (types.len(), alternatives.len()) {
        (_, 1) => {
            if let Some(a) = alternatives.first() {
                out.extend(convert(a, root, depth));
            }
        }
        (_, n) if n > 1 => {
            let list = alternatives
                .iter()
                .map(|a| Value::Object(convert(a, root, depth)))
                .collect();
            out.insert("anyOf".into(), Value::Array(list));
        }
        (1, _) => {}
        (n, _) if n > 1 => {
            let list = types
                .iter()
                .map(|t| serde_json::json!({ "type": t.to_ascii_uppercase() }))
                .collect();
            out.insert("anyOf".into(), Value::Array(list));
            types.clear();
        }
        _ => {}
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        for part in all {
            merge(&mut out, convert(part, root, depth));
        }
    }
    if let Some(t) = types.first() {
        out.insert("type".into(), Value::from(t.to_ascii_uppercase()));
    }
    for key in ["title", "description"] {
        if let Some(v) = obj.get(key).filter(|v| v.is_string()) {
            out.insert(key.into(), v.clone());
        }
    }
    let mut values: Vec<Value> = match (obj.get("enum"), obj.get("const")) {
        (Some(Value::Array(e)), _) => e.clone(),
        (_, Some(c)) => vec![c.clone()],
        _ => Vec::new(),
    };
    if values.iter().any(Value::is_null) {
        nullable = true;
        values.retain(|v| !v.is_null());
    }
    if !values.is_empty() && values.iter().all(Value::is_string) {
        out.insert("enum".into(), Value::Array(values));
        out.entry("type").or_insert_with(|| Value::from("STRING"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let converted: Map<String, Value> = props
            .iter()
            .map(|(k, v)| (k.clone(), Value::Object(convert(v, root, depth))))
            .collect();
        out.insert("properties".into(), Value::Object(converted));
        out.entry("type").or_insert_with(|| Value::from("OBJECT"));
    }
    if let Some(req) = obj.get("required").and_then(Value::as_array) {
        let declared = out.get("properties").and_then(Value::as_object);
        let kept: Vec<Value> = req
            .iter()
            .filter(|r| {
                r.as_str()
                    .is_some_and(|r| declared.is_some_and(|d| d.contains_key(r)))
            })
            .cloned()
            .collect();
        if !kept.is_empty() {
            out.insert("required".into(), Value::Array(kept));
        }
    }
    match obj.get("items") {
        Some(i @ Value::Object(_)) => {
            out.insert("items".into(), Value::Object(convert(i, root, depth)));
        }
        Some(Value::Array(tuple)) => {
            if let Some(first) = tuple.first() {
                out.insert("items".into(), Value::Object(convert(first, root, depth)));
            }
        }
        _ => {}
    }
    if out.contains_key("items") {
        out.entry("type").or_insert_with(|| Value::from("ARRAY"));
    }
    for key in [
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
    ] {
        if let Some(v) = obj.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(p) = obj.get("pattern").filter(|v| v.is_string()) {
        out.insert("pattern".into(), p.clone());
    }
    if let Some(f) = obj.get("format").and_then(Value::as_str) {
        let ty = out.get("type").and_then(Value::as_str).unwrap_or("");
        let known = matches!(
            (ty, f),
            ("STRING", "date-time" | "enum")
                | ("NUMBER", "float" | "double")
                | ("INTEGER", "int32" | "int64")
        );
        if known {
            out.insert("format".into(), Value::from(f));
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    out
}

/// `allOf`: properties and required lists are united, anything else the later part wins.
fn merge(into: &mut Map<String, Value>, part: Map<String, Value>) {
    for (k, v) in part {
        match (k.as_str(), into.get_mut(&k), v) {
            ("properties", Some(Value::Object(a)), Value::Object(b)) => a.extend(b),
            ("required", Some(Value::Array(a)), Value::Array(b)) => {
                for r in b {
                    if !a.contains(&r) {
                        a.push(r);
                    }
                }
            }
            (_, _, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FunctionCall, FunctionDef, FunctionType};
    use serde_json::json;

    fn tool(name: &str, params: Option<Value>) -> Tool {
        Tool {
            kind: FunctionType::Function,
            function: FunctionDef {
                name: name.into(),
                description: None,
                parameters: params,
                strict: None,
            },
        }
    }

    fn call(name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: "call_1".into(),
            kind: FunctionType::Function,
            function: FunctionCall {
                name: name.into(),
                arguments: args.into(),
            },
        }
    }

    #[test]
    fn tool_calls_are_checked_lightly() {
        let tools = [
            tool(
                "get_weather",
                Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}),
                ),
            ),
            tool("ping", None),
        ];
        assert_eq!(
            check_tool_calls(&tools, &[call("get_weather", r#"{"city":"Paris"}"#)]),
            Ok(())
        );
        assert_eq!(check_tool_calls(&tools, &[call("ping", "{}")]), Ok(()));
        let e = check_tool_calls(&tools, &[call("get_weather", r#"{"unit":"C"}"#)]).unwrap_err();
        assert!(e.contains("get_weather") && e.contains("\"city\""), "{e}");
        let e = check_tool_calls(&tools, &[call("get_weather", "[1]")]).unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = check_tool_calls(&tools, &[call("get_weather", "{\"city\":")]).unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = check_tool_calls(&tools, &[call("launch", "{}")]).unwrap_err();
        assert!(e.contains("\"launch\""), "{e}");
        let e = check_tool_calls(&[], &[call("ping", "{}")]).unwrap_err();
        assert!(e.contains("not one of"), "{e}");
    }

    #[test]
    fn choices() {
        assert_eq!(choice(Some(&json!("auto"))), Some(Choice::Auto));
        assert_eq!(choice(Some(&json!("none"))), Some(Choice::None));
        assert_eq!(choice(Some(&json!("required"))), Some(Choice::Required));
        assert_eq!(
            choice(Some(
                &json!({"type": "function", "function": {"name": "f"}})
            )),
            Some(Choice::Named("f"))
        );
        assert_eq!(choice(None), None);
    }

    #[test]
    fn data_urls_and_mime_guesses() {
        assert_eq!(
            data_url("data:image/png;base64,iVBORw0KGgo="),
            Some(("image/png", "iVBORw0KGgo="))
        );
        assert_eq!(data_url("data:image/svg+xml,<svg/>"), None);
        assert_eq!(data_url("https://x/y.png"), None);
        assert_eq!(guess_image_mime("https://x/y.PNG?size=2"), "image/png");
        assert_eq!(guess_image_mime("https://x/photo"), "image/jpeg");
    }

    #[test]
    fn json_schema_becomes_gemini_subset() {
        let s = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "description": "who"},
                "age": {"type": ["integer", "null"], "minimum": 0},
                "when": {"type": "string", "format": "date-time"},
                "email": {"type": "string", "format": "email"},
                "kind": {"enum": ["a", "b", null]},
                "fixed": {"const": "x"},
                "level": {"type": "integer", "enum": [1, 2]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "addr": {"$ref": "#/$defs/addr"},
                "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                "maybe": {"anyOf": [{"$ref": "#/$defs/addr"}, {"type": "null"}]}
            },
            "required": ["name", "ghost"],
            "$defs": {"addr": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}}
        });
        let addr = json!({"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]});
        let mut maybe = addr.clone();
        maybe["nullable"] = json!(true);
        assert_eq!(
            gemini_schema(&s),
            json!({
                "type": "OBJECT",
                "properties": {
                    "name": {"type": "STRING", "description": "who"},
                    "age": {"type": "INTEGER", "minimum": 0, "nullable": true},
                    "when": {"type": "STRING", "format": "date-time"},
                    "email": {"type": "STRING"},
                    "kind": {"enum": ["a", "b"], "type": "STRING", "nullable": true},
                    "fixed": {"enum": ["x"], "type": "STRING"},
                    "level": {"type": "INTEGER"},
                    "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 3},
                    "addr": addr,
                    "either": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]},
                    "maybe": maybe
                },
                "required": ["name"]
            })
        );
    }

    #[test]
    fn recursive_refs_stop() {
        let s = json!({"type": "object", "properties": {"node": {"$ref": "#"}}});
        let out = gemini_schema(&s);
        // Cut after MAX_REF_DEPTH levels rather than looping forever.
        let mut at = &out;
        let mut depth = 0;
        while let Some(next) = at.get("properties").and_then(|p| p.get("node")) {
            at = next;
            depth += 1;
        }
        assert_eq!(depth, MAX_REF_DEPTH + 1);
        assert_eq!(at, &json!({"type": "OBJECT"}));
    }
}
