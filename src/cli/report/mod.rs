//! `switchyard report costs | savings | budgets`: spend from `cost_rows` (one row per
//! provider call, failed calls included), exact, summed by `store::reports`; the same
//! token sums priced at a baseline model (`cost::cost_of`, prices from the config); and
//! each budget's limit, spend, reservations and share used (`store::budget_admin`).
//! Costs and savings also show the jobs answered from the response cache (`cache_hits`)
//! and what those answers cost when made (`cache_saved_usd`): spend the cache avoided.
//! Printed here, in one of three formats ([`table`]).

pub(super) mod table;

use crate::config::{Config, ModelConfig};
use crate::job::Usage;
use crate::store::budget_admin::{budget_status, BudgetRow};
use crate::store::reports::{costs, CostDimension, CostLine, CostQuery};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::process::ExitCode;
use table::{Kind, Table};

#[derive(clap::Subcommand, Debug)]
pub enum ReportCommand {
    /// Spend grouped by the given dimensions.
    Costs(CostArgs),
    /// What the same calls would have cost at a baseline model's prices: the same token
    /// counts, priced from the config, per group, with totals.
    Savings(SavingsArgs),
    /// Each budget (tenant, feature or whole tenant, period): limit, spent, reserved, share
    /// used, what is left, policy.
    Budgets(BudgetArgs),
}

/// Which cost rows, grouped how, printed how.
#[derive(clap::Args, Debug)]
pub struct Range {
    /// Comma-separated: tenant, feature, user, provider, model, outcome, hour, day, month,
    /// variant (the A/B variant of the job's route).
    #[arg(long, default_value = "tenant,feature,model")]
    pub by: String,
    /// From this time on: RFC 3339, a date (2026-11-01), or a span back from now (24h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    pub format: String,
}

#[derive(clap::Args, Debug)]
pub struct CostArgs {
    #[command(flatten)]
    pub range: Range,
}

#[derive(clap::Args, Debug)]
pub struct SavingsArgs {
    /// The model to compare with: a configured model name or alias, or <provider>/<model>.
    #[arg(long)]
    pub baseline: String,
    #[command(flatten)]
    pub range: Range,
}

#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    /// Only this tenant's budgets.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    pub format: String,
}

pub async fn run(cfg: Config, cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCommand::Costs(args) => {
            let (dims, lines) = cost_lines(&cfg, &args.range).await?;
            let mut t = Table::new(dims.iter().map(|d| (d.name(), Kind::Text)));
            t.columns.extend(figure_columns());
            let (mut total, mut saved) = (Decimal::ZERO, Decimal::ZERO);
            for l in &lines {
                total += l.cost_usd;
                saved += l.cache_saved_usd;
                let mut row = l.group.clone();
                row.extend(figures(l));
                t.rows.push(row);
            }
            t.print(&args.range.format);
            if args.range.format == "table" {
                println!("total cost_usd {}", total.normalize());
                if !saved.is_zero() {
                    println!("total cache_saved_usd {}", saved.normalize());
                }
            }
        }
        ReportCommand::Savings(args) => {
            let baseline = baseline_model(&cfg, &args.baseline)?;
            let (dims, lines) = cost_lines(&cfg, &args.range).await?;
            savings_table(&dims, &lines, baseline).print(&args.range.format);
        }
        ReportCommand::Budgets(args) => {
            let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
            let rows = budget_status(&pool, args.tenant.as_deref(), Utc::now()).await?;
            budget_table(&rows).print(&args.format);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The cost rows of `range`, summed per group.
async fn cost_lines(
    cfg: &Config,
    range: &Range,
) -> anyhow::Result<(Vec<CostDimension>, Vec<CostLine>)> {
    let mut dims = Vec::new();
    for d in range.by.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let Some(dim) = CostDimension::parse(d) else {
            let all: Vec<&str> = CostDimension::ALL.iter().map(|d| d.name()).collect();
            anyhow::bail!("--by: {d:?} is not one of {}", all.join(", "));
        };
        dims.push(dim);
    }
    let query = CostQuery {
        by: &dims,
        since: range.since.as_deref().map(parse_time).transpose()?,
        until: range.until.as_deref().map(parse_time).transpose()?,
        tenant: range.tenant.as_deref(),
    };
    let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
    let lines = costs(&pool, &query).await?;
    Ok((dims, lines))
}

fn figure_columns() -> Vec<(String, Kind)> {
    let mut columns = vec![
        ("calls".into(), Kind::Count),
        ("failed_calls".into(), Kind::Count),
        ("input_tokens".into(), Kind::Count),
        ("cached_input_tokens".into(), Kind::Count),
        ("output_tokens".into(), Kind::Count),
        ("cost_usd".into(), Kind::Decimal),
    ];
    columns.extend(cache_columns());
    columns
}

fn figures(l: &CostLine) -> [String; 8] {
    [
        l.calls.to_string(),
        l.failed_calls.to_string(),
        l.input_tokens.to_string(),
        l.cached_input_tokens.to_string(),
        l.output_tokens.to_string(),
        l.cost_usd.normalize().to_string(),
        l.cache_hits.to_string(),
        l.cache_saved_usd.normalize().to_string(),
    ]
}

/// The response cache's columns, last in both reports.
fn cache_columns() -> [(String, Kind); 2] {
    [
        ("cache_hits".into(), Kind::Count),
        ("cache_saved_usd".into(), Kind::Decimal),
    ]
}

/// A configured model by name, alias or `<provider>/<name>`; the error lists them.
fn baseline_model<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a ModelConfig> {
    let (provider, bare) = match name.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, name),
    };
    cfg.models
        .iter()
        .find(|m| {
            (m.name == bare || m.aliases.iter().any(|a| a == bare))
                && provider.is_none_or(|p| m.provider == p)
        })
        .ok_or_else(|| {
            let all: Vec<&str> = cfg.models.iter().map(|m| m.name.as_str()).collect();
            anyhow::anyhow!(
                "--baseline {name:?} is not a configured model ({})",
                all.join(", ")
            )
        })
}

/// The same token counts at the baseline's prices. Cost is linear in the token counts,
/// so pricing a group's sums is exact: the sum of every call priced alone. Cache writes
/// are not in `cost_rows`, so at the baseline they count as plain input.
fn at_baseline(l: &CostLine, baseline: &ModelConfig) -> Decimal {
    let tokens = |n: i64| u64::try_from(n).unwrap_or(0);
    crate::cost::cost_of(
        baseline,
        &Usage {
            input_tokens: tokens(l.input_tokens),
            cached_input_tokens: tokens(l.cached_input_tokens),
            output_tokens: tokens(l.output_tokens),
            ..Usage::default()
        },
    )
}

fn savings_table(dims: &[CostDimension], lines: &[CostLine], baseline: &ModelConfig) -> Table {
    let mut t = Table::new(dims.iter().map(|d| (d.name(), Kind::Text)));
    t.columns.extend([
        ("calls".into(), Kind::Count),
        ("input_tokens".into(), Kind::Count),
        ("cached_input_tokens".into(), Kind::Count),
        ("output_tokens".into(), Kind::Count),
        ("cost_usd".into(), Kind::Decimal),
        ("baseline_usd".into(), Kind::Decimal),
        ("savings_usd".into(), Kind::Decimal),
        ("savings_pct".into(), Kind::Decimal),
    ]);
    t.columns.extend(cache_columns());
    let row = |calls: i64, tokens: [i64; 3], cost: Decimal, base: Decimal, hits: (i64, Decimal)| {
        let saved = base - cost;
        let pct = if base.is_zero() {
            String::new()
        } else {
            (saved * Decimal::ONE_HUNDRED / base)
                .round_dp(2)
                .normalize()
                .to_string()
        };
        let mut cells = vec![calls.to_string()];
        cells.extend(tokens.iter().map(|n| n.to_string()));
        cells.extend([
            cost.normalize().to_string(),
            base.normalize().to_string(),
            saved.normalize().to_string(),
            pct,
            hits.0.to_string(),
            hits.1.normalize().to_string(),
        ]);
        cells
    };
    let (mut calls, mut tokens) = (0i64, [0i64; 3]);
    let (mut cost, mut base) = (Decimal::ZERO, Decimal::ZERO);
    let mut hits = (0i64, Decimal::ZERO);
    for l in lines {
        let b = at_baseline(l, baseline);
        let own = [l.input_tokens, l.cached_input_tokens, l.output_tokens];
        let mut cells = l.group.clone();
        let own_hits = (l.cache_hits, l.cache_saved_usd);
        cells.extend(row(l.calls, own, l.cost_usd, b, own_hits));
        t.rows.push(cells);
        calls += l.calls;
        for (sum, n) in tokens.iter_mut().zip(own) {
            *sum += n;
        }
        cost += l.cost_usd;
        base += b;
        hits.0 += l.cache_hits;
        hits.1 += l.cache_saved_usd;
    }
    let mut total: Vec<String> = dims.iter().map(|_| String::new()).collect();
    if let Some(first) = total.first_mut() {
        *first = "total".into();
    }
    total.extend(row(calls, tokens, cost, base, hits));
    t.total = Some(total);
    t
}

/// The budget report; `budget show` prints the same.
pub fn budget_table(rows: &[BudgetRow]) -> Table {
    let mut t = Table::new([
        ("tenant", Kind::Text),
        ("feature", Kind::OptionalText),
        ("period", Kind::Text),
        ("limit_usd", Kind::Decimal),
        ("spent_usd", Kind::Decimal),
        ("reserved_usd", Kind::Decimal),
        ("used_pct", Kind::Decimal),
        ("remaining_usd", Kind::Decimal),
        ("policy", Kind::Text),
        ("period_start", Kind::Text),
    ]);
    for b in rows {
        t.rows.push(vec![
            b.tenant.clone(),
            b.feature.clone().unwrap_or_default(),
            b.period.clone(),
            b.limit_usd.normalize().to_string(),
            b.spent_usd.normalize().to_string(),
            b.reserved_usd.normalize().to_string(),
            b.used_pct().normalize().to_string(),
            b.remaining_usd().normalize().to_string(),
            b.policy.clone(),
            b.period_start.to_rfc3339(),
        ]);
    }
    t
}

/// RFC 3339, a date, or a span back from now (`90m`, `24h`, `7d`).
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a time (RFC 3339, YYYY-MM-DD, or 24h / 7d)"))?;
    let span = match unit {
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => anyhow::bail!("{s:?}: the unit must be m, h or d"),
    };
    Ok(Utc::now() - span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-11-01").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert!(parse_time("2026-11-01T10:00:00Z").is_ok());
        let t = parse_time("7d").unwrap();
        assert!((Utc::now() - t).num_days() == 7);
        assert!(parse_time("soon").is_err());
        assert!(parse_time("7w").is_err());
    }
}
