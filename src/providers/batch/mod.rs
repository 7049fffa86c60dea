//! Provider batch APIs: many chat requests sent at once, answered within a day at a lower
//! price. One implementation per provider API behind [`BatchApi`]; the worker's batcher
//! (`crate::worker::batcher`) decides what to send and when, and reads each answer with
//! the provider's own chat adapter (`read_answer`), so a batched answer is checked exactly
//! as a live one is.
//!
//! Each request of a batch is named by its line: custom id `sy-<line>` (every provider's
//! custom ids accept it; Anthropic's allow only `[A-Za-z0-9_-]{1,64}`).

pub mod anthropic;
pub mod gemini;
pub mod openai;

use super::{ChatRequest, ChatResponse, FailureClass, ProviderError};
use crate::config::{Config, ProviderKind};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;

/// The custom id of a batch's line `line`.
pub fn custom_id(line: u32) -> String {
    format!("sy-{line}")
}

/// The line a custom id names.
pub fn line_of(custom_id: &str) -> Option<u32> {
    custom_id.strip_prefix("sy-")?.parse().ok()
}

/// Where a provider batch is.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchStatus {
    /// Not ended yet (the provider's own status word).
    Running(String),
    /// Ended (completed, expired, cancelled, failed …): each line's answer; a line not
    /// listed was not answered.
    Ended {
        status: String,
        lines: Vec<LineResult>,
    },
}

/// One line's result in an ended batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LineResult {
    pub line: u32,
    pub outcome: LineOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LineOutcome {
    /// An HTTP answer to the line's request: its status and body, read with the
    /// provider's chat adapter ([`BatchApi::read_answer`]).
    Answer { status: u16, body: Vec<u8> },
    /// Not run, or failed without an answer (expired, cancelled, an internal error).
    NotRun { message: String },
}

/// A provider's batch API.
pub trait BatchApi: Send + Sync {
    /// Send `lines` (line `i` is `requests[i]`) as one batch tagged `tag` (our id, kept in
    /// the provider's metadata where it has any); the provider's batch id.
    fn submit<'a>(
        &'a self,
        tag: &'a str,
        requests: &'a [ChatRequest<'a>],
    ) -> BoxFuture<'a, Result<String, ProviderError>>;

    /// The provider's id of a batch we tagged `tag`, if the provider has one (a worker
    /// died between sending it and recording its id). `Ok(None)`: none, or the provider
    /// cannot tell.
    fn find<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Option<String>, ProviderError>>;

    fn poll<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<BatchStatus, ProviderError>>;

    /// Ask the provider to stop the batch; it ends (cancelled) later, with what it did.
    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;

    /// One line's HTTP answer read as a live answer to `req` is.
    fn read_answer(
        &self,
        req: &ChatRequest<'_>,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError>;
}

/// The batch API of every configured provider that has one, by provider name.
#[derive(Clone, Default)]
pub struct BatchApis {
    by_name: HashMap<String, Arc<dyn BatchApi>>,
}

impl BatchApis {
    /// OpenAI proper, Anthropic and Gemini have a batch API here; `openai_compatible`
    /// servers are not batched: their jobs stay live.
    pub fn from_config(config: &Config) -> Result<BatchApis, super::SetupError> {
        let mut by_name: HashMap<String, Arc<dyn BatchApi>> = HashMap::new();
        for p in &config.providers {
            if p.kind == ProviderKind::OpenaiCompatible {
                continue;
            }
            let max = config.limits.max_response_bytes;
            let key = super::read_key(p)?;
            let made: Result<Arc<dyn BatchApi>, ProviderError> = match p.kind {
                ProviderKind::Openai => {
                    openai::OpenAiBatch::new(p, key, max).map(|a| Arc::new(a) as _)
                }
                ProviderKind::Anthropic => {
                    anthropic::AnthropicBatch::new(p, key, max).map(|a| Arc::new(a) as _)
                }
                ProviderKind::Gemini => {
                    gemini::GeminiBatch::new(p, key, max).map(|a| Arc::new(a) as _)
                }
                ProviderKind::OpenaiCompatible => continue,
            };
            let api = made.map_err(|e| super::SetupError::Batch {
                provider: p.name.clone(),
                message: e.to_string(),
            })?;
            by_name.insert(p.name.clone(), api);
        }
        Ok(BatchApis { by_name })
    }

    pub fn get(&self, provider: &str) -> Option<&Arc<dyn BatchApi>> {
        self.by_name.get(provider)
    }

    pub fn has(&self, provider: &str) -> bool {
        self.by_name.contains_key(provider)
    }

    /// Replace or add one (tests).
    pub fn insert(&mut self, name: &str, api: Arc<dyn BatchApi>) {
        self.by_name.insert(name.to_string(), api);
    }
}

/// The HTTP side every batch API shares: a client, the provider's authentication
/// headers (never printed), and answers read whole up to a cap.
pub(crate) struct BatchHttp {
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    max_bytes: usize,
}

impl BatchHttp {
    pub(crate) fn new(
        p: &crate::config::ProviderConfig,
        headers: reqwest::header::HeaderMap,
        max_response_bytes: usize,
    ) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(p.timeout_s.max(60)))
            .connect_timeout(std::time::Duration::from_secs(p.connect_timeout_s))
            .user_agent(super::http::USER_AGENT)
            .build()
            .map_err(super::http::transport_error)?;
        Ok(BatchHttp {
            client,
            headers,
            // A results file holds many answers.
            max_bytes: max_response_bytes.saturating_mul(64),
        })
    }

    pub(crate) fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.client.get(url).headers(self.headers.clone())
    }

    pub(crate) fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.client.post(url).headers(self.headers.clone())
    }

    /// Send, read the whole answer, refuse a non-2xx.
    pub(crate) async fn call(
        &self,
        what: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, ProviderError> {
        let a = super::http::send(rb, self.max_bytes).await?;
        if !(200..300).contains(&a.status) {
            return Err(http_error(what, a.status, &a.body));
        }
        Ok(a.body)
    }

    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let body = self.call(what, rb).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                FailureClass::ServerError,
                Some(200),
                format!("{what}: unreadable answer: {e}"),
            )
        })
    }
}

/// A provider's answer to a batch-API request that is not a 2xx.
pub(crate) fn http_error(what: &str, status: u16, body: &[u8]) -> ProviderError {
    let class = match status {
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        s if s >= 500 => FailureClass::ServerError,
        _ => FailureClass::InvalidRequest,
    };
    ProviderError::new(
        class,
        Some(status),
        format!(
            "{what}: {}",
            super::http::clip(&String::from_utf8_lossy(body))
        ),
    )
}
