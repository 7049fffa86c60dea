//! `switchyard queue`: the backlog per priority and tenant — jobs in the stream (waiting or
//! in flight), the oldest one's age, the tenant's configured weight, and the jobs it got
//! finished in the last `--window` with its share of its priority's. Backlog from the
//! jobs stream ([`crate::queue::backlog`]), finished jobs from Postgres
//! ([`crate::store::finished`]). Same formats as `report costs`.

use super::report::table::{Kind, Table};
use crate::config::Config;
use crate::job::Priority;
use crate::queue::Names;
use anyhow::Context as _;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// Count finished jobs over this many seconds for the share column.
    #[arg(long, default_value_t = 60)]
    pub window_s: u64,
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    pub format: String,
}

#[derive(Default)]
struct Line {
    waiting: u64,
    oldest_age_s: f64,
    finished: i64,
}

pub async fn run(cfg: Config, args: QueueArgs) -> anyhow::Result<ExitCode> {
    if args.window_s == 0 {
        anyhow::bail!("--window-s must be greater than 0");
    }
    let names = Names::new(&cfg.nats.prefix);
    let client = crate::connect::nats(&cfg.nats, crate::connect::NATS_PATIENCE).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(names.jobs_stream())
        .await
        .with_context(|| format!("stream {}", names.jobs_stream()))?;
    let backlog = crate::queue::backlog::read(&stream, &names.prefix).await?;
    let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
    let finished =
        crate::store::finished::finished_by_tenant(&pool, Duration::from_secs(args.window_s))
            .await?;

    // (priority index, tenant) → line, so the rows come out high first, then by tenant.
    let mut lines: BTreeMap<(usize, String), Line> = BTreeMap::new();
    for b in backlog {
        let l = lines.entry((b.priority.index(), b.tenant)).or_default();
        l.waiting = b.messages;
        l.oldest_age_s = b.oldest_age_s;
    }
    let mut per_priority = [0i64; 3];
    for (priority, tenant, n) in finished {
        let Some(p) = Priority::parse(&priority) else {
            continue;
        };
        per_priority[p.index()] += n;
        lines.entry((p.index(), tenant)).or_default().finished = n;
    }

    let mut t = Table::new([
        ("priority", Kind::Text),
        ("tenant", Kind::Text),
        ("waiting", Kind::Count),
        ("oldest_age_s", Kind::Decimal),
        ("weight", Kind::Count),
        ("finished", Kind::Count),
        ("share_pct", Kind::Decimal),
    ]);
    for ((pi, tenant), l) in &lines {
        let share = if per_priority[*pi] > 0 {
            (Decimal::from(l.finished) * Decimal::ONE_HUNDRED / Decimal::from(per_priority[*pi]))
                .round_dp(1)
        } else {
            Decimal::ZERO
        };
        t.rows.push(vec![
            Priority::ALL[*pi].as_str().to_string(),
            tenant.clone(),
            l.waiting.to_string(),
            format!("{:.1}", l.oldest_age_s),
            cfg.scheduling.weight(tenant).to_string(),
            l.finished.to_string(),
            share.to_string(),
        ]);
    }
    t.print(&args.format);
    if args.format == "table" && !cfg.scheduling.fair {
        println!(
            "(scheduling.fair is off: each priority is served in arrival order, weights unused)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
