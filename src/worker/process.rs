//! One delivery of one job, start to end. The short way, for a new job (`open`): route,
//! admit the first call, then one transaction takes the lease, holds the budget
//! reservation and writes the call's `started` row; call. The long way, for the rest
//! (`claim` then `attempt`): take the lease, route, look the answer up in the response
//! cache, exact then semantic (`process/semantic.rs`; a hit ends here: no reservation, no
//! completion call), reserve, park it for a provider batch
//! when it is latency-tolerant (`batched`: the delivery ends there, and the job comes back
//! as a new message with the batch's answer), call. Both then carry out the [`Verdict`]:
//! commit (storing the answer in the cache when it applies), dead-letter, publish. Every
//! path returns a [`Disposition`]; every terminal path commits first, and nothing that
//! can fail after a provider call makes that call happen again.

use super::calls::{run_chain, Chain, ChainOutcome};
use super::decide::{backoff_delay, decide, RetryPolicy, Verdict};
use super::infra::Gave;
use super::stream::Chunks;
use super::{Ctx, Delivery, Disposition};
use crate::budget::{Denial, Reservation};
use crate::cache::Cacheable;
use crate::job::{
    parse_job, Attempt, Envelope, ErrorBody, ErrorKind, Job, JobResult, Output, ParseFailure,
    Route, Status, Usage,
};
use crate::queue::publish::DlqEntry;
use crate::router::Plan;
use crate::store::semantic::SemanticColumns;
use crate::store::writer::Release;
use crate::store::{
    CallRecord, ClaimOutcome, ClaimRequest, CommitJob, CommitRequest, JobKey, Lease, Opening,
    StoreError,
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

mod batched;
mod cached;
mod finish;
mod semantic;

pub(super) use finish::{commit, CommitFailed};
use finish::{deliver, finish};

pub(super) async fn process(ctx: &Ctx, d: Delivery, msg: &async_nats::Message) -> Disposition {
    // Matched by reference: moved out, the parsed job would be held twice in this
    // future (the match's value and the binding) while the job runs.
    let mut parsed = parse_job(&msg.payload, msg.subject.as_str(), d.stream_seq, &ctx.rules);
    if let Ok(p) = &mut parsed {
        screen(ctx, &mut p.job);
    }
    match &parsed {
        Ok(p) => {
            // Fields as `&str`, not `%` (Display goes through `fmt::write`): the span is
            // made for every job.
            let span = tracing::info_span!(
                "job",
                tenant = p.job.tenant.as_str(),
                id = p.job.id.as_str(),
                priority = d.priority.as_str(),
                delivery = d.delivered
            );
            run(ctx, d, msg, &p.job, &p.envelope).instrument(span).await
        }
        Err(f) => {
            let span = tracing::info_span!("job", tenant = %f.envelope.tenant, id = %f.envelope.id);
            Box::pin(fail_unparsed(ctx, d, msg, f).instrument(span)).await
        }
    }
}

/// Screening before routing: the job goes on redacted, carrying what was done, when a
/// `[screen]` policy applies; else as parsed. (Not async: nothing of it is held in the
/// job's future.)
fn screen(ctx: &Ctx, job: &mut Job) {
    if let Some(screened) = ctx.router.screen(job) {
        *job = screened;
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
        // The common delivery in one transaction before its first call (see `open`).
        if let Some(prepared) = prepare(ctx, scope, job) {
            match open(ctx, scope, job, prepared).await {
                Opened::Done(disposition) => return disposition,
                Opened::Reclaim => continue,
                Opened::LongWay => {}
            }
        }
        let (lease, prior, free) = match Box::pin(claim(ctx, scope, job)).await {
            Claimed::Run { lease, prior, free } => (lease, prior, free),
            Claimed::Done(disposition) => return disposition,
        };
        // Boxed: the long way is the rare one; the short way sets the job task's size.
        match Box::pin(attempt(ctx, scope, job, lease, prior, free)).await {
            Some(disposition) => return disposition,
            // Another delivery took the job over while this one ran: claim again (it
            // will find that delivery's result, or its lease).
            None => continue,
        }
    }
    Disposition::Retry(retry_delay(ctx, d.delivered, None))
}

/// A job routed before its claim.
struct Prepared {
    plan: Plan,
    estimate: u64,
}

/// How [`open`] ended.
enum Opened {
    Done(Disposition),
    /// The lease was lost at commit: claim again.
    Reclaim,
    /// Not the common case after all (another delivery holds the job, nothing can be
    /// called now, Postgres is away): take the long way, claim then reserve then call.
    LongWay,
}

/// The job routed, when it can take the short way: its deadline not passed, a route
/// found, no response-cache lookup to make (the long way looks up after its claim), and
/// no provider batch in its way.
fn prepare(ctx: &Ctx, s: Scope<'_>, job: &Job) -> Option<Prepared> {
    if job
        .deadline
        .is_some_and(|deadline| ctx.clock.now() > deadline)
    {
        return None;
    }
    let (estimate, plan) = route(ctx, s, job);
    let plan = plan.ok()?;
    // Cannot finish in time: the long way fails it as expired.
    if super::deadline::check(ctx, job, &plan).is_some() {
        return None;
    }
    let cacheable = plan.candidates.first().is_some_and(|c| {
        crate::cache::cacheable(&ctx.cfg.cache, job, &c.model, c.max_tokens).is_some()
    });
    // Back from a provider batch, or to be parked for one: the long way.
    let batch = s.d.reentry.is_some() || batched::eligible(ctx, s, job, &plan);
    (!cacheable && !batch).then_some(Prepared { plan, estimate })
}

/// The short way: admit the first call (health, rate limits: waiting here is not a
/// failure), then one claim that also holds the job's worst case against its budgets and
/// writes the call's `started` row, all in one transaction; then the calls. Before, a
/// delivery waited for three group commits (claim, reservation, started row) before its
/// first call; the long way still does, for what is not the common case.
async fn open(ctx: &Ctx, s: Scope<'_>, job: &Job, p: Prepared) -> Opened {
    let Prepared { plan, estimate } = p;
    // Boxed: moved into the calls, it would take its room in this future twice.
    let mut chain = Box::new(Chain::new(ctx, job, &plan, estimate, s.d.priority));
    let Some(first) = chain.admit().await else {
        return Opened::LongWay;
    };
    // Known without a round trip, as a rule (the list is read every few seconds).
    let has_budget = match ctx.budgets.knows(&job.tenant) {
        Some(has) => Ok(has),
        None => Box::pin(ctx.budgets.has_budget(&job.tenant)).await,
    };
    let amount = match has_budget {
        Ok(true) => Some(worst_case(ctx, job, &plan, estimate)),
        Ok(false) => None,
        Err(_) => {
            chain.abandon(first);
            return Opened::LongWay;
        }
    };
    let token = ctx.leases.new_token();
    let outcome = {
        let opening = Opening {
            reserve: amount.map(|a| (a, ctx.budgets.now())),
            first: first.model().clone(),
        };
        ctx.infra
            .store(&ctx.abort, || {
                let req = claim_request(s, job, &token, Some(opening.clone()));
                ctx.claimer.claim(req)
            })
            .await
    };
    let (prior, free, opened) = match outcome {
        Ok(ClaimOutcome::Claimed {
            prior,
            free_deliveries,
            opened,
        }) => (prior, free_deliveries, opened),
        Ok(ClaimOutcome::Busy(_)) => {
            chain.abandon(first);
            return Opened::LongWay;
        }
        other => {
            chain.abandon(first);
            return match Box::pin(unclaimed(ctx, s, token, other)).await {
                Some(disposition) => Opened::Done(disposition),
                None => Opened::LongWay,
            };
        }
    };
    let lease = ctx.leases.hold(token, &job.tenant, &job.id);
    let opened = opened.unwrap_or(crate::store::Opened {
        reserved: None,
        started: false,
    });
    let reservation = match (opened.reserved, amount) {
        (Some(Ok(())), Some(amount)) => {
            Some(
                ctx.budgets
                    .held(&lease, &job.tenant, job.feature.as_deref(), amount),
            )
        }
        (Some(Err(denial)), _) => {
            chain.abandon(first);
            let calls = (&prior[..], Vec::new());
            let done = Box::pin(denied(ctx, s, job, lease, plan.route, calls, denial)).await;
            return done.map_or(Opened::Reclaim, Opened::Done);
        }
        _ => None,
    };
    let first = Some((first, opened.started));
    let chunks = streamed(ctx, s, job);
    chain.stream_into(chunks.as_ref());
    let outcome = run_chain(chain, &plan, next_attempt(&prior), &lease, first).await;
    // Every chunk out before whatever ends the delivery (the result comes after them).
    if let Some(c) = chunks {
        Box::pin(c.close()).await;
    }
    // Boxed: after the calls, and larger than what a job holds through them. (Not a call
    // of `calls`: what this future moved into it would take room here as well.)
    let done = Box::pin(conclude(
        ctx,
        s,
        job,
        lease,
        reservation,
        plan.route,
        (prior, free),
        (outcome, None, None),
    ))
    .await;
    done.map_or(Opened::Reclaim, Opened::Done)
}

/// The calls, then what comes of them (the long way). `None`: the lease was lost.
#[allow(clippy::too_many_arguments)]
async fn calls<'a>(
    ctx: &'a Ctx,
    s: Scope<'_>,
    job: &'a Job,
    (lease, reservation): (Lease, Option<Reservation>),
    (plan, estimate): (&'a Plan, u64),
    (prior, free): (Vec<Attempt>, u32),
    (cacheable, mut sem): (Option<Cacheable>, Option<Box<semantic::Step>>),
) -> Option<Disposition> {
    let chunks = streamed(ctx, s, job);
    let mut chain = Box::new(Chain::new(ctx, job, plan, estimate, s.d.priority));
    chain.stream_into(chunks.as_ref());
    let embed_calls = semantic::calls(&mut sem);
    let first_call = next_attempt(&prior) + embed_calls.len() as u32;
    let mut outcome = run_chain(chain, plan, first_call, &lease, None).await;
    // The embedding call is one of the job's calls (rows, attempts, cost).
    outcome.calls.splice(0..0, embed_calls);
    // Every chunk out before whatever ends the delivery (the result comes after them).
    if let Some(c) = chunks {
        Box::pin(c.close()).await;
    }
    let route = plan.route.clone();
    // Boxed: after the calls, and larger than what a job holds through them.
    Box::pin(conclude(
        ctx,
        s,
        job,
        lease,
        reservation,
        route,
        (prior, free),
        (outcome, cacheable, sem.and_then(|s| s.store)),
    ))
    .await
}

fn claim_request(s: Scope<'_>, job: &Job, token: &str, opening: Option<Opening>) -> ClaimRequest {
    ClaimRequest {
        tenant: job.tenant.clone(),
        id: job.id.clone(),
        feature: job.feature.clone(),
        user_id: job.user.clone(),
        priority: s.d.priority.as_str(),
        task: job.task.as_str(),
        requested_model: job.model.clone(),
        lease_token: token.to_string(),
        stream_seq: s.d.stream_seq,
        opening,
    }
}

/// A claim that did not give this delivery the job: publish the stored result again, or
/// end it as `internal` when Postgres refused the claim. `None`: another delivery holds
/// it (wait for it the long way).
async fn unclaimed(
    ctx: &Ctx,
    s: Scope<'_>,
    token: String,
    outcome: Result<ClaimOutcome, Gave>,
) -> Option<Disposition> {
    match outcome {
        Ok(ClaimOutcome::Claimed { .. } | ClaimOutcome::Busy(_)) => None,
        Ok(ClaimOutcome::Succeeded(stored)) => {
            tracing::info!("already succeeded; publishing the stored result again");
            ctx.metrics.republished();
            Some(deliver(ctx, s, &stored, None).await)
        }
        Ok(ClaimOutcome::Finished(stored)) => {
            tracing::info!("this message's failed result is committed; publishing it again");
            ctx.metrics.republished();
            Some(deliver(ctx, s, &stored, None).await)
        }
        Err(Gave::Stopping(_)) => {
            // A claim whose answer was lost may have taken the lease: let it go.
            ctx.leases.release_token(token);
            Some(Disposition::Retry(Duration::ZERO))
        }
        Err(Gave::Refused(e)) => {
            tracing::error!(error = %e, "postgres refused the job's claim");
            let err = internal(format!("postgres refused the job's claim: {e}"));
            let done = fail(ctx, s, None, None, err, &[], Vec::new()).await;
            Some(done.unwrap_or(Disposition::Ack))
        }
    }
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
                ctx.claimer.claim(claim_request(s, job, &token, None))
            })
            .await;
        match outcome {
            Ok(ClaimOutcome::Claimed {
                prior,
                free_deliveries,
                ..
            }) => {
                let lease = ctx.leases.hold(token, &job.tenant, &job.id);
                return Claimed::Run {
                    lease,
                    prior,
                    free: free_deliveries,
                };
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
            other => {
                let done = unclaimed(ctx, s, token, other).await;
                return Claimed::Done(done.unwrap_or(Disposition::Retry(Duration::ZERO)));
            }
        }
    }
}

/// One run of the job under its lease, the long way: route, look the answer up in the
/// response cache, reserve, call. `None`: the lease was lost at commit (another delivery
/// owns the job now).
async fn attempt(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    prior: Vec<Attempt>,
    free: u32,
) -> Option<Disposition> {
    // Back from a provider batch with its answer: that is the result (boxed: rare).
    if s.d.reentry == Some(super::batcher::Reentry::Answered) {
        if let Some(item) = Box::pin(batched::returned(ctx, job)).await {
            return Box::pin(batched::answer(ctx, s, job, lease, prior, item)).await;
        }
    }
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
    let (estimate, plan) = route(ctx, s, job);
    let plan = match plan {
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
    if let Some(err) = super::deadline::check(ctx, job, &plan) {
        return Box::pin(fail(ctx, s, Some(lease), None, err, &prior, Vec::new())).await;
    }
    let first_attempt = next_attempt(&prior);
    // In a block, boxed: only the embedding call and what to store outlive it (the
    // state a job waits in for its calls stays small).
    let mut sem: Option<Box<semantic::Step>> = {
        let first = plan.candidates.first().map(|c| (&*c.model, c.max_tokens));
        let step = semantic::step(
            ctx,
            (job, s.d.priority),
            first,
            cacheable.as_ref(),
            first_attempt,
        );
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
    // Boxed: over by the time the calls start, and larger than what a job holds then.
    let reserved = Box::pin(ctx.infra.store(&ctx.abort, || {
        ctx.budgets
            .reserve(&lease, &job.tenant, &job.id, job.feature.as_deref(), || {
                worst_case(ctx, job, &plan, estimate)
            })
    }))
    .await;
    let reservation = match reserved {
        Ok(Ok(r)) => r,
        Ok(Err(denial)) => {
            let calls = semantic::calls(&mut sem);
            let done = denied(ctx, s, job, lease, plan.route, (&prior, calls), denial);
            return Box::pin(done).await;
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
    // Latency-tolerant: parked for a provider batch instead of called (boxed: rare; the
    // lease and reservation move only when the delivery ends there).
    let embedded = sem.as_ref().is_some_and(|s| !s.calls.is_empty());
    if !embedded && batched::eligible(ctx, s, job, &plan) {
        let parked = Box::pin(batched::park(ctx, s, job, &plan)).await;
        if !matches!(parked, batched::Park::Live) {
            let held = (lease, reservation, prior);
            return Box::pin(batched::conclude(ctx, s, job, held, parked)).await;
        }
    }
    let held = (lease, reservation);
    calls(
        ctx,
        s,
        job,
        held,
        (&plan, estimate),
        (prior, free),
        (cacheable, sem),
    )
    .await
}

/// The job's input estimate and its route (budget-aware: the share of the tenant's
/// budgets used, as last read, may steer it to a cheaper tier).
fn route(ctx: &Ctx, s: Scope<'_>, job: &Job) -> (u64, Result<Plan, ErrorBody>) {
    let estimate = estimate_input_tokens(job);
    let mut route_ctx = crate::router::RouteContext::new(s.d.priority);
    route_ctx.budget_used_fraction = used_share(ctx, job);
    (estimate, ctx.router.plan(job, estimate, route_ctx))
}

/// The largest share of one of the tenant's budget limits used, as last read (`None`: no
/// budget, or not read yet).
fn used_share(ctx: &Ctx, job: &Job) -> Option<f64> {
    ctx.budgets
        .used_share(&job.tenant)
        .and_then(|d| rust_decimal::prelude::ToPrimitive::to_f64(&d))
}

/// What to hold against the tenant's budgets before any call (called once a budget is
/// known to apply): the dearest candidate's price for its whole `max_tokens`, with the
/// input counted by the provider's own tokenizer where there is one. Counting costs ~50k
/// instructions a job, so while the tenant's budgets are less than half used (as last
/// read) a bound is held instead (a token is at least one byte): it only holds more, and
/// holding more matters only near a limit. The tokenizer's tables are built the first
/// time a count is wanted, on their own thread (the bound is held until they are
/// ready). A hedged plan holds the calls that may run at once (`Plan::hold`).
fn worst_case(ctx: &Ctx, job: &Job, plan: &Plan, estimate: u64) -> Decimal {
    // Read now, not at routing: the budget list may have been read since (by the
    // check that a budget applies), and a share not read yet would count exactly.
    let used = used_share(ctx, job);
    let counted = used.is_none_or(|f| f >= EXACT_TOKENS_FROM);
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
}

/// The number of this delivery's first call: on from the earlier deliveries' calls.
fn next_attempt(prior: &[Attempt]) -> u32 {
    prior.iter().map(|a| a.attempt).max().unwrap_or(0) + 1
}

/// The job's budget does not allow its worst case: fail it, or hand it back for later
/// (`defer`, not the job's fault: not counted against `max_deliveries`).
async fn denied(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    route: Route,
    (prior, calls): (&[Attempt], Vec<CallRecord>),
    denial: Denial,
) -> Option<Disposition> {
    match denial {
        Denial::Fail(why) => {
            let err = ErrorBody::new(ErrorKind::BudgetExceeded, why);
            fail(ctx, s, Some(lease), Some(route), err, prior, calls).await
        }
        Denial::Defer(why, delay) => {
            tracing::info!(delay_s = delay.as_secs(), reason = %why, "budget reached; deferring");
            hand_back(ctx, s, job, lease, None, calls, true, delay).await
        }
    }
}

/// After the calls: carry out the [`Verdict`] on them. `None`: the lease was lost.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    ctx: &Ctx,
    s: Scope<'_>,
    job: &Job,
    lease: Lease,
    reservation: Option<Reservation>,
    route: Route,
    (prior, free): (Vec<Attempt>, u32),
    (outcome, cacheable, semantic): (ChainOutcome, Option<Cacheable>, Option<SemanticColumns>),
) -> Option<Disposition> {
    let own_delivery = s.d.delivered.saturating_sub(u64::from(free)).max(1);
    // Taken from the plan once the calls are over (not cloned and held through them).
    let mut route = Some(route);
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
                (outcome, cacheable, semantic),
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

/// A streamed job's chunks (`stream: true` with a `reply_to` that passed its checks).
fn streamed(ctx: &Ctx, s: Scope<'_>, job: &Job) -> Option<Chunks> {
    let reply_to = s.env.reply_to.as_deref().filter(|_| job.stream)?;
    Some(Chunks::start(
        &ctx.publisher.client,
        job,
        reply_to,
        s.d.delivered,
    ))
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
