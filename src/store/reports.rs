//! Cost reports (`switchyard report costs`): `cost_rows` (one row per provider call,
//! failed calls included) summed exactly, grouped by the dimensions asked for, with the
//! jobs answered from the response cache (which made no call) and what they saved, from
//! `jobs.cache_saved_usd`, in the same groups.

use super::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};

/// What cost rows can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostDimension {
    Tenant,
    Feature,
    User,
    Provider,
    Model,
    Outcome,
    /// UTC hour, `YYYY-MM-DDTHH:00Z`.
    Hour,
    /// UTC day, `YYYY-MM-DD`.
    Day,
    /// UTC month, `YYYY-MM`.
    Month,
    /// The A/B variant of the job's route (`jobs.result->'route'->>'variant'`), `''` when
    /// none.
    Variant,
}

impl CostDimension {
    pub const ALL: [CostDimension; 10] = [
        CostDimension::Tenant,
        CostDimension::Feature,
        CostDimension::User,
        CostDimension::Provider,
        CostDimension::Model,
        CostDimension::Outcome,
        CostDimension::Hour,
        CostDimension::Day,
        CostDimension::Month,
        CostDimension::Variant,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CostDimension::Tenant => "tenant",
            CostDimension::Feature => "feature",
            CostDimension::User => "user",
            CostDimension::Provider => "provider",
            CostDimension::Model => "model",
            CostDimension::Outcome => "outcome",
            CostDimension::Hour => "hour",
            CostDimension::Day => "day",
            CostDimension::Month => "month",
            CostDimension::Variant => "variant",
        }
    }

    pub fn parse(name: &str) -> Option<CostDimension> {
        CostDimension::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The dimension's value as SQL over `cost_rows`.
    fn sql(self) -> String {
        match self {
            CostDimension::Provider => "provider".into(),
            CostDimension::Model => "model".into(),
            CostDimension::Outcome => "outcome".into(),
            // one index lookup per row on jobs' (tenant, id) key
            CostDimension::Variant => "coalesce((SELECT j.result->'route'->>'variant' FROM jobs j
                            WHERE j.tenant = cost_rows.tenant AND j.id = cost_rows.job_id), '')"
                .into(),
            _ => self.shared_sql("created_at"),
        }
    }

    /// The dimension's value as SQL over the `jobs` rows of cache hits: the provider and
    /// model that gave the stored answer, outcome `cache_hit`, times when it was served.
    fn hit_sql(self) -> String {
        match self {
            CostDimension::Provider => "coalesce(provider, '')".into(),
            CostDimension::Model => "coalesce(model, '')".into(),
            CostDimension::Outcome => "'cache_hit'".into(),
            CostDimension::Variant => "coalesce(result->'route'->>'variant', '')".into(),
            _ => self.shared_sql("finished_at"),
        }
    }

    /// The columns both tables name alike; times bucketed from `time`.
    fn shared_sql(self, time: &str) -> String {
        let bucket = |format: &str| format!("to_char({time} AT TIME ZONE 'UTC', '{format}')");
        match self {
            CostDimension::Tenant => "tenant".into(),
            CostDimension::Feature => "coalesce(feature, '')".into(),
            CostDimension::User => "coalesce(user_id, '')".into(),
            CostDimension::Hour => bucket("YYYY-MM-DD\"T\"HH24\":00Z\""),
            CostDimension::Day => bucket("YYYY-MM-DD"),
            CostDimension::Month => bucket("YYYY-MM"),
            CostDimension::Provider
            | CostDimension::Model
            | CostDimension::Outcome
            | CostDimension::Variant => String::new(),
        }
    }
}

/// Which cost rows to sum, and how to group them.
#[derive(Debug, Clone, Default)]
pub struct CostQuery<'a> {
    pub by: &'a [CostDimension],
    /// From this time on.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
    pub tenant: Option<&'a str>,
}

/// One group's sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostLine {
    /// The group's value of each dimension of [`CostQuery::by`], in that order.
    pub group: Vec<String>,
    pub calls: i64,
    pub failed_calls: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Decimal,
    /// Jobs answered from the response cache (no call, so no cost row).
    pub cache_hits: i64,
    /// What those answers cost when they were made: spend the cache saved.
    pub cache_saved_usd: Decimal,
}

/// The sums per group, ordered by the groups; without dimensions, one line of totals.
pub async fn costs(pool: &PgPool, q: &CostQuery<'_>) -> Result<Vec<CostLine>, StoreError> {
    let (select, group) = grouping(q, CostDimension::sql);
    let sql = format!(
        "SELECT {}{} count(*) AS calls, count(*) FILTER (WHERE outcome NOT IN ('succeeded', 'embedding', 'started')) AS failed_calls,
                sum(input_tokens)::bigint AS input_tokens, sum(cached_input_tokens)::bigint AS cached_input_tokens,
                sum(output_tokens)::bigint AS output_tokens, sum(cost_usd) AS cost_usd
           FROM cost_rows
          WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND ($2::timestamptz IS NULL OR created_at < $2)
            AND ($3::text IS NULL OR tenant = $3)
          {} ORDER BY {}",
        select.join(", "),
        if q.by.is_empty() { "" } else { "," },
        if q.by.is_empty() { String::new() } else { format!("GROUP BY {}", group.join(", ")) },
        if q.by.is_empty() { "cost_usd DESC".to_string() } else { group.join(", ") },
    );
    let rows = fetch(pool, &sql, q).await?;
    let mut lines = Vec::with_capacity(rows.len());
    for r in &rows {
        let group = group_of(r, q)?;
        let count = |n: &str| r.try_get::<Option<i64>, _>(n).map(|v| v.unwrap_or(0));
        lines.push(CostLine {
            group,
            calls: count("calls")?,
            failed_calls: count("failed_calls")?,
            input_tokens: count("input_tokens")?,
            cached_input_tokens: count("cached_input_tokens")?,
            output_tokens: count("output_tokens")?,
            cost_usd: r
                .try_get::<Option<Decimal>, _>("cost_usd")?
                .unwrap_or_default(),
            cache_hits: 0,
            cache_saved_usd: Decimal::ZERO,
        });
    }
    add_cache_hits(pool, q, &mut lines).await?;
    Ok(lines)
}

/// Each dimension's value as `sql` gives it, named for it, and the GROUP BY positions.
fn grouping(
    q: &CostQuery<'_>,
    sql: impl Fn(CostDimension) -> String,
) -> (Vec<String>, Vec<String>) {
    let select =
        q.by.iter()
            .map(|&d| format!("{} AS \"{}\"", sql(d), d.name()));
    let group = (1..=q.by.len()).map(|i| i.to_string());
    (select.collect(), group.collect())
}

/// Run a report statement whose `$1`, `$2` and `$3` are the query's since, until and
/// tenant.
async fn fetch(
    pool: &PgPool,
    sql: &str,
    q: &CostQuery<'_>,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    Ok(sqlx::query(sql)
        .bind(q.since)
        .bind(q.until)
        .bind(q.tenant)
        .fetch_all(pool)
        .await?)
}

/// A row's value of each dimension, in the query's order.
fn group_of(r: &sqlx::postgres::PgRow, q: &CostQuery<'_>) -> Result<Vec<String>, sqlx::Error> {
    q.by.iter()
        .map(|d| r.try_get::<String, _>(d.name()))
        .collect()
}

/// Add the jobs answered from the cache to the groups of `lines` (a group with hits but
/// no calls gets a line of its own, in group order).
async fn add_cache_hits(
    pool: &PgPool,
    q: &CostQuery<'_>,
    lines: &mut Vec<CostLine>,
) -> Result<(), StoreError> {
    let (select, group) = grouping(q, CostDimension::hit_sql);
    let sql = format!(
        "SELECT {}{} count(*) AS hits, sum(cache_saved_usd) AS saved
           FROM jobs
          WHERE cache_hit
            AND ($1::timestamptz IS NULL OR finished_at >= $1) AND ($2::timestamptz IS NULL OR finished_at < $2)
            AND ($3::text IS NULL OR tenant = $3)
          {}",
        select.join(", "),
        if q.by.is_empty() { "" } else { "," },
        if q.by.is_empty() { String::new() } else { format!("GROUP BY {}", group.join(", ")) },
    );
    let rows = fetch(pool, &sql, q).await?;
    let mut added = false;
    for r in &rows {
        let group = group_of(r, q)?;
        let hits = r.try_get::<Option<i64>, _>("hits")?.unwrap_or(0);
        let saved = r
            .try_get::<Option<Decimal>, _>("saved")?
            .unwrap_or_default();
        if hits == 0 {
            continue;
        }
        let i = match lines.iter().position(|l| l.group == group) {
            Some(i) => i,
            None => {
                added = true;
                lines.push(CostLine {
                    group,
                    calls: 0,
                    failed_calls: 0,
                    input_tokens: 0,
                    cached_input_tokens: 0,
                    output_tokens: 0,
                    cost_usd: Decimal::ZERO,
                    cache_hits: 0,
                    cache_saved_usd: Decimal::ZERO,
                });
                lines.len() - 1
            }
        };
        lines[i].cache_hits += hits;
        lines[i].cache_saved_usd += saved;
    }
    if added {
        lines.sort_by(|a, b| a.group.cmp(&b.group));
    }
    Ok(())
}
