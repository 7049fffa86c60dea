//! Budgets as operators set and list them (`switchyard budget`). Reserving and settling
//! against them on the hot path is `budget/`'s.

use super::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

/// A budget to create, or the new limit and policy of an existing one.
#[derive(Debug, Clone)]
pub struct BudgetLimit<'a> {
    pub tenant: &'a str,
    /// `None`: the whole tenant.
    pub feature: Option<&'a str>,
    /// `day` | `month`
    pub period: &'a str,
    pub limit_usd: Decimal,
    /// `fail` | `defer`
    pub policy: &'a str,
    /// Start of the current period, for a new budget.
    pub period_start: DateTime<Utc>,
}

/// A budget as stored (its period may have turned over since).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BudgetRow {
    pub tenant: String,
    pub feature: Option<String>,
    pub period: String,
    pub limit_usd: Decimal,
    pub spent_usd: Decimal,
    pub reserved_usd: Decimal,
    pub policy: String,
    pub period_start: DateTime<Utc>,
}

/// Create the budget, or change the limit and policy of the one with the same tenant,
/// feature and period (what it has spent stays).
pub async fn set_budget(pool: &PgPool, b: &BudgetLimit<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO budgets (tenant, feature, period, limit_usd, policy, period_start)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant, coalesce(feature, ''), period)
         DO UPDATE SET limit_usd = EXCLUDED.limit_usd, policy = EXCLUDED.policy, updated_at = now()",
    )
    .bind(b.tenant)
    .bind(b.feature)
    .bind(b.period)
    .bind(b.limit_usd)
    .bind(b.policy)
    .bind(b.period_start)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every budget (optionally of one tenant), by tenant, whole-tenant budgets first, period.
pub async fn budgets(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<BudgetRow>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT tenant, feature, period, limit_usd, spent_usd, reserved_usd, policy, period_start
           FROM budgets WHERE ($1::text IS NULL OR tenant = $1)
          ORDER BY tenant, feature NULLS FIRST, period",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
