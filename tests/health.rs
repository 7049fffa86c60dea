#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Circuit breakers end to end: a provider that fails every call is held to a handful
//! of calls while every job succeeds on the other model of its tier.

mod common;

use common::{job, TestEnv};
use std::collections::HashMap;
use std::time::Duration;
use switchyard::job::Priority;
use switchyard::providers::simulator::FaultProfile;

/// The `cheap` tier is gpt-4.1-nano (tried first), then gemini-2.0-flash.
const FAILING: &str = "gpt-4.1-nano-2025-04-14";
const HEALTHY: &str = "gemini-2.0-flash";
const JOBS: usize = 60;

fn failing_profile() -> FaultProfile {
    FaultProfile {
        per_model: HashMap::from([(
            FAILING.to_string(),
            FaultProfile {
                error_rate: 1.0,
                error_status: 500,
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_gets_a_handful_of_calls_while_jobs_succeed_elsewhere() {
    // The breaker judges answers, so the calls already under way when it opens go out
    // too: their number is bounded by the jobs in flight, here 4.
    let env = TestEnv::new(|c| c.worker.max_in_flight = 4).await;
    env.sim.set_profile(failing_profile());
    let (stop, worker) = env.start_worker().await;
    for i in 0..JOBS {
        let payload = job(&format!("h{i}"), "acme", r#","model":"cheap""#);
        env.publish(Priority::Normal, "acme", payload).await;
    }
    assert_eq!(env.wait_succeeded(JOBS as i64, 60).await, JOBS as i64);
    stop.cancel();
    worker.await.unwrap().unwrap();

    let on_healthy = count(
        &env,
        "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND model = 'gemini-2.0-flash'",
    )
    .await;
    assert_eq!(on_healthy, JOBS as i64, "every job succeeded on {HEALTHY}");
    assert_eq!(count(&env, "SELECT count(*) FROM jobs").await, JOBS as i64);

    let stats = env.sim.stats();
    let failing = stats.calls("openai", FAILING);
    eprintln!("calls to the failing model: {failing}");
    assert!(
        (5..=10).contains(&failing),
        "{failing} calls to the failing model: {stats:?}"
    );
    assert_eq!(stats.calls("gemini", HEALTHY), JOBS as u64);
    // One cost row per call made; none for the candidates the breaker skipped.
    assert_eq!(
        count(&env, "SELECT count(*) FROM cost_rows").await,
        stats.total as i64
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM cost_rows WHERE model = 'gpt-4.1-nano' AND outcome = 'server_error'"
        )
        .await,
        failing as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_probes_and_closes_when_the_provider_is_back() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 4;
        c.health.open_s = 1;
        c.health.max_open_s = 2;
    })
    .await;
    env.sim.set_profile(failing_profile());
    let (stop, worker) = env.start_worker().await;
    // 30 jobs over ~3 s: 5 failures open the breaker, then one probe per open period
    // (1 s, then 2 s), each failing and reopening it.
    let started = std::time::Instant::now();
    for i in 0..30 {
        let payload = job(&format!("p{i}"), "acme", r#","model":"cheap""#);
        env.publish(Priority::Normal, "acme", payload).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.wait_succeeded(30, 30).await, 30);
    let failing = env.sim.stats().calls("openai", FAILING);
    let probes_at_most = 1 + started.elapsed().as_secs();
    eprintln!(
        "calls to the failing model over {:?}: {failing}",
        started.elapsed()
    );
    assert!(
        (5..=5 + probes_at_most).contains(&failing),
        "{failing} calls to the failing model"
    );
    assert!(failing > 5, "at least one probe went out");

    // The provider is back: after the open period, the next job's probe succeeds and
    // closes the breaker; the tier's first model serves again.
    env.sim.set_profile(FaultProfile::default());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for i in 0..5 {
        let id = format!("back{i}");
        env.publish(
            Priority::Normal,
            "acme",
            job(&id, "acme", r#","model":"cheap""#),
        )
        .await;
        let r = env.result("acme", &id, 20).await;
        assert_eq!(r.model.as_deref(), Some("gpt-4.1-nano"), "{id}");
        assert_eq!(r.attempts.len(), 1, "{id}");
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
}
