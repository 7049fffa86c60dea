//! Which dead letters match an operator's filters (`switchyard dlq list | replay | purge`),
//! answered from the `jobs` row each dead letter has, so that 100k dead letters are not
//! read and parsed to find the few that match.
//!
//! A job that failed has a `failed` row (committed before its dead letter is published)
//! whose `error_kind`, `feature` and `finished_at` are the dead letter's; its cost rows are
//! the dead letter's `attempts`. A key whose row is not `failed` (the job runs again, or
//! succeeded since, or has no row) cannot be judged here: the caller reads that dead
//! letter itself.

use super::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

/// What to match; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub tenant: Option<String>,
    /// An error kind (`providers_exhausted` …).
    pub kind: Option<String>,
    pub feature: Option<String>,
    /// The job called this provider (any outcome).
    pub provider: Option<String>,
    /// Failed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Failed before this time.
    pub until: Option<DateTime<Utc>>,
}

impl DeadLetterFilter {
    /// Only the tenant (or nothing) is asked: every dead letter of the scope matches, and
    /// nothing needs to be looked up.
    pub fn is_scope_only(&self) -> bool {
        self.kind.is_none()
            && self.feature.is_none()
            && self.provider.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// What the `jobs` table says about one dead letter's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The row's `status` (`None`: no row): a replay skips a job that succeeded since or
    /// runs now.
    pub status: Option<String>,
    pub verdict: KeyVerdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    /// The key's row is `failed`, and it matches the filter.
    Matches,
    /// The key's row is `failed`, and it does not match.
    NoMatch,
    /// No `failed` row: read the dead letter to judge it.
    Unknown,
}

/// Rows judged per statement: keeps each statement's arrays a few hundred KB.
const CHUNK: usize = 10_000;

/// Judge each `(tenant, id)` of `keys` against `f`, in the same order.
pub async fn judge_keys(
    pool: &PgPool,
    keys: &[(String, String)],
    f: &DeadLetterFilter,
) -> Result<Vec<KeyInfo>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let tenants: Vec<&str> = chunk.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = chunk.iter().map(|k| k.1.as_str()).collect();
        // ordinality keeps the answer in the keys' order; one primary-key lookup per key,
        // and the provider test one lookup on cost_rows' (tenant, job_id, attempt) key.
        let rows = sqlx::query(
            "SELECT k.n, j.status,
                    ($3::text IS NULL OR j.error_kind = $3)
                AND ($4::text IS NULL OR j.feature = $4)
                AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM cost_rows c
                      WHERE c.tenant = j.tenant AND c.job_id = j.id AND c.provider = $5))
                AND ($6::timestamptz IS NULL OR j.finished_at >= $6)
                AND ($7::timestamptz IS NULL OR j.finished_at < $7) AS matches
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(tenant, id, n)
               LEFT JOIN jobs j ON j.tenant = k.tenant AND j.id = k.id
              ORDER BY k.n",
        )
        .bind(&tenants)
        .bind(&ids)
        .bind(f.kind.as_deref())
        .bind(f.feature.as_deref())
        .bind(f.provider.as_deref())
        .bind(f.since)
        .bind(f.until)
        .fetch_all(pool)
        .await?;
        for r in rows {
            let status: Option<String> = r.try_get("status")?;
            let matches: Option<bool> = r.try_get("matches")?;
            let verdict = match (status.as_deref(), matches) {
                (Some("failed"), Some(true)) => KeyVerdict::Matches,
                (Some("failed"), _) => KeyVerdict::NoMatch,
                _ => KeyVerdict::Unknown,
            };
            out.push(KeyInfo { status, verdict });
        }
    }
    Ok(out)
}
