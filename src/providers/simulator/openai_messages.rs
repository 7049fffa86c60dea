//! OpenAI chat-completions checks of `messages`: roles, content parts, tool calls and
//! the pairing of assistant `tool_calls` with `tool` answers.

use serde_json::Value;

use super::openai_validate::{
    empty_array, invalid_type, invalid_value, missing, OaError, Tally, R,
};

const MESSAGE_KEYS: &[&str] = &[
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
    "function_call",
    "refusal",
    "audio",
    // What the API's own answer carries (`annotations: []` for url citations): the
    // function-calling guide sends `completion.choices[0].message` back as it came,
    // and the SDK serialises it with this field, so the API takes it on a message.
    "annotations",
];
const ROLES: &str = "'system', 'assistant', 'user', 'tool', and 'developer'";

pub(super) fn check_message(i: usize, m: &Value, tally: &mut Tally) -> R<()> {
    let p = format!("messages[{i}]");
    let Some(obj) = m.as_object() else {
        return Err(invalid_type(&p, "an object", m));
    };
    if let Some(k) = obj.keys().find(|k| !MESSAGE_KEYS.contains(&k.as_str())) {
        return Err(OaError::invalid(
            format!(
                "Additional properties are not allowed ('{k}' was unexpected) - 'messages.{i}'"
            ),
            Some(p),
            None,
        ));
    }
    let role = match obj.get("role") {
        None | Some(Value::Null) => return Err(missing(&format!("{p}.role"))),
        Some(Value::String(r)) => r.as_str(),
        Some(v) => return Err(invalid_type(&format!("{p}.role"), "a string", v)),
    };
    if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
        return Err(invalid_value(&format!("{p}.role"), role, ROLES));
    }
    if let Some(name) = obj.get("name") {
        if !name.is_string() {
            return Err(invalid_type(&format!("{p}.name"), "a string", name));
        }
    }
    if let Some(a) = obj.get("annotations").filter(|a| !a.is_null()) {
        if !a.is_array() {
            return Err(invalid_type(&format!("{p}.annotations"), "an array", a));
        }
    }
    let has_tool_calls = obj.get("tool_calls").is_some_and(|t| !t.is_null());
    match obj.get("content") {
        None | Some(Value::Null) if role == "assistant" && has_tool_calls => {}
        None | Some(Value::Null) if role == "assistant" && obj.contains_key("function_call") => {}
        None | Some(Value::Null) => return Err(missing(&format!("{p}.content"))),
        Some(Value::String(s)) => tally.chars += s.chars().count(),
        Some(Value::Array(parts)) => {
            if parts.is_empty() {
                return Err(empty_array(&format!("{p}.content")));
            }
            for (j, part) in parts.iter().enumerate() {
                check_part(&format!("{p}.content[{j}]"), role, part, tally)?;
            }
        }
        Some(v) => {
            return Err(invalid_type(
                &format!("{p}.content"),
                "one of a string or array of objects",
                v,
            ))
        }
    }
    if role == "tool" {
        match obj.get("tool_call_id") {
            None | Some(Value::Null) => return Err(missing(&format!("{p}.tool_call_id"))),
            Some(Value::String(_)) => {}
            Some(v) => return Err(invalid_type(&format!("{p}.tool_call_id"), "a string", v)),
        }
    }
    if let Some(calls) = obj.get("tool_calls").filter(|t| !t.is_null()) {
        if role != "assistant" {
            return Err(OaError::invalid(
                format!("Invalid parameter: only messages with role 'assistant' can have 'tool_calls' ('{p}' has role '{role}')."),
                Some(format!("{p}.tool_calls")),
                None,
            ));
        }
        check_tool_calls(&p, calls, tally)?;
    }
    Ok(())
}

fn check_part(p: &str, role: &str, part: &Value, tally: &mut Tally) -> R<()> {
    let Some(obj) = part.as_object() else {
        return Err(invalid_type(p, "an object", part));
    };
    let ty = match obj.get("type") {
        None | Some(Value::Null) => return Err(missing(&format!("{p}.type"))),
        Some(Value::String(t)) => t.as_str(),
        Some(v) => return Err(invalid_type(&format!("{p}.type"), "a string", v)),
    };
    let supported = "'text', 'image_url', 'input_audio', 'refusal', and 'file'";
    match ty {
        "text" => match obj.get("text") {
            Some(Value::String(s)) => tally.chars += s.chars().count(),
            None | Some(Value::Null) => return Err(missing(&format!("{p}.text"))),
            Some(v) => return Err(invalid_type(&format!("{p}.text"), "a string", v)),
        },
        "image_url" | "input_audio" | "file" if role != "user" => {
            return Err(OaError::invalid(
                format!("Invalid '{p}.type': '{ty}' content parts are only allowed for messages with role 'user', but this message has role '{role}'."),
                Some(format!("{p}.type")),
                Some("invalid_value"),
            ))
        }
        "image_url" => {
            let url = obj.get("image_url").and_then(|u| u.get("url"));
            match url {
                Some(Value::String(_)) => tally.images += 1,
                None | Some(Value::Null) => return Err(missing(&format!("{p}.image_url.url"))),
                Some(v) => return Err(invalid_type(&format!("{p}.image_url.url"), "a string", v)),
            }
        }
        "input_audio" | "file" => tally.images += 1,
        "refusal" if role == "assistant" => {}
        _ => return Err(invalid_value(&format!("{p}.type"), ty, supported)),
    }
    Ok(())
}

fn check_tool_calls(p: &str, calls: &Value, tally: &mut Tally) -> R<()> {
    let Some(list) = calls.as_array() else {
        return Err(invalid_type(
            &format!("{p}.tool_calls"),
            "an array of objects",
            calls,
        ));
    };
    for (k, call) in list.iter().enumerate() {
        let cp = format!("{p}.tool_calls[{k}]");
        match call.get("id") {
            Some(Value::String(_)) => {}
            None | Some(Value::Null) => return Err(missing(&format!("{cp}.id"))),
            Some(v) => return Err(invalid_type(&format!("{cp}.id"), "a string", v)),
        }
        match call.get("type") {
            Some(Value::String(t)) if t == "function" => {}
            None | Some(Value::Null) => return Err(missing(&format!("{cp}.type"))),
            Some(Value::String(t)) => {
                return Err(invalid_value(&format!("{cp}.type"), t, "'function'"))
            }
            Some(v) => return Err(invalid_type(&format!("{cp}.type"), "a string", v)),
        }
        let Some(f) = call.get("function").filter(|f| !f.is_null()) else {
            return Err(missing(&format!("{cp}.function")));
        };
        match f.get("name") {
            Some(Value::String(n)) => tally.chars += n.chars().count(),
            None | Some(Value::Null) => return Err(missing(&format!("{cp}.function.name"))),
            Some(v) => return Err(invalid_type(&format!("{cp}.function.name"), "a string", v)),
        }
        match f.get("arguments") {
            Some(Value::String(a)) => tally.chars += a.chars().count(),
            None | Some(Value::Null) => return Err(missing(&format!("{cp}.function.arguments"))),
            Some(v) => {
                return Err(invalid_type(
                    &format!("{cp}.function.arguments"),
                    "a string",
                    v,
                ))
            }
        }
    }
    Ok(())
}

/// Tool messages must answer the preceding assistant `tool_calls`, and every tool call
/// must be answered before the conversation goes on.
pub(super) fn check_tool_sequence(messages: &[Value]) -> R<()> {
    let role = |m: &Value| {
        m.get("role")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let mut open: Option<(usize, Vec<String>)> = None;
    for (i, m) in messages.iter().enumerate() {
        let r = role(m);
        if r == "tool" {
            let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
            let answered = match open.as_mut() {
                Some((_, ids)) => match ids.iter().position(|x| x == id) {
                    Some(pos) => {
                        ids.remove(pos);
                        true
                    }
                    None => false,
                },
                None => false,
            };
            if !answered {
                return Err(OaError::invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".into(),
                    Some(format!("messages.[{i}].role")),
                    None,
                ));
            }
            continue;
        }
        if let Some((at, ids)) = open.take() {
            if !ids.is_empty() {
                return Err(unanswered(at, &ids));
            }
        }
        if r == "assistant" {
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                let ids = calls
                    .iter()
                    .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
                    .collect();
                open = Some((i, ids));
            }
        }
    }
    match open {
        Some((at, ids)) if !ids.is_empty() => Err(unanswered(at, &ids)),
        _ => Ok(()),
    }
}

fn unanswered(at: usize, ids: &[String]) -> OaError {
    OaError::invalid(
        format!("An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}", ids.join(", ")),
        Some(format!("messages.[{at}].role")),
        None,
    )
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use serde_json::{json, Value};

    use super::super::openai_validate::validate;

    fn err(messages: Value) -> (Option<String>, Option<&'static str>, String) {
        let e = validate(&json!({"model": "m", "messages": messages})).expect_err("must fail");
        (e.param, e.code, e.message)
    }

    fn call(id: &str, args: Value) -> Value {
        json!({"id": id, "type": "function", "function": {"name": "f", "arguments": args}})
    }

    #[test]
    fn tool_call_pairing() {
        let user = json!({"role": "user", "content": "hi"});
        let ok = json!([user, {"role": "assistant", "content": null, "tool_calls": [call("c1", json!("{}"))]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}]);
        assert!(validate(&json!({"model": "m", "messages": ok})).is_ok());
        // The assistant message as the SDK sends back what the API returned.
        let as_returned = json!([user, {"role": "assistant", "content": null, "refusal": null,
            "annotations": [], "tool_calls": [call("c1", json!("{}"))]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}]);
        assert!(validate(&json!({"model": "m", "messages": as_returned})).is_ok());
        let (param, code, _) =
            err(json!([{"role": "assistant", "content": "x", "annotations": {}}]));
        assert_eq!(
            (param.as_deref(), code),
            (Some("messages[0].annotations"), Some("invalid_type"))
        );

        let (_, _, msg) = err(
            json!([user, {"role": "assistant", "tool_calls": [call("c1", json!("{}")), call("c2", json!("{}"))]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}, {"role": "user", "content": "and?"}]),
        );
        assert!(msg.ends_with("did not have response messages: c2"), "{msg}");
        let (param, _, msg) =
            err(json!([user, {"role": "tool", "tool_call_id": "c9", "content": "x"}]));
        assert_eq!(param.as_deref(), Some("messages.[1].role"));
        assert!(msg.contains("must be a response to a preceeding message with 'tool_calls'"));
        let (param, code, _) = err(
            json!([user, {"role": "assistant", "tool_calls": [call("c1", json!({"a": 1}))]},
            {"role": "tool", "tool_call_id": "c1", "content": "x"}]),
        );
        assert_eq!(
            param.as_deref(),
            Some("messages[1].tool_calls[0].function.arguments")
        );
        assert_eq!(code, Some("invalid_type"));
    }

    #[test]
    fn message_shapes() {
        let (param, code, _) = err(json!([{"role": "user"}]));
        assert_eq!(
            (param.as_deref(), code),
            (
                Some("messages[0].content"),
                Some("missing_required_parameter")
            )
        );
        let (param, code, _) = err(json!([{"role": "user", "content": 5}]));
        assert_eq!(
            (param.as_deref(), code),
            (Some("messages[0].content"), Some("invalid_type"))
        );
        let (param, code, _) = err(json!([{"role": "user", "content": []}]));
        assert_eq!(
            (param.as_deref(), code),
            (Some("messages[0].content"), Some("empty_array"))
        );
        let (param, _, msg) = err(json!([{"role": "user", "content": "x", "foo": 1}]));
        assert_eq!(param.as_deref(), Some("messages[0]"));
        assert!(msg.contains("('foo' was unexpected)"));
        let (param, code, _) = err(
            json!([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]),
        );
        assert_eq!(
            (param.as_deref(), code),
            (Some("messages[0].content[0].type"), Some("invalid_value"))
        );
        let (param, code, _) = err(json!([{"role": "user", "content": [{"type": "audio"}]}]));
        assert_eq!(
            (param.as_deref(), code),
            (Some("messages[0].content[0].type"), Some("invalid_value"))
        );
        let ok = json!([{"role": "developer", "content": "d"},
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]}]);
        let req = validate(&json!({"model": "m", "messages": ok})).expect("valid");
        // "d" + "look" = 5 chars → 2, + 3 × 2 messages, + 85 for the image.
        assert_eq!(req.prompt_tokens, 2 + 6 + 85);
    }
}
