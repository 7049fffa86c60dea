//! Postgres: `jobs`, `cost_rows`, `budgets`. Writes on the hot path are grouped across
//! jobs: claims ([`claims`]) and commits ([`writer`]) each carry a whole batch of jobs in
//! one statement or transaction. Operators' budgets ([`budget_admin`]) and cost reports
//! ([`reports`]) are read and written here too, so the CLI speaks no SQL.

mod batch;
pub mod budget_admin;
pub mod claims;
pub mod reports;
pub mod writer;

pub use claims::{ClaimOutcome, ClaimRequest, Claimer};
pub use writer::{CommitJob, CommitRequest, CostRow, Writer};

use crate::job::JobResult;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
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
    #[error("stored result of {tenant}/{id} is unreadable: {message}")]
    Corrupt {
        tenant: String,
        id: String,
        message: String,
    },
}

/// Connect with a bounded pool. The URL may hold a password; it is never logged.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let opts = PgConnectOptions::from_str(url)?
        .application_name("switchyard")
        .statement_cache_capacity(64);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    Ok(pool)
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
                deliveries, created_at, finished_at, result
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
