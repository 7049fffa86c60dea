//! The SQL of budgets: reserving before a job's calls, releasing reservations, sweeping
//! those whose owner died. What a budget allows is decided in [`crate::budget`]; spend is
//! added by the group commit from the cost rows it inserts ([`super::writer`]).

use super::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};

/// One budget row that applies to a job, as read (locked) by a reservation.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BudgetRow {
    pub feature: Option<String>,
    pub period: String,
    pub limit_usd: Decimal,
    pub spent_usd: Decimal,
    pub reserved_usd: Decimal,
    pub policy: String,
    pub period_start: DateTime<Utc>,
}

/// What a reservation asks for.
pub struct ReserveRequest<'a> {
    pub lease_token: &'a str,
    pub tenant: &'a str,
    pub job_id: &'a str,
    pub feature: Option<&'a str>,
    pub amount: Decimal,
    pub now: DateTime<Utc>,
}

/// Every tenant that has a budget, with the largest share of a limit it has used
/// (spent and held, over the limit; 1 for a zero limit) in its current periods.
pub async fn tenants_with_budgets(pool: &PgPool) -> Result<Vec<(String, Decimal)>, StoreError> {
    sqlx::query_as(
        "SELECT tenant, max(CASE
                  WHEN period_start < date_trunc(period, now(), 'UTC') THEN 0
                  WHEN limit_usd > 0 THEN (spent_usd + reserved_usd) / limit_usd
                  ELSE 1 END)
           FROM budgets GROUP BY tenant",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

/// Lock the budgets that apply, let `check` decide, and when it allows, hold `amount`
/// against each of them and record the reservation under the job's lease, all in one
/// transaction. `Ok(None)`: no budget applies. `check` returns the periods' current
/// starts (a period that turned over starts from zero).
pub async fn reserve<D>(
    pool: &PgPool,
    req: &ReserveRequest<'_>,
    check: impl FnOnce(&[BudgetRow]) -> Result<Vec<(bool, DateTime<Utc>)>, D>,
) -> Result<Option<Result<(), D>>, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    let rows: Vec<BudgetRow> = sqlx::query_as(
        "SELECT feature, period, limit_usd, spent_usd, reserved_usd, policy, period_start
           FROM budgets WHERE tenant = $1 AND (feature IS NULL OR feature = $2)
          ORDER BY feature NULLS FIRST, period FOR UPDATE",
    )
    .bind(req.tenant)
    .bind(req.feature)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let starts = match check(&rows) {
        Ok(s) => s,
        Err(denial) => return Ok(Some(Err(denial))),
    };
    for (row, (rolled, start)) in rows.iter().zip(starts) {
        sqlx::query(
            "UPDATE budgets SET
                spent_usd = CASE WHEN $5 THEN 0 ELSE spent_usd END,
                reserved_usd = CASE WHEN $5 THEN 0 ELSE reserved_usd END + $4,
                period_start = $6, updated_at = now()
              WHERE tenant = $1 AND feature IS NOT DISTINCT FROM $2 AND period = $3",
        )
        .bind(req.tenant)
        .bind(&row.feature)
        .bind(&row.period)
        .bind(req.amount)
        .bind(rolled)
        .bind(start)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    }
    sqlx::query(
        "INSERT INTO budget_reservations (lease_token, tenant, job_id, feature, amount_usd)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(req.lease_token)
    .bind(req.tenant)
    .bind(req.job_id)
    .bind(req.feature)
    .bind(req.amount)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(Some(Ok(())))
}

/// The end of a statement whose CTE `freed` deleted reservations (tenant, feature,
/// amount_usd): their amounts go back to every budget they were held against.
macro_rules! give_back_freed {
    () => {
        r#"), agg AS (
    SELECT b.tenant, b.feature, b.period, sum(f.amount_usd) AS amount
      FROM budgets b JOIN freed f ON b.tenant = f.tenant AND (b.feature IS NULL OR b.feature = f.feature)
     GROUP BY b.tenant, b.feature, b.period
)
UPDATE budgets b SET reserved_usd = greatest(b.reserved_usd - agg.amount, 0), updated_at = now()
  FROM agg
 WHERE b.tenant = agg.tenant AND b.feature IS NOT DISTINCT FROM agg.feature AND b.period = agg.period
"#
    };
}

/// Delete the reservations held by `tokens` and give their amounts back to the budgets.
/// Idempotent: a reservation is released once, whoever gets there first.
const RELEASE_SQL: &str = concat!(
    r#"
WITH freed AS (
    DELETE FROM budget_reservations WHERE lease_token = ANY($1::text[])
    RETURNING tenant, feature, amount_usd
"#,
    give_back_freed!()
);

pub async fn release_reservations(
    tx: &mut Transaction<'_, Postgres>,
    tokens: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(RELEASE_SQL)
        .bind(tokens)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Reservations whose lease is no longer live (its worker died, or it ended without
/// releasing): give them back. Safe to run on every worker at once.
const SWEEP_SQL: &str = concat!(
    r#"
WITH freed AS (
    DELETE FROM budget_reservations r
     WHERE r.created_at < now() - interval '5 seconds'
       AND NOT EXISTS (SELECT 1 FROM jobs j
                        WHERE j.tenant = r.tenant AND j.id = r.job_id
                          AND j.lease_token = r.lease_token AND j.lease_until > now())
    RETURNING r.tenant, r.feature, r.amount_usd
"#,
    give_back_freed!()
);

pub async fn sweep_reservations(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(SWEEP_SQL).execute(pool).await?.rows_affected())
}
