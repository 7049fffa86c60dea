//! `switchyard dlq list | show | replay | purge`: inspect, replay and delete dead letters,
//! one at a time or in bulk by filter (tenant, error kind, feature, provider called,
//! failed since / until).
//!
//! Finding them ([`select`]) reads neither the whole stream nor every payload: the keys
//! come from the stream's subjects, the filters are judged from Postgres, and only the
//! dead letters a command needs are read, by subject. Replaying ([`replay`]) publishes a
//! job again through the normal path and then deletes exactly the dead letter it
//! replayed; purging ([`purge`]) deletes after a confirmation.

pub(crate) mod purge;
pub(crate) mod replay;
pub(crate) mod select;

use crate::config::Config;
use crate::job::names::is_valid_tenant;
use crate::job::ErrorKind;
use crate::queue::Names;
use crate::store::dead_letters::DeadLetterFilter;
use async_nats::jetstream;
use select::{DeadLetter, Dlq, Selection};
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters (oldest first) that match the filters, with a count.
    List(ListArgs),
    /// Show one dead letter in full.
    Show {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Publish dead-lettered jobs again (through the normal path) and remove their dead
    /// letters; by ids or by filter, with a progress bar and a summary.
    Replay(replay::ReplayArgs),
    /// Delete the dead letters that match, after a confirmation (or --yes).
    Purge(purge::PurgeArgs),
}

/// Which dead letters (every filter given must hold).
#[derive(clap::Args, Debug, Clone)]
pub struct Filters {
    /// Only this tenant (required with job ids: ids are per tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this error kind (e.g. providers_exhausted).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs of this feature.
    #[arg(long)]
    pub feature: Option<String>,
    /// Only dead letters that failed at or after this time: RFC 3339, a date
    /// (2026-11-01), or a span back from now (90m, 24h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only dead letters that failed before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// Only jobs that called this provider (any outcome).
    #[arg(long, visible_alias = "from-provider")]
    pub provider: Option<String>,
    /// Print only how many dead letters match (reads none of them).
    #[arg(long)]
    pub count: bool,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

impl Filters {
    /// Check the filters and turn them into one `DeadLetterFilter`; `provider`: the
    /// provider filter, whatever the command calls it.
    pub fn resolve(
        &self,
        cfg: &Config,
        provider: Option<&str>,
    ) -> anyhow::Result<DeadLetterFilter> {
        if let Some(t) = &self.tenant {
            if !is_valid_tenant(t) {
                anyhow::bail!("--tenant {t:?} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$");
            }
        }
        check_kind(self.kind.as_deref())?;
        if let Some(p) = provider {
            if !cfg.providers.iter().any(|c| c.name == p) {
                eprintln!("note: no provider {p:?} is configured; matching it anyway");
            }
        }
        let time = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| {
                    crate::cli::report::parse_time(s).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
                })
                .transpose()
        };
        let (since, until) = (time("since", &self.since)?, time("until", &self.until)?);
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                anyhow::bail!("--since ({s}) must be before --until ({u})");
            }
        }
        Ok(DeadLetterFilter {
            tenant: self.tenant.clone(),
            kind: self.kind.clone(),
            feature: self.feature.clone(),
            provider: provider.map(str::to_string),
            since,
            until,
        })
    }
}

/// A bulk command names ids (of one tenant) or says `--all`.
fn check_ids_or_all(ids: &[String], all: bool, filters: &Filters) -> anyhow::Result<()> {
    if !all && ids.is_empty() {
        anyhow::bail!("name job ids (with --tenant) or pass --all (narrowed by the filters)");
    }
    if !ids.is_empty() && filters.tenant.is_none() {
        anyhow::bail!("--tenant is required with job ids (ids are per tenant)");
    }
    Ok(())
}

/// Open the DLQ and select what `filter` (and `ids`) match, with Postgres when the
/// filter (or `statuses`, each job's row status) needs it.
async fn open_and_select(
    cfg: &Config,
    js: &jetstream::Context,
    names: Names,
    filter: &DeadLetterFilter,
    ids: &[String],
    statuses: bool,
) -> anyhow::Result<(Dlq, Selection)> {
    let pool = if statuses || !filter.is_scope_only() {
        Some(crate::connect::postgres(&cfg.postgres, 2).await?)
    } else {
        None
    };
    let dlq = Dlq::open(js, names).await?;
    let selection = dlq.select(filter, ids, pool.as_ref(), statuses).await?;
    Ok((dlq, selection))
}

pub async fn run(cfg: Config, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let client = crate::connect::nats(&cfg.nats, crate::connect::NATS_PATIENCE).await?;
    let js = jetstream::new(client.clone());
    let names = Names::new(&cfg.nats.prefix);
    match cmd {
        DlqCommand::List(args) => list(&cfg, &js, names, args).await,
        DlqCommand::Show { tenant, id } => {
            let dlq = Dlq::open(&js, names).await?;
            match dlq
                .stream
                .direct_get_last_for_subject(dlq.names.dlq_subject(&tenant, &id))
                .await
            {
                Ok(m) => {
                    let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(_) => {
                    eprintln!("no dead letter for {tenant}/{id}");
                    Ok(ExitCode::from(3))
                }
            }
        }
        DlqCommand::Replay(args) => replay::run(&cfg, &js, names, args).await,
        DlqCommand::Purge(args) => purge::run(&cfg, &js, names, args).await,
    }
}

async fn list(
    cfg: &Config,
    js: &jetstream::Context,
    names: Names,
    args: ListArgs,
) -> anyhow::Result<ExitCode> {
    let filter = args.filters.resolve(cfg, args.provider.as_deref())?;
    let (dlq, selection) = open_and_select(cfg, js, names, &filter, &[], false).await?;
    if args.count {
        println!("{}", selection.selected.len());
        return Ok(ExitCode::SUCCESS);
    }
    let letters = read_sorted(&dlq, selection, &filter).await?;
    if args.format == "json" {
        for d in &letters {
            println!("{}", serde_json::to_string(&d.entry)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<28} {:<20} {:<20} {:>5}  {:<20}  message",
        "tenant", "id", "feature", "kind", "deliv", "failed_at"
    );
    for DeadLetter {
        subject, entry: e, ..
    } in &letters
    {
        let (tenant, id) = key_of(&dlq.names, subject);
        let feature = e
            .job
            .as_ref()
            .and_then(|j| j.get("feature"))
            .and_then(|f| f.as_str())
            .unwrap_or("");
        println!(
            "{tenant:<16} {id:<28} {feature:<20} {:<20} {:>5}  {:<20}  {}",
            e.error.kind.as_str(),
            e.deliveries,
            e.failed_at.format("%Y-%m-%dT%H:%M:%SZ"),
            clip(&e.error.message, 80)
        );
    }
    eprintln!("{} dead letters", letters.len());
    Ok(ExitCode::SUCCESS)
}

/// The dead letters that match `filter` (`dlq list`; the console's list), oldest first.
pub async fn matching(
    cfg: &Config,
    js: &jetstream::Context,
    names: Names,
    filter: &DeadLetterFilter,
) -> anyhow::Result<(Dlq, Vec<DeadLetter>)> {
    let (dlq, selection) = open_and_select(cfg, js, names, filter, &[], false).await?;
    let letters = read_sorted(&dlq, selection, filter).await?;
    Ok((dlq, letters))
}

async fn read_sorted(
    dlq: &Dlq,
    selection: Selection,
    filter: &DeadLetterFilter,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = dlq
        .read_selection(selection, filter.tenant.as_deref())
        .await?;
    letters.sort_by(|a, b| (a.entry.failed_at, &a.subject).cmp(&(b.entry.failed_at, &b.subject)));
    Ok(letters)
}

/// One line of at most `max` bytes (cut at a character boundary, with an ellipsis).
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut msg = text.replace('\n', " ");
    if msg.len() > max {
        let mut end = max;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    msg
}

fn check_kind(kind: Option<&str>) -> anyhow::Result<()> {
    if let Some(k) = kind {
        if !ErrorKind::ALL.iter().any(|e| e.as_str() == k) {
            let all: Vec<&str> = ErrorKind::ALL.iter().map(|e| e.as_str()).collect();
            anyhow::bail!("--kind {k:?} is not an error kind ({})", all.join(", "));
        }
    }
    Ok(())
}

/// `<prefix>.dlq.<tenant>.<id>` → (tenant, id)
pub(crate) fn key_of(names: &Names, subject: &str) -> (String, String) {
    let rest = subject
        .strip_prefix(&format!("{}.dlq.", names.prefix))
        .unwrap_or(subject);
    match rest.split_once('.') {
        Some((t, id)) => (t.to_string(), id.to_string()),
        None => (String::new(), rest.to_string()),
    }
}
