//! The exact-match response cache: which jobs it may answer and under which key. Pure
//! decisions only; the entries live in Postgres (`store::cache`), and the worker
//! (`worker::process`) looks up before reserving budget and stores with the job's final
//! row.
//!
//! - The key is the canonical request after routing: the model the job is routed to
//!   (provider, name and upstream id), `messages`, `tools`, `tool_choice`,
//!   `response_format`, `temperature`, `stop` and the `max_tokens` sent, hashed
//!   (SHA-256). The tenant is not in the hash but beside it in the table's key, so an
//!   entry is never shared across tenants.
//! - Only requests deterministic enough are cached: `temperature` at most the scope's
//!   `max_temperature` (a job without one counts as 1, the providers' default).
//! - `cache: use` looks up and stores on a miss; `refresh` calls and replaces the entry;
//!   `bypass` neither looks up nor stores.
//!
//! The semantic cache (`semantic`, off by default) answers a paraphrase of a stored
//! prompt: [`embed`] (the built-in embedder), [`lsh`] (how vectors are stored and found),
//! [`semantic`] (its key).

pub mod embed;
pub mod lsh;
pub mod semantic;

use crate::config::{CacheConfig, ModelConfig};
use crate::job::{CacheMode, Job, Message, ResponseFormat, Tool};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The temperature a job without one gets from the providers (OpenAI, Anthropic and
/// Gemini all default to 1).
const DEFAULT_TEMPERATURE: f64 = 1.0;

/// Bumped when the key's contents change, so old entries stop matching.
const KEY_VERSION: u32 = 1;

/// A job the cache applies to: its key and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cacheable {
    /// SHA-256 of the canonical request.
    pub key: [u8; 32],
    /// How long a stored answer is served.
    pub ttl_s: u64,
    /// Look up before calling (`use`); `refresh` only stores.
    pub lookup: bool,
}

/// What the cache does for `job`, routed to `model` with `max_tokens`; `None`: nothing
/// (cache off, `bypass`, too random, or a TTL of 0 for its scope).
pub fn cacheable(
    cfg: &CacheConfig,
    job: &Job,
    model: &ModelConfig,
    max_tokens: u32,
) -> Option<Cacheable> {
    if !cfg.enabled || job.cache == CacheMode::Bypass {
        return None;
    }
    let scope = cfg.scope(&job.tenant, job.feature.as_deref(), &model.name);
    let temperature = job.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if scope.ttl_s == 0 || temperature > scope.max_temperature {
        return None;
    }
    Some(Cacheable {
        key: key(job, model, max_tokens)?,
        ttl_s: scope.ttl_s,
        lookup: job.cache == CacheMode::Use,
    })
}

/// What the key hashes: everything that shapes the answer, nothing that does not (the
/// job's id, feature, metadata, reply subject, deadline).
#[derive(Serialize)]
struct Canonical<'a> {
    v: u32,
    provider: &'a str,
    model: &'a str,
    upstream: &'a str,
    messages: &'a [Message],
    tools: Option<&'a [Tool]>,
    tool_choice: Option<&'a serde_json::Value>,
    response_format: Option<&'a ResponseFormat>,
    temperature: Option<f64>,
    stop: Option<&'a [String]>,
    max_tokens: u32,
}

/// SHA-256 of the canonical request (its JSON, fields in a fixed order); `None` when it
/// does not serialize (then the job is not cached).
pub fn key(job: &Job, model: &ModelConfig, max_tokens: u32) -> Option<[u8; 32]> {
    let canonical = Canonical {
        v: KEY_VERSION,
        provider: &model.provider,
        model: &model.name,
        upstream: &model.upstream,
        messages: &job.messages,
        tools: job.tools.as_deref(),
        tool_choice: job.tool_choice.as_ref(),
        response_format: job.response_format.as_ref(),
        temperature: job.temperature,
        stop: job.stop.as_deref(),
        max_tokens,
    };
    sha256_json(&canonical)
}

/// SHA-256 of a value's JSON (fields in declaration order); `None` when it does not
/// serialize.
pub(crate) fn sha256_json(value: &impl Serialize) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    serde_json::to_writer(HashWriter(&mut h), value).ok()?;
    Some(h.finalize().into())
}

/// Feeds serialized bytes straight into the hash (no intermediate buffer).
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
