//! One delivery of one job, start to end: parse, claim, route, call, commit, publish.
//! Every path returns a [`Disposition`]; every terminal path commits first.

use super::calls::{run_chain, ChainOutcome};
use super::{Ctx, Delivery, Disposition};
use crate::budget::{Denial, Reservation};
use crate::job::{
    parse_job, Attempt, Envelope, ErrorBody, ErrorKind, Job, JobResult, ParseFailure, Route,
    Status, Usage,
};
use crate::queue::publish::DlqEntry;
use crate::store::{ClaimOutcome, ClaimRequest, CommitJob, CommitRequest, CostRow};
use crate::tokens::estimate_input_tokens;
use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use rust_decimal::Decimal;
use std::time::Duration;
use tracing::Instrument;

pub(super) async fn process(ctx: &Ctx, d: Delivery, msg: &async_nats::Message) -> Disposition {
    let parsed = match parse_job(&msg.payload, msg.subject.as_str(), d.stream_seq, &ctx.rules) {
        Ok(p) => p,
        Err(f) => {
            let span = tracing::info_span!("job", tenant = %f.envelope.tenant, id = %f.envelope.id);
            return fail_unparsed(ctx, d, msg, *f).instrument(span).await;
        }
    };
    let span = tracing::info_span!("job", tenant = %parsed.job.tenant, id = %parsed.job.id,
        priority = %d.priority, delivery = d.delivered);
    run(ctx, d, msg, parsed.job, parsed.envelope)
        .instrument(span)
        .await
}

async fn run(
    ctx: &Ctx,
    d: Delivery,
    msg: &async_nats::Message,
    job: Job,
    env: Envelope,
) -> Disposition {
    let claim = ctx
        .claimer
        .claim(ClaimRequest {
            tenant: job.tenant.clone(),
            id: job.id.clone(),
            feature: job.feature.clone(),
            user_id: job.user.clone(),
            priority: d.priority.as_str().to_string(),
            task: job.task.as_str().to_string(),
            requested_model: job.model.clone(),
        })
        .await;
    let prior = match claim {
        Ok(ClaimOutcome::Succeeded(stored)) => {
            // Already done: publish the stored result again (to this message's reply_to).
            tracing::info!("already succeeded; publishing the stored result again");
            ctx.metrics.republished();
            return match ctx
                .publisher
                .result_of(&stored, job.reply_to.as_deref())
                .await
            {
                Ok(()) => Disposition::Ack,
                Err(e) => {
                    tracing::warn!(error = %e, "republish failed");
                    Disposition::Retry(retry_delay(ctx, d.delivered, None))
                }
            };
        }
        Ok(ClaimOutcome::Run { prior }) => prior,
        Err(e) => {
            tracing::warn!(error = %e, "claim failed; handing the job back");
            return Disposition::Retry(retry_delay(ctx, d.delivered, None));
        }
    };
    let base = Finish {
        d,
        env: &env,
        job: Some(&job),
        route: None,
        prior: &prior,
        dlq: Some(DlqSource {
            job_json: None,
            raw: &msg.payload,
            subject: msg.subject.as_str(),
            raw_in_entry: false,
        }),
        reservation: None,
    };
    if let Some(deadline) = job.deadline {
        if chrono::Utc::now() > deadline {
            let err = ErrorBody::new(
                ErrorKind::Expired,
                format!(
                    "deadline {} passed before the job started",
                    deadline.to_rfc3339()
                ),
            );
            return fail(ctx, base, err, Vec::new()).await;
        }
    }
    let estimate = estimate_input_tokens(&job);
    let plan = match ctx.router.plan(&job, estimate) {
        Ok(p) => p,
        Err(err) => return fail(ctx, base, err, Vec::new()).await,
    };
    // Hold the worst case against the tenant's budgets before any call.
    let worst = plan
        .candidates
        .iter()
        .map(|c| crate::cost::worst_case(&c.model, estimate, c.max_tokens))
        .max()
        .unwrap_or_default();
    let reservation = match ctx
        .budgets
        .reserve(&job.tenant, job.feature.as_deref(), worst)
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(Denial::Fail(msg))) => {
            let base = Finish {
                route: Some(plan.route.clone()),
                ..base
            };
            return fail(
                ctx,
                base,
                ErrorBody::new(ErrorKind::BudgetExceeded, msg),
                Vec::new(),
            )
            .await;
        }
        Ok(Err(Denial::Defer(msg, delay))) => {
            tracing::info!(delay_s = delay.as_secs(), reason = %msg, "budget reached; deferring");
            return Disposition::Retry(delay);
        }
        Err(e) => {
            tracing::warn!(error = %e, "budget reservation failed; handing the job back");
            return Disposition::Retry(retry_delay(ctx, d.delivered, None));
        }
    };
    let base = Finish {
        route: Some(plan.route.clone()),
        reservation,
        ..base
    };
    let first_attempt = prior.iter().map(|a| a.attempt).max().unwrap_or(0) + 1;
    let outcome = run_chain(ctx, &job, &plan, estimate, first_attempt).await;
    let ChainOutcome {
        attempts,
        costs,
        success,
        transient,
        retry_after,
        all_context_too_long,
    } = outcome;
    if let Some((resp, model)) = success {
        let all: Vec<Attempt> = prior.iter().cloned().chain(attempts).collect();
        let cost_usd: Decimal = all.iter().map(|a| a.cost_usd).sum();
        let result = JobResult {
            id: job.id.clone(),
            tenant: job.tenant.clone(),
            feature: job.feature.clone(),
            status: Status::Succeeded,
            output: Some(resp.output),
            provider: Some(model.provider.clone()),
            model: Some(model.name.clone()),
            usage: resp.usage,
            cost_usd,
            route: base.route.clone(),
            attempts: all,
            cache_hit: false,
            queued_ms: d.queued.as_millis() as u64,
            latency_ms: d.received.elapsed().as_millis() as u64,
            error: None,
            metadata: job.metadata.clone(),
        };
        return finish(ctx, &base, result, costs).await;
    }
    let last = attempts
        .iter()
        .rev()
        .find_map(|a| {
            a.message
                .as_ref()
                .map(|m| format!("{}/{}: {} ({m})", a.provider, a.model, a.outcome))
        })
        .unwrap_or_else(|| "every candidate was rate limited locally".into());
    if transient && d.delivered < u64::from(ctx.cfg.worker.max_deliveries) {
        // Keep the calls made so far, then hand the job back for a later delivery.
        let delay = retry_delay(ctx, d.delivered, retry_after);
        tracing::info!(delay_ms = delay.as_millis() as u64, last = %last, "all candidates failed; retrying later");
        let actual: Decimal = costs.iter().map(|c| c.cost_usd).sum();
        let settle = base.reservation.clone().map(|r| r.settle(actual));
        if !costs.is_empty() || settle.is_some() {
            if let Err(e) = ctx
                .writer
                .commit(CommitRequest {
                    job: None,
                    costs,
                    settle,
                })
                .await
            {
                tracing::warn!(error = %e, "committing cost rows before a retry failed");
            }
        }
        return Disposition::Retry(delay);
    }
    let err = if transient {
        ErrorBody::new(
            ErrorKind::ProvidersExhausted,
            format!(
                "{} deliveries, every candidate failed; last: {last}",
                d.delivered
            ),
        )
    } else if all_context_too_long && !attempts.is_empty() {
        ErrorBody::new(
            ErrorKind::ContextTooLong,
            format!("every provider refused the input as too long; last: {last}"),
        )
    } else if attempts.is_empty() {
        ErrorBody::new(
            ErrorKind::NoRoute,
            "no candidate has a usable provider adapter",
        )
    } else {
        ErrorBody::new(
            ErrorKind::ProviderRejected,
            format!("every candidate rejected the request; last: {last}"),
        )
    };
    let all_new = attempts;
    fail(ctx, base, err, pair(all_new, costs)).await
}

fn pair(attempts: Vec<Attempt>, costs: Vec<CostRow>) -> Vec<(Attempt, CostRow)> {
    attempts.into_iter().zip(costs).collect()
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

struct Finish<'a> {
    d: Delivery,
    env: &'a Envelope,
    job: Option<&'a Job>,
    route: Option<Route>,
    prior: &'a [Attempt],
    dlq: Option<DlqSource<'a>>,
    /// Budget held for this job, settled by the commit.
    reservation: Option<Reservation>,
}

async fn fail_unparsed(
    ctx: &Ctx,
    d: Delivery,
    msg: &async_nats::Message,
    f: ParseFailure,
) -> Disposition {
    tracing::info!(kind = %f.error.kind, message = %f.error.message, "job refused");
    let base = Finish {
        d,
        env: &f.envelope,
        job: None,
        route: None,
        prior: &[],
        dlq: Some(DlqSource {
            job_json: f.job_json.as_ref(),
            raw: &msg.payload,
            subject: msg.subject.as_str(),
            raw_in_entry: true,
        }),
        reservation: None,
    };
    fail(ctx, base, f.error.clone(), Vec::new()).await
}

async fn fail(
    ctx: &Ctx,
    base: Finish<'_>,
    error: ErrorBody,
    calls: Vec<(Attempt, CostRow)>,
) -> Disposition {
    let (new_attempts, costs): (Vec<Attempt>, Vec<CostRow>) = calls.into_iter().unzip();
    let all: Vec<Attempt> = base.prior.iter().cloned().chain(new_attempts).collect();
    let cost_usd: Decimal = all.iter().map(|a| a.cost_usd).sum();
    let env = base.env;
    let result = JobResult {
        id: env.id.clone(),
        tenant: env.tenant.clone(),
        feature: base
            .job
            .map_or_else(|| env.feature.clone(), |j| j.feature.clone()),
        status: Status::Failed,
        output: None,
        provider: None,
        model: None,
        usage: Usage::default(),
        cost_usd,
        route: base.route.clone(),
        attempts: all,
        cache_hit: false,
        queued_ms: base.d.queued.as_millis() as u64,
        latency_ms: base.d.received.elapsed().as_millis() as u64,
        error: Some(error),
        metadata: base
            .job
            .map_or_else(|| env.metadata.clone(), |j| j.metadata.clone()),
    };
    finish(ctx, &base, result, costs).await
}

/// Commit, dead-letter when failed, publish, then ack.
async fn finish(
    ctx: &Ctx,
    base: &Finish<'_>,
    result: JobResult,
    costs: Vec<CostRow>,
) -> Disposition {
    let d = base.d;
    let retry = || Disposition::Retry(retry_delay(ctx, d.delivered, None));
    // Encode once: the same bytes go to Postgres and to NATS.
    let result_raw = match serde_json::value::to_raw_value(&result) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "result does not encode");
            return retry();
        }
    };
    let body = bytes::Bytes::copy_from_slice(result_raw.get().as_bytes());
    let job = base.job;
    let row = CommitJob {
        tenant: result.tenant.clone(),
        id: result.id.clone(),
        feature: result.feature.clone(),
        user_id: job
            .and_then(|j| j.user.clone())
            .or_else(|| base.env.user.clone()),
        priority: d.priority.as_str().to_string().into(),
        task: job.map(|j| j.task.as_str().to_string()),
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
        result: result_raw,
    };
    let actual: Decimal = costs.iter().map(|c| c.cost_usd).sum();
    let settle = base.reservation.clone().map(|r| r.settle(actual));
    let commit = CommitRequest {
        job: Some(row),
        costs,
        settle,
    };
    if let Err(e) = ctx.writer.commit(commit).await {
        tracing::warn!(error = %e, "commit failed; handing the job back");
        return retry();
    }
    if let (Status::Failed, Some(src), Some(err)) = (result.status, base.dlq, result.error.as_ref())
    {
        let job_json = match (src.job_json, job) {
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
            deliveries: d.delivered,
            failed_at: chrono::Utc::now(),
            truncated: false,
        };
        if let Err(e) = ctx
            .publisher
            .dead_letter(&result.tenant, &result.id, &entry, src.raw)
            .await
        {
            tracing::warn!(error = %e, "dead letter failed; handing the job back");
            return retry();
        }
    }
    if let Err(e) = ctx
        .publisher
        .result(&result, body, base.env.reply_to.as_deref())
        .await
    {
        tracing::warn!(error = %e, "publishing the result failed; handing the job back");
        return retry();
    }
    tracing::debug!(status = result.status.as_str(), cost_usd = %result.cost_usd, "job done");
    ctx.metrics.job_finished(
        d.priority.as_str(),
        result.status.as_str(),
        result.error.as_ref().map_or("", |e| e.kind.as_str()),
        d.received.elapsed(),
    );
    Disposition::Ack
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

pub fn backoff_delay(
    base: Duration,
    max: Duration,
    delivered: u64,
    retry_after: Option<Duration>,
) -> Duration {
    let n = delivered.clamp(1, 64) as usize;
    let mut schedule = ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(n)
        .build();
    let computed = schedule.nth(n - 1).unwrap_or(max);
    computed.max(retry_after.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::backoff_delay;
    use std::time::Duration;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for delivered in 1..=20u64 {
            let d = backoff_delay(base, max, delivered, None);
            let floor = base * 2u32.pow((delivered - 1).min(10) as u32);
            assert!(
                d >= floor.min(max),
                "delivery {delivered}: {d:?} < {floor:?}"
            );
            assert!(
                d <= max * 2,
                "delivery {delivered}: {d:?} above cap with jitter"
            );
        }
        let d = backoff_delay(base, max, 1, Some(Duration::from_secs(30)));
        assert_eq!(d, Duration::from_secs(30));
    }
}
