//! Spend limits per tenant (and per tenant + feature), by UTC day or month.
//!
//! Before its calls, a job reserves its worst-case cost against every budget that applies
//! to it (all or nothing, in one transaction, rows locked); after, the commit that lands
//! its cost rows settles the reservation: `reserved -= reserved amount`, `spent += actual`.
//! A budget that would be overrun denies the job: `policy = fail` fails it as
//! `budget_exceeded`; `policy = defer` hands it back until the period turns over (checking
//! again every few minutes, in case the limit is raised).
//!
//! Only tenants that have a budget pay for this round trip: the set of such tenants is
//! cached and refreshed every few seconds.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" => Some(Period::Day),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    /// Start of the period holding `t` (UTC).
    pub fn start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let (y, m, d) = match self {
            Period::Day => (t.year(), t.month(), t.day()),
            Period::Month => (t.year(), t.month(), 1),
        };
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).single().unwrap_or(t)
    }

    /// Start of the next period after the one holding `t`.
    pub fn next_start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let s = self.start(t);
        match self {
            Period::Day => s + chrono::Duration::days(1),
            Period::Month => {
                let (y, m) = if s.month() == 12 {
                    (s.year() + 1, 1)
                } else {
                    (s.year(), s.month() + 1)
                };
                Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(s)
            }
        }
    }
}

/// Money held against budgets for one job, released by [`Settlement`] at commit.
#[must_use = "a reservation must be settled, or the budget stays held"]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reservation {
    pub tenant: String,
    pub feature: Option<String>,
    pub amount: Decimal,
}

/// What the commit does to the budgets: release the reservation, add the actual spend.
#[derive(Debug, Clone, Serialize)]
pub struct Settlement {
    pub tenant: String,
    pub feature: Option<String>,
    pub reserved: Decimal,
    pub actual: Decimal,
}

impl Reservation {
    pub fn settle(self, actual: Decimal) -> Settlement {
        Settlement {
            tenant: self.tenant,
            feature: self.feature,
            reserved: self.amount,
            actual,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Denial {
    /// Fail the job as `budget_exceeded`.
    Fail(String),
    /// Hand the job back; try again after this delay.
    Defer(String, Duration),
}

const REFRESH: Duration = Duration::from_secs(5);
const DEFER_RECHECK: Duration = Duration::from_secs(300);

/// feature, period, limit, spent, reserved, policy, period start
type BudgetRow = (
    Option<String>,
    String,
    Decimal,
    Decimal,
    Decimal,
    String,
    DateTime<Utc>,
);

pub struct Budgets {
    pool: PgPool,
    tenants: Mutex<(Option<Instant>, HashSet<String>)>,
}

impl Budgets {
    pub fn new(pool: PgPool) -> Budgets {
        Budgets {
            pool,
            tenants: Mutex::new((None, HashSet::new())),
        }
    }

    async fn has_budget(&self, tenant: &str) -> Result<bool, sqlx::Error> {
        {
            let guard = self.tenants.lock().map_err(|_| sqlx::Error::PoolClosed)?;
            if let (Some(at), set) = &*guard {
                if at.elapsed() < REFRESH {
                    return Ok(set.contains(tenant));
                }
            }
        }
        let rows: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant FROM budgets")
            .fetch_all(&self.pool)
            .await?;
        let set: HashSet<String> = rows.into_iter().collect();
        let has = set.contains(tenant);
        if let Ok(mut guard) = self.tenants.lock() {
            *guard = (Some(Instant::now()), set);
        }
        Ok(has)
    }

    /// Reserve `amount` against every budget of `tenant` (and of `tenant` + `feature`).
    /// `Ok(None)`: the tenant has no budget, nothing is held.
    pub async fn reserve(
        &self,
        tenant: &str,
        feature: Option<&str>,
        amount: Decimal,
    ) -> Result<Result<Option<Reservation>, Denial>, sqlx::Error> {
        if !self.has_budget(tenant).await? {
            return Ok(Ok(None));
        }
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        let rows: Vec<BudgetRow> = sqlx::query_as(
            "SELECT feature, period, limit_usd, spent_usd, reserved_usd, policy, period_start
               FROM budgets WHERE tenant = $1 AND (feature IS NULL OR feature = $2)
              ORDER BY feature NULLS FIRST, period FOR UPDATE",
        )
        .bind(tenant)
        .bind(feature)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(Ok(None));
        }
        for (f, period, limit, spent, reserved, policy, period_start) in &rows {
            let Some(p) = Period::parse(period) else {
                continue;
            };
            let current = p.start(now);
            let (spent, reserved) = if *period_start < current {
                (Decimal::ZERO, Decimal::ZERO)
            } else {
                (*spent, *reserved)
            };
            if spent + reserved + amount > *limit {
                let scope = match f {
                    Some(f) => format!("{tenant}/{f}"),
                    None => tenant.to_string(),
                };
                let msg = format!(
                    "{period} budget of {scope} is {limit} USD: {spent} spent, {reserved} held, this job may cost up to {amount}"
                );
                let denial = if policy == "defer" {
                    let until = (p.next_start(now) - now).to_std().unwrap_or(DEFER_RECHECK);
                    Denial::Defer(msg, until.min(DEFER_RECHECK))
                } else {
                    Denial::Fail(msg)
                };
                return Ok(Err(denial));
            }
        }
        for (f, period, _, _, _, _, period_start) in &rows {
            let Some(p) = Period::parse(period) else {
                continue;
            };
            let current = p.start(now);
            let rolled = *period_start < current;
            sqlx::query(
                "UPDATE budgets SET
                    spent_usd = CASE WHEN $5 THEN 0 ELSE spent_usd END,
                    reserved_usd = CASE WHEN $5 THEN 0 ELSE reserved_usd END + $4,
                    period_start = $6, updated_at = now()
                  WHERE tenant = $1 AND feature IS NOT DISTINCT FROM $2 AND period = $3",
            )
            .bind(tenant)
            .bind(f)
            .bind(period)
            .bind(amount)
            .bind(rolled)
            .bind(current)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Ok(Some(Reservation {
            tenant: tenant.to_string(),
            feature: feature.map(str::to_string),
            amount,
        })))
    }
}

/// The statement the group commit runs for a batch of settlements.
pub const SETTLE_SQL: &str = r#"
WITH s AS (
    SELECT tenant, feature, sum(reserved) AS reserved, sum(actual) AS actual
      FROM jsonb_to_recordset($1::jsonb) AS x(tenant text, feature text, reserved numeric, actual numeric)
     GROUP BY tenant, feature
)
UPDATE budgets b
   SET reserved_usd = greatest(b.reserved_usd - agg.reserved, 0),
       spent_usd = b.spent_usd + agg.actual, updated_at = now()
  FROM (SELECT b2.tenant, b2.feature, b2.period, sum(s.reserved) AS reserved, sum(s.actual) AS actual
          FROM budgets b2 JOIN s ON b2.tenant = s.tenant AND (b2.feature IS NULL OR b2.feature = s.feature)
         GROUP BY b2.tenant, b2.feature, b2.period) agg
 WHERE b.tenant = agg.tenant AND b.feature IS NOT DISTINCT FROM agg.feature AND b.period = agg.period
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 18, 30, 0).unwrap();
        assert_eq!(
            Period::Day.start(t),
            Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap()
        );
        assert_eq!(
            Period::Day.next_start(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            Period::Month.start(t),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            Period::Month.next_start(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let feb = Utc.with_ymd_and_hms(2028, 2, 29, 1, 0, 0).unwrap();
        assert_eq!(
            Period::Month.next_start(feb),
            Utc.with_ymd_and_hms(2028, 3, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn settlement_carries_the_reserved_amount() {
        let r = Reservation {
            tenant: "acme".into(),
            feature: None,
            amount: Decimal::new(5, 2),
        };
        let s = r.settle(Decimal::new(1, 3));
        assert_eq!(s.reserved, Decimal::new(5, 2));
        assert_eq!(s.actual, Decimal::new(1, 3));
    }
}
