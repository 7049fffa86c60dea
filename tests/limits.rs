#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Rate limits end to end: the simulator enforces exactly the configured `rpm` (real 429s
//! past it), a backlog of twice the limit waits in JetStream, and one worker or three
//! share the limit: no 429, and at least 90% of the limit used in the first minute.

mod common;

use common::{job, TestEnv};
use std::time::Duration;
use switchyard::job::Priority;
use switchyard::providers::simulator::FaultProfile;

/// Requests per minute: the simulator's and switchyard's.
const R: u64 = 60;
/// Jobs a worker holds that are not calling (waiting at the limit).
const MAX_WAITING: usize = 10;
const API: &str = "openai";
const UPSTREAM: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn a_backlog_of_twice_the_limit(workers: usize) {
    let env = TestEnv::new(|c| {
        for p in &mut c.providers {
            if p.name == "local" {
                p.rpm = Some(R as u32);
            }
        }
        c.worker.max_waiting_at_limits = Some(MAX_WAITING);
    })
    .await;
    env.sim.set_profile(FaultProfile {
        per_model: [(
            UPSTREAM.to_string(),
            FaultProfile {
                rpm: Some(R),
                latency_ms: 100,
                jitter_ms: 100,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    });
    env.ensure_streams().await;
    let jobs = 2 * R;
    for i in 0..jobs {
        let priority = if i % 4 == 0 {
            Priority::High
        } else {
            Priority::Normal
        };
        let payload = job(&format!("j{i}"), "acme", r#","model":"local/llama-3.1-8b""#);
        env.publish(priority, "acme", payload).await;
    }
    let mut running = Vec::new();
    for _ in 0..workers {
        running.push(env.start_worker().await);
    }

    // The first minute from the first call.
    let first = tokio::time::Instant::now();
    while env.sim.stats().calls(API, UPSTREAM) == 0 {
        assert!(first.elapsed() < Duration::from_secs(20), "no call made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Half-way: what the limit cannot serve yet is still in JetStream.
    let calls = env.sim.stats().calls(API, UPSTREAM);
    let left = env.jobs_left().await;
    let held_at_most = (MAX_WAITING + 3) * workers;
    assert!(
        left + calls + held_at_most as u64 >= jobs,
        "{left} jobs left in the stream after {calls} calls: the workers hold too many"
    );
    tokio::time::sleep_until(t0 + Duration::from_millis(59_500)).await;
    let stats = env.sim.stats();
    let in_first_minute = stats.calls(API, UPSTREAM);
    let rejected = stats.count(API, UPSTREAM, 429);
    eprintln!(
        "{workers} worker(s), rpm {R}: {in_first_minute} calls in the first minute, {rejected} answered 429"
    );
    assert_eq!(rejected, 0, "{:?}", stats.by_key);
    assert!(
        in_first_minute * 10 >= R * 9,
        "only {in_first_minute} of {R} used in the first minute"
    );
    assert!(in_first_minute <= R);

    // Everything is served, in the next windows, without a failure (generous: on a
    // loaded box the heartbeats that shares depend on arrive late).
    let done = env.wait_succeeded(jobs as i64, 150).await;
    assert_eq!(done, jobs as i64);
    let stats = env.sim.stats();
    assert_eq!(stats.count(API, UPSTREAM, 429), 0, "{:?}", stats.by_key);
    assert_eq!(stats.calls(API, UPSTREAM), jobs);
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    for (stop, handle) in running {
        stop.cancel();
        handle.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_uses_the_limit_without_a_429() {
    a_backlog_of_twice_the_limit(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_limit_without_a_429() {
    a_backlog_of_twice_the_limit(3).await;
}

/// Two limiters over the real NATS: the limit is split, a 429's cool-down reaches the
/// other, and a worker that leaves frees its share while its calls still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_split_the_limit_and_share_cool_downs_over_nats() {
    use switchyard::ratelimit::{Ask, Limiters};
    use tokio_util::sync::CancellationToken;
    let env = TestEnv::new(|c| {
        for p in &mut c.providers {
            if p.name == "local" {
                p.rpm = Some(10);
            }
        }
    })
    .await;
    async fn join(
        l: &Limiters,
        env: &TestEnv,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let client = async_nats::connect(env.config.nats.url.clone())
            .await
            .unwrap();
        l.join(client, &env.prefix, stop, None).await.unwrap()
    }
    let (a, b) = (Limiters::new(&env.config), Limiters::new(&env.config));
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let task_a = join(&a, &env, stop_a.clone()).await;
    let task_b = join(&b, &env, stop_b.clone()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let local = Ask {
        provider: "local",
        model: UPSTREAM,
        tokens: 10,
    };
    let quick = |l: &Limiters, ask: Ask<'static>| {
        let l = l.clone();
        async move {
            tokio::time::timeout(Duration::from_millis(300), l.admit(ask, Priority::Normal))
                .await
                .ok()
                .map(|p| p.settle(None))
                .is_some()
        }
    };
    for l in [&a, &b] {
        for i in 0..5 {
            assert!(quick(l, local).await, "admission {i} of a share of 5");
        }
        assert!(!quick(l, local).await, "a 6th is over the share");
    }
    // A cool-down announced by a holds that model on b too.
    let gpt = Ask {
        provider: "openai",
        model: "gpt-x",
        tokens: 1,
    };
    a.cool_down("openai", "gpt-x", Some(Duration::from_secs(30)))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!quick(&b, gpt).await, "held on b");
    let other = Ask {
        model: "gpt-y",
        ..gpt
    };
    assert!(quick(&b, other).await, "another model is not held");
    // a leaves: b's share grows to the whole limit, but a's 5 calls still count.
    stop_a.cancel();
    task_a.await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!quick(&b, local).await, "a's calls still count");
    stop_b.cancel();
    task_b.await.unwrap();
}
