//! The SQL of budgets: reserving before a job's calls, releasing reservations, sweeping
//! those whose owner died. What a budget allows is decided in [`crate::budget`]; spend is
//! added by the group commit from the cost rows it inserts ([`super::writer`]).

use super::batch::{next_batch, Asker, Reply};
use super::StoreError;
use crate::budget::{check, Denial};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use std::time::Duration;
use tokio::sync::mpsc;

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

/// What a reservation asks for (owned: it goes to the batch loop).
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub lease_token: String,
    pub tenant: String,
    pub job_id: String,
    pub feature: Option<String>,
    pub amount: Decimal,
    pub now: DateTime<Utc>,
}

/// How one reservation came out: `None` when no budget applies.
pub type ReserveOutcome = Option<Result<(), Denial>>;

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

/// Reservations go through one loop per worker that takes many at a time: one
/// transaction (one WAL flush) per batch, not per job.
#[derive(Clone)]
pub struct Reserver {
    asker: Asker<ReserveRequest, ReserveOutcome>,
}

type ReserveReply = Reply<ReserveOutcome>;

impl Reserver {
    /// Start the loop; it ends when every `Reserver` clone is dropped.
    pub fn start(pool: PgPool, max_batch: usize, linger: Duration) -> Reserver {
        let (asker, rx) = Asker::channel(max_batch);
        tokio::spawn(reserve_loop(pool, rx, max_batch, linger));
        Reserver { asker }
    }

    pub async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        self.asker.ask(req).await
    }
}

async fn reserve_loop(
    pool: PgPool,
    mut rx: mpsc::Receiver<(ReserveRequest, ReserveReply)>,
    max_batch: usize,
    linger: Duration,
) {
    while let Some(batch) = next_batch(&mut rx, max_batch, linger).await {
        let (reqs, replies): (Vec<ReserveRequest>, Vec<ReserveReply>) = batch.into_iter().unzip();
        match super::retry_conflicts(|| reserve_batch(&pool, &reqs)).await {
            Ok(outcomes) => {
                for (reply, o) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            // Refused for its data (a lease token again, say): each on its own, so only
            // the one at fault gets the error.
            Err(e) if !e.is_unavailable() && reqs.len() > 1 => {
                for (req, reply) in reqs.iter().zip(replies) {
                    let one = reserve_batch(&pool, std::slice::from_ref(req)).await;
                    let _ = reply.send(one.map(|mut o| o.pop().flatten()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.shared()));
                }
            }
        }
    }
}

/// One transaction for many reservations (see [`lock_and_decide`]), all or nothing.
async fn reserve_batch(
    pool: &PgPool,
    reqs: &[ReserveRequest],
) -> Result<Vec<ReserveOutcome>, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    let (outcomes, held) = lock_and_decide(&mut tx, reqs).await?;
    write_held(&mut tx, &held, &[]).await?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(outcomes)
}

/// What a batch of reservations decided to write: the budget rows that changed and the
/// requests held.
#[derive(Default)]
pub(super) struct Held<'a> {
    changed: Vec<(String, BudgetRow)>,
    held: Vec<&'a ReserveRequest>,
}

/// A `started` cost row written with a batch of reservations (a claim's first call).
pub(super) struct StartedRow<'a> {
    pub tenant: &'a str,
    pub job_id: &'a str,
    pub feature: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub provider: &'a str,
    pub model: &'a str,
}

/// Lock every budget row of the batch's tenants (in one order, so two workers' batches
/// cannot deadlock), then decide each request in turn against the amounts held so far
/// ([`crate::budget::check`]). Nothing is written yet ([`write_held`]).
pub(super) async fn lock_and_decide<'a>(
    tx: &mut Transaction<'_, Postgres>,
    reqs: &'a [ReserveRequest],
) -> Result<(Vec<ReserveOutcome>, Held<'a>), StoreError> {
    let mut tenants: Vec<&str> = reqs.iter().map(|r| r.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let locked: Vec<(String, BudgetRow)> = sqlx::query_as::<_, LockedRow>(
        "SELECT tenant, feature, period, limit_usd, spent_usd, reserved_usd, policy, period_start
           FROM budgets WHERE tenant = ANY($1)
          ORDER BY tenant, feature NULLS FIRST, period FOR UPDATE",
    )
    .bind(&tenants)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::classify)?
    .into_iter()
    .map(LockedRow::split)
    .collect();
    let mut rows: Vec<(String, BudgetRow, bool)> =
        locked.into_iter().map(|(t, r)| (t, r, false)).collect();
    let mut outcomes = Vec::with_capacity(reqs.len());
    let mut held: Vec<&ReserveRequest> = Vec::new();
    for req in reqs {
        let applies: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                let (t, r, _) = &rows[i];
                *t == req.tenant && (r.feature.is_none() || r.feature == req.feature)
            })
            .collect();
        if applies.is_empty() {
            outcomes.push(None);
            continue;
        }
        let view: Vec<&BudgetRow> = applies.iter().map(|&i| &rows[i].1).collect();
        match check(&req.tenant, &view, req.amount, req.now) {
            Err(denial) => outcomes.push(Some(Err(denial))),
            Ok(starts) => {
                for (&i, (rolled, start)) in applies.iter().zip(starts) {
                    let (_, r, changed) = &mut rows[i];
                    if rolled {
                        r.spent_usd = Decimal::ZERO;
                        r.reserved_usd = Decimal::ZERO;
                    }
                    r.reserved_usd += req.amount;
                    r.period_start = start;
                    *changed = true;
                }
                held.push(req);
                outcomes.push(Some(Ok(())));
            }
        }
    }
    let changed = rows
        .into_iter()
        .filter(|r| r.2)
        .map(|(t, r, _)| (t, r))
        .collect();
    Ok((outcomes, Held { changed, held }))
}

/// The budget rows that changed, the reservations held and `started` cost rows, in one
/// statement; the started rows that went in come back (one that clashed with an
/// existing row does not).
const WRITE_HELD_SQL: &str = r#"
WITH bu AS (
    UPDATE budgets b SET spent_usd = x.spent, reserved_usd = x.reserved,
           period_start = x.start, updated_at = now()
      FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[],
                  $6::timestamptz[]) AS x(tenant, feature, period, spent, reserved, start)
     WHERE b.tenant = x.tenant AND b.feature IS NOT DISTINCT FROM x.feature
       AND b.period = x.period
    RETURNING 1
), br AS (
    INSERT INTO budget_reservations (lease_token, tenant, job_id, feature, amount_usd)
    SELECT * FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::numeric[])
    RETURNING 1
)
-- bu and br run whether or not they are read, as every data-modifying WITH does.
INSERT INTO cost_rows (tenant, job_id, attempt, feature, user_id, provider, model, outcome,
                       input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
                       cost_usd, latency_ms)
SELECT tenant, job_id, 1, feature, user_id, provider, model, 'started', 0, 0, 0, 0, 0, 0
  FROM unnest($12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[])
    AS x(tenant, job_id, feature, user_id, provider, model)
ON CONFLICT (tenant, job_id, attempt) DO NOTHING
RETURNING tenant, job_id
"#;

pub(super) async fn write_held(
    tx: &mut Transaction<'_, Postgres>,
    h: &Held<'_>,
    started: &[StartedRow<'_>],
) -> Result<Vec<(String, String)>, StoreError> {
    if h.changed.is_empty() && h.held.is_empty() && started.is_empty() {
        return Ok(Vec::new());
    }
    let c = &h.changed;
    sqlx::query_as(WRITE_HELD_SQL)
        .bind(c.iter().map(|c| c.0.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|c| c.1.feature.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|c| c.1.period.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|c| c.1.spent_usd).collect::<Vec<_>>())
        .bind(c.iter().map(|c| c.1.reserved_usd).collect::<Vec<_>>())
        .bind(c.iter().map(|c| c.1.period_start).collect::<Vec<_>>())
        .bind(
            h.held
                .iter()
                .map(|r| r.lease_token.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(h.held.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
        .bind(h.held.iter().map(|r| r.job_id.as_str()).collect::<Vec<_>>())
        .bind(
            h.held
                .iter()
                .map(|r| r.feature.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(h.held.iter().map(|r| r.amount).collect::<Vec<_>>())
        .bind(started.iter().map(|r| r.tenant).collect::<Vec<_>>())
        .bind(started.iter().map(|r| r.job_id).collect::<Vec<_>>())
        .bind(started.iter().map(|r| r.feature).collect::<Vec<_>>())
        .bind(started.iter().map(|r| r.user_id).collect::<Vec<_>>())
        .bind(started.iter().map(|r| r.provider).collect::<Vec<_>>())
        .bind(started.iter().map(|r| r.model).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::classify)
}

/// A locked budget row with its tenant.
#[derive(sqlx::FromRow)]
struct LockedRow {
    tenant: String,
    #[sqlx(flatten)]
    row: BudgetRow,
}

impl LockedRow {
    fn split(self) -> (String, BudgetRow) {
        (self.tenant, self.row)
    }
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

/// One budget as `/metrics` shows it: spend in its current period (0 once the period has
/// turned over and no commit has rolled it yet) and what is held.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BudgetLevel {
    pub tenant: String,
    /// Empty for a tenant-wide budget.
    pub feature: String,
    pub period: String,
    pub limit_usd: Decimal,
    pub spent_usd: Decimal,
    pub reserved_usd: Decimal,
}

/// Every configured budget's level (for the metrics poller).
pub async fn budget_levels(pool: &PgPool) -> Result<Vec<BudgetLevel>, StoreError> {
    sqlx::query_as(
        "SELECT tenant, coalesce(feature, '') AS feature, period, limit_usd,
                CASE WHEN period_start < date_trunc(period, now(), 'UTC') THEN 0
                     ELSE spent_usd END AS spent_usd,
                reserved_usd
           FROM budgets",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}
