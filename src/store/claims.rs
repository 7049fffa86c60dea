//! Claiming jobs at the start of a delivery, many jobs per statement.
//!
//! A claim takes the job's lease (see [`super::leases`]) unless the job already
//! succeeded, another delivery holds a live lease on it, or this very message's failed
//! result is already committed. It returns what the caller needs for each case: the calls
//! of earlier deliveries (attempt numbers go on from them), the stored result to publish
//! again, or how long the other lease still runs.

use super::batch::{next_batch, Asker, Lanes};
use super::budgets::{lock_and_decide, write_held, ReserveOutcome, ReserveRequest, StartedRow};
use super::{parse_result, StoreError};
use crate::config::ModelConfig;
use crate::job::{Attempt, JobResult};
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub tenant: String,
    pub id: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub priority: &'static str,
    pub task: &'static str,
    pub requested_model: String,
    /// The lease this claim takes, from [`super::LeaseKeeper::new_token`].
    pub lease_token: String,
    /// The message being processed.
    pub stream_seq: u64,
    /// What the claim of a new job also does, in the same transaction.
    pub opening: Option<Opening>,
}

/// The rest of what a delivery writes before its first call, carried by its claim so
/// that the common delivery (a new job) waits for one transaction, not three: the
/// budget reservation, and the first call's `started` cost row (attempt 1). Only a job
/// claimed with no earlier delivery gets the started row (a redelivery's attempt number
/// follows its earlier calls: it writes its own), and only when its budget allows.
#[derive(Debug, Clone)]
pub struct Opening {
    /// Hold this much against the tenant's budgets (`None`: the tenant has none), as of
    /// this time.
    pub reserve: Option<(Decimal, DateTime<Utc>)>,
    /// The model of the first call (already admitted by the rate limits).
    pub first: Arc<ModelConfig>,
}

#[derive(Debug)]
pub enum ClaimOutcome {
    /// The lease is ours: run the job. `prior` lists the calls of earlier deliveries;
    /// `free_deliveries` the hand-backs that do not count against `max_deliveries`.
    Claimed {
        prior: Vec<Attempt>,
        free_deliveries: u32,
        /// What the [`Opening`] did: `None` without one.
        opened: Option<Opened>,
    },
    /// A committed succeeded result exists: publish it again, call nothing.
    Succeeded(Box<JobResult>),
    /// This message's failed result is committed already (its publish or ack was lost):
    /// publish it again, call nothing.
    Finished(Box<JobResult>),
    /// Another delivery holds a live lease; it runs out in about this long.
    Busy(Duration),
}

/// What a claim's [`Opening`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The reservation: `None` when no budget applies (or none was asked), else held or
    /// denied (then no started row either).
    pub reserved: ReserveOutcome,
    /// The first call's `started` row (attempt 1) is written.
    pub started: bool,
}

type Reply = super::batch::Reply<ClaimOutcome>;

#[derive(Clone)]
pub struct Claimer {
    asker: Asker<ClaimRequest, ClaimOutcome>,
}

impl Claimer {
    /// Start the claim loop; it ends when every `Claimer` clone is dropped.
    pub fn start(
        pool: PgPool,
        max_batch: usize,
        linger: Duration,
        lease: Duration,
    ) -> (Claimer, tokio::task::JoinHandle<()>) {
        let (asker, rx) = Asker::channel(max_batch);
        let handle = tokio::spawn(run(pool, rx, max_batch, linger, lease));
        (Claimer { asker }, handle)
    }

    pub async fn claim(&self, req: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.asker.ask(req).await
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<(ClaimRequest, Reply)>,
    max_batch: usize,
    linger: Duration,
    lease: Duration,
) {
    let mut carry: Vec<(ClaimRequest, Reply)> = Vec::new();
    let lanes = Lanes::default();
    loop {
        let mut batch = std::mem::take(&mut carry);
        if batch.is_empty() {
            match next_batch(&mut rx, max_batch, linger).await {
                Some(b) => batch = b,
                None => {
                    lanes.drain().await;
                    return;
                }
            }
        }
        // The same job twice in one statement cannot be upserted: defer the second (it
        // will find the first one's lease).
        let mut seen = HashSet::with_capacity(batch.len());
        let mut now = Vec::with_capacity(batch.len());
        for item in batch {
            if seen.insert((item.0.tenant.clone(), item.0.id.clone())) {
                now.push(item);
            } else {
                carry.push(item);
            }
        }
        let pool = pool.clone();
        lanes.run(claim_and_reply(pool, now, lease)).await;
    }
}

/// One batch: claim its jobs and answer each request.
async fn claim_and_reply(pool: PgPool, now: Vec<(ClaimRequest, Reply)>, lease: Duration) {
    // In (tenant, id) order, as every batch statement locks job rows (see the writer).
    let mut reqs: Vec<&ClaimRequest> = now.iter().map(|(r, _)| r).collect();
    reqs.sort_unstable_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
    match super::retry_conflicts(|| claim_batch(&pool, &reqs, lease)).await {
        Ok(mut found) => {
            for (req, reply) in now {
                let _ = reply.send(take(&mut found, &req));
            }
        }
        Err(e) if e.is_unavailable() || now.len() == 1 => {
            tracing::warn!(error = %e, jobs = now.len(), "claim failed");
            for (_, reply) in now {
                let _ = reply.send(Err(e.shared()));
            }
        }
        Err(e) => {
            // Postgres refused something in the batch: claim each job alone, so only
            // the job at fault fails.
            tracing::warn!(error = %e, jobs = now.len(), "claim batch refused; claiming one by one");
            for (req, reply) in now {
                let outcome = match claim_batch(&pool, &[&req], lease).await {
                    Ok(mut found) => take(&mut found, &req),
                    Err(e) => Err(e),
                };
                let _ = reply.send(outcome);
            }
        }
    }
}

/// tenant, id, claimed, status before, stored result, free deliveries, lease ms left,
/// earlier attempts
type ClaimRow = (
    String,
    String,
    bool,
    Option<String>,
    Option<serde_json::Value>,
    Option<i32>,
    Option<i64>,
    Option<serde_json::Value>,
);

type Found = HashMap<(String, String), Result<ClaimOutcome, StoreError>>;

/// What the claim found for `req`: a row only comes back when there is something to say;
/// none means a new job claimed, with no earlier calls.
fn take(found: &mut Found, req: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
    let fresh = || {
        Ok(ClaimOutcome::Claimed {
            prior: Vec::new(),
            free_deliveries: 0,
            opened: None,
        })
    };
    if found.is_empty() {
        return fresh();
    }
    found
        .remove(&(req.tenant.clone(), req.id.clone()))
        .unwrap_or_else(fresh)
}

const CLAIM_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::bigint[])
        AS x(tenant, id, feature, user_id, priority, task, requested_model, lease_token,
             stream_seq)
), prior AS (
    SELECT j.tenant, j.id, j.status, j.free_deliveries, j.lease_until,
           CASE WHEN j.status <> 'running' THEN j.result || jsonb_build_object('output', j.output) END AS result
      FROM jobs j JOIN input i ON j.tenant = i.tenant AND j.id = i.id
), up AS (
    INSERT INTO jobs (tenant, id, feature, user_id, priority, task, requested_model,
                      status, deliveries, started_at, lease_token, lease_until, stream_seq)
    SELECT tenant, id, feature, user_id, priority, task, requested_model, 'running', 1,
           now(), lease_token, now() + make_interval(secs => $10), stream_seq
      FROM input
    ON CONFLICT (tenant, id) DO UPDATE
       SET status = 'running', feature = EXCLUDED.feature, user_id = EXCLUDED.user_id,
           priority = EXCLUDED.priority, task = EXCLUDED.task,
           requested_model = EXCLUDED.requested_model, deliveries = jobs.deliveries + 1,
           started_at = now(), finished_at = NULL, error_kind = NULL, error_message = NULL,
           lease_token = EXCLUDED.lease_token, lease_until = EXCLUDED.lease_until
     WHERE jobs.status <> 'succeeded'
       -- The same token again: a retried claim whose first answer was lost.
       AND (jobs.lease_until IS NULL OR jobs.lease_until < now()
            OR jobs.lease_token = EXCLUDED.lease_token)
       AND NOT (jobs.status = 'failed' AND jobs.stream_seq = EXCLUDED.stream_seq)
    RETURNING tenant, id
), again AS (
    -- Jobs claimed before (a redelivery, a takeover): only they can have a dead
    -- delivery's calls or reservation. Driving the two statements below from this (empty
    -- for new jobs) keeps them on the primary keys, never a scan of the whole ledger.
    SELECT u.tenant, u.id FROM up u JOIN prior p ON p.tenant = u.tenant AND p.id = u.id
), lost AS (
    -- (This and the CTEs below run whether or not they are read, as every
    -- data-modifying WITH does.)
    -- Calls a dead delivery started and never finished: the provider may have billed them.
    UPDATE cost_rows c SET outcome = 'worker_lost',
           message = 'the worker died during this call; the provider may have billed it'
      FROM again u
     WHERE c.tenant = u.tenant AND c.job_id = u.id AND c.outcome = 'started'
    RETURNING 1
), stale AS (
    -- A budget reservation of an earlier lease on a job just claimed belongs to a dead
    -- delivery (this one reserves after its claim): give it back now, not at the sweep.
    DELETE FROM budget_reservations r USING again u
     WHERE r.tenant = u.tenant AND r.job_id = u.id
    RETURNING r.tenant, r.feature, r.amount_usd
), stale_agg AS (
    SELECT b.tenant, b.feature, b.period, sum(x.amount_usd) AS amount
      FROM budgets b JOIN stale x ON b.tenant = x.tenant AND (b.feature IS NULL OR b.feature = x.feature)
     GROUP BY b.tenant, b.feature, b.period
), stale_released AS (
    UPDATE budgets b SET reserved_usd = greatest(b.reserved_usd - a.amount, 0), updated_at = now()
      FROM stale_agg a
     WHERE b.tenant = a.tenant AND b.feature IS NOT DISTINCT FROM a.feature AND b.period = a.period
    RETURNING 1
)
SELECT i.tenant, i.id, (u.id IS NOT NULL) AS claimed, p.status,
       CASE WHEN u.id IS NULL THEN p.result END AS result,
       p.free_deliveries,
       (extract(epoch FROM (p.lease_until - now())) * 1000)::bigint AS lease_ms,
       CASE WHEN u.id IS NOT NULL AND p.id IS NOT NULL THEN (
           SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                      'attempt', c.attempt, 'provider', c.provider, 'model', c.model,
                      'outcome', CASE WHEN c.outcome = 'started' THEN 'worker_lost'
                                      ELSE c.outcome END,
                      'latency_ms', c.latency_ms,
                      'cost_usd', c.cost_usd::text, 'status', c.status_code,
                      'message', CASE WHEN c.outcome = 'started'
                                      THEN 'the worker died during this call; the provider may have billed it'
                                      ELSE c.message END)) ORDER BY c.attempt), '[]'::jsonb)
             FROM cost_rows c WHERE c.tenant = i.tenant AND c.job_id = i.id)
       END AS attempts
  FROM input i
  LEFT JOIN up u ON u.tenant = i.tenant AND u.id = i.id
  LEFT JOIN prior p ON p.tenant = i.tenant AND p.id = i.id
 -- A new job claimed (the common case) has nothing to say: no row comes back for it.
 WHERE u.id IS NULL OR p.id IS NOT NULL
"#;

async fn claim_batch(
    pool: &PgPool,
    reqs: &[&ClaimRequest],
    lease: Duration,
) -> Result<Found, StoreError> {
    let n = reqs.len();
    let mut tenant = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut feature = Vec::with_capacity(n);
    let mut user_id = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    let mut task = Vec::with_capacity(n);
    let mut requested_model = Vec::with_capacity(n);
    let mut lease_token = Vec::with_capacity(n);
    let mut stream_seq = Vec::with_capacity(n);
    for r in reqs {
        tenant.push(r.tenant.as_str());
        id.push(r.id.as_str());
        feature.push(r.feature.as_deref());
        user_id.push(r.user_id.as_deref());
        priority.push(r.priority);
        task.push(r.task);
        requested_model.push(r.requested_model.as_str());
        lease_token.push(r.lease_token.as_str());
        stream_seq.push(i64::try_from(r.stream_seq).unwrap_or(i64::MAX));
    }
    let opening = reqs.iter().any(|r| r.opening.is_some());
    let mut tx = if opening {
        Some(pool.begin().await.map_err(StoreError::classify)?)
    } else {
        None
    };
    let query = sqlx::query_as(CLAIM_SQL)
        .bind(tenant)
        .bind(id)
        .bind(feature)
        .bind(user_id)
        .bind(priority)
        .bind(task)
        .bind(requested_model)
        .bind(lease_token)
        .bind(stream_seq)
        .bind(lease.as_secs_f64());
    let rows: Vec<ClaimRow> = match &mut tx {
        Some(tx) => query.fetch_all(&mut **tx).await,
        None => query.fetch_all(pool).await,
    }
    .map_err(StoreError::classify)?;
    let mut found = Found::with_capacity(rows.len());
    for (tenant, id, claimed, status, result, free, lease_ms, attempts) in rows {
        let outcome = outcome_of(
            &tenant, &id, claimed, status, result, free, lease_ms, attempts,
        );
        found.insert((tenant, id), outcome);
    }
    if let Some(mut tx) = tx {
        open(&mut tx, reqs, &mut found).await?;
        tx.commit().await.map_err(StoreError::classify)?;
    }
    Ok(found)
}

/// The openings of the jobs just claimed, in the claim's transaction: reserve (the
/// budget rows locked after the job rows, as the commit does), then the `started` rows
/// of the new jobs whose budget allows them. Fills in `found` for every opening.
async fn open(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    reqs: &[&ClaimRequest],
    found: &mut Found,
) -> Result<(), StoreError> {
    // The claimed requests with an opening: new (no row came back) or claimed again.
    // Each with its key (made once: it also files the outcome in `found`).
    let mut claimed: Vec<(&ClaimRequest, &Opening, bool, (String, String))> = Vec::new();
    for r in reqs {
        let Some(o) = &r.opening else { continue };
        let key = (r.tenant.clone(), r.id.clone());
        match found.get(&key) {
            None => claimed.push((r, o, true, key)),
            Some(Ok(ClaimOutcome::Claimed { .. })) => claimed.push((r, o, false, key)),
            Some(_) => {}
        }
    }
    let asks: Vec<ReserveRequest> = claimed
        .iter()
        .filter_map(|(r, o, _, _)| {
            o.reserve.map(|(amount, now)| ReserveRequest {
                lease_token: r.lease_token.clone(),
                tenant: r.tenant.clone(),
                job_id: r.id.clone(),
                feature: r.feature.clone(),
                amount,
                now,
            })
        })
        .collect();
    let (mut decided, held) = if asks.is_empty() {
        (Vec::new(), Default::default())
    } else {
        lock_and_decide(tx, &asks).await?
    };
    // In the order of `claimed`: what each reservation came to.
    let mut decided = decided.drain(..);
    let outcomes: Vec<ReserveOutcome> = claimed
        .iter()
        .map(|(_, o, _, _)| match o.reserve {
            Some(_) => decided.next().flatten(),
            None => None,
        })
        .collect();
    let started: Vec<StartedRow<'_>> = claimed
        .iter()
        .zip(&outcomes)
        .filter(|((_, _, new, _), reserved)| *new && !matches!(reserved, Some(Err(_))))
        .map(|((r, o, _, _), _)| StartedRow {
            tenant: &r.tenant,
            job_id: &r.id,
            feature: r.feature.as_deref(),
            user_id: r.user_id.as_deref(),
            provider: &o.first.provider,
            model: &o.first.name,
        })
        .collect();
    let written: std::collections::HashSet<(String, String)> =
        write_held(tx, &held, &started).await?.into_iter().collect();
    for ((_, _, _, key), reserved) in claimed.into_iter().zip(outcomes) {
        let opened = Opened {
            started: written.contains(&key),
            reserved,
        };
        match found.get_mut(&key) {
            Some(Ok(ClaimOutcome::Claimed { opened: o, .. })) => *o = Some(opened),
            _ => {
                found.insert(
                    key,
                    Ok(ClaimOutcome::Claimed {
                        prior: Vec::new(),
                        free_deliveries: 0,
                        opened: Some(opened),
                    }),
                );
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn outcome_of(
    tenant: &str,
    id: &str,
    claimed: bool,
    status: Option<String>,
    result: Option<serde_json::Value>,
    free: Option<i32>,
    lease_ms: Option<i64>,
    attempts: Option<serde_json::Value>,
) -> Result<ClaimOutcome, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        tenant: tenant.to_string(),
        id: id.to_string(),
        message,
    };
    if claimed {
        let prior: Vec<Attempt> = attempts
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?
            .unwrap_or_default();
        return Ok(ClaimOutcome::Claimed {
            prior,
            free_deliveries: free.unwrap_or(0).max(0) as u32,
            opened: None,
        });
    }
    match (status.as_deref(), result) {
        (Some("succeeded"), Some(v)) => {
            parse_result(tenant, id, v).map(|r| ClaimOutcome::Succeeded(Box::new(r)))
        }
        (Some("failed"), Some(v)) => {
            parse_result(tenant, id, v).map(|r| ClaimOutcome::Finished(Box::new(r)))
        }
        (Some("succeeded" | "failed"), None) => {
            Err(corrupt("finished without a stored result".into()))
        }
        _ => {
            let left = lease_ms.unwrap_or(500).clamp(0, 3_600_000) as u64;
            Ok(ClaimOutcome::Busy(Duration::from_millis(left)))
        }
    }
}
