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
//! Read from Postgres and the client: provider calls made (the simulator's counts: live
//! calls plus batch lines), calls avoided (cache hits), spend (sum of cost rows), what
//! the caches saved (`jobs.cache_saved_usd`), and publish → result p50/p99 for every job
//! and for high priority alone (measured by the test from its publish to the result on
//! a core subscription).

mod common;

use common::batch::batch_config;
use common::TestEnv;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchyard::config::{Config, HedgeConfig};
use switchyard::job::Priority;
use switchyard::providers::simulator::{FaultProfile, LatencyDist};

const MINI: &str = "gpt-4o-mini-2024-07-18";
const LLAMA: &str = "meta-llama/Llama-3.1-8B-Instruct";

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

async fn run(l: Levers, jobs: &[Job], rate: usize) -> String {
    let env = TestEnv::new(|c| configure(c, l)).await;
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
    let mut all = Vec::with_capacity(n);
    let mut high = Vec::new();
    for j in jobs {
        let ms = (seen[&j.id] - sent_at[&j.id]).as_secs_f64() * 1000.0;
        all.push(ms);
        if j.priority == Priority::High {
            high.push(ms);
        }
    }
    let (spent, saved): (Decimal, Decimal) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(cost_usd), 0) FROM cost_rows),
                (SELECT coalesce(sum(cache_saved_usd), 0) FROM jobs)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let hits: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE cache_hit")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let stats = env.sim.stats();
    let live = stats.calls("openai", MINI) + stats.calls("openai", LLAMA);
    let batched = stats.calls("openai-batch", MINI);
    stop.cancel();
    handle.await.unwrap().unwrap();
    format!(
        "| {} | {} | {} | {} | {hits} | ${} | ${} | {:.0} / {:.0} | {:.0} / {:.0} |",
        l.name,
        live + batched,
        live,
        batched,
        spent.round_dp(6),
        saved.round_dp(6),
        pct(&mut all.clone(), 0.50),
        pct(&mut all, 0.99),
        pct(&mut high.clone(), 0.50),
        pct(&mut high, 0.99),
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
    };
    let runs = [
        off,
        Levers {
            name: "exact cache",
            exact: true,
            ..off
        },
        Levers {
            name: "exact + semantic cache",
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
            name: "all on",
            exact: true,
            semantic: true,
            batch: true,
            hedge: true,
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
    println!("| levers | provider calls | live | batch lines | cache hits (calls avoided) | spent | cache saved | p50 / p99 ms (all) | p50 / p99 ms (high) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for l in runs {
        println!("{}", run(l, &jobs, rate).await);
    }
}
