//! Shadow evaluation, the calls: after a job's succeeded result is committed and
//! published, a sampled job of a `[[shadow.routes]]` route runs again on the route's
//! candidate model (and, for `compare = "judge"`, a judge call), in a task of its own.
//! The job's result, its message and its timing are untouched: [`ShadowRunner::offer`]
//! only takes what it needs and returns at once.
//!
//! Bounded and droppable: at most `shadow.max_concurrent` tasks per worker (a sampled job
//! that finds none free is dropped and counted), each waits at most
//! `shadow.max_wait_ms` at the rate limiter (at low priority, behind every job), the
//! breakers apply, and a tenant whose budgets are used past
//! `shadow.pause_at_budget_share` gets none. Each call has its cost row (`shadow` true),
//! charged to the tenant's budgets when it lands; the evaluation is one `shadow_evals`
//! row per job and candidate, claimed before the call (a redelivery calls nothing).

use super::Ctx;
use crate::config::{ModelConfig, ShadowRoute, DEFAULT_JUDGE_PROMPT};
use crate::cost::cost_of;
use crate::health::{Admit, CallOutcome, Health};
use crate::job::{Job, JobResult, Message, Output, Priority, ResponseFormat, Status};
use crate::providers::{ChatRequest, ChatResponse, FailureClass, Provider, ProviderError};
use crate::ratelimit::{Ask, Limiters, Permit};
use crate::shadow::{compare, judge_request, parse_verdict, sampled};
use crate::store::shadow::{self as rows, EvalClaim, EvalEnd, ShadowCall, ShadowKey};
use crate::telemetry::metrics::{CallEvent, EvalResult, Metrics};
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shadow tasks of one worker: a fixed number of slots, a tracker and a stop token.
#[derive(Clone)]
pub struct ShadowRunner {
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
    pool: PgPool,
}

/// A model to call and its adapter.
struct Callee {
    model: Arc<ModelConfig>,
    adapter: Arc<dyn Provider>,
}

/// What one evaluation needs, owned (the job's delivery is over when it runs).
struct Work {
    key: ShadowKey,
    job: Job,
    primary: Output,
    primary_provider: String,
    primary_model: String,
    primary_cost: Decimal,
    route: ShadowRoute,
    candidate: Callee,
    judge: Option<Callee>,
    max_tokens: u32,
    max_wait: Duration,
    limiters: Limiters,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    infra: Arc<super::infra::Infra>,
}

impl ShadowRunner {
    pub fn new(pool: PgPool, max_concurrent: usize) -> ShadowRunner {
        ShadowRunner {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            pool,
        }
    }

    /// Hand a finished job over (its result committed and published). Takes what a
    /// sampled job needs and spawns its task; everything else returns at once. Called
    /// only when `[shadow]` lists routes.
    pub fn offer(&self, ctx: &Ctx, job: &Job, result: &JobResult) {
        if result.status != Status::Succeeded || result.cache_hit {
            return;
        }
        let (Some(output), Some(provider), Some(model)) =
            (&result.output, &result.provider, &result.model)
        else {
            return;
        };
        let cfg = &ctx.cfg.shadow;
        let Some(route) = cfg.route_for(&job.tenant, job.feature.as_deref(), job.task, model)
        else {
            return;
        };
        if !sampled(&job.tenant, &job.id, route.sample_rate) {
            return;
        }
        let used = ctx.budgets.used_share(&job.tenant);
        let pause = Decimal::from_f64_retain(cfg.pause_at_budget_share).unwrap_or(Decimal::ONE);
        if used.is_some_and(|u| u >= pause) {
            ctx.metrics.shadow.dropped(&route.name, "budget");
            return;
        }
        let (Some(candidate), judge) = (
            callee(ctx, &route.candidate),
            route.judge.as_deref().map(|j| callee(ctx, j)),
        ) else {
            tracing::warn!(route = %route.name, candidate = %route.candidate,
                "shadow candidate has no model or provider adapter; not shadowing");
            return;
        };
        let judge = match judge {
            Some(None) => {
                tracing::warn!(route = %route.name, "shadow judge has no model or provider adapter");
                return;
            }
            Some(Some(j)) => Some(j),
            None => None,
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            ctx.metrics.shadow.dropped(&route.name, "busy");
            return;
        };
        let requested = job.max_tokens.unwrap_or(ctx.cfg.limits.default_max_tokens);
        let max_tokens = candidate
            .model
            .max_output_tokens
            .map_or(requested, |m| requested.min(m));
        let work = Work {
            key: ShadowKey {
                tenant: job.tenant.clone(),
                job_id: job.id.clone(),
                feature: job.feature.clone(),
                user_id: job.user.clone(),
            },
            job: job.clone(),
            primary: output.clone(),
            primary_provider: provider.clone(),
            primary_model: model.clone(),
            primary_cost: result.cost_usd,
            route: route.clone(),
            candidate,
            judge,
            max_tokens,
            max_wait: Duration::from_millis(cfg.max_wait_ms),
            limiters: ctx.limiters.clone(),
            health: ctx.health.clone(),
            metrics: ctx.metrics.clone(),
            infra: ctx.infra.clone(),
        };
        let (pool, stop) = (self.pool.clone(), self.stop.clone());
        self.tracker.spawn(evaluate(work, pool, stop, slot));
    }

    /// Stop: calls under way are cut short (their rows say so), then wait for the tasks.
    pub async fn close(&self) {
        self.tracker.close();
        self.stop.cancel();
        self.tracker.wait().await;
    }
}

/// The configured model `reference` names, with its provider's adapter.
fn callee(ctx: &Ctx, reference: &str) -> Option<Callee> {
    let name = &ctx.cfg.find_model(reference)?.name;
    let model = ctx.router.model(name)?.clone();
    let adapter = ctx.providers.get(&model.provider)?.clone();
    Some(Callee { model, adapter })
}

/// One evaluation: the candidate's call, the comparison (a judge's call for `judge`),
/// the rows, the metrics.
async fn evaluate(w: Work, pool: PgPool, stop: CancellationToken, _slot: OwnedSemaphorePermit) {
    let route = w.route.name.as_str();
    let cand = &w.candidate.model;
    // Admitted first (a claim then makes the call at once), unless its breaker is open:
    // that evaluation fails without a call.
    let (permit, probe) = match admit(&w, cand, &stop).await {
        Admission::Go(permit, probe) => (permit, probe),
        Admission::Skip(why) => {
            let claimed = claim(&w, &pool, &stop, false).await;
            if claimed.is_some() {
                let end = failed(format!("no call: {why}"), Decimal::ZERO);
                finish(&w, &pool, &stop, &[], &end).await;
            }
            return;
        }
        Admission::Dropped(reason) => {
            w.metrics.shadow.dropped(route, reason);
            return;
        }
    };
    let Some(attempt) = claim(&w, &pool, &stop, true).await.and_then(|c| c.attempt) else {
        give_back(&w.health, cand, probe);
        permit.cancel();
        return;
    };
    let req = ChatRequest {
        model: &cand.upstream,
        messages: &w.job.messages,
        max_tokens: w.max_tokens,
        temperature: w.job.temperature,
        stop: w.job.stop.as_deref(),
        response_format: w.job.response_format.as_ref(),
        tools: w.job.tools.as_deref(),
        tool_choice: w.job.tool_choice.as_ref(),
    };
    let (call, answer) = run_call(&w, &w.candidate, attempt, req, permit, &stop).await;
    let mut calls = vec![call];
    let candidate_cost = calls[0].cost_usd;
    let end = match answer {
        Err(why) => failed(format!("candidate: {why}"), candidate_cost),
        Ok(resp) => {
            let mut end = match compare(
                w.route.compare,
                &w.primary,
                &resp.output,
                w.route.min_similarity,
            ) {
                Some(c) => EvalEnd {
                    agree: Some(c.agree),
                    similarity: c.similarity,
                    candidate_cost_usd: candidate_cost,
                    judge_cost_usd: Decimal::ZERO,
                    candidate_output: None,
                    message: None,
                },
                None => judge(&w, &pool, &stop, &resp.output, candidate_cost, &mut calls).await,
            };
            end.candidate_output = serde_json::to_value(&resp.output).ok();
            end
        }
    };
    finish(&w, &pool, &stop, &calls, &end).await;
}

fn failed(message: String, candidate_cost: Decimal) -> EvalEnd {
    EvalEnd {
        agree: None,
        similarity: None,
        candidate_cost_usd: candidate_cost,
        judge_cost_usd: Decimal::ZERO,
        candidate_output: None,
        message: Some(message),
    }
}

/// `compare = "judge"`: ask the judge whether the answers agree.
async fn judge(
    w: &Work,
    pool: &PgPool,
    stop: &CancellationToken,
    candidate: &Output,
    candidate_cost: Decimal,
    calls: &mut Vec<ShadowCall>,
) -> EvalEnd {
    let Some(j) = &w.judge else {
        return failed("no judge configured".into(), candidate_cost);
    };
    let (permit, probe) = match admit(w, &j.model, stop).await {
        Admission::Go(p, probe) => (p, probe),
        Admission::Skip(why) => return failed(format!("judge: no call: {why}"), candidate_cost),
        Admission::Dropped(reason) => {
            return failed(format!("judge: dropped ({reason})"), candidate_cost)
        }
    };
    let started = w
        .infra
        .store(stop, || {
            rows::start_judge(pool, &w.key, &j.model.provider, &j.model.name)
        })
        .await;
    let Ok(attempt) = started else {
        give_back(&w.health, &j.model, probe);
        permit.cancel();
        return failed(
            "judge: its cost row could not be written".into(),
            candidate_cost,
        );
    };
    let prompt = w
        .route
        .judge_prompt
        .as_deref()
        .unwrap_or(DEFAULT_JUDGE_PROMPT);
    let (messages, format): (Vec<Message>, ResponseFormat) =
        judge_request(prompt, &w.job, &w.primary, candidate);
    let req = ChatRequest {
        model: &j.model.upstream,
        messages: &messages,
        max_tokens: 64,
        temperature: Some(0.0),
        stop: None,
        response_format: Some(&format),
        tools: None,
        tool_choice: None,
    };
    let (call, answer) = run_call(w, j, attempt, req, permit, stop).await;
    let judge_cost = call.cost_usd;
    calls.push(call);
    let verdict = answer.and_then(|r| parse_verdict(&r.output));
    match verdict {
        Ok(agree) => EvalEnd {
            agree: Some(agree),
            similarity: None,
            candidate_cost_usd: candidate_cost,
            judge_cost_usd: judge_cost,
            candidate_output: None,
            message: None,
        },
        Err(why) => EvalEnd {
            judge_cost_usd: judge_cost,
            ..failed(format!("judge: {why}"), candidate_cost)
        },
    }
}

enum Admission {
    /// Admitted: the rate-limit permit, and whether this is the breaker's probe.
    Go(Permit, bool),
    /// The breaker is open or cooling: no call.
    Skip(&'static str),
    /// Not admitted in time (or stopping): the reason label.
    Dropped(&'static str),
}

/// Breaker, then the rate limiter (low priority, at most `max_wait`).
async fn admit(w: &Work, m: &ModelConfig, stop: &CancellationToken) -> Admission {
    let probe = match w.health.allow(&m.provider, &m.name) {
        Admit::Skip(why, _) => return Admission::Skip(why.as_str()),
        Admit::Probe => true,
        Admit::Go => false,
    };
    let estimate = crate::tokens::estimate_input_tokens(&w.job);
    let asks = [Ask {
        provider: &m.provider,
        model: &m.upstream,
        tokens: estimate + u64::from(w.max_tokens),
    }];
    let asked = Instant::now();
    let admitted = tokio::select! {
        a = w.limiters.admit_first(&asks, Priority::Low) => a,
        _ = tokio::time::sleep(w.max_wait) => None,
        _ = stop.cancelled() => None,
    };
    match admitted {
        Some((_, permit)) => {
            w.metrics
                .limiter_waited(&m.provider, &m.name, asked.elapsed());
            Admission::Go(permit, probe)
        }
        None => {
            give_back(&w.health, m, probe);
            Admission::Dropped(if stop.is_cancelled() {
                "stopping"
            } else {
                "limits"
            })
        }
    }
}

/// A breaker probe that made no call frees its slot.
fn give_back(health: &Health, m: &ModelConfig, probe: bool) {
    if probe {
        health.record(&m.provider, &m.name, CallOutcome::Abandoned, Duration::ZERO);
    }
}

/// Claim the evaluation (waiting in place while Postgres is away); `None` when another
/// delivery or worker has it, or it could not be claimed (dropped, counted).
async fn claim(
    w: &Work,
    pool: &PgPool,
    stop: &CancellationToken,
    call: bool,
) -> Option<rows::Claimed> {
    let c = EvalClaim {
        key: &w.key,
        route: &w.route.name,
        primary_provider: &w.primary_provider,
        primary_model: &w.primary_model,
        candidate_provider: &w.candidate.model.provider,
        candidate_model: &w.candidate.model.name,
        comparison: w.route.compare.as_str(),
        primary_cost_usd: w.primary_cost,
    };
    match w.infra.store(stop, || rows::claim(pool, &c, call)).await {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(error = ?e, route = %w.route.name, "shadow evaluation not claimed");
            w.metrics.shadow.dropped(&w.route.name, "store");
            None
        }
    }
}

/// Make one call (its `started` row written), cut short when the worker stops; what it
/// cost and how it ended, and its answer or why there is none.
async fn run_call(
    w: &Work,
    c: &Callee,
    attempt: i32,
    req: ChatRequest<'_>,
    permit: Permit,
    stop: &CancellationToken,
) -> (ShadowCall, Result<ChatResponse, String>) {
    let m = &c.model;
    let started = Instant::now();
    let answer = tokio::select! {
        r = c.adapter.chat(req) => Some(r),
        _ = stop.cancelled() => None,
    };
    let took = started.elapsed();
    let mut call = ShadowCall {
        attempt,
        provider: m.provider.clone(),
        model: m.name.clone(),
        outcome: String::new(),
        status: None,
        usage: Default::default(),
        cost_usd: Decimal::ZERO,
        latency_ms: took.as_millis() as u64,
        message: None,
    };
    let Some(result) = answer else {
        // The request was made: its admission keeps counting; nobody saw the usage.
        drop(permit);
        w.health
            .record(&m.provider, &m.name, CallOutcome::Abandoned, Duration::ZERO);
        call.outcome = "cancelled".into();
        let why = "cut short: the worker is stopping".to_string();
        call.message = Some(why.clone());
        return (call, Err(why));
    };
    let reading = match &result {
        Ok(r) => r.rate.as_ref(),
        Err(e) => e.rate.as_deref(),
    };
    w.limiters.observe(&m.provider, &m.upstream, reading);
    let judged = match &result {
        Ok(_) => CallOutcome::Succeeded,
        Err(e) => CallOutcome::Failed {
            class: e.class,
            retry_after: e.retry_after,
        },
    };
    w.health.record(&m.provider, &m.name, judged, took);
    let used = match &result {
        Ok(r) => Some(r.usage),
        Err(e) => e.usage,
    };
    permit.settle(used.map(|u| u.input_tokens + u.output_tokens));
    if let Err(e) = &result {
        if e.class == FailureClass::RateLimited {
            w.limiters
                .cool_down(&m.provider, &m.upstream, e.retry_after)
                .await;
        }
    }
    call.usage = used.unwrap_or_default();
    call.cost_usd = used.map_or(Decimal::ZERO, |u| cost_of(m, &u));
    let outcome = match &result {
        Ok(_) => "succeeded",
        Err(e) => e.class.as_str(),
    };
    w.metrics.call(CallEvent {
        provider: &m.provider,
        model: &m.name,
        outcome,
        duration: took,
        usage: &call.usage,
        cost_usd: call.cost_usd,
        tenant: &w.key.tenant,
        feature: w.key.feature.as_deref(),
    });
    call.outcome = outcome.to_string();
    match result {
        Ok(resp) => {
            call.status = Some(200);
            (call, Ok(resp))
        }
        Err(ProviderError {
            class,
            status,
            message,
            ..
        }) => {
            call.status = status;
            let why = format!(
                "{}/{} failed ({}: {message})",
                m.provider,
                m.name,
                class.as_str()
            );
            call.message = Some(message);
            (call, Err(why))
        }
    }
}

/// Write the calls' rows and the evaluation's end, then count it.
async fn finish(
    w: &Work,
    pool: &PgPool,
    stop: &CancellationToken,
    calls: &[ShadowCall],
    end: &EvalEnd,
) {
    let cand = &w.candidate.model.name;
    let settled = w
        .infra
        .store(stop, || rows::settle(pool, &w.key, cand, calls, end))
        .await;
    if let Err(e) = settled {
        // Left `running` with `started` rows, as after a crash (DESIGN.md says so).
        tracing::error!(error = ?e, route = %w.route.name, calls = ?calls,
            "shadow evaluation could not be stored");
        return;
    }
    let result = match end.agree {
        Some(true) => EvalResult::Agree,
        Some(false) => EvalResult::Disagree,
        None => EvalResult::Failed,
    };
    if let Some(why) = &end.message {
        tracing::info!(route = %w.route.name, candidate = %cand, reason = %why,
            "shadow evaluation failed");
    }
    w.metrics
        .shadow
        .evaluated(&w.route.name, cand, result, end.similarity);
}
