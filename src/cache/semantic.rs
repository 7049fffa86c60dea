//! The semantic cache's key: which jobs may be answered by a paraphrase, and which stored
//! entries they may be compared with. Pure decisions; the embedding is made by
//! `worker::process::semantic`, the lookup is in `store::semantic`.
//!
//! - **The prompt** is the text of the job's last `user` message: that alone is compared
//!   by meaning (its embedding).
//! - **The shape** is everything else, which must be equal: the exact cache's canonical
//!   request (routed model, `tools`, `tool_choice`, `response_format`, `temperature`,
//!   `stop`, `max_tokens`, every other message whole) with the prompt's text taken out,
//!   plus the numbers in the prompt, in order (a different amount, date or count is a
//!   different question, however close the words), plus the embedder that made the
//!   vector. Hashed (SHA-256) and, with the tenant, mixed into every index key, so
//!   entries are never compared across tenants or shapes.
//! - The gates are the exact cache's: `enabled`, the job's `cache` mode, its scope's TTL
//!   and `max_temperature`; and the scope's `semantic` switch and `min_similarity`.

use super::{embed, Cacheable};
use crate::config::{CacheConfig, ModelConfig};
use crate::job::{Content, ContentPart, Job, Message, ResponseFormat, Role, Tool};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bumped when the shape's contents change, so old entries stop matching.
const SHAPE_VERSION: u32 = 1;

/// A job the semantic cache applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticKey {
    /// The text whose embedding is compared.
    pub prompt: String,
    /// SHA-256 of the request without the prompt's text.
    pub shape: [u8; 32],
    /// The tenant and the shape, as mixed into the index keys.
    pub scope: u64,
    /// Serve a stored answer from this cosine similarity up.
    pub min_similarity: f32,
}

/// The semantic key of a job the exact cache applies to (`cacheable`), when its scope
/// turns the semantic cache on and it has a prompt with words.
pub fn semantic_key(
    cfg: &CacheConfig,
    job: &Job,
    model: &ModelConfig,
    max_tokens: u32,
    cacheable: Option<&Cacheable>,
) -> Option<SemanticKey> {
    cacheable?;
    let scope = cfg.scope(&job.tenant, job.feature.as_deref(), &model.name);
    if !scope.semantic {
        return None;
    }
    let at = job.messages.iter().rposition(|m| m.role == Role::User)?;
    let prompt = job.messages.get(at)?.text();
    if embed::words(&prompt).is_empty() {
        return None;
    }
    let shape = shape(job, at, model, max_tokens, &prompt, &cfg.embeddings.id())?;
    let mut h = Sha256::new();
    h.update(job.tenant.as_bytes());
    h.update([0]);
    h.update(shape);
    let d: [u8; 32] = h.finalize().into();
    let mut scope_bytes = [0u8; 8];
    scope_bytes.copy_from_slice(&d[..8]);
    Some(SemanticKey {
        prompt,
        shape,
        scope: u64::from_le_bytes(scope_bytes),
        min_similarity: scope.min_similarity as f32,
    })
}

#[derive(Serialize)]
struct Shape<'a> {
    v: u32,
    embedder: &'a str,
    provider: &'a str,
    model: &'a str,
    upstream: &'a str,
    /// The messages, the prompt's text parts emptied.
    messages: &'a [Message],
    prompt_numbers: Vec<String>,
    tools: Option<&'a [Tool]>,
    tool_choice: Option<&'a serde_json::Value>,
    response_format: Option<&'a ResponseFormat>,
    temperature: Option<f64>,
    stop: Option<&'a [String]>,
    max_tokens: u32,
}

fn shape(
    job: &Job,
    at: usize,
    model: &ModelConfig,
    max_tokens: u32,
    prompt: &str,
    embedder: &str,
) -> Option<[u8; 32]> {
    let mut messages = job.messages.clone();
    let m = messages.get_mut(at)?;
    m.content = match m.content.take() {
        Some(Content::Text(_)) | None => None,
        Some(Content::Parts(parts)) => Some(Content::Parts(
            parts
                .into_iter()
                .map(|p| match p {
                    ContentPart::Text { .. } => ContentPart::Text {
                        text: String::new(),
                    },
                    other => other,
                })
                .collect(),
        )),
    };
    let canonical = Shape {
        v: SHAPE_VERSION,
        embedder,
        provider: &model.provider,
        model: &model.name,
        upstream: &model.upstream,
        messages: &messages,
        prompt_numbers: embed::numbers(prompt),
        tools: job.tools.as_deref(),
        tool_choice: job.tool_choice.as_ref(),
        response_format: job.response_format.as_ref(),
        temperature: job.temperature,
        stop: job.stop.as_deref(),
        max_tokens,
    };
    super::sha256_json(&canonical)
}

/// The similarity the semantic cache sees between two prompts of otherwise equal
/// requests with the built-in embedder (quantised as stored); `None` when their numbers
/// differ (different shapes: never compared). For measuring the embedder's quality.
pub fn builtin_similarity(a: &str, b: &str, dims: usize) -> Option<f32> {
    if embed::numbers(a) != embed::numbers(b) {
        return None;
    }
    let qa = super::lsh::quantize(&embed::builtin(a, dims));
    let qb = super::lsh::quantize(&embed::builtin(b, dims));
    Some(super::lsh::cosine_i8(&qa, &qb))
}

#[cfg(test)]
mod quality_tests;
