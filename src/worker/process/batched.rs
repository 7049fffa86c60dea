//! The provider-batch step of a delivery (see `crate::worker::batcher`): park a
//! latency-tolerant job instead of calling (the message is acked once the job is parked
//! in Postgres), and answer a parked job that comes back with its batch's answer (its cost
//! row is already written, by the batch's end).

use super::{commit, finish, hand_back, key_of, succeeded, Answer, CommitFailed, Scope};
use crate::budget::Reservation;
use crate::job::{Attempt, BatchMode, Job, Route};
use crate::router::Plan;
use crate::store::batches::{self, Item, ItemState, ParkRequest, Parked};
use crate::store::writer::Release;
use crate::store::{CommitRequest, Lease};
use crate::worker::infra::Gave;
use crate::worker::process::cached::CacheFinal;
use crate::worker::{Ctx, Disposition};
use std::time::Duration;

/// Whether this delivery goes through a provider batch: `[batch]` on, not a job coming
/// back to run live, the job's `batch` and priority let it, and its first candidate's
/// provider has a batch API and its model batch prices.
pub(super) fn eligible(ctx: &Ctx, s: Scope<'_>, job: &Job, plan: &Plan) -> bool {
    let cfg = &ctx.cfg.batch;
    if !cfg.enabled || s.d.reentry.is_some() {
        return false;
    }
    let wanted = match job.batch {
        BatchMode::Never => false,
        BatchMode::Prefer => true,
        BatchMode::Auto => cfg.takes(s.d.priority),
    };
    wanted
        && plan.candidates.first().is_some_and(|c| {
            ctx.batching.apis.has(&c.model.provider)
                && c.model.batch_input_per_mtok.is_some()
                && c.model.batch_output_per_mtok.is_some()
        })
}

/// What parking led to.
pub(super) enum Park {
    /// Parked now, or parked before and its batch still runs: the delivery ends here.
    Parked,
    /// Parked before and answered by its batch: that answer is the result.
    Answered(Box<Item>),
    /// The worker is stopping: hand the job back.
    Stopping,
    /// Not parked (its batch left it, or Postgres refused the row): call live.
    Live,
}

/// Park the job (first candidate's provider and model), or tell how it was parked before.
pub(super) async fn park(ctx: &Ctx, s: Scope<'_>, job: &Job, plan: &Plan) -> Park {
    let Some(first) = plan.candidates.first() else {
        return Park::Live;
    };
    let req = ParkRequest {
        tenant: &job.tenant,
        id: &job.id,
        provider: &first.model.provider,
        model: &first.model.name,
        max_tokens: first.max_tokens,
        route: serde_json::to_value(&plan.route).ok(),
        subject: s.dlq.subject,
        payload: s.dlq.raw,
    };
    let parked = ctx
        .infra
        .store(&ctx.abort, || batches::park(&ctx.batching.pool, &req))
        .await;
    match parked {
        Ok(Parked::New) => {
            ctx.metrics.batch.parked(&first.model.provider);
            tracing::info!(provider = %first.model.provider, model = %first.model.name,
                "parked for a provider batch");
            Park::Parked
        }
        Ok(Parked::Already(item)) => match item.state {
            ItemState::Parked | ItemState::Submitted => {
                tracing::info!("parked already; its batch answers it");
                Park::Parked
            }
            ItemState::Answered => Park::Answered(item),
            ItemState::Live => Park::Live,
        },
        Err(Gave::Stopping(_)) => Park::Stopping,
        Err(Gave::Refused(e)) => {
            tracing::warn!(error = %e, "could not park the job; calling live");
            Park::Live
        }
    }
}

/// End the delivery as parking decided (anything but [`Park::Live`]).
pub(super) async fn conclude(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    (lease, reservation, prior): (Lease, Option<Reservation>, Vec<Attempt>),
    parked: Park,
) -> Option<Disposition> {
    match parked {
        Park::Parked | Park::Live => let_go(ctx, s, job, lease, reservation).await,
        Park::Answered(item) => {
            let _ = reservation.map(Reservation::settle);
            Box::pin(answer(ctx, s, job, lease, prior, item)).await
        }
        Park::Stopping => {
            let calls = Vec::new();
            Box::pin(hand_back(
                ctx,
                s,
                job,
                lease,
                reservation,
                calls,
                true,
                Duration::ZERO,
            ))
            .await
        }
    }
}

/// End this delivery without a result: the job is parked (its row stays `running`, with
/// no lease), the message is acked.
async fn let_go(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    reservation: Option<Reservation>,
) -> Option<Disposition> {
    let _ = reservation.map(Reservation::settle);
    let req = CommitRequest {
        key: key_of(s, Some(job)),
        calls: Vec::new(),
        job: None,
        release: Some(Release {
            lease_token: lease.token().to_string(),
            free: true,
        }),
    };
    match commit(ctx, req).await {
        Ok(_) => lease.finish(),
        // The lease runs out by itself; the job is parked either way.
        Err(CommitFailed::Refused(e, _)) => {
            tracing::warn!(error = %e, "releasing a parked job's lease was refused");
            drop(lease);
        }
        Err(CommitFailed::Stopping) => drop(lease),
    }
    Some(Disposition::Ack)
}

/// The batch's answer of a job that comes back with one (`Switchyard-Batch: answered`),
/// before anything else is done with it.
pub(super) async fn returned(ctx: &Ctx, job: &Job) -> Option<Box<Item>> {
    let found = ctx
        .infra
        .store(&ctx.abort, || {
            batches::find(&ctx.batching.pool, &job.tenant, &job.id)
        })
        .await;
    match found {
        Ok(Some(item)) if item.state == ItemState::Answered => Some(Box::new(item)),
        Ok(_) => None,
        Err(Gave::Refused(e)) => {
            tracing::warn!(error = %e, "could not read the job's batch answer");
            None
        }
        Err(Gave::Stopping(_)) => None,
    }
}

/// The succeeded result of a batch's answer. Its call is in `prior` already (the batch's
/// end wrote its cost row), so this commit adds no cost row: nothing is charged twice.
pub(super) async fn answer(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    prior: Vec<Attempt>,
    item: Box<Item>,
) -> Option<Disposition> {
    let item = *item;
    let Some(a) = item.answer else {
        return Some(Disposition::Retry(Duration::from_secs(1)));
    };
    let model = ctx.cfg.models.iter().find(|m| m.name == item.model);
    let tier = model.map_or("", |m| m.tier.as_str());
    // The answer feeds the response cache as a live one does (under the key its lookup
    // used: the same model and max_tokens), so later repeats of a batched prompt hit.
    let cacheable =
        model.and_then(|m| crate::cache::cacheable(&ctx.cfg.cache, job, m, item.max_tokens));
    let semantic = model.and_then(|m| {
        super::semantic::builtin_columns(ctx, job, m, item.max_tokens, cacheable.as_ref())
    });
    let route: Option<Route> = item.route.and_then(|r| serde_json::from_value(r).ok());
    let route = route.map(|mut r| {
        r.reason.push_str("; sent in a provider batch");
        r
    });
    let answer = Answer {
        output: a.output,
        provider: item.provider,
        model: item.model,
        tier,
        usage: a.usage,
        cache_hit: false,
    };
    let result = succeeded(s, job, answer, route, prior);
    let cache = CacheFinal::store(cacheable, semantic, &result);
    finish(ctx, s, Some(lease), result, Vec::new(), cache).await
}
