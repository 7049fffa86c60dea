//! Provider adapters behind one trait, and the provider simulator.
//!
//! A job's canonical request (OpenAI's chat format) goes in, a normalised [`ChatResponse`]
//! or a classified [`ProviderError`] comes out. Each adapter owns its wire format; the
//! router only ever sees these types.

pub mod anthropic;
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

/// A provider API: one implementation per wire format.
pub trait Provider: Send + Sync {
    fn chat<'a>(
        &'a self,
        req: ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("providers[{provider}].api_key_env: environment variable {var} is not set")]
    MissingKey { provider: String, var: String },
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
