//! The stable error kinds of the contract, and the error object of a failed result.

use serde::{Deserialize, Serialize};

/// Error kinds (stable, snake_case). Results, `jobs.error_kind`, DLQ entries and metric
/// labels all use these names, derived from this one enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    MalformedJob,
    InvalidJob,
    UnknownModel,
    NoRoute,
    BudgetExceeded,
    CostCapExceeded,
    Expired,
    ContextTooLong,
    ProviderRejected,
    ProvidersExhausted,
    /// A `[screen]` policy refused the job (no call; not retried).
    Refused,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::MalformedJob,
        ErrorKind::InvalidJob,
        ErrorKind::UnknownModel,
        ErrorKind::NoRoute,
        ErrorKind::BudgetExceeded,
        ErrorKind::CostCapExceeded,
        ErrorKind::Expired,
        ErrorKind::ContextTooLong,
        ErrorKind::ProviderRejected,
        ErrorKind::ProvidersExhausted,
        ErrorKind::Refused,
        ErrorKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MalformedJob => "malformed_job",
            ErrorKind::InvalidJob => "invalid_job",
            ErrorKind::UnknownModel => "unknown_model",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::CostCapExceeded => "cost_cap_exceeded",
            ErrorKind::Expired => "expired",
            ErrorKind::ContextTooLong => "context_too_long",
            ErrorKind::ProviderRejected => "provider_rejected",
            ErrorKind::ProvidersExhausted => "providers_exhausted",
            ErrorKind::Refused => "refused",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"kind": "...", "message": "..."}` on a failed result and a DLQ entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::String(kind.as_str().to_string()));
        }
    }
}
