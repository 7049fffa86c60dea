//! Provider batches in Postgres (`batch_items`, `batches`; DESIGN.md "Provider batch
//! APIs"): parking a job, gathering parked jobs into a batch, leases on batches, and the
//! end of a batch (each answered job's cost row at the batch price, in the same
//! transaction as its item's new state, so a batch fanned out twice charges once).

use super::StoreError;
use crate::job::{Output, Usage};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use std::time::Duration;

/// A job to park.
#[derive(Debug, Clone)]
pub struct ParkRequest<'a> {
    pub tenant: &'a str,
    pub id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub max_tokens: u32,
    pub route: Option<serde_json::Value>,
    pub subject: &'a str,
    pub payload: &'a [u8],
}

/// A parked job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    Parked,
    Submitted,
    Answered,
    Live,
}

impl ItemState {
    fn parse(s: &str) -> ItemState {
        match s {
            "submitted" => ItemState::Submitted,
            "answered" => ItemState::Answered,
            "live" => ItemState::Live,
            _ => ItemState::Parked,
        }
    }
}

/// What a batch answered for one job (`batch_items.answer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub output: Output,
    pub usage: Usage,
}

/// A parked job as stored.
#[derive(Debug, Clone)]
pub struct Item {
    pub tenant: String,
    pub id: String,
    pub provider: String,
    pub model: String,
    pub max_tokens: u32,
    pub route: Option<serde_json::Value>,
    pub subject: String,
    pub payload: Vec<u8>,
    pub state: ItemState,
    pub batch_id: Option<String>,
    pub line: Option<u32>,
    pub answer: Option<BatchAnswer>,
    pub message: Option<String>,
}

/// What parking did.
#[derive(Debug)]
pub enum Parked {
    /// Parked now.
    New,
    /// The job was parked already (by an earlier delivery of it).
    Already(Box<Item>),
}

const ITEM_COLUMNS: &str = "tenant, id, provider, model, max_tokens, route, subject, payload, \
                            state, batch_id, line, answer, message";

fn item(r: &sqlx::postgres::PgRow) -> Result<Item, sqlx::Error> {
    let answer: Option<serde_json::Value> = r.try_get("answer")?;
    Ok(Item {
        tenant: r.try_get("tenant")?,
        id: r.try_get("id")?,
        provider: r.try_get("provider")?,
        model: r.try_get("model")?,
        max_tokens: r.try_get::<i32, _>("max_tokens")?.max(1) as u32,
        route: r.try_get("route")?,
        subject: r.try_get("subject")?,
        payload: r.try_get("payload")?,
        state: ItemState::parse(r.try_get::<&str, _>("state")?),
        batch_id: r.try_get("batch_id")?,
        line: r
            .try_get::<Option<i32>, _>("line")?
            .map(|l| l.max(0) as u32),
        answer: answer.and_then(|a| serde_json::from_value(a).ok()),
        message: r.try_get("message")?,
    })
}

/// Park a job (committed when this returns), or tell how it was parked before.
pub async fn park(pool: &PgPool, p: &ParkRequest<'_>) -> Result<Parked, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO batch_items (tenant, id, provider, model, max_tokens, route, subject, payload, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'parked')
         ON CONFLICT (tenant, id) DO NOTHING",
    )
    .bind(p.tenant)
    .bind(p.id)
    .bind(p.provider)
    .bind(p.model)
    .bind(i32::try_from(p.max_tokens).unwrap_or(i32::MAX))
    .bind(&p.route)
    .bind(p.subject)
    .bind(p.payload)
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    if inserted.rows_affected() == 1 {
        return Ok(Parked::New);
    }
    match find(pool, p.tenant, p.id).await? {
        Some(i) => Ok(Parked::Already(Box::new(i))),
        // Swept between the two statements (its job had ended): park it again.
        None => Box::pin(park(pool, p)).await,
    }
}

/// The parked job `(tenant, id)`, if any.
pub async fn find(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<Item>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM batch_items WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)?;
    row.as_ref()
        .map(item)
        .transpose()
        .map_err(StoreError::classify)
}

/// A batch being built or run, held under its lease by one worker.
#[derive(Debug, Clone)]
pub struct HeldBatch {
    pub id: String,
    pub provider: String,
    pub model: String,
    /// `submitting`, `submitted`, `cancelling` or `fanout`.
    pub state: String,
    pub provider_batch_id: Option<String>,
    pub deadline_passed: bool,
    pub lease_token: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Gather parked jobs of one provider and model (one of `providers`) into a new batch
/// (state `submitting`, held under a lease) when there are `max_jobs` of them or the
/// oldest has waited `max_wait`; the batch and its items' assignment commit together.
pub async fn gather(
    pool: &PgPool,
    providers: &[String],
    max_jobs: usize,
    max_wait: Duration,
    lease: Duration,
    deadline: Duration,
) -> Result<Option<(HeldBatch, Vec<Item>)>, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    let group: Option<(String, String)> = sqlx::query_as(
        "SELECT provider, model FROM batch_items
          WHERE state = 'parked' AND provider = ANY($1)
          GROUP BY provider, model
         HAVING count(*) >= $2 OR min(parked_at) <= now() - make_interval(secs => $3)
          ORDER BY min(parked_at) LIMIT 1",
    )
    .bind(providers)
    .bind(max_jobs as i64)
    .bind(max_wait.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    let Some((provider, model)) = group else {
        return Ok(None);
    };
    let rows = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM batch_items
          WHERE state = 'parked' AND provider = $1 AND model = $2
          ORDER BY parked_at, tenant, id LIMIT $3 FOR UPDATE SKIP LOCKED"
    ))
    .bind(&provider)
    .bind(&model)
    .bind(max_jobs as i64)
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut items = rows
        .iter()
        .map(item)
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::classify)?;
    let id = format!("sybatch_{:032x}", rand::random::<u128>());
    let token = format!("{:032x}", rand::random::<u128>());
    let created_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO batches (id, provider, model, state, items, lease_token, lease_until, deadline_at)
         VALUES ($1, $2, $3, 'submitting', $4, $5, now() + make_interval(secs => $6),
                 now() + make_interval(secs => $7))
         RETURNING created_at",
    )
    .bind(&id)
    .bind(&provider)
    .bind(&model)
    .bind(items.len() as i32)
    .bind(&token)
    .bind(lease.as_secs_f64())
    .bind(deadline.as_secs_f64())
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    let tenants: Vec<&str> = items.iter().map(|i| i.tenant.as_str()).collect();
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    let lines: Vec<i32> = (0..items.len() as i32).collect();
    sqlx::query(
        "UPDATE batch_items b SET state = 'submitted', batch_id = $1, line = x.line
           FROM unnest($2::text[], $3::text[], $4::integer[]) AS x(tenant, id, line)
          WHERE b.tenant = x.tenant AND b.id = x.id",
    )
    .bind(&id)
    .bind(&tenants)
    .bind(&ids)
    .bind(&lines)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    for (i, it) in items.iter_mut().enumerate() {
        it.state = ItemState::Submitted;
        it.batch_id = Some(id.clone());
        it.line = Some(i as u32);
    }
    Ok(Some((
        HeldBatch {
            id,
            provider,
            model,
            state: "submitting".into(),
            provider_batch_id: None,
            deadline_passed: false,
            lease_token: token,
            created_at,
        },
        items,
    )))
}

/// Take the lease of an open batch (of one of `providers`) that is due a look: one being
/// polled, or one whose submitting or fanning-out worker died (its lease ran out).
pub async fn take_due(
    pool: &PgPool,
    providers: &[String],
    lease: Duration,
) -> Result<Option<HeldBatch>, StoreError> {
    let token = format!("{:032x}", rand::random::<u128>());
    let row = sqlx::query(
        "UPDATE batches SET lease_token = $2, lease_until = now() + make_interval(secs => $3)
          WHERE id = (SELECT id FROM batches
                       WHERE state <> 'done' AND provider = ANY($1) AND next_poll_at <= now()
                         AND (lease_until IS NULL OR lease_until < now())
                       ORDER BY next_poll_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, provider, model, state, provider_batch_id, deadline_at < now() AS late,
                   created_at",
    )
    .bind(providers)
    .bind(&token)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)?;
    let Some(r) = row else { return Ok(None) };
    let get = || -> Result<HeldBatch, sqlx::Error> {
        Ok(HeldBatch {
            id: r.try_get("id")?,
            provider: r.try_get("provider")?,
            model: r.try_get("model")?,
            state: r.try_get("state")?,
            provider_batch_id: r.try_get("provider_batch_id")?,
            deadline_passed: r.try_get("late")?,
            lease_token: token.clone(),
            created_at: r.try_get("created_at")?,
        })
    };
    get().map(Some).map_err(StoreError::classify)
}

/// The items of a batch, by line.
pub async fn items_of(pool: &PgPool, batch_id: &str) -> Result<Vec<Item>, StoreError> {
    items_where(pool, "batch_id = $1", batch_id).await
}

/// Items of the batch `$1` that match `filter`, by line.
async fn items_where(pool: &PgPool, filter: &str, batch_id: &str) -> Result<Vec<Item>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS} FROM batch_items WHERE {filter} ORDER BY line"
    ))
    .bind(batch_id)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    rows.iter()
        .map(item)
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::classify)
}

/// Let a held batch go until its next look, in `state` (and with the provider's id, once
/// it has one). False when the lease was lost (another worker holds the batch).
pub async fn release(
    pool: &PgPool,
    b: &HeldBatch,
    state: &str,
    provider_batch_id: Option<&str>,
    provider_status: Option<&str>,
    next_look: Duration,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE batches SET state = $3, provider_batch_id = coalesce($4, provider_batch_id),
                provider_status = coalesce($5, provider_status),
                submitted_at = CASE WHEN $4::text IS NOT NULL THEN coalesce(submitted_at, now()) ELSE submitted_at END,
                lease_token = NULL, lease_until = NULL,
                next_poll_at = now() + make_interval(secs => $6)
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(&b.id)
    .bind(&b.lease_token)
    .bind(state)
    .bind(provider_batch_id)
    .bind(provider_status)
    .bind(next_look.as_secs_f64())
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(r.rows_affected() == 1)
}

/// How one item of an ended batch ends.
#[derive(Debug, Clone)]
pub struct Settle {
    pub tenant: String,
    pub id: String,
    pub outcome: SettleOutcome,
}

#[derive(Debug, Clone)]
pub enum SettleOutcome {
    /// Answered: its cost row (outcome `succeeded`) and answer.
    Answered {
        answer: BatchAnswer,
        cost_usd: Decimal,
    },
    /// Not answered usably: it runs live. `call`: the failed call's cost row (outcome,
    /// status, billed usage and its cost) when the batch made one.
    Live {
        message: String,
        call: Option<(String, Option<u16>, Usage, Decimal)>,
    },
}

/// The end of a batch, in one transaction: each still-submitted item becomes answered
/// (with its cost row at the batch price, and that spend on the tenant's budgets) or live
/// (with the failed call's row when there was a call); the batch goes to `fanout`. An item
/// settled already (a worker died after this committed and another did it again) is left
/// alone, so nothing is charged twice. False when the batch's lease was lost.
pub async fn settle(
    pool: &PgPool,
    b: &HeldBatch,
    provider_status: &str,
    latency_ms: u64,
    items: &[Settle],
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    let held = sqlx::query(
        "UPDATE batches SET state = 'fanout', provider_status = $3, finished_at = now()
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(&b.id)
    .bind(&b.lease_token)
    .bind(provider_status)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if held.rows_affected() != 1 {
        return Ok(false);
    }
    let msg = format!("batch {}", b.id);
    for s in items {
        let (state, answer, message, call) = match &s.outcome {
            SettleOutcome::Answered { answer, cost_usd } => (
                "answered",
                serde_json::to_value(answer).ok(),
                None,
                Some((
                    "succeeded".to_string(),
                    Some(200u16),
                    answer.usage,
                    *cost_usd,
                )),
            ),
            SettleOutcome::Live { message, call } => {
                ("live", None, Some(message.clone()), call.clone())
            }
        };
        let moved = sqlx::query(
            "UPDATE batch_items SET state = $4, answer = $5, message = $6
              WHERE tenant = $1 AND id = $2 AND batch_id = $3 AND state = 'submitted'",
        )
        .bind(&s.tenant)
        .bind(&s.id)
        .bind(&b.id)
        .bind(state)
        .bind(answer)
        .bind(&message)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if moved.rows_affected() != 1 {
            continue;
        }
        let Some((outcome, status, usage, cost)) = call else {
            continue;
        };
        let row_message = match &message {
            Some(m) => format!("{msg}: {m}"),
            None => msg.clone(),
        };
        sqlx::query(
            "INSERT INTO cost_rows (tenant, job_id, attempt, feature, user_id, provider, model,
                                    outcome, status_code, input_tokens, cached_input_tokens,
                                    output_tokens, reasoning_tokens, cost_usd, latency_ms, message)
             SELECT $1, $2, coalesce((SELECT max(attempt) FROM cost_rows
                                       WHERE tenant = $1 AND job_id = $2), 0) + 1,
                    j.feature, j.user_id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
               FROM jobs j WHERE j.tenant = $1 AND j.id = $2",
        )
        .bind(&s.tenant)
        .bind(&s.id)
        .bind(&b.provider)
        .bind(&b.model)
        .bind(&outcome)
        .bind(status.map(i32::from))
        .bind(big(usage.input_tokens))
        .bind(big(usage.cached_input_tokens))
        .bind(big(usage.output_tokens))
        .bind(big(usage.reasoning_tokens))
        .bind(cost)
        .bind(big(latency_ms))
        .bind(&row_message)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if !cost.is_zero() {
            sqlx::query(
                "UPDATE budgets b SET spent_usd = b.spent_usd + $3, updated_at = now()
                  FROM jobs j
                 WHERE j.tenant = $1 AND j.id = $2 AND b.tenant = j.tenant
                   AND (b.feature IS NULL OR b.feature = j.feature)",
            )
            .bind(&s.tenant)
            .bind(&s.id)
            .bind(cost)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        }
    }
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(true)
}

/// Items of a fanned-out batch whose re-entry message is not in JetStream yet.
pub async fn unpublished(pool: &PgPool, batch_id: &str) -> Result<Vec<Item>, StoreError> {
    items_where(
        pool,
        "batch_id = $1 AND state IN ('answered', 'live') AND NOT published",
        batch_id,
    )
    .await
}

/// Note that these items' re-entry messages are published.
pub async fn mark_published(pool: &PgPool, keys: &[(String, String)]) -> Result<(), StoreError> {
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    sqlx::query(
        "UPDATE batch_items b SET published = true
           FROM unnest($1::text[], $2::text[]) AS x(tenant, id)
          WHERE b.tenant = x.tenant AND b.id = x.id",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

/// Items parked but not sent because the batch could not be made (the provider refused
/// it): they run live. The batch goes to `fanout` to publish them.
pub async fn abandon(pool: &PgPool, b: &HeldBatch, message: &str) -> Result<bool, StoreError> {
    settle_all_live(pool, b, message).await
}

async fn settle_all_live(pool: &PgPool, b: &HeldBatch, message: &str) -> Result<bool, StoreError> {
    let items = items_of(pool, &b.id).await?;
    let settles: Vec<Settle> = items
        .into_iter()
        .map(|i| Settle {
            tenant: i.tenant,
            id: i.id,
            outcome: SettleOutcome::Live {
                message: message.to_string(),
                call: None,
            },
        })
        .collect();
    settle(pool, b, "not_submitted", 0, &settles).await
}

/// The end: no item left to publish.
pub async fn finish(pool: &PgPool, b: &HeldBatch) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE batches SET state = 'done', lease_token = NULL, lease_until = NULL
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(&b.id)
    .bind(&b.lease_token)
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

/// Delete the items whose jobs have ended since their re-entry was published.
pub async fn sweep(pool: &PgPool) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "DELETE FROM batch_items b USING jobs j
          WHERE b.published AND j.tenant = b.tenant AND j.id = b.id
            AND j.status IN ('succeeded', 'failed')",
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(r.rows_affected())
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the batch gauges show: jobs parked and not in a batch yet, batches not done, and
/// the age in seconds of the oldest of those (0 when none).
pub async fn levels(pool: &PgPool) -> Result<(i64, i64, f64), StoreError> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM batch_items WHERE state = 'parked') AS parked,
                count(*) AS open,
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age
           FROM batches WHERE state <> 'done'",
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok((row.get("parked"), row.get("open"), row.get("age")))
}
