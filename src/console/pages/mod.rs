//! One module per page.

pub mod dlq;
pub mod jobs;
pub mod overview;
pub mod spend;
pub mod workers;

use super::html::{self, esc};
use super::ConsoleError;

/// A filter's text: trimmed, `None` when empty.
pub fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A time filter (RFC 3339, a date, or 90m / 24h / 7d back from now), the field named
/// in the error.
pub fn time_filter(
    field: &str,
    v: &Option<String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ConsoleError> {
    given(v)
        .map(|s| {
            crate::cli::report::parse_time(&s)
                .map_err(|e| ConsoleError::BadRequest(format!("{field}: {e}")))
        })
        .transpose()
}

/// Internal errors from the shared CLI code, whole chain.
pub fn internal(e: anyhow::Error) -> ConsoleError {
    ConsoleError::Internal(format!("{e:#}"))
}

/// A job payload with only its routing fields shown (prompts, tools and metadata may
/// hold personal data): what is shown unless `show_content`.
fn redact(job: &serde_json::Value) -> serde_json::Value {
    const SHOWN: [&str; 12] = [
        "id",
        "tenant",
        "feature",
        "user",
        "task",
        "model",
        "max_tokens",
        "temperature",
        "providers",
        "priority",
        "deadline",
        "max_cost_usd",
    ];
    match job.as_object() {
        Some(o) => serde_json::Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = if SHOWN.contains(&k.as_str()) {
                        v.clone()
                    } else {
                        serde_json::Value::String(html::HIDDEN.into())
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        None => serde_json::Value::String(html::HIDDEN.into()),
    }
}

/// A job's payload as received: the JSON (only its routing fields unless `show`), or the
/// base64 of bytes that are not JSON (only with `show`).
pub fn payload(job: Option<&serde_json::Value>, raw_b64: Option<&str>, show: bool) -> String {
    match job {
        Some(job) if show => html::json_block(job),
        Some(job) => html::json_block(&redact(job)),
        None if show => format!(
            "<p>Not JSON; base64 of the raw payload:</p><pre class=\"json\">{}</pre>",
            esc(raw_b64.unwrap_or(""))
        ),
        None => format!("<p class=\"muted\">{}</p>", esc(html::HIDDEN)),
    }
}
