#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Operating switchyard through its CLI: submit, status, dead-letter list/show/replay and
//! cost reports, against real NATS and Postgres.

mod common;

use common::{job, TestEnv};
use rust_decimal::Decimal;
use switchyard::job::{ErrorKind, Priority, Status};
use switchyard::providers::simulator::FaultProfile;
use switchyard::queue::publish::remove_dead_letter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed_and_costs_reported() {
    let env = TestEnv::new(|c| c.worker.max_deliveries = 1).await;
    env.sim.set_profile(FaultProfile {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    env.publish(
        Priority::Low,
        "acme",
        job("d1", "acme", r#","model":"openai/gpt-4o-mini""#),
    )
    .await;
    env.publish(Priority::Normal, "acme", b"garbage".to_vec())
        .await;
    let r = env.result("acme", "d1", 20).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::ProvidersExhausted);

    let (code, out, err) = env.cli(&["dlq", "list", "--format", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (code, out, _) = env
        .cli(&["dlq", "list", "--kind", "providers_exhausted"])
        .await;
    assert_eq!(code, 0);
    assert!(out.contains("d1") && !out.contains("_seq"), "{out}");
    let (code, out, _) = env.cli(&["dlq", "show", "--tenant", "acme", "d1"]).await;
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["job"]["id"], "d1");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    let (code, _, err) = env.cli(&["dlq", "list", "--kind", "nonsense"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("not an error kind"), "{err}");

    // The provider is healthy again: replay with another model.
    env.sim.set_profile(FaultProfile::default());
    let (code, out, err) = env
        .cli(&[
            "dlq", "replay", "--tenant", "acme", "d1", "--model", "llama",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    for _ in 0..100 {
        let r = env.result("acme", "d1", 5).await;
        if r.status == Status::Succeeded {
            assert_eq!(r.model.as_deref(), Some("llama-3.1-8b"));
            assert_eq!(r.attempts.len(), 2, "the failed call and the replayed one");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        env.dlq("acme", "d1").await.is_none(),
        "replayed dead letter removed"
    );
    // The malformed one cannot be replayed: it says so.
    let (code, _, err) = env.cli(&["dlq", "replay", "--all"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not a JSON object"), "{err}");

    // Status and cost report.
    let (code, out, _) = env.cli(&["status", "--tenant", "acme", "d1"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("\"status\": \"succeeded\""), "{out}");
    let (code, _, _) = env.cli(&["status", "--tenant", "acme", "nope"]).await;
    assert_eq!(code, 3);
    let (code, out, err) = env
        .cli(&[
            "report",
            "costs",
            "--by",
            "tenant,model,outcome",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let total: Decimal = rows
        .iter()
        .map(|r| r["cost_usd"].as_str().unwrap().parse::<Decimal>().unwrap())
        .sum();
    let db: Decimal = sqlx::query_scalar("SELECT cost_usd FROM jobs WHERE id='d1'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(total, db);
    assert!(total > Decimal::ZERO);
    let (code, out, _) = env
        .cli(&["report", "costs", "--by", "day", "--format", "csv"])
        .await;
    assert_eq!(code, 0);
    assert!(out.starts_with("day,calls,failed_calls"), "{out}");
    // by A/B variant (from the stored result's route); none here, so one '' group
    let (code, out, err) = env
        .cli(&["report", "costs", "--by", "variant", "--format", "csv"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("variant,calls,failed_calls"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, _, err) = env.cli(&["report", "costs", "--by", "planet"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("planet"));
    // A call under way (its `started` row) is a call, not a failed one.
    let totals = |out: String| -> (i64, i64) {
        out.lines().fold((0, 0), |(c, f), l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                c + v["calls"].as_i64().unwrap(),
                f + v["failed_calls"].as_i64().unwrap(),
            )
        })
    };
    let (code, out, err) = env.cli(&["report", "costs", "--format", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let (calls, failed) = totals(out);
    sqlx::query(
        "INSERT INTO cost_rows (tenant, job_id, attempt, provider, model, outcome)
         VALUES ('acme', 'in-flight', 1, 'selfhosted', 'llama-3.1-8b', 'started')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (code, out, err) = env.cli(&["report", "costs", "--format", "json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(totals(out), (calls + 1, failed));
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A replay that fails again at once keeps its new dead letter: replay deletes only the
/// entry it replayed, by its stream sequence, never the job's subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_again_keeps_its_new_dead_letter() {
    let env = TestEnv::new(|c| c.worker.max_deliveries = 1).await;
    env.fail_model("gpt-4o-mini-2024-07-18");
    let (stop, worker) = env.start_worker().await;
    let pinned = job("r1", "acme", r#","model":"openai/gpt-4o-mini""#);
    env.publish(Priority::Normal, "acme", pinned).await;
    let r = env.result("acme", "r1", 20).await;
    assert_eq!(r.error.unwrap().kind, ErrorKind::ProvidersExhausted);
    let names = env.names();
    let subject = names.dlq_subject("acme", "r1");
    let dlq = env.js.get_stream(names.dlq_stream()).await.unwrap();
    let first = dlq.get_last_raw_message_by_subject(&subject).await.unwrap();
    assert_eq!(env.dlq("acme", "r1").await.unwrap().attempts.len(), 1);

    let (code, out, err) = env.cli(&["dlq", "replay", "--tenant", "acme", "r1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // The replayed job fails again at once, into a new dead letter with both calls.
    let mut attempts = 0;
    for _ in 0..100 {
        attempts = env.dlq("acme", "r1").await.map_or(0, |e| e.attempts.len());
        if attempts == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        attempts, 2,
        "the new dead letter has the old and the new call"
    );
    let second = dlq.get_last_raw_message_by_subject(&subject).await.unwrap();
    assert!(second.sequence > first.sequence);
    // A replayer that deletes the old entry only now (the new one already replaced it)
    // removes nothing more.
    remove_dead_letter(&dlq, first.sequence).await.unwrap();
    let kept = dlq.get_last_raw_message_by_subject(&subject).await.unwrap();
    assert_eq!(kept.sequence, second.sequence);
    let (code, out, _) = env.cli(&["dlq", "list", "--format", "json"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_waits_for_every_result_including_bad_lines() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let mut text = String::new();
    for i in 0..20 {
        text.push_str(&job(
            &format!("sub{i}"),
            if i % 2 == 0 { "acme" } else { "globex" },
            "",
        ));
        text.push('\n');
    }
    text.push_str("not json at all\n");
    text.push_str(&job("bad", "acme", r#","temperature":5"#));
    text.push('\n');
    std::fs::write(&file, text).unwrap();
    let results = dir.path().join("out.jsonl");
    let (code, _, err) = env
        .cli(&[
            "submit",
            file.to_str().unwrap(),
            "--priority",
            "high",
            "--wait",
            "--quiet",
            "--timeout-s",
            "60",
            "--results",
            results.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let out = std::fs::read_to_string(results).unwrap();
    assert_eq!(out.lines().count(), 22);
    assert!(
        err.contains("succeeded")
            && err.contains("failed/malformed_job")
            && err.contains("failed/invalid_job"),
        "{err}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE priority='high'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 22);
    stop.cancel();
    worker.await.unwrap().unwrap();
}
