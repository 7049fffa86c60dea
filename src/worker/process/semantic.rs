//! The semantic-cache step of a delivery (see `crate::cache::semantic`), after the exact
//! cache missed: embed the prompt, look for a stored paraphrase, and say what a
//! succeeded answer stores.
//!
//! - The built-in embedder makes no call. An endpoint embedder makes one provider call,
//!   recorded like any other: a `started` cost row before it, then its final row with
//!   outcome `embedding` (or `embedding_failed`), priced at
//!   `cache.embeddings.input_per_mtok`, in the job's `attempts` and cost.
//! - That call is admitted by the rate limiter of the provider `cache.embeddings.name`
//!   names (its `rpm` / `tpm`, shared with that provider's completion calls, cluster-wide;
//!   a name that is no configured provider has no limits), at the job's priority. It
//!   waits for admission at most `cache.embeddings.timeout_ms`; not admitted by then,
//!   no call is made and no row written: a miss.
//! - Anything that fails (the endpoint, Postgres) is a miss, and nothing is stored
//!   semantically: the job is called as if there were no semantic cache.

use crate::cache::semantic::{semantic_key, SemanticKey};
use crate::cache::{embed, lsh, Cacheable};
use crate::config::{EmbeddingsKind, ModelConfig};
use crate::job::{Attempt, Job, Priority, Usage};
use crate::ratelimit::{Ask, Permit};
use crate::store::semantic::{SemanticColumns, SemanticHit, SemanticLookup};
use crate::store::CallRecord;
use crate::telemetry::metrics::CacheKind;
use crate::worker::Ctx;
use rust_decimal::Decimal;
use std::time::{Duration, Instant};

/// What the step found and leaves for the rest of the delivery.
#[derive(Default)]
pub(super) struct Step {
    pub(super) hit: Option<SemanticHit>,
    /// The embedding call, when one was made.
    pub(super) calls: Vec<CallRecord>,
    /// Stored with a succeeded answer.
    pub(super) store: Option<SemanticColumns>,
}

impl Step {
    /// What a miss leaves for the rest of the delivery, boxed (none when nothing): held
    /// while the job waits for its calls, so it takes a pointer's room there.
    pub(super) fn boxed(
        calls: Vec<CallRecord>,
        store: Option<SemanticColumns>,
    ) -> Option<Box<Step>> {
        (!calls.is_empty() || store.is_some()).then(|| {
            Box::new(Step {
                hit: None,
                calls,
                store,
            })
        })
    }
}

/// The embedding call of a miss (taken: a second ask gets none).
pub(super) fn calls(step: &mut Option<Box<Step>>) -> Vec<CallRecord> {
    step.as_mut()
        .map(|s| std::mem::take(&mut s.calls))
        .unwrap_or_default()
}

/// Embed and look up for `job`, routed to `first` (its first candidate: the model and the
/// `max_tokens` sent), when the semantic cache applies.
pub(super) async fn step(
    ctx: &Ctx,
    (job, priority): (&Job, Priority),
    first: Option<(&ModelConfig, u32)>,
    cacheable: Option<&Cacheable>,
    attempt: u32,
) -> Step {
    let key = first.and_then(|(model, max_tokens)| {
        semantic_key(&ctx.cfg.cache, job, model, max_tokens, cacheable)
    });
    let (Some(key), Some(c)) = (key.as_ref(), cacheable) else {
        return Step::default();
    };
    let mut step = Step::default();
    let cfg = &ctx.cfg.cache.embeddings;
    let vector = match cfg.kind {
        EmbeddingsKind::Builtin => Some(builtin(ctx, key)),
        EmbeddingsKind::Openai => {
            let call = call_endpoint(ctx, (job, priority), key, attempt);
            let (vector, call) = Box::pin(call).await;
            step.calls.extend(call);
            vector
        }
    };
    let Some(vector) = vector else {
        return step;
    };
    let q = lsh::quantize(&vector);
    let bands = lsh::band_keys(key.scope, &lsh::signature(&q));
    if c.lookup {
        let req = SemanticLookup {
            tenant: job.tenant.clone(),
            shape: key.shape,
            embedding: q.clone(),
            bands: bands.clone(),
            min_similarity: key.min_similarity,
            ttl_s: c.ttl_s,
        };
        match ctx.cache.nearest(&req).await {
            Ok(hit) => {
                ctx.metrics.cache_lookup(CacheKind::Semantic, hit.is_some());
                step.hit = hit;
            }
            Err(e) => tracing::warn!(error = %e, "semantic cache lookup failed; calling"),
        }
    }
    step.store = Some(SemanticColumns {
        shape: key.shape,
        embedding: lsh::to_bytes(&q),
        bands,
    });
    step
}

fn builtin(ctx: &Ctx, key: &SemanticKey) -> Vec<f32> {
    let dims = ctx.cfg.cache.embeddings.dimensions;
    embed::builtin(
        &key.prompt,
        dims.map_or(embed::BUILTIN_DIMS, |d| d as usize),
    )
}

/// What stores an answer this delivery did not embed for (a provider batch's, the job
/// parked before any semantic step): its prompt's embedding when the semantic cache
/// applies and the built-in embedder makes it. With an endpoint embedder, none: that
/// would be a call of its own (the answer is still stored for the exact cache).
pub(super) fn builtin_columns(
    ctx: &Ctx,
    job: &Job,
    model: &ModelConfig,
    max_tokens: u32,
    cacheable: Option<&Cacheable>,
) -> Option<SemanticColumns> {
    if ctx.cfg.cache.embeddings.kind != EmbeddingsKind::Builtin {
        return None;
    }
    let key = semantic_key(&ctx.cfg.cache, job, model, max_tokens, cacheable)?;
    let q = lsh::quantize(&builtin(ctx, &key));
    Some(SemanticColumns {
        shape: key.shape,
        bands: lsh::band_keys(key.scope, &lsh::signature(&q)),
        embedding: lsh::to_bytes(&q),
    })
}

/// Admission to the embedding call by its provider's rate limiter, waiting at most the
/// call's timeout; none: not admitted in time (or the worker is stopping).
async fn admit(ctx: &Ctx, key: &SemanticKey, priority: Priority) -> Option<Permit> {
    let cfg = &ctx.cfg.cache.embeddings;
    let ask = Ask {
        provider: &cfg.name,
        model: &cfg.model,
        // ~4 characters a token, as the completion calls' estimate.
        tokens: (key.prompt.len() as u64).div_ceil(4).max(1),
    };
    let t = Instant::now();
    let wait = Duration::from_millis(cfg.timeout_ms);
    let permit = tokio::select! {
        p = tokio::time::timeout(wait, ctx.limiters.admit(ask, priority)) => p.ok(),
        _ = ctx.abort.cancelled() => None,
    };
    match &permit {
        Some(_) => ctx
            .metrics
            .limiter_waited(&cfg.name, &cfg.model, t.elapsed()),
        None => tracing::info!(provider = %cfg.name, wait_ms = cfg.timeout_ms,
            "embedding call not admitted by the rate limiter in time; semantic lookup skipped"),
    }
    permit
}

/// Call the embedding endpoint once its rate limiter admits it, its `started` row first.
/// The vector (none on failure) and the call's record (none when no call was made: not
/// admitted in time, or the worker is stopping).
async fn call_endpoint(
    ctx: &Ctx,
    (job, priority): (&Job, Priority),
    key: &SemanticKey,
    attempt: u32,
) -> (Option<Vec<f32>>, Option<CallRecord>) {
    let cfg = &ctx.cfg.cache.embeddings;
    let Some(permit) = admit(ctx, key, priority).await else {
        return (None, None);
    };
    let record = |outcome: &str,
                  latency_ms: u64,
                  usage: Usage,
                  cost: Decimal,
                  e: Option<&crate::providers::ProviderError>| CallRecord {
        attempt: Attempt {
            attempt,
            provider: cfg.name.clone(),
            model: cfg.model.clone(),
            outcome: outcome.to_string(),
            latency_ms,
            cost_usd: cost,
            status: e.and_then(|e| e.status),
            message: e.map(|e| format!("{}: {}", e.class.as_str(), e.message)),
        },
        usage,
    };
    let started = record("started", 0, Usage::default(), Decimal::ZERO, None);
    let req = crate::store::CommitRequest {
        key: crate::store::JobKey {
            tenant: job.tenant.clone(),
            id: job.id.clone(),
            feature: job.feature.clone(),
            user_id: job.user.clone(),
        },
        calls: vec![started],
        job: None,
        release: None,
    };
    match Box::pin(super::commit(ctx, req)).await {
        Ok(_) => {}
        Err(super::CommitFailed::Stopping) => {
            permit.cancel();
            return (None, None);
        }
        Err(super::CommitFailed::Refused(e, _)) => {
            tracing::warn!(error = %e, "postgres refused the embedding call's started row");
            permit.cancel();
            return (None, None);
        }
    }
    let t = Instant::now();
    let answer = crate::providers::embeddings::embed(cfg, &key.prompt).await;
    let latency_ms = t.elapsed().as_millis() as u64;
    // What the call used (the reservation is kept when it reported nothing).
    permit.settle(answer.as_ref().ok().map(|e| e.prompt_tokens));
    match answer {
        Ok(e) => {
            let usage = Usage {
                input_tokens: e.prompt_tokens,
                ..Usage::default()
            };
            let cost = crate::cost::embedding_cost(e.prompt_tokens, cfg.input_per_mtok);
            (
                Some(e.vector),
                Some(record("embedding", latency_ms, usage, cost, None)),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "embedding call failed; no semantic lookup");
            let rec = record(
                "embedding_failed",
                latency_ms,
                Usage::default(),
                Decimal::ZERO,
                Some(&e),
            );
            (None, Some(rec))
        }
    }
}
