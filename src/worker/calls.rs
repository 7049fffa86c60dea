//! Calling the candidates in order until one answers: health (breakers), rate limit,
//! call, and one [`CallRecord`] per call made, failed ones included, at what the
//! provider billed.

use super::Ctx;
use crate::config::ModelConfig;
use crate::cost::cost_of;
use crate::health::{Admit, CallOutcome};
use crate::job::Priority;
use crate::job::{Attempt, Job, Output, Usage};
use crate::providers::{ChatRequest, ChatResponse, FailureClass};
use crate::ratelimit::Ask;
use crate::router::Plan;
use crate::store::{CallRecord, CommitRequest, JobKey, Lease};
use crate::telemetry::metrics::CallEvent;
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ChainOutcome {
    /// The calls made now, numbered on from the earlier deliveries'.
    pub calls: Vec<CallRecord>,
    pub success: Option<(ChatResponse, Arc<ModelConfig>)>,
    /// Some candidate failed in a way that may pass later (429, 5xx, timeout, local limit).
    pub transient: bool,
    /// The longest delay a provider asked for.
    pub retry_after: Option<Duration>,
    /// Every call failed because the input was too long.
    pub all_context_too_long: bool,
    /// The worker's grace period ended during a call (it was cut short), or the job's
    /// lease was taken over: hand the job back.
    pub cancelled: bool,
}

pub async fn run_chain(
    ctx: &Ctx,
    job: &Job,
    plan: &Plan,
    input_estimate: u64,
    first_attempt: u32,
    priority: Priority,
    lease: &Lease,
) -> ChainOutcome {
    let mut out = ChainOutcome {
        calls: Vec::new(),
        success: None,
        transient: false,
        retry_after: None,
        all_context_too_long: true,
        cancelled: false,
    };
    let mut attempt = first_attempt;
    // ── Rate limits and health (issue 11): each round drops the candidates whose breaker
    // is open or cooling (no call, no cost row: not a failure of the job), then calls the
    // first one left that the limits let go now, or waits (in priority order) for the
    // earliest one. A local limit is never a failure; each candidate is called at most
    // once per delivery. The order is latency-aware when the job asks for a tier or auto.
    let mut left: Vec<&crate::router::Candidate> = ctx
        .health
        .order(&job.model, &plan.candidates)
        .into_iter()
        .filter(|c| ctx.providers.get(&c.model.provider).is_some())
        .collect();
    loop {
        let mut admits: Vec<Admit> = Vec::with_capacity(left.len());
        left.retain(|c| {
            let m = &c.model;
            match ctx.health.allow(&m.provider, &m.name) {
                Admit::Skip(why, d) => {
                    tracing::debug!(provider = %m.provider, model = %m.name, why = why.as_str(),
                        wait_ms = d.as_millis() as u64, "provider unhealthy; next candidate");
                    out.transient = true;
                    out.all_context_too_long = false;
                    out.retry_after = Some(out.retry_after.map_or(d, |r| r.min(d)));
                    false
                }
                a => {
                    admits.push(a);
                    true
                }
            }
        });
        let asks: Vec<Ask<'_>> = left
            .iter()
            .map(|c| Ask {
                provider: &c.model.provider,
                model: &c.model.upstream,
                tokens: input_estimate + u64::from(c.max_tokens),
            })
            .collect();
        let asked = Instant::now();
        // Boxed (as the other steps around the call): a job holds only the call's own
        // state while it waits for the answer.
        let admitted = tokio::select! {
            a = Box::pin(ctx.limiters.admit_first(&asks, priority)) => a,
            _ = ctx.abort.cancelled() => None,
        };
        let waited = asked.elapsed();
        drop(asks); // not held through the call
        let Some((i, permit)) = admitted else {
            // Nothing left, or the worker is stopping: free the probe slots taken above.
            for (c, a) in left.iter().zip(admits) {
                give_back(ctx, &c.model, a);
            }
            if ctx.abort.is_cancelled() {
                out.cancelled = true;
                out.transient = true;
                return out;
            }
            break;
        };
        let cand = left.remove(i);
        let admit = admits.remove(i);
        ctx.metrics
            .limiter_waited(&cand.model.provider, &cand.model.name, waited);
        // The others' probe slots go back: they are asked again next round.
        for (c, a) in left.iter().zip(admits) {
            give_back(ctx, &c.model, a);
        }
        let m = &cand.model;
        let Some(adapter) = ctx.providers.get(&m.provider) else {
            give_back(ctx, m, admit);
            continue;
        };
        // ── end rate limits and health
        let req = ChatRequest {
            model: &m.upstream,
            messages: &job.messages,
            max_tokens: cand.max_tokens,
            temperature: job.temperature,
            stop: job.stop.as_deref(),
            response_format: job.response_format.as_ref(),
            tools: job.tools.as_deref(),
            tool_choice: job.tool_choice.as_ref(),
        };
        // Another delivery owns the job now (this one stalled past its lease): no call.
        if lease.is_lost() {
            give_back(ctx, m, admit);
            out.cancelled = true;
            out.transient = true;
            return out;
        }
        // Its cost row, `started`, before the call: if this worker dies during the call,
        // the row is there (the next delivery marks it `worker_lost`).
        if !Box::pin(record_start(ctx, job, attempt, m)).await {
            give_back(ctx, m, admit);
            out.cancelled = true;
            out.transient = true;
            return out;
        }
        let started = Instant::now();
        // The call is cut short only when the shutdown grace period is over; it is still
        // recorded (the provider may bill it).
        let result = tokio::select! {
            r = adapter.chat(req) => Some(r),
            _ = ctx.abort.cancelled() => None,
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let mut attempt_rec = Attempt {
            attempt,
            provider: m.provider.clone(),
            model: m.name.clone(),
            outcome: String::new(),
            latency_ms,
            cost_usd: Decimal::ZERO,
            status: None,
            message: None,
        };
        attempt += 1;
        let Some(result) = result else {
            give_back(ctx, m, admit);
            attempt_rec.outcome = "cancelled".into();
            let none = Usage::default();
            let event = call_event(job, m, "cancelled", started.elapsed(), &none, Decimal::ZERO);
            ctx.metrics.call(event);
            attempt_rec.message =
                Some("cut short: the worker's shutdown grace period ended".into());
            out.calls.push(CallRecord {
                attempt: attempt_rec,
                usage: Usage::default(),
            });
            out.cancelled = true;
            out.transient = true;
            return out;
        };
        let reading = match &result {
            Ok(r) => r.rate.as_ref(),
            Err(e) => e.rate.as_deref(),
        };
        ctx.limiters.observe(&m.provider, &m.upstream, reading);
        let judged = match &result {
            Ok(_) => CallOutcome::Succeeded,
            Err(e) => CallOutcome::Failed {
                class: e.class,
                retry_after: e.retry_after,
            },
        };
        ctx.health
            .record(&m.provider, &m.name, judged, started.elapsed());
        // Rate limits: correct the reservation to the usage; a 429 cools every worker.
        let used = match &result {
            Ok(r) => Some(r.usage),
            Err(e) => e.usage,
        };
        permit.settle(used.map(|u| u.input_tokens + u.output_tokens));
        if let Err(e) = &result {
            if e.class == FailureClass::RateLimited {
                Box::pin(
                    ctx.limiters
                        .cool_down(&m.provider, &m.upstream, e.retry_after),
                )
                .await;
            }
        }
        match result {
            Ok(mut resp) => {
                sanitize(&mut resp.output);
                let cost = cost_of(m, &resp.usage);
                attempt_rec.outcome = "succeeded".into();
                attempt_rec.status = Some(200);
                attempt_rec.cost_usd = cost;
                ctx.metrics.call(call_event(
                    job,
                    m,
                    "succeeded",
                    started.elapsed(),
                    &resp.usage,
                    cost,
                ));
                out.calls.push(CallRecord {
                    attempt: attempt_rec,
                    usage: resp.usage,
                });
                out.all_context_too_long = false;
                out.success = Some((resp, m.clone()));
                return out;
            }
            Err(e) => {
                // A 200 that we could not use was still billed.
                let usage = e.usage.unwrap_or_default();
                let cost = e.usage.map_or(Decimal::ZERO, |u| cost_of(m, &u));
                tracing::info!(provider = %m.provider, model = %m.name, outcome = e.class.as_str(),
                    status = e.status, latency_ms, "provider call failed");
                ctx.metrics.call(call_event(
                    job,
                    m,
                    e.class.as_str(),
                    started.elapsed(),
                    &usage,
                    cost,
                ));
                attempt_rec.outcome = e.class.as_str().to_string();
                attempt_rec.status = e.status;
                attempt_rec.cost_usd = cost;
                attempt_rec.message = Some(e.message.clone());
                out.calls.push(CallRecord {
                    attempt: attempt_rec,
                    usage,
                });
                if e.class.is_transient() {
                    out.transient = true;
                    if let Some(d) = e.retry_after {
                        out.retry_after = Some(out.retry_after.map_or(d, |r| r.max(d)));
                    }
                }
                if e.class != FailureClass::ContextTooLong {
                    out.all_context_too_long = false;
                }
            }
        }
    }
    out
}

/// health: a probe that made no call frees its slot.
fn give_back(ctx: &Ctx, m: &ModelConfig, admit: Admit) {
    if admit == Admit::Probe {
        ctx.health
            .record(&m.provider, &m.name, CallOutcome::Abandoned, Duration::ZERO);
    }
}

/// Write the `started` cost row of the call about to be made, waiting in place while
/// Postgres is away. False: the worker is stopping (make no call).
async fn record_start(ctx: &Ctx, job: &Job, attempt: u32, m: &ModelConfig) -> bool {
    let req = CommitRequest {
        key: JobKey {
            tenant: job.tenant.clone(),
            id: job.id.clone(),
            feature: job.feature.clone(),
            user_id: job.user.clone(),
        },
        calls: vec![CallRecord {
            attempt: Attempt {
                attempt,
                provider: m.provider.clone(),
                model: m.name.clone(),
                outcome: "started".into(),
                latency_ms: 0,
                cost_usd: Decimal::ZERO,
                status: None,
                message: None,
            },
            usage: Usage::default(),
        }],
        job: None,
        release: None,
    };
    match Box::pin(super::process::commit(ctx, req)).await {
        Ok(_) => true,
        Err(super::process::CommitFailed::Stopping) => false,
        // Postgres refuses this job's rows: the final commit meets the same refusal and
        // ends the job as `internal`; make the call regardless.
        Err(super::process::CommitFailed::Refused(e, _)) => {
            tracing::warn!(error = %e, "postgres refused the call's started row");
            true
        }
    }
}

fn call_event<'a>(
    job: &'a Job,
    m: &'a ModelConfig,
    outcome: &'static str,
    duration: Duration,
    usage: &'a Usage,
    cost_usd: Decimal,
) -> CallEvent<'a> {
    CallEvent {
        provider: &m.provider,
        model: &m.name,
        outcome,
        duration,
        usage,
        cost_usd,
        tenant: &job.tenant,
        feature: job.feature.as_deref(),
    }
}

/// Postgres cannot store U+0000: replace it in what a provider returned.
fn sanitize(o: &mut Output) {
    if let Some(c) = &mut o.content {
        if c.contains('\0') {
            *c = c.replace('\0', "\u{FFFD}");
        }
    }
    for call in &mut o.tool_calls {
        if call.function.arguments.contains('\0') {
            call.function.arguments = call.function.arguments.replace('\0', "\u{FFFD}");
        }
    }
}
