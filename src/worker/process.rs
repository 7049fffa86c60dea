//! One delivery of one job, start to end: parse, claim (take the lease), route, look the
//! answer up in the response cache, exact then semantic (`process/semantic.rs`: a hit
//! ends here: no reservation, no completion call), reserve,
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
use crate::store::semantic::SemanticColumns;
use crate::store::writer::Release;
use crate::store::{
    CallRecord, ClaimOutcome, ClaimRequest, CommitJob, CommitRequest, JobKey, Lease, StoreError,
};
use crate::telemetry::metrics::FinishedJob;
use crate::tokens::estimate_input_tokens;
use base64::Engine;
use cached::{answer_from_cache, look_up, CacheFinal, Which};
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
mod finish;
mod semantic;

pub(super) use finish::{commit, CommitFailed};
use finish::{deliver, finish};

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
        let hit = (hit, Which::Exact);
        return Box::pin(answer_from_cache(
            ctx,
            s,
            job,
            lease,
            route,
            prior,
            hit,
            Vec::new(),
        ))
        .await;
    }
    let first_attempt = prior.iter().map(|a| a.attempt).max().unwrap_or(0) + 1;
    // In a block, boxed: only the embedding call and what to store outlive it (the
    // state a job waits in for its calls stays small).
    let mut sem: Option<Box<semantic::Step>> = {
        let first = plan.candidates.first().map(|c| (&*c.model, c.max_tokens));
        let step = semantic::step(ctx, job, first, cacheable.as_ref(), first_attempt);
        let semantic::Step { hit, calls, store } = Box::pin(step).await;
        if let Some(hit) = hit {
            let route = plan.route.clone();
            let which = Which::Semantic {
                similarity: hit.similarity,
            };
            let done =
                answer_from_cache(ctx, s, job, lease, route, prior, (hit.answer, which), calls);
            return Box::pin(done).await;
        }
        semantic::Step::boxed(calls, store)
    };
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
        // The bound is the job's, not a candidate's: counted once, when first wanted.
        let bound = std::cell::OnceCell::new();
        plan.hold(plan.candidates.iter().map(|c| {
            let input = if !ctx.exact_tokens.contains(&c.model.provider) {
                estimate
            } else if counted && crate::tokens::exact_ready(&c.model.upstream) {
                crate::tokens::openai_input_tokens(job, &c.model.upstream)
            } else {
                (*bound.get_or_init(|| crate::tokens::openai_input_tokens_bound(job))).max(estimate)
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
            return Box::pin(fail(
                ctx,
                s,
                Some(lease),
                route,
                err,
                &prior,
                semantic::calls(&mut sem),
            ))
            .await;
        }
        Ok(Err(Denial::Defer(why, delay))) => {
            tracing::info!(delay_s = delay.as_secs(), reason = %why, "budget reached; deferring");
            // Not the job's fault: this hand-back does not count against max_deliveries.
            return Box::pin(hand_back(
                ctx,
                s,
                job,
                lease,
                None,
                semantic::calls(&mut sem),
                true,
                delay,
            ))
            .await;
        }
        Err(Gave::Stopping(_)) => {
            return Box::pin(hand_back(
                ctx,
                s,
                job,
                lease,
                None,
                semantic::calls(&mut sem),
                true,
                Duration::ZERO,
            ))
            .await
        }
        Err(Gave::Refused(e)) => {
            let err = internal(format!("postgres refused the budget reservation: {e}"));
            let route = Some(plan.route);
            return Box::pin(fail(
                ctx,
                s,
                Some(lease),
                route,
                err,
                &prior,
                semantic::calls(&mut sem),
            ))
            .await;
        }
    };
    let embed_calls = semantic::calls(&mut sem);
    let first_call = first_attempt + embed_calls.len() as u32;
    let mut outcome = run_chain(ctx, job, &plan, estimate, first_call, s.d.priority, &lease).await;
    // The embedding call is one of the job's calls (rows, attempts, cost).
    outcome.calls.splice(0..0, embed_calls);
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
                (outcome, cacheable, sem.and_then(|s| s.store)),
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
    (outcome, cacheable, semantic): (ChainOutcome, Option<Cacheable>, Option<SemanticColumns>),
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
    let cache = CacheFinal::store(cacheable, semantic, &result);
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
