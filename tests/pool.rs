#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A pool of workers under faults: one run per key at a time (leases), no call repeated
//! because our own commit failed, a row Postgres refuses fails alone, budget reservations
//! released on every path (the sweeper takes those of a killed worker), and every call
//! has exactly one cost row — counted against the simulator's own request counts.

mod common;

use common::{job, TestEnv};
use rust_decimal::Decimal;
use std::process::Stdio;
use std::time::Duration;
use switchyard::job::{ErrorKind, Priority, Status};
use switchyard::providers::simulator::FaultProfile;

const PINNED: &str = r#","model":"openai/gpt-4o-mini""#;

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

/// A budget for tenant `acme`.
async fn add_budget(env: &TestEnv, period: &str, limit: &str, policy: &str) {
    sqlx::query(
        "INSERT INTO budgets (tenant, period, limit_usd, policy) VALUES ('acme', $1, $2::numeric, $3)",
    )
    .bind(period)
    .bind(limit)
    .bind(policy)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// `acme`'s budget: limit, spent, reserved, and the sum of its cost rows.
async fn acme_budget(env: &TestEnv) -> (Decimal, Decimal, Decimal, Decimal) {
    let (limit, spent, reserved): (Decimal, Decimal, Decimal) = sqlx::query_as(
        "SELECT limit_usd, spent_usd, reserved_usd FROM budgets WHERE tenant = 'acme'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let billed: Decimal = sqlx::query_scalar(
        "SELECT coalesce(sum(cost_usd), 0) FROM cost_rows WHERE tenant = 'acme'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    (limit, spent, reserved, billed)
}

/// After a kill -9: every request the simulator received has its row, and the only rows
/// without a request are `worker_lost` ones (the worker died between writing the row and
/// sending the request).
async fn assert_rows_cover_calls(env: &TestEnv) {
    let rows = count(env, "SELECT count(*) FROM cost_rows").await as u64;
    let lost = count(
        env,
        "SELECT count(*) FROM cost_rows WHERE outcome = 'worker_lost'",
    )
    .await as u64;
    let calls = env.sim.stats().total;
    assert!(
        rows >= calls && rows - calls <= lost,
        "{rows} cost rows ({lost} worker_lost) vs {calls} requests the simulator received"
    );
    let started = count(
        env,
        "SELECT count(*) FROM cost_rows WHERE outcome = 'started'",
    )
    .await;
    assert_eq!(started, 0, "no call is left marked started");
}

/// Every job's cost rows against the simulator: one row per request it received.
async fn assert_one_row_per_call(env: &TestEnv) {
    let rows = count(env, "SELECT count(*) FROM cost_rows").await;
    assert_eq!(
        rows as u64,
        env.sim.stats().total,
        "cost rows vs requests the simulator received"
    );
    let started = count(
        env,
        "SELECT count(*) FROM cost_rows WHERE outcome = 'started'",
    )
    .await;
    assert_eq!(started, 0, "no call is left marked started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_never_run_one_key_at_once() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 16;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 300,
        ..Default::default()
    });
    let (stop_a, a) = env.start_worker().await;
    let (stop_b, b) = env.start_worker().await;
    // Every job twice, with no Nats-Msg-Id (as after the duplicate window), on two
    // priorities so that both copies are likely in flight at once on different workers.
    const N: usize = 30;
    for i in 0..N {
        let body = job(&format!("dup{i}"), "acme", PINNED);
        env.publish(Priority::Normal, "acme", body.clone()).await;
        env.publish(Priority::High, "acme", body).await;
    }
    assert_eq!(env.wait_succeeded(N as i64, 60).await, N as i64);
    // Both copies are acked: the second one found the first's result.
    assert_eq!(
        env.wait_jobs_left(0, 10).await,
        0,
        "both copies of every job acked"
    );
    assert_eq!(
        env.sim.stats().total,
        N as u64,
        "exactly one provider call per key"
    );
    assert_one_row_per_call(&env).await;
    for i in 0..N {
        let r = env.result("acme", &format!("dup{i}"), 5).await;
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(r.attempts.len(), 1, "one attempt, numbered once: {r:?}");
    }
    stop_a.cancel();
    stop_b.cancel();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

/// Cut this test's database off (every session ended, no new ones) and back.
async fn database_away(env: &TestEnv, away: bool) {
    let admin = sqlx::PgPool::connect(&common::admin_db_url())
        .await
        .unwrap();
    let allow = if away { "false" } else { "true" };
    sqlx::query(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
        env.db_name
    ))
    .execute(&admin)
    .await
    .unwrap();
    if away {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&env.db_name)
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_away_after_the_call_makes_no_second_call_and_pauses_pulls() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 8;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 1500,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    for i in 0..5 {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("pg{i}"), "acme", PINNED),
        )
        .await;
    }
    for _ in 0..100 {
        if env.sim.stats().total >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.sim.stats().total, 5, "five calls under way");
    // Postgres goes away while the calls run; their commits fail and wait in place.
    database_away(&env, true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Jobs published now are not pulled while Postgres is away.
    for i in 5..10 {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("pg{i}"), "acme", PINNED),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.sim.stats().total,
        5,
        "nothing new is called while Postgres is away"
    );
    database_away(&env, false).await;
    // The test's own pool lost its sessions too: it reconnects on use.
    let mut done = 0;
    for _ in 0..60 {
        if let Ok(n) =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
                .fetch_one(&env.pool)
                .await
        {
            done = n;
            if n == 10 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(done, 10, "every job succeeded once Postgres was back");
    assert_eq!(
        env.sim.stats().total,
        10,
        "no call was repeated because a commit failed"
    );
    assert_one_row_per_call(&env).await;
    let deliveries = count(&env, "SELECT max(deliveries)::bigint FROM jobs").await;
    assert_eq!(deliveries, 1, "no job was handed back");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_postgres_refuses_fails_alone_as_internal() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 64;
        c.worker.commit_linger_ms = 50;
    })
    .await;
    // Postgres itself refuses the succeeded row of one job (a real refusal, raised by
    // the server), as it would refuse a value it cannot store.
    sqlx::query(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.id = 'poison' AND NEW.status = 'succeeded' THEN
             RAISE EXCEPTION 'refusing the row of %', NEW.id;
           END IF;
           RETURN NEW;
         END $$",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON jobs
         FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    env.sim.set_profile(FaultProfile {
        latency_ms: 200,
        ..Default::default()
    });
    env.ensure_streams().await;
    env.publish(Priority::Normal, "acme", job("poison", "acme", PINNED))
        .await;
    for i in 0..20 {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("n{i}"), "acme", PINNED),
        )
        .await;
    }
    let (stop, worker) = env.start_worker().await;
    assert_eq!(
        env.wait_succeeded(20, 30).await,
        20,
        "the neighbours succeed"
    );
    let r = env.result("acme", "poison", 20).await;
    assert_eq!(r.status, Status::Failed);
    let err = r.error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::Internal);
    assert!(
        err.message.contains("refusing the row of poison"),
        "{err:?}"
    );
    assert_eq!(r.attempts.len(), 1, "its call is kept: {r:?}");
    assert!(env.dlq("acme", "poison").await.is_some(), "dead-lettered");
    let (status, deliveries): (String, i32) =
        sqlx::query_as("SELECT status, deliveries FROM jobs WHERE id = 'poison'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), deliveries), ("failed", 1), "no loop");
    assert_eq!(env.sim.stats().total, 21, "one call each, none repeated");
    assert_one_row_per_call(&env).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_reservations_are_swept_and_its_calls_have_rows() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 8;
        c.worker.lease_s = 2;
        c.worker.ack_wait_s = 3;
    })
    .await;
    add_budget(&env, "month", "100", "fail").await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 3000,
        ..Default::default()
    });
    env.ensure_streams().await;
    const N: usize = 12;
    for i in 0..N {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("k{i}"), "acme", PINNED),
        )
        .await;
    }
    let mut child = env
        .command()
        .arg("worker")
        .env("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "8")
        .env("SWITCHYARD_WORKER__LEASE_S", "2")
        .env("SWITCHYARD_WORKER__ACK_WAIT_S", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker binary starts");
    // Kill it while its calls are under way (their `started` rows are written).
    let mut started = 0;
    for _ in 0..400 {
        started = count(
            &env,
            "SELECT count(*) FROM cost_rows WHERE outcome = 'started'",
        )
        .await;
        if started >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started >= 8, "calls under way: {started}");
    child.kill().await.unwrap();
    let held = count(&env, "SELECT count(*) FROM budget_reservations").await;
    assert!(held > 0, "the killed worker left reservations behind");
    let (stop, worker) = env.start_worker().await;
    assert_eq!(env.wait_succeeded(N as i64, 60).await, N as i64);
    // The dead worker's calls were recorded before they were made.
    let lost = count(
        &env,
        "SELECT count(*) FROM cost_rows WHERE outcome = 'worker_lost'",
    )
    .await;
    let outcomes: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT job_id, outcome, attempt FROM cost_rows ORDER BY job_id, attempt")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(
        lost >= 8,
        "calls cut off by the kill have rows: {lost} {outcomes:?}"
    );
    assert_rows_cover_calls(&env).await;
    // The sweeper gives back what the dead worker held.
    let mut left = held;
    for _ in 0..60 {
        left = count(&env, "SELECT count(*) FROM budget_reservations").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(left, 0, "every reservation released");
    let (_, spent, reserved, billed) = acme_budget(&env).await;
    assert_eq!(reserved, Decimal::ZERO, "nothing held");
    assert_eq!(spent, billed, "spend is what the cost rows say");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_defer_does_not_spend_a_delivery() {
    let env = TestEnv::new(|c| {
        c.worker.max_deliveries = 1;
    })
    .await;
    add_budget(&env, "month", "0", "defer").await;
    let (stop, worker) = env.start_worker().await;
    env.publish(Priority::Normal, "acme", job("d1", "acme", PINNED))
        .await;
    let mut free = 0;
    for _ in 0..100 {
        free = sqlx::query_scalar::<_, i32>("SELECT free_deliveries FROM jobs WHERE id = 'd1'")
            .fetch_optional(&env.pool)
            .await
            .unwrap()
            .unwrap_or(0);
        if free >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(free, 1, "the defer was recorded as a free hand-back");
    let held = count(&env, "SELECT count(*) FROM budget_reservations").await;
    assert_eq!(held, 0, "a deferred job holds nothing");
    assert_eq!(env.sim.stats().total, 0, "no call while deferred");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_racing_one_budget_never_overspend_it() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 32;
    })
    .await;
    // A limit that a fraction of the jobs' worst cases fits in.
    add_budget(&env, "day", "0.004", "fail").await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 50,
        ..Default::default()
    });
    let workers = [
        env.start_worker().await,
        env.start_worker().await,
        env.start_worker().await,
    ];
    const N: usize = 300;
    for i in 0..N {
        env.publish(
            Priority::Normal,
            "acme",
            job(
                &format!("b{i}"),
                "acme",
                r#","model":"openai/gpt-4o-mini","max_tokens":200"#,
            ),
        )
        .await;
    }
    let mut done = 0;
    for _ in 0..600 {
        done = count(&env, "SELECT count(*) FROM jobs WHERE status <> 'running'").await;
        if done == N as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done, N as i64, "every job ended");
    let denied = count(
        &env,
        "SELECT count(*) FROM jobs WHERE error_kind = 'budget_exceeded'",
    )
    .await;
    assert!(
        denied > 0 && denied < N as i64,
        "the budget ran out part way: {denied}"
    );
    let (limit, spent, reserved, billed) = acme_budget(&env).await;
    assert!(spent <= limit, "spent {spent} of {limit}");
    assert_eq!(spent, billed, "spend is the cost rows' sum");
    assert_eq!(reserved, Decimal::ZERO);
    assert_one_row_per_call(&env).await;
    for (stop, w) in workers {
        stop.cancel();
        w.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_budget_reaches_running_workers_at_once() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    // The worker learns that acme has no budget …
    env.publish(Priority::Normal, "acme", job("free", "acme", PINNED))
        .await;
    assert_eq!(
        env.result("acme", "free", 20).await.status,
        Status::Succeeded
    );
    // … then an operator sets one of 0 USD: the next job is refused, well within the
    // 5 s that the worker would otherwise keep its last reading.
    let (code, _, err) = env
        .cli(&[
            "budget", "set", "--tenant", "acme", "--period", "day", "--limit", "0",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.publish(Priority::Normal, "acme", job("capped", "acme", PINNED))
        .await;
    let r = env.result("acme", "capped", 20).await;
    assert_eq!(
        r.error.map(|e| e.kind),
        Some(ErrorKind::BudgetExceeded),
        "the change was pushed to the worker"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}
