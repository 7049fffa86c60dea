//! Cost reports (`switchyard report costs`): `cost_rows` (one row per provider call,
//! failed calls included) summed exactly, grouped by the dimensions asked for.

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

    fn sql(self) -> &'static str {
        match self {
            CostDimension::Tenant => "tenant",
            CostDimension::Feature => "coalesce(feature, '')",
            CostDimension::User => "coalesce(user_id, '')",
            CostDimension::Provider => "provider",
            CostDimension::Model => "model",
            CostDimension::Outcome => "outcome",
            CostDimension::Hour => {
                "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24\":00Z\"')"
            }
            CostDimension::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            CostDimension::Month => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM')",
            // one index lookup per row on jobs' (tenant, id) key
            CostDimension::Variant => {
                "coalesce((SELECT j.result->'route'->>'variant' FROM jobs j
                            WHERE j.tenant = cost_rows.tenant AND j.id = cost_rows.job_id), '')"
            }
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
}

/// The sums per group, ordered by the groups; without dimensions, one line of totals.
pub async fn costs(pool: &PgPool, q: &CostQuery<'_>) -> Result<Vec<CostLine>, StoreError> {
    let select: Vec<String> =
        q.by.iter()
            .map(|d| format!("{} AS \"{}\"", d.sql(), d.name()))
            .collect();
    let group: Vec<String> = (1..=q.by.len()).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT {}{} count(*) AS calls, count(*) FILTER (WHERE outcome <> 'succeeded') AS failed_calls,
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
    let rows = sqlx::query(&sql)
        .bind(q.since)
        .bind(q.until)
        .bind(q.tenant)
        .fetch_all(pool)
        .await?;
    let mut lines = Vec::with_capacity(rows.len());
    for r in &rows {
        let group =
            q.by.iter()
                .map(|d| r.try_get::<String, _>(d.name()))
                .collect::<Result<_, _>>()?;
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
        });
    }
    Ok(lines)
}
