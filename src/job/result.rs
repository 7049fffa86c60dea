//! The terminal result of a job, as published to `reply_to` and the results stream.

use super::ErrorBody;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }
}

/// The model's answer, normalised across providers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub content: Option<String>,
    pub tool_calls: Vec<super::ToolCall>,
    /// `stop` | `length` | `tool_calls` | `content_filter`
    pub finish_reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Every input token, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// The part of `input_tokens` written to the provider's prompt cache (Anthropic),
    /// priced at the model's cache-write price. Absent from JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Every billed output token, reasoning tokens included.
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Add another call's usage (saturating: counts come from providers).
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(o.cached_input_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(o.cache_write_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(o.reasoning_tokens);
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub task: String,
    /// The tier of the model the route starts with.
    pub tier: Option<String>,
    pub reason: String,
    /// The A/B variant (a model name) a `[[routing.rules]]` split gave this job, else null.
    /// Absent in results stored before the field existed.
    #[serde(default)]
    pub variant: Option<String>,
    /// What a `[screen]` policy did (absent when none applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Boxed: a route is held by every job in flight, and most have none.
    pub screen: Option<Box<crate::screen::ScreenRecord>>,
}

/// One provider call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// 1-based, unique per job across every delivery (the `cost_rows.attempt`).
    pub attempt: u32,
    pub provider: String,
    pub model: String,
    /// `succeeded`, or the failure class (`rate_limited`, `server_error`, `timeout` …).
    pub outcome: String,
    pub latency_ms: u64,
    pub cost_usd: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A job's terminal result. Every field is always present (null when not applicable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub id: String,
    pub tenant: String,
    pub feature: Option<String>,
    pub status: Status,
    pub output: Option<Output>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub usage: Usage,
    /// Exact decimal string.
    pub cost_usd: Decimal,
    pub route: Option<Route>,
    pub attempts: Vec<Attempt>,
    pub cache_hit: bool,
    pub queued_ms: u64,
    pub latency_ms: u64,
    pub error: Option<ErrorBody>,
    pub metadata: Option<serde_json::Value>,
    /// The result was larger than the NATS server's max payload: `output` is null here,
    /// the full output is in Postgres (`jobs.output`, `switchyard status`). Absent when
    /// false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}
