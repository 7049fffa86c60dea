//! `switchyard submit FILE.jsonl [--priority P] [--wait]`: publish every line as a job to
//! `<prefix>.jobs.<priority>.<tenant>` (the tenant read from the line), with
//! `Nats-Msg-Id: <tenant>:<id>`, a bounded window of publish acks and a progress bar.
//! Lines that are not valid jobs are published too: the worker fails them with a result
//! saying why, as it would for any producer. `--wait` collects one result per job.
//! OpenAI Batch lines (`custom_id`, `method`, `url`, `body`) are mapped to jobs first
//! (see `submit_openai`); `--format openai` writes OpenAI's batch output lines.
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
    /// Format of --results: `switchyard` (the results as published) or `openai`
    /// (OpenAI's batch output lines: `{"id", "custom_id", "response", "error"}`); of
    /// --estimate: `table` (the default there), `json` or `csv` (as `report costs`).
    #[arg(long, default_value = "switchyard",
          value_parser = ["switchyard", "openai", "table", "json", "csv"])]
    pub format: String,
    /// With --format openai: write failed requests (and OpenAI Batch lines that could not
    /// become jobs) here, as OpenAI's error file, instead of into --results.
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Batch id for OpenAI Batch lines: job ids are `<batch>-<hash of custom_id>`
    /// (default: from the file's SHA-256, so submitting the same file again is idempotent).
    #[arg(long)]
    pub batch_id: Option<String>,
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
    let batch = match &args.batch_id {
        Some(b) => b.clone(),
        None => crate::frontdoor::openai_batch::file_batch_id(text.as_bytes()),
    };
    if !is_valid_job_id(&format!("{batch}-0000000000000000")) {
        anyhow::bail!("--batch-id {batch:?}: job ids made from it would not be valid");
    }
    if args.errors.is_some() && args.format != "openai" {
        anyhow::bail!("--errors needs --format openai");
    }
    let priority = Priority::parse(&args.priority).context("--priority")?;
    if !is_valid_tenant(&args.tenant) {
        anyhow::bail!("--tenant {:?} is not a valid tenant", args.tenant);
    }
    if args.estimate {
        let format = match args.format.as_str() {
            "switchyard" | "table" => "table",
            "json" => "json",
            "csv" => "csv",
            other => anyhow::bail!("--format {other} is not one of --estimate's: table, json, csv"),
        }
        .to_string();
        let est = super::estimate::EstimateArgs {
            text: &text,
            priority,
            tenant: &args.tenant,
            format: &format,
            history_days: args.history_days,
            output_share: args.output_share,
        };
        return super::estimate::run(&cfg, est).await;
    }
    if matches!(args.format.as_str(), "table" | "json" | "csv") {
        anyhow::bail!(
            "--format {} is for --estimate; --results takes switchyard or openai",
            args.format
        );
    }
    let mut custom_ids = std::collections::HashMap::new();
    let (prepared, refused) =
        super::submit_openai::prepare(&lines, &batch, &args.tenant, &mut custom_ids)?;
    for (n, e) in &refused {
        eprintln!("line {n}: not submitted: {} ({})", e.message, e.code);
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

    let bar = progress(args.quiet, prepared.len() as u64, "published");
    let mut pending = VecDeque::new();
    let mut expected: HashSet<(String, String)> = HashSet::with_capacity(lines.len());
    let started = Instant::now();
    for line in &prepared {
        let (tenant, id) = (line.tenant.clone(), line.id.clone());
        let tenant = tenant.unwrap_or_else(|| args.tenant.clone());
        let subject = names.jobs_subject(priority, &tenant);
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &id {
            headers.insert("Nats-Msg-Id", format!("{tenant}:{id}").as_str());
        }
        let payload = Bytes::copy_from_slice(line.payload.as_bytes());
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
        prepared.len(),
        priority,
        secs,
        prepared.len() as f64 / secs.max(1e-9)
    );
    if !refused.is_empty() {
        eprintln!(
            "{} OpenAI Batch lines were not submitted (see above)",
            refused.len()
        );
    }
    let refused_code = if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    };
    let Some(sub) = results_sub.as_mut() else {
        return Ok(refused_code);
    };

    // Collect one result per (tenant, id).
    let bar = progress(args.quiet, expected.len() as u64, "results");
    let create =
        |p: &Option<PathBuf>| -> anyhow::Result<Option<std::io::BufWriter<std::fs::File>>> {
            match p {
                Some(p) => Ok(Some(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                ))),
                None => Ok(None),
            }
        };
    let mut out = create(&args.results)?;
    let mut errors_out = create(&args.errors)?;
    let openai = args.format == "openai";
    if openai {
        for (n, e) in &refused {
            if let Some(w) = errors_out.as_mut().or(out.as_mut()) {
                writeln!(w, "{}", e.to_line(*n))?;
            }
        }
    }
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
        if openai {
            if let Some((line, ok)) = super::submit_openai::output_line(&msg.payload, &custom_ids) {
                let w = if ok {
                    out.as_mut()
                } else {
                    errors_out.as_mut().or(out.as_mut())
                };
                if let Some(w) = w {
                    writeln!(w, "{line}")?;
                }
            }
        } else if let Some(w) = out.as_mut() {
            w.write_all(&msg.payload)?;
            w.write_all(b"\n")?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for w in [out, errors_out].into_iter().flatten() {
        let mut w = w;
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
    Ok(refused_code)
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
pub(super) fn line_key(line: &str) -> (Option<String>, Option<String>) {
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
