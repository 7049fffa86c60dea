//! The response-cache step of a delivery (see `crate::cache`): look the routed request
//! up, answer a hit without a reservation or a call, and say what a final row stores.

use super::{finish, succeeded, Answer, Scope};
use crate::cache::Cacheable;
use crate::job::{Attempt, Job, JobResult, Route, Usage};
use crate::store::cache::{CacheEntry, CachedAnswer, Lookup};
use crate::store::semantic::SemanticColumns;
use crate::store::{CallRecord, Lease};
use crate::telemetry::metrics::CacheKind;
use crate::worker::{Ctx, Disposition};
use rust_decimal::Decimal;

/// The cache's answer for this job, if it applies and has one. A lookup that fails is
/// taken as a miss: the job is called as if there were no cache.
pub(super) async fn look_up(
    ctx: &Ctx,
    job: &Job,
    cacheable: Option<&Cacheable>,
) -> Option<CachedAnswer> {
    let c = cacheable.filter(|c| c.lookup)?;
    let asked = ctx.cache.get(Lookup {
        tenant: job.tenant.clone(),
        key: c.key,
        ttl_s: c.ttl_s,
    });
    match asked.await {
        Ok(hit) => {
            ctx.metrics.cache_lookup(CacheKind::Exact, hit.is_some());
            hit
        }
        Err(e) => {
            tracing::warn!(error = %e, "cache lookup failed; calling the provider");
            None
        }
    }
}

/// Which cache answered, for `route.reason`.
pub(super) enum Which {
    Exact,
    Semantic { similarity: f32 },
}

/// Answer from the response cache: no reservation and no completion call. The result
/// carries the stored output with `cache_hit` true, no usage (no completion was billed)
/// and the cost of this job's calls (none, unless an earlier delivery made some or the
/// semantic cache called an embedding endpoint: `calls`); its row keeps what the stored
/// answer cost, as saved, and whose answer it was.
#[allow(clippy::too_many_arguments)]
pub(super) async fn answer_from_cache(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    mut route: Route,
    prior: Vec<Attempt>,
    (hit, which): (CachedAnswer, Which),
    calls: Vec<CallRecord>,
) -> Option<Disposition> {
    match which {
        Which::Exact => route.reason.push_str(&format!(
            "; answered by the exact cache (job {})",
            hit.job_id
        )),
        Which::Semantic { similarity } => route.reason.push_str(&format!(
            "; answered by the semantic cache (similarity {similarity:.3} to job {})",
            hit.job_id
        )),
    }
    tracing::debug!(provider = %hit.provider, model = %hit.model, "answered from the cache");
    let tier = ctx
        .cfg
        .models
        .iter()
        .find(|m| m.name == hit.model)
        .map_or("", |m| m.tier.as_str());
    let answer = Answer {
        output: hit.output,
        provider: hit.provider,
        model: hit.model,
        tier,
        usage: Usage::default(),
        cache_hit: true,
    };
    let attempts = prior
        .into_iter()
        .chain(calls.iter().map(|c| c.attempt.clone()))
        .collect();
    let mut result = succeeded(s, job, answer, Some(route.clone()), attempts);
    if tier.is_empty() {
        // A model no longer configured: the route's own tier stays.
        result.route = Some(route);
    }
    let cache = CacheFinal {
        saved_usd: Some(hit.cost_usd),
        entry: None,
        source_job: Some(hit.job_id),
    };
    // A streamed job gets the stored text as one chunk (cut only to fit in messages).
    if let Some(chunks) = super::streamed(ctx, s, job) {
        let text = result.output.as_ref().and_then(|o| o.content.clone());
        chunks.whole(text.unwrap_or_default());
        chunks.close().await;
    }
    finish(ctx, s, Some(lease), result, calls, cache).await
}

/// What a final row says about the response cache.
#[derive(Default)]
pub(super) struct CacheFinal {
    /// Answered from the cache: what the stored answer cost.
    pub(super) saved_usd: Option<Decimal>,
    /// Store this answer.
    pub(super) entry: Option<Box<CacheEntry>>,
    /// Answered from the cache: the job whose answer it was.
    pub(super) source_job: Option<String>,
}

impl CacheFinal {
    /// A succeeded result's answer to store (none when the cache does not apply), with
    /// the final row, so only if that row lands; with its prompt's embedding when a
    /// semantic scope made one. What it saves later is what its completion calls cost
    /// (an embedding call is not counted).
    pub(super) fn store(
        cacheable: Option<Cacheable>,
        semantic: Option<SemanticColumns>,
        result: &JobResult,
    ) -> CacheFinal {
        let completions: Decimal = result
            .attempts
            .iter()
            .filter(|a| !a.outcome.starts_with("embedding"))
            .map(|a| a.cost_usd)
            .sum();
        let entry = cacheable.and_then(|c| {
            Some(Box::new(CacheEntry {
                key: c.key,
                ttl_s: c.ttl_s,
                provider: result.provider.clone()?,
                model: result.model.clone()?,
                output: serde_json::value::to_raw_value(result.output.as_ref()?).ok()?,
                usage: result.usage,
                cost_usd: completions,
                semantic,
            }))
        });
        CacheFinal {
            saved_usd: None,
            entry,
            source_job: None,
        }
    }
}
