//! `switchyard dlq list | show | replay`: inspect and replay dead letters.
//!
//! Replay republishes the job as received (optionally with another `model`) to its
//! original priority, with a fresh `Nats-Msg-Id` so that JetStream's duplicate window does
//! not swallow it, then deletes exactly the dead letter it replayed, by its stream
//! sequence. A job whose earlier run failed runs again; if it fails again, its new dead
//! letter (a new sequence) takes the old one's place and is kept. Publishing first means a
//! replay that dies half-way leaves the old dead letter, never loses the job.

use crate::config::Config;
use crate::job::{ErrorKind, Priority, SubjectInfo};
use crate::queue::publish::{remove_dead_letter, DlqEntry};
use crate::queue::Names;
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters (newest last).
    List(Filters),
    /// Show one dead letter in full.
    Show {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Publish dead-lettered jobs again and remove their dead letters.
    Replay {
        /// Tenant of the IDs given (required with IDs).
        #[arg(long)]
        tenant: Option<String>,
        /// Job ids to replay.
        ids: Vec<String>,
        /// Replay every dead letter that matches the filters.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only dead letters with this error kind (e.g. providers_exhausted).
        #[arg(long)]
        kind: Option<String>,
        /// Replay with this `model` instead of the job's own.
        #[arg(long)]
        model: Option<String>,
        /// Say what would be replayed, publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct Filters {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this error kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

pub async fn run(cfg: Config, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let client = crate::connect::nats(&cfg.nats, crate::connect::NATS_PATIENCE).await?;
    let js = jetstream::new(client.clone());
    let names = Names::new(&cfg.nats.prefix);
    match cmd {
        DlqCommand::List(f) => {
            check_kind(f.kind.as_deref())?;
            let entries = read_all(&js, &names, f.tenant.as_deref()).await?;
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|d| {
                    f.kind
                        .as_deref()
                        .is_none_or(|k| d.entry.error.kind.as_str() == k)
                })
                .collect();
            if f.format == "json" {
                for d in &entries {
                    println!("{}", serde_json::to_string(&d.entry)?);
                }
            } else {
                println!(
                    "{:<16} {:<28} {:<20} {:>5}  {:<20}  message",
                    "tenant", "id", "kind", "deliv", "failed_at"
                );
                for DeadLetter {
                    subject, entry: e, ..
                } in &entries
                {
                    let (tenant, id) = key_of(&names, subject);
                    let mut msg = e.error.message.replace('\n', " ");
                    if msg.len() > 80 {
                        let mut end = 80;
                        while !msg.is_char_boundary(end) {
                            end -= 1;
                        }
                        msg.truncate(end);
                        msg.push('…');
                    }
                    println!(
                        "{tenant:<16} {id:<28} {:<20} {:>5}  {:<20}  {msg}",
                        e.error.kind.as_str(),
                        e.deliveries,
                        e.failed_at.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                }
                eprintln!("{} dead letters", entries.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { tenant, id } => {
            let stream = js.get_stream(names.dlq_stream()).await?;
            match stream
                .get_last_raw_message_by_subject(&names.dlq_subject(&tenant, &id))
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
        DlqCommand::Replay {
            tenant,
            ids,
            all,
            kind,
            model,
            dry_run,
        } => {
            check_kind(kind.as_deref())?;
            if !all && ids.is_empty() {
                anyhow::bail!("name job ids (with --tenant) or pass --all");
            }
            if !ids.is_empty() && tenant.is_none() {
                anyhow::bail!("--tenant is required with job ids (ids are per tenant)");
            }
            let stream = js.get_stream(names.dlq_stream()).await?;
            let entries = read_all(&js, &names, tenant.as_deref()).await?;
            let (mut replayed, mut skipped) = (0u64, 0u64);
            for DeadLetter {
                subject,
                sequence,
                entry,
            } in entries
            {
                let (t, id) = key_of(&names, &subject);
                if !ids.is_empty() && !ids.iter().any(|i| i == &id) {
                    continue;
                }
                if kind
                    .as_deref()
                    .is_some_and(|k| entry.error.kind.as_str() != k)
                {
                    continue;
                }
                let Some(mut job) = entry.job.clone() else {
                    eprintln!("skip {t}/{id}: the payload was not a JSON object; fix it and submit it again");
                    skipped += 1;
                    continue;
                };
                if let (Some(m), Some(o)) = (&model, job.as_object_mut()) {
                    o.insert("model".into(), serde_json::Value::String(m.clone()));
                }
                let info = SubjectInfo::parse(&entry.subject, &cfg.nats.prefix);
                let priority = info.priority.unwrap_or(Priority::Normal);
                let target = names.jobs_subject(priority, &t);
                if dry_run {
                    println!("would replay {t}/{id} to {target}");
                    continue;
                }
                let mut headers = async_nats::HeaderMap::new();
                let msg_id = format!("{t}:{id}:replay:{}", chrono::Utc::now().timestamp_micros());
                headers.insert("Nats-Msg-Id", msg_id.as_str());
                js.publish_with_headers(target.clone(), headers, serde_json::to_vec(&job)?.into())
                    .await
                    .with_context(|| format!("publishing {t}/{id} to {target}"))?
                    .await
                    .with_context(|| format!("publishing {t}/{id} to {target}"))?;
                remove_dead_letter(&stream, sequence)
                    .await
                    .with_context(|| format!("removing the dead letter {subject}"))?;
                println!("replayed {t}/{id} to {target}");
                replayed += 1;
            }
            eprintln!("{replayed} replayed, {skipped} skipped");
            Ok(if skipped > 0 {
                ExitCode::from(4)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
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
fn key_of(names: &Names, subject: &str) -> (String, String) {
    let rest = subject
        .strip_prefix(&format!("{}.dlq.", names.prefix))
        .unwrap_or(subject);
    match rest.split_once('.') {
        Some((t, id)) => (t.to_string(), id.to_string()),
        None => (String::new(), rest.to_string()),
    }
}

/// One dead letter as read from the stream.
struct DeadLetter {
    subject: String,
    /// Its stream sequence: replay deletes exactly this message.
    sequence: u64,
    entry: DlqEntry,
}

/// Every dead letter (optionally of one tenant), oldest first, through an ephemeral
/// ordered consumer.
async fn read_all(
    js: &jetstream::Context,
    names: &Names,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = js
        .get_stream(names.dlq_stream())
        .await
        .with_context(|| format!("no stream {} (has a worker run?)", names.dlq_stream()))?;
    if stream.info().await?.state.messages == 0 {
        return Ok(Vec::new());
    }
    let filter = match tenant {
        Some(t) => format!("{}.dlq.{t}.>", names.prefix),
        None => format!("{}.dlq.>", names.prefix),
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    loop {
        let next = match tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
            Ok(Some(m)) => m?,
            _ => break,
        };
        let info = next
            .info()
            .map_err(|e| anyhow::anyhow!("dead letter metadata: {e}"))?;
        let (pending, sequence) = (info.pending, info.stream_sequence);
        match serde_json::from_slice::<DlqEntry>(&next.payload) {
            Ok(entry) => out.push(DeadLetter {
                subject: next.subject.to_string(),
                sequence,
                entry,
            }),
            Err(e) => eprintln!("unreadable dead letter at {}: {e}", next.subject),
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}
