//! One small set of failure classes that the router acts on, whatever the provider.

use crate::job::Usage;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// 429: try another provider now, this one after the delay.
    RateLimited,
    /// Anthropic 529, Gemini/OpenAI 503.
    Overloaded,
    ServerError,
    Timeout,
    Connection,
    /// The input does not fit this model's context window.
    ContextTooLong,
    /// 4xx for this request (bad parameter, unknown model …).
    InvalidRequest,
    /// 401/403: the key is wrong; no retry with this provider helps.
    Auth,
    /// Billing or a per-day quota: do not retry this provider, fail over.
    QuotaExhausted,
    /// The provider refused the content.
    ContentFiltered,
}

impl FailureClass {
    /// The `outcome` of an attempt and a cost row.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Overloaded => "overloaded",
            FailureClass::ServerError => "server_error",
            FailureClass::Timeout => "timeout",
            FailureClass::Connection => "connection_error",
            FailureClass::ContextTooLong => "context_too_long",
            FailureClass::InvalidRequest => "invalid_request",
            FailureClass::Auth => "auth_error",
            FailureClass::QuotaExhausted => "quota_exhausted",
            FailureClass::ContentFiltered => "content_filtered",
        }
    }

    /// Worth trying the same job again later (on any provider).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureClass::RateLimited
                | FailureClass::Overloaded
                | FailureClass::ServerError
                | FailureClass::Timeout
                | FailureClass::Connection
        )
    }
}

/// A failed provider call. `message` is the provider's own message (never the key).
///
/// `usage` is what the provider billed for this call although it failed: set when a
/// 2xx answer reported usage but was unusable (a refusal, a blocked answer, a tool call
/// that fails validation, a body missing its choices …), so that its cost is recorded;
/// `None` when nothing billed is known (error statuses, transport failures, bodies that
/// are not JSON).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} ({}): {message}", class.as_str(), status.map_or("no status".to_string(), |s| s.to_string()))]
pub struct ProviderError {
    pub class: FailureClass,
    pub status: Option<u16>,
    pub message: String,
    /// How long the provider asked us to wait (Retry-After and friends).
    pub retry_after: Option<Duration>,
    /// The provider's rate-limit headers on this answer, when it sends them.
    pub rate: Option<Box<super::ratelimit_headers::RateReading>>,
    /// What the provider billed for this answer, when it answered 2xx with usage that we
    /// then could not use (a tool call that fails its checks, a refusal).
    pub usage: Option<Usage>,
}

impl ProviderError {
    pub fn new(class: FailureClass, status: Option<u16>, message: impl Into<String>) -> Self {
        ProviderError {
            class,
            status,
            message: message.into(),
            retry_after: None,
            rate: None,
            usage: None,
        }
    }

    /// The same error, carrying the usage the provider billed for the answer.
    pub fn with_usage(mut self, usage: Option<Usage>) -> Self {
        self.usage = usage;
        self
    }
}
