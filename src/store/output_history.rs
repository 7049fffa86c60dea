//! What each model's answers have been like (`switchyard submit --estimate`): the mean
//! output tokens of its succeeded calls since a time, from `cost_rows`, optionally for one
//! feature.

use super::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;

/// (provider, model) → (succeeded calls, mean output tokens) since `since`.
pub async fn mean_output_tokens(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<HashMap<(String, String), (i64, f64)>, StoreError> {
    let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "SELECT provider, model, count(*), avg(output_tokens)::float8 FROM cost_rows
         WHERE outcome = 'succeeded' AND created_at >= $1
         GROUP BY 1, 2",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(rows
        .into_iter()
        .map(|(p, m, n, avg)| ((p, m), (n, avg)))
        .collect())
}
