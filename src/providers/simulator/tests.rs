//! Tests of the simulator handle, admin endpoints, latency and hang.

use super::testutil::start;
use super::*;
use serde_json::{json, Value};
use std::time::Duration;

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

#[test]
fn stats_calls_sums_statuses_of_one_model_only() {
    let mut s = Stats::default();
    s.by_key.insert("openai/m/200".into(), 3);
    s.by_key.insert("openai/m/429".into(), 2);
    s.by_key.insert("openai/m/x/200".into(), 7);
    s.by_key.insert("anthropic/m/200".into(), 11);
    assert_eq!(s.calls("openai", "m"), 5);
    assert_eq!(s.calls("openai", "m/x"), 7);
    assert_eq!(s.count("openai", "m", 429), 2);
}

#[test]
fn profile_json_defaults_and_per_model_override() {
    let p: FaultProfile =
        serde_json::from_str(r#"{"per_model":{"slow":{"latency_ms":5,"fail_first":2}}}"#)
            .expect("parse");
    let k = Knobs::resolve(&p, "slow");
    assert_eq!((k.latency_ms, k.fail_first, k.error_status), (5, 2, 500));
    let k = Knobs::resolve(&p, "other");
    assert_eq!((k.latency_ms, k.fail_first), (0, 0));
    assert!(Knobs::resolve(&p, "no-such-model").unknown_model);
}

#[tokio::test]
async fn admin_endpoints_profile_stats_reset() {
    let r = start(FaultProfile::default()).await;
    let resp = r
        .client
        .post(r.url("/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&chat_body("m1"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let stats: Value = r
        .client
        .get(r.url("/_sim/stats"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["total"], 1);
    assert_eq!(stats["by_key"]["openai/m1/200"], 1);

    let resp = r
        .client
        .post(r.url("/_sim/profile"))
        .json(&json!({"error_rate": 1.0, "error_status": 503}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(r.sim.profile().error_status, 503);
    let resp = r
        .client
        .post(r.url("/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&chat_body("m1"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 503);
    assert_eq!(r.sim.stats().count("openai", "m1", 503), 1);

    let bad = r
        .client
        .post(r.url("/_sim/profile"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(bad.status(), 400);

    let resp = r
        .client
        .post(r.url("/_sim/reset"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let s = r.sim.stats();
    assert_eq!(s.total, 0);
    assert!(s.by_key.is_empty());
    r.shutdown.cancel();
}

#[tokio::test]
async fn latency_is_applied() {
    let r = start(FaultProfile {
        latency_ms: 150,
        ..Default::default()
    })
    .await;
    let t = std::time::Instant::now();
    let resp = r
        .client
        .post(r.url("/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&chat_body("m"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    r.shutdown.cancel();
}

#[tokio::test]
async fn hang_never_answers_until_shutdown() {
    let mut per_model = HashMap::new();
    per_model.insert(
        "stuck".to_owned(),
        FaultProfile {
            hang: true,
            ..Default::default()
        },
    );
    let r = start(FaultProfile {
        per_model,
        ..Default::default()
    })
    .await;
    let req = r
        .client
        .post(r.url("/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&chat_body("stuck"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(req.expect_err("must time out").is_timeout());
    assert_eq!(r.sim.stats().by_key.get("openai/stuck/hang"), Some(&1));

    // Another model on the same simulator still answers.
    let ok = r
        .client
        .post(r.url("/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&chat_body("fine"))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);

    // A held request is released by shutdown, and serve returns.
    let pending = tokio::spawn({
        let c = r.client.clone();
        let url = r.url("/v1/chat/completions");
        async move {
            c.post(url)
                .bearer_auth("sk-test")
                .json(&chat_body("stuck"))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    r.shutdown.cancel();
    let served = tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("serve returns after shutdown")
        .expect("join");
    assert!(served.is_ok());
    let answered = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("held request finishes")
        .expect("join");
    if let Ok(resp) = answered {
        assert_eq!(resp.status(), 503);
    }
}
