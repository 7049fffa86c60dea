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

impl BudgetRow {
    /// The budget as it stands at `now`: one whose period has turned over (no job has
    /// touched it since) shows the new, empty period.
    pub fn as_of(self, now: DateTime<Utc>) -> BudgetRow {
        let current = crate::budget::Period::parse(&self.period)
            .map(|p| p.start(now))
            .unwrap_or(self.period_start);
        if self.period_start < current {
            BudgetRow {
                spent_usd: Decimal::ZERO,
                reserved_usd: Decimal::ZERO,
                period_start: current,
                ..self
            }
        } else {
            self
        }
    }

    /// (spent + reserved) / limit in percent, to two places: `switchyard_budget_used_ratio`
    /// × 100, so 100 for a zero limit (nothing may be spent: it is used up).
    pub fn used_pct(&self) -> Decimal {
        if self.limit_usd.is_zero() {
            return Decimal::ONE_HUNDRED;
        }
        let used = self.spent_usd + self.reserved_usd;
        (used * Decimal::ONE_HUNDRED / self.limit_usd).round_dp(2)
    }

    /// What is left: limit − spent − reserved, never below 0.
    pub fn remaining_usd(&self) -> Decimal {
        (self.limit_usd - self.spent_usd - self.reserved_usd).max(Decimal::ZERO)
    }
}

/// Every budget (optionally of one tenant) as it stands at `now`.
pub async fn budget_status(
    pool: &PgPool,
    tenant: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<BudgetRow>, StoreError> {
    Ok(budgets(pool, tenant)
        .await?
        .into_iter()
        .map(|r| r.as_of(now))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn row(period_start: &str, limit: &str, spent: &str, reserved: &str) -> BudgetRow {
        BudgetRow {
            tenant: "acme".into(),
            feature: None,
            period: "day".into(),
            limit_usd: Decimal::from_str(limit).unwrap(),
            spent_usd: Decimal::from_str(spent).unwrap(),
            reserved_usd: Decimal::from_str(reserved).unwrap(),
            policy: "fail".into(),
            period_start: DateTime::parse_from_rfc3339(period_start).unwrap().into(),
        }
    }

    #[test]
    fn used_share_remaining_and_a_turned_over_period() {
        let now: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .into();
        let s = row("2026-12-07T00:00:00Z", "3", "1.5", "0.5").as_of(now);
        assert_eq!(s.used_pct(), Decimal::from_str("66.67").unwrap());
        assert_eq!(s.remaining_usd(), Decimal::ONE);
        let over = row("2026-12-07T00:00:00Z", "1", "1.25", "0").as_of(now);
        assert_eq!(over.used_pct(), Decimal::from(125));
        assert_eq!(over.remaining_usd(), Decimal::ZERO);
        let old = row("2026-12-06T00:00:00Z", "3", "2", "1").as_of(now);
        assert_eq!(old.spent_usd, Decimal::ZERO);
        assert_eq!(old.used_pct(), Decimal::ZERO);
        assert_eq!(old.period_start.to_rfc3339(), "2026-12-07T00:00:00+00:00");
        let zero = row("2026-12-07T00:00:00Z", "0", "0", "0").as_of(now);
        assert_eq!(zero.used_pct(), Decimal::ONE_HUNDRED);
    }
}
