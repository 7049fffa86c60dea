//! From the bytes and subject of a JetStream message to a checked [`Job`], or to a
//! failure that says what is wrong and under which (tenant, id) it is filed.
//!
//! Two steps, so that the two error kinds stay apart: the bytes must be one JSON object
//! with no duplicate keys (`malformed_job`), and that object must match the schema and
//! the contract's rules (`invalid_job`, naming the field).

use super::names::{is_valid_job_id, is_valid_tenant, reply_to_problem};
use super::reply_to::ReplyToRules;
use super::{ErrorBody, ErrorKind, Job, Message, Priority, ResponseFormat, Role};
use rust_decimal::Decimal;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

/// The rules a job is checked against, from the configuration.
#[derive(Debug, Clone)]
pub struct ParseRules {
    pub prefix: String,
    pub max_payload_bytes: usize,
    pub max_messages: usize,
    pub max_tokens_cap: u32,
    /// Names of the configured providers (for `providers.allow`).
    pub providers: Vec<String>,
    /// The subjects each tenant's jobs may name as `reply_to` (`[reply_to]`).
    pub reply_to: ReplyToRules,
}

/// What the subject says: `<prefix>.jobs.<priority>.<tenant>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectInfo {
    pub priority: Option<Priority>,
    /// The subject's fourth token when it is a valid tenant, else `_unknown`.
    pub tenant: String,
    /// The subject is exactly `<prefix>.jobs.<priority>.<tenant>` with a valid tenant.
    pub exact: bool,
}

impl SubjectInfo {
    pub fn parse(subject: &str, prefix: &str) -> SubjectInfo {
        let tokens: Vec<&str> = subject.split('.').collect();
        let priority = tokens.get(2).and_then(|p| Priority::parse(p));
        let tenant = match tokens.get(3) {
            Some(t) if is_valid_tenant(t) => t.to_string(),
            _ => "_unknown".to_string(),
        };
        let exact = tokens.len() == 4
            && tokens[0] == prefix
            && tokens[1] == "jobs"
            && priority.is_some()
            && tenant != "_unknown";
        SubjectInfo {
            priority,
            tenant,
            exact,
        }
    }
}

/// Where a job's result is filed and sent, known even when the job is not valid.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The payload's id when valid, else `_seq<N>`.
    pub id: String,
    /// The subject's tenant, or `_unknown`.
    pub tenant: String,
    pub priority: Option<Priority>,
    /// Only a `reply_to` that passes the contract's rules.
    pub reply_to: Option<String>,
    /// For a refused job, what of these is usable (a valid job carries its own).
    pub feature: Option<String>,
    pub user: Option<String>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct ParsedJob {
    pub job: Job,
    pub envelope: Envelope,
}

#[derive(Debug, Clone)]
pub struct ParseFailure {
    pub envelope: Envelope,
    pub error: ErrorBody,
    /// The payload as received when it was a JSON object, for the DLQ entry.
    pub job_json: Option<Value>,
}

/// Parse and check one message from the jobs stream.
pub fn parse_job(
    payload: &[u8],
    subject: &str,
    stream_seq: u64,
    rules: &ParseRules,
) -> Result<ParsedJob, Box<ParseFailure>> {
    let subj = SubjectInfo::parse(subject, &rules.prefix);
    if let Some(parsed) = parse_fast(payload, &subj, rules) {
        return Ok(parsed);
    }
    parse_checked(payload, subject, subj, stream_seq, rules)
}

/// [`parse_job`] without its fast path: for the tests and the fuzzer that hold the two
/// together.
#[doc(hidden)]
pub fn parse_job_checked(
    payload: &[u8],
    subject: &str,
    stream_seq: u64,
    rules: &ParseRules,
) -> Result<ParsedJob, Box<ParseFailure>> {
    let subj = SubjectInfo::parse(subject, &rules.prefix);
    parse_checked(payload, subject, subj, stream_seq, rules)
}

/// The common case in one pass: a payload within the size limit, on an exact subject,
/// deserialized straight into a [`Job`] (derived structs refuse duplicate fields, and
/// the free-form values use [`strict_value`]) and checked. Anything it does not take goes
/// the long way, [`parse_checked`], which finds and names the problem: the fast path
/// only ever accepts what the long way accepts, with the same [`Job`] (a test holds the
/// two together on every fixture and fuzz input).
fn parse_fast(payload: &[u8], subj: &SubjectInfo, rules: &ParseRules) -> Option<ParsedJob> {
    if !subj.exact || payload.len() > rules.max_payload_bytes {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    if text.contains("\\u0000") {
        return None;
    }
    let job: Job = serde_json::from_str(text).ok()?;
    check_rules(&job, subj, rules).ok()?;
    let envelope = Envelope {
        id: job.id.clone(),
        tenant: subj.tenant.clone(),
        priority: subj.priority,
        reply_to: job.reply_to.clone(),
        feature: None,
        user: None,
        metadata: None,
    };
    Some(ParsedJob { job, envelope })
}

/// The long way: the bytes to a duplicate-free JSON tree (`malformed_job` when that
/// fails), then the tree to a [`Job`] and the contract's rules (`invalid_job`, naming
/// the field).
fn parse_checked(
    payload: &[u8],
    subject: &str,
    subj: SubjectInfo,
    stream_seq: u64,
    rules: &ParseRules,
) -> Result<ParsedJob, Box<ParseFailure>> {
    let mut envelope = Envelope {
        id: format!("_seq{stream_seq}"),
        tenant: subj.tenant.clone(),
        priority: subj.priority,
        reply_to: None,
        feature: None,
        user: None,
        metadata: None,
    };
    let fail = |envelope: Envelope, kind, message: String, job_json| {
        Box::new(ParseFailure {
            envelope,
            error: ErrorBody::new(kind, message),
            job_json,
        })
    };

    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!(
                "payload is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            );
            return Err(fail(envelope, ErrorKind::MalformedJob, msg, None));
        }
    };
    let value = match serde_json::from_str::<StrictValue>(text) {
        Ok(StrictValue(v)) => v,
        Err(e) => {
            let msg = format!("payload is not a JSON object: {e}");
            return Err(fail(envelope, ErrorKind::MalformedJob, msg, None));
        }
    };
    let Value::Object(obj) = value else {
        let msg = format!(
            "payload is not a JSON object: found {}",
            json_type_name(&value)
        );
        return Err(fail(envelope, ErrorKind::MalformedJob, msg, None));
    };

    // From here on the payload is an object: trust what of it is valid for filing.
    if let Some(Value::String(id)) = obj.get("id") {
        if is_valid_job_id(id) {
            envelope.id = id.clone();
        }
    }
    if let Some(Value::String(r)) = obj.get("reply_to") {
        if reply_to_problem(r, &rules.prefix).is_none() && rules.reply_to.allows(&subj.tenant, r) {
            envelope.reply_to = Some(r.clone());
        }
    }
    let value = Value::Object(obj);

    // A refused job's result still carries what of feature, user and metadata is usable;
    // a valid job's come from the job itself, so this is done on the failure path only.
    let invalid = |mut envelope: Envelope, message: String, value: Value| {
        let text = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.contains('\0'))
                .map(str::to_string)
        };
        envelope.feature = text("feature");
        envelope.user = text("user");
        envelope.metadata = value
            .get("metadata")
            .filter(|m| find_nul(m, &mut String::new()).is_none())
            .cloned();
        fail(envelope, ErrorKind::InvalidJob, message, Some(value))
    };
    if payload.len() > rules.max_payload_bytes {
        let msg = format!(
            "payload is {} bytes; limits.max_payload_bytes is {}",
            payload.len(),
            rules.max_payload_bytes
        );
        return Err(invalid(envelope, msg, value));
    }
    if text.contains("\\u0000") {
        if let Some(path) = find_nul(&value, &mut String::new()) {
            let msg = format!("{path}: strings may not contain U+0000");
            return Err(invalid(envelope, msg, value));
        }
    }
    if !subj.exact {
        let msg = format!(
            "subject {subject:?} is not {}.jobs.<high|normal|low>.<tenant>",
            rules.prefix
        );
        return Err(invalid(envelope, msg, value));
    }
    let job: Job = match serde_path_to_error::deserialize(&value) {
        Ok(job) => job,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let msg = if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            };
            return Err(invalid(envelope, msg, value));
        }
    };
    if let Err(msg) = check_rules(&job, &subj, rules) {
        return Err(invalid(envelope, msg, value));
    }
    Ok(ParsedJob { job, envelope })
}

fn check_rules(job: &Job, subj: &SubjectInfo, rules: &ParseRules) -> Result<(), String> {
    if !is_valid_job_id(&job.id) {
        return Err(format!(
            "id: {:?} does not match ^[A-Za-z0-9][A-Za-z0-9_:-]{{0,127}}$",
            job.id
        ));
    }
    if !is_valid_tenant(&job.tenant) {
        return Err(format!(
            "tenant: {:?} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$",
            job.tenant
        ));
    }
    if job.tenant != subj.tenant {
        return Err(format!(
            "tenant: {:?} differs from the subject's tenant {:?}",
            job.tenant, subj.tenant
        ));
    }
    if job.messages.is_empty() {
        return Err("messages: must hold at least one message".into());
    }
    if job.messages.len() > rules.max_messages {
        return Err(format!(
            "messages: {} messages; limits.max_messages is {}",
            job.messages.len(),
            rules.max_messages
        ));
    }
    for (i, m) in job.messages.iter().enumerate() {
        check_message(i, m)?;
    }
    if let Some(n) = job.max_tokens {
        if n == 0 || n > rules.max_tokens_cap {
            return Err(format!(
                "max_tokens: {n} is outside 1..{}",
                rules.max_tokens_cap
            ));
        }
    }
    if let Some(t) = job.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(format!("temperature: {t} is outside 0..2"));
        }
    }
    if let Some(stop) = &job.stop {
        if stop.len() > 4 {
            return Err(format!("stop: {} strings, at most 4 allowed", stop.len()));
        }
        if let Some(i) = stop.iter().position(String::is_empty) {
            return Err(format!("stop[{i}]: must not be empty"));
        }
    }
    if let Some(c) = job.max_cost_usd {
        if c <= Decimal::ZERO {
            return Err(format!("max_cost_usd: {c} must be greater than 0"));
        }
    }
    if job.stream && job.reply_to.is_none() {
        return Err(
            "stream: true needs a reply_to (chunks are published only there, never stored)".into(),
        );
    }
    if let Some(r) = &job.reply_to {
        if let Some(problem) = reply_to_problem(r, &rules.prefix) {
            return Err(problem);
        }
        // The subject's tenant, which NATS permissions vouch for (equal to the job's here).
        if let Some(problem) = rules.reply_to.problem(&subj.tenant, r) {
            return Err(problem);
        }
    }
    check_tools(job)?;
    if let Some(ResponseFormat::JsonSchema { json_schema }) = &job.response_format {
        if json_schema.name.is_empty() {
            return Err("response_format.json_schema.name: must not be empty".into());
        }
        if let Some(s) = &json_schema.schema {
            if !s.is_object() {
                return Err("response_format.json_schema.schema: expected an object".into());
            }
        }
    }
    if let Some(filter) = &job.providers {
        for (i, name) in filter.allow.iter().flatten().enumerate() {
            if !rules.providers.iter().any(|p| p == name) {
                return Err(format!(
                    "providers.allow[{i}]: {name:?} is not a configured provider (configured: {})",
                    rules.providers.join(", ")
                ));
            }
        }
    }
    for (name, v) in [
        ("feature", &job.feature),
        ("user", &job.user),
        ("region", &job.region),
    ] {
        if let Some(v) = v {
            if v.is_empty() || v.len() > 256 {
                return Err(format!("{name}: must be 1..256 bytes"));
            }
        }
    }
    Ok(())
}

fn check_message(i: usize, m: &Message) -> Result<(), String> {
    match m.role {
        Role::Tool if m.tool_call_id.as_deref().is_none_or(str::is_empty) => {
            return Err(format!(
                "messages[{i}].tool_call_id: required for role tool"
            ));
        }
        Role::Tool => {}
        _ if m.tool_call_id.is_some() => {
            return Err(format!(
                "messages[{i}].tool_call_id: only allowed for role tool"
            ));
        }
        _ => {}
    }
    if m.tool_calls.is_some() && m.role != Role::Assistant {
        return Err(format!(
            "messages[{i}].tool_calls: only allowed for role assistant"
        ));
    }
    let has_calls = m.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
    if m.content.is_none() && !(m.role == Role::Assistant && has_calls) {
        return Err(format!(
            "messages[{i}].content: required (null only for an assistant message with tool_calls)"
        ));
    }
    for (j, call) in m.tool_calls.iter().flatten().enumerate() {
        if serde_json::from_str::<Value>(&call.function.arguments)
            .map(|v| !v.is_object())
            .unwrap_or(true)
        {
            return Err(format!(
                "messages[{i}].tool_calls[{j}].function.arguments: must be a JSON object encoded as a string"
            ));
        }
    }
    Ok(())
}

fn check_tools(job: &Job) -> Result<(), String> {
    let mut names = HashSet::new();
    for (i, t) in job.tools.iter().flatten().enumerate() {
        let name = &t.function.name;
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if !ok {
            return Err(format!(
                "tools[{i}].function.name: {name:?} must match ^[a-zA-Z0-9_-]{{1,64}}$"
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!(
                "tools[{i}].function.name: {name:?} is defined twice"
            ));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(format!(
                    "tools[{i}].function.parameters: expected a JSON Schema object"
                ));
            }
        }
    }
    if let Some(choice) = &job.tool_choice {
        match choice {
            Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {
                if s == "required" && names.is_empty() {
                    return Err("tool_choice: \"required\" needs tools".into());
                }
            }
            Value::Object(o) => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str);
                let typed = o.get("type").and_then(Value::as_str) == Some("function");
                match name {
                    Some(n) if typed && names.contains(n) => {}
                    Some(n) if typed => {
                        return Err(format!("tool_choice.function.name: {n:?} is not in tools"))
                    }
                    _ => return Err(
                        "tool_choice: expected {\"type\":\"function\",\"function\":{\"name\":...}}"
                            .into(),
                    ),
                }
            }
            _ => {
                return Err(
                    "tool_choice: expected one of none, auto, required, or a function choice"
                        .into(),
                )
            }
        }
    }
    Ok(())
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The path of the first string or key holding U+0000.
fn find_nul(v: &Value, path: &mut String) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(display_path(path)),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let r = find_nul(x, path);
            path.truncate(len);
            r
        }),
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            // The path goes into the error message, which Postgres must be able to store:
            // control characters in a key are written as JSON escapes.
            for ch in k.chars() {
                if ch.is_control() {
                    path.push_str(&format!("\\u{:04x}", u32::from(ch)));
                } else {
                    path.push(ch);
                }
            }
            let r = if k.contains('\0') {
                Some(display_path(path))
            } else {
                find_nul(x, path)
            };
            path.truncate(len);
            r
        }),
        _ => None,
    }
}

fn display_path(p: &str) -> String {
    if p.is_empty() {
        ".".into()
    } else {
        p.to_string()
    }
}

/// For a job's free-form fields (`metadata`, `tool_choice`, a tool's `parameters`, a
/// JSON schema): an optional value that refuses duplicate keys, as the long way does.
pub(super) fn strict_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Option::<StrictValue>::deserialize(d).map(|v| v.map(|StrictValue(v)| v))
}

/// A JSON value that refuses duplicate object keys anywhere in the document.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests;
