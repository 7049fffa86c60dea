#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The cost levers' figures (issue 14, BENCHMARKS.md "Cost levers (issue 14)"): one
//! deterministic ingestion workload run through a real worker (real NATS, Postgres, the
//! simulator) with the levers off, each lever alone, and all on. `scripts/levers.sh`
//! runs it: `cargo test --test levers -- --ignored --nocapture` (`LEVERS_N` jobs,
//! default 2000, at `LEVERS_RATE` jobs/s, default 200).
//!
//! Workload (seed 14): 30% exact repeats of an earlier prompt, 15% paraphrased questions
//! (the paraphrase pairs of `tests/fixtures/semantic_pairs.jsonl`: the first time a
//! pair's `a`, later its `b` or `a`), the rest fresh chunks; independently 40% low
//! priority (bulk), 10% high, 50% normal; temperature 0; every job for gpt-4o-mini with
//! llama-3.1-8b as the other candidate. The simulator makes gpt-4o-mini slow on a
//! fraction of calls (lognormal latency, median 80 ms, 84th percentile 480 ms: p95
//! ~1.5 s, p99 ~5 s); llama answers in 30-60 ms.
//!
//! Read from the cost rows (every provider call, cross-checked against the simulator's
//! request counts): completion calls made (live, batch lines, hedges), embedding calls,
//! spend; from `jobs`: cache hits (calls avoided) and what the caches saved
//! (`cache_saved_usd`); from the client: publish → result p50/p99 for every job and for
//! high priority alone (from its publish to the result on a core subscription). The run
//! fails unless succeeded completion calls + cache hits = jobs (a hedge race's cancelled
//! call and a failed call, e.g. past the provider's timeout, are the extra calls) and no
//! `started` row is left. The semantic runs take their embeddings from the simulator's `/v1/embeddings`
//! (one call per exact-cache miss), except the last, which uses the built-in embedder: a
//! job with an embedding call is not parked for a provider batch (DESIGN.md), so with an
//! endpoint the batch lever does nothing for cacheable jobs.

mod common;

use common::batch::batch_config;
use common::TestEnv;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchyard::config::{Config, EmbeddingsKind, HedgeConfig};
use switchyard::job::Priority;
use switchyard::providers::simulator::{FaultProfile, LatencyDist};

const MINI: &str = "gpt-4o-mini-2024-07-18";
const LLAMA: &str = "meta-llama/Llama-3.1-8B-Instruct";
const EMBEDDER: &str = "text-embedding-3-small";

struct Job {
    id: String,
    priority: Priority,
    prompt: String,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The workload, the same for every run.
fn workload(n: usize) -> Vec<Job> {
    let pairs: Vec<(String, String)> = include_str!("fixtures/semantic_pairs.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["paraphrase"] == true)
        .map(|v| {
            (
                v["a"].as_str().unwrap().into(),
                v["b"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut sent: Vec<String> = Vec::new();
    let mut pair_seen = vec![false; pairs.len()];
    let words = [
        "invoice",
        "quarterly",
        "revenue",
        "contract",
        "shipment",
        "policy",
        "customer",
        "warranty",
        "forecast",
        "incident",
        "refund",
        "ledger",
        "supplier",
        "audit",
    ];
    (0..n)
        .map(|i| {
            let r: f64 = rng.random();
            let prompt = if r < 0.30 && !sent.is_empty() {
                sent[rng.random_range(0..sent.len())].clone()
            } else if r < 0.45 {
                let k = rng.random_range(0..pairs.len());
                let p = if pair_seen[k] && rng.random_bool(0.7) {
                    pairs[k].1.clone()
                } else {
                    pairs[k].0.clone()
                };
                pair_seen[k] = true;
                p
            } else {
                let body: Vec<&str> = (0..24)
                    .map(|_| words[rng.random_range(0..words.len())])
                    .collect();
                format!("Extract the key facts of chunk {i}: {}", body.join(" "))
            };
            sent.push(prompt.clone());
            let p: f64 = rng.random();
            let priority = if p < 0.40 {
                Priority::Low
            } else if p < 0.50 {
                Priority::High
            } else {
                Priority::Normal
            };
            Job {
                id: format!("j-{i}"),
                priority,
                prompt,
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Levers {
    name: &'static str,
    exact: bool,
    semantic: bool,
    batch: bool,
    hedge: bool,
    /// Semantic cache embeddings from an endpoint (a call per cacheable miss); else the
    /// built-in embedder (no call).
    endpoint: bool,
}

fn configure(c: &mut Config, l: Levers) {
    batch_config(c);
    c.batch.enabled = l.batch;
    c.batch.max_jobs = 1000;
    c.cache.enabled = l.exact || l.semantic;
    c.cache.semantic = l.semantic;
    c.routing.hedge_high = l.hedge;
    c.routing.hedge = HedgeConfig {
        after: "p95".parse().unwrap(),
        min_ms: 200,
        max_ms: 10_000,
        max_extra: 1,
    };
    c.health.latency_order = false;
    c.worker.max_in_flight = 512;
}

/// gpt-4o-mini slow on a fraction of calls; llama quick.
fn slow_provider() -> FaultProfile {
    let mini = FaultProfile {
        latency_ms: 80,
        jitter_ms: 400,
        latency_dist: LatencyDist::Lognormal,
        ..FaultProfile::default()
    };
    let llama = FaultProfile {
        latency_ms: 30,
        jitter_ms: 30,
        ..FaultProfile::default()
    };
    FaultProfile {
        per_model: [(MINI.to_string(), mini), (LLAMA.to_string(), llama)].into(),
        batch_complete_ms: 2000,
        ..FaultProfile::default()
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// What one run measured.
struct Outcome {
    /// Completion calls the provider answered (live + batch lines), from the cost rows.
    chat_calls: i64,
    live: i64,
    batch_lines: i64,
    /// Hedges fired: the calls a hedge race cancelled (one a race).
    hedges: i64,
    /// Completion calls that failed (a call past the provider's timeout: the slow
    /// model's tail reaches it about once in 2,000 calls), by outcome.
    failed: std::collections::BTreeMap<String, i64>,
    /// Embedding calls (semantic cache, the simulator's `/v1/embeddings`).
    embed_calls: i64,
    hits: i64,
    spent: Decimal,
    embed_spent: Decimal,
    cache_saved: Decimal,
    all: Vec<f64>,
    high: Vec<f64>,
}

async fn run(l: Levers, jobs: &[Job], rate: usize) -> Outcome {
    let mut env = TestEnv::new(|c| configure(c, l)).await;
    if l.semantic && l.endpoint {
        // The embeddings come from an endpoint (the simulator's, as OpenAI's): each
        // cacheable miss pays an embedding call, in the cost rows.
        let e = &mut env.config.cache.embeddings;
        e.kind = EmbeddingsKind::Openai;
        e.name = "openai".into();
        e.base_url = Some(format!("http://{}/v1", env.sim_addr));
        e.api_key_env = Some("SY_TEST_OPENAI_KEY".into());
        e.model = EMBEDDER.into();
        e.dimensions = Some(256);
    }
    env.sim.set_profile(slow_provider());
    let mut sub = env.subscribe(&format!("{}.results.>", env.prefix)).await;
    let (stop, handle) = env.start_worker().await;
    let n = jobs.len();
    let reader = tokio::spawn(async move {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        while seen.len() < n {
            match tokio::time::timeout(Duration::from_secs(120), sub.next()).await {
                Ok(Some(m)) => {
                    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                    seen.entry(v["id"].as_str().unwrap().to_string())
                        .or_insert_with(Instant::now);
                }
                _ => break,
            }
        }
        seen
    });
    let started = Instant::now();
    let mut sent_at = HashMap::with_capacity(n);
    for (i, j) in jobs.iter().enumerate() {
        let at = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let payload = serde_json::json!({
            "id": j.id, "tenant": "acme", "feature": "ingest",
            "model": "gpt-4o-mini", "providers": {"allow": ["openai", "local"]},
            "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "user", "content": j.prompt}],
        });
        sent_at.insert(j.id.clone(), Instant::now());
        env.publish(j.priority, "acme", serde_json::to_vec(&payload).unwrap())
            .await;
    }
    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), n, "{}: every job has a result", l.name);
    stop.cancel();
    handle.await.unwrap().unwrap();
    let mut all = Vec::with_capacity(n);
    let mut high = Vec::new();
    for j in jobs {
        let ms = (seen[&j.id] - sent_at[&j.id]).as_secs_f64() * 1000.0;
        all.push(ms);
        if j.priority == Priority::High {
            high.push(ms);
        }
    }
    // The cost rows: every provider call made, by kind.
    let rows: Vec<(String, String, Option<String>, Decimal)> =
        sqlx::query_as("SELECT model, outcome, message, cost_usd FROM cost_rows")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut o = Outcome {
        chat_calls: 0,
        live: 0,
        batch_lines: 0,
        hedges: 0,
        failed: Default::default(),
        embed_calls: 0,
        hits: 0,
        spent: Decimal::ZERO,
        embed_spent: Decimal::ZERO,
        cache_saved: Decimal::ZERO,
        all,
        high,
    };
    for (model, outcome, message, cost) in &rows {
        assert_ne!(outcome, "started", "{}: a call left unfinished", l.name);
        o.spent += cost;
        let message = message.as_deref().unwrap_or("");
        if model == EMBEDDER {
            o.embed_calls += 1;
            o.embed_spent += cost;
        } else if message.starts_with("batch ") {
            o.batch_lines += 1;
        } else {
            o.live += 1;
        }
        match (model == EMBEDDER, outcome.as_str()) {
            (true, _) | (false, "succeeded") => {}
            // A hedge race ends with one call cancelled (the primary's or the hedge's).
            (false, "cancelled") => o.hedges += 1,
            (false, other) => *o.failed.entry(other.to_string()).or_default() += 1,
        }
    }
    o.chat_calls = o.live + o.batch_lines;
    (o.hits, o.cache_saved) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE cache_hit), coalesce(sum(cache_saved_usd), 0) FROM jobs",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    // The provider saw what the rows say: no call unrecorded, none recorded twice (a
    // call a hedge race cancelled may not have reached it).
    let stats = env.sim.stats();
    let sim_live = (stats.calls("openai", MINI) + stats.calls("openai", LLAMA)) as i64;
    assert!(
        (o.live - o.hedges..=o.live).contains(&sim_live),
        "{}: the simulator saw {sim_live} live calls, the cost rows say {} ({} cancelled)",
        l.name,
        o.live,
        o.hedges
    );
    assert_eq!(
        stats.calls("openai-batch", MINI) as i64,
        o.batch_lines,
        "{}: batch lines",
        l.name
    );
    assert_eq!(
        stats.calls("openai", EMBEDDER) as i64,
        o.embed_calls,
        "{}: embedding calls",
        l.name
    );
    // Each job is answered once: by one succeeded completion or from a cache.
    let failed: i64 = o.failed.values().sum();
    if o.chat_calls - o.hedges - failed + o.hits != n as i64 {
        let extra: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT job_id, array_agg(attempt || ' ' || outcome || ' ' || model || ' '
                     || latency_ms || ' ' || coalesce(message, '') ORDER BY attempt)
             FROM cost_rows WHERE model <> $1 GROUP BY job_id HAVING count(*) > 1",
        )
        .bind(EMBEDDER)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        eprintln!(
            "{}: jobs with more than one completion call: {extra:#?}",
            l.name
        );
    }
    assert_eq!(
        o.chat_calls - o.hedges - failed + o.hits,
        n as i64,
        "{}: answering calls + calls avoided",
        l.name
    );
    o
}

fn row(name: &str, o: &mut Outcome, off_spent: Decimal) -> String {
    let saved = off_spent - o.spent;
    let mut extra: Vec<String> = o.failed.iter().map(|(k, v)| format!("{v} {k}")).collect();
    if o.hedges > 0 {
        extra.insert(0, format!("{} hedges", o.hedges));
    }
    let hedges = if extra.is_empty() {
        String::new()
    } else {
        format!(" (incl. {})", extra.join(", "))
    };
    format!(
        "| {name} | {}{hedges} | {} | {} | {} | {} | ${} | ${} | ${} ({:.1}%) | {:.0} / {:.0} | {:.0} / {:.0} |",
        o.chat_calls,
        o.live,
        o.batch_lines,
        o.hits,
        o.embed_calls,
        o.spent.round_dp(6),
        o.cache_saved.round_dp(6),
        saved.round_dp(6),
        if off_spent.is_zero() {
            0.0
        } else {
            (saved / off_spent * Decimal::ONE_HUNDRED)
                .round_dp(1)
                .to_string()
                .parse::<f64>()
                .unwrap()
        },
        pct(&mut o.all, 0.50),
        pct(&mut o.all, 0.99),
        pct(&mut o.high, 0.50),
        pct(&mut o.high, 0.99),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn levers_figures() {
    let n = env_usize("LEVERS_N", 2000);
    let rate = env_usize("LEVERS_RATE", 200);
    let jobs = workload(n);
    let off = Levers {
        name: "all off",
        exact: false,
        semantic: false,
        batch: false,
        hedge: false,
        endpoint: true,
    };
    let runs = [
        off,
        Levers {
            name: "exact cache",
            exact: true,
            ..off
        },
        Levers {
            name: "exact + semantic cache (embedding endpoint)",
            exact: true,
            semantic: true,
            ..off
        },
        Levers {
            name: "provider batches (low priority)",
            batch: true,
            ..off
        },
        Levers {
            name: "hedging (high priority)",
            hedge: true,
            ..off
        },
        Levers {
            name: "all on (embedding endpoint)",
            exact: true,
            semantic: true,
            batch: true,
            hedge: true,
            ..off
        },
        Levers {
            name: "all on (built-in embedder)",
            exact: true,
            semantic: true,
            batch: true,
            hedge: true,
            endpoint: false,
        },
    ];
    let low = jobs.iter().filter(|j| j.priority == Priority::Low).count();
    let high = jobs.iter().filter(|j| j.priority == Priority::High).count();
    let distinct: std::collections::HashSet<&str> =
        jobs.iter().map(|j| j.prompt.as_str()).collect();
    println!(
        "workload: {n} jobs at {rate}/s, {} distinct prompts, {low} low, {high} high",
        distinct.len()
    );
    println!("| levers | completion calls | live | batch lines | cache hits (calls avoided) | embedding calls | spent | cache saved | saved vs all off | p50 / p99 ms (all) | p50 / p99 ms (high) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut off_spent = None;
    let only = std::env::var("LEVERS_ONLY").unwrap_or_default();
    for l in runs.into_iter().filter(|l| l.name.contains(only.as_str())) {
        let mut o = run(l, &jobs, rate).await;
        let base = *off_spent.get_or_insert(o.spent);
        println!("{}", row(l.name, &mut o, base));
        eprintln!(
            "check {}: spent {} + cache saved {} - embeddings {} = {} (all off spent {base})",
            l.name,
            o.spent,
            o.cache_saved,
            o.embed_spent,
            o.spent + o.cache_saved - o.embed_spent
        );
    }
}
