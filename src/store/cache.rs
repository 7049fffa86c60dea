//! The response cache's table, `cache_entries` (see `crate::cache` for what is cached
//! and under which key).
//!
//! - Lookups are batched like claims: many jobs' `(tenant, key)` in one indexed statement
//!   (the primary key), answered each with its entry or nothing. Only jobs the cache
//!   applies to ask, so a worker with the cache off makes none.
//! - Entries are written by the group commit ([`super::writer`]) with the final row of
//!   the job that produced them, only when that row lands (a failed job stores nothing).
//!   One entry per `(tenant, key)`: the last answer stored replaces the one before.
//! - An entry is served while younger than the TTL the config gives now and not past its
//!   own `expires_at`; [`sweep`] deletes expired ones.

use super::batch::{next_batch, Asker, Lanes, Reply};
use super::StoreError;
use crate::job::{Output, Usage};
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a succeeded job stores (with its final row).
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub key: [u8; 32],
    pub ttl_s: u64,
    pub provider: String,
    pub model: String,
    /// The result's `output`, as JSON.
    pub output: Box<serde_json::value::RawValue>,
    pub usage: Usage,
    /// What the job's calls cost: what a later hit saves.
    pub cost_usd: Decimal,
    /// The prompt's embedding, when a semantic scope stored it (see `super::semantic`).
    pub semantic: Option<super::semantic::SemanticColumns>,
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    pub provider: String,
    pub model: String,
    pub output: Output,
    /// The tokens the original call was billed for.
    pub usage: Usage,
    /// What the original call cost.
    pub cost_usd: Decimal,
    /// The job whose answer this is.
    pub job_id: String,
}

/// One job's lookup.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub tenant: String,
    pub key: [u8; 32],
    /// Entries older than this are not served.
    pub ttl_s: u64,
}

/// The asking side of the lookup loop.
#[derive(Clone)]
pub struct CacheLookups {
    asker: Asker<Lookup, Option<CachedAnswer>>,
    /// For the semantic cache's lookups (not batched: see `super::semantic`).
    pub(super) pool: PgPool,
}

impl CacheLookups {
    /// Start the lookup loop; it ends when every clone is dropped.
    pub fn start(
        pool: PgPool,
        max_batch: usize,
        linger: Duration,
    ) -> (CacheLookups, tokio::task::JoinHandle<()>) {
        let (asker, rx) = Asker::channel(max_batch);
        let handle = tokio::spawn(run(pool.clone(), rx, max_batch, linger));
        (CacheLookups { asker, pool }, handle)
    }

    /// The live entry for `req`, if any.
    pub async fn get(&self, req: Lookup) -> Result<Option<CachedAnswer>, StoreError> {
        self.asker.ask(req).await
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<(Lookup, Reply<Option<CachedAnswer>>)>,
    max_batch: usize,
    linger: Duration,
) {
    let lanes = Lanes::default();
    while let Some(batch) = next_batch(&mut rx, max_batch, linger).await {
        lanes.run(lookup_and_reply(pool.clone(), batch)).await;
    }
    lanes.drain().await;
}

async fn lookup_and_reply(pool: PgPool, batch: Vec<(Lookup, Reply<Option<CachedAnswer>>)>) {
    let reqs: Vec<&Lookup> = batch.iter().map(|(r, _)| r).collect();
    match super::retry_conflicts(|| lookup_batch(&pool, &reqs)).await {
        Ok(mut found) => {
            for (i, (_, reply)) in batch.into_iter().enumerate() {
                let _ = reply.send(Ok(found.get_mut(i).and_then(Option::take)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = batch.len(), "cache lookup failed");
            for (_, reply) in batch {
                let _ = reply.send(Err(e.shared()));
            }
        }
    }
}

/// n (1-based position in the batch), provider, model, output, input, cached input and
/// output tokens, cost, job id
type EntryRow = (
    i64,
    String,
    String,
    serde_json::Value,
    i64,
    i64,
    i64,
    Decimal,
    String,
);

const LOOKUP_SQL: &str = r#"
SELECT i.n, e.provider, e.model, e.output, e.input_tokens, e.cached_input_tokens,
       e.output_tokens, e.cost_usd, e.job_id
  FROM unnest($1::text[], $2::bytea[], $3::bigint[]) WITH ORDINALITY AS i(tenant, key_hash, ttl_s, n)
  JOIN cache_entries e ON e.tenant = i.tenant AND e.key_hash = i.key_hash
 WHERE e.expires_at > now()
   AND e.created_at > now() - make_interval(secs => i.ttl_s::double precision)
"#;

/// Each request's entry, by position; only hits come back from Postgres.
async fn lookup_batch(
    pool: &PgPool,
    reqs: &[&Lookup],
) -> Result<Vec<Option<CachedAnswer>>, StoreError> {
    let tenants: Vec<&str> = reqs.iter().map(|r| r.tenant.as_str()).collect();
    let keys: Vec<&[u8]> = reqs.iter().map(|r| &r.key[..]).collect();
    let ttls: Vec<i64> = reqs
        .iter()
        .map(|r| i64::try_from(r.ttl_s).unwrap_or(i64::MAX))
        .collect();
    let rows: Vec<EntryRow> = sqlx::query_as(LOOKUP_SQL)
        .bind(tenants)
        .bind(keys)
        .bind(ttls)
        .fetch_all(pool)
        .await
        .map_err(StoreError::classify)?;
    let mut found: Vec<Option<CachedAnswer>> = vec![None; reqs.len()];
    for (n, provider, model, output, input, cached, out_tokens, cost_usd, job_id) in rows {
        let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| found.get_mut(i)) else {
            continue;
        };
        *slot = answer((
            provider, model, output, input, cached, out_tokens, cost_usd, job_id,
        ));
    }
    Ok(found)
}

/// provider, model, output, input, cached input and output tokens, cost, job id
pub(super) type AnswerRow = (
    String,
    String,
    serde_json::Value,
    i64,
    i64,
    i64,
    Decimal,
    String,
);

/// A stored row as an answer; `None` (logged) when its output is unreadable, which is
/// served as a miss (the next answer stored replaces it).
pub(super) fn answer(row: AnswerRow) -> Option<CachedAnswer> {
    let (provider, model, output, input, cached, out_tokens, cost_usd, job_id) = row;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    match serde_json::from_value::<Output>(output) {
        Ok(output) => Some(CachedAnswer {
            provider,
            model,
            output,
            usage: Usage {
                input_tokens: count(input),
                cached_input_tokens: count(cached),
                output_tokens: count(out_tokens),
                ..Usage::default()
            },
            cost_usd,
            job_id,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "a cache entry's output is unreadable");
            None
        }
    }
}

/// Entries deleted per statement of a sweep.
const SWEEP_BATCH: i64 = 10_000;
/// How often a worker sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Delete expired entries (in slices, so no statement holds many locks); how many.
pub async fn sweep(pool: &PgPool) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM cache_entries WHERE ctid IN (
                 SELECT ctid FROM cache_entries WHERE expires_at <= now() LIMIT $1)",
        )
        .bind(SWEEP_BATCH)
        .execute(pool)
        .await
        .map_err(StoreError::classify)?
        .rows_affected();
        total += done;
        if done < SWEEP_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Sweep every [`SWEEP_EVERY`] until `stop`.
pub async fn sweep_until(pool: PgPool, stop: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => match sweep(&pool).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired cache entries swept"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired cache entries failed"),
            },
        }
    }
}
