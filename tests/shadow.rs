#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Shadow evaluation (issue 15 part 3): a sampled job of a `[[shadow.routes]]` route also
//! runs on a candidate model after its result is out; the candidate's call has a cost
//! row marked `shadow`, the comparison a `shadow_evals` row, and the producer gets only
//! the primary's result. Two workers, real NATS, Postgres and the simulator.

mod common;

use common::{job, TestEnv};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::time::Duration;
use switchyard::config::{CompareKind, Config, ShadowRoute};
use switchyard::job::{JobResult, Priority, Status};

const PRIMARY: &str = "gpt-4o-mini";
const CANDIDATE: &str = "gpt-4.1-nano";

fn route(rate: f64, compare: CompareKind) -> ShadowRoute {
    ShadowRoute {
        name: "acme-all".into(),
        tenant: Some("acme".into()),
        feature: None,
        task: None,
        model: Some(PRIMARY.into()),
        candidate: CANDIDATE.into(),
        sample_rate: rate,
        compare,
        min_similarity: 0.9,
        judge: None,
        judge_prompt: None,
    }
}

async fn env(tweak: impl FnOnce(&mut Config)) -> TestEnv {
    TestEnv::new(tweak).await
}

/// Publish `n` jobs pinned to the primary, each replying on `<reply>`; the replies by
/// job id once every job has answered (at most `secs`).
async fn run_jobs(env: &TestEnv, n: usize, secs: u64) -> HashMap<String, Vec<JobResult>> {
    let reply = format!("_INBOX.{}.shadow", env.prefix);
    let mut sub = env.subscribe(&reply).await;
    for i in 0..n {
        let extra = format!(r#","model":"{PRIMARY}","reply_to":"{reply}""#);
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("sh-{i}"), "acme", &extra),
        )
        .await;
    }
    let mut got: HashMap<String, Vec<JobResult>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = tokio::time::timeout(left, futures::StreamExt::next(&mut sub))
            .await
            .expect("every reply in time")
            .unwrap();
        let r: JobResult = serde_json::from_slice(&m.payload).unwrap();
        got.entry(r.id.clone()).or_default().push(r);
    }
    // Nothing more comes: shadow work never publishes.
    tokio::time::sleep(Duration::from_millis(800)).await;
    while let Ok(Some(m)) = tokio::time::timeout(
        Duration::from_millis(50),
        futures::StreamExt::next(&mut sub),
    )
    .await
    {
        let r: JobResult = serde_json::from_slice(&m.payload).unwrap();
        got.entry(r.id.clone()).or_default().push(r);
    }
    got
}

/// Wait until `n` evaluations have ended (at most `secs`); how many did.
async fn wait_evals(env: &TestEnv, n: i64, secs: u64) -> i64 {
    let mut done = 0;
    for _ in 0..secs * 20 {
        done = sqlx::query_scalar("SELECT count(*) FROM shadow_evals WHERE state <> 'running'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

/// Every producer got exactly one result, the primary's.
fn assert_primary_only(replies: &HashMap<String, Vec<JobResult>>, n: usize) {
    assert_eq!(replies.len(), n);
    for (id, rs) in replies {
        assert_eq!(rs.len(), 1, "{id}: {} results", rs.len());
        assert_eq!(rs[0].status, Status::Succeeded, "{id}");
        assert_eq!(rs[0].model.as_deref(), Some(PRIMARY), "{id}");
        assert!(rs[0].attempts.iter().all(|a| a.model == PRIMARY), "{id}");
    }
}

#[tokio::test]
async fn every_sampled_job_is_shadowed_once_and_the_producer_gets_the_primary() {
    // Room for every job at once: with the default 8 slots a burst of 20 over two
    // workers drops some (measured: 12 of 20 evaluated), which is the bound working.
    let env = env(|c| {
        c.shadow.routes = vec![route(1.0, CompareKind::Json)];
        c.shadow.max_concurrent = 64;
    })
    .await;
    let (stop1, w1) = env.start_worker().await;
    let (stop2, w2) = env.start_worker().await;
    let n = 20;
    let replies = run_jobs(&env, n, 60).await;
    assert_primary_only(&replies, n);
    assert_eq!(wait_evals(&env, n as i64, 30).await, n as i64);

    // Exactly one evaluation and one shadow cost row per job; the job's own rows and
    // cost untouched.
    assert_eq!(
        count(&env, "SELECT count(*) FROM shadow_evals").await,
        n as i64
    );
    let per_job: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FILTER (WHERE shadow), count(*) FILTER (WHERE NOT shadow)
           FROM cost_rows GROUP BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(per_job.len(), n);
    for (id, shadow, own) in &per_job {
        assert_eq!((*shadow, *own), (1, 1), "{id}");
    }
    let wrong: i64 = count(
        &env,
        "SELECT count(*) FROM jobs j WHERE j.cost_usd <> (SELECT sum(cost_usd) FROM cost_rows c
            WHERE c.tenant = j.tenant AND c.job_id = j.id AND NOT c.shadow)",
    )
    .await;
    assert_eq!(wrong, 0, "a job's cost is its own calls'");
    let rows: Vec<(String, String, bool, Decimal, Decimal)> = sqlx::query_as(
        "SELECT e.candidate_model, c.outcome, e.agree, e.candidate_cost_usd, c.cost_usd
           FROM shadow_evals e JOIN cost_rows c
             ON c.tenant = e.tenant AND c.job_id = e.job_id AND c.shadow
          WHERE e.state = 'compared'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), n, "every evaluation compared");
    for (model, outcome, _, eval_cost, row_cost) in &rows {
        assert_eq!(model, CANDIDATE);
        assert_eq!(outcome, "succeeded");
        assert!(*row_cost > Decimal::ZERO);
        assert_eq!(eval_cost, row_cost);
    }

    // `report eval` says what the rows say.
    let (agreed, cand_cost, prim_cost): (i64, Decimal, Decimal) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE agree), sum(candidate_cost_usd), sum(primary_cost_usd)
           FROM shadow_evals",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let lines = env.cli_json(&["report", "eval", "--format", "json"]).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["route"], "acme-all");
    assert_eq!(l["primary_model"], PRIMARY);
    assert_eq!(l["candidate_model"], CANDIDATE);
    assert_eq!(l["evals"], n as i64);
    assert_eq!(l["compared"], n as i64);
    assert_eq!(l["agreed"], agreed);
    assert_eq!(l["failed"], 0);
    let dec = |v: &serde_json::Value| v.as_str().unwrap().parse::<Decimal>().unwrap();
    assert_eq!(dec(&l["candidate_cost_usd"]), cand_cost);
    assert_eq!(dec(&l["primary_cost_usd"]), prim_cost);
    assert_eq!(dec(&l["cost_diff_usd"]), cand_cost - prim_cost);
    let pct = (Decimal::from(agreed) * Decimal::ONE_HUNDRED / Decimal::from(n as i64))
        .round_dp(2)
        .normalize();
    assert_eq!(dec(&l["agree_pct"]), pct);
    // The candidate is cheaper per token (0.10 / 0.40 against 0.15 / 0.60).
    assert!(cand_cost < prim_cost, "{cand_cost} vs {prim_cost}");
    let csv = env
        .cli(&["report", "eval", "--format", "csv", "--route", "nope"])
        .await;
    assert_eq!(csv.0, 0, "{}", csv.2);
    assert_eq!(csv.1.lines().count(), 1, "only the header: {}", csv.1);

    stop1.cancel();
    stop2.cancel();
    w1.await.unwrap().unwrap();
    w2.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_zero_rate_shadows_nothing() {
    let env = env(|c| c.shadow.routes = vec![route(0.0, CompareKind::Exact)]).await;
    let (stop, w) = env.start_worker().await;
    let replies = run_jobs(&env, 5, 60).await;
    assert_primary_only(&replies, 5);
    assert_eq!(count(&env, "SELECT count(*) FROM shadow_evals").await, 0);
    assert_eq!(
        count(&env, "SELECT count(*) FROM cost_rows WHERE shadow").await,
        0
    );
    stop.cancel();
    w.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_candidate_is_recorded_and_the_producer_is_unaffected() {
    let env = env(|c| {
        c.shadow.routes = vec![route(1.0, CompareKind::Exact)];
        c.shadow.max_concurrent = 64;
    })
    .await;
    env.fail_model("gpt-4.1-nano-2025-04-14");
    let (stop1, w1) = env.start_worker().await;
    let (stop2, w2) = env.start_worker().await;
    let n = 8;
    let replies = run_jobs(&env, n, 60).await;
    assert_primary_only(&replies, n);
    assert_eq!(wait_evals(&env, n as i64, 30).await, n as i64);
    let evals: Vec<(String, Option<bool>, Option<String>)> =
        sqlx::query_as("SELECT state, agree, message FROM shadow_evals")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(evals.len(), n);
    for (state, agree, message) in &evals {
        assert_eq!(state, "failed");
        assert_eq!(*agree, None);
        let m = message.as_deref().unwrap();
        // The call failed (a 500), or, once the breaker opened, none was made.
        assert!(
            m.contains("server_error") || m.starts_with("no call"),
            "{m}"
        );
    }
    // Each failed call has its shadow row; a breaker-skipped one has none.
    let calls = count(&env, "SELECT count(*) FROM cost_rows WHERE shadow").await;
    let called = count(
        &env,
        "SELECT count(*) FROM shadow_evals WHERE message NOT LIKE 'no call%'",
    )
    .await;
    assert_eq!(calls, called);
    assert!(calls >= 1);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM cost_rows WHERE shadow AND outcome <> 'server_error'"
        )
        .await,
        0
    );
    let lines = env.cli_json(&["report", "eval", "--format", "json"]).await;
    assert_eq!(lines[0]["failed"], n as i64);
    assert_eq!(lines[0]["compared"], 0);
    assert!(lines[0]["agree_pct"].is_null(), "{lines:?}");
    stop1.cancel();
    stop2.cancel();
    w1.await.unwrap().unwrap();
    w2.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_judge_gives_the_verdict_and_its_call_is_a_shadow_row() {
    let mut r = route(1.0, CompareKind::Judge);
    r.judge = Some("gpt-4o".into());
    let env = env(|c| c.shadow.routes = vec![r]).await;
    let (stop, w) = env.start_worker().await;
    let n = 4;
    let replies = run_jobs(&env, n, 60).await;
    assert_primary_only(&replies, n);
    assert_eq!(wait_evals(&env, n as i64, 30).await, n as i64);
    let evals: Vec<(String, Option<bool>, Decimal, Option<String>)> =
        sqlx::query_as("SELECT state, agree, judge_cost_usd, message FROM shadow_evals")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (state, agree, judge_cost, message) in &evals {
        assert_eq!(state, "compared", "{message:?}");
        assert!(agree.is_some());
        assert!(*judge_cost > Decimal::ZERO);
    }
    let judge_rows = count(
        &env,
        "SELECT count(*) FROM cost_rows WHERE shadow AND model = 'gpt-4o' AND outcome = 'succeeded'",
    )
    .await;
    assert_eq!(judge_rows, n as i64);
    stop.cancel();
    w.await.unwrap().unwrap();
    env.cleanup().await;
}
