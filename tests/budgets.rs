#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Budgets: reserve before the call, settle at commit; fail or defer when one would be overrun.

mod common;

use common::{job, TestEnv};
use rust_decimal::Decimal;
use std::time::Duration;
use switchyard::job::{ErrorKind, Priority, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_fail_or_defer_jobs_and_track_spend_exactly() {
    let env = TestEnv::new(|_| {}).await;
    let (code, _, err) = env
        .cli(&[
            "budget", "set", "--tenant", "acme", "--period", "day", "--limit", "0.0001",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let (stop, worker) = env.start_worker().await;
    let pinned = r#","model":"openai/gpt-4o-mini","max_tokens":1000"#;

    // Worst case ≈ 1000 × 0.60 / 1e6 = 0.0006 > 0.0001: refused before any call.
    env.publish(Priority::Normal, "acme", job("over", "acme", pinned))
        .await;
    let r = env.result("acme", "over", 20).await;
    assert_eq!(r.status, Status::Failed);
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::BudgetExceeded);
    assert!(e.message.contains("day budget of acme"), "{}", e.message);
    assert_eq!(env.sim.stats().total, 0);
    assert!(env.dlq("acme", "over").await.is_some());

    // Raise it: jobs run, spend is settled exactly, nothing stays held.
    let (code, _, _) = env
        .cli(&[
            "budget", "set", "--tenant", "acme", "--period", "day", "--limit", "1",
        ])
        .await;
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_secs(6)).await; // the worker's budget-tenant cache refreshes every 5 s
    for i in 0..5 {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("ok{i}"), "acme", pinned),
        )
        .await;
    }
    for i in 0..5 {
        assert_eq!(
            env.result("acme", &format!("ok{i}"), 20).await.status,
            Status::Succeeded
        );
    }
    let (spent, held): (Decimal, Decimal) = sqlx::query_as(
        "SELECT spent_usd, reserved_usd FROM budgets WHERE tenant='acme' AND feature IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let ledger: Decimal =
        sqlx::query_scalar("SELECT sum(cost_usd) FROM cost_rows WHERE tenant='acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(spent, ledger);
    assert!(spent > Decimal::ZERO);
    assert_eq!(held, Decimal::ZERO);
    let (code, out, _) = env
        .cli(&["budget", "show", "--tenant", "acme", "--format", "json"])
        .await;
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        shown["spent_usd"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        ledger
    );

    // A feature budget with policy defer: the job waits, no call, no failure.
    let (code, _, _) = env
        .cli(&[
            "budget",
            "set",
            "--tenant",
            "globex",
            "--feature",
            "test",
            "--period",
            "month",
            "--limit",
            "0",
            "--policy",
            "defer",
        ])
        .await;
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let calls = env.sim.stats().total;
    env.publish(Priority::High, "globex", job("later", "globex", ""))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM jobs WHERE tenant='globex' AND id='later'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "running", "deferred, not failed");
    assert_eq!(env.sim.stats().total, calls, "no call while deferred");
    assert_eq!(env.jobs_left().await, 1, "still queued for later");
    let (code, _, err) = env
        .cli(&[
            "budget", "set", "--tenant", "acme", "--period", "week", "--limit", "1",
        ])
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("week"), "{err}");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Many reservations in one batch (one transaction) are decided one after another against
/// what the earlier ones hold: a limit of 1 takes three holds of 0.3 and denies the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_reservations_never_holds_more_than_the_limit() {
    use switchyard::budget::Denial;
    use switchyard::store::budgets::{ReserveRequest, Reserver};
    let env = TestEnv::new(|_| {}).await;
    let (code, _, err) = env
        .cli(&[
            "budget", "set", "--tenant", "acme", "--period", "day", "--limit", "1",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    // A long linger: the requests below all land in one batch.
    let reserver = Reserver::start(env.pool.clone(), 64, Duration::from_millis(300));
    let ask = |i: usize, tenant: &str| ReserveRequest {
        lease_token: format!("tok-{tenant}-{i}"),
        tenant: tenant.to_string(),
        job_id: format!("j{i}"),
        feature: None,
        amount: Decimal::new(3, 1),
        now: chrono::Utc::now(),
    };
    let asks: Vec<_> = (0..5)
        .map(|i| ask(i, "acme"))
        .chain([ask(9, "globex")])
        .map(|req| {
            let r = reserver.clone();
            tokio::spawn(async move { r.reserve(req).await })
        })
        .collect();
    let (mut held, mut denied, mut none) = (0, 0, 0);
    for a in asks {
        match a.await.unwrap().unwrap() {
            Some(Ok(())) => held += 1,
            Some(Err(Denial::Fail(msg))) => {
                assert!(msg.contains("day budget of acme"), "{msg}");
                denied += 1;
            }
            Some(Err(other)) => panic!("unexpected denial {other:?}"),
            None => none += 1,
        }
    }
    assert_eq!((held, denied, none), (3, 2, 1));
    let reserved: Decimal =
        sqlx::query_scalar("SELECT reserved_usd FROM budgets WHERE tenant = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(reserved, Decimal::new(9, 1));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM budget_reservations")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);
    env.cleanup().await;
}

/// A claim that opens a job (issue 12: one transaction before the first call) takes the
/// lease, holds the reservation and writes the first call's `started` row together; a
/// denied reservation writes no started row, a job claimed before gets none (its attempt
/// numbers follow its earlier calls), and a job another delivery holds gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_opens_a_job_with_its_reservation_and_started_row_in_one_transaction() {
    use std::sync::Arc;
    use switchyard::budget::Denial;
    use switchyard::store::{ClaimOutcome, ClaimRequest, Claimer, Opened, Opening};
    let env = TestEnv::new(|_| {}).await;
    let (code, _, err) = env
        .cli(&[
            "budget", "set", "--tenant", "acme", "--period", "day", "--limit", "1",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let model = Arc::new(env.config.models[0].clone());
    let req = |tenant: &str, id: &str, token: &str, opening: Option<Opening>| ClaimRequest {
        tenant: tenant.into(),
        id: id.into(),
        feature: None,
        user_id: Some("u1".into()),
        priority: "normal",
        task: "general",
        requested_model: "auto".into(),
        lease_token: token.into(),
        stream_seq: 1,
        opening,
    };
    let opening = |amount: Option<i64>| Opening {
        reserve: amount.map(|a| (Decimal::new(a, 1), chrono::Utc::now())),
        first: model.clone(),
    };
    // Set up, with a lease of 200 ms: "again" was claimed before and its lease ran out;
    // "held" is claimed by another delivery with a live lease (claimed last, below).
    let (short, _) = Claimer::start(
        env.pool.clone(),
        64,
        Duration::from_millis(1),
        Duration::from_millis(200),
    );
    let first = short
        .claim(req("acme", "again", "old", None))
        .await
        .unwrap();
    assert!(matches!(first, ClaimOutcome::Claimed { .. }), "{first:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (long, _) = Claimer::start(
        env.pool.clone(),
        64,
        Duration::from_millis(1),
        Duration::from_secs(30),
    );
    let held = long
        .claim(req("acme", "held", "other", None))
        .await
        .unwrap();
    assert!(matches!(held, ClaimOutcome::Claimed { .. }), "{held:?}");

    // One batch (a long linger): three holds of 0.3 fit the limit of 1, the fourth and
    // fifth do not.
    let (claimer, _) = Claimer::start(
        env.pool.clone(),
        64,
        Duration::from_millis(300),
        Duration::from_secs(30),
    );
    let asks = [
        req("acme", "n0", "t0", Some(opening(Some(3)))),
        req("acme", "n1", "t1", Some(opening(Some(3)))),
        req("acme", "again", "t2", Some(opening(Some(3)))),
        req("acme", "n3", "t3", Some(opening(Some(3)))),
        req("acme", "n4", "t4", Some(opening(Some(3)))),
        req("acme", "held", "t5", Some(opening(Some(3)))),
        req("globex", "g0", "t6", Some(opening(None))),
    ];
    let answers: Vec<_> = asks
        .into_iter()
        .map(|r| {
            let c = claimer.clone();
            let id = r.id.clone();
            tokio::spawn(async move { (id, c.claim(r).await.unwrap()) })
        })
        .collect();
    let (mut started, mut held_n, mut denied, mut busy) = (Vec::new(), 0, 0, 0);
    for a in answers {
        let (id, outcome) = a.await.unwrap();
        match outcome {
            ClaimOutcome::Claimed {
                opened:
                    Some(Opened {
                        reserved,
                        started: s,
                    }),
                prior,
                ..
            } => {
                if id == "again" {
                    assert!(
                        !s,
                        "a job claimed before gets no started row from its claim"
                    );
                    assert!(prior.is_empty(), "{prior:?}");
                }
                match reserved {
                    Some(Ok(())) => held_n += 1,
                    Some(Err(Denial::Fail(m))) => {
                        assert!(!s, "{id}: denied, yet a started row");
                        assert!(m.contains("day budget of acme"), "{m}");
                        denied += 1;
                    }
                    None => assert_eq!(id, "g0"),
                    other => panic!("{id}: {other:?}"),
                }
                if s {
                    started.push(id);
                }
            }
            ClaimOutcome::Busy(_) => {
                assert_eq!(id, "held");
                busy += 1;
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!((held_n, denied, busy), (3, 2, 1));
    started.sort();
    // Of the three acme jobs held, "again" writes its own started row; the others had
    // theirs written with the claim, as had globex's (no budget).
    assert_eq!(started.len(), 3, "{started:?}");
    assert!(started.contains(&"g0".to_string()), "{started:?}");
    let rows: Vec<(String, i32, String, String, Option<String>)> = sqlx::query_as(
        "SELECT job_id, attempt, outcome, model, user_id FROM cost_rows ORDER BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (id, attempt, outcome, m, user) in &rows {
        assert!(started.contains(id), "{rows:?}");
        assert_eq!((*attempt, outcome.as_str()), (1, "started"));
        assert_eq!(m, &model.name);
        assert_eq!(user.as_deref(), Some("u1"));
    }
    let (reserved, holds): (Decimal, i64) = sqlx::query_as(
        "SELECT (SELECT reserved_usd FROM budgets WHERE tenant = 'acme'),
                (SELECT count(*) FROM budget_reservations)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((reserved, holds), (Decimal::new(9, 1), 3));
    env.cleanup().await;
}
