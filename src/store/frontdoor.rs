//! The front door's files and OpenAI batches (`frontdoor_files`, `frontdoor_batches`,
//! `frontdoor_batch_lines`; see `crate::frontdoor`). A batch's progress is read from the
//! `jobs` rows of its lines' jobs; finishing it (writing its output and error files and
//! its final state) is one transaction under a row lock, so two serve processes finish a
//! batch once.

use super::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A stored file's description (its bytes are read apart).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRow {
    pub id: String,
    pub tenant: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// A batch's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: String,
    pub tenant: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub status: String,
    pub metadata: Option<serde_json::Value>,
    pub total: i32,
    pub completed: i32,
    pub failed: i32,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub finalizing_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub cancelling_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

/// A new batch's line: the job it became, or the error file's line that refused it.
#[derive(Debug, Clone)]
pub struct NewLine {
    pub line: i32,
    pub custom_id: Option<String>,
    pub job_id: Option<String>,
    pub error: Option<serde_json::Value>,
}

/// A line when its batch ends: its job's state and stored result.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineOutcome {
    pub line: i32,
    pub custom_id: Option<String>,
    pub job_id: Option<String>,
    pub error: Option<serde_json::Value>,
    pub status: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// What ends a batch: its state and the files to write (id, content).
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: &'static str,
    pub completed: i32,
    pub failed: i32,
    pub output: Option<(String, Vec<u8>)>,
    pub error: Option<(String, Vec<u8>)>,
}

const BATCH_COLS: &str = "id, tenant, input_file_id, endpoint, completion_window, status, metadata, total, \
    completed, failed, output_file_id, error_file_id, errors, created_at, in_progress_at, finalizing_at, \
    completed_at, failed_at, expired_at, cancelling_at, cancelled_at, expires_at";

pub async fn insert_file(
    pool: &PgPool,
    id: &str,
    tenant: &str,
    filename: &str,
    purpose: &str,
    content: &[u8],
) -> Result<FileRow, StoreError> {
    Ok(sqlx::query_as(
        "INSERT INTO frontdoor_files (id, tenant, filename, purpose, bytes, content) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id, tenant, filename, purpose, bytes, created_at",
    )
    .bind(id)
    .bind(tenant)
    .bind(filename)
    .bind(purpose)
    .bind(content.len() as i64)
    .bind(content)
    .fetch_one(pool)
    .await?)
}

pub async fn file(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<FileRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, tenant, filename, purpose, bytes, created_at FROM frontdoor_files WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub async fn file_content(
    pool: &PgPool,
    tenant: &str,
    id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT content FROM frontdoor_files WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

pub async fn files(pool: &PgPool, tenant: &str, limit: i64) -> Result<Vec<FileRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, tenant, filename, purpose, bytes, created_at FROM frontdoor_files WHERE tenant = $1 \
         ORDER BY created_at DESC, id LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Insert a batch (`in_progress`) and its lines in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn insert_batch(
    pool: &PgPool,
    id: &str,
    tenant: &str,
    input_file_id: &str,
    completion_window: &str,
    metadata: Option<&serde_json::Value>,
    expires_at: DateTime<Utc>,
    lines: &[NewLine],
) -> Result<BatchRow, StoreError> {
    let mut tx = pool.begin().await?;
    let row: BatchRow = sqlx::query_as(&format!(
        "INSERT INTO frontdoor_batches (id, tenant, input_file_id, endpoint, completion_window, status, metadata, \
         total, in_progress_at, expires_at) VALUES ($1, $2, $3, '/v1/chat/completions', $4, 'in_progress', $5, $6, now(), $7) \
         RETURNING {BATCH_COLS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(input_file_id)
    .bind(completion_window)
    .bind(metadata)
    .bind(lines.len() as i32)
    .bind(expires_at)
    .fetch_one(&mut *tx)
    .await?;
    for part in lines.chunks(5000) {
        let n: Vec<i32> = part.iter().map(|l| l.line).collect();
        let c: Vec<Option<String>> = part.iter().map(|l| l.custom_id.clone()).collect();
        let j: Vec<Option<String>> = part.iter().map(|l| l.job_id.clone()).collect();
        let e: Vec<Option<serde_json::Value>> = part.iter().map(|l| l.error.clone()).collect();
        sqlx::query(
            "INSERT INTO frontdoor_batch_lines (batch_id, line, custom_id, job_id, error) \
             SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::jsonb[])",
        )
        .bind(id)
        .bind(&n)
        .bind(&c)
        .bind(&j)
        .bind(&e)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(row)
}

pub async fn batch(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<BatchRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {BATCH_COLS} FROM frontdoor_batches WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// A tenant's batches, newest first, those created before `after`'s when given.
pub async fn batches(
    pool: &PgPool,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<BatchRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {BATCH_COLS} FROM frontdoor_batches WHERE tenant = $1 AND ($2::text IS NULL OR (created_at, id) < \
         (SELECT created_at, id FROM frontdoor_batches WHERE tenant = $1 AND id = $2)) ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Ask an open batch to stop: `cancelling` (the collector then ends it `cancelled`).
pub async fn cancel(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<BatchRow>, StoreError> {
    sqlx::query(
        "UPDATE frontdoor_batches SET status = 'cancelling', cancelling_at = now() \
         WHERE tenant = $1 AND id = $2 AND status = 'in_progress'",
    )
    .bind(tenant)
    .bind(id)
    .execute(pool)
    .await?;
    batch(pool, tenant, id).await
}

/// Batches to look at: in progress or being cancelled.
pub async fn open_batches(pool: &PgPool) -> Result<Vec<BatchRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {BATCH_COLS} FROM frontdoor_batches WHERE status IN ('in_progress', 'cancelling') ORDER BY created_at"
    ))
    .fetch_all(pool)
    .await?)
}

/// Count the batch's lines that have ended (succeeded, failed, or refused), store the
/// counts, and return them with the total: (completed, failed).
pub async fn progress(pool: &PgPool, b: &BatchRow) -> Result<(i32, i32), StoreError> {
    let (ok, bad): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE j.status = 'succeeded'), \
                count(*) FILTER (WHERE l.error IS NOT NULL OR j.status = 'failed') \
         FROM frontdoor_batch_lines l LEFT JOIN jobs j ON j.tenant = $2 AND j.id = l.job_id WHERE l.batch_id = $1",
    )
    .bind(&b.id)
    .bind(&b.tenant)
    .fetch_one(pool)
    .await?;
    let (ok, bad) = (ok as i32, bad as i32);
    if ok != b.completed || bad != b.failed {
        sqlx::query("UPDATE frontdoor_batches SET completed = $2, failed = $3 WHERE id = $1")
            .bind(&b.id)
            .bind(ok)
            .bind(bad)
            .execute(pool)
            .await?;
    }
    Ok((ok, bad))
}

/// End an open batch in one transaction: lock its row (skipped when another process
/// holds it or it has ended already), read every line's outcome, let `decide` build the
/// files, write them and the final state.
pub async fn finish(
    pool: &PgPool,
    id: &str,
    decide: impl FnOnce(&BatchRow, Vec<LineOutcome>) -> Finished,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let row: Option<BatchRow> = sqlx::query_as(&format!(
        "SELECT {BATCH_COLS} FROM frontdoor_batches WHERE id = $1 AND status IN ('in_progress', 'cancelling') \
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let lines: Vec<LineOutcome> = sqlx::query_as(
        "SELECT l.line, l.custom_id, l.job_id, l.error, j.status, j.result || jsonb_build_object('output', j.output) AS result \
         FROM frontdoor_batch_lines l LEFT JOIN jobs j ON j.tenant = $2 AND j.id = l.job_id \
         WHERE l.batch_id = $1 ORDER BY l.line",
    )
    .bind(id)
    .bind(&row.tenant)
    .fetch_all(&mut *tx)
    .await?;
    let f = decide(&row, lines);
    for (file, purpose_name) in [(&f.output, "output"), (&f.error, "errors")] {
        if let Some((fid, content)) = file {
            sqlx::query(
                "INSERT INTO frontdoor_files (id, tenant, filename, purpose, bytes, content) \
                 VALUES ($1, $2, $3, 'batch_output', $4, $5)",
            )
            .bind(fid)
            .bind(&row.tenant)
            .bind(format!("{}_{purpose_name}.jsonl", row.id))
            .bind(content.len() as i64)
            .bind(content)
            .execute(&mut *tx)
            .await?;
        }
    }
    let ts_col = match f.status {
        "cancelled" => "cancelled_at",
        "expired" => "expired_at",
        "failed" => "failed_at",
        _ => "completed_at",
    };
    sqlx::query(&format!(
        "UPDATE frontdoor_batches SET status = $2, completed = $3, failed = $4, output_file_id = $5, \
         error_file_id = $6, finalizing_at = now(), {ts_col} = now() WHERE id = $1"
    ))
    .bind(id)
    .bind(f.status)
    .bind(f.completed)
    .bind(f.failed)
    .bind(f.output.as_ref().map(|o| o.0.as_str()))
    .bind(f.error.as_ref().map(|o| o.0.as_str()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A batch that could not start (its jobs could not all be queued): `failed`, with why.
pub async fn fail(pool: &PgPool, id: &str, errors: &serde_json::Value) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE frontdoor_batches SET status = 'failed', failed_at = now(), errors = $2 \
         WHERE id = $1 AND status IN ('in_progress', 'cancelling')",
    )
    .bind(id)
    .bind(errors)
    .execute(pool)
    .await?;
    Ok(())
}
