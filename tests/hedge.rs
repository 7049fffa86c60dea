#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hedged calls (issue 14): a high-priority (or hedging route's) call that has not
//! answered by its model's observed latency quantile gets a second call to the next
//! candidate; the first answer wins, the other is cancelled. Real NATS, Postgres and the
//! simulator, whose per-model latency makes the first model slow.

mod common;

use common::{free_port, job, TestEnv};
use rust_decimal::Decimal;
use std::time::Duration;
use switchyard::config::{Config, HedgeConfig, RouteRule, RuleHedge};
use switchyard::job::{JobResult, Priority, Status};
use switchyard::providers::simulator::{FaultProfile, LatencyDist};

/// The first candidate of the jobs below, and the second (the hedge).
const LLAMA: &str = "meta-llama/Llama-3.1-8B-Instruct";
const MINI: &str = "gpt-4o-mini-2024-07-18";
/// A job for llama-3.1-8b, then its tier, among these providers only: llama, gpt-4o-mini.
const PINNED: &str = r#","model":"llama-3.1-8b","providers":{"allow":["local","openai"]}"#;

fn hedge(min_ms: u64) -> HedgeConfig {
    HedgeConfig {
        after: "p95".parse().unwrap(),
        min_ms,
        max_ms: 10_000,
        max_extra: 1,
    }
}

/// The candidates in the router's order (no latency reordering), and `tweak`.
async fn env_with(tweak: impl FnOnce(&mut Config)) -> TestEnv {
    TestEnv::new(|c| {
        c.health.latency_order = false;
        tweak(c);
    })
    .await
}

/// Hedging on for high priority after `min_ms` at least, `/metrics` on `port`, and
/// `tweak`.
async fn hedging_env(min_ms: u64, port: u16, tweak: impl FnOnce(&mut Config)) -> TestEnv {
    env_with(|c| {
        c.routing.hedge_high = true;
        c.routing.hedge = hedge(min_ms);
        c.metrics.addr = format!("127.0.0.1:{port}");
        tweak(c);
    })
    .await
}

/// gpt-4o-mini's hedge calls as counted on `/metrics`: (won, lost).
async fn assert_hedge_counts(port: u16, won: f64, lost: f64) {
    assert_eq!(hedged_metric(port, "gpt-4o-mini", "won", won).await, won);
    assert_eq!(hedged_metric(port, "gpt-4o-mini", "lost", lost).await, lost);
}

/// Give the worker its latency estimate of llama: 20 quick calls (a single candidate,
/// never hedged).
async fn warm_up(env: &TestEnv) {
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let only = r#","model":"local/llama-3.1-8b""#;
    for i in 0..20 {
        let id = format!("warm-{i}");
        env.publish(Priority::Normal, "acme", job(&id, "acme", only))
            .await;
    }
    let want = before + 20;
    assert_eq!(env.wait_succeeded(want, 60).await, want, "warm-up jobs");
}

/// Each model's latency in the simulator.
fn latencies(env: &TestEnv, models: &[(&str, u64)]) {
    let per_model = models
        .iter()
        .map(|&(m, ms)| {
            let p = FaultProfile {
                latency_ms: ms,
                ..FaultProfile::default()
            };
            (m.to_string(), p)
        })
        .collect();
    env.sim.set_profile(FaultProfile {
        per_model,
        ..FaultProfile::default()
    });
}

/// The job's cost rows: (attempt, model, outcome, cost, latency_ms).
async fn cost_rows(env: &TestEnv, id: &str) -> Vec<(i32, String, String, Decimal, i64)> {
    sqlx::query_as(
        "SELECT attempt, model, outcome, cost_usd, latency_ms FROM cost_rows
         WHERE tenant = 'acme' AND job_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

fn outcomes(r: &JobResult) -> Vec<(String, String)> {
    r.attempts
        .iter()
        .map(|a| (a.model.clone(), a.outcome.clone()))
        .collect()
}

fn pair(model: &str, outcome: &str) -> (String, String) {
    (model.to_string(), outcome.to_string())
}

/// `switchyard_hedged_calls_total{model,result}` as scraped, polled until it is `want`.
async fn hedged_metric(port: u16, model: &str, result: &str, want: f64) -> f64 {
    let needle = format!(r#"model="{model}",result="{result}"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v = text
            .lines()
            .find(|l| l.starts_with("switchyard_hedged_calls_total{") && l.contains(&needle))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(-1.0, |v| v.parse().unwrap());
        if v == want || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first model has turned slow (20 s): after its p95 (from the warm-up, raised to
/// `min_ms`) the second model is called too, answers, and wins; the first call is
/// cancelled. Both have cost rows, the result names both attempts and says it hedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_model_is_hedged_and_the_second_answers() {
    let port = free_port();
    let env = hedging_env(200, port, |_| {}).await;
    let (stop, worker) = env.start_worker().await;
    warm_up(&env).await;
    latencies(&env, &[(LLAMA, 20_000)]);

    env.publish(Priority::High, "acme", job("fast", "acme", PINNED))
        .await;
    let r = env.result("acme", "fast", 15).await;
    assert_eq!(r.status, Status::Succeeded, "{:?}", r.error);
    assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        outcomes(&r),
        [
            pair("llama-3.1-8b", "cancelled"),
            pair("gpt-4o-mini", "succeeded")
        ]
    );
    let (first, second) = (&r.attempts[0], &r.attempts[1]);
    assert!(
        first
            .message
            .as_deref()
            .unwrap()
            .contains("gpt-4o-mini answered first"),
        "{first:?}"
    );
    assert!(
        second.message.as_deref().unwrap().starts_with("hedge: "),
        "{second:?}"
    );
    // The hedge started no sooner than min_ms, and the first call ran until it won.
    assert!(first.latency_ms >= 200, "{first:?}");
    assert_eq!(first.cost_usd, Decimal::ZERO);
    let reason = &r.route.as_ref().unwrap().reason;
    assert!(
        reason.contains("hedge after p95")
            && reason.contains("hedged: gpt-4o-mini after ")
            && reason.contains(" ms (p95 of llama-3.1-8b)")
            && reason.contains("gpt-4o-mini answered first"),
        "{reason}"
    );

    let rows = cost_rows(&env, "fast").await;
    let kinds: Vec<(&str, &str)> = rows
        .iter()
        .map(|(_, m, o, _, _)| (m.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("llama-3.1-8b", "cancelled"), ("gpt-4o-mini", "succeeded")]
    );
    assert!(rows[0].4 >= 200, "the cancelled row has its latency");
    let total: Decimal = rows.iter().map(|r| r.3).sum();
    assert!(total > Decimal::ZERO);
    assert_eq!(total, r.cost_usd);
    assert_hedge_counts(port, 1.0, 0.0).await;

    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// The first model answers after the hedge started but before it: the first answer
/// wins and the hedge is cancelled. While both run, the budget holds both calls' worst
/// cases; spend is what the winner cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_answer_wins_and_the_budget_holds_both_calls() {
    let port = free_port();
    let env = hedging_env(150, port, |_| {}).await;
    sqlx::query("INSERT INTO budgets (tenant, period, limit_usd) VALUES ('acme', 'day', 10)")
        .execute(&env.pool)
        .await
        .unwrap();
    let (stop, worker) = env.start_worker().await;
    warm_up(&env).await;
    latencies(&env, &[(LLAMA, 1_500), (MINI, 20_000)]);
    let spent_before: Decimal = sqlx::query_scalar(
        "SELECT spent_usd FROM budgets WHERE tenant = 'acme' AND feature IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();

    let extra = format!(r#"{},"max_tokens":4000"#, PINNED);
    env.publish(Priority::High, "acme", job("race", "acme", &extra))
        .await;
    // Held while the job runs: 4000 output tokens at gpt-4o-mini's 0.60 and llama's
    // 0.05 per million (0.0024 + 0.0002) plus their inputs; one call alone holds at most
    // 0.0024 plus a little input.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let held: Decimal = loop {
        let row: Option<Decimal> = sqlx::query_scalar(
            "SELECT amount_usd FROM budget_reservations WHERE tenant = 'acme' AND job_id = 'race'",
        )
        .fetch_optional(&env.pool)
        .await
        .unwrap();
        if let Some(a) = row {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reservation seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(held >= Decimal::new(26, 4), "held {held}");

    let r = env.result("acme", "race", 15).await;
    assert_eq!(r.status, Status::Succeeded, "{:?}", r.error);
    assert_eq!(r.model.as_deref(), Some("llama-3.1-8b"));
    assert_eq!(
        outcomes(&r),
        [
            pair("llama-3.1-8b", "succeeded"),
            pair("gpt-4o-mini", "cancelled")
        ]
    );
    assert!(r.attempts[1]
        .message
        .as_deref()
        .unwrap()
        .contains("llama-3.1-8b answered first"));
    let rows = cost_rows(&env, "race").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].2, "cancelled");
    assert_eq!(rows[1].3, Decimal::ZERO);
    // Spend is settled to the cost rows; nothing stays held.
    let (spent, reserved): (Decimal, Decimal) = sqlx::query_as(
        "SELECT spent_usd, reserved_usd FROM budgets WHERE tenant = 'acme' AND feature IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(spent - spent_before, r.cost_usd);
    assert_eq!(reserved, Decimal::ZERO);
    assert_hedge_counts(port, 0.0, 1.0).await;

    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A route's `hedge` hedges its normal-priority jobs, never its low-priority ones; a
/// rule's `hedge = false` wins over `hedge_high`; a job that answers before the hedge is
/// due makes one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_hedge_but_never_low_priority() {
    let env = hedging_env(200, free_port(), |c| {
        c.routing.rules = vec![
            RouteRule {
                tenant: Some("acme".into()),
                model: Some("llama-3.1-8b".into()),
                // A fixed delay: min_ms = max_ms.
                hedge: Some(RuleHedge::With(HedgeConfig {
                    max_ms: 150,
                    ..hedge(150)
                })),
                ..RouteRule::default()
            },
            RouteRule {
                tenant: Some("globex".into()),
                model: Some("llama-3.1-8b".into()),
                hedge: Some(RuleHedge::On(false)),
                ..RouteRule::default()
            },
        ];
    })
    .await;
    let (stop, worker) = env.start_worker().await;
    warm_up(&env).await;
    latencies(&env, &[(LLAMA, 1_500)]);
    let auto = r#","providers":{"allow":["local","openai"]}"#;
    env.publish(Priority::Low, "acme", job("low", "acme", auto))
        .await;
    env.publish(Priority::Normal, "acme", job("normal", "acme", auto))
        .await;
    env.publish(Priority::High, "globex", job("off", "globex", auto))
        .await;
    let r = env.result("acme", "normal", 15).await;
    assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"), "{:?}", r.attempts);
    assert_eq!(r.attempts.len(), 2);
    assert!(r.route.unwrap().reason.contains("after 150 ms"));
    for (tenant, id) in [("acme", "low"), ("globex", "off")] {
        let r = env.result(tenant, id, 15).await;
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(
            outcomes(&r),
            [pair("llama-3.1-8b", "succeeded")],
            "{tenant}/{id}"
        );
        assert!(!r.route.unwrap().reason.contains("hedge"));
    }
    // Quick again: answered before the hedge was due, one call.
    latencies(&env, &[]);
    env.publish(Priority::Normal, "acme", job("quick", "acme", auto))
        .await;
    let r = env.result("acme", "quick", 15).await;
    assert_eq!(outcomes(&r), [pair("llama-3.1-8b", "succeeded")]);
    assert_eq!(env.sim.stats().calls("openai", MINI), 1, "only the hedge");

    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Without `hedge_high` (the default) a high-priority job is not hedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_is_off_unless_configured() {
    let env = env_with(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    warm_up(&env).await;
    latencies(&env, &[(LLAMA, 1_000)]);
    env.publish(Priority::High, "acme", job("high", "acme", PINNED))
        .await;
    let r = env.result("acme", "high", 15).await;
    assert_eq!(outcomes(&r), [pair("llama-3.1-8b", "succeeded")]);
    assert_eq!(cost_rows(&env, "high").await.len(), 1);

    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A hedge is a call like any other for the rate limits, and it never waits for them:
/// with gpt-4o-mini's provider at 2 requests a minute, one taken by a job of its own
/// (which also waits until the worker's share of the limit is there), the first hedged
/// job's hedge takes the other, and the second job, finding no room at once, is not
/// hedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_counts_against_the_limits_and_never_waits() {
    let env = hedging_env(150, free_port(), |c| {
        for p in &mut c.providers {
            if p.name == "openai" {
                p.rpm = Some(2);
            }
        }
    })
    .await;
    let (stop, worker) = env.start_worker().await;
    let opener = r#","model":"openai/gpt-4.1-nano""#;
    env.publish(Priority::Normal, "acme", job("opener", "acme", opener))
        .await;
    assert_eq!(
        env.result("acme", "opener", 30).await.status,
        Status::Succeeded
    );
    warm_up(&env).await;
    latencies(&env, &[(LLAMA, 1_500)]);
    env.publish(Priority::High, "acme", job("first", "acme", PINNED))
        .await;
    let r = env.result("acme", "first", 15).await;
    assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"), "{:?}", r.attempts);
    env.publish(Priority::High, "acme", job("second", "acme", PINNED))
        .await;
    let r = env.result("acme", "second", 15).await;
    assert_eq!(outcomes(&r), [pair("llama-3.1-8b", "succeeded")]);

    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Figures for BENCHMARKS.md (`cargo test --test hedge -- --ignored --nocapture`):
/// job latency p50/p95/p99 of high-priority jobs whose first model has a heavy tail
/// (lognormal, median 80 ms, 84th percentile 300 ms), without and with hedging after
/// its p95 to a steady second model (60–80 ms), and the share of extra calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures"]
async fn measure_p99_with_and_without_hedging() {
    const JOBS: usize = 400;
    for hedging in [false, true] {
        let env = env_with(|c| {
            c.routing.hedge_high = hedging;
            c.routing.hedge = hedge(50);
        })
        .await;
        let slow = FaultProfile {
            latency_ms: 80,
            jitter_ms: 220,
            latency_dist: LatencyDist::Lognormal,
            ..FaultProfile::default()
        };
        let steady = FaultProfile {
            latency_ms: 60,
            jitter_ms: 20,
            ..FaultProfile::default()
        };
        env.sim.set_profile(FaultProfile {
            per_model: [(LLAMA.to_string(), slow), (MINI.to_string(), steady)].into(),
            ..FaultProfile::default()
        });
        let (stop, worker) = env.start_worker().await;
        // 16 at a time, so the machine's own load stays out of the figures.
        for batch in 0..JOBS / 16 {
            for i in 0..16 {
                let id = format!("j{}", batch * 16 + i);
                env.publish(Priority::High, "acme", job(&id, "acme", PINNED))
                    .await;
            }
            let want = ((batch + 1) * 16) as i64;
            assert_eq!(env.wait_succeeded(want, 120).await, want);
        }
        let mut lat: Vec<i64> = sqlx::query_scalar(
            "SELECT (result->>'latency_ms')::bigint FROM jobs WHERE status = 'succeeded'",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap();
        lat.sort_unstable();
        let q = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
        let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM cost_rows")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        let won: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND model = 'gpt-4o-mini'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        println!(
            "hedging {}: {} jobs, latency ms p50 {} p95 {} p99 {} max {}; {} calls ({:.1}% extra), {} answered by the hedge",
            if hedging { "on " } else { "off" },
            lat.len(),
            q(0.50),
            q(0.95),
            q(0.99),
            lat[lat.len() - 1],
            calls,
            (calls as f64 / lat.len() as f64 - 1.0) * 100.0,
            won
        );
        stop.cancel();
        worker.await.unwrap().unwrap();
    }
}
