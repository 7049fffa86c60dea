#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gemini's Batch Mode (DESIGN.md "Provider batch APIs") against real NATS, Postgres and
//! the simulator: latency-tolerant Gemini jobs go through one `batchGenerateContent`
//! batch at the batch price; an errored request and an expired batch send their jobs live
//! once; the simulator refuses what Google refuses; and the official `google-genai` SDK
//! drives the simulator's batch endpoints.

mod common;

use common::batch::{
    assert_batched_on, batch_config, count, named_model, rows, run_sdk_check, wait_for,
};
use common::{job, TestEnv};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use switchyard::job::{Priority, Status};
use switchyard::providers::simulator::FaultProfile;

const FLASH: &str = "gemini-2.0-flash";

fn gemini_job(id: &str) -> String {
    job(id, "acme", r#","model":"gemini/gemini-2.0-flash""#)
}

#[tokio::test]
async fn gemini_jobs_go_through_one_batch_and_an_errored_request_runs_live_once() {
    let env = TestEnv::new(|c| {
        batch_config(c);
        c.batch.max_jobs = 6;
        c.batch.max_wait_s = 30;
    })
    .await;
    // The 4th request of the batch is answered with a 500.
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 300,
        batch_error_every: 4,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    for i in 0..6 {
        env.publish(Priority::Low, "acme", gemini_job(&format!("g-{i}")))
            .await;
    }
    env.publish(Priority::High, "acme", gemini_job("g-high"))
        .await;
    let m = named_model(&env, FLASH);
    let (mut batched, mut errored) = (0, 0);
    for i in 0..6 {
        let id = format!("g-{i}");
        let r = env.result("acme", &id, 60).await;
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        let rows = rows(&env, &id).await;
        match rows.as_slice() {
            [(o, _, _, Some(msg))] if o == "succeeded" && msg.starts_with("batch ") => {
                assert_batched_on(&env, &r, "gemini", FLASH).await;
                batched += 1;
            }
            [(o1, c1, _, Some(msg)), (o2, c2, u2, None)] => {
                assert_eq!(o1, "server_error");
                assert!(msg.starts_with("batch "), "{msg}");
                assert_eq!(*c1, Decimal::ZERO);
                assert_eq!(o2, "succeeded");
                assert_eq!(*c2, switchyard::cost::cost_of(&m, u2), "live price");
                errored += 1;
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!((batched, errored), (5, 1));
    let r = env.result("acme", "g-high", 30).await;
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(
        rows(&env, "g-high").await[0].3,
        None,
        "high priority is live"
    );

    let stats = env.sim.stats();
    assert_eq!(stats.count("gemini-batch", FLASH, 200), 5, "{stats:?}");
    assert_eq!(stats.count("gemini-batch", FLASH, 500), 1, "{stats:?}");
    assert_eq!(
        stats.calls("gemini", FLASH),
        2,
        "the errored one and the high-priority one, live: {stats:?}"
    );
    let status: String = sqlx::query_scalar("SELECT provider_status FROM batches")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(status, "BATCH_STATE_SUCCEEDED");
    assert!(
        wait_for(10, || async {
            count(&env, "SELECT count(*) FROM batches WHERE state = 'done'").await == 1
        })
        .await
    );
    assert_eq!(count(&env, "SELECT count(*) FROM cost_rows").await, 8);
    assert_eq!(env.wait_jobs_left(0, 10).await, 0);
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_expired_gemini_batch_sends_every_job_live_once() {
    let env = TestEnv::new(batch_config).await;
    env.sim.set_profile(FaultProfile {
        batch_expire_every: 1,
        ..FaultProfile::default()
    });
    let (stop, handle) = env.start_worker().await;
    for i in 0..3 {
        env.publish(Priority::Low, "acme", gemini_job(&format!("x-{i}")))
            .await;
    }
    let m = named_model(&env, FLASH);
    for i in 0..3 {
        let id = format!("x-{i}");
        let r = env.result("acme", &id, 60).await;
        assert_eq!(r.status, Status::Succeeded);
        let rows = rows(&env, &id).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].3, None, "a live call");
        assert_eq!(rows[0].1, switchyard::cost::cost_of(&m, &rows[0].2));
    }
    assert_eq!(env.sim.stats().calls("gemini", FLASH), 3);
    assert_eq!(env.sim.stats().calls("gemini-batch", FLASH), 0);
    let status: String = sqlx::query_scalar("SELECT provider_status FROM batches")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(status, "BATCH_STATE_EXPIRED");
    stop.cancel();
    handle.await.unwrap().unwrap();
}

async fn post(env: &TestEnv, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1beta/{path}", env.sim_addr))
        .header("x-goog-api-key", "k")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn one_request(request: Value) -> Value {
    json!({"batch": {"displayName": "t", "inputConfig": {"requests": {"requests": [
        {"request": request, "metadata": {"key": "sy-0"}}]}}}})
}

#[tokio::test]
async fn the_simulator_refuses_what_gemini_batch_mode_refuses() {
    let env = TestEnv::new(|_| {}).await;
    let path = "models/gemini-2.0-flash:batchGenerateContent";
    let good = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let cases = [
        (json!({"batch": {}, "extra": 1}), "Unknown name \"extra\""),
        (
            json!({"batch": {"inputConfig": {"requests": {"requests": [{"request": good}]}}}}),
            "display_name",
        ),
        (
            json!({"batch": {"displayName": "t", "inputConfig": {"requests": {"requests": []}}}}),
            "at least one request",
        ),
        (
            json!({"batch": {"displayName": "t", "inputConfig": {"fileName": "files/x"}}}),
            "Files API is not simulated",
        ),
        (
            one_request(json!({"contents": [{"parts": [{"text": "x"}]}], "bogus": 1})),
            "Unknown name \"bogus\"",
        ),
        (
            one_request(json!({"model": "models/gemini-2.5-flash", "contents": []})),
            "not the batch's model",
        ),
    ];
    for (body, needle) in cases {
        let (status, v) = post(&env, path, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // No key: refused before anything else.
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1beta/{path}", env.sim_addr))
        .json(&one_request(good.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // A request generateContent would refuse (no contents) is accepted in the batch and
    // answered with its error, as a live call would be.
    let (status, op) = post(&env, path, &one_request(json!({"contents": []}))).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["metadata"]["state"], "BATCH_STATE_PENDING");
    let name = op["name"].as_str().unwrap();
    let get = || async {
        reqwest::Client::new()
            .get(format!("http://{}/v1beta/{name}", env.sim_addr))
            .header("x-goog-api-key", "k")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let mut op = get().await;
    for _ in 0..50 {
        if op["done"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        op = get().await;
    }
    assert_eq!(op["metadata"]["state"], "BATCH_STATE_SUCCEEDED", "{op}");
    let answers = &op["metadata"]["output"]["inlinedResponses"]["inlinedResponses"];
    assert_eq!(answers[0]["error"]["code"], 400, "{op}");
    assert_eq!(answers[0]["metadata"]["key"], "sy-0");
    assert_eq!(op["metadata"]["batchStats"]["failedRequestCount"], "1");
}

/// The simulator's Gemini Batch Mode against the official `google-genai` SDK
/// (`scripts/lib/gemini_batch_sdk_check.py`), when `SWITCHYARD_SDK_PYTHON` names a Python
/// that has it (skipped otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_google_genai_sdk_drives_the_simulators_batch_mode() {
    let env = TestEnv::new(|_| {}).await;
    let ok = ["gemini SDK batch check: ok"];
    run_sdk_check(&env, "gemini_batch_sdk_check.py", &ok).await;
}
