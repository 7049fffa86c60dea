//! The response-cache step of a delivery (see `crate::cache`): look the routed request
//! up, answer a hit without a reservation or a call, and say what a final row stores.

use super::{finish, succeeded, Answer, Scope};
use crate::cache::Cacheable;
use crate::job::{Attempt, Job, JobResult, Route, Usage};
use crate::store::cache::{CacheEntry, CachedAnswer, Lookup};
use crate::store::Lease;
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

/// Answer from the response cache: no reservation and no call. The result carries the
/// stored output with `cache_hit` true, no usage (nothing was billed) and the cost of
/// this job's calls (none, unless an earlier delivery made some); its row keeps what
/// the stored answer cost, as saved.
pub(super) async fn answer_from_cache(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    route: Route,
    prior: Vec<Attempt>,
    hit: CachedAnswer,
) -> Option<Disposition> {
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
    let mut result = succeeded(s, job, answer, Some(route.clone()), prior);
    if tier.is_empty() {
        // A model no longer configured: the route's own tier stays.
        result.route = Some(route);
    }
    let cache = CacheFinal {
        saved_usd: Some(hit.cost_usd),
        entry: None,
    };
    // A streamed job gets the stored text as one chunk (cut only to fit in messages).
    if let Some(chunks) = super::streamed(ctx, s, job) {
        let text = result.output.as_ref().and_then(|o| o.content.clone());
        chunks.whole(text.unwrap_or_default());
        chunks.close().await;
    }
    finish(ctx, s, Some(lease), result, Vec::new(), cache).await
}

/// What a final row says about the response cache.
#[derive(Default)]
pub(super) struct CacheFinal {
    /// Answered from the cache: what the stored answer cost.
    pub(super) saved_usd: Option<Decimal>,
    /// Store this answer.
    pub(super) entry: Option<Box<CacheEntry>>,
}

impl CacheFinal {
    /// A succeeded result's answer to store (none when the cache does not apply), with
    /// the final row, so only if that row lands.
    pub(super) fn store(cacheable: Option<Cacheable>, result: &JobResult) -> CacheFinal {
        let entry = cacheable.and_then(|c| {
            Some(Box::new(CacheEntry {
                key: c.key,
                ttl_s: c.ttl_s,
                provider: result.provider.clone()?,
                model: result.model.clone()?,
                output: serde_json::value::to_raw_value(result.output.as_ref()?).ok()?,
                usage: result.usage,
                cost_usd: result.cost_usd,
            }))
        });
        CacheFinal {
            saved_usd: None,
            entry,
        }
    }
}
