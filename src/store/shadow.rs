//! Shadow evaluations (`shadow_evals`) and their calls' cost rows (`cost_rows.shadow`).
//! A job's evaluation is claimed once (its row and the candidate call's `started` row in
//! one transaction: a redelivery or a second worker finds the row and calls nothing),
//! then each call's row is completed and its cost added to the tenant's budgets, and
//! the evaluation ends `compared` or `failed`. `report eval` reads the sums
//! ([`eval_report`]).

use super::StoreError;
use crate::job::Usage;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

/// Who a shadow call is charged to: the job's tenant, feature and user.
#[derive(Debug, Clone)]
pub struct ShadowKey {
    pub tenant: String,
    pub job_id: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
}

/// What an evaluation starts with.
#[derive(Debug, Clone)]
pub struct EvalClaim<'a> {
    pub key: &'a ShadowKey,
    pub route: &'a str,
    pub primary_provider: &'a str,
    pub primary_model: &'a str,
    pub candidate_provider: &'a str,
    pub candidate_model: &'a str,
    pub comparison: &'static str,
    /// What the job's own calls cost.
    pub primary_cost_usd: Decimal,
}

/// A shadow call as it ended.
#[derive(Debug, Clone)]
pub struct ShadowCall {
    pub attempt: i32,
    pub provider: String,
    pub model: String,
    /// `succeeded`, a failure class, or `cancelled`.
    pub outcome: String,
    pub status: Option<u16>,
    pub usage: Usage,
    pub cost_usd: Decimal,
    pub latency_ms: u64,
    pub message: Option<String>,
}

/// How an evaluation ended.
#[derive(Debug, Clone)]
pub struct EvalEnd {
    /// `Some`: compared; `None`: failed (`message` says why).
    pub agree: Option<bool>,
    pub similarity: Option<f64>,
    pub candidate_cost_usd: Decimal,
    pub judge_cost_usd: Decimal,
    pub candidate_output: Option<serde_json::Value>,
    pub message: Option<String>,
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `started` cost row of a shadow call, numbered after every row the job has: its
/// number.
async fn start_row(
    tx: &mut sqlx::PgConnection,
    key: &ShadowKey,
    provider: &str,
    model: &str,
) -> Result<i32, StoreError> {
    let attempt: i32 = sqlx::query_scalar(
        "INSERT INTO cost_rows (tenant, job_id, attempt, feature, user_id, provider, model,
                                outcome, shadow)
         SELECT $1, $2, coalesce((SELECT max(attempt) FROM cost_rows
                                   WHERE tenant = $1 AND job_id = $2), 0) + 1,
                $3, $4, $5, $6, 'started', true
         RETURNING attempt",
    )
    .bind(&key.tenant)
    .bind(&key.job_id)
    .bind(&key.feature)
    .bind(&key.user_id)
    .bind(provider)
    .bind(model)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    Ok(attempt)
}

/// A claimed evaluation: the candidate call's attempt number, when one is to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub attempt: Option<i32>,
}

/// Claim the evaluation of `c.key`'s job by `c.candidate_model`, with (when `call`) the
/// candidate call's `started` row; `None` when the job has that evaluation already.
pub async fn claim(
    pool: &PgPool,
    c: &EvalClaim<'_>,
    call: bool,
) -> Result<Option<Claimed>, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    let inserted = sqlx::query(
        "INSERT INTO shadow_evals (tenant, job_id, route, feature, primary_provider,
                                   primary_model, candidate_provider, candidate_model,
                                   comparison, primary_cost_usd)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (tenant, job_id, candidate_model) DO NOTHING",
    )
    .bind(&c.key.tenant)
    .bind(&c.key.job_id)
    .bind(c.route)
    .bind(&c.key.feature)
    .bind(c.primary_provider)
    .bind(c.primary_model)
    .bind(c.candidate_provider)
    .bind(c.candidate_model)
    .bind(c.comparison)
    .bind(c.primary_cost_usd)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    let attempt = match call {
        true => Some(start_row(&mut tx, c.key, c.candidate_provider, c.candidate_model).await?),
        false => None,
    };
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(Some(Claimed { attempt }))
}

/// The judge call's `started` row: its attempt number.
pub async fn start_judge(
    pool: &PgPool,
    key: &ShadowKey,
    provider: &str,
    model: &str,
) -> Result<i32, StoreError> {
    let mut conn = pool.acquire().await.map_err(StoreError::classify)?;
    start_row(&mut conn, key, provider, model).await
}

/// Complete the calls' rows (each only while `started`, so twice charges once), add their
/// cost to the tenant's budgets, and end the evaluation; one transaction.
pub async fn settle(
    pool: &PgPool,
    key: &ShadowKey,
    candidate_model: &str,
    calls: &[ShadowCall],
    end: &EvalEnd,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    let mut charged = Decimal::ZERO;
    for c in calls {
        let done = sqlx::query(
            "UPDATE cost_rows SET outcome = $4, status_code = $5, input_tokens = $6,
                    cached_input_tokens = $7, output_tokens = $8, reasoning_tokens = $9,
                    cost_usd = $10, latency_ms = $11, message = $12
              WHERE tenant = $1 AND job_id = $2 AND attempt = $3 AND shadow
                AND outcome = 'started'",
        )
        .bind(&key.tenant)
        .bind(&key.job_id)
        .bind(c.attempt)
        .bind(&c.outcome)
        .bind(c.status.map(i32::from))
        .bind(big(c.usage.input_tokens))
        .bind(big(c.usage.cached_input_tokens))
        .bind(big(c.usage.output_tokens))
        .bind(big(c.usage.reasoning_tokens))
        .bind(c.cost_usd)
        .bind(big(c.latency_ms))
        .bind(&c.message)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if done.rows_affected() == 1 {
            charged += c.cost_usd;
        }
    }
    if !charged.is_zero() {
        sqlx::query(
            "UPDATE budgets SET spent_usd = spent_usd + $3, updated_at = now()
              WHERE tenant = $1 AND (feature IS NULL OR feature = $2)",
        )
        .bind(&key.tenant)
        .bind(&key.feature)
        .bind(charged)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    }
    let similarity = end
        .similarity
        .and_then(|s| Decimal::from_f64_retain(s).map(|d| d.round_dp(4)));
    sqlx::query(
        "UPDATE shadow_evals SET state = CASE WHEN $4::boolean IS NULL THEN 'failed' ELSE 'compared' END,
                agree = $4, similarity = $5, candidate_cost_usd = $6, judge_cost_usd = $7,
                candidate_output = $8, message = $9, finished_at = now()
          WHERE tenant = $1 AND job_id = $2 AND candidate_model = $3 AND state = 'running'",
    )
    .bind(&key.tenant)
    .bind(&key.job_id)
    .bind(candidate_model)
    .bind(end.agree)
    .bind(similarity)
    .bind(end.candidate_cost_usd)
    .bind(end.judge_cost_usd)
    .bind(&end.candidate_output)
    .bind(&end.message)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(())
}

/// Which evaluations `report eval` sums.
#[derive(Debug, Clone, Default)]
pub struct EvalQuery<'a> {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub tenant: Option<&'a str>,
    pub route: Option<&'a str>,
}

/// One route and candidate's evaluations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalLine {
    pub route: String,
    pub primary_model: String,
    pub candidate_model: String,
    /// Every evaluation (running ones included).
    pub evals: i64,
    pub compared: i64,
    pub agreed: i64,
    pub failed: i64,
    /// Sums over the compared and failed ones (a running one has no candidate cost yet).
    pub primary_cost_usd: Decimal,
    pub candidate_cost_usd: Decimal,
    pub judge_cost_usd: Decimal,
    /// Mean similarity of the compared ones that have one.
    pub mean_similarity: Option<Decimal>,
}

/// The evaluations created in the query's range, per route, primary and candidate model.
pub async fn eval_report(pool: &PgPool, q: &EvalQuery<'_>) -> Result<Vec<EvalLine>, StoreError> {
    let rows = sqlx::query(
        "SELECT route, primary_model, candidate_model, count(*) AS evals,
                count(*) FILTER (WHERE state = 'compared') AS compared,
                count(*) FILTER (WHERE agree) AS agreed,
                count(*) FILTER (WHERE state = 'failed') AS failed,
                coalesce(sum(primary_cost_usd) FILTER (WHERE state <> 'running'), 0) AS primary_cost,
                coalesce(sum(candidate_cost_usd) FILTER (WHERE state <> 'running'), 0) AS candidate_cost,
                coalesce(sum(judge_cost_usd) FILTER (WHERE state <> 'running'), 0) AS judge_cost,
                round(avg(similarity) FILTER (WHERE state = 'compared'), 4) AS mean_similarity
           FROM shadow_evals
          WHERE ($1::timestamptz IS NULL OR created_at >= $1)
            AND ($2::timestamptz IS NULL OR created_at < $2)
            AND ($3::text IS NULL OR tenant = $3)
            AND ($4::text IS NULL OR route = $4)
          GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(q.since)
    .bind(q.until)
    .bind(q.tenant)
    .bind(q.route)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(EvalLine {
            route: r.try_get("route")?,
            primary_model: r.try_get("primary_model")?,
            candidate_model: r.try_get("candidate_model")?,
            evals: r.try_get("evals")?,
            compared: r.try_get("compared")?,
            agreed: r.try_get("agreed")?,
            failed: r.try_get("failed")?,
            primary_cost_usd: r.try_get("primary_cost")?,
            candidate_cost_usd: r.try_get("candidate_cost")?,
            judge_cost_usd: r.try_get("judge_cost")?,
            mean_similarity: r.try_get("mean_similarity")?,
        });
    }
    Ok(out)
}
