#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Provider batch APIs (DESIGN.md "Provider batch APIs") against real NATS, Postgres and
//! the simulator's OpenAI Batch API: latency-tolerant jobs are parked, sent in one batch,
//! and each gets exactly one result and one cost row at the batch price; a worker stopped
//! mid-batch loses nothing; what a batch leaves (expired, errored, past the deadline) runs
//! live once; high priority and `"batch": "never"` stay live.

mod common;

use common::batch::{
    assert_batched_on, batch_config, count, named_model, rows, run_sdk_check, wait_for,
};
use common::{job, TestEnv};
use rust_decimal::Decimal;
use std::time::Duration;
use switchyard::job::{JobResult, Priority, Status};
use switchyard::providers::simulator::FaultProfile;

const UPSTREAM: &str = "gpt-4o-mini-2024-07-18";

const HAIKU: &str = "claude-3-5-haiku-20241022";

fn pinned(id: &str, extra: &str) -> String {
    job(
        id,
        "acme",
        &format!(r#","model":"openai/gpt-4o-mini"{extra}"#),
    )
}

fn model(env: &TestEnv) -> switchyard::config::ModelConfig {
    named_model(env, "gpt-4o-mini")
}

/// The job's one cost row is a gpt-4o-mini batch call at the batch price (half the live
/// price), and its result and row agree with it.
async fn assert_batched(env: &TestEnv, r: &JobResult) {
    assert_batched_on(env, r, "openai", "gpt-4o-mini").await;
}

#[tokio::test]
async fn low_priority_jobs_go_through_one_batch_and_high_priority_stays_live() {
    let env = TestEnv::new(batch_config).await;
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 300,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    let mut inbox = env.subscribe("_INBOX.batch.>").await;
    for i in 0..8 {
        let extra = if i == 0 {
            r#","reply_to":"_INBOX.batch.0""#
        } else {
            ""
        };
        env.publish(Priority::Low, "acme", pinned(&format!("low-{i}"), extra))
            .await;
    }
    env.publish(Priority::High, "acme", pinned("high-0", ""))
        .await;
    env.publish(
        Priority::Low,
        "acme",
        pinned("never-0", r#","batch":"never""#),
    )
    .await;

    for i in 0..8 {
        let r = env.result("acme", &format!("low-{i}"), 60).await;
        assert_batched(&env, &r).await;
        assert!(r
            .route
            .unwrap()
            .reason
            .ends_with("sent in a provider batch"));
    }
    let reply = common::next_json(&mut inbox, 10).await;
    assert_eq!(reply["id"], "low-0");
    assert_eq!(reply["status"], "succeeded");
    for id in ["high-0", "never-0"] {
        let r = env.result("acme", id, 30).await;
        assert_eq!(r.status, Status::Succeeded);
        let rows = rows(&env, id).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].1,
            switchyard::cost::cost_of(&model(&env), &rows[0].2)
        );
        assert_eq!(rows[0].3, None, "a live call");
    }
    // One batch of the 8, each line once; the two live jobs called live, nothing else.
    let stats = env.sim.stats();
    assert_eq!(stats.count("openai-batch", UPSTREAM, 200), 8, "{stats:?}");
    assert_eq!(stats.calls("openai", UPSTREAM), 2, "{stats:?}");
    assert_eq!(count(&env, "SELECT count(*) FROM batches").await, 1);
    assert!(
        wait_for(10, || async {
            count(&env, "SELECT count(*) FROM batches WHERE state = 'done'").await == 1
        })
        .await
    );
    assert_eq!(count(&env, "SELECT count(*) FROM cost_rows").await, 10);
    assert_eq!(
        count(&env, "SELECT count(*) FROM jobs WHERE status = 'succeeded'").await,
        10
    );
    // Every message is acked: the original ones when parked, the re-entered ones when
    // answered.
    assert_eq!(env.wait_jobs_left(0, 10).await, 0);
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_stopped_mid_batch_loses_nothing_and_charges_once() {
    let env = TestEnv::new(batch_config).await;
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 3000,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    for i in 0..6 {
        env.publish(Priority::Low, "acme", pinned(&format!("k-{i}"), ""))
            .await;
    }
    // Parked, acked and submitted: then the worker goes away before the batch ends.
    assert!(
        wait_for(30, || async {
            count(
                &env,
                "SELECT count(*) FROM batches WHERE state = 'submitted'",
            )
            .await
                == 1
        })
        .await
    );
    assert_eq!(env.wait_jobs_left(0, 10).await, 0, "parked jobs are acked");
    stop.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(count(&env, "SELECT count(*) FROM cost_rows").await, 0);

    let (stop, handle) = env.start_worker().await;
    for i in 0..6 {
        let r = env.result("acme", &format!("k-{i}"), 60).await;
        assert_batched(&env, &r).await;
    }
    assert_eq!(env.sim.stats().count("openai-batch", UPSTREAM, 200), 6);
    assert_eq!(env.sim.stats().calls("openai", UPSTREAM), 0);
    assert_eq!(count(&env, "SELECT count(*) FROM cost_rows").await, 6);
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_batch_sent_by_a_worker_that_died_before_recording_it_is_found_not_resent() {
    // A worker parks the jobs but never gathers them (a long max_wait).
    let env = TestEnv::new(|c| {
        batch_config(c);
        c.batch.max_wait_s = 3600;
    })
    .await;
    let (stop, handle) = env.start_worker().await;
    for i in 0..4 {
        env.publish(Priority::Low, "acme", pinned(&format!("f-{i}"), ""))
            .await;
    }
    assert!(
        wait_for(30, || async {
            count(
                &env,
                "SELECT count(*) FROM batch_items WHERE state = 'parked'",
            )
            .await
                == 4
        })
        .await
    );
    stop.cancel();
    handle.await.unwrap().unwrap();

    // "Another worker" gathers them and the provider accepts the batch, but the worker
    // dies before it records the provider's id (its lease then runs out).
    let (held, items) = switchyard::store::batches::gather(
        &env.pool,
        &["openai".to_string()],
        100,
        Duration::ZERO,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    )
    .await
    .unwrap()
    .expect("a batch");
    assert_eq!(items.len(), 4);
    let apis = switchyard::providers::batch::BatchApis::from_config(&env.config).unwrap();
    let jobs: Vec<switchyard::job::Job> = items
        .iter()
        .map(|i| serde_json::from_slice(&i.payload).unwrap())
        .collect();
    let reqs: Vec<switchyard::providers::ChatRequest<'_>> = jobs
        .iter()
        .map(|j| switchyard::providers::ChatRequest {
            model: UPSTREAM,
            messages: &j.messages,
            max_tokens: 512,
            temperature: None,
            stop: None,
            response_format: None,
            tools: None,
            tool_choice: None,
        })
        .collect();
    apis.get("openai")
        .unwrap()
        .submit(&held.id, &reqs)
        .await
        .unwrap();

    // The next worker finds it by its tag and answers every job from it: no second batch.
    let (stop, handle) = env.start_worker().await;
    for i in 0..4 {
        let r = env.result("acme", &format!("f-{i}"), 60).await;
        assert_batched(&env, &r).await;
    }
    assert_eq!(env.sim.stats().count("openai-batch", UPSTREAM, 200), 4);
    assert_eq!(count(&env, "SELECT count(*) FROM batches").await, 1);
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn expired_and_errored_lines_run_live_once() {
    let env = TestEnv::new(|c| {
        batch_config(c);
        c.batch.max_jobs = 6;
        c.batch.max_wait_s = 30;
    })
    .await;
    // Lines 3 and 6 expire (the batch ends `expired`), line 4 is answered with a 500.
    env.sim.set_profile(FaultProfile {
        batch_expire_every: 3,
        batch_error_every: 4,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    for i in 0..6 {
        env.publish(Priority::Low, "acme", pinned(&format!("e-{i}"), ""))
            .await;
    }
    let mut batched = 0;
    let mut expired = 0;
    let mut errored = 0;
    for i in 0..6 {
        let id = format!("e-{i}");
        let r = env.result("acme", &id, 60).await;
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        let rows = rows(&env, &id).await;
        let m = model(&env);
        match rows.as_slice() {
            [(o, _, _, Some(msg))] if o == "succeeded" && msg.starts_with("batch ") => {
                assert_batched(&env, &r).await;
                batched += 1;
            }
            [(o, c, u, None)] if o == "succeeded" => {
                assert_eq!(
                    *c,
                    switchyard::cost::cost_of(&m, u),
                    "a live call, live price"
                );
                expired += 1;
            }
            [(o1, c1, _, Some(msg)), (o2, c2, u2, None)] => {
                assert_eq!(o1, "server_error");
                assert!(msg.starts_with("batch "));
                assert_eq!(*c1, Decimal::ZERO);
                assert_eq!(o2, "succeeded");
                assert_eq!(*c2, switchyard::cost::cost_of(&m, u2));
                assert_eq!(r.attempts.len(), 2);
                errored += 1;
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!((batched, expired, errored), (3, 2, 1));
    let stats = env.sim.stats();
    assert_eq!(stats.count("openai-batch", UPSTREAM, 200), 3);
    assert_eq!(stats.count("openai-batch", UPSTREAM, 500), 1);
    assert_eq!(
        stats.calls("openai", UPSTREAM),
        3,
        "each job left runs live once"
    );
    let status: String = sqlx::query_scalar("SELECT provider_status FROM batches")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(status, "expired");
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_batch_past_its_deadline_is_cancelled_and_its_jobs_run_live() {
    let env = TestEnv::new(|c| {
        batch_config(c);
        c.batch.deadline_s = 2;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        batch_hang: true,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    for i in 0..3 {
        env.publish(Priority::Low, "acme", pinned(&format!("d-{i}"), ""))
            .await;
    }
    for i in 0..3 {
        let id = format!("d-{i}");
        let r = env.result("acme", &id, 60).await;
        assert_eq!(r.status, Status::Succeeded);
        let rows = rows(&env, &id).await;
        assert_eq!(
            rows.len(),
            1,
            "nothing billed by the cancelled batch: {rows:?}"
        );
        assert_eq!(rows[0].3, None);
    }
    assert_eq!(env.sim.stats().calls("openai", UPSTREAM), 3);
    assert_eq!(env.sim.stats().count("openai-batch", UPSTREAM, 200), 0);
    let status: String = sqlx::query_scalar("SELECT provider_status FROM batches")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn anthropic_message_batches_answer_at_the_batch_price_and_expired_requests_run_live() {
    let env = TestEnv::new(|c| {
        batch_config(c);
        c.batch.max_jobs = 3;
        c.batch.max_wait_s = 30;
    })
    .await;
    // The third request of the batch expires.
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 200,
        batch_expire_every: 3,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    for i in 0..3 {
        let payload = job(
            &format!("a-{i}"),
            "acme",
            r#","model":"anthropic/claude-3-5-haiku""#,
        );
        env.publish(Priority::Low, "acme", payload).await;
    }
    let mut batched = 0;
    for i in 0..3 {
        let id = format!("a-{i}");
        let r = env.result("acme", &id, 60).await;
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        let rows = rows(&env, &id).await;
        if rows[0].3.is_some() {
            assert_batched_on(&env, &r, "anthropic", "claude-3-5-haiku").await;
            batched += 1;
        } else {
            assert_eq!(rows.len(), 1);
            let m = named_model(&env, "claude-3-5-haiku");
            assert_eq!(rows[0].1, switchyard::cost::cost_of(&m, &rows[0].2));
        }
    }
    assert_eq!(batched, 2);
    let stats = env.sim.stats();
    assert_eq!(stats.count("anthropic-batch", HAIKU, 200), 2, "{stats:?}");
    assert_eq!(stats.calls("anthropic", HAIKU), 1, "the expired one, live");
    stop.cancel();
    handle.await.unwrap().unwrap();
}

/// Figures for BENCHMARKS.md "Cost levers": `cargo test --test batch -- --ignored
/// --nocapture batch_figures`. 200 low-priority jobs pinned to gpt-4o-mini, batches off
/// and on (max_wait_s 1, poll_interval_s 1, the simulator completing a batch at once):
/// provider calls, spend, and the time from the first publish to the last result.
#[tokio::test]
#[ignore]
async fn batch_figures() {
    const N: usize = 200;
    for on in [false, true] {
        let env = TestEnv::new(|c| {
            batch_config(c);
            c.batch.enabled = on;
            c.batch.max_jobs = 1000;
        })
        .await;
        let (stop, handle) = env.start_worker().await;
        let started = std::time::Instant::now();
        for i in 0..N {
            env.publish(Priority::Low, "acme", pinned(&format!("b-{i}"), ""))
                .await;
        }
        for i in 0..N {
            let r = env.result("acme", &format!("b-{i}"), 120).await;
            assert_eq!(r.status, Status::Succeeded);
        }
        let took = started.elapsed();
        let spent: Decimal = sqlx::query_scalar("SELECT coalesce(sum(cost_usd), 0) FROM cost_rows")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        let stats = env.sim.stats();
        println!(
            "batch {}: {N} jobs, live calls {}, batch lines {}, spent ${spent}, first publish -> last result {:.2} s",
            if on { "on " } else { "off" },
            stats.calls("openai", UPSTREAM),
            stats.calls("openai-batch", UPSTREAM),
            took.as_secs_f64()
        );
        stop.cancel();
        handle.await.unwrap().unwrap();
    }
}

/// The simulator's Batch APIs against the official `openai` and `anthropic` Python SDKs
/// (`scripts/lib/batch_sdk_check.py`: create, retrieve, list, cancel, results and the
/// refusals), when `SWITCHYARD_SDK_PYTHON` names a Python that has them (`scripts/test.sh`
/// makes one when the package registry answers; skipped otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_drive_the_simulators_batch_apis() {
    let env = TestEnv::new(|_| {}).await;
    let ok = [
        "openai SDK batch check: ok",
        "anthropic SDK batch check: ok",
    ];
    run_sdk_check(&env, "batch_sdk_check.py", &ok).await;
    env.cleanup().await;
}

/// A batch's answer feeds the response cache as a live answer does: a later repeat of
/// the prompt is answered by the exact cache and a paraphrase by the semantic cache
/// (built-in embedder), each at no call, saving what the batch line cost.
#[tokio::test]
async fn a_batched_answer_is_stored_in_the_response_cache() {
    let env = TestEnv::new(|c| {
        batch_config(c);
        c.cache.enabled = true;
        c.cache.semantic = true;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 300,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    let ask = |id: &str, prompt: &str| {
        serde_json::json!({
            "id": id, "tenant": "acme", "model": "openai/gpt-4o-mini", "temperature": 0,
            "max_tokens": 64, "messages": [{"role": "user", "content": prompt}],
        })
        .to_string()
    };
    let prompt = "Write a short product description for a stainless steel water bottle.";
    let paraphrase = "Write a short description of a stainless steel water bottle product.";
    env.publish(Priority::Low, "acme", ask("first", prompt))
        .await;
    let first = env.result("acme", "first", 60).await;
    assert_batched(&env, &first).await;
    let line_cost = rows(&env, "first").await[0].1;

    env.publish(Priority::Low, "acme", ask("repeat", prompt))
        .await;
    env.publish(Priority::Low, "acme", ask("reworded", paraphrase))
        .await;
    for (id, which) in [("repeat", "exact"), ("reworded", "semantic")] {
        let r = env.result("acme", id, 30).await;
        assert_eq!(r.status, Status::Succeeded);
        assert!(r.cache_hit, "{id}: answered from the cache");
        assert!(
            r.route.unwrap().reason.contains(&format!("{which} cache")),
            "{id}"
        );
        assert_eq!(r.output, first.output, "{id}: the batch's answer");
        assert!(rows(&env, id).await.is_empty(), "{id}: no call");
        let saved: Option<Decimal> =
            sqlx::query_scalar("SELECT cache_saved_usd FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(saved, Some(line_cost), "{id}: saves the batch line's cost");
    }
    let stats = env.sim.stats();
    assert_eq!(stats.count("openai-batch", UPSTREAM, 200), 1, "{stats:?}");
    assert_eq!(stats.calls("openai", UPSTREAM), 0, "{stats:?}");
    stop.cancel();
    handle.await.unwrap().unwrap();
}
