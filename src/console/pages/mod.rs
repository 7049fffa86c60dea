//! One module per page.

pub mod dlq;
pub mod jobs;
pub mod overview;
pub mod spend;
pub mod workers;

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
