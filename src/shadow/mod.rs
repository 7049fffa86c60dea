//! Shadow evaluation, the pure part: which jobs are sampled, how two answers are
//! compared, and the judge's request and verdict. `worker::shadow` runs the candidate
//! and judge calls; `store::shadow` keeps the evaluations; `cli::report::eval` sums them.
//! Nothing here changes what the producer gets.

use crate::config::CompareKind;
use crate::job::{Content, ContentPart, Job, Message, Output, ResponseFormat, Role};
use serde_json::Value;

/// Buckets of the sampling hash: a rate is honoured to one part in a million.
const BUCKETS: u64 = 1_000_000;

/// Whether the job `(tenant, id)` is shadowed at `rate`: the same answer every time, on
/// every worker (a redelivery decides alike), and independent of the A/B split's hash.
pub fn sampled(tenant: &str, id: &str, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    let salted = format!("shadow\u{1f}{id}");
    let bucket = crate::router::variant_bucket(tenant, &salted, BUCKETS);
    (bucket as f64) < rate * BUCKETS as f64
}

/// What a comparison found: agreement and, where it has one, a similarity in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compared {
    pub agree: bool,
    pub similarity: Option<f64>,
}

/// Compare two answers without a call (`exact`, `json`, `embedding`); `None` for
/// `judge`, which needs one.
pub fn compare(kind: CompareKind, a: &Output, b: &Output, min_similarity: f64) -> Option<Compared> {
    match kind {
        CompareKind::Exact => Some(Compared {
            agree: a.content == b.content && same_calls(a, b, |x, y| x == y),
            similarity: None,
        }),
        CompareKind::Json => Some(Compared {
            agree: text_equal_as_json(a.content.as_deref(), b.content.as_deref())
                && same_calls(a, b, |x, y| text_equal_as_json(Some(x), Some(y))),
            similarity: None,
        }),
        CompareKind::Embedding => {
            let dims = crate::cache::embed::BUILTIN_DIMS;
            let ea = crate::cache::embed::builtin(&answer_text(a), dims);
            let eb = crate::cache::embed::builtin(&answer_text(b), dims);
            // Two empty answers are alike; one empty one is not like a non-empty one.
            let blank = |v: &[f32]| v.iter().all(|x| *x == 0.0);
            let sim = match (blank(&ea), blank(&eb)) {
                (true, true) => 1.0,
                (true, false) | (false, true) => 0.0,
                (false, false) => f64::from(crate::cache::embed::cosine(&ea, &eb)).clamp(0.0, 1.0),
            };
            // Rounded as stored (numeric, 4 places), so the row and the verdict agree.
            let sim = (sim * 10_000.0).round() / 10_000.0;
            Some(Compared {
                agree: sim >= min_similarity,
                similarity: Some(sim),
            })
        }
        CompareKind::Judge => None,
    }
}

/// The same tool calls (name, then arguments by `args`), in order.
fn same_calls(a: &Output, b: &Output, args: impl Fn(&str, &str) -> bool) -> bool {
    a.tool_calls.len() == b.tool_calls.len()
        && a.tool_calls.iter().zip(&b.tool_calls).all(|(x, y)| {
            x.function.name == y.function.name && args(&x.function.arguments, &y.function.arguments)
        })
}

/// Equal as JSON values when both parse (key order, whitespace and number spelling do
/// not matter), else equal as text.
pub fn text_equal_as_json(a: Option<&str>, b: Option<&str>) -> bool {
    let parse = |s: Option<&str>| s.and_then(|s| serde_json::from_str::<Value>(s).ok());
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => json_equal(&x, &y),
        _ => a == b,
    }
}

/// Structural equality; numbers equal when they denote the same value (`1`, `1.0`, `1e0`).
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// An answer as one text: its content, then each tool call as `name(arguments)`.
pub fn answer_text(o: &Output) -> String {
    let mut s = o.content.clone().unwrap_or_default();
    for c in &o.tool_calls {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&c.function.name);
        s.push('(');
        s.push_str(&c.function.arguments);
        s.push(')');
    }
    s
}

/// The text of the job's last `user` message (its text parts joined).
fn request_text(job: &Job) -> String {
    let Some(m) = job.messages.iter().rev().find(|m| m.role == Role::User) else {
        return String::new();
    };
    match &m.content {
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text.as_str()),
                ContentPart::ImageUrl { .. } => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => String::new(),
    }
}

/// The judge's messages and response format: its instructions, then the request and the
/// two answers; a JSON verdict asked for by schema.
pub fn judge_request(
    prompt: &str,
    job: &Job,
    primary: &Output,
    candidate: &Output,
) -> (Vec<Message>, ResponseFormat) {
    let user = format!(
        "Request:\n{}\n\nAnswer A:\n{}\n\nAnswer B:\n{}",
        request_text(job),
        answer_text(primary),
        answer_text(candidate)
    );
    let msg = |role, text: String| Message {
        role,
        content: Some(Content::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
    };
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["agree", "disagree"]}},
        "required": ["verdict"],
        "additionalProperties": false
    });
    let format = ResponseFormat::JsonSchema {
        json_schema: crate::job::JsonSchemaFormat {
            name: "verdict".into(),
            description: None,
            schema: Some(schema),
            strict: Some(true),
        },
    };
    (
        vec![msg(Role::System, prompt.to_string()), msg(Role::User, user)],
        format,
    )
}

/// The judge's verdict, strictly: the answer must be exactly the JSON object
/// `{"verdict": "agree"}` or `{"verdict": "disagree"}` (whitespace aside).
pub fn parse_verdict(o: &Output) -> Result<bool, String> {
    let text = o.content.as_deref().unwrap_or("").trim();
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("the judge's answer is not JSON ({e}): {}", clip(text)))?;
    let obj = v.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        format!(
            "the judge's answer is not {{\"verdict\": …}}: {}",
            clip(text)
        )
    })?;
    match obj.get("verdict").and_then(Value::as_str) {
        Some("agree") => Ok(true),
        Some("disagree") => Ok(false),
        _ => Err(format!(
            "the judge's verdict is neither \"agree\" nor \"disagree\": {}",
            clip(text)
        )),
    }
}

/// At most 200 characters of `s`, for a message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests;
