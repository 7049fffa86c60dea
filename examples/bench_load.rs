//! The load driver of `scripts/bench.sh`: publishes jobs to JetStream and times each one
//! until its result arrives, with its own clock.
//!
//! ```text
//! bench_load --nats URL --prefix P --jobs FILE.jsonl [--mode backlog] [--timeout-s 600]
//! bench_load --nats URL --prefix P --jobs FILE.jsonl --mode open --rate R --duration-s D
//! bench_load --nats URL --prefix P --jobs FILE.jsonl --mode jetstream
//! ```
//!
//! Every line of FILE is one job (switchyard's job JSON, e.g. from
//! `scripts/lib/bench_jobs.py`), published as it is to `<p>.jobs.normal.<tenant>` with
//! `Nats-Msg-Id: <tenant>:<id>` and a window of `--window` (1024) unacknowledged
//! publishes. Results are read from a core subscription to `<p>.results.>` (switchyard's
//! results subject, `<p>.results.<tenant>.<id>`; `bench_bare` publishes the same), opened
//! before the first publish; a result's job is found from its subject.
//!
//! - `backlog`: every line, as fast as JetStream takes them, then wait for every result.
//!   `jobs_per_s` = N / (first publish → last result).
//! - `open`: `--rate` jobs/s for `--duration-s` seconds (the first R×D lines), each sent at
//!   its scheduled time `start + i / R` (absolute times: a late send does not push the
//!   later ones back; `schedule_lag_ms` says how late sends were), then wait for results.
//! - `jetstream`: JetStream alone: creates `<P>_JOBS` (work queue, `<p>.jobs.>`), publishes
//!   every line, then drains them through a durable pull consumer (batches of 500, one
//!   ack each), deletes the stream, and reports both rates.
//!
//! Prints one JSON object on stdout: counts, `first_publish_to_last_result_s`,
//! `jobs_per_s`, publish rate, and `latency_ms` {p50, p90, p99, p999, max} of publish →
//! result, and `cpu_s`, this process's own CPU time. Exits 1 when results are missing at
//! the timeout.

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Backlog,
    Open,
    JetStream,
}

struct Args {
    nats: String,
    prefix: String,
    jobs: String,
    mode: Mode,
    rate: f64,
    duration_s: f64,
    window: usize,
    timeout_s: u64,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        nats: "nats://127.0.0.1:4222".into(),
        prefix: String::new(),
        jobs: String::new(),
        mode: Mode::Backlog,
        rate: 1000.0,
        duration_s: 20.0,
        window: 1024,
        timeout_s: 600,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--nats" => a.nats = v()?,
            "--prefix" => a.prefix = v()?,
            "--jobs" => a.jobs = v()?,
            "--mode" => {
                a.mode = match v()?.as_str() {
                    "backlog" => Mode::Backlog,
                    "open" => Mode::Open,
                    "jetstream" => Mode::JetStream,
                    m => return Err(format!("--mode {m}: backlog, open or jetstream").into()),
                }
            }
            "--rate" => a.rate = v()?.parse()?,
            "--duration-s" => a.duration_s = v()?.parse()?,
            "--window" => a.window = v()?.parse()?,
            "--timeout-s" => a.timeout_s = v()?.parse()?,
            _ => return Err(format!("unknown argument {k} (see examples/bench_load.rs)").into()),
        }
    }
    if a.prefix.is_empty() || a.jobs.is_empty() {
        return Err("--prefix and --jobs are required".into());
    }
    Ok(a)
}

#[derive(Deserialize)]
struct Key<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    tenant: std::borrow::Cow<'a, str>,
}

/// One job to send: its subject, payload and `Nats-Msg-Id`.
struct Outgoing {
    subject: String,
    msg_id: String,
    payload: Bytes,
}

fn load(a: &Args) -> Result<(Vec<Outgoing>, HashMap<String, u32>), Error> {
    let text = std::fs::read(&a.jobs)?;
    let mut out = Vec::new();
    let mut index = HashMap::new();
    for line in text.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let k: Key = serde_json::from_slice(line)?;
        let i = u32::try_from(out.len())?;
        index.insert(format!("{}.{}", k.tenant, k.id), i);
        out.push(Outgoing {
            subject: format!("{}.jobs.normal.{}", a.prefix, k.tenant),
            msg_id: format!("{}:{}", k.tenant, k.id),
            payload: Bytes::copy_from_slice(line),
        });
    }
    if a.mode == Mode::Open {
        let want = (a.rate * a.duration_s).round() as usize;
        if want > out.len() {
            return Err(format!(
                "{} jobs in {}, the open loop needs {want}",
                out.len(),
                a.jobs
            )
            .into());
        }
        out.truncate(want);
    }
    Ok((out, index))
}

fn ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// Awaits publish acks in order; the channel's capacity is the window.
fn ack_waiter(
    rx: mpsc::Receiver<PublishAckFuture>,
) -> tokio::task::JoinHandle<(u64, Option<Instant>)> {
    tokio::spawn(async move {
        let mut rx = rx;
        let mut failed = 0u64;
        while let Some(ack) = rx.recv().await {
            if let Err(e) = ack.await {
                if failed == 0 {
                    eprintln!("publish ack: {e}");
                }
                failed += 1;
            }
        }
        (failed, Some(Instant::now()))
    })
}

/// Publish every job (at `rate` per second when given), recording each send time.
async fn publish_all(
    js: &jetstream::Context,
    jobs: &[Outgoing],
    window: usize,
    rate: Option<f64>,
    base: Instant,
    sent: &[AtomicU64],
) -> Result<(u64, f64, Option<Instant>), Error> {
    let (tx, rx) = mpsc::channel(window.max(1));
    let waiter = ack_waiter(rx);
    let start = tokio::time::Instant::now();
    let mut max_lag = Duration::ZERO;
    for (i, j) in jobs.iter().enumerate() {
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / r);
            let now = tokio::time::Instant::now();
            if due > now {
                tokio::time::sleep_until(due).await;
            } else {
                max_lag = max_lag.max(now - due);
            }
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", j.msg_id.as_str());
        sent[i].store(ns(base).max(1), Relaxed);
        let ack = js
            .publish_with_headers(j.subject.clone(), h, j.payload.clone())
            .await?;
        tx.send(ack).await.map_err(|_| "the ack waiter stopped")?;
    }
    drop(tx);
    let (failed, acked_at) = waiter.await?;
    Ok((failed, max_lag.as_secs_f64() * 1e3, acked_at))
}

/// This process's CPU time (user + system) from /proc/self/stat, in seconds (USER_HZ 100).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn drive(a: &Args) -> Result<bool, Error> {
    let (jobs, index) = load(a)?;
    let n = jobs.len();
    let nc = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(&a.nats)
        .await?;
    let js = jetstream::new(nc.clone());
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());

    // results: arrival times by job index
    let mut sub = nc.subscribe(format!("{}.results.>", a.prefix)).await?;
    nc.flush().await?;
    let skip = a.prefix.len() + ".results.".len();
    let collector = tokio::spawn(async move {
        let mut got = vec![0u64; n];
        let (mut count, mut ok, mut dup, mut unknown) = (0usize, 0usize, 0usize, 0usize);
        while count < n {
            let Some(m) = sub.next().await else { break };
            let t = ns(base).max(1);
            let key = m.subject.as_str().get(skip..).unwrap_or("");
            match index.get(key) {
                Some(&i) if got[i as usize] == 0 => {
                    got[i as usize] = t;
                    count += 1;
                    if contains(&m.payload, br#""status":"succeeded""#) {
                        ok += 1;
                    }
                }
                Some(_) => dup += 1,
                None => unknown += 1,
            }
        }
        (got, count, ok, dup, unknown)
    });

    let rate = (a.mode == Mode::Open).then_some(a.rate);
    let t_pub = Instant::now();
    let (failed, lag_ms, acked_at) = publish_all(&js, &jobs, a.window, rate, base, &sent).await?;
    let publish_s = t_pub.elapsed().as_secs_f64();
    let acked_s = acked_at.map_or(publish_s, |t| (t - t_pub).as_secs_f64());

    let timeout = Duration::from_secs(a.timeout_s);
    let (got, count, ok, dup, unknown) = match tokio::time::timeout(timeout, collector).await {
        Ok(r) => r?,
        Err(_) => {
            eprintln!(
                "bench_load: timed out after {} s waiting for results",
                a.timeout_s
            );
            return Err("timeout".into());
        }
    };
    let first = sent
        .iter()
        .map(|s| s.load(Relaxed))
        .filter(|&s| s > 0)
        .min()
        .unwrap_or(0);
    let last = got.iter().copied().max().unwrap_or(0);
    let span = (last.saturating_sub(first)) as f64 / 1e9;
    let mut lat: Vec<f64> = got
        .iter()
        .zip(sent.iter())
        .filter(|(g, _)| **g > 0)
        .map(|(g, s)| g.saturating_sub(s.load(Relaxed)) as f64 / 1e6)
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    println!(
        concat!(
            r#"{{"mode":"{}","n":{},"results":{},"succeeded":{},"duplicates":{},"unknown":{},"#,
            r#""publish_failed":{},"publish_s":{:.3},"publish_per_s":{:.0},"publish_acked_s":{:.3},"#,
            r#""schedule_lag_ms":{:.2},"first_publish_to_last_result_s":{:.3},"jobs_per_s":{:.0},"#,
            r#""cpu_s":{:.2},"latency_ms":{{"p50":{:.2},"p90":{:.2},"p99":{:.2},"p999":{:.2},"max":{:.2}}}}}"#
        ),
        if rate.is_some() { "open" } else { "backlog" },
        n,
        count,
        ok,
        dup,
        unknown,
        failed,
        publish_s,
        n as f64 / publish_s,
        acked_s,
        lag_ms,
        span,
        count as f64 / span.max(1e-9),
        cpu_s(),
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    Ok(count == n && failed == 0)
}

/// JetStream alone: publish every job into a fresh work-queue stream, then pull + ack.
async fn jetstream_alone(a: &Args) -> Result<bool, Error> {
    let (jobs, _) = load(a)?;
    let n = jobs.len();
    let nc = async_nats::connect(&a.nats).await?;
    let js = jetstream::new(nc);
    let name = format!("{}_JOBS", a.prefix.to_uppercase());
    let st = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.jobs.>", a.prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let sent: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let t0 = Instant::now();
    let (failed, _, _) = publish_all(&js, &jobs, a.window, None, t0, &sent).await?;
    let publish_s = t0.elapsed().as_secs_f64();
    let c: consumer::PullConsumer = st
        .get_or_create_consumer(
            "bench",
            consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: -1,
                ..Default::default()
            },
        )
        .await?;
    let t1 = Instant::now();
    let mut msgs = c.stream().max_messages_per_batch(500).messages().await?;
    let mut got = 0usize;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
            Ok(Some(Ok(m))) => {
                m.ack().await?;
                got += 1;
            }
            Ok(Some(Err(e))) => eprintln!("pull: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let consume_s = t1.elapsed().as_secs_f64();
    drop(msgs);
    js.delete_stream(&name).await?;
    println!(
        r#"{{"mode":"jetstream","n":{n},"publish_failed":{failed},"publish_s":{publish_s:.3},"publish_per_s":{:.0},"consumed":{got},"consume_s":{consume_s:.3},"consume_per_s":{:.0}}}"#,
        n as f64 / publish_s,
        got as f64 / consume_s
    );
    Ok(got == n && failed == 0)
}

fn main() -> std::process::ExitCode {
    let run = || -> Result<bool, Error> {
        let a = args()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async {
            match a.mode {
                Mode::JetStream => jetstream_alone(&a).await,
                _ => drive(&a).await,
            }
        })
    };
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
