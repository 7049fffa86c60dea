//! `switchyard submit FILE.jsonl [--priority P] [--wait]`: publish every line as a job to
//! `<prefix>.jobs.<priority>.<tenant>` (the tenant read from the line), with
//! `Nats-Msg-Id: <tenant>:<id>`, a bounded window of publish acks and a progress bar.
//! Lines that are not valid jobs are published too: the worker fails them with a result
//! saying why, as it would for any producer. `--wait` collects one result per job.
//! `--estimate` publishes nothing and prints what the file would cost ([`super::estimate`]).

use crate::config::Config;
use crate::job::names::{is_valid_job_id, is_valid_tenant};
use crate::job::{parse_job, Priority};
use crate::queue::Names;
use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// JSONL file: one job per line (`-` for standard input).
    pub file: PathBuf,
    /// Priority for every job in the file.
    #[arg(long, default_value = "normal", value_parser = ["high", "normal", "low"])]
    pub priority: String,
    /// Tenant for lines that carry no valid `tenant` (they fail as malformed or invalid).
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Wait for every job's result.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit code 2).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// With --wait: write every result, one JSON per line, to this file.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Publish acks outstanding at once.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// No progress bar (for scripts).
    #[arg(long)]
    pub quiet: bool,
    /// Publish nothing: print what the file would cost (per tier and model, and in total)
    /// and how long the providers' rate limits make it take.
    #[arg(long)]
    pub estimate: bool,
    /// With --estimate: table, json or csv (as `report costs`).
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    pub format: String,
    /// With --estimate: each model's output is the mean of its succeeded calls over this
    /// many days (0: no history).
    #[arg(long, default_value_t = 7)]
    pub history_days: u32,
    /// With --estimate: where a model has no history, this share of `max_tokens` is
    /// assumed as its output.
    #[arg(long, default_value = "0.25")]
    pub output_share: rust_decimal::Decimal,
}

pub async fn run(cfg: Config, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let priority = Priority::parse(&args.priority).context("--priority")?;
    if !is_valid_tenant(&args.tenant) {
        anyhow::bail!("--tenant {:?} is not a valid tenant", args.tenant);
    }
    if args.estimate {
        let est = super::estimate::EstimateArgs {
            text: &text,
            priority,
            tenant: &args.tenant,
            format: &args.format,
            history_days: args.history_days,
            output_share: args.output_share,
        };
        return super::estimate::run(&cfg, est).await;
    }
    let names = Names::new(&cfg.nats.prefix);
    let rules = cfg.parse_rules();
    let client = crate::connect::nats(&cfg.nats, crate::connect::NATS_PATIENCE).await?;
    let js = async_nats::jetstream::new(client.clone());

    // Subscribe before publishing so that no result is missed.
    let mut results_sub = if args.wait {
        Some(
            client
                .subscribe(format!("{}.results.>", names.prefix))
                .await?,
        )
    } else {
        None
    };

    let bar = progress(args.quiet, lines.len() as u64, "published");
    let mut pending = VecDeque::new();
    let mut expected: HashSet<(String, String)> = HashSet::with_capacity(lines.len());
    let started = Instant::now();
    for line in &lines {
        let (tenant, id) = line_key(line);
        let tenant = tenant.unwrap_or_else(|| args.tenant.clone());
        let subject = names.jobs_subject(priority, &tenant);
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &id {
            headers.insert("Nats-Msg-Id", format!("{tenant}:{id}").as_str());
        }
        let payload = Bytes::copy_from_slice(line.as_bytes());
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.clone())
            .await
            .with_context(|| format!("publishing to {subject}"))?;
        pending.push_back((ack, subject, payload));
        while pending.len() >= args.window.max(1) {
            settle(&mut pending, &rules, &mut expected, &bar).await?;
        }
    }
    while !pending.is_empty() {
        settle(&mut pending, &rules, &mut expected, &bar).await?;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {} jobs ({} priority) in {:.2}s ({:.0}/s)",
        lines.len(),
        priority,
        secs,
        lines.len() as f64 / secs.max(1e-9)
    );
    let Some(sub) = results_sub.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };

    // Collect one result per (tenant, id).
    let bar = progress(args.quiet, expected.len() as u64, "results");
    let mut out = match &args.results {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_s);
    while !expected.is_empty() {
        let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => anyhow::bail!("the results subscription ended"),
            Err(_) => break,
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg.payload) else {
            continue;
        };
        let key = (
            v["tenant"].as_str().unwrap_or_default().to_string(),
            v["id"].as_str().unwrap_or_default().to_string(),
        );
        if !expected.remove(&key) {
            continue;
        }
        let label = match v["status"].as_str() {
            Some("failed") => format!("failed/{}", v["error"]["kind"].as_str().unwrap_or("?")),
            Some(s) => s.to_string(),
            None => "?".into(),
        };
        *by_status.entry(label).or_default() += 1;
        if let Some(w) = out.as_mut() {
            w.write_all(&msg.payload)?;
            w.write_all(b"\n")?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(mut w) = out {
        w.flush()?;
    }
    let total: u64 = by_status.values().sum();
    eprintln!(
        "results: {total} in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    for (k, n) in &by_status {
        eprintln!("  {k:<32} {n}");
    }
    if !expected.is_empty() {
        eprintln!(
            "{} jobs have no result after {}s",
            expected.len(),
            args.timeout_s
        );
        for (t, i) in expected.iter().take(20) {
            eprintln!("  missing: {t}/{i}");
        }
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

type Pending = VecDeque<(
    async_nats::jetstream::context::PublishAckFuture,
    String,
    Bytes,
)>;

/// Await the oldest publish ack and note under which (tenant, id) its result will come:
/// the same rules the worker applies, given the stream sequence.
async fn settle(
    pending: &mut Pending,
    rules: &crate::job::ParseRules,
    expected: &mut HashSet<(String, String)>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let Some((ack, subject, payload)) = pending.pop_front() else {
        return Ok(());
    };
    let ack = ack
        .await
        .with_context(|| format!("publish to {subject} not acknowledged"))?;
    if !ack.duplicate {
        let envelope = match parse_job(&payload, &subject, ack.sequence, rules) {
            Ok(p) => p.envelope,
            Err(f) => f.envelope,
        };
        expected.insert((envelope.tenant, envelope.id));
    }
    bar.inc(1);
    Ok(())
}

/// The tenant and id a line names, when it is a JSON object that has valid ones.
fn line_key(line: &str) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line) else {
        return (None, None);
    };
    let tenant = o
        .get("tenant")
        .and_then(|t| t.as_str())
        .filter(|t| is_valid_tenant(t))
        .map(str::to_string);
    let id = o
        .get("id")
        .and_then(|t| t.as_str())
        .filter(|t| is_valid_job_id(t))
        .map(str::to_string);
    (tenant, id)
}

/// A progress bar on stderr (hidden with `quiet`, or when stderr is not a terminal).
pub(super) fn progress(quiet: bool, len: u64, what: &'static str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:>9} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}
