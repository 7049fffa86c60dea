//! JSON values that satisfy a JSON Schema (or Gemini `Schema`), for `json_schema`
//! answers and tool-call arguments. Deterministic for a given seed.

use serde_json::{json, Map, Value};

use super::text::{Rng, ADJ, NOUN};

/// A value that satisfies `schema` (JSON Schema subset: type, properties, required,
/// items, enum, const, anyOf/oneOf/allOf, $ref to `#/...`, min/max bounds, formats).
/// Objects get their `required` properties, or every property when none is required.
pub(crate) fn value_for_schema(schema: &Value, seed: u64) -> Value {
    let mut rng = Rng::new(seed);
    gen_value(schema, schema, "value", &mut rng, 0)
}

fn first_type(s: &Map<String, Value>) -> Option<&str> {
    match s.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .or(Some("null")),
        _ => None,
    }
}

fn gen_value(schema: &Value, root: &Value, name: &str, rng: &mut Rng, depth: u32) -> Value {
    let Some(s) = schema.as_object() else {
        return if schema == &Value::Bool(false) {
            Value::Null
        } else {
            Value::String(plausible_string(name, rng))
        };
    };
    if depth > 12 {
        return Value::Null;
    }
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.is_empty() {
            let i = rng.below(options.len() as u64) as usize;
            return options.get(i).cloned().unwrap_or(Value::Null);
        }
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = r.strip_prefix('#').and_then(|p| root.pointer(p));
        return match target {
            Some(t) => gen_value(t, root, name, rng, depth + 1),
            None => Value::Null,
        };
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = s.get(key) {
            let pick = branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .or(branches.first());
            if let Some(b) = pick {
                return gen_value(b, root, name, rng, depth + 1);
            }
        }
    }
    let ty = first_type(s).unwrap_or(if s.contains_key("properties") {
        "object"
    } else if s.contains_key("items") {
        "array"
    } else {
        "string"
    });
    match ty {
        "object" => gen_object(s, root, rng, depth),
        "array" => {
            let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let max = s
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(min.max(2));
            let n = (min.max(1) + rng.below(2)).min(max).min(16);
            let items = s.get("items").cloned().unwrap_or(json!({"type": "string"}));
            Value::Array(
                (0..n)
                    .map(|_| gen_value(&items, root, name, rng, depth + 1))
                    .collect(),
            )
        }
        "integer" => {
            let lo = num_bound(s, "minimum", "exclusiveMinimum", 1.0, 1.0).ceil() as i64;
            let hi = num_bound(s, "maximum", "exclusiveMaximum", 100.0, -1.0).floor() as i64;
            let hi = hi.max(lo);
            let span = (hi - lo) as u64 + 1;
            json!(lo + rng.below(span.min(1_000_000)) as i64)
        }
        "number" => {
            let lo = num_bound(s, "minimum", "exclusiveMinimum", 0.0, 0.01);
            let hi = num_bound(s, "maximum", "exclusiveMaximum", 100.0, -0.01).max(lo);
            let f = rng.below(10_001) as f64 / 10_000.0;
            json!(((lo + (hi - lo) * f) * 100.0).round() / 100.0)
        }
        "boolean" => Value::Bool(rng.below(2) == 1),
        "null" => Value::Null,
        _ => Value::String(schema_string(s, name, rng)),
    }
}

fn gen_object(s: &Map<String, Value>, root: &Value, rng: &mut Rng, depth: u32) -> Value {
    let mut out = Map::new();
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return Value::Object(out);
    };
    let required: Vec<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let keys: Vec<&str> = if required.is_empty() {
        props.keys().map(String::as_str).collect()
    } else {
        required
    };
    for key in keys {
        let sub = props.get(key).cloned().unwrap_or(json!({"type": "string"}));
        out.insert(key.to_owned(), gen_value(&sub, root, key, rng, depth + 1));
    }
    Value::Object(out)
}

fn num_bound(s: &Map<String, Value>, inc: &str, exc: &str, default: f64, nudge: f64) -> f64 {
    if let Some(v) = s.get(inc).and_then(Value::as_f64) {
        v
    } else if let Some(v) = s.get(exc).and_then(Value::as_f64) {
        v + nudge
    } else {
        default
    }
}

fn schema_string(s: &Map<String, Value>, name: &str, rng: &mut Rng) -> String {
    let mut out = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "2024-05-01T12:00:00Z".to_owned(),
        Some("date") => "2024-05-01".to_owned(),
        Some("time") => "12:00:00".to_owned(),
        Some("email") => "user@example.com".to_owned(),
        Some("uri" | "url") => "https://example.com/doc".to_owned(),
        Some("uuid") => "3f2b6c1e-8a4d-4f7b-9c2e-1d5a7b9e0c3f".to_owned(),
        _ => plausible_string(name, rng),
    };
    if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
        while (out.chars().count() as u64) < min {
            out.push('x');
        }
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
        out = out.chars().take(max as usize).collect();
    }
    out
}

/// A string that fits a property name (`city` → "Paris", `email` → an address …).
fn plausible_string(name: &str, rng: &mut Rng) -> String {
    let n = name.to_ascii_lowercase();
    let fixed = [
        ("email", "user@example.com"),
        ("url", "https://example.com/doc"),
        ("city", "Paris"),
        ("location", "Paris, France"),
        ("country", "France"),
        ("language", "en"),
        ("currency", "USD"),
        ("date", "2024-05-01"),
        ("time", "12:00"),
        ("phone", "+1-555-0100"),
        ("name", "Alex Morgan"),
        ("unit", "celsius"),
    ];
    if let Some((_, v)) = fixed.iter().find(|(k, _)| n.contains(k)) {
        return (*v).to_owned();
    }
    if n == "id" || n.ends_with("_id") || n.ends_with("id") && n.len() > 2 {
        return format!("id_{}", rng.below(100_000));
    }
    format!("{} {} {}", rng.pick(ADJ), rng.pick(NOUN), rng.pick(NOUN))
}

/// Arguments for a tool whose parameters are `schema` (required params filled).
pub(crate) fn tool_args(schema: Option<&Value>, seed: u64) -> Value {
    match schema {
        Some(s) if s.is_object() => match value_for_schema(s, seed) {
            Value::Object(m) => Value::Object(m),
            _ => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

/// OpenAI structured-outputs rule for `strict: true` schemas: every object must set
/// `additionalProperties: false` and list every property in `required`. Returns the
/// first violation in OpenAI's words (`In context=('properties', 'x'), ...`).
pub(crate) fn strict_problem(schema: &Value) -> Option<String> {
    let mut ctx = Vec::new();
    strict_walk(schema, &mut ctx)
}

fn context(ctx: &[String]) -> String {
    let quoted: Vec<String> = ctx.iter().map(|c| format!("'{c}'")).collect();
    match quoted.len() {
        0 => "()".to_owned(),
        1 => format!("({},)", quoted.join("")),
        _ => format!("({})", quoted.join(", ")),
    }
}

fn strict_walk(s: &Value, ctx: &mut Vec<String>) -> Option<String> {
    let obj = s.as_object()?;
    let is_object = match obj.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => obj.contains_key("properties"),
    };
    let mut children: Vec<(Vec<String>, &Value)> = Vec::new();
    if is_object {
        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Some(format!(
                "In context={}, 'additionalProperties' is required to be supplied and to be false.",
                context(ctx)
            ));
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            let required: Vec<&str> = obj
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(missing) = props.keys().find(|k| !required.contains(&k.as_str())) {
                return Some(format!(
                    "In context={}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'.",
                    context(ctx)
                ));
            }
            for (k, sub) in props {
                children.push((vec!["properties".into(), k.clone()], sub));
            }
        }
    }
    if let Some(items) = obj.get("items") {
        children.push((vec!["items".into()], items));
    }
    for key in ["anyOf", "$defs", "definitions"] {
        match obj.get(key) {
            Some(Value::Array(list)) => {
                for (i, sub) in list.iter().enumerate() {
                    children.push((vec![key.into(), i.to_string()], sub));
                }
            }
            Some(Value::Object(defs)) => {
                for (name, sub) in defs {
                    children.push((vec![key.into(), name.clone()], sub));
                }
            }
            _ => {}
        }
    }
    for (path, sub) in children {
        let n = path.len();
        ctx.extend(path);
        if let Some(p) = strict_walk(sub, ctx) {
            return Some(p);
        }
        ctx.truncate(ctx.len() - n);
    }
    None
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn schema_values_match_types() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 18, "maximum": 20},
                "score": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "kind": {"enum": ["a", "b"]},
                "addr": {"$ref": "#/$defs/addr"},
                "opt": {"type": ["string", "null"]},
                "ignored": {"type": "boolean"}
            },
            "required": ["name", "age", "score", "tags", "kind", "addr", "opt"],
            "$defs": {"addr": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
        });
        let v = value_for_schema(&schema, 1);
        assert_eq!(v["name"], "Alex Morgan");
        let age = v["age"].as_i64().expect("int");
        assert!((18..=20).contains(&age));
        assert!(v["score"].is_f64() || v["score"].is_i64());
        assert!(v["tags"].as_array().expect("arr").len() >= 2);
        assert!(v["kind"] == "a" || v["kind"] == "b");
        assert_eq!(v["addr"]["city"], "Paris");
        assert!(v["opt"].is_string());
        assert!(v.get("ignored").is_none());
        assert_eq!(value_for_schema(&schema, 1), v);
    }

    #[test]
    fn strict_mode_rules() {
        let ok = json!({"type": "object", "additionalProperties": false, "required": ["a"],
            "properties": {"a": {"type": "object", "additionalProperties": false, "required": [], "properties": {}}}});
        assert_eq!(strict_problem(&ok), None);
        let open = json!({"type": "object", "properties": {}});
        assert_eq!(
            strict_problem(&open).as_deref(),
            Some(
                "In context=(), 'additionalProperties' is required to be supplied and to be false."
            )
        );
        let nested = json!({"type": "object", "additionalProperties": false, "required": ["a"],
            "properties": {"a": {"type": "object", "additionalProperties": false, "properties": {"b": {"type": "string"}}}}});
        let p = strict_problem(&nested).expect("problem");
        assert!(
            p.starts_with("In context=('properties', 'a'), 'required'"),
            "{p}"
        );
        assert!(p.ends_with("Missing 'b'."), "{p}");
    }
}
