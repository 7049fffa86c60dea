//! The semantic cache's side of `cache_entries` (see `crate::cache::semantic` for the key
//! and `crate::cache::lsh` for the index), and `switchyard cache forget`.
//!
//! - An entry stored by a semantic scope carries `shape_hash`, `embedding` (one signed
//!   byte per dimension) and `bands` (its LSH band keys, under a GIN index). It is the
//!   exact cache's row: one entry answers both lookups and expires once.
//! - A lookup is two statements: the candidates that share a band with the prompt (same
//!   tenant, same shape, live), vectors only (the SQL function `semantic_candidates`, which
//!   forces the GIN index: Postgres cannot estimate `&&` on rare keys and would scan the
//!   table); then the answer of the most similar one at or above the threshold. Not batched: each is one indexed read, and only jobs that
//!   missed the exact cache ask.

use super::cache::{answer, AnswerRow, CacheLookups, CachedAnswer};
use super::StoreError;
use crate::cache::lsh;
use sqlx::PgPool;

/// What a semantic scope stores beside an entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticColumns {
    pub shape: [u8; 32],
    /// The quantised vector's bytes.
    pub embedding: Vec<u8>,
    pub bands: Vec<i64>,
}

impl SemanticColumns {
    /// The band keys as a Postgres array literal (a batch passes one per entry, and
    /// `unnest` would flatten an array of arrays).
    pub fn bands_literal(&self) -> String {
        let keys: Vec<String> = self.bands.iter().map(i64::to_string).collect();
        format!("{{{}}}", keys.join(","))
    }
}

/// One semantic lookup.
#[derive(Debug, Clone)]
pub struct SemanticLookup {
    pub tenant: String,
    pub shape: [u8; 32],
    pub embedding: Vec<i8>,
    pub bands: Vec<i64>,
    pub min_similarity: f32,
    /// Entries older than this are not served.
    pub ttl_s: u64,
}

/// A paraphrase's stored answer.
#[derive(Debug, Clone)]
pub struct SemanticHit {
    pub answer: CachedAnswer,
    pub similarity: f32,
    /// Entries compared (those sharing a band with the prompt).
    pub candidates: usize,
}

/// The function `semantic_candidates` (migration 0005) holds the query: it must use the
/// GIN index, which the planner would not choose on its own.
const CANDIDATES_SQL: &str = "SELECT key_hash, embedding FROM semantic_candidates($1, $2, $3, $4)";

const ANSWER_SQL: &str = r#"
SELECT provider, model, output, input_tokens, cached_input_tokens, output_tokens, cost_usd,
       job_id
  FROM cache_entries
 WHERE tenant = $1 AND key_hash = $2 AND expires_at > now()
"#;

impl CacheLookups {
    /// The most similar live entry at or above the threshold, if any.
    pub async fn nearest(&self, req: &SemanticLookup) -> Result<Option<SemanticHit>, StoreError> {
        nearest(&self.pool, req).await
    }
}

/// The most similar live entry of `req`'s tenant and shape at or above its threshold.
pub async fn nearest(
    pool: &PgPool,
    req: &SemanticLookup,
) -> Result<Option<SemanticHit>, StoreError> {
    let ttl = i64::try_from(req.ttl_s).unwrap_or(i64::MAX);
    let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(CANDIDATES_SQL)
        .bind(&req.bands)
        .bind(&req.tenant)
        .bind(&req.shape[..])
        .bind(ttl)
        .fetch_all(pool)
        .await
        .map_err(StoreError::classify)?;
    let candidates = rows.len();
    let best = rows
        .iter()
        .filter_map(|(key, v)| {
            let sim = lsh::cosine_i8(&req.embedding, &lsh::from_bytes(v.as_deref()?));
            (sim >= req.min_similarity).then_some((sim, key))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let Some((similarity, key)) = best else {
        return Ok(None);
    };
    let row: Option<AnswerRow> = sqlx::query_as(ANSWER_SQL)
        .bind(&req.tenant)
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::classify)?;
    Ok(row.and_then(answer).map(|answer| SemanticHit {
        answer,
        similarity,
        candidates,
    }))
}

/// What `forget` dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The job whose stored answer the entries held (the job itself, or the one whose
    /// answer it was served).
    pub source: String,
    pub entries: u64,
}

/// Drop the entries that answered job `id` of `tenant` (when it was a cache hit) or were
/// stored from it; `None` when the job is unknown and no entry was stored from it.
pub async fn forget(
    pool: &PgPool,
    tenant: &str,
    id: &str,
) -> Result<Option<Forgotten>, StoreError> {
    let known: Option<(Option<String>,)> =
        sqlx::query_as("SELECT cache_source FROM jobs WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::classify)?;
    let source = known
        .as_ref()
        .and_then(|(s,)| s.clone())
        .unwrap_or_else(|| id.to_string());
    let entries = sqlx::query("DELETE FROM cache_entries WHERE tenant = $1 AND job_id = ANY($2)")
        .bind(tenant)
        .bind(vec![source.clone(), id.to_string()])
        .execute(pool)
        .await
        .map_err(StoreError::classify)?
        .rows_affected();
    if known.is_none() && entries == 0 {
        return Ok(None);
    }
    Ok(Some(Forgotten { source, entries }))
}
