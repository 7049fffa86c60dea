#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The core pipeline end to end, against real NATS JetStream and real Postgres.

mod common;

use common::{job, next_json, TestEnv};
use rust_decimal::Decimal;
use std::time::Duration;
use switchyard::job::{ErrorKind, Priority, Status};
use switchyard::providers::simulator::FaultProfile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_on_every_priority() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = TestEnv::new(|c| c.metrics.addr = format!("127.0.0.1:{port}")).await;
    let (stop, worker) = env.start_worker().await;
    let mut replies = env.subscribe("_INBOX.happy.>").await;
    for (i, p) in Priority::ALL.iter().enumerate() {
        let id = format!("job-{}", p.as_str());
        let extra = format!(r#","reply_to":"_INBOX.happy.{i}","metadata":{{"z":1,"a":[true]}}"#);
        env.publish(*p, "acme", job(&id, "acme", &extra)).await;
        let reply = next_json(&mut replies, 20).await;
        assert_eq!(reply["id"], id.as_str());
        assert_eq!(reply["status"], "succeeded");
        // auto: a short one-turn prompt needs the cheap tier, whose cheapest model is first
        assert_eq!(reply["provider"], "openai");
        assert_eq!(reply["model"], "gpt-4.1-nano");
        assert_eq!(reply["route"]["tier"], "cheap");
        // metadata comes back untouched, key order included
        assert_eq!(
            serde_json::to_string(&reply["metadata"]).unwrap(),
            r#"{"z":1,"a":[true]}"#
        );
        common::assert_schema("result", &reply);
        let stored = env.result("acme", &id, 5).await;
        assert_eq!(serde_json::to_value(&stored).unwrap(), reply);

        let (status, priority, cost, input, output): (String, String, Decimal, i64, i64) = sqlx::query_as(
            "SELECT status, priority, cost_usd, input_tokens, output_tokens FROM jobs WHERE tenant='acme' AND id=$1",
        )
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(status, "succeeded");
        assert_eq!(priority, p.as_str());
        let stored_output: serde_json::Value =
            sqlx::query_scalar("SELECT output FROM jobs WHERE tenant='acme' AND id=$1")
                .bind(&id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(
            stored_output, reply["output"],
            "jobs.output is the result's output"
        );
        assert!(input > 0 && output > 0);
        let rows: Vec<(i32, String, Decimal)> = sqlx::query_as(
            "SELECT attempt, outcome, cost_usd FROM cost_rows WHERE tenant='acme' AND job_id=$1",
        )
        .bind(&id)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, "succeeded");
        assert_eq!(rows[0].2, cost, "jobs.cost_usd = sum of its cost rows");
        assert_eq!(
            reply["cost_usd"]
                .as_str()
                .unwrap()
                .parse::<Decimal>()
                .unwrap(),
            cost
        );
        // price check: gpt-4.1-nano 0.10 in / 0.40 out per million
        let expect = (Decimal::from(input) * Decimal::new(10, 2)
            + Decimal::from(output) * Decimal::new(40, 2))
            / Decimal::from(1_000_000);
        assert_eq!(cost, expect.normalize());
    }
    assert_eq!(
        env.sim.stats().calls("openai", "gpt-4.1-nano-2025-04-14"),
        3
    );
    assert_eq!(env.wait_jobs_left(0, 10).await, 0, "every job acked");
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for p in ["high", "normal", "low"] {
        let line = format!(
            r#"switchyard_jobs_total{{priority="{p}",status="succeeded",error_kind=""}} 1"#
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains(r#"switchyard_provider_calls_total{provider="openai",model="gpt-4.1-nano",outcome="succeeded"} 3"#));
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_is_served_first_under_a_backlog_and_low_still_progresses() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 4;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 20,
        ..Default::default()
    });
    env.ensure_streams().await;
    // Backlog: low first, then normal, then high.
    for p in [Priority::Low, Priority::Normal, Priority::High] {
        for i in 0..40 {
            env.publish(p, "acme", job(&format!("{}-{i}", p.as_str()), "acme", ""))
                .await;
        }
    }
    let (stop, worker) = env.start_worker().await;
    env.wait_succeeded(120, 20).await;
    let ranks: Vec<(String, f64, i64)> = sqlx::query_as(
        "SELECT priority, avg(r)::float8, min(r) FROM (
            SELECT priority, rank() OVER (ORDER BY finished_at, id) AS r FROM jobs WHERE status='succeeded') x
         GROUP BY priority",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let get = |p: &str| ranks.iter().find(|r| r.0 == p).cloned().unwrap();
    let (high, normal, low) = (get("high"), get("normal"), get("low"));
    assert!(
        high.1 < normal.1 && normal.1 < low.1,
        "mean completion rank high < normal < low: {ranks:?}"
    );
    assert!(
        low.2 < 80,
        "low is not starved until the others are done: {ranks:?}"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A busy worker frees its slots one at a time: each slot still goes to a priority by
/// weight (8:3:1), so normal and low progress while high has a backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_hold_when_slots_free_one_at_a_time() {
    let env = TestEnv::new(|c| c.worker.max_in_flight = 2).await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 50,
        ..Default::default()
    });
    env.ensure_streams().await;
    let backlog = [
        (Priority::High, 300),
        (Priority::Normal, 60),
        (Priority::Low, 60),
    ];
    for (p, n) in backlog {
        for i in 0..n {
            env.publish(p, "acme", job(&format!("{}-{i}", p.as_str()), "acme", ""))
                .await;
        }
    }
    let (stop, worker) = env.start_worker().await;
    env.wait_succeeded(96, 60).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let done: Vec<(String, i64)> = sqlx::query_as(
        "SELECT priority, count(*) FROM jobs WHERE status='succeeded' GROUP BY priority",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let count = |p: Priority| {
        done.iter()
            .find(|(q, _)| q == p.as_str())
            .map_or(0, |(_, n)| *n)
    };
    let (high, normal, low) = (
        count(Priority::High),
        count(Priority::Normal),
        count(Priority::Low),
    );
    let total = high + normal + low;
    eprintln!("completed high {high}, normal {normal}, low {low} of {total}");
    assert!(total >= 96, "{done:?}");
    assert!(high < 300, "high still has a backlog: {done:?}");
    // Expected shares: normal 3/12, low 1/12 of what completed.
    assert!(
        normal > 0 && normal * 2 * 12 >= total * 3,
        "normal: {done:?}"
    );
    assert!(low > 0 && low * 3 * 12 >= total, "low: {done:?}");
}

/// (subject, payload, tenant, id (None: `_seq<N>`), kind, what the message must name)
type BadCase<'a> = (
    String,
    Vec<u8>,
    &'a str,
    Option<&'a str>,
    ErrorKind,
    &'a str,
);

/// Every bad input fails at once with the right kind, a result filed under the right key,
/// a DLQ entry and a failed row — and the worker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_cleanly_and_the_worker_keeps_serving() {
    let env = TestEnv::new(|c| {
        c.limits.max_payload_bytes = 4096;
    })
    .await;
    let (stop, worker) = env.start_worker().await;
    let p = env.prefix.clone();
    let normal = format!("{p}.jobs.normal.acme");
    let msgs = r#"[{"role":"user","content":"hi"}]"#;
    // (subject, payload, tenant, id (None: _seq<N>), kind, field named in the message)
    let cases: Vec<BadCase> = vec![
        (normal.clone(), b"not json".to_vec(), "acme", None, ErrorKind::MalformedJob, "JSON"),
        (normal.clone(), b"[1,2,3]".to_vec(), "acme", None, ErrorKind::MalformedJob, "array"),
        (normal.clone(), b"\xff\xfe\x00".to_vec(), "acme", None, ErrorKind::MalformedJob, "UTF-8"),
        (normal.clone(), br#"{"id":"d1","id":"d2","tenant":"acme"}"#.to_vec(), "acme", None, ErrorKind::MalformedJob, "duplicate"),
        (normal.clone(), format!(r#"{{"id":"b1","tenant":"acme","messages":{msgs}}} x"#).into_bytes(), "acme", None, ErrorKind::MalformedJob, "trailing"),
        (normal.clone(), format!(r#"{{"id":"b2","tenant":"acme","modle":"x","messages":{msgs}}}"#).into_bytes(), "acme", Some("b2"), ErrorKind::InvalidJob, "modle"),
        (normal.clone(), r#"{"id":"b3","tenant":"acme","messages":[{"role":"bot","content":"x"}]}"#.as_bytes().to_vec(), "acme", Some("b3"), ErrorKind::InvalidJob, "messages[0].role"),
        (normal.clone(), r#"{"id":"b4","tenant":"acme","messages":[]}"#.as_bytes().to_vec(), "acme", Some("b4"), ErrorKind::InvalidJob, "messages"),
        (normal.clone(), format!(r#"{{"id":"b5","tenant":"globex","messages":{msgs}}}"#).into_bytes(), "acme", Some("b5"), ErrorKind::InvalidJob, "tenant"),
        (normal.clone(), format!(r#"{{"id":"b 6","tenant":"acme","messages":{msgs}}}"#).into_bytes(), "acme", None, ErrorKind::InvalidJob, "id"),
        (normal.clone(), format!(r#"{{"id":"b7","tenant":"acme","max_tokens":0,"messages":{msgs}}}"#).into_bytes(), "acme", Some("b7"), ErrorKind::InvalidJob, "max_tokens"),
        (normal.clone(), format!(r#"{{"id":"b8","tenant":"acme","temperature":7,"messages":{msgs}}}"#).into_bytes(), "acme", Some("b8"), ErrorKind::InvalidJob, "temperature"),
        (normal.clone(), format!(r#"{{"id":"b9","tenant":"acme","model":"gpt-9","messages":{msgs}}}"#).into_bytes(), "acme", Some("b9"), ErrorKind::UnknownModel, "gpt-9"),
        (normal.clone(), format!(r#"{{"id":"b10","tenant":"acme","deadline":"2020-01-01T00:00:00Z","messages":{msgs}}}"#).into_bytes(), "acme", Some("b10"), ErrorKind::Expired, "deadline"),
        (normal.clone(), format!(r#"{{"id":"b11","tenant":"acme","metadata":"{}","messages":{msgs}}}"#, "x".repeat(5000)).into_bytes(), "acme", Some("b11"), ErrorKind::InvalidJob, "max_payload_bytes"),
        (normal.clone(), format!(r#"{{"id":"b12","tenant":"acme","providers":{{"allow":["mistral"]}},"messages":{msgs}}}"#).into_bytes(), "acme", Some("b12"), ErrorKind::InvalidJob, "providers.allow[0]"),
        (format!("{p}.jobs.high.acme.extra"), format!(r#"{{"id":"b13","tenant":"acme","messages":{msgs}}}"#).into_bytes(), "acme", Some("b13"), ErrorKind::InvalidJob, "subject"),
        (format!("{p}.jobs.low.ACME"), format!(r#"{{"id":"b14","tenant":"acme","messages":{msgs}}}"#).into_bytes(), "_unknown", Some("b14"), ErrorKind::InvalidJob, "subject"),
        (normal.clone(), format!(r#"{{"id":"b15","tenant":"acme","user":"a\u0000b","messages":{msgs}}}"#).into_bytes(), "acme", Some("b15"), ErrorKind::InvalidJob, "U+0000"),
        (normal.clone(), format!(r#"{{"id":"b16","tenant":"acme","region":"mars","messages":{msgs}}}"#).into_bytes(), "acme", Some("b16"), ErrorKind::NoRoute, "region"),
        (normal.clone(), format!(r#"{{"id":"b17","tenant":"acme","model":"openai/gpt-4o","max_cost_usd":0.000001,"messages":{msgs}}}"#).into_bytes(), "acme", Some("b17"), ErrorKind::CostCapExceeded, "max_cost_usd"),
    ];
    let mut replies = env.subscribe("_INBOX.bad.>").await;
    for (subject, payload, tenant, id, kind, needle) in &cases {
        let seq = env.publish_raw(subject, payload.clone()).await;
        let id = id
            .map(str::to_string)
            .unwrap_or_else(|| format!("_seq{seq}"));
        let r = env.result(tenant, &id, 20).await;
        assert_eq!(r.status, Status::Failed, "{id}");
        let err = r.error.as_ref().unwrap();
        assert_eq!(err.kind, *kind, "{id}: {}", err.message);
        assert!(
            err.message.to_lowercase().contains(&needle.to_lowercase()),
            "{id}: message {:?} should name {needle:?}",
            err.message
        );
        let dlq = env
            .dlq(tenant, &id)
            .await
            .unwrap_or_else(|| panic!("{id}: no DLQ entry"));
        assert_eq!(dlq.error.kind, *kind);
        assert_eq!(&dlq.subject, subject);
        if matches!(kind, ErrorKind::MalformedJob | ErrorKind::InvalidJob) {
            assert!(dlq.payload_b64.is_some(), "{id}: raw bytes kept");
        }
        let (status, kind_col): (String, String) =
            sqlx::query_as("SELECT status, error_kind FROM jobs WHERE tenant=$1 AND id=$2")
                .bind(tenant)
                .bind(&id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), kind_col.as_str()),
            ("failed", kind.as_str())
        );
    }
    // A publish to a priority that does not exist is refused by JetStream itself.
    let refused = async {
        env.js
            .publish(
                format!("{p}.jobs.urgent.acme"),
                job("u1", "acme", "").into(),
            )
            .await?
            .await
    }
    .await;
    assert!(refused.is_err(), "no stream answers {p}.jobs.urgent.acme");
    // A bad job with a readable reply_to gets its failure there too.
    env.publish(Priority::Normal, "acme", r#"{"id":"b20","tenant":"acme","temperature":9,"reply_to":"_INBOX.bad.1","messages":[{"role":"user","content":"x"}]}"#).await;
    let reply = next_json(&mut replies, 10).await;
    assert_eq!(reply["error"]["kind"], "invalid_job");
    // No provider was called for any of them, and the worker still serves.
    assert_eq!(env.sim.stats().total, 0);
    env.publish(Priority::Normal, "acme", job("after", "acme", ""))
        .await;
    assert_eq!(
        env.result("acme", "after", 20).await.status,
        Status::Succeeded
    );
    assert_eq!(
        env.wait_jobs_left(0, 10).await,
        0,
        "nothing left to redeliver"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failure_then_success() {
    let env = TestEnv::new(|_| {}).await;
    // The only candidate fails once with a 500, then answers.
    env.sim.set_profile(FaultProfile {
        fail_first: 1,
        error_status: 500,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    env.publish(
        Priority::High,
        "acme",
        job("flaky", "acme", r#","model":"openai/gpt-4o""#),
    )
    .await;
    let r = env.result("acme", "flaky", 20).await;
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.attempts.len(), 2, "{:?}", r.attempts);
    assert_eq!(r.attempts[0].outcome, "server_error");
    assert_eq!(r.attempts[0].attempt, 1);
    assert_eq!(r.attempts[1].outcome, "succeeded");
    assert_eq!(r.attempts[1].attempt, 2);
    let (rows, deliveries): (i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM cost_rows WHERE job_id='flaky'), (SELECT deliveries FROM jobs WHERE id='flaky')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, deliveries),
        (2, 2),
        "one cost row per call, across two deliveries"
    );
    assert_eq!(env.sim.stats().calls("openai", "gpt-4o-2024-08-06"), 2);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_candidate_in_one_delivery() {
    let env = TestEnv::new(|_| {}).await;
    let mut per_model = std::collections::HashMap::new();
    per_model.insert(
        "meta-llama/Llama-3.1-8B-Instruct".to_string(),
        FaultProfile {
            error_rate: 1.0,
            error_status: 429,
            retry_after_s: Some(1),
            ..Default::default()
        },
    );
    env.sim.set_profile(FaultProfile {
        per_model,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    env.publish(
        Priority::Normal,
        "acme",
        job("fo", "acme", r#","model":"fast""#),
    )
    .await;
    let r = env.result("acme", "fo", 20).await;
    assert_eq!(r.status, Status::Succeeded);
    // `fast` is cheapest first: llama-3.1-8b, then gpt-4o-mini
    assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(r.attempts[0].outcome, "rate_limited");
    assert_eq!(r.attempts.len(), 2);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_goes_to_the_dlq_with_every_attempt() {
    let env = TestEnv::new(|c| {
        c.worker.max_deliveries = 2;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        error_rate: 1.0,
        error_status: 503,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    env.publish(
        Priority::Low,
        "acme",
        job(
            "doomed",
            "acme",
            r#","model":"fast","providers":{"allow":["openai","local"]}"#,
        ),
    )
    .await;
    let r = env.result("acme", "doomed", 30).await;
    assert_eq!(r.status, Status::Failed);
    assert_eq!(
        r.error.as_ref().unwrap().kind,
        ErrorKind::ProvidersExhausted
    );
    // 2 candidates (llama, gpt-4o-mini) × 2 deliveries
    assert_eq!(r.attempts.len(), 4, "{:?}", r.attempts);
    common::assert_schema("result", &serde_json::to_value(&r).unwrap());
    let dlq = env.dlq("acme", "doomed").await.expect("DLQ entry");
    common::assert_schema("dlq", &serde_json::to_value(&dlq).unwrap());
    assert_eq!(dlq.deliveries, 2);
    assert_eq!(dlq.attempts.len(), 4);
    assert_eq!(dlq.job.as_ref().unwrap()["id"], "doomed");
    assert!(dlq.payload_b64.is_none());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cost_rows WHERE job_id='doomed'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 4);
    assert_eq!(env.sim.stats().total, 4);
    assert_eq!(env.wait_jobs_left(0, 10).await, 0);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_ack_wait_is_not_redelivered() {
    let env = TestEnv::new(|c| {
        c.worker.ack_wait_s = 1;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 3500,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    env.publish(
        Priority::Normal,
        "acme",
        job("slow", "acme", r#","model":"openai/gpt-4o-mini""#),
    )
    .await;
    let r = env.result("acme", "slow", 20).await;
    assert_eq!(r.status, Status::Succeeded);
    assert!(r.latency_ms >= 3500);
    // Give a redelivery every chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.sim.stats().total, 1, "exactly one provider call");
    let deliveries: i32 = sqlx::query_scalar("SELECT deliveries FROM jobs WHERE id='slow'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 1);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A job whose (tenant, id) already has a committed succeeded result — a redelivery after
/// a crash between commit and ack, or a resubmission after the duplicate window — makes
/// no provider call: the stored result is published again, on the new reply_to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_job_delivered_again_makes_no_second_call() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    let mut replies = env.subscribe("_INBOX.again.>").await;
    env.publish(
        Priority::Normal,
        "acme",
        job("once", "acme", r#","reply_to":"_INBOX.again.1""#),
    )
    .await;
    let first = next_json(&mut replies, 20).await;
    assert_eq!(first["status"], "succeeded");
    env.publish(
        Priority::High,
        "acme",
        job("once", "acme", r#","reply_to":"_INBOX.again.2""#),
    )
    .await;
    let second = next_json(&mut replies, 20).await;
    assert_eq!(second, first, "the stored result, again");
    assert_eq!(env.sim.stats().total, 1, "no second provider call");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cost_rows WHERE job_id='once'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "no double charge");
    assert_eq!(env.wait_jobs_left(0, 10).await, 0);
    stop.cancel();
    worker.await.unwrap().unwrap();
}
