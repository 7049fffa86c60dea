//! Helpers of the provider batch tests (tests/batch.rs, tests/batch_gemini.rs,
//! tests/batch_kill.rs): the batch config, each job's cost rows, and the checks of a job
//! answered by a provider batch.

use super::TestEnv;
use rust_decimal::Decimal;
use std::str::FromStr;
use std::time::Duration;
use switchyard::config::Config;
use switchyard::job::{JobResult, Status, Usage};

/// Batches on, small and quick (1 s waits and polls, a 2 s lease), with batch prices at
/// half the live ones for gpt-4o-mini, claude-3-5-haiku and gemini-2.0-flash.
pub fn batch_config(c: &mut Config) {
    c.batch.enabled = true;
    c.batch.max_jobs = 100;
    c.batch.max_wait_s = 1;
    c.batch.poll_interval_s = 1;
    c.batch.lease_s = 2;
    for m in &mut c.models {
        if m.name == "gpt-4o-mini" {
            // Half of every live price, as OpenAI's batch discount.
            m.batch_input_per_mtok = Some(Decimal::from_str("0.075").unwrap());
            m.batch_output_per_mtok = Some(Decimal::from_str("0.30").unwrap());
        }
        if m.name == "claude-3-5-haiku" {
            m.batch_input_per_mtok = Some(Decimal::from_str("0.40").unwrap());
            m.batch_output_per_mtok = Some(Decimal::from_str("2.00").unwrap());
        }
        if m.name == "gemini-2.0-flash" {
            // Gemini's batch mode: half the live price.
            m.batch_input_per_mtok = Some(Decimal::from_str("0.05").unwrap());
            m.batch_output_per_mtok = Some(Decimal::from_str("0.20").unwrap());
        }
    }
}

pub fn named_model(env: &TestEnv, name: &str) -> switchyard::config::ModelConfig {
    env.config
        .models
        .iter()
        .find(|m| m.name == name)
        .unwrap()
        .clone()
}

/// Each cost row of a job: (outcome, cost, usage, message).
pub async fn rows(env: &TestEnv, id: &str) -> Vec<(String, Decimal, Usage, Option<String>)> {
    let r: Vec<(String, Decimal, i64, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT outcome, cost_usd, input_tokens, cached_input_tokens, output_tokens, message
           FROM cost_rows WHERE tenant = 'acme' AND job_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    r.into_iter()
        .map(|(o, c, i, ci, out, m)| {
            (
                o,
                c,
                Usage {
                    input_tokens: i as u64,
                    cached_input_tokens: ci as u64,
                    output_tokens: out as u64,
                    ..Usage::default()
                },
                m,
            )
        })
        .collect()
}

/// The job's one cost row is a batch call at the batch price (half the live price), and
/// its result and row agree with it.
pub async fn assert_batched_on(env: &TestEnv, r: &JobResult, provider: &str, name: &str) {
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.provider.as_deref(), Some(provider));
    assert_eq!(r.model.as_deref(), Some(name));
    let rows = rows(env, &r.id).await;
    assert_eq!(rows.len(), 1, "{}: {rows:?}", r.id);
    let (outcome, cost, usage, message) = &rows[0];
    assert_eq!(outcome, "succeeded");
    assert!(
        message
            .as_deref()
            .unwrap_or("")
            .starts_with("batch sybatch_"),
        "{message:?}"
    );
    let m = named_model(env, name);
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    assert_eq!(Some(*cost), switchyard::cost::batch_cost_of(&m, usage));
    assert_eq!(
        *cost * Decimal::from(2),
        switchyard::cost::cost_of(&m, usage)
    );
    assert_eq!(r.cost_usd, *cost);
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].cost_usd, *cost);
    let job_cost: Decimal =
        sqlx::query_scalar("SELECT cost_usd FROM jobs WHERE tenant = 'acme' AND id = $1")
            .bind(&r.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(job_cost, *cost);
}

pub async fn wait_for<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

/// Run `scripts/lib/<script>` against this test's simulator with the official SDKs'
/// Python (`SWITCHYARD_SDK_PYTHON`), and require success and each of `needles` in its
/// output; `false` (and a "skipped" line) when no such Python is set.
pub async fn run_sdk_check(env: &TestEnv, script: &str, needles: &[&str]) -> bool {
    let Ok(python) = std::env::var("SWITCHYARD_SDK_PYTHON") else {
        eprintln!("skipped: SWITCHYARD_SDK_PYTHON is not set");
        return false;
    };
    let path = format!("{}/scripts/lib/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(python)
        .arg(path)
        .arg(env.sim_addr.to_string())
        .output()
        .await
        .expect("run the SDK check");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for n in needles {
        assert!(text.contains(n), "{text}");
    }
    true
}
