//! Provider adapters behind one trait, and the provider simulator.
//!
//! A job's canonical request (OpenAI's chat format) goes in, a normalised [`ChatResponse`]
//! or a classified [`ProviderError`] comes out. Each adapter owns its wire format; the
//! router only ever sees these types.

/// The [`Provider`] impl of an HTTP adapter: one that has `post(&req, stream)`,
/// `client` and `max_response_bytes`, whose module has `read_answer`, and whose streamed
/// events `$assembler` reads.
macro_rules! http_provider {
    ($adapter:ty, $assembler:ty) => {
        impl Provider for $adapter {
            fn chat<'a>(
                &'a self,
                req: ChatRequest<'a>,
            ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
                // The request is encoded inside the future: only its bytes wait for the
                // answer (see `http_pool_tests::an_http2_call_in_flight_is_small`).
                Box::pin(async move {
                    let post = self.post(&req, false)?;
                    let a = self.client.send(post, self.max_response_bytes).await?;
                    read_answer(&req, a.status, &a.headers, &a.body)
                })
            }

            fn chat_stream<'a>(
                &'a self,
                req: ChatRequest<'a>,
                deltas: super::Deltas<'a>,
            ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
                Box::pin(async move {
                    let post = self.post(&req, true)?;
                    let asm = <$assembler>::default();
                    let max = self.max_response_bytes;
                    super::stream::call(&self.client, post, max, &req, asm, deltas, read_answer)
                        .await
                })
            }
        }
    };
}

pub mod anthropic;
pub mod batch;
pub mod embeddings;
mod error;
pub mod gemini;
mod http;
mod http2;
#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod http_pool_tests;
pub mod openai;
pub mod ratelimit_headers;
pub mod simulator;
pub mod stream;
#[cfg(test)]
mod test_support;
pub mod tools;

pub use error::{FailureClass, ProviderError};
pub use http::calls_in_flight;

use crate::config::{Config, ProviderConfig, ProviderKind};
use crate::job::{Message, Output, ResponseFormat, Tool, Usage};
use futures::future::BoxFuture;
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Arc;

/// One call's input, borrowed from the job.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The provider's model id (`upstream` in the config).
    pub model: &'a str,
    pub messages: &'a [Message],
    pub max_tokens: u32,
    pub temperature: Option<f64>,
    pub stop: Option<&'a [String]>,
    pub response_format: Option<&'a ResponseFormat>,
    pub tools: Option<&'a [Tool]>,
    pub tool_choice: Option<&'a serde_json::Value>,
}

/// One call's normalised answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub output: Output,
    pub usage: Usage,
    /// The provider's rate-limit headers on this response, when it sends them.
    pub rate: Option<ratelimit_headers::RateReading>,
}

/// What every adapter does with one HTTP answer: a 2xx body goes through the adapter's
/// `parse` and the check of its tool calls against `req`, anything else through its
/// `classify`; the answer's rate-limit reading goes on the result either way.
fn read_answer_with(
    req: &ChatRequest<'_>,
    (status, headers, body): (u16, &reqwest::header::HeaderMap, &[u8]),
    rate: Option<ratelimit_headers::RateReading>,
    parse: impl FnOnce(u16, &[u8]) -> Result<ChatResponse, ProviderError>,
    classify: fn(u16, &reqwest::header::HeaderMap, &[u8]) -> ProviderError,
) -> Result<ChatResponse, ProviderError> {
    if (200..300).contains(&status) {
        parse(status, body)
            .and_then(|r| tools::checked(req.tools, r))
            .map(|r| ChatResponse { rate, ..r })
    } else {
        let mut e = classify(status, headers, body);
        e.rate = rate.map(Box::new);
        Err(e)
    }
}

/// Where a streamed call's text goes, piece by piece, as the provider sends it.
pub type Deltas<'a> = Box<dyn FnMut(&str) + Send + 'a>;

/// A provider API: one implementation per wire format.
pub trait Provider: Send + Sync {
    fn chat<'a>(
        &'a self,
        req: ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;

    /// The same call streamed (a job with `stream: true`): the answer's text goes to
    /// `deltas` as it is generated, and the answer is what [`Provider::chat`] gives. An
    /// adapter without a streaming format gives the whole text as one delta.
    fn chat_stream<'a>(
        &'a self,
        req: ChatRequest<'a>,
        mut deltas: Deltas<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            let answer = self.chat(req).await?;
            if let Some(text) = answer.output.content.as_deref().filter(|t| !t.is_empty()) {
                deltas(text);
            }
            Ok(answer)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("providers[{provider}].api_key_env: environment variable {var} is not set")]
    MissingKey { provider: String, var: String },
    #[error("providers[{provider}]: cannot set up its batch API: {message}")]
    Batch { provider: String, message: String },
    #[error("providers[{provider}]: cannot build the HTTP client: {source}")]
    Client {
        provider: String,
        source: http::PoolError,
    },
}

/// Every configured provider's adapter, by provider name.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<dyn Provider>>,
}

impl Providers {
    /// Build an adapter per configured provider; keys are read from the environment here,
    /// once, and held as secrets.
    pub fn from_config(config: &Config) -> Result<Providers, SetupError> {
        let mut by_name: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        for p in &config.providers {
            let key = read_key(p)?;
            if p.http2_prior_knowledge.is_some() {
                tracing::warn!(
                    provider = %p.name,
                    "providers.http2_prior_knowledge is deprecated: use http = \"http2\" (or \"auto\")"
                );
            }
            let client = http::Pool::new(p).map_err(|source| SetupError::Client {
                provider: p.name.clone(),
                source,
            })?;
            let max = config.limits.max_response_bytes;
            let adapter: Arc<dyn Provider> = match p.kind {
                ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                    Arc::new(openai::OpenAi::new(p, key, client, max))
                }
                ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(p, key, client, max)),
                ProviderKind::Gemini => Arc::new(gemini::Gemini::new(p, key, client, max)),
            };
            by_name.insert(p.name.clone(), adapter);
        }
        Ok(Providers { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }

    /// Replace or add one adapter (tests inject failing providers this way).
    pub fn insert(&mut self, name: &str, provider: Arc<dyn Provider>) {
        self.by_name.insert(name.to_string(), provider);
    }
}

fn read_key(p: &ProviderConfig) -> Result<Option<SecretString>, SetupError> {
    let Some(var) = &p.api_key_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Some(SecretString::from(v))),
        _ if p.kind == ProviderKind::OpenaiCompatible => Ok(None),
        _ => Err(SetupError::MissingKey {
            provider: p.name.clone(),
            var: var.clone(),
        }),
    }
}
