//! Calling the candidates in order until one answers: rate limit, call, and one attempt
//! and one cost row per call made, failed ones included.

use super::Ctx;
use crate::config::ModelConfig;
use crate::cost::cost_of;
use crate::job::{Attempt, Job, Output};
use crate::providers::{ChatRequest, ChatResponse, FailureClass};
use crate::ratelimit::Admission;
use crate::router::Plan;
use crate::store::CostRow;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ChainOutcome {
    /// The calls made now, numbered on from the earlier deliveries'.
    pub attempts: Vec<Attempt>,
    pub costs: Vec<CostRow>,
    pub success: Option<(ChatResponse, Arc<ModelConfig>)>,
    /// Some candidate failed in a way that may pass later (429, 5xx, timeout, local limit).
    pub transient: bool,
    /// The longest delay a provider asked for.
    pub retry_after: Option<Duration>,
    /// Every call failed because the input was too long.
    pub all_context_too_long: bool,
}

pub async fn run_chain(
    ctx: &Ctx,
    job: &Job,
    plan: &Plan,
    input_estimate: u64,
    first_attempt: u32,
) -> ChainOutcome {
    let mut out = ChainOutcome {
        attempts: Vec::new(),
        costs: Vec::new(),
        success: None,
        transient: false,
        retry_after: None,
        all_context_too_long: true,
    };
    let max_wait = Duration::from_millis(ctx.cfg.worker.max_limiter_wait_ms);
    let mut attempt = first_attempt;
    for cand in &plan.candidates {
        let m = &cand.model;
        let Some(adapter) = ctx.providers.get(&m.provider) else {
            continue;
        };
        let want_tokens = input_estimate + u64::from(cand.max_tokens);
        if let Admission::Wait(d) = ctx
            .limiters
            .admit(&m.provider, &m.upstream, want_tokens, max_wait)
            .await
        {
            tracing::debug!(provider = %m.provider, wait_ms = d.as_millis() as u64, "rate limited locally; next candidate");
            out.transient = true;
            out.all_context_too_long = false;
            out.retry_after = Some(out.retry_after.map_or(d, |r| r.min(d)));
            continue;
        }
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
        let started = Instant::now();
        let result = adapter.chat(req).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let reading = match &result {
            Ok(r) => r.rate.as_ref(),
            Err(e) => e.rate.as_deref(),
        };
        ctx.limiters.observe(&m.provider, &m.upstream, reading);
        let mut row = CostRow {
            tenant: job.tenant.clone(),
            job_id: job.id.clone(),
            attempt,
            feature: job.feature.clone(),
            user_id: job.user.clone(),
            provider: m.provider.clone(),
            model: m.name.clone(),
            outcome: String::new(),
            status_code: None,
            input_tokens: 0,
            cached_input_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            cost_usd: Decimal::ZERO,
            latency_ms,
            message: None,
        };
        attempt += 1;
        match result {
            Ok(mut resp) => {
                sanitize(&mut resp.output);
                let cost = cost_of(m, &resp.usage);
                row.outcome = "succeeded".into();
                row.status_code = Some(200);
                row.input_tokens = resp.usage.input_tokens;
                row.cached_input_tokens = resp.usage.cached_input_tokens;
                row.output_tokens = resp.usage.output_tokens;
                row.reasoning_tokens = resp.usage.reasoning_tokens;
                row.cost_usd = cost;
                let nano = (cost * Decimal::from(1_000_000_000u64))
                    .trunc()
                    .to_u64()
                    .unwrap_or(0);
                ctx.metrics
                    .call(&m.provider, &m.name, "succeeded", started.elapsed(), nano);
                out.attempts.push(attempt_of(&row));
                out.costs.push(row);
                out.all_context_too_long = false;
                out.success = Some((resp, m.clone()));
                return out;
            }
            Err(e) => {
                tracing::info!(provider = %m.provider, model = %m.name, outcome = e.class.as_str(),
                    status = e.status, latency_ms, "provider call failed");
                ctx.metrics
                    .call(&m.provider, &m.name, e.class.as_str(), started.elapsed(), 0);
                row.outcome = e.class.as_str().to_string();
                row.status_code = e.status;
                row.message = Some(e.message.clone());
                out.attempts.push(attempt_of(&row));
                out.costs.push(row);
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

pub fn attempt_of(row: &CostRow) -> Attempt {
    Attempt {
        attempt: row.attempt,
        provider: row.provider.clone(),
        model: row.model.clone(),
        outcome: row.outcome.clone(),
        latency_ms: row.latency_ms,
        cost_usd: row.cost_usd,
        status: row.status_code,
        message: row.message.clone(),
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
