//! `switchyard report costs [--by tenant,feature,model,day] [--since …] [--format …]`:
//! spend from `cost_rows` (one row per provider call, failed calls included), exact,
//! summed by `store::reports` and printed here.

use crate::config::Config;
use crate::store::reports::{costs, CostDimension, CostQuery};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum ReportCommand {
    /// Spend grouped by the given dimensions.
    Costs(CostArgs),
}

#[derive(clap::Args, Debug)]
pub struct CostArgs {
    /// Comma-separated: tenant, feature, user, provider, model, outcome, day, month,
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

pub async fn run(cfg: Config, cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    let ReportCommand::Costs(args) = cmd;
    let mut dims = Vec::new();
    for d in args.by.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let Some(dim) = CostDimension::parse(d) else {
            let all: Vec<&str> = CostDimension::ALL.iter().map(|d| d.name()).collect();
            anyhow::bail!("--by: {d:?} is not one of {}", all.join(", "));
        };
        dims.push(dim);
    }
    let query = CostQuery {
        by: &dims,
        since: args.since.as_deref().map(parse_time).transpose()?,
        until: args.until.as_deref().map(parse_time).transpose()?,
        tenant: args.tenant.as_deref(),
    };
    let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
    let lines = costs(&pool, &query).await?;
    let mut header: Vec<&str> = dims.iter().map(|d| d.name()).collect();
    header.extend([
        "calls",
        "failed_calls",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "cost_usd",
    ]);
    let mut table: Vec<Vec<String>> = Vec::with_capacity(lines.len());
    let mut total = Decimal::ZERO;
    for l in lines {
        let mut line = l.group;
        for n in [
            l.calls,
            l.failed_calls,
            l.input_tokens,
            l.cached_input_tokens,
            l.output_tokens,
        ] {
            line.push(n.to_string());
        }
        total += l.cost_usd;
        line.push(l.cost_usd.normalize().to_string());
        table.push(line);
    }
    match args.format.as_str() {
        "json" => {
            for line in &table {
                let obj: serde_json::Map<String, serde_json::Value> = header
                    .iter()
                    .zip(line)
                    .map(|(h, v)| {
                        let value = match *h {
                            "calls"
                            | "failed_calls"
                            | "input_tokens"
                            | "cached_input_tokens"
                            | "output_tokens" => v
                                .parse::<i64>()
                                .map(serde_json::Value::from)
                                .unwrap_or_default(),
                            _ => serde_json::Value::String(v.clone()),
                        };
                        (h.to_string(), value)
                    })
                    .collect();
                println!("{}", serde_json::Value::Object(obj));
            }
        }
        "csv" => {
            println!("{}", header.join(","));
            for line in &table {
                let cells: Vec<String> = line.iter().map(|c| csv_cell(c)).collect();
                println!("{}", cells.join(","));
            }
        }
        _ => {
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    table
                        .iter()
                        .map(|l| l[i].len())
                        .chain([header[i].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let fmt = |cells: &[String]| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if i < dims.len() {
                            format!("{c:<w$}", w = widths[i])
                        } else {
                            format!("{c:>w$}", w = widths[i])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
            };
            let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
            println!("{}", fmt(&head));
            for line in &table {
                println!("{}", fmt(line));
            }
            println!("total cost_usd {}", total.normalize());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
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
