//! `switchyard dlq purge`: delete the dead letters that match (by ids or by filter) after
//! a confirmation: an interactive prompt, or `--yes`. Without a terminal to ask on and
//! without `--yes` it refuses and deletes nothing.
//!
//! Only dead letters that were there when the selection was made are deleted (bounded by
//! the stream's last sequence then): one that arrives meanwhile (a replayed job that
//! failed again) is newer and stays. A whole scope (everything, or a tenant) goes in one
//! purge of its subjects; a filtered selection dead letter by dead letter, by sequence. The jobs' rows in Postgres stay as they are (the
//! record of the failure); only the dead letters go.

use super::select::FETCH_WINDOW;
use super::{check_ids_or_all, open_and_select, Filters};
use crate::config::Config;
use crate::queue::publish::remove_dead_letter;
use crate::queue::Names;
use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct PurgeArgs {
    /// Job ids whose dead letters to delete (with --tenant).
    pub ids: Vec<String>,
    /// Delete every dead letter that matches the filters.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    #[command(flatten)]
    pub filters: Filters,
    /// Only jobs that called this provider (any outcome).
    #[arg(long, visible_alias = "from-provider")]
    pub provider: Option<String>,
    /// Do not ask: delete.
    #[arg(long)]
    pub yes: bool,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What a purge did (or, dry, would do).
#[derive(Debug, Default)]
pub struct PurgeReport {
    pub deleted: u64,
    /// Gone meanwhile, or newer than the selection: kept.
    pub kept: u64,
    /// A dry run: the keys (`tenant/id`) that would be deleted.
    pub would_delete: Vec<String>,
    pub summary: String,
    /// The exit code the CLI gives it.
    pub code: u8,
}

pub async fn run(
    cfg: &Config,
    js: &jetstream::Context,
    names: Names,
    args: PurgeArgs,
) -> anyhow::Result<ExitCode> {
    let report = execute(cfg, js, names, &args, true).await?;
    for key in &report.would_delete {
        println!("would delete {key}");
    }
    eprintln!("{}", report.summary);
    Ok(ExitCode::from(report.code))
}

/// Purge what `args` selects (the CLI's `dlq purge` and the console's purge form).
/// Unless `args.yes` or `args.dry_run`, asks on the terminal first. `echo`: show a
/// progress bar (unless `args.quiet`).
pub async fn execute(
    cfg: &Config,
    js: &jetstream::Context,
    names: Names,
    args: &PurgeArgs,
    echo: bool,
) -> anyhow::Result<PurgeReport> {
    check_ids_or_all(&args.ids, args.all, &args.filters)?;
    let filter = args.filters.resolve(cfg, args.provider.as_deref())?;
    let (dlq, selection) = open_and_select(cfg, js, names, &filter, &args.ids, false).await?;
    let n = selection.selected.len();
    if n == 0 {
        return Ok(PurgeReport {
            summary: "no dead letters match; nothing deleted".into(),
            ..PurgeReport::default()
        });
    }
    if args.dry_run {
        return Ok(PurgeReport {
            would_delete: selection
                .selected
                .iter()
                .map(|s| format!("{}/{}", s.tenant, s.id))
                .collect(),
            summary: format!("{n} dead letters would be deleted"),
            ..PurgeReport::default()
        });
    }
    if !args.yes && !confirm(n).await? {
        return Ok(PurgeReport {
            summary: "not confirmed; nothing deleted".into(),
            code: 1,
            ..PurgeReport::default()
        });
    }
    let bound = selection.last_sequence + 1;
    let bar = crate::cli::submit::progress(args.quiet || !echo, n as u64, "deleted");
    let (mut deleted, mut kept) = (0u64, 0u64);
    if args.ids.is_empty() && filter.is_scope_only() {
        // Every dead letter of the scope: one purge of its subjects.
        let scope = match &filter.tenant {
            Some(t) => format!("{}.dlq.{t}.>", dlq.names.prefix),
            None => format!("{}.dlq.>", dlq.names.prefix),
        };
        let r = dlq
            .stream
            .purge()
            .filter(scope.clone())
            .sequence(bound)
            .await
            .with_context(|| format!("purging {scope}"))?;
        deleted = r.purged;
        kept = (n as u64).saturating_sub(r.purged);
        bar.inc(n as u64);
    } else {
        // Each by its sequence (a direct get by subject, then a delete): a purge filtered
        // by one subject walks the stream, about 5 ms per key at 100k dead letters.
        let mut purged = futures::stream::iter(selection.selected)
            .map(|s| {
                let dlq = &dlq;
                async move {
                    let r = async {
                        let seq = match &s.letter {
                            Some(l) => Some(l.sequence),
                            None => dlq.sequence_of(&s.tenant, &s.id).await?,
                        };
                        match seq {
                            Some(seq) if seq < bound => {
                                remove_dead_letter(&dlq.stream, seq).await?;
                                anyhow::Ok(true)
                            }
                            _ => Ok(false),
                        }
                    }
                    .await;
                    (format!("{}/{}", s.tenant, s.id), r)
                }
            })
            .buffer_unordered(FETCH_WINDOW);
        while let Some((key, r)) = purged.next().await {
            bar.inc(1);
            match r {
                Ok(true) => deleted += 1,
                Ok(false) => kept += 1,
                Err(e) => {
                    bar.finish_and_clear();
                    return Err(e).with_context(|| {
                        format!("deleting the dead letter of {key} ({deleted} deleted before it)")
                    });
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(PurgeReport {
        deleted,
        kept,
        summary: format!(
            "{deleted} dead letters deleted, {kept} gone meanwhile or newer than the selection (kept)"
        ),
        ..PurgeReport::default()
    })
}

/// Ask on the terminal. Refuses (an error naming `--yes`) when stdin or stderr is not a
/// terminal.
async fn confirm(n: usize) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        anyhow::bail!(
            "refusing to delete {n} dead letters without confirmation: stdin is not a terminal; pass --yes (or --dry-run to see them)"
        );
    }
    eprint!("delete {n} dead letters? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
