#![allow(clippy::unwrap_used, clippy::expect_used)]
//! kill -9 of a worker while provider batches are in flight (DESIGN.md "Provider batch
//! APIs": parked jobs are durable, each batch is leased, its end is one transaction):
//! real `switchyard worker` processes against real NATS, Postgres and the in-process
//! simulator, SIGKILLed with batches parked, submitted, polled or fanning out; the next
//! worker picks the batches up, and every job ends with exactly one result and one cost
//! row at the batch price; no batch line is answered twice at the provider; no job is
//! called live.

mod common;

use common::batch::{batch_config, count, named_model, rows, wait_for};
use common::{job, TestEnv};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use switchyard::job::{Priority, Status};
use switchyard::providers::simulator::FaultProfile;
use tokio_util::sync::CancellationToken;

/// Model name in the config, its upstream id, the job's `model`.
const MODELS: [(&str, &str, &str); 2] = [
    (
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        "openai/gpt-4o-mini",
    ),
    (
        "gemini-2.0-flash",
        "gemini-2.0-flash",
        "gemini/gemini-2.0-flash",
    ),
];

/// A `switchyard worker` process for this test, batches on as in [`batch_config`] (quick
/// waits and polls, a 2 s lease, batch prices at half the live ones).
fn spawn_worker(env: &TestEnv) -> tokio::process::Child {
    let mut cmd = env.command();
    cmd.arg("worker")
        .env("SWITCHYARD_BATCH__ENABLED", "true")
        .env("SWITCHYARD_BATCH__MAX_JOBS", "100")
        .env("SWITCHYARD_BATCH__MAX_WAIT_S", "1")
        .env("SWITCHYARD_BATCH__POLL_INTERVAL_S", "1")
        .env("SWITCHYARD_BATCH__LEASE_S", "2")
        .env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // The model names as the config spells them (the variable names a model by its name).
    for (name, price) in [
        ("gpt-4o-mini", ("0.075", "0.30")),
        ("gemini-2.0-flash", ("0.05", "0.20")),
    ] {
        cmd.env(
            format!("SWITCHYARD_MODELS__{name}__BATCH_INPUT_PER_MTOK"),
            price.0,
        )
        .env(
            format!("SWITCHYARD_MODELS__{name}__BATCH_OUTPUT_PER_MTOK"),
            price.1,
        );
    }
    cmd.spawn().expect("start a worker process")
}

async fn kill9(child: &mut tokio::process::Child) {
    // Already gone (it crashed) is fine here: the checks below say what was lost.
    let _ = child.start_kill();
    child.wait().await.expect("reaped");
}

type Published = HashMap<String, Vec<serde_json::Value>>;

/// Every result message published for each job, read from a core subscription made
/// before the first publish (the results stream keeps only the last per job), until
/// `stop`.
fn collect_results(
    mut sub: async_nats::Subscriber,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Published> {
    tokio::spawn(async move {
        let mut by_id = Published::new();
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => break,
                m = sub.next() => m,
            };
            let Some(m) = m else { break };
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            by_id.entry(id).or_default().push(v);
        }
        by_id
    })
}

/// Wait for every job's stored result, then a moment for late publishes; what was
/// published.
async fn all_results(
    env: &TestEnv,
    ids: &[(String, usize)],
    collector: (tokio::task::JoinHandle<Published>, CancellationToken),
) -> Published {
    for (id, _) in ids {
        env.result("acme", id, 120).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    collector.1.cancel();
    collector.0.await.unwrap()
}

/// The invariants after the run: each of `ids` has one terminal result (a result
/// published again after a kill is the same result), one cost row at the batch price,
/// and the provider answered each batch line once, with no live call.
async fn check(env: &TestEnv, ids: &[(String, usize)], published: Published) {
    let mut per_model = [0u64; 2];
    for (id, m) in ids {
        let r = env.result("acme", id, 90).await;
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        let rows = rows(env, id).await;
        assert_eq!(rows.len(), 1, "{id}: one cost row: {rows:?}");
        let (outcome, cost, usage, message) = &rows[0];
        assert_eq!(outcome, "succeeded");
        assert!(
            message.as_deref().unwrap_or("").starts_with("batch "),
            "{id}: answered by a batch: {message:?}"
        );
        // The test's config has the prices the worker processes are given.
        let model = named_model(env, MODELS[*m].0);
        assert_eq!(
            Some(*cost),
            switchyard::cost::batch_cost_of(&model, usage),
            "{id}: the batch price"
        );
        assert_eq!(r.cost_usd, *cost);
        let seen = published.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        assert!(!seen.is_empty(), "{id}: no result published on NATS");
        for v in seen {
            assert_eq!(v["status"], "succeeded", "{id}: {v}");
            assert_eq!(
                v["cost_usd"], seen[0]["cost_usd"],
                "{id}: two different results"
            );
            assert_eq!(
                v["output"], seen[0]["output"],
                "{id}: two different results"
            );
        }
        per_model[*m] += 1;
    }
    let stats = env.sim.stats();
    for (i, (_, upstream, _)) in MODELS.iter().enumerate() {
        let api = if i == 0 { "openai" } else { "gemini" };
        assert_eq!(
            stats.count(&format!("{api}-batch"), upstream, 200),
            per_model[i],
            "{upstream}: each batch line answered once: {stats:?}"
        );
        assert_eq!(stats.calls(api, upstream), 0, "no live call: {stats:?}");
    }
    let n = ids.len() as i64;
    assert_eq!(count(env, "SELECT count(*) FROM cost_rows").await, n);
    assert_eq!(
        count(env, "SELECT count(*) FROM jobs WHERE status = 'succeeded'").await,
        n
    );
    assert!(
        wait_for(20, || async {
            count(env, "SELECT count(*) FROM batches WHERE state <> 'done'").await == 0
        })
        .await,
        "every batch done"
    );
    assert_eq!(env.wait_jobs_left(0, 20).await, 0, "every message acked");
}

fn publish_all(n: usize, tag: &str) -> Vec<(String, usize, String)> {
    (0..n)
        .map(|i| {
            let m = i % 2;
            let id = format!("{tag}-{i}");
            let payload = job(&id, "acme", &format!(r#","model":"{}""#, MODELS[m].2));
            (id, m, payload)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_openai_and_gemini_batches_in_flight_loses_nothing_and_charges_once() {
    let env = TestEnv::new(batch_config).await;
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 4000,
        ..FaultProfile::default()
    });
    env.ensure_streams().await;
    let done = CancellationToken::new();
    let sub = env.subscribe(&format!("{}.results.>", env.prefix)).await;
    let collector = (collect_results(sub, done.clone()), done);
    let mut a = spawn_worker(&env);
    let jobs = publish_all(40, "k");
    for (_, _, payload) in &jobs {
        env.publish(Priority::Low, "acme", payload.clone()).await;
    }
    // Both batches sent and recorded, their jobs acked: then the worker is SIGKILLed.
    assert!(
        wait_for(60, || async {
            count(
                &env,
                "SELECT count(*) FROM batches WHERE state = 'submitted'",
            )
            .await
                == 2
        })
        .await,
        "two batches submitted"
    );
    assert_eq!(env.wait_jobs_left(0, 20).await, 0, "parked jobs are acked");
    kill9(&mut a).await;
    assert_eq!(count(&env, "SELECT count(*) FROM cost_rows").await, 0);

    let mut b = spawn_worker(&env);
    let ids: Vec<(String, usize)> = jobs.into_iter().map(|(id, m, _)| (id, m)).collect();
    let published = all_results(&env, &ids, collector).await;
    check(&env, &ids, published).await;
    assert_eq!(count(&env, "SELECT count(*) FROM batches").await, 2);
    kill9(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_moments_of_a_batchs_life_lose_nothing() {
    let env = TestEnv::new(batch_config).await;
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 1500,
        ..FaultProfile::default()
    });
    env.ensure_streams().await;
    let done = CancellationToken::new();
    let sub = env.subscribe(&format!("{}.results.>", env.prefix)).await;
    let collector = (collect_results(sub, done.clone()), done);
    let jobs = publish_all(60, "r");
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    // Jobs keep arriving while workers are started and SIGKILLed at random moments:
    // while jobs are parked, batches sent, polled, settled and fanned out.
    for (round, chunk) in jobs.chunks(15).enumerate() {
        let mut w = spawn_worker(&env);
        for (_, _, payload) in chunk {
            env.publish(Priority::Low, "acme", payload.clone()).await;
        }
        let ms = rng.random_range(500..3500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        eprintln!("round {round}: kill -9 after {ms} ms");
        kill9(&mut w).await;
    }
    let mut last = spawn_worker(&env);
    let ids: Vec<(String, usize)> = jobs.into_iter().map(|(id, m, _)| (id, m)).collect();
    let published = all_results(&env, &ids, collector).await;
    check(&env, &ids, published).await;
    kill9(&mut last).await;
}
