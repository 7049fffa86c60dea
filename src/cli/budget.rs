//! `switchyard budget set | show`: spend limits per tenant (or tenant + feature), per UTC
//! day or month. Workers reserve each job's worst-case cost against them before calling.
//! The SQL is `store::budget_admin`'s.

use crate::budget::Period;
use crate::config::Config;
use crate::job::names::is_valid_tenant;
use crate::store::budget_admin::{budget_status, set_budget, BudgetLimit};
use rust_decimal::Decimal;
use std::process::ExitCode;
use std::str::FromStr;

#[derive(clap::Subcommand, Debug)]
pub enum BudgetCommand {
    /// Create or change a budget.
    Set {
        #[arg(long)]
        tenant: String,
        /// Limit one feature of the tenant; without it the budget covers the whole tenant.
        #[arg(long)]
        feature: Option<String>,
        #[arg(long, value_parser = ["day", "month"])]
        period: String,
        /// Limit in USD (a decimal, e.g. 25 or 0.50).
        #[arg(long)]
        limit: String,
        /// What a job that would overrun the budget does: fail (budget_exceeded) or defer
        /// (waits for the next period).
        #[arg(long, default_value = "fail", value_parser = ["fail", "defer"])]
        policy: String,
    },
    /// List budgets with what is spent and reserved in the current period, the share used
    /// and what is left (the same as `report budgets`).
    Show {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
        format: String,
    },
}

pub async fn run(cfg: Config, cmd: BudgetCommand) -> anyhow::Result<ExitCode> {
    let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
    crate::store::migrate(&pool).await?;
    match cmd {
        BudgetCommand::Set {
            tenant,
            feature,
            period,
            limit,
            policy,
        } => {
            if !is_valid_tenant(&tenant) {
                anyhow::bail!("--tenant {tenant:?} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$");
            }
            let limit = Decimal::from_str(&limit)
                .map_err(|_| anyhow::anyhow!("--limit {limit:?} is not a decimal amount"))?;
            if limit < Decimal::ZERO {
                anyhow::bail!("--limit must not be negative");
            }
            let p = Period::parse(&period)
                .ok_or_else(|| anyhow::anyhow!("--period must be day or month"))?;
            let budget = BudgetLimit {
                tenant: &tenant,
                feature: feature.as_deref(),
                period: &period,
                limit_usd: limit,
                policy: &policy,
                period_start: p.start(chrono::Utc::now()),
            };
            set_budget(&pool, &budget).await?;
            announce(&cfg).await;
            let scope = feature.map_or(tenant.clone(), |f| format!("{tenant}/{f}"));
            println!("budget {scope}: {limit} USD per {period}, policy {policy}");
            Ok(ExitCode::SUCCESS)
        }
        BudgetCommand::Show { tenant, format } => {
            let rows = budget_status(&pool, tenant.as_deref(), chrono::Utc::now()).await?;
            crate::cli::report::budget_table(&rows).print(&format);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Tell running workers that budgets changed, so they read them again at once (without
/// it they do within a few seconds).
async fn announce(cfg: &Config) {
    let subject = crate::budget::changed_subject(&cfg.nats.prefix);
    let sent = async {
        let client = crate::connect::nats(&cfg.nats, std::time::Duration::from_secs(2)).await?;
        client.publish(subject, bytes::Bytes::new()).await?;
        client.flush().await?;
        anyhow::Ok(())
    };
    if let Err(e) = sent.await {
        eprintln!("note: could not tell the workers at once ({e}); they see the change within 5 s");
    }
}
