//! Claiming jobs at the start of a delivery, many jobs per statement.
//!
//! One statement marks each job `running` (unless it already succeeded) and returns, for
//! every job that has a row already, its stored result (succeeded: publish it again, make
//! no call) or the provider calls of its earlier deliveries (so attempt numbers go on and
//! the DLQ entry can list every call).

use super::batch::next_batch;
use super::{parse_result, StoreError};
use crate::job::{Attempt, JobResult};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Serialize)]
pub struct ClaimRequest {
    pub tenant: String,
    pub id: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub priority: String,
    pub task: String,
    pub requested_model: String,
}

#[derive(Debug)]
pub enum ClaimOutcome {
    /// A committed succeeded result exists: publish it again, call nothing.
    Succeeded(Box<JobResult>),
    /// Run it; `prior` lists the calls of earlier deliveries.
    Run { prior: Vec<Attempt> },
}

type Reply = oneshot::Sender<Result<ClaimOutcome, StoreError>>;

#[derive(Clone)]
pub struct Claimer {
    tx: mpsc::Sender<(ClaimRequest, Reply)>,
}

impl Claimer {
    /// Start the claim loop; it ends when every `Claimer` clone is dropped.
    pub fn start(
        pool: PgPool,
        max_batch: usize,
        linger: Duration,
    ) -> (Claimer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let handle = tokio::spawn(run(pool, rx, max_batch, linger));
        (Claimer { tx }, handle)
    }

    pub async fn claim(&self, req: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<(ClaimRequest, Reply)>,
    max_batch: usize,
    linger: Duration,
) {
    let mut carry: Vec<(ClaimRequest, Reply)> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut carry);
        if batch.is_empty() {
            match next_batch(&mut rx, max_batch, linger).await {
                Some(b) => batch = b,
                None => return,
            }
        }
        // The same job twice in one statement cannot be upserted: defer the second.
        let mut seen = HashSet::with_capacity(batch.len());
        let mut now = Vec::with_capacity(batch.len());
        for item in batch {
            if seen.insert((item.0.tenant.clone(), item.0.id.clone())) {
                now.push(item);
            } else {
                carry.push(item);
            }
        }
        let reqs: Vec<&ClaimRequest> = now.iter().map(|(r, _)| r).collect();
        match claim_batch(&pool, &reqs).await {
            Ok(mut found) => {
                for (req, reply) in now {
                    let outcome = match found.remove(&(req.tenant.clone(), req.id.clone())) {
                        Some(Ok(o)) => Ok(o),
                        Some(Err(e)) => Err(e),
                        None => Ok(ClaimOutcome::Run { prior: Vec::new() }),
                    };
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, jobs = now.len(), "claim batch failed");
                for (_, reply) in now {
                    let _ = reply.send(Err(StoreError::Db(sqlx::Error::Protocol(msg.clone()))));
                }
            }
        }
    }
}

/// tenant, id, status, stored result, earlier attempts
type ClaimRow = (
    String,
    String,
    String,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
);

type Found = std::collections::HashMap<(String, String), Result<ClaimOutcome, StoreError>>;

const CLAIM_SQL: &str = r#"
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(
        tenant text, id text, feature text, user_id text, priority text, task text,
        requested_model text)
), prior AS (
    SELECT j.tenant, j.id, j.status, j.result
      FROM jobs j JOIN input i ON j.tenant = i.tenant AND j.id = i.id
), up AS (
    INSERT INTO jobs (tenant, id, feature, user_id, priority, task, requested_model,
                      status, deliveries, started_at)
    SELECT tenant, id, feature, user_id, priority, task, requested_model, 'running', 1, now()
      FROM input
    ON CONFLICT (tenant, id) DO UPDATE
       SET status = 'running', feature = EXCLUDED.feature, user_id = EXCLUDED.user_id,
           priority = EXCLUDED.priority, task = EXCLUDED.task,
           requested_model = EXCLUDED.requested_model, deliveries = jobs.deliveries + 1,
           started_at = now(), finished_at = NULL, error_kind = NULL, error_message = NULL
     WHERE jobs.status <> 'succeeded'
    RETURNING 1
)
SELECT p.tenant, p.id, p.status, p.result,
       CASE WHEN p.status = 'succeeded' THEN NULL ELSE (
           SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                      'attempt', c.attempt, 'provider', c.provider, 'model', c.model,
                      'outcome', c.outcome, 'latency_ms', c.latency_ms,
                      'cost_usd', c.cost_usd::text, 'status', c.status_code,
                      'message', c.message)) ORDER BY c.attempt), '[]'::jsonb)
             FROM cost_rows c WHERE c.tenant = p.tenant AND c.job_id = p.id)
       END AS attempts
  FROM prior p
"#;

async fn claim_batch(pool: &PgPool, reqs: &[&ClaimRequest]) -> Result<Found, StoreError> {
    let rows: Vec<ClaimRow> = sqlx::query_as(CLAIM_SQL)
        .bind(sqlx::types::Json(reqs))
        .fetch_all(pool)
        .await?;
    let mut found = Found::with_capacity(rows.len());
    for (tenant, id, status, result, attempts) in rows {
        let outcome = if status == "succeeded" {
            match result {
                Some(v) => {
                    parse_result(&tenant, &id, v).map(|r| ClaimOutcome::Succeeded(Box::new(r)))
                }
                None => Err(StoreError::Corrupt {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    message: "succeeded without a stored result".into(),
                }),
            }
        } else {
            let prior: Vec<Attempt> = attempts
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| StoreError::Corrupt {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    message: e.to_string(),
                })?
                .unwrap_or_default();
            Ok(ClaimOutcome::Run { prior })
        };
        found.insert((tenant, id), outcome);
    }
    Ok(found)
}
