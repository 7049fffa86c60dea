#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The semantic response cache end to end, against real NATS, Postgres and the
//! simulator: a paraphrased prompt of the same tenant is answered without a completion
//! call (the simulator's counters say so) and what it saved is recorded like an exact
//! hit; another tenant, another number or another system prompt never hits; an expired
//! entry is not served; `switchyard cache forget` drops the entry that answered a job;
//! an embedding endpoint's call is a cost row of its own, and when the endpoint fails the
//! job is still answered (a miss).

mod common;

use common::TestEnv;
use rust_decimal::Decimal;
use switchyard::config::{Config, EmbeddingsKind};
use switchyard::job::{JobResult, Priority, Status};

const MODEL: &str = "openai/gpt-4o-mini";
const UPSTREAM: &str = "gpt-4o-mini-2024-07-18";
const EMBEDDER: &str = "text-embedding-3-small";

/// A stored prompt and a paraphrase of it that the built-in embedder scores ≥ 0.92.
const PROMPT: &str = "Write a short product description for a stainless steel water bottle.";
const PARAPHRASE: &str = "Write a short description of a stainless steel water bottle product.";

fn semantic_on(c: &mut Config) {
    c.cache.enabled = true;
    c.cache.semantic = true;
}

fn ask(id: &str, tenant: &str, system: &str, prompt: &str) -> String {
    serde_json::json!({
        "id": id, "tenant": tenant, "feature": "ingest", "model": MODEL, "temperature": 0,
        "max_tokens": 64,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
    })
    .to_string()
}

async fn run(env: &TestEnv, tenant: &str, id: &str, payload: String) -> JobResult {
    env.publish(Priority::Normal, tenant, payload).await;
    let r = env.result(tenant, id, 60).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    r
}

fn chat_calls(env: &TestEnv) -> u64 {
    env.sim.stats().calls("openai", UPSTREAM)
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

/// (cache_hit, cache_saved_usd, cache_source) of a job's row.
async fn row(env: &TestEnv, tenant: &str, id: &str) -> (bool, Decimal, Option<String>) {
    sqlx::query_as(
        "SELECT cache_hit, cache_saved_usd, cache_source FROM jobs WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_hits_within_its_tenant_and_nothing_else_does() {
    let env = TestEnv::new(semantic_on).await;
    let (stop, worker) = env.start_worker().await;
    let sys = "You are a careful legal assistant.";
    let first = run(&env, "acme", "s1", ask("s1", "acme", sys, PROMPT)).await;
    assert!(!first.cache_hit);
    assert_eq!(chat_calls(&env), 1);

    let para = run(&env, "acme", "s2", ask("s2", "acme", sys, PARAPHRASE)).await;
    assert!(para.cache_hit, "{para:?}");
    assert_eq!(
        chat_calls(&env),
        1,
        "a semantic hit makes no completion call"
    );
    assert_eq!(para.output, first.output);
    assert!(
        para.attempts.is_empty(),
        "the built-in embedder makes no call"
    );
    assert_eq!(para.cost_usd, Decimal::ZERO);
    let reason = &para.route.as_ref().unwrap().reason;
    assert!(
        reason.contains("answered by the semantic cache (similarity 0.9"),
        "{reason}"
    );
    assert!(reason.contains("to job s1)"), "{reason}");
    assert_eq!(
        row(&env, "acme", "s2").await,
        (true, first.cost_usd, Some("s1".into()))
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM cost_rows WHERE job_id = 's2'").await,
        0
    );

    // Another tenant with the very same paraphrase: a miss, a call.
    let theirs = run(&env, "globex", "s2", ask("s2", "globex", sys, PARAPHRASE)).await;
    assert!(!theirs.cache_hit);
    assert_eq!(chat_calls(&env), 2);
    // Same words, another number; another system prompt; another meaning: misses.
    for (id, system, prompt) in [
        (
            "n1",
            sys,
            "Write a short description of a 750 ml stainless steel water bottle product.",
        ),
        ("n2", "You are a terse assistant.", PARAPHRASE),
        (
            "n3",
            sys,
            "Write a short product description for a stainless steel coffee mug.",
        ),
    ] {
        let r = run(&env, "acme", id, ask(id, "acme", system, prompt)).await;
        assert!(!r.cache_hit, "{id} hit: {r:?}");
    }
    assert_eq!(chat_calls(&env), 5);
    // The exact cache is asked first: an identical prompt is an exact hit.
    let exact = run(&env, "acme", "s3", ask("s3", "acme", sys, PROMPT)).await;
    assert!(exact.cache_hit);
    let reason = &exact.route.as_ref().unwrap().reason;
    assert!(
        reason.contains("answered by the exact cache (job s1)"),
        "{reason}"
    );
    assert_eq!(chat_calls(&env), 5);
    // Every stored answer carries its vector and bands.
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM cache_entries WHERE bands IS NULL OR embedding IS NULL"
        )
        .await,
        0
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_drops_the_entry_and_expired_entries_are_not_served() {
    let env = TestEnv::new(semantic_on).await;
    let (stop, worker) = env.start_worker().await;
    let sys = "Be brief.";
    run(&env, "acme", "s1", ask("s1", "acme", sys, PROMPT)).await;
    assert!(
        run(&env, "acme", "s2", ask("s2", "acme", sys, PARAPHRASE))
            .await
            .cache_hit
    );
    // The hit gave a bad answer: forget it by the job that got it.
    let (code, out, err) = env
        .cli(&["cache", "forget", "--tenant", "acme", "--job", "s2"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 cache entry of job \"s1\" dropped"), "{out}");
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 0);
    let again = run(&env, "acme", "s3", ask("s3", "acme", sys, PARAPHRASE)).await;
    assert!(!again.cache_hit, "forgotten: called again");
    assert_eq!(chat_calls(&env), 2);
    // Forget by the job that stored it; an unknown job is exit 3.
    let (code, out, _) = env
        .cli(&["cache", "forget", "--tenant", "acme", "--job", "s3"])
        .await;
    assert_eq!(code, 0);
    assert!(out.contains("1 cache entry"), "{out}");
    let (code, _, err) = env
        .cli(&["cache", "forget", "--tenant", "acme", "--job", "nope"])
        .await;
    assert_eq!(code, 3, "{err}");

    // TTL: an expired entry is not served to a paraphrase.
    run(&env, "acme", "t1", ask("t1", "acme", sys, PROMPT)).await;
    sqlx::query(
        "UPDATE cache_entries SET created_at = now() - interval '2 days',
                                  expires_at = now() - interval '1 day'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let late = run(&env, "acme", "t2", ask("t2", "acme", sys, PARAPHRASE)).await;
    assert!(!late.cache_hit);
    assert_eq!(chat_calls(&env), 4);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

fn endpoint(env_addr: std::net::SocketAddr) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        semantic_on(c);
        let e = &mut c.cache.embeddings;
        e.kind = EmbeddingsKind::Openai;
        e.name = "openai".into();
        e.base_url = Some(format!("http://{env_addr}/v1"));
        e.api_key_env = Some("SY_TEST_OPENAI_KEY".into());
        e.model = EMBEDDER.into();
        e.dimensions = Some(256);
        e.input_per_mtok = Decimal::new(2, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_endpoint_call_is_a_cost_row_and_its_failure_is_a_miss() {
    let mut env = TestEnv::new(|_| {}).await;
    // The simulator's address is known once it runs.
    endpoint(env.sim_addr)(&mut env.config);
    let sim = &env.sim;
    let (stop, worker) = env.start_worker().await;
    let sys = "Be exact.";
    let first = run(&env, "acme", "e1", ask("e1", "acme", sys, PROMPT)).await;
    assert!(!first.cache_hit);
    assert_eq!(first.attempts.len(), 2, "{:?}", first.attempts);
    assert_eq!(first.attempts[0].outcome, "embedding");
    assert_eq!(first.attempts[0].model, EMBEDDER);
    assert_eq!(first.attempts[1].outcome, "succeeded");
    assert_eq!(sim.stats().calls("openai", EMBEDDER), 1);
    let embed_cost = first.attempts[0].cost_usd;
    assert!(embed_cost > Decimal::ZERO);
    assert_eq!(
        count(&env, "SELECT count(*) FROM cost_rows WHERE job_id = 'e1'").await,
        2
    );

    let hit = run(&env, "acme", "e2", ask("e2", "acme", sys, PARAPHRASE)).await;
    assert!(hit.cache_hit, "{hit:?}");
    assert_eq!(chat_calls(&env), 1);
    assert_eq!(sim.stats().calls("openai", EMBEDDER), 2);
    assert_eq!(hit.attempts.len(), 1);
    assert_eq!(hit.attempts[0].outcome, "embedding");
    assert_eq!(
        hit.cost_usd, hit.attempts[0].cost_usd,
        "only the embedding was billed"
    );
    // What the hit saved is the completion's cost, not the embedding's.
    assert_eq!(row(&env, "acme", "e2").await.1, first.attempts[1].cost_usd);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM cost_rows WHERE job_id = 'e2' AND outcome = 'embedding'"
        )
        .await,
        1
    );

    // The endpoint fails: a miss, the job is called and answered, nothing stored by
    // meaning.
    let broken = switchyard::providers::simulator::FaultProfile {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    };
    sim.set_profile(switchyard::providers::simulator::FaultProfile {
        per_model: [(EMBEDDER.to_string(), broken)].into(),
        ..Default::default()
    });
    let down = run(
        &env,
        "acme",
        "e3",
        ask(
            "e3",
            "acme",
            sys,
            "Write one short product description for a stainless steel water bottle.",
        ),
    )
    .await;
    assert!(!down.cache_hit);
    assert_eq!(down.attempts[0].outcome, "embedding_failed");
    assert_eq!(down.attempts[0].status, Some(500));
    assert_eq!(down.attempts.last().unwrap().outcome, "succeeded");
    assert_eq!(chat_calls(&env), 2);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM cache_entries WHERE job_id = 'e3' AND bands IS NULL"
        )
        .await,
        1,
        "stored for the exact cache only"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}

/// The simulator's `/v1/embeddings` against the official `openai` Python SDK
/// (`scripts/lib/sdk_embeddings.py`), when `SWITCHYARD_SDK_VENV` names a venv that has it
/// (skipped otherwise: tests need no internet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_accepts_the_simulators_embeddings() {
    let Ok(venv) = std::env::var("SWITCHYARD_SDK_VENV") else {
        eprintln!("SWITCHYARD_SDK_VENV not set: skipped");
        return;
    };
    let env = TestEnv::new(|_| {}).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/sdk_embeddings.py");
    let out = tokio::process::Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .arg(format!("http://{}", env.sim_addr))
        .output()
        .await
        .expect("run the SDK check");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("4 passed, 0 failed"), "{text}");
    env.cleanup().await;
}
