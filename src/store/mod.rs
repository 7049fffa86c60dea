//! Postgres: `jobs`, `cost_rows`, `budgets`. Writes on the hot path are grouped across
//! jobs: claims ([`claims`]) and commits ([`writer`]) each carry a whole batch of jobs in
//! one statement or transaction. Operators' budgets ([`budget_admin`]), cost reports
//! ([`reports`]) and dead-letter filters ([`dead_letters`]) are read and written here too,
//! so the CLI speaks no SQL. The response cache's entries are in [`cache`].

mod batch;
pub mod batches;
pub mod budget_admin;
pub mod budgets;
pub mod cache;
pub mod claims;
pub mod console;
pub mod dead_letters;
pub mod finished;
pub mod frontdoor;
pub mod leases;
pub mod output_history;
pub mod reports;
pub mod semantic;
pub mod shadow;
pub mod writer;

pub use claims::{ClaimOutcome, ClaimRequest, Claimer, Opened, Opening};
pub use leases::{Lease, LeaseKeeper};
pub use writer::{CallRecord, CommitJob, CommitOutcome, CommitRequest, JobKey, Writer};

use crate::job::JobResult;
use sqlx::PgPool;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is shutting down")]
    Closed,
    /// Postgres cannot be reached (or is shutting down, or out of resources): nothing about
    /// this job is wrong, so the caller waits and tries again in place.
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
    /// The statement lost a race with another (a deadlock, a serialization failure):
    /// Postgres is fine, and the same statement is tried again at once.
    #[error("postgres conflict: {0}")]
    Conflict(String),
    /// Postgres refused this job's rows (a data or constraint error): trying again will
    /// not help, the job ends as `internal`.
    #[error("postgres refused the rows: {0}")]
    Rejected(String),
    #[error("stored result of {tenant}/{id} is unreadable: {message}")]
    Corrupt {
        tenant: String,
        id: String,
        message: String,
    },
}

impl StoreError {
    /// Sort a driver error: is Postgres away (wait and retry in place), or did it refuse
    /// these rows (retrying the same rows cannot help)?
    pub fn classify(e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                // 08: connection; 53: resources; 57: operator intervention (shutdown,
                // cannot connect now); 55: not accepting connections, lock not available;
                // 40: serialization failure or deadlock: nothing is away, the statement
                // lost a race and is tried again at once.
                if code.starts_with("40") {
                    return StoreError::Conflict(format!("{} ({code})", db.message()));
                }
                if ["08", "53", "55", "57", "58"]
                    .iter()
                    .any(|class| code.starts_with(class))
                {
                    StoreError::Unavailable(format!("{} ({code})", db.message()))
                } else {
                    StoreError::Rejected(format!("{} ({code})", db.message()))
                }
            }
            sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
                StoreError::Rejected(e.to_string())
            }
            _ => StoreError::Unavailable(e.to_string()),
        }
    }

    /// The same error for each request of a batch that failed: unavailable stays
    /// unavailable (they wait and retry), anything else is a refusal.
    pub fn shared(&self) -> StoreError {
        if self.is_unavailable() {
            StoreError::Unavailable(self.to_string())
        } else {
            StoreError::Rejected(self.to_string())
        }
    }

    /// Nothing is wrong with the job: wait for Postgres and try again in place.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::Db(_)
                | StoreError::Closed
                | StoreError::Conflict(_)
        )
    }
}

/// How many times a batch statement that lost a race is sent again before its requests
/// hear of it (as unavailable: they wait and retry in place).
pub const CONFLICT_TRIES: u32 = 5;

/// Run `op` again while it fails with a [`StoreError::Conflict`] (a deadlock between two
/// batches, say), after a short pause, at most [`CONFLICT_TRIES`] times.
pub async fn retry_conflicts<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 1;
    loop {
        match op().await {
            Err(StoreError::Conflict(m)) if tries < CONFLICT_TRIES => {
                tracing::debug!(error = %m, tries, "statement lost a race; sending it again");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(tries) * 2)).await;
            }
            other => return other,
        }
    }
}

/// Does Postgres answer?
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(pool)
        .await
        .map_err(StoreError::classify)?;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A job's row, as `switchyard status` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct JobRow {
    pub tenant: String,
    pub id: String,
    pub status: String,
    pub priority: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub cost_usd: rust_decimal::Decimal,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub deliveries: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub result: Option<serde_json::Value>,
}

pub async fn job_row(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<JobRow>, StoreError> {
    let row = sqlx::query_as::<_, JobRow>(
        "SELECT tenant, id, status, priority, provider, model, cost_usd, error_kind, error_message,
                deliveries, created_at, finished_at,
                result || jsonb_build_object('output', output) AS result
           FROM jobs WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

pub(crate) fn parse_result(
    tenant: &str,
    id: &str,
    v: serde_json::Value,
) -> Result<JobResult, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        tenant: tenant.to_string(),
        id: id.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod conflict_tests {
    use super::*;

    #[tokio::test]
    async fn a_statement_that_loses_a_race_is_sent_again_a_few_times() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let out = retry_conflicts(|| {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(StoreError::Conflict("deadlock detected (40P01)".into()))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 2);
        // Past CONFLICT_TRIES the conflict is the caller's (as unavailable: it waits).
        let tries = std::sync::atomic::AtomicU32::new(0);
        let out: Result<(), StoreError> = retry_conflicts(|| {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err(StoreError::Conflict("deadlock detected (40P01)".into())) }
        })
        .await;
        assert!(matches!(out, Err(StoreError::Conflict(_))));
        assert!(out.unwrap_err().is_unavailable());
        assert_eq!(
            tries.load(std::sync::atomic::Ordering::SeqCst),
            CONFLICT_TRIES
        );
        // Anything else is not retried here.
        let tries = std::sync::atomic::AtomicU32::new(0);
        let out: Result<(), StoreError> = retry_conflicts(|| {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err(StoreError::Rejected("bad row".into())) }
        })
        .await;
        assert!(matches!(out, Err(StoreError::Rejected(_))));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
