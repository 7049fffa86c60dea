//! Spend limits per tenant (and per tenant + feature), by UTC day or month.
//!
//! Before its calls, a job reserves its worst-case cost against every budget that applies
//! to it (all or nothing, rows locked; the reservations of many jobs share one
//! transaction, each decided in turn against what the earlier ones hold); after, the
//! commit that lands
//! its cost rows settles the reservation: `reserved -= reserved amount`, `spent += actual`.
//! A budget that would be overrun denies the job: `policy = fail` fails it as
//! `budget_exceeded`; `policy = defer` hands it back until the period turns over (checking
//! again every few minutes, in case the limit is raised).
//!
//! Only tenants that have a budget pay for this round trip: the set of such tenants (with
//! the share of their limits used, for budget-aware routing) is cached, refreshed every
//! few seconds and at once when `switchyard budget set` announces a change on
//! `<prefix>.ctl.budgets`.

use crate::clock::Clock;
use crate::store::{self, budgets::BudgetRow, Lease, StoreError};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Money held against budgets for one job, owned by the job's lease. Not `Clone`: one task
/// holds it and must [`settle`](Reservation::settle) it into the commit that ends the
/// delivery. The Postgres side (a `budget_reservations` row keyed by the lease) is
/// released by that commit, by the lease's release when the task ends any other way, or
/// by the sweeper when the worker died.
#[must_use = "a reservation must be settled by the commit that ends the delivery"]
#[derive(Debug, PartialEq)]
pub struct Reservation {
    pub tenant: String,
    pub feature: Option<String>,
    pub amount: Decimal,
    pub lease_token: String,
    settled: bool,
}

/// Proof that a reservation went into a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled;

impl Reservation {
    /// The commit carrying the lease releases the reservation; spend comes from the cost
    /// rows it inserts.
    pub fn settle(mut self) -> Settled {
        self.settled = true;
        Settled
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            // The lease's release gives it back; this is a bug to find, not a leak.
            tracing::error!(tenant = %self.tenant, amount = %self.amount,
                "budget reservation dropped without settling; released with its lease");
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

/// Would holding `amount` more overrun any of `rows` at `now`? If not, each row's
/// (period turned over, current period start).
pub fn check<R: std::borrow::Borrow<BudgetRow>>(
    tenant: &str,
    rows: &[R],
    amount: Decimal,
    now: DateTime<Utc>,
) -> Result<Vec<(bool, DateTime<Utc>)>, Denial> {
    let mut starts = Vec::with_capacity(rows.len());
    for r in rows.iter().map(std::borrow::Borrow::borrow) {
        let Some(p) = Period::parse(&r.period) else {
            starts.push((false, r.period_start));
            continue;
        };
        let current = p.start(now);
        let rolled = r.period_start < current;
        let (spent, reserved) = if rolled {
            (Decimal::ZERO, Decimal::ZERO)
        } else {
            (r.spent_usd, r.reserved_usd)
        };
        if spent + reserved + amount > r.limit_usd {
            let scope = match &r.feature {
                Some(f) => format!("{tenant}/{f}"),
                None => tenant.to_string(),
            };
            let msg = format!(
                "{} budget of {scope} is {} USD: {spent} spent, {reserved} held, this job may cost up to {amount}",
                r.period, r.limit_usd
            );
            return Err(if r.policy == "defer" {
                let until = (p.next_start(now) - now).to_std().unwrap_or(DEFER_RECHECK);
                Denial::Defer(msg, until.min(DEFER_RECHECK))
            } else {
                Denial::Fail(msg)
            });
        }
        starts.push((rolled, current));
    }
    Ok(starts)
}

/// The subject on which `switchyard budget set` tells every worker that budgets changed.
pub fn changed_subject(prefix: &str) -> String {
    format!("{prefix}.ctl.budgets")
}

pub struct Budgets {
    pool: PgPool,
    reserver: store::budgets::Reserver,
    clock: Arc<dyn Clock>,
    /// Tenants with a budget and the largest share of a limit each has used; read again
    /// every few seconds, and at once when `budget set` says something changed.
    tenants: Mutex<(Option<tokio::time::Instant>, HashMap<String, Decimal>)>,
}

impl Budgets {
    /// Starts the reservation loop (batches of up to `max_batch`, lingering at most
    /// `linger` for more), so call it inside the runtime.
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>, max_batch: usize, linger: Duration) -> Budgets {
        Budgets {
            reserver: store::budgets::Reserver::start(pool.clone(), max_batch, linger),
            pool,
            clock,
            tenants: Mutex::new((None, HashMap::new())),
        }
    }

    /// Budgets changed (`budget set`): read them again on the next job.
    pub fn invalidate(&self) {
        if let Ok(mut guard) = self.tenants.lock() {
            guard.0 = None;
        }
    }

    /// The largest share of one of `tenant`'s limits used (spent and held), as last
    /// read (at most a few seconds old); `None` when it has no budget.
    pub fn used_share(&self, tenant: &str) -> Option<Decimal> {
        self.tenants
            .lock()
            .ok()
            .and_then(|g| g.1.get(tenant).copied())
    }

    /// Does a budget apply to `tenant`, as read less than a few seconds ago? `None`: the
    /// list is due to be read again ([`Budgets::has_budget`]).
    pub fn knows(&self, tenant: &str) -> Option<bool> {
        let guard = self.tenants.lock().ok()?;
        match &*guard {
            (Some(at), map) if at.elapsed() < REFRESH => Some(map.contains_key(tenant)),
            _ => None,
        }
    }

    /// Does a budget apply to `tenant` (as read at most a few seconds ago)?
    pub async fn has_budget(&self, tenant: &str) -> Result<bool, StoreError> {
        {
            let guard = self.tenants.lock().map_err(|_| StoreError::Closed)?;
            if let (Some(at), map) = &*guard {
                if at.elapsed() < REFRESH {
                    return Ok(map.contains_key(tenant));
                }
            }
        }
        let map: HashMap<String, Decimal> = store::budgets::tenants_with_budgets(&self.pool)
            .await?
            .into_iter()
            .collect();
        let has = map.contains_key(tenant);
        if let Ok(mut guard) = self.tenants.lock() {
            *guard = (Some(tokio::time::Instant::now()), map);
        }
        Ok(has)
    }

    /// The reservation a claim's opening held (see [`crate::store::Opening`]).
    pub fn held(
        &self,
        lease: &Lease,
        tenant: &str,
        feature: Option<&str>,
        amount: Decimal,
    ) -> Reservation {
        Reservation {
            tenant: tenant.to_string(),
            feature: feature.map(str::to_string),
            amount,
            lease_token: lease.token().to_string(),
            settled: false,
        }
    }

    /// The time reservations are judged at (a budget period's turn).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Reserve `amount()` (worked out only when a budget applies) against every budget of
    /// the job's tenant (and tenant + feature), under the job's lease. `Ok(Ok(None))`: no
    /// budget applies, nothing is held.
    pub async fn reserve(
        &self,
        lease: &Lease,
        tenant: &str,
        job_id: &str,
        feature: Option<&str>,
        amount: impl FnOnce() -> Decimal,
    ) -> Result<Result<Option<Reservation>, Denial>, StoreError> {
        if !self.has_budget(tenant).await? {
            return Ok(Ok(None));
        }
        let amount = amount();
        let req = store::budgets::ReserveRequest {
            lease_token: lease.token().to_string(),
            tenant: tenant.to_string(),
            job_id: job_id.to_string(),
            feature: feature.map(str::to_string),
            amount,
            now: self.clock.now(),
        };
        let done = self.reserver.reserve(req).await?;
        Ok(match done {
            None => Ok(None),
            Some(Err(denial)) => Err(denial),
            Some(Ok(())) => Ok(Some(Reservation {
                tenant: tenant.to_string(),
                feature: feature.map(str::to_string),
                amount,
                lease_token: lease.token().to_string(),
                settled: false,
            })),
        })
    }
}

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

    fn row(period: &str, limit: i64, spent: i64, start: DateTime<Utc>, policy: &str) -> BudgetRow {
        BudgetRow {
            feature: None,
            period: period.into(),
            limit_usd: Decimal::new(limit, 2),
            spent_usd: Decimal::new(spent, 2),
            reserved_usd: Decimal::ZERO,
            policy: policy.into(),
            period_start: start,
        }
    }

    #[test]
    fn check_denies_an_overrun_and_restarts_a_turned_period() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let today = Period::Day.start(now);
        let yesterday = today - chrono::Duration::days(1);
        // 0.90 of 1.00 spent today: 0.05 fits, 0.20 does not.
        let rows = [row("day", 100, 90, today, "fail")];
        assert_eq!(
            check("acme", &rows, Decimal::new(5, 2), now),
            Ok(vec![(false, today)])
        );
        assert!(matches!(
            check("acme", &rows, Decimal::new(20, 2), now),
            Err(Denial::Fail(m)) if m.contains("day budget of acme is 1.00 USD")
        ));
        // The same spend yesterday does not count today.
        let rows = [row("day", 100, 90, yesterday, "fail")];
        assert_eq!(
            check("acme", &rows, Decimal::new(20, 2), now),
            Ok(vec![(true, today)])
        );
        // Defer waits until the period turns, at most DEFER_RECHECK.
        let rows = [row("day", 100, 100, today, "defer")];
        assert!(matches!(
            check("acme", &rows, Decimal::new(1, 2), now),
            Err(Denial::Defer(_, d)) if d == DEFER_RECHECK
        ));
        let late = Utc.with_ymd_and_hms(2026, 12, 7, 23, 59, 0).unwrap();
        assert!(matches!(
            check("acme", &rows, Decimal::new(1, 2), late),
            Err(Denial::Defer(_, d)) if d == Duration::from_secs(60)
        ));
    }
}
