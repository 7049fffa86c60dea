//! Group commit: the final `jobs` rows and the `cost_rows` of many jobs in one
//! transaction. A job is acknowledged only after the transaction holding its rows commits.

use super::batch::next_batch;
use super::StoreError;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A job's final row (`status` succeeded or failed).
#[derive(Debug, Clone, Serialize)]
pub struct CommitJob {
    pub tenant: String,
    pub id: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub priority: Option<String>,
    pub task: Option<String>,
    pub requested_model: Option<String>,
    pub status: &'static str,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Decimal,
    pub error_kind: Option<&'static str>,
    pub error_message: Option<String>,
    /// The published result; `jobs.output` is taken from its `output` by Postgres.
    pub result: Box<serde_json::value::RawValue>,
}

/// One provider call.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    pub tenant: String,
    pub job_id: String,
    pub attempt: u32,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub outcome: String,
    pub status_code: Option<u16>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_usd: Decimal,
    pub latency_ms: u64,
    pub message: Option<String>,
}

/// What one job commits: its cost rows, and its final row unless it will be retried.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    pub job: Option<CommitJob>,
    pub costs: Vec<CostRow>,
    /// Release the job's budget reservation and add what it actually cost.
    pub settle: Option<crate::budget::Settlement>,
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(CommitRequest, Reply)>,
}

impl Writer {
    /// Start the commit loop; it drains and ends when every `Writer` clone is dropped.
    pub fn start(
        pool: PgPool,
        max_batch: usize,
        linger: Duration,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let handle = tokio::spawn(run(pool, rx, max_batch, linger));
        (Writer { tx }, handle)
    }

    /// Commit, and return once the rows are durable.
    pub async fn commit(&self, req: CommitRequest) -> Result<(), StoreError> {
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
    mut rx: mpsc::Receiver<(CommitRequest, Reply)>,
    max_batch: usize,
    linger: Duration,
) {
    while let Some(batch) = next_batch(&mut rx, max_batch, linger).await {
        let (reqs, replies): (Vec<CommitRequest>, Vec<Reply>) = batch.into_iter().unzip();
        let result = commit_batch(&pool, reqs).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, jobs = replies.len(), "group commit failed");
        }
        for reply in replies {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Db(sqlx::Error::Protocol(e.to_string()))),
            });
        }
    }
}

const COSTS_SQL: &str = r#"
INSERT INTO cost_rows (tenant, job_id, attempt, feature, user_id, provider, model, outcome,
                       status_code, input_tokens, cached_input_tokens, output_tokens,
                       reasoning_tokens, cost_usd, latency_ms, message)
SELECT tenant, job_id, attempt, feature, user_id, provider, model, outcome, status_code,
       input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_usd,
       latency_ms, message
  FROM jsonb_to_recordset($1::jsonb) AS x(
       tenant text, job_id text, attempt integer, feature text, user_id text, provider text,
       model text, outcome text, status_code integer, input_tokens bigint,
       cached_input_tokens bigint, output_tokens bigint, reasoning_tokens bigint,
       cost_usd numeric, latency_ms bigint, message text)
ON CONFLICT (tenant, job_id, attempt) DO NOTHING
"#;

const JOBS_SQL: &str = r#"
INSERT INTO jobs AS j (tenant, id, feature, user_id, priority, task, requested_model, status,
                  provider, model, input_tokens, cached_input_tokens, output_tokens, cost_usd,
                  error_kind, error_message, output, result, deliveries, started_at, finished_at)
SELECT tenant, id, feature, user_id, priority, task, requested_model, status, provider, model,
       input_tokens, cached_input_tokens, output_tokens, cost_usd, error_kind, error_message,
       nullif(result -> 'output', 'null'::jsonb), result, 1, now(), now()
  FROM jsonb_to_recordset($1::jsonb) AS x(
       tenant text, id text, feature text, user_id text, priority text, task text,
       requested_model text, status text, provider text, model text, input_tokens bigint,
       cached_input_tokens bigint, output_tokens bigint, cost_usd numeric, error_kind text,
       error_message text, result jsonb)
ON CONFLICT (tenant, id) DO UPDATE
   SET status = EXCLUDED.status, provider = EXCLUDED.provider, model = EXCLUDED.model,
       input_tokens = EXCLUDED.input_tokens, cached_input_tokens = EXCLUDED.cached_input_tokens,
       output_tokens = EXCLUDED.output_tokens, cost_usd = EXCLUDED.cost_usd,
       error_kind = EXCLUDED.error_kind, error_message = EXCLUDED.error_message,
       output = EXCLUDED.output, result = EXCLUDED.result, finished_at = now(),
       feature = coalesce(j.feature, EXCLUDED.feature), user_id = coalesce(j.user_id, EXCLUDED.user_id),
       priority = coalesce(EXCLUDED.priority, j.priority), task = coalesce(EXCLUDED.task, j.task),
       requested_model = coalesce(EXCLUDED.requested_model, j.requested_model)
 WHERE j.status <> 'succeeded'
"#;

async fn commit_batch(pool: &PgPool, reqs: Vec<CommitRequest>) -> Result<(), StoreError> {
    let mut costs = Vec::new();
    let mut settles = Vec::new();
    // One final row per job per statement: the last one wins (a duplicate submission in the
    // same batch; both results are still published).
    let mut jobs: HashMap<(String, String), CommitJob> = HashMap::with_capacity(reqs.len());
    for r in reqs {
        costs.extend(r.costs);
        settles.extend(r.settle);
        if let Some(j) = r.job {
            jobs.insert((j.tenant.clone(), j.id.clone()), j);
        }
    }
    let jobs: Vec<CommitJob> = jobs.into_values().collect();
    let mut tx = pool.begin().await?;
    if !costs.is_empty() {
        sqlx::query(COSTS_SQL)
            .bind(sqlx::types::Json(&costs))
            .execute(&mut *tx)
            .await?;
    }
    if !jobs.is_empty() {
        sqlx::query(JOBS_SQL)
            .bind(sqlx::types::Json(&jobs))
            .execute(&mut *tx)
            .await?;
    }
    if !settles.is_empty() {
        sqlx::query(crate::budget::SETTLE_SQL)
            .bind(sqlx::types::Json(&settles))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
