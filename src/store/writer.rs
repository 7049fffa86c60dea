//! Group commit: the cost rows, final `jobs` rows, lease releases and budget changes of
//! many jobs in one statement (so one atomic round trip per batch).
//!
//! - A call's cost row is written twice: `started` just before the call (so a call whose
//!   worker dies mid-way still has its row; the next delivery marks it `worker_lost`),
//!   then with its outcome, which replaces only a `started` row. A row is never dropped:
//!   a clash of attempt numbers with another delivery's calls (two deliveries ran at once
//!   after a lease ran out) renumbers this job's rows after the ones stored.
//! - A final row lands only while its delivery still owns the job (its lease, or no live
//!   lease at all) and the job has not succeeded already; the caller learns whether it
//!   landed.
//! - Budgets: spend is added from the cost rows inserted, reservations are released with
//!   the lease that owns them.
//! - The response cache: a succeeded job's answer is stored (see [`super::cache`]) only
//!   when its final row lands; a job answered from the cache keeps what it saved on its row.
//! - When Postgres refuses a batch for its data, each job is committed alone, so only the
//!   job at fault gets the error; when Postgres is away, every job gets
//!   [`StoreError::Unavailable`] and its request back, to try again in place.

use super::batch::{next_batch, Lanes};
use super::cache::CacheEntry;
use super::StoreError;
use crate::job::{Attempt, Usage};
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The job a commit is about (what cost rows are attributed to).
#[derive(Debug, Clone, Default)]
pub struct JobKey {
    pub tenant: String,
    pub id: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
}

/// One provider call: what the result lists in `attempts` and what its cost row holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub attempt: Attempt,
    /// The tokens billed for this call (zero when it failed without a body).
    pub usage: Usage,
}

/// A job's final row (`status` succeeded or failed).
#[derive(Debug, Clone)]
pub struct CommitJob {
    pub tenant: String,
    pub id: String,
    pub feature: Option<String>,
    pub user_id: Option<String>,
    pub priority: Option<&'static str>,
    pub task: Option<&'static str>,
    pub requested_model: Option<String>,
    pub status: &'static str,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Decimal,
    pub error_kind: Option<&'static str>,
    pub error_message: Option<String>,
    /// The delivery's lease (none for a payload that was never claimed).
    pub lease_token: Option<String>,
    /// The message that produced this result.
    pub stream_seq: u64,
    /// The published result. Postgres stores its `output` once, in `jobs.output`, and
    /// the rest in `jobs.result` (readers put the two together again).
    pub result: Box<serde_json::value::RawValue>,
    /// Answered from the response cache: what the call would have cost
    /// (`jobs.cache_hit`, `jobs.cache_saved_usd`).
    pub cache_saved_usd: Option<Decimal>,
    /// The answer to store in the response cache, when this row lands.
    pub cache_entry: Option<Box<CacheEntry>>,
    /// Answered from the cache: the job whose stored answer it got (`jobs.cache_source`).
    pub cache_source: Option<String>,
}

/// A delivery that ends without a final row: its lease (and budget reservation) is let go.
#[derive(Debug, Clone)]
pub struct Release {
    pub lease_token: String,
    /// The hand-back is not a failure of the job (a budget defer, our own outage): it does
    /// not count against `worker.max_deliveries`.
    pub free: bool,
}

/// What one job commits.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    pub key: JobKey,
    pub calls: Vec<CallRecord>,
    pub job: Option<CommitJob>,
    pub release: Option<Release>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The final row landed. False when another delivery owns the job now (or it had
    /// succeeded): the cost rows are in, the result is that delivery's to give.
    pub final_landed: bool,
}

pub type CommitError = Box<(StoreError, CommitRequest)>;
type Reply = oneshot::Sender<Result<CommitOutcome, CommitError>>;

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(CommitRequest, Reply)>,
}

impl Writer {
    /// Start the commit loop; it drains and ends when every `Writer` clone is dropped.
    pub fn start(
        pool: PgPool,
        max_batch: usize,
        linger: Duration,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let handle = tokio::spawn(run(pool, rx, max_batch, linger));
        (Writer { tx }, handle)
    }

    /// Commit, and return once the rows are durable. On failure the request comes back,
    /// so it can be tried again.
    pub async fn commit(&self, req: CommitRequest) -> Result<CommitOutcome, CommitError> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError((req, _))) = self.tx.send((req, tx)).await {
            return Err(Box::new((StoreError::Closed, req)));
        }
        match rx.await {
            Ok(r) => r,
            // The loop is gone with the request; nothing was committed.
            Err(_) => Err(Box::new((StoreError::Closed, CommitRequest::default()))),
        }
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<(CommitRequest, Reply)>,
    max_batch: usize,
    linger: Duration,
) {
    let lanes = Lanes::default();
    while let Some(batch) = next_batch(&mut rx, max_batch, linger).await {
        let pool = pool.clone();
        lanes.run(commit_and_reply(pool, batch)).await;
    }
    lanes.drain().await;
}

/// One batch: commit it and answer each request.
async fn commit_and_reply(pool: PgPool, batch: Vec<(CommitRequest, Reply)>) {
    let (reqs, replies): (Vec<CommitRequest>, Vec<Reply>) = batch.into_iter().unzip();
    match commit_batch(&pool, &reqs).await {
        Ok(landed) => {
            for (reply, ok) in replies.into_iter().zip(landed) {
                let _ = reply.send(Ok(CommitOutcome { final_landed: ok }));
            }
        }
        Err(e) if e.is_unavailable() || reqs.len() == 1 => {
            tracing::warn!(error = %e, jobs = replies.len(), "group commit failed");
            for (req, reply) in reqs.into_iter().zip(replies) {
                let _ = reply.send(Err(Box::new((e.shared(), req))));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = replies.len(),
                "group commit refused; committing one job at a time");
            for (req, reply) in reqs.into_iter().zip(replies) {
                let out = match commit_batch(&pool, std::slice::from_ref(&req)).await {
                    Ok(landed) => Ok(CommitOutcome {
                        final_landed: landed.first().copied().unwrap_or(false),
                    }),
                    Err(e) => Err(Box::new((e, req))),
                };
                let _ = reply.send(out);
            }
        }
    }
}

/// Cost rows that clashed with another delivery's rows of the same attempt number: insert
/// them numbered after the highest stored one (tried a few times against a concurrent
/// clash).
async fn renumber(pool: &PgPool, key: &JobKey, calls: &[&CallRecord]) -> Result<(), StoreError> {
    let mut last = None;
    for _ in 0..5 {
        let max: Option<i32> = sqlx::query_scalar(
            "SELECT max(attempt) FROM cost_rows WHERE tenant = $1 AND job_id = $2",
        )
        .bind(&key.tenant)
        .bind(&key.id)
        .fetch_one(pool)
        .await
        .map_err(StoreError::classify)?;
        let next = max.unwrap_or(0).max(0) as u32 + 1;
        tracing::warn!(tenant = %key.tenant, id = %key.id, from = next, calls = calls.len(),
            "attempt numbers clash with another delivery's calls; renumbering");
        let moved: Vec<CallRecord> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = (*c).clone();
                c.attempt.attempt = next + i as u32;
                c
            })
            .collect();
        let req = CommitRequest {
            key: key.clone(),
            calls: moved,
            job: None,
            release: None,
        };
        match insert(pool, std::slice::from_ref(&req)).await {
            Ok((_, missing)) if missing.is_empty() => return Ok(()),
            Ok(_) => last = Some(StoreError::Rejected("attempt numbers clash again".into())),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(StoreError::Rejected("attempt numbers clash".into())))
}

/// The cost rows of a statement, column by column (bound as arrays and unnested: binary,
/// no JSON for either side to write or parse).
#[derive(Default)]
struct CostColumns<'a> {
    tenant: Vec<&'a str>,
    job_id: Vec<&'a str>,
    attempt: Vec<i32>,
    feature: Vec<Option<&'a str>>,
    user_id: Vec<Option<&'a str>>,
    provider: Vec<&'a str>,
    model: Vec<&'a str>,
    outcome: Vec<&'a str>,
    status_code: Vec<Option<i32>>,
    input_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    reasoning_tokens: Vec<i64>,
    cost_usd: Vec<Decimal>,
    latency_ms: Vec<i64>,
    message: Vec<Option<&'a str>>,
}

impl<'a> CostColumns<'a> {
    fn push(&mut self, k: &'a JobKey, c: &'a CallRecord) {
        let a = &c.attempt;
        self.tenant.push(&k.tenant);
        self.job_id.push(&k.id);
        self.attempt.push(a.attempt as i32);
        self.feature.push(k.feature.as_deref());
        self.user_id.push(k.user_id.as_deref());
        self.provider.push(&a.provider);
        self.model.push(&a.model);
        self.outcome.push(&a.outcome);
        self.status_code.push(a.status.map(i32::from));
        self.input_tokens.push(big(c.usage.input_tokens));
        self.cached_input_tokens
            .push(big(c.usage.cached_input_tokens));
        self.output_tokens.push(big(c.usage.output_tokens));
        self.reasoning_tokens.push(big(c.usage.reasoning_tokens));
        self.cost_usd.push(a.cost_usd);
        self.latency_ms.push(big(a.latency_ms));
        self.message.push(a.message.as_deref());
    }
}

/// The final rows of a statement, column by column.
#[derive(Default)]
struct JobColumns<'a> {
    tenant: Vec<&'a str>,
    id: Vec<&'a str>,
    feature: Vec<Option<&'a str>>,
    user_id: Vec<Option<&'a str>>,
    priority: Vec<Option<&'a str>>,
    task: Vec<Option<&'a str>>,
    requested_model: Vec<Option<&'a str>>,
    status: Vec<&'a str>,
    provider: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    input_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    cost_usd: Vec<Decimal>,
    error_kind: Vec<Option<&'a str>>,
    error_message: Vec<Option<&'a str>>,
    result: Vec<&'a str>,
    lease_token: Vec<Option<&'a str>>,
    stream_seq: Vec<i64>,
    cache_hit: Vec<bool>,
    cache_saved_usd: Vec<Decimal>,
    cache_source: Vec<Option<&'a str>>,
}

impl<'a> JobColumns<'a> {
    fn push(&mut self, j: &'a CommitJob) {
        self.tenant.push(&j.tenant);
        self.id.push(&j.id);
        self.feature.push(j.feature.as_deref());
        self.user_id.push(j.user_id.as_deref());
        self.priority.push(j.priority);
        self.task.push(j.task);
        self.requested_model.push(j.requested_model.as_deref());
        self.status.push(j.status);
        self.provider.push(j.provider.as_deref());
        self.model.push(j.model.as_deref());
        self.input_tokens.push(big(j.input_tokens));
        self.cached_input_tokens.push(big(j.cached_input_tokens));
        self.output_tokens.push(big(j.output_tokens));
        self.cost_usd.push(j.cost_usd);
        self.error_kind.push(j.error_kind);
        self.error_message.push(j.error_message.as_deref());
        self.result.push(j.result.get());
        self.lease_token.push(j.lease_token.as_deref());
        self.stream_seq.push(big(j.stream_seq));
        self.cache_hit.push(j.cache_saved_usd.is_some());
        self.cache_saved_usd
            .push(j.cache_saved_usd.unwrap_or_default());
        self.cache_source.push(j.cache_source.as_deref());
    }
}

/// The response-cache entries of a statement, column by column.
#[derive(Default)]
struct EntryColumns<'a> {
    tenant: Vec<&'a str>,
    job_id: Vec<&'a str>,
    key: Vec<&'a [u8]>,
    ttl_s: Vec<i64>,
    provider: Vec<&'a str>,
    model: Vec<&'a str>,
    output: Vec<&'a str>,
    input_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    cost_usd: Vec<Decimal>,
    /// The semantic cache's columns (null when the scope stored none).
    shape: Vec<Option<&'a [u8]>>,
    embedding: Vec<Option<&'a [u8]>>,
    bands: Vec<Option<String>>,
}

impl<'a> EntryColumns<'a> {
    /// The entries of `jobs` (final rows, one per job), one per `(tenant, key)`: two
    /// jobs of a batch with the same answer store the later one. In (tenant, key) order,
    /// as rows are locked.
    fn of(jobs: impl Iterator<Item = &'a CommitJob>) -> EntryColumns<'a> {
        let mut one: std::collections::BTreeMap<(&str, &[u8]), (&CommitJob, &CacheEntry)> =
            std::collections::BTreeMap::new();
        for j in jobs {
            if let Some(e) = &j.cache_entry {
                one.insert((&j.tenant, &e.key[..]), (j, &**e));
            }
        }
        let mut c = EntryColumns::default();
        for (j, e) in one.into_values() {
            c.tenant.push(&j.tenant);
            c.job_id.push(&j.id);
            c.key.push(&e.key);
            c.ttl_s.push(big(e.ttl_s));
            c.provider.push(&e.provider);
            c.model.push(&e.model);
            c.output.push(e.output.get());
            c.input_tokens.push(big(e.usage.input_tokens));
            c.cached_input_tokens.push(big(e.usage.cached_input_tokens));
            c.output_tokens.push(big(e.usage.output_tokens));
            c.cost_usd.push(e.cost_usd);
            let sem = e.semantic.as_ref();
            c.shape.push(sem.map(|x| &x.shape[..]));
            c.embedding.push(sem.map(|x| &x.embedding[..]));
            c.bands.push(sem.map(|x| x.bands_literal()));
        }
        c
    }
}

/// A count as Postgres's bigint (saturating: no count of ours comes near it).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const COMMIT_SQL: &str = r#"
WITH c AS (
    INSERT INTO cost_rows (tenant, job_id, attempt, feature, user_id, provider, model, outcome,
                           status_code, input_tokens, cached_input_tokens, output_tokens,
                           reasoning_tokens, cost_usd, latency_ms, message)
    SELECT tenant, job_id, attempt, feature, user_id, provider, model, outcome, status_code,
           input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_usd,
           latency_ms, message
      FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::text[],
                  $6::text[], $7::text[], $8::text[], $9::integer[], $10::bigint[],
                  $11::bigint[], $12::bigint[], $13::bigint[], $14::numeric[], $15::bigint[],
                  $16::text[]) AS x(
           tenant, job_id, attempt, feature, user_id, provider, model, outcome, status_code,
           input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_usd,
           latency_ms, message)
    ON CONFLICT (tenant, job_id, attempt) DO UPDATE
       SET outcome = EXCLUDED.outcome, status_code = EXCLUDED.status_code,
           input_tokens = EXCLUDED.input_tokens,
           cached_input_tokens = EXCLUDED.cached_input_tokens,
           output_tokens = EXCLUDED.output_tokens, reasoning_tokens = EXCLUDED.reasoning_tokens,
           cost_usd = EXCLUDED.cost_usd, latency_ms = EXCLUDED.latency_ms,
           message = EXCLUDED.message
     WHERE cost_rows.outcome = 'started' AND cost_rows.provider = EXCLUDED.provider
       AND cost_rows.model = EXCLUDED.model
    RETURNING tenant, job_id, attempt, feature, cost_usd
), f AS (
    INSERT INTO jobs AS j (tenant, id, feature, user_id, priority, task, requested_model,
                      status, provider, model, input_tokens, cached_input_tokens, output_tokens,
                      cost_usd, error_kind, error_message, output, result, deliveries,
                      started_at, finished_at, lease_token, lease_until, stream_seq,
                      cache_hit, cache_saved_usd, cache_source)
    SELECT tenant, id, feature, user_id, priority, task, requested_model, status, provider,
           model, input_tokens, cached_input_tokens, output_tokens, cost_usd, error_kind,
           error_message, nullif(result -> 'output', 'null'::jsonb), result - 'output', 1, now(), now(),
           lease_token, NULL, stream_seq, cache_hit, cache_saved_usd, cache_source
      FROM (SELECT tenant, id, feature, user_id, priority, task, requested_model, status,
                   provider, model, input_tokens, cached_input_tokens, output_tokens,
                   cost_usd, error_kind, error_message, result::jsonb AS result, lease_token,
                   stream_seq, cache_hit, cache_saved_usd, cache_source
              FROM unnest($17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
                          $22::text[], $23::text[], $24::text[], $25::text[], $26::text[],
                          $27::bigint[], $28::bigint[], $29::bigint[], $30::numeric[],
                          $31::text[], $32::text[], $33::text[], $34::text[], $35::bigint[],
                          $41::boolean[], $42::numeric[], $57::text[])
                AS y(tenant, id, feature, user_id, priority, task, requested_model, status,
                     provider, model, input_tokens, cached_input_tokens, output_tokens,
                     cost_usd, error_kind, error_message, result, lease_token, stream_seq,
                     cache_hit, cache_saved_usd, cache_source)
             -- Keeps this subquery from being merged into the INSERT, which would parse
             -- `result` twice (once for each of the two expressions that read it).
             OFFSET 0
           ) AS x
    ON CONFLICT (tenant, id) DO UPDATE
       SET status = EXCLUDED.status, provider = EXCLUDED.provider, model = EXCLUDED.model,
           input_tokens = EXCLUDED.input_tokens,
           cached_input_tokens = EXCLUDED.cached_input_tokens,
           output_tokens = EXCLUDED.output_tokens, cost_usd = EXCLUDED.cost_usd,
           error_kind = EXCLUDED.error_kind, error_message = EXCLUDED.error_message,
           output = EXCLUDED.output, result = EXCLUDED.result, finished_at = now(),
           feature = coalesce(j.feature, EXCLUDED.feature),
           user_id = coalesce(j.user_id, EXCLUDED.user_id),
           priority = coalesce(EXCLUDED.priority, j.priority),
           task = coalesce(EXCLUDED.task, j.task),
           requested_model = coalesce(EXCLUDED.requested_model, j.requested_model),
           lease_token = NULL, lease_until = NULL, stream_seq = EXCLUDED.stream_seq,
           free_deliveries = 0, cache_hit = EXCLUDED.cache_hit,
           cache_saved_usd = EXCLUDED.cache_saved_usd, cache_source = EXCLUDED.cache_source
     WHERE j.status <> 'succeeded'
       AND (j.lease_until IS NULL OR j.lease_until < now()
            OR j.lease_token = EXCLUDED.lease_token)
    RETURNING j.tenant, j.id
), ce AS (
    -- Response-cache entries, each only with its job's final row (landed just above).
    INSERT INTO cache_entries AS e (tenant, key_hash, provider, model, output, input_tokens,
                                    cached_input_tokens, output_tokens, cost_usd, job_id,
                                    created_at, expires_at, shape_hash, embedding, bands)
    SELECT x.tenant, x.key_hash, x.provider, x.model, x.output::jsonb, x.input_tokens,
           x.cached_input_tokens, x.output_tokens, x.cost_usd, x.job_id, now(),
           now() + make_interval(secs => x.ttl_s::double precision), x.shape_hash,
           x.embedding, x.bands::bigint[]
      FROM unnest($43::text[], $44::text[], $45::bytea[], $46::bigint[], $47::text[],
                  $48::text[], $49::text[], $50::bigint[], $51::bigint[], $52::bigint[],
                  $53::numeric[], $54::bytea[], $55::bytea[], $56::text[])
        AS x(tenant, job_id, key_hash, ttl_s, provider, model, output, input_tokens,
             cached_input_tokens, output_tokens, cost_usd, shape_hash, embedding, bands)
     WHERE EXISTS (SELECT 1 FROM f WHERE f.tenant = x.tenant AND f.id = x.job_id)
    ON CONFLICT (tenant, key_hash) DO UPDATE
       SET provider = EXCLUDED.provider, model = EXCLUDED.model, output = EXCLUDED.output,
           input_tokens = EXCLUDED.input_tokens,
           cached_input_tokens = EXCLUDED.cached_input_tokens,
           output_tokens = EXCLUDED.output_tokens, cost_usd = EXCLUDED.cost_usd,
           job_id = EXCLUDED.job_id, created_at = EXCLUDED.created_at,
           expires_at = EXCLUDED.expires_at, shape_hash = EXCLUDED.shape_hash,
           embedding = EXCLUDED.embedding, bands = EXCLUDED.bands
    RETURNING 1
), r AS (
    UPDATE jobs j SET lease_token = NULL, lease_until = NULL,
                      free_deliveries = j.free_deliveries + x.free
      FROM unnest($36::text[], $37::text[], $38::text[], $39::integer[])
           AS x(tenant, id, token, free)
     -- By key, then token: the key is the primary key (a join on the token alone scans
     -- the whole table).
     WHERE j.tenant = x.tenant AND j.id = x.id AND j.lease_token = x.token
    RETURNING 1
), freed AS (
    DELETE FROM budget_reservations WHERE lease_token = ANY($40::text[])
    RETURNING tenant, feature, amount_usd
), deltas AS (
    SELECT tenant, feature, cost_usd AS spent, 0::numeric AS freed FROM c
    UNION ALL
    SELECT tenant, feature, 0::numeric, amount_usd FROM freed
), agg AS (
    SELECT b.tenant, b.feature, b.period, sum(d.spent) AS spent, sum(d.freed) AS freed
      FROM budgets b JOIN deltas d ON b.tenant = d.tenant AND (b.feature IS NULL OR b.feature = d.feature)
     GROUP BY b.tenant, b.feature, b.period
), bu AS (
    UPDATE budgets b SET spent_usd = b.spent_usd + agg.spent,
                         reserved_usd = greatest(b.reserved_usd - agg.freed, 0),
                         updated_at = now()
      FROM agg
     WHERE b.tenant = agg.tenant AND b.feature IS NOT DISTINCT FROM agg.feature
       AND b.period = agg.period
    RETURNING 1
)
-- ce, r and bu run whether or not they are read, as every data-modifying WITH does.
-- Only what did not go in comes back (nothing, as a rule): final rows another delivery
-- owns, and cost rows that clashed.
SELECT true AS final, y.tenant, y.id, 0 AS attempt
  FROM unnest($17::text[], $18::text[]) AS y(tenant, id)
 WHERE NOT EXISTS (SELECT 1 FROM f WHERE f.tenant = y.tenant AND f.id = y.id)
UNION ALL
SELECT false, x.tenant, x.job_id, x.attempt
  FROM unnest($1::text[], $2::text[], $3::integer[]) AS x(tenant, job_id, attempt)
 WHERE NOT EXISTS (SELECT 1 FROM c
                    WHERE c.tenant = x.tenant AND c.job_id = x.job_id AND c.attempt = x.attempt)
"#;

/// Commit `reqs` in one statement; for each request, whether its final row landed. Cost
/// rows that clashed are renumbered and inserted after.
async fn commit_batch(pool: &PgPool, reqs: &[CommitRequest]) -> Result<Vec<bool>, StoreError> {
    // One statement, all or nothing: sent again when it loses a race (a deadlock).
    let (landed, missing) = super::retry_conflicts(|| insert(pool, reqs)).await?;
    for (i, calls) in missing {
        let r = &reqs[i];
        if let Err(e) = renumber(pool, &r.key, &calls).await {
            let lost: Vec<&crate::job::Attempt> = calls.iter().map(|c| &c.attempt).collect();
            tracing::error!(error = %e, tenant = %r.key.tenant, id = %r.key.id, calls = ?lost,
                "cost rows that clashed could not be renumbered");
        }
    }
    Ok(landed)
}

type Missing<'a> = Vec<(usize, Vec<&'a CallRecord>)>;

/// The statement itself: for each request whether its final row landed, and the cost rows
/// that did not go in (a clash), by request.
async fn insert<'a>(
    pool: &PgPool,
    reqs: &'a [CommitRequest],
) -> Result<(Vec<bool>, Missing<'a>), StoreError> {
    let mut costs = CostColumns::default();
    // One final row per job per statement: the last one wins (the others learn that theirs
    // did not land).
    let mut finals: HashMap<(&str, &str), usize> = HashMap::with_capacity(reqs.len());
    let mut releases: Vec<(&str, &str, &str, i32)> = Vec::new();
    let mut reservations: Vec<&str> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        for c in &r.calls {
            costs.push(&r.key, c);
        }
        if let Some(j) = &r.job {
            finals.insert((j.tenant.as_str(), j.id.as_str()), i);
            if let Some(t) = &j.lease_token {
                reservations.push(t);
            }
        }
        if let Some(rel) = &r.release {
            releases.push((
                &r.key.tenant,
                &r.key.id,
                &rel.lease_token,
                i32::from(rel.free),
            ));
            reservations.push(&rel.lease_token);
        }
    }
    // Rows are locked in (tenant, id) order by every batch statement (claims, commits,
    // lease renewals), so two of them never wait for each other in a circle.
    let mut order: Vec<(&str, &str, usize)> =
        finals.iter().map(|(&(t, id), &i)| (t, id, i)).collect();
    order.sort_unstable();
    let mut jobs = JobColumns::default();
    for &(_, _, i) in &order {
        if let Some(j) = &reqs[i].job {
            jobs.push(j);
        }
    }
    let entries = EntryColumns::of(order.iter().filter_map(|&(_, _, i)| reqs[i].job.as_ref()));
    releases.sort_unstable();
    let mut rel_tenants = Vec::with_capacity(releases.len());
    let mut rel_ids = Vec::with_capacity(releases.len());
    let mut tokens = Vec::with_capacity(releases.len());
    let mut frees = Vec::with_capacity(releases.len());
    for (t, id, token, free) in releases {
        rel_tenants.push(t);
        rel_ids.push(id);
        tokens.push(token);
        frees.push(free);
    }
    let c = costs;
    let rows: Vec<(bool, String, String, i32)> = sqlx::query_as(COMMIT_SQL)
        .bind(c.tenant)
        .bind(c.job_id)
        .bind(c.attempt)
        .bind(c.feature)
        .bind(c.user_id)
        .bind(c.provider)
        .bind(c.model)
        .bind(c.outcome)
        .bind(c.status_code)
        .bind(c.input_tokens)
        .bind(c.cached_input_tokens)
        .bind(c.output_tokens)
        .bind(c.reasoning_tokens)
        .bind(c.cost_usd)
        .bind(c.latency_ms)
        .bind(c.message)
        .bind(jobs.tenant)
        .bind(jobs.id)
        .bind(jobs.feature)
        .bind(jobs.user_id)
        .bind(jobs.priority)
        .bind(jobs.task)
        .bind(jobs.requested_model)
        .bind(jobs.status)
        .bind(jobs.provider)
        .bind(jobs.model)
        .bind(jobs.input_tokens)
        .bind(jobs.cached_input_tokens)
        .bind(jobs.output_tokens)
        .bind(jobs.cost_usd)
        .bind(jobs.error_kind)
        .bind(jobs.error_message)
        .bind(jobs.result)
        .bind(jobs.lease_token)
        .bind(jobs.stream_seq)
        .bind(&rel_tenants)
        .bind(&rel_ids)
        .bind(&tokens)
        .bind(&frees)
        .bind(&reservations)
        .bind(jobs.cache_hit)
        .bind(jobs.cache_saved_usd)
        .bind(entries.tenant)
        .bind(entries.job_id)
        .bind(entries.key)
        .bind(entries.ttl_s)
        .bind(entries.provider)
        .bind(entries.model)
        .bind(entries.output)
        .bind(entries.input_tokens)
        .bind(entries.cached_input_tokens)
        .bind(entries.output_tokens)
        .bind(entries.cost_usd)
        .bind(entries.shape)
        .bind(entries.embedding)
        .bind(entries.bands)
        .bind(jobs.cache_source)
        .fetch_all(pool)
        .await
        .map_err(StoreError::classify)?;
    // What did not go in: final rows another delivery owns, cost rows that clashed.
    let mut refused: HashSet<(String, String)> = HashSet::new();
    let mut clashed: HashSet<(String, String, u32)> = HashSet::new();
    for (is_final, t, id, attempt) in rows {
        if is_final {
            refused.insert((t, id));
        } else {
            clashed.insert((t, id, attempt.max(0) as u32));
        }
    }
    let mut missing: Missing<'a> = Vec::new();
    if !clashed.is_empty() {
        for (i, r) in reqs.iter().enumerate() {
            let lost: Vec<&CallRecord> = r
                .calls
                .iter()
                .filter(|c| {
                    clashed.contains(&(r.key.tenant.clone(), r.key.id.clone(), c.attempt.attempt))
                })
                .collect();
            if !lost.is_empty() {
                missing.push((i, lost));
            }
        }
    }
    let landed = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| match &r.job {
            Some(j) => {
                finals.get(&(j.tenant.as_str(), j.id.as_str())) == Some(&i)
                    && (refused.is_empty() || !refused.contains(&(j.tenant.clone(), j.id.clone())))
            }
            None => true,
        })
        .collect();
    Ok((landed, missing))
}
