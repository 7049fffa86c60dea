//! The ceiling for `scripts/bench.sh`: a bare pull → call → batched commit → publish →
//! ack loop with the building blocks switchyard uses (async-nats pull consumer, reqwest,
//! sqlx), and nothing else: no claims, leases, limits, budgets, breakers or metrics.
//!
//! ```text
//! bench_bare --nats URL --db URL --prefix P --provider http://127.0.0.1:PORT
//!     [--max-in-flight 4000] [--batch 256] [--h2]
//! bench_bare --db URL --insert-only N [--batch 256]      # Postgres alone: rows/s
//! ```
//!
//! Loop mode creates `<P>_JOBS` (work queue, `<p>.jobs.>`) and `<P>_RESULTS` (one message
//! per subject, `<p>.results.>`) like the worker does, a durable pull consumer, and the
//! tables `bare_jobs` / `bare_cost_rows` in the database. Each job (switchyard's job JSON)
//! is parsed, sent as an OpenAI chat completion to the provider, its answer parsed; a
//! committer writes one job row and one cost row per job with `UNNEST`, one transaction
//! per batch of up to `--batch` finished jobs; then each result (switchyard's result
//! shape) is published to `<p>.results.<tenant>.<id>` (JetStream, ack awaited) and the
//! message acked. Up to `--max-in-flight` jobs are between pull and ack. It prints
//! `bare loop started` when ready and stops on SIGTERM / SIGINT.
//!
//! `--insert-only N` commits N synthetic jobs through the same commit path (batches in
//! sequence, 2 rows per job) and prints `{"jobs", "rows", "seconds", "rows_per_s"}`.

use async_nats::jetstream::{self, consumer, stream, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

type Error = Box<dyn std::error::Error + Send + Sync>;

const UPSTREAM: &str = "gpt-4o-mini-2024-07-18";
const MODEL: &str = "gpt-4o-mini";

#[derive(Deserialize)]
struct Job<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    tenant: Cow<'a, str>,
    #[serde(borrow, default)]
    feature: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: &'a RawValue,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(borrow, default)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Call<'a> {
    model: &'a str,
    messages: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Answer {
    choices: Vec<Choice>,
    usage: Usage,
}
#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
    finish_reason: Option<String>,
}
#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<String>,
}
#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Serialize)]
struct Output<'a> {
    content: Option<&'a str>,
    tool_calls: [(); 0],
    finish_reason: &'a str,
}
#[derive(Serialize)]
struct ResultUsage {
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
    reasoning_tokens: u64,
}
#[derive(Serialize)]
struct Attempt<'a> {
    provider: &'a str,
    model: &'a str,
    outcome: &'a str,
    latency_ms: u64,
}
#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: &'a str,
    message: &'a str,
}
/// switchyard's result shape (DESIGN.md), as far as a bare loop fills it.
#[derive(Serialize)]
struct JobResult<'a> {
    id: &'a str,
    tenant: &'a str,
    feature: Option<&'a str>,
    status: &'a str,
    output: Option<Output<'a>>,
    provider: &'a str,
    model: &'a str,
    usage: ResultUsage,
    cost_usd: String,
    attempts: [Attempt<'a>; 1],
    cache_hit: bool,
    queued_ms: u64,
    latency_ms: u64,
    error: Option<ErrorBody<'a>>,
    metadata: Option<&'a RawValue>,
}

/// A finished job on its way to the committer.
struct Done {
    tenant: String,
    id: String,
    feature: Option<String>,
    succeeded: bool,
    input_tokens: i32,
    output_tokens: i32,
    cost: Decimal,
    latency_ms: i32,
    result: Bytes,
    acker: Option<jetstream::message::Acker>,
    _permit: Option<OwnedSemaphorePermit>,
}

struct Args {
    nats: String,
    db: String,
    prefix: String,
    provider: String,
    max_in_flight: usize,
    batch: usize,
    h2: bool,
    insert_only: Option<usize>,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        nats: "nats://127.0.0.1:4222".into(),
        db: std::env::var("DATABASE_URL").unwrap_or_default(),
        prefix: "bare".into(),
        provider: "http://127.0.0.1:8099".into(),
        max_in_flight: 4000,
        batch: 256,
        h2: false,
        insert_only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--nats" => a.nats = v()?,
            "--db" => a.db = v()?,
            "--prefix" => a.prefix = v()?,
            "--provider" => a.provider = v()?.trim_end_matches('/').to_string(),
            "--max-in-flight" => a.max_in_flight = v()?.parse()?,
            "--batch" => a.batch = v()?.parse()?,
            "--h2" => a.h2 = true,
            "--insert-only" => a.insert_only = Some(v()?.parse()?),
            _ => return Err(format!("unknown argument {k} (see examples/bench_bare.rs)").into()),
        }
    }
    Ok(a)
}

const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS bare_jobs (
        tenant text NOT NULL, id text NOT NULL, feature text, status text NOT NULL,
        provider text, model text, input_tokens integer, output_tokens integer,
        cost_usd numeric, result jsonb, created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant, id))",
    "CREATE TABLE IF NOT EXISTS bare_cost_rows (
        tenant text NOT NULL, job_id text NOT NULL, attempt integer NOT NULL, feature text,
        provider text NOT NULL, model text NOT NULL, outcome text NOT NULL,
        input_tokens integer, output_tokens integer, cost_usd numeric, latency_ms integer,
        created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant, job_id, attempt))",
];

const INSERT_JOBS: &str = "INSERT INTO bare_jobs
    (tenant, id, feature, status, provider, model, input_tokens, output_tokens, cost_usd, result)
    SELECT x.tenant, x.id, x.feature, x.status, 'openai', $8, x.i, x.o, x.c, x.r::jsonb
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                  $7::numeric[], $9::text[]) AS x(tenant, id, feature, status, i, o, c, r)
    ON CONFLICT (tenant, id) DO NOTHING";
const INSERT_COSTS: &str = "INSERT INTO bare_cost_rows
    (tenant, job_id, attempt, feature, provider, model, outcome, input_tokens, output_tokens,
     cost_usd, latency_ms)
    SELECT x.tenant, x.id, 1, x.feature, 'openai', $8, x.outcome, x.i, x.o, x.c, x.l
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                  $7::numeric[], $9::int[]) AS x(tenant, id, feature, outcome, i, o, c, l)
    ON CONFLICT (tenant, job_id, attempt) DO NOTHING";

/// One transaction: a job row and a cost row per finished job.
async fn commit(pool: &PgPool, batch: &[Done]) -> Result<(), sqlx::Error> {
    let tenants: Vec<&str> = batch.iter().map(|d| d.tenant.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|d| d.id.as_str()).collect();
    let features: Vec<Option<&str>> = batch.iter().map(|d| d.feature.as_deref()).collect();
    let status: Vec<&str> = batch
        .iter()
        .map(|d| if d.succeeded { "succeeded" } else { "failed" })
        .collect();
    let ins: Vec<i32> = batch.iter().map(|d| d.input_tokens).collect();
    let outs: Vec<i32> = batch.iter().map(|d| d.output_tokens).collect();
    let costs: Vec<Decimal> = batch.iter().map(|d| d.cost).collect();
    let results: Vec<&str> = batch
        .iter()
        .map(|d| std::str::from_utf8(&d.result).unwrap_or("null"))
        .collect();
    let lat: Vec<i32> = batch.iter().map(|d| d.latency_ms).collect();
    // the same first 8 parameters for both statements
    let query = |sql: &'static str| {
        sqlx::query(sql)
            .bind(&tenants)
            .bind(&ids)
            .bind(&features)
            .bind(&status)
            .bind(&ins)
            .bind(&outs)
            .bind(&costs)
            .bind(MODEL)
    };
    let mut tx = pool.begin().await?;
    query(INSERT_JOBS).bind(&results).execute(&mut *tx).await?;
    query(INSERT_COSTS).bind(&lat).execute(&mut *tx).await?;
    tx.commit().await
}

fn cost(input: u64, output: u64) -> Decimal {
    // gpt-4o-mini: 0.15 / 0.60 USD per million tokens
    (Decimal::from(input) * Decimal::new(15, 2) + Decimal::from(output) * Decimal::new(60, 2))
        / Decimal::from(1_000_000u32)
}

/// Call the provider for one job and build its result.
async fn run_job(http: &reqwest::Client, url: &str, payload: &[u8]) -> Result<Done, Error> {
    let job: Job = serde_json::from_slice(payload)?;
    let call = Call {
        model: UPSTREAM,
        messages: job.messages,
        max_completion_tokens: job.max_tokens,
        temperature: job.temperature,
        response_format: job.response_format,
    };
    let t0 = Instant::now();
    let answer = async {
        let resp = http
            .post(url)
            .bearer_auth("sk-bench")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&call)?)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            return Err(format!("provider answered {status}").into());
        }
        Ok::<Answer, Error>(serde_json::from_slice(&body)?)
    }
    .await;
    let latency_ms = t0.elapsed().as_millis() as u64;
    let feature = job.feature.as_deref();
    let (succeeded, input, output, c, result) = match &answer {
        Ok(a) => {
            let choice = a.choices.first();
            let c = cost(a.usage.prompt_tokens, a.usage.completion_tokens);
            let r = JobResult {
                id: &job.id,
                tenant: &job.tenant,
                feature,
                status: "succeeded",
                output: Some(Output {
                    content: choice.and_then(|c| c.message.content.as_deref()),
                    tool_calls: [],
                    finish_reason: choice
                        .and_then(|c| c.finish_reason.as_deref())
                        .unwrap_or("stop"),
                }),
                provider: "openai",
                model: MODEL,
                usage: ResultUsage {
                    input_tokens: a.usage.prompt_tokens,
                    cached_input_tokens: 0,
                    output_tokens: a.usage.completion_tokens,
                    reasoning_tokens: 0,
                },
                cost_usd: c.to_string(),
                attempts: [Attempt {
                    provider: "openai",
                    model: MODEL,
                    outcome: "succeeded",
                    latency_ms,
                }],
                cache_hit: false,
                queued_ms: 0,
                latency_ms,
                error: None,
                metadata: job.metadata,
            };
            (
                true,
                a.usage.prompt_tokens,
                a.usage.completion_tokens,
                c,
                serde_json::to_vec(&r)?,
            )
        }
        Err(e) => {
            let message = e.to_string();
            let r = JobResult {
                id: &job.id,
                tenant: &job.tenant,
                feature,
                status: "failed",
                output: None,
                provider: "openai",
                model: MODEL,
                usage: ResultUsage {
                    input_tokens: 0,
                    cached_input_tokens: 0,
                    output_tokens: 0,
                    reasoning_tokens: 0,
                },
                cost_usd: "0".into(),
                attempts: [Attempt {
                    provider: "openai",
                    model: MODEL,
                    outcome: "server_error",
                    latency_ms,
                }],
                cache_hit: false,
                queued_ms: 0,
                latency_ms,
                error: Some(ErrorBody {
                    kind: "providers_exhausted",
                    message: &message,
                }),
                metadata: job.metadata,
            };
            (false, 0, 0, Decimal::ZERO, serde_json::to_vec(&r)?)
        }
    };
    Ok(Done {
        tenant: job.tenant.into_owned(),
        id: job.id.into_owned(),
        feature: job.feature.map(Cow::into_owned),
        succeeded,
        input_tokens: i32::try_from(input).unwrap_or(i32::MAX),
        output_tokens: i32::try_from(output).unwrap_or(i32::MAX),
        cost: c,
        latency_ms: i32::try_from(latency_ms).unwrap_or(i32::MAX),
        result: Bytes::from(result),
        acker: None,
        _permit: None,
    })
}

/// Commit batches as they come; publish and ack each batch behind the next commit.
async fn committer(
    pool: PgPool,
    js: jetstream::Context,
    prefix: String,
    batch: usize,
    mut rx: mpsc::UnboundedReceiver<Done>,
) {
    let mut buf = Vec::with_capacity(batch);
    while rx.recv_many(&mut buf, batch).await > 0 {
        let items = std::mem::replace(&mut buf, Vec::with_capacity(batch));
        let mut delay = Duration::from_millis(50);
        while let Err(e) = commit(&pool, &items).await {
            eprintln!("commit of {} jobs failed, retrying: {e}", items.len());
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        let (js, prefix) = (js.clone(), prefix.clone());
        tokio::spawn(async move { publish_and_ack(&js, &prefix, items).await });
    }
}

async fn publish_and_ack(js: &jetstream::Context, prefix: &str, items: Vec<Done>) {
    let mut acks = Vec::with_capacity(items.len());
    for d in &items {
        let subject = format!("{prefix}.results.{}.{}", d.tenant, d.id);
        match js.publish(subject, d.result.clone()).await {
            Ok(ack) => acks.push(Some(ack)),
            Err(e) => {
                eprintln!("result publish: {e}");
                acks.push(None);
            }
        }
    }
    for (d, ack) in items.into_iter().zip(acks) {
        let stored = match ack {
            Some(a) => a
                .await
                .map_err(|e| eprintln!("result publish ack: {e}"))
                .is_ok(),
            None => false,
        };
        if let Some(acker) = &d.acker {
            let r = if stored {
                acker.ack().await
            } else {
                acker.ack_with(AckKind::Nak(None)).await
            };
            if let Err(e) = r {
                eprintln!("ack: {e}");
            }
        }
    }
}

async fn connect_db(url: &str) -> Result<PgPool, Error> {
    let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
    for ddl in DDL {
        sqlx::query(ddl).execute(&pool).await?;
    }
    Ok(pool)
}

async fn insert_only(a: &Args, n: usize) -> Result<(), Error> {
    let pool = connect_db(&a.db).await?;
    let result = Bytes::from_static(
        br#"{"status":"succeeded","output":{"content":"{\"label\":\"billing\"}"}}"#,
    );
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let k = a.batch.min(n - i);
        let batch: Vec<Done> = (i..i + k)
            .map(|j| Done {
                tenant: if j % 2 == 0 {
                    "acme".into()
                } else {
                    "globex".into()
                },
                id: format!("insert-{j:07}"),
                feature: Some("ticket-triage".into()),
                succeeded: true,
                input_tokens: 64,
                output_tokens: 8,
                cost: cost(64, 8),
                latency_ms: 1,
                result: result.clone(),
                acker: None,
                _permit: None,
            })
            .collect();
        commit(&pool, &batch).await?;
        i += k;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        r#"{{"jobs":{n},"rows":{},"seconds":{s:.3},"rows_per_s":{:.0}}}"#,
        2 * n,
        (2 * n) as f64 / s
    );
    Ok(())
}

async fn run(a: Args) -> Result<(), Error> {
    if let Some(n) = a.insert_only {
        return insert_only(&a, n).await;
    }
    let pool = connect_db(&a.db).await?;
    let nc = async_nats::ConnectOptions::new().connect(&a.nats).await?;
    let js = jetstream::new(nc);
    let upper = a.prefix.to_uppercase();
    let jobs = js
        .get_or_create_stream(stream::Config {
            name: format!("{upper}_JOBS"),
            subjects: vec![format!("{}.jobs.>", a.prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    js.get_or_create_stream(stream::Config {
        name: format!("{upper}_RESULTS"),
        subjects: vec![format!("{}.results.>", a.prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        ..Default::default()
    })
    .await?;
    let consumer: consumer::PullConsumer = jobs
        .get_or_create_consumer(
            "bare",
            consumer::pull::Config {
                durable_name: Some("bare".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: -1,
                ..Default::default()
            },
        )
        .await?;
    let mut http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(120));
    if a.h2 {
        http = http.http2_prior_knowledge();
    }
    let http = http.build()?;
    let url: Arc<str> = format!("{}/v1/chat/completions", a.provider).into();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(committer(
        pool,
        js.clone(),
        a.prefix.clone(),
        a.batch.max(1),
        rx,
    ));
    let permits = Arc::new(Semaphore::new(a.max_in_flight.max(1)));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(a.max_in_flight.clamp(1, 500))
        .messages()
        .await?;
    println!(
        "bare loop started (prefix {}, max in flight {}, batch {}, http2 {})",
        a.prefix, a.max_in_flight, a.batch, a.h2
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let msg = tokio::select! {
            m = messages.next() => m,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                eprintln!("pull: {e}");
                continue;
            }
            None => break,
        };
        let (http, url, tx) = (http.clone(), url.clone(), tx.clone());
        tokio::spawn(async move {
            let (msg, acker) = msg.split();
            match run_job(&http, &url, &msg.payload).await {
                Ok(mut d) => {
                    d.acker = Some(acker);
                    d._permit = Some(permit);
                    let _ = tx.send(d);
                }
                Err(e) => {
                    // not a job this loop can read: drop it (the bench sends none)
                    eprintln!("job on {}: {e}", msg.subject);
                    let _ = acker.ack_with(AckKind::Term).await;
                }
            }
        });
    }
    // let the jobs in flight finish (bounded)
    let deadline = Instant::now() + Duration::from_secs(10);
    while permits.available_permits() < a.max_in_flight.max(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("bare loop stopped");
    Ok(())
}

fn main() -> Result<(), Error> {
    let a = args()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(a))
}
