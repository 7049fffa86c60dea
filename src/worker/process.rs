//! One delivery of one job, start to end: parse, claim (take the lease), route, look the
//! answer up in the response cache (a hit ends here: no reservation, no call), reserve,
//! call, then carry out the [`Verdict`]: commit (storing the answer in the cache when it
//! applies), dead-letter, publish. Every path returns a [`Disposition`]; every terminal
//! path commits first, and nothing that can fail after a provider call makes that call
//! happen again.

use super::calls::{run_chain, ChainOutcome};
use super::decide::{backoff_delay, decide, RetryPolicy, Verdict};
use super::infra::Gave;
use super::{Ctx, Delivery, Disposition};
use crate::budget::{Denial, Reservation};
use crate::cache::Cacheable;
use crate::job::{
    parse_job, Attempt, Envelope, ErrorBody, ErrorKind, Job, JobResult, Output, ParseFailure,
    Route, Status, Usage,
};
use crate::queue::publish::DlqEntry;
use crate::store::writer::Release;
use crate::store::{
    CallRecord, ClaimOutcome, ClaimRequest, CommitJob, CommitRequest, JobKey, Lease, StoreError,
};
use crate::telemetry::metrics::FinishedJob;
use crate::tokens::estimate_input_tokens;
use base64::Engine;
use cached::{answer_from_cache, look_up, CacheFinal};
use rust_decimal::Decimal;
use std::time::Duration;
use tracing::Instrument;

/// How long a delivery waits in place for another delivery's live lease before it hands
/// its message back.
const BUSY_WAIT_MAX: Duration = Duration::from_secs(600);
/// Tries to publish a committed result (and dead letter) before handing the message back.
const PUBLISH_TRIES: u32 = 5;
/// The share of a tenant's budgets in use from which a reservation counts input tokens
/// exactly (below it, a byte bound is held).
const EXACT_TOKENS_FROM: f64 = 0.5;

/// Times a delivery goes back to its claim after losing its lease at commit.
const RECLAIMS: u32 = 3;

mod cached;

pub(super) async fn process(ctx: &Ctx, d: Delivery, msg: &async_nats::Message) -> Disposition {
    // Matched by reference: moved out, the parsed job would be held twice in this
    // future (the match's value and the binding) while the job runs.
    let parsed = parse_job(&msg.payload, msg.subject.as_str(), d.stream_seq, &ctx.rules);
    match &parsed {
        Ok(p) => {
            let span = tracing::info_span!("job", tenant = %p.job.tenant, id = %p.job.id,
                priority = %d.priority, delivery = d.delivered);
            run(ctx, d, msg, &p.job, &p.envelope).instrument(span).await
        }
        Err(f) => {
            let span = tracing::info_span!("job", tenant = %f.envelope.tenant, id = %f.envelope.id);
            Box::pin(fail_unparsed(ctx, d, msg, f).instrument(span)).await
        }
    }
}

/// Where a failed job's dead letter comes from.
#[derive(Clone, Copy)]
struct DlqSource<'a> {
    job_json: Option<&'a serde_json::Value>,
    raw: &'a [u8],
    subject: &'a str,
    /// Put the raw bytes in `payload_b64` (the payload was not a valid job).
    raw_in_entry: bool,
}

/// What every step of one delivery knows about it.
#[derive(Clone, Copy)]
struct Scope<'a> {
    d: Delivery,
    env: &'a Envelope,
    job: Option<&'a Job>,
    dlq: DlqSource<'a>,
}

/// What the claim step leads to.
enum Claimed {
    Run {
        lease: Lease,
        prior: Vec<Attempt>,
        free: u32,
    },
    Done(Disposition),
}

async fn run(
    ctx: &Ctx,
    d: Delivery,
    msg: &async_nats::Message,
    job: &Job,
    env: &Envelope,
) -> Disposition {
    let scope = Scope {
        d,
        env,
        job: Some(job),
        dlq: DlqSource {
            job_json: None,
            raw: &msg.payload,
            subject: msg.subject.as_str(),
            raw_in_entry: false,
        },
    };
    for _ in 0..RECLAIMS {
        let (lease, prior, free) = match Box::pin(claim(ctx, scope, job)).await {
            Claimed::Run { lease, prior, free } => (lease, prior, free),
            Claimed::Done(disposition) => return disposition,
        };
        match attempt(ctx, scope, job, lease, prior, free).await {
            Some(disposition) => return disposition,
            // Another delivery took the job over while this one ran: claim again (it
            // will find that delivery's result, or its lease).
            None => continue,
        }
    }
    Disposition::Retry(retry_delay(ctx, d.delivered, None))
}

/// Take the job's lease, waiting in place while another delivery holds it or Postgres is
/// away.
async fn claim(ctx: &Ctx, s: Scope<'_>, job: &Job) -> Claimed {
    let started = tokio::time::Instant::now();
    loop {
        let token = ctx.leases.new_token();
        let outcome = ctx
            .infra
            .store(&ctx.abort, || {
                ctx.claimer.claim(ClaimRequest {
                    tenant: job.tenant.clone(),
                    id: job.id.clone(),
                    feature: job.feature.clone(),
                    user_id: job.user.clone(),
                    priority: s.d.priority.as_str(),
                    task: job.task.as_str(),
                    requested_model: job.model.clone(),
                    lease_token: token.clone(),
                    stream_seq: s.d.stream_seq,
                })
            })
            .await;
        match outcome {
            Ok(ClaimOutcome::Claimed {
                prior,
                free_deliveries,
            }) => {
                let lease = ctx.leases.hold(token, &job.tenant, &job.id);
                return Claimed::Run {
                    lease,
                    prior,
                    free: free_deliveries,
                };
            }
            Ok(ClaimOutcome::Succeeded(stored)) => {
                tracing::info!("already succeeded; publishing the stored result again");
                ctx.metrics.republished();
                return Claimed::Done(deliver(ctx, s, &stored, None).await);
            }
            Ok(ClaimOutcome::Finished(stored)) => {
                tracing::info!("this message's failed result is committed; publishing it again");
                ctx.metrics.republished();
                return Claimed::Done(deliver(ctx, s, &stored, None).await);
            }
            Ok(ClaimOutcome::Busy(left)) => {
                if started.elapsed() > BUSY_WAIT_MAX {
                    tracing::warn!("another delivery has held the job for too long; handing back");
                    return Claimed::Done(Disposition::Retry(Duration::from_secs(30)));
                }
                let pause = left.clamp(Duration::from_millis(200), Duration::from_secs(5));
                tracing::debug!(
                    wait_ms = pause.as_millis() as u64,
                    "another delivery runs this job; waiting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = ctx.abort.cancelled() => return Claimed::Done(Disposition::Retry(Duration::ZERO)),
                }
            }
            Err(Gave::Stopping(_)) => {
                // A claim whose answer was lost may have taken the lease: let it go.
                ctx.leases.release_token(token);
                return Claimed::Done(Disposition::Retry(Duration::ZERO));
            }
            Err(Gave::Refused(e)) => {
                tracing::error!(error = %e, "postgres refused the job's claim");
                let err = internal(format!("postgres refused the job's claim: {e}"));
                let done = fail(ctx, s, None, None, err, &[], Vec::new()).await;
                return Claimed::Done(done.unwrap_or(Disposition::Ack));
            }
        }
    }
}

/// One run of the job under its lease. `None`: the lease was lost at commit (another
/// delivery owns the job now).
async fn attempt(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    prior: Vec<Attempt>,
    free: u32,
) -> Option<Disposition> {
    let own_delivery = s.d.delivered.saturating_sub(u64::from(free)).max(1);
    if let Some(deadline) = job.deadline {
        if ctx.clock.now() > deadline {
            let err = ErrorBody::new(
                ErrorKind::Expired,
                format!(
                    "deadline {} passed before the job started",
                    deadline.to_rfc3339()
                ),
            );
            return Box::pin(fail(ctx, s, Some(lease), None, err, &prior, Vec::new())).await;
        }
    }
    let estimate = estimate_input_tokens(job);
    let mut route_ctx = crate::router::RouteContext::new(s.d.priority);
    // Budget-aware routing: the share of the tenant's budgets used, as last read.
    route_ctx.budget_used_fraction = ctx
        .budgets
        .used_share(&job.tenant)
        .and_then(|d| rust_decimal::prelude::ToPrimitive::to_f64(&d));
    let used = route_ctx.budget_used_fraction;
    let plan = match ctx.router.plan(job, estimate, route_ctx) {
        Ok(p) => p,
        Err(err) => {
            return Box::pin(fail(ctx, s, Some(lease), None, err, &prior, Vec::new())).await
        }
    };
    let cacheable = plan
        .candidates
        .first()
        .and_then(|c| crate::cache::cacheable(&ctx.cfg.cache, job, &c.model, c.max_tokens));
    // Boxed: over before the calls, and larger than what a job holds through them.
    if let Some(hit) = Box::pin(look_up(ctx, job, cacheable.as_ref())).await {
        let route = plan.route.clone();
        return Box::pin(answer_from_cache(ctx, s, job, lease, route, prior, hit)).await;
    }
    // Hold the worst case against the tenant's budgets before any call: the dearest
    // candidate's price for its whole `max_tokens`, with the input counted by the
    // provider's own tokenizer where there is one (only for tenants with a budget).
    // Counting costs ~50k instructions a job, so while the tenant's budgets are less than
    // half used (as last read) a bound is held instead (a token is at least one byte):
    // it only holds more, and holding more matters only near a limit. The tokenizer's
    // tables are built the first time a count is wanted, on their own thread (the bound
    // is held until they are ready). A hedged plan holds
    // the calls that may run at once (`Plan::hold`).
    let counted = used.is_none_or(|f| f >= EXACT_TOKENS_FROM);
    let worst = || {
        plan.hold(plan.candidates.iter().map(|c| {
            let input = if !ctx.exact_tokens.contains(&c.model.provider) {
                estimate
            } else if counted && crate::tokens::exact_ready(&c.model.upstream) {
                crate::tokens::openai_input_tokens(job, &c.model.upstream)
            } else {
                crate::tokens::openai_input_tokens_bound(job).max(estimate)
            };
            crate::cost::worst_case(&c.model, input, c.max_tokens)
        }))
    };
    // Boxed: over by the time the calls start, and larger than what a job holds then.
    let reserved = Box::pin(ctx.infra.store(&ctx.abort, || {
        ctx.budgets
            .reserve(&lease, &job.tenant, &job.id, job.feature.as_deref(), worst)
    }))
    .await;
    let reservation = match reserved {
        Ok(Ok(r)) => r,
        Ok(Err(Denial::Fail(why))) => {
            let err = ErrorBody::new(ErrorKind::BudgetExceeded, why);
            let route = Some(plan.route);
            return Box::pin(fail(ctx, s, Some(lease), route, err, &prior, Vec::new())).await;
        }
        Ok(Err(Denial::Defer(why, delay))) => {
            tracing::info!(delay_s = delay.as_secs(), reason = %why, "budget reached; deferring");
            // Not the job's fault: this hand-back does not count against max_deliveries.
            return Box::pin(hand_back(ctx, s, job, lease, None, Vec::new(), true, delay)).await;
        }
        Err(Gave::Stopping(_)) => {
            return Box::pin(hand_back(
                ctx,
                s,
                job,
                lease,
                None,
                Vec::new(),
                true,
                Duration::ZERO,
            ))
            .await
        }
        Err(Gave::Refused(e)) => {
            let err = internal(format!("postgres refused the budget reservation: {e}"));
            let route = Some(plan.route);
            return Box::pin(fail(ctx, s, Some(lease), route, err, &prior, Vec::new())).await;
        }
    };
    let first_attempt = prior.iter().map(|a| a.attempt).max().unwrap_or(0) + 1;
    let outcome = run_chain(
        ctx,
        job,
        &plan,
        estimate,
        first_attempt,
        s.d.priority,
        &lease,
    )
    .await;
    // Taken from the plan once the calls are over (not cloned and held through them).
    let mut route = Some(plan.route);
    if let (Some(r), Some(note)) = (route.as_mut(), outcome.hedge_note.as_deref()) {
        r.reason.push_str(note);
    }
    let policy = RetryPolicy {
        max_deliveries: ctx.cfg.worker.max_deliveries,
        base: Duration::from_millis(ctx.cfg.worker.retry_base_ms),
        max: Duration::from_millis(ctx.cfg.worker.retry_max_ms),
    };
    match decide(&outcome, own_delivery, s.d.delivered, &policy) {
        Verdict::Succeeded => {
            Box::pin(succeed(
                ctx,
                s,
                job,
                lease,
                reservation,
                route,
                prior,
                (outcome, cacheable),
            ))
            .await
        }
        Verdict::Failed(err) => {
            let _ = reservation.map(Reservation::settle);
            Box::pin(fail(ctx, s, Some(lease), route, err, &prior, outcome.calls)).await
        }
        Verdict::Retry { at_least, free } => {
            let delay = retry_delay(ctx, own_delivery, at_least);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                free,
                "every candidate failed or was skipped; retrying later"
            );
            Box::pin(hand_back(
                ctx,
                s,
                job,
                lease,
                reservation,
                outcome.calls,
                free,
                delay,
            ))
            .await
        }
        Verdict::HandBack => {
            // Another delivery took the job over (or the worker is stopping): keep the
            // calls made; when taken over, claim again (it finds that delivery's result,
            // or its lease).
            let lost = lease.is_lost();
            let back = Box::pin(hand_back(
                ctx,
                s,
                job,
                lease,
                reservation,
                outcome.calls,
                true,
                Duration::ZERO,
            ))
            .await;
            if lost {
                tracing::warn!("the lease was taken over during the calls; claiming again");
                return None;
            }
            back
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn succeed(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    reservation: Option<Reservation>,
    route: Option<Route>,
    prior: Vec<Attempt>,
    (outcome, cacheable): (ChainOutcome, Option<Cacheable>),
) -> Option<Disposition> {
    let Some((resp, model)) = outcome.success else {
        return Some(Disposition::Retry(Duration::ZERO));
    };
    let calls = outcome.calls;
    let all: Vec<Attempt> = prior
        .into_iter()
        .chain(calls.iter().map(|c| c.attempt.clone()))
        .collect();
    let answer = Answer {
        output: resp.output,
        provider: model.provider.clone(),
        model: model.name.clone(),
        tier: model.tier.as_str(),
        usage: resp.usage,
        cache_hit: false,
    };
    let result = succeeded(s, job, answer, route, all);
    let _ = reservation.map(Reservation::settle);
    let cache = CacheFinal::store(cacheable, &result);
    finish(ctx, s, Some(lease), result, calls, cache).await
}

/// A model's answer, from a call or from the response cache.
struct Answer {
    output: Output,
    provider: String,
    model: String,
    /// The answering model's tier (`route.tier`).
    tier: &'static str,
    usage: Usage,
    cache_hit: bool,
}

/// The succeeded result of `answer`; its cost is the sum of `attempts`.
fn succeeded(
    s: Scope<'_>,
    job: &Job,
    answer: Answer,
    route: Option<Route>,
    attempts: Vec<Attempt>,
) -> JobResult {
    let cost_usd: Decimal = attempts.iter().map(|a| a.cost_usd).sum();
    // `route.tier` names the tier that answered (a fallback may have changed it).
    let route = route.map(|r| Route {
        tier: Some(answer.tier.to_string()),
        ..r
    });
    JobResult {
        id: job.id.clone(),
        tenant: job.tenant.clone(),
        feature: job.feature.clone(),
        status: Status::Succeeded,
        output: Some(answer.output),
        provider: Some(answer.provider),
        model: Some(answer.model),
        usage: answer.usage,
        cost_usd,
        route,
        attempts,
        cache_hit: answer.cache_hit,
        queued_ms: s.d.queued.as_millis() as u64,
        latency_ms: s.d.received.elapsed().as_millis() as u64,
        error: None,
        metadata: job.metadata.clone(),
        truncated: false,
    }
}

/// Commit the calls made and let the lease (and its reservation) go; redeliver later.
#[allow(clippy::too_many_arguments)]
async fn hand_back(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    reservation: Option<Reservation>,
    calls: Vec<CallRecord>,
    free: bool,
    delay: Duration,
) -> Option<Disposition> {
    let _ = reservation.map(Reservation::settle);
    let req = CommitRequest {
        key: key_of(s, Some(job)),
        calls,
        job: None,
        release: Some(Release {
            lease_token: lease.token().to_string(),
            free,
        }),
    };
    match commit(ctx, req).await {
        Ok(_) => lease.finish(),
        Err(CommitFailed::Refused(e, req)) => {
            let calls: Vec<&Attempt> = req.calls.iter().map(|c| &c.attempt).collect();
            tracing::error!(error = %e, calls = ?calls,
                "postgres refused the calls of a handed-back delivery");
            drop(lease);
        }
        // Logged by `commit`; the lease is released in the background (or runs out).
        Err(CommitFailed::Stopping) => drop(lease),
    }
    Some(Disposition::Retry(delay))
}

fn internal(message: String) -> ErrorBody {
    ErrorBody::new(ErrorKind::Internal, message)
}

fn key_of(s: Scope<'_>, job: Option<&Job>) -> JobKey {
    JobKey {
        tenant: s.env.tenant.clone(),
        id: s.env.id.clone(),
        feature: job.map_or_else(|| s.env.feature.clone(), |j| j.feature.clone()),
        user_id: job.map_or_else(|| s.env.user.clone(), |j| j.user.clone()),
    }
}

async fn fail_unparsed(
    ctx: &Ctx,
    d: Delivery,
    msg: &async_nats::Message,
    f: &ParseFailure,
) -> Disposition {
    tracing::info!(kind = %f.error.kind, message = %f.error.message, "job refused");
    let s = Scope {
        d,
        env: &f.envelope,
        job: None,
        dlq: DlqSource {
            job_json: f.job_json.as_ref(),
            raw: &msg.payload,
            subject: msg.subject.as_str(),
            raw_in_entry: true,
        },
    };
    fail(ctx, s, None, None, f.error.clone(), &[], Vec::new())
        .await
        .unwrap_or(Disposition::Ack)
}

async fn fail(
    ctx: &Ctx,
    s: Scope<'_>,
    lease: Option<Lease>,
    route: Option<Route>,
    error: ErrorBody,
    prior: &[Attempt],
    calls: Vec<CallRecord>,
) -> Option<Disposition> {
    let all: Vec<Attempt> = prior
        .iter()
        .cloned()
        .chain(calls.iter().map(|c| c.attempt.clone()))
        .collect();
    let cost_usd: Decimal = all.iter().map(|a| a.cost_usd).sum();
    let env = s.env;
    let result = JobResult {
        id: env.id.clone(),
        tenant: env.tenant.clone(),
        feature: s
            .job
            .map_or_else(|| env.feature.clone(), |j| j.feature.clone()),
        status: Status::Failed,
        output: None,
        provider: None,
        model: None,
        usage: Usage::default(),
        cost_usd,
        route,
        attempts: all,
        cache_hit: false,
        queued_ms: s.d.queued.as_millis() as u64,
        latency_ms: s.d.received.elapsed().as_millis() as u64,
        error: Some(error),
        metadata: s
            .job
            .map_or_else(|| env.metadata.clone(), |j| j.metadata.clone()),
        truncated: false,
    };
    finish(ctx, s, lease, result, calls, CacheFinal::default()).await
}

/// Commit the final row (retried in place while Postgres is away), then dead-letter when
/// failed, publish, ack. `None`: the lease was lost, another delivery owns the job.
async fn finish(
    ctx: &Ctx,
    s: Scope<'_>,
    lease: Option<Lease>,
    result: JobResult,
    calls: Vec<CallRecord>,
    cache: CacheFinal,
) -> Option<Disposition> {
    let d = s.d;
    let row = match final_row(s, lease.as_ref(), &result, cache) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "result does not encode");
            return Some(Disposition::Retry(retry_delay(ctx, d.delivered, None)));
        }
    };
    // The bytes committed are the bytes published: encoded once.
    let encoded = bytes::Bytes::copy_from_slice(row.result.get().as_bytes());
    let req = CommitRequest {
        key: key_of(s, s.job),
        calls,
        job: Some(row),
        release: None,
    };
    // Boxed, and the publish below too: a finished job then holds one of the two at a
    // time, not a state as large as both (thousands finish at once after a burst).
    let (result, encoded) = match Box::pin(commit(ctx, req)).await {
        Ok(landed) if landed => {
            if let Some(l) = lease {
                l.finish();
            }
            (result, Some(encoded))
        }
        Ok(_) => {
            if let Some(l) = lease {
                l.finish();
            }
            if s.job.is_some() {
                tracing::warn!("another delivery took this job over; claiming again");
                return None;
            }
            // A refused payload whose key another delivery runs (or that succeeded): its
            // failure goes to its reply_to and the DLQ, not over that job's result.
            tracing::info!("the key belongs to another delivery; not overwriting its result");
            return Some(Box::pin(deliver_unstored(ctx, s, &result)).await);
        }
        Err(CommitFailed::Stopping) => {
            drop(lease);
            return Some(Disposition::Retry(Duration::ZERO));
        }
        Err(CommitFailed::Refused(e, req)) => {
            // Postgres will not store this job's rows: end it as `internal`, with a row
            // small enough to store and the calls (which were billed) kept.
            tracing::error!(error = %e, "postgres refused the job's rows; failing it as internal");
            let minimal = minimal_failure(&result, &e);
            match Box::pin(refused_again(ctx, s, lease, &minimal, req.calls)).await {
                Some(disposition) => return Some(disposition),
                None => (minimal, None),
            }
        }
    };
    let disposition = Box::pin(deliver(ctx, s, &result, encoded)).await;
    ctx.metrics.job_finished(FinishedJob {
        priority: d.priority,
        result: &result,
        job: s.job,
        deliveries: d.delivered,
        queued: d.queued,
        latency: d.queued + d.received.elapsed(),
    });
    Some(disposition)
}

/// The second commit of a refused job: its minimal failed row and its calls. When even
/// that is refused, the result and dead letter are still published (nothing is lost to
/// the producer) and the rows are logged for an operator.
async fn refused_again(
    ctx: &Ctx,
    s: Scope<'_>,
    lease: Option<Lease>,
    minimal: &JobResult,
    calls: Vec<CallRecord>,
) -> Option<Disposition> {
    let row = final_row(s, lease.as_ref(), minimal, CacheFinal::default()).ok()?;
    let req = CommitRequest {
        key: key_of(s, s.job),
        calls,
        job: Some(row),
        release: None,
    };
    match commit(ctx, req).await {
        Ok(_) => {
            if let Some(l) = lease {
                l.finish();
            }
            None
        }
        Err(CommitFailed::Stopping) => Some(Disposition::Retry(Duration::ZERO)),
        Err(CommitFailed::Refused(e, req)) => {
            let calls: Vec<&Attempt> = req.calls.iter().map(|c| &c.attempt).collect();
            tracing::error!(error = %e, calls = ?calls,
                "postgres refused even the minimal failed row; publishing without it");
            drop(lease);
            Some(deliver(ctx, s, minimal, None).await)
        }
    }
}

fn minimal_failure(result: &JobResult, e: &StoreError) -> JobResult {
    JobResult {
        status: Status::Failed,
        output: None,
        provider: None,
        model: None,
        usage: Usage::default(),
        error: Some(internal(format!("postgres refused the job's result: {e}"))),
        metadata: None,
        truncated: false,
        ..result.clone()
    }
}

fn final_row(
    s: Scope<'_>,
    lease: Option<&Lease>,
    result: &JobResult,
    cache: CacheFinal,
) -> Result<CommitJob, serde_json::Error> {
    let raw = serde_json::value::to_raw_value(result)?;
    let job = s.job;
    Ok(CommitJob {
        tenant: result.tenant.clone(),
        id: result.id.clone(),
        feature: result.feature.clone(),
        user_id: job
            .and_then(|j| j.user.clone())
            .or_else(|| s.env.user.clone()),
        priority: Some(s.d.priority.as_str()),
        task: job.map(|j| j.task.as_str()),
        requested_model: job.map(|j| j.model.clone()),
        status: result.status.as_str(),
        provider: result.provider.clone(),
        model: result.model.clone(),
        input_tokens: result.usage.input_tokens,
        cached_input_tokens: result.usage.cached_input_tokens,
        output_tokens: result.usage.output_tokens,
        cost_usd: result.cost_usd,
        error_kind: result.error.as_ref().map(|e| e.kind.as_str()),
        error_message: result.error.as_ref().map(|e| e.message.clone()),
        lease_token: lease.map(|l| l.token().to_string()),
        stream_seq: s.d.stream_seq,
        result: raw,
        cache_saved_usd: cache.saved_usd,
        cache_entry: cache.entry,
    })
}

pub(super) enum CommitFailed {
    Stopping,
    Refused(StoreError, Box<CommitRequest>),
}

/// Commit, retried in place (with backoff, the message kept alive) while Postgres is
/// away: a provider call already made is never repeated because our commit failed.
/// `Ok(landed)`: whether the final row landed.
pub(super) async fn commit(ctx: &Ctx, mut req: CommitRequest) -> Result<bool, CommitFailed> {
    let mut pause = Duration::from_millis(100);
    loop {
        match ctx.writer.commit(req).await {
            Ok(o) => {
                if pause > Duration::from_millis(100) {
                    tracing::info!("commit landed after waiting for postgres");
                }
                ctx.infra.store_answered();
                return Ok(o.final_landed);
            }
            Err(boxed) => {
                let (e, back) = *boxed;
                if !e.is_unavailable() {
                    return Err(CommitFailed::Refused(e, Box::new(back)));
                }
                if ctx.abort.is_cancelled() || matches!(e, StoreError::Closed) {
                    let calls: Vec<&Attempt> = back.calls.iter().map(|c| &c.attempt).collect();
                    tracing::error!(error = %e, calls = ?calls,
                        "stopping before the commit landed; these calls have no cost row");
                    return Err(CommitFailed::Stopping);
                }
                tracing::warn!(error = %e, wait_ms = pause.as_millis() as u64,
                    "commit failed: postgres unavailable; trying again in place");
                ctx.infra.store_failed();
                req = back;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = ctx.abort.cancelled() => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publish a committed result: the dead letter first when it failed, then the results
/// stream and `reply_to`; then ack. Bounded: a result that cannot be published after a few tries hands the message
/// back (the redelivery publishes the stored result without a call), and on the last
/// delivery the message is acked with the result safe in Postgres.
/// `encoded`: the result as committed, when at hand (else it is encoded here).
async fn deliver(
    ctx: &Ctx,
    s: Scope<'_>,
    result: &JobResult,
    encoded: Option<bytes::Bytes>,
) -> Disposition {
    let mut dead_lettered = result.status != Status::Failed;
    let mut pause = Duration::from_millis(200);
    for _ in 0..PUBLISH_TRIES {
        if !ctx.infra.wait_nats(&ctx.abort).await {
            return Disposition::Retry(Duration::ZERO);
        }
        if !dead_lettered {
            match dead_letter(ctx, s, result).await {
                Ok(()) => dead_lettered = true,
                Err(e) => {
                    tracing::warn!(error = %e, "dead letter failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    continue;
                }
            }
        }
        match ctx
            .publisher
            .result_of(result, encoded.clone(), s.env.reply_to.as_deref())
            .await
        {
            Ok(()) => return Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "publishing the result failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    let max = u64::from(ctx.cfg.worker.max_deliveries);
    if s.d.delivered < max {
        Disposition::Retry(retry_delay(ctx, s.d.delivered, None))
    } else {
        tracing::error!(
            "the result is committed but could not be published after {} deliveries; see `switchyard status`",
            s.d.delivered
        );
        Disposition::Ack
    }
}

/// A refused payload whose key is owned by another delivery: reply_to and DLQ only.
async fn deliver_unstored(ctx: &Ctx, s: Scope<'_>, result: &JobResult) -> Disposition {
    if let Err(e) = dead_letter(ctx, s, result).await {
        tracing::warn!(error = %e, "dead letter failed");
        return Disposition::Retry(retry_delay(ctx, s.d.delivered, None));
    }
    if let Some(r) = s.env.reply_to.as_deref() {
        if let Err(e) = ctx.publisher.reply_only(result, r).await {
            tracing::warn!(error = %e, "reply failed");
        }
    }
    Disposition::Ack
}

async fn dead_letter(
    ctx: &Ctx,
    s: Scope<'_>,
    result: &JobResult,
) -> Result<(), crate::queue::publish::PublishError> {
    let Some(err) = result.error.as_ref() else {
        return Ok(());
    };
    let src = s.dlq;
    let job_json = match (src.job_json, s.job) {
        (Some(v), _) => Some(v.clone()),
        (None, Some(_)) => serde_json::from_slice(src.raw).ok(),
        _ => None,
    };
    let entry = DlqEntry {
        job: job_json,
        payload_b64: src
            .raw_in_entry
            .then(|| base64::engine::general_purpose::STANDARD.encode(src.raw)),
        subject: src.subject.to_string(),
        error: err.clone(),
        attempts: result.attempts.clone(),
        deliveries: s.d.delivered,
        failed_at: chrono::Utc::now(),
        truncated: false,
    };
    ctx.publisher
        .dead_letter(&result.tenant, &result.id, &entry, src.raw)
        .await?;
    ctx.metrics.dead_lettered(s.d.priority, err.kind.as_str());
    Ok(())
}

/// Exponential from `worker.retry_base_ms`, capped at `worker.retry_max_ms`, with jitter,
/// and never shorter than what a provider asked for.
pub fn retry_delay(ctx: &Ctx, delivered: u64, retry_after: Option<Duration>) -> Duration {
    backoff_delay(
        Duration::from_millis(ctx.cfg.worker.retry_base_ms),
        Duration::from_millis(ctx.cfg.worker.retry_max_ms),
        delivered,
        retry_after,
    )
}
