//! classify + route per job: `cargo bench --bench route` (or `scripts/bench.sh --only route`).
//!
//! Plans every job of the labeled routing set (`tests/fixtures/routing/labeled.jsonl`:
//! tickets, chunks, translations, long documents, code, tool use, chats) against
//! `config/demo.toml`, after a warm-up, and prints nanoseconds per plan: the classifier,
//! rules, tier choice, filters and the route's strings, as the worker calls it (the input
//! estimate is computed beforehand, as the worker does).

use std::hint::black_box;
use std::time::Instant;
use switchyard::config::FileConfig;
use switchyard::job::{parse_job, Job, Priority};
use switchyard::router::{RouteContext, Router};
use switchyard::tokens::estimate_input_tokens;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_ROUTE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // `cargo test --all-targets` runs this too (without `--bench`): a smoke run there.
    let n = if std::env::args().any(|a| a == "--bench") {
        n
    } else {
        n.min(1000)
    };
    let cfg =
        FileConfig::from_toml_with_env(include_str!("../config/demo.toml"), "demo.toml", &[])?;
    let router = Router::new(&cfg);
    let rules = cfg.parse_rules();
    let mut jobs: Vec<(Job, u64)> = Vec::new();
    for line in include_str!("../tests/fixtures/routing/labeled.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let tenant = v["job"]["tenant"].as_str().unwrap_or("acme");
        let payload = serde_json::to_vec(&v["job"])?;
        let parsed = parse_job(&payload, &format!("llm.jobs.normal.{tenant}"), 1, &rules)
            .map_err(|e| anyhow::anyhow!("{:?}", e.error))?;
        let tokens = estimate_input_tokens(&parsed.job);
        jobs.push((parsed.job, tokens));
    }
    let ctx = RouteContext::new(Priority::Normal);
    let run = |count: usize| -> anyhow::Result<std::time::Duration> {
        let start = Instant::now();
        for i in 0..count {
            let (job, tokens) = &jobs[i % jobs.len()];
            let plan = router
                .plan(black_box(job), *tokens, ctx)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            black_box(plan);
        }
        Ok(start.elapsed())
    };
    run(n / 10)?; // warm-up
    let took = run(n)?;
    let ns = took.as_nanos() as f64 / n as f64;
    println!(
        "classify + route: {n} plans over {} labeled jobs in {:.3}s: {ns:.0} ns/job ({:.2} µs)",
        jobs.len(),
        took.as_secs_f64(),
        ns / 1000.0
    );
    Ok(())
}
