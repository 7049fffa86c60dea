//! Jobs finished recently per priority and tenant (`switchyard queue`'s share column).
//! A job's row is made when a worker first takes it (`created_at`), so the rows finished
//! in the last `window` are found through the `created_at` index, bounded to rows made in
//! the last `window` + one hour (a job running longer than an hour is not counted).

use super::StoreError;
use sqlx::PgPool;
use std::time::Duration;

/// `(priority, tenant, jobs)` finished (succeeded or failed) in the last `window`.
pub async fn finished_by_tenant(
    pool: &PgPool,
    window: Duration,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let secs = window.as_secs_f64();
    sqlx::query_as(
        "SELECT coalesce(priority, ''), tenant, count(*) FROM jobs
         WHERE created_at > now() - make_interval(secs => $1 + 3600)
           AND finished_at > now() - make_interval(secs => $1)
         GROUP BY 1, 2",
    )
    .bind(secs)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}
