//! What the operator console (`crate::console`) reads from Postgres beyond the reports
//! and dead-letter queries it shares with the CLI: the last hour's throughput (in total and
//! by five minutes), job search
//! (keyset-paged, newest first), one job's row and its provider calls (`cost_rows`).

use super::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

/// Jobs finished since a time, by status, and the failures by error kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Throughput {
    pub succeeded: i64,
    pub failed: i64,
    /// Jobs whose row is `running` now (any age).
    pub running: i64,
    pub failures_by_kind: Vec<(String, i64)>,
    pub cost_usd: Decimal,
    /// (succeeded, failed) per [`BUCKETS`]th of the time since, oldest first.
    pub buckets: Vec<(i64, i64)>,
}

/// How many slices [`throughput`] cuts its span into.
pub const BUCKETS: usize = 12;

pub async fn throughput(pool: &PgPool, since: DateTime<Utc>) -> Result<Throughput, StoreError> {
    let r = sqlx::query(
        "SELECT count(*) FILTER (WHERE status = 'succeeded' AND finished_at >= $1) AS succeeded,
                count(*) FILTER (WHERE status = 'failed' AND finished_at >= $1) AS failed,
                count(*) FILTER (WHERE status = 'running') AS running,
                coalesce(sum(cost_usd) FILTER (WHERE finished_at >= $1), 0) AS cost_usd
           FROM jobs WHERE finished_at >= $1 OR status = 'running'",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    let kinds = sqlx::query(
        "SELECT coalesce(error_kind, '') AS kind, count(*) AS n FROM jobs
          WHERE status = 'failed' AND finished_at >= $1 GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut failures_by_kind = Vec::with_capacity(kinds.len());
    for k in kinds {
        failures_by_kind.push((k.try_get("kind")?, k.try_get("n")?));
    }
    let slices = sqlx::query(
        "SELECT least(floor(extract(epoch FROM finished_at - $1)
                      / greatest(extract(epoch FROM now() - $1), 1) * $2)::int, $2 - 1) AS b,
                count(*) FILTER (WHERE status = 'succeeded') AS ok,
                count(*) FILTER (WHERE status = 'failed') AS failed
           FROM jobs WHERE finished_at >= $1 GROUP BY 1",
    )
    .bind(since)
    .bind(BUCKETS as i32)
    .fetch_all(pool)
    .await?;
    let mut buckets = vec![(0, 0); BUCKETS];
    for r in slices {
        let b: i32 = r.try_get("b")?;
        if let Some(slot) = usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) {
            *slot = (r.try_get("ok")?, r.try_get("failed")?);
        }
    }
    Ok(Throughput {
        succeeded: r.try_get("succeeded")?,
        failed: r.try_get("failed")?,
        running: r.try_get("running")?,
        failures_by_kind,
        cost_usd: r.try_get("cost_usd")?,
        buckets,
    })
}

/// A job search; `None` matches anything. Times bound `created_at`.
#[derive(Debug, Clone, Default)]
pub struct JobSearch {
    pub tenant: Option<String>,
    /// An id, or an id prefix ending in `*`.
    pub id: Option<String>,
    pub feature: Option<String>,
    pub status: Option<String>,
    pub error_kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Keyset paging: only jobs after this one in the order (created_at desc, tenant, id).
    pub after: Option<JobCursor>,
    pub limit: i64,
}

/// Where a page ended: the last job's `(created_at, tenant, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub tenant: String,
    pub id: String,
}

/// One job as the console lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobSummary {
    pub tenant: String,
    pub id: String,
    pub feature: Option<String>,
    pub status: String,
    pub priority: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub cost_usd: Decimal,
    pub error_kind: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Up to `limit` jobs that match, newest first; a page ends where the cursor says.
pub async fn search_jobs(pool: &PgPool, q: &JobSearch) -> Result<Vec<JobSummary>, StoreError> {
    let (id_exact, id_prefix) = match q.id.as_deref() {
        Some(id) => match id.strip_suffix('*') {
            Some(prefix) => (None, Some(format!("{}%", escape_like(prefix)))),
            None => (Some(id), None),
        },
        None => (None, None),
    };
    let rows = sqlx::query_as::<_, JobSummary>(
        "SELECT tenant, id, feature, status, priority, provider, model, cost_usd, error_kind,
                created_at, finished_at
           FROM jobs
          WHERE ($1::text IS NULL OR tenant = $1)
            AND ($2::text IS NULL OR id = $2)
            AND ($3::text IS NULL OR id LIKE $3)
            AND ($4::text IS NULL OR feature = $4)
            AND ($5::text IS NULL OR status = $5)
            AND ($6::text IS NULL OR error_kind = $6)
            AND ($7::timestamptz IS NULL OR created_at >= $7)
            AND ($8::timestamptz IS NULL OR created_at < $8)
            AND ($9::timestamptz IS NULL OR created_at < $9
                 OR (created_at = $9 AND (tenant, id) > ($10::text, $11::text)))
          ORDER BY created_at DESC, tenant, id
          LIMIT $12",
    )
    .bind(q.tenant.as_deref())
    .bind(id_exact)
    .bind(id_prefix)
    .bind(q.feature.as_deref())
    .bind(q.status.as_deref())
    .bind(q.error_kind.as_deref())
    .bind(q.since)
    .bind(q.until)
    .bind(q.after.as_ref().map(|c| c.created_at))
    .bind(q.after.as_ref().map(|c| c.tenant.as_str()))
    .bind(q.after.as_ref().map(|c| c.id.as_str()))
    .bind(q.limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// `%`, `_` and `\` taken literally in a LIKE pattern.
fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// One job's row in full (the console's job page).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobDetail {
    pub tenant: String,
    pub id: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub priority: Option<String>,
    pub task: Option<String>,
    pub requested_model: Option<String>,
    pub status: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Decimal,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub output: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub deliveries: i32,
    pub cache_hit: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The jobs stream's sequence of the message last claimed.
    pub stream_seq: Option<i64>,
}

pub async fn job_detail(
    pool: &PgPool,
    tenant: &str,
    id: &str,
) -> Result<Option<JobDetail>, StoreError> {
    Ok(sqlx::query_as::<_, JobDetail>(
        "SELECT tenant, id, feature, user_id, priority, task, requested_model, status, provider,
                model, input_tokens, cached_input_tokens, output_tokens, cost_usd, error_kind,
                error_message, output, result, deliveries, cache_hit, created_at, started_at,
                finished_at, stream_seq
           FROM jobs WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// One provider call of a job (its cost row).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRow {
    pub attempt: i32,
    pub provider: String,
    pub model: String,
    pub outcome: String,
    pub status_code: Option<i32>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Decimal,
    pub latency_ms: i64,
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Every provider call of a job, in order.
pub async fn job_calls(pool: &PgPool, tenant: &str, id: &str) -> Result<Vec<CallRow>, StoreError> {
    Ok(sqlx::query_as::<_, CallRow>(
        "SELECT attempt, provider, model, outcome, status_code, input_tokens, output_tokens,
                cost_usd, latency_ms, message, created_at
           FROM cost_rows WHERE tenant = $1 AND job_id = $2 ORDER BY attempt",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(pool)
    .await?)
}
