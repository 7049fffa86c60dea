//! The end of a delivery: commit its rows (with the retry that keeps a refusal from
//! repeating a call), publish the result and dead letter, and what is acked. Every
//! terminal path of [`super`] ends here.

use super::*;

/// Commit the final row (retried in place while Postgres is away), then dead-letter when
/// failed, publish, ack. `None`: the lease was lost, another delivery owns the job.
pub(super) async fn finish(
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
    let landed = encoded.is_some();
    let disposition = Box::pin(deliver(ctx, s, &result, encoded)).await;
    // Shadow evaluation: after the result is committed and published, never before.
    if landed && !ctx.cfg.shadow.routes.is_empty() {
        if let Some(job) = s.job {
            ctx.shadow.offer(ctx, job, &result);
        }
    }
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
        cache_source: cache.source_job,
    })
}

pub(in crate::worker) enum CommitFailed {
    Stopping,
    Refused(StoreError, Box<CommitRequest>),
}

/// Commit, retried in place (with backoff, the message kept alive) while Postgres is
/// away: a provider call already made is never repeated because our commit failed.
/// `Ok(landed)`: whether the final row landed.
pub(in crate::worker) async fn commit(
    ctx: &Ctx,
    mut req: CommitRequest,
) -> Result<bool, CommitFailed> {
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
pub(super) async fn deliver(
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
