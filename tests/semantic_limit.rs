#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The semantic cache's embedding endpoint calls go through the rate limiter of the
//! provider `cache.embeddings.name` names (DESIGN.md "Semantic cache"), against real
//! NATS, Postgres and the simulator: with that provider at `rpm = 2`, four cacheable jobs
//! make two embedding calls (each one cost row); the other two wait `timeout_ms` for
//! admission, make no call and write no row, and are answered all the same (a miss).

mod common;

use common::TestEnv;
use rust_decimal::Decimal;
use switchyard::config::EmbeddingsKind;
use switchyard::job::{Priority, Status};

const EMBEDDER: &str = "text-embedding-3-small";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_calls_wait_for_their_providers_rate_limit() {
    let mut env = TestEnv::new(|c| {
        c.cache.enabled = true;
        c.cache.semantic = true;
        for p in &mut c.providers {
            if p.name == "openai" {
                p.rpm = Some(2);
            }
        }
    })
    .await;
    let addr = env.sim_addr;
    let e = &mut env.config.cache.embeddings;
    e.kind = EmbeddingsKind::Openai;
    e.name = "openai".into();
    e.base_url = Some(format!("http://{addr}/v1"));
    e.api_key_env = Some("SY_TEST_OPENAI_KEY".into());
    e.model = EMBEDDER.into();
    e.dimensions = Some(256);
    e.input_per_mtok = Decimal::new(2, 2);
    // Long enough for the worker to join its cluster (its first heartbeats): the limiter
    // admits nothing before.
    e.timeout_ms = 5000;
    let (stop, worker) = env.start_worker().await;
    // The completions go to the local model (no limits): only the embeddings are limited.
    let ids = ["r1", "r2", "r3", "r4"];
    for (i, id) in ids.iter().enumerate() {
        let job = serde_json::json!({
            "id": id, "tenant": "acme", "model": "local/llama-3.1-8b", "temperature": 0,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": format!("Summarise report number {i} of the audit in one line.")}],
        });
        env.publish(Priority::Normal, "acme", job.to_string()).await;
    }
    let mut embedded = 0;
    for id in ids {
        let r = env.result("acme", id, 60).await;
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        assert!(!r.cache_hit);
        let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
        match outcomes.as_slice() {
            ["embedding", "succeeded"] => embedded += 1,
            ["succeeded"] => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(embedded, 2, "two embedding calls in the minute's limit");
    assert_eq!(env.sim.stats().calls("openai", EMBEDDER), 2);
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cost_rows WHERE model = $1 AND outcome = 'embedding'",
    )
    .bind(EMBEDDER)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        rows, 2,
        "one cost row per embedding call, none for those not made"
    );
    let started: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cost_rows WHERE outcome = 'started'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(started, 0);
    stop.cancel();
    worker.await.unwrap().unwrap();
}
