//! The job and result types shared by the schema, the queue and the store.
//!
//! `schemas/job.schema.json` and `schemas/result.schema.json` are the source of truth;
//! `tests/schemas.rs` proves that these serde types and every file in `examples/` agree
//! with them.

pub mod chunk;
mod error;
mod message;
pub mod names;
mod parse;
pub mod reply_to;
mod result;

pub use chunk::Chunk;
pub use error::{ErrorBody, ErrorKind};
pub use message::FunctionType;
pub use message::{
    Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, JsonSchemaFormat, Message,
    ResponseFormat, Role, Tool, ToolCall,
};
pub use parse::{
    parse_job, parse_job_checked, Envelope, ParseFailure, ParseRules, ParsedJob, SubjectInfo,
};
pub use reply_to::{ReplyToRules, SubjectPattern};
pub use result::{Attempt, JobResult, Output, Route, Status, Usage};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Job priority, taken from the subject (`<prefix>.jobs.<priority>.<tenant>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the job asks the model to do; `auto` lets the router classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    #[default]
    Auto,
    Extraction,
    Classification,
    Summarization,
    Generation,
    Code,
    Reasoning,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Auto => "auto",
            Task::Extraction => "extraction",
            Task::Classification => "classification",
            Task::Summarization => "summarization",
            Task::Generation => "generation",
            Task::Code => "code",
            Task::Reasoning => "reasoning",
        }
    }
}

/// Response-cache behaviour requested by the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    #[default]
    Use,
    Bypass,
    Refresh,
}

/// Whether the job may go through a provider batch API (`[batch]`): `auto` (the
/// default) when its priority is one of `batch.priorities`, `never`, or `prefer` (at any
/// priority, when batches are enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    #[default]
    Auto,
    Never,
    Prefer,
}

/// `providers: {"allow": [...], "deny": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// A completion job as producers publish it. Unknown fields are rejected so that a
/// typo is never silently ignored; `metadata` is free-form and echoed back untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub task: Task,
    #[serde(default = "default_model")]
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "message::string_or_strings"
    )]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "parse::strict_value"
    )]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "message::decimal_number",
        serialize_with = "message::serialize_decimal_number"
    )]
    pub max_cost_usd: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<ProviderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub cache: CacheMode,
    /// Publish the output on `reply_to` as it is generated, in ordered chunks, before
    /// the result (see DESIGN.md "Streamed output"). Needs a `reply_to`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "is_auto")]
    pub batch: BatchMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "parse::strict_value"
    )]
    pub metadata: Option<serde_json::Value>,
    /// Set by screening (`crate::screen`) before routing, never read from the wire.
    #[serde(skip)]
    pub screen: Option<std::sync::Arc<crate::screen::ScreenRecord>>,
}

fn is_auto(b: &BatchMode) -> bool {
    *b == BatchMode::Auto
}

fn default_model() -> String {
    "auto".to_string()
}
