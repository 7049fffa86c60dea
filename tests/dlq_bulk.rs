#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Dead letters in bulk through the CLI, against real NATS and Postgres: list with
//! filters and a count, replay a filter with overrides (twice at once: nothing runs
//! twice), purge with a confirmation.

mod common;

use common::TestEnv;
use std::time::Duration;
use switchyard::job::{Priority, Status};

/// A job with a feature; `extra` is spliced in as more fields.
fn job(id: &str, tenant: &str, feature: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","tenant":"{tenant}","feature":"{feature}","messages":[{{"role":"user","content":"Say something about {id}"}}]{extra}}}"#
    )
}

const PINNED: &str = r#","model":"openai/gpt-4o-mini""#;
const INVALID: &str = r#","temperature":5"#;

/// `n` jobs `<stem>0..` of `tenant` and `feature`, at low priority.
async fn publish_many(
    env: &TestEnv,
    stem: &str,
    n: usize,
    tenant: &str,
    feature: &str,
    extra: &str,
) {
    for i in 0..n {
        let j = job(&format!("{stem}{i}"), tenant, feature, extra);
        env.publish(Priority::Low, tenant, j).await;
    }
}

async fn dlq_messages(env: &TestEnv) -> u64 {
    let mut s = env.js.get_stream(env.names().dlq_stream()).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Wait (at most `secs`) until the DLQ holds `n` messages; returns the last count.
async fn wait_dlq(env: &TestEnv, n: u64, secs: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = dlq_messages(env).await;
        if now == n || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(env: &TestEnv, args: &[&str]) -> u64 {
    let mut all = vec!["dlq", "list", "--count"];
    all.extend_from_slice(args);
    let (code, out, err) = env.cli(&all).await;
    assert_eq!(code, 0, "{all:?}: {err}");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{all:?}: {out}"))
}

/// "N replayed" from a replay's summary.
fn replayed(summary: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.contains(" replayed, "))
        .unwrap_or_else(|| panic!("no summary in {summary}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_dead_letters_listed_by_filter_replayed_with_overrides_once_each() {
    // Breakers off: every pinned job makes its one call and fails at once, rather than
    // waiting for a breaker that the first failures opened.
    let env = TestEnv::new(|c| {
        c.worker.max_deliveries = 1;
        c.health.enabled = false;
    })
    .await;
    env.fail_model("gpt-4o-mini-2024-07-18");
    let (stop, worker) = env.start_worker().await;
    // 12 acme/ocr and 8 acme/chat calls that fail, 5 globex/ocr, 4 acme/ocr invalid jobs
    // (no call at all).
    publish_many(&env, "ocr", 12, "acme", "ocr", PINNED).await;
    publish_many(&env, "chat", 8, "acme", "chat", PINNED).await;
    publish_many(&env, "g", 5, "globex", "ocr", PINNED).await;
    publish_many(&env, "bad", 4, "acme", "ocr", INVALID).await;
    assert_eq!(wait_dlq(&env, 29, 60).await, 29);

    // List: filters and counts.
    assert_eq!(count(&env, &[]).await, 29);
    assert_eq!(count(&env, &["--tenant", "acme"]).await, 24);
    assert_eq!(count(&env, &["--kind", "invalid_job"]).await, 4);
    assert_eq!(count(&env, &["--feature", "ocr"]).await, 21);
    assert_eq!(
        count(&env, &["--feature", "ocr", "--provider", "openai"]).await,
        17
    );
    let selected = [
        "--tenant",
        "acme",
        "--feature",
        "ocr",
        "--from-provider",
        "openai",
    ];
    assert_eq!(count(&env, &selected).await, 12);
    assert_eq!(count(&env, &["--since", "1h"]).await, 29);
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(count(&env, &["--until", &an_hour_ago]).await, 0);
    let lines = env
        .cli_json(&[
            "dlq",
            "list",
            "--feature",
            "ocr",
            "--provider",
            "openai",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(lines.len(), 17);
    for l in &lines {
        assert_eq!(l["job"]["feature"], "ocr");
        assert_eq!(l["attempts"][0]["provider"], "openai");
        assert_eq!(l["error"]["kind"], "providers_exhausted");
    }
    // Bad input names what is wrong.
    env.cli_fails(
        &["dlq", "list", "--since", "1h", "--until", "2h"],
        &["--since"],
    )
    .await;
    env.cli_fails(
        &["dlq", "list", "--since", "tuesday"],
        &["--since", "tuesday"],
    )
    .await;

    // Pinned to openai/gpt-4o-mini, the jobs cannot be moved to gemini by --provider
    // alone: every one is skipped, nothing is published.
    let mut only_provider = vec!["dlq", "replay", "--all", "--provider", "gemini"];
    only_provider.extend_from_slice(&selected);
    let (code, out, err) = env.cli(&only_provider).await;
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("no route with the overrides"), "{err}");
    assert_eq!(replayed(&err), 0, "{err}");
    assert_eq!(dlq_messages(&env).await, 29);
    env.cli_fails(
        &["dlq", "replay", "--all", "--provider", "nowhere"],
        &["nowhere", "not a configured provider"],
    )
    .await;
    env.cli_fails(
        &["dlq", "replay", "--all", "--model", "gpt-5-ultra"],
        &["gpt-5-ultra"],
    )
    .await;

    // A dry run publishes nothing.
    let overrides = [
        "dlq",
        "replay",
        "--all",
        "--model",
        "fast",
        "--provider",
        "gemini",
    ];
    let dry = [&overrides[..], &selected, &["--dry-run"]].concat();
    let (code, out, err) = env.cli(&dry).await;
    assert_eq!(code, 0, "{err}");
    let would = out.lines().filter(|l| l.starts_with("would replay"));
    assert_eq!(would.count(), 12, "{out}");
    assert_eq!(dlq_messages(&env).await, 29);

    // The same replay twice at once: each dead letter is published once.
    let replay = [
        &overrides[..],
        &selected,
        &["--priority", "high", "--quiet"],
    ]
    .concat();
    let (a, b) = tokio::join!(env.cli(&replay), env.cli(&replay));
    assert_eq!(a.0, 0, "{}{}", a.1, a.2);
    assert_eq!(b.0, 0, "{}{}", b.1, b.2);
    assert_eq!(
        replayed(&a.2) + replayed(&b.2),
        12,
        "exactly one publish per dead letter:\n{}\n{}",
        a.2,
        b.2
    );

    // All succeed, on gemini, at high priority; nothing ran twice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE tenant='acme' AND feature='ocr' AND status='succeeded'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if done == 12 || tokio::time::Instant::now() >= deadline {
            assert_eq!(done, 12);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.wait_jobs_left(0, 20).await, 0);
    for i in 0..12 {
        let r = env.result("acme", &format!("ocr{i}"), 5).await;
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(r.provider.as_deref(), Some("gemini"));
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
    }
    let high: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE tenant='acme' AND feature='ocr' AND status='succeeded' AND priority='high'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(high, 12);
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*), count(*) FILTER (WHERE provider='gemini' AND outcome='succeeded')
           FROM cost_rows WHERE tenant='acme' AND job_id LIKE 'ocr%' GROUP BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 12);
    for (id, calls, gemini) in rows {
        assert_eq!(
            (calls, gemini),
            (2, 1),
            "{id}: the failed call and one replayed call"
        );
    }
    assert_eq!(
        env.sim.stats().calls("gemini", "gemini-2.5-flash"),
        12,
        "one provider call per replayed job"
    );
    // Their dead letters are gone, the others stay; the filter now matches nothing.
    assert_eq!(dlq_messages(&env).await, 17);
    assert_eq!(count(&env, &selected).await, 0);
    let (code, _, err) = env.cli(&replay).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(replayed(&err), 0, "{err}");

    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_first_and_deletes_only_what_matches() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    // Invalid jobs: dead letters without a provider call.
    for i in 0..10 {
        let feature = if i < 6 { "ocr" } else { "chat" };
        let j = job(&format!("p{i}"), "acme", feature, INVALID);
        env.publish(Priority::Normal, "acme", j).await;
    }
    for i in 0..3 {
        let j = job(&format!("g{i}"), "globex", "chat", INVALID);
        env.publish(Priority::Normal, "globex", j).await;
    }
    assert_eq!(wait_dlq(&env, 13, 30).await, 13);

    // Without a terminal and without --yes it refuses, and deletes nothing.
    env.cli_fails(
        &["dlq", "purge", "--all", "--feature", "ocr"],
        &["--yes", "6 dead letters"],
    )
    .await;
    assert_eq!(dlq_messages(&env).await, 13);
    env.cli_fails(&["dlq", "purge", "--feature", "ocr"], &["--all"])
        .await;
    // A dry run says what would go.
    let (code, out, err) = env
        .cli(&["dlq", "purge", "--all", "--feature", "ocr", "--dry-run"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("would delete acme/p"))
            .count(),
        6,
        "{out}"
    );
    assert_eq!(dlq_messages(&env).await, 13);

    // Confirmed: only the matching ones go; the jobs' rows stay.
    let (code, _, err) = env
        .cli(&[
            "dlq",
            "purge",
            "--all",
            "--feature",
            "ocr",
            "--yes",
            "--quiet",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("6 dead letters deleted"), "{err}");
    assert_eq!(dlq_messages(&env).await, 7);
    assert_eq!(count(&env, &["--feature", "ocr"]).await, 0);
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status='failed'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(failed, 13);
    // By ids, and a whole tenant (one purge of its subjects).
    let (code, _, err) = env
        .cli(&["dlq", "purge", "--tenant", "acme", "p7", "p8", "--yes"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(dlq_messages(&env).await, 5);
    let (code, _, err) = env
        .cli(&["dlq", "purge", "--all", "--tenant", "globex", "--yes"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 dead letters deleted"), "{err}");
    assert_eq!(dlq_messages(&env).await, 2);
    assert!(env.dlq("acme", "p6").await.is_some() && env.dlq("acme", "p9").await.is_some());

    // A dead letter whose job is no longer `failed` is judged by its own content, and a
    // replay leaves a job that succeeded since alone.
    sqlx::query("UPDATE jobs SET status='succeeded' WHERE tenant='acme' AND id='p9'")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(count(&env, &["--feature", "chat"]).await, 2);
    assert_eq!(count(&env, &["--feature", "ocr"]).await, 0);
    let (code, _, err) = env
        .cli(&["dlq", "replay", "--tenant", "acme", "p9", "--quiet"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already succeeded"), "{err}");
    assert_eq!(replayed(&err), 0);
    assert_eq!(env.jobs_left().await, 0, "nothing published");
    stop.cancel();
    worker.await.unwrap().unwrap();

    // Another replay published p6 already (and died before deleting its dead letter):
    // this replay's publish carries the same Nats-Msg-Id, so JetStream drops it, and the
    // dead letter is deleted.
    let names = env.names();
    let stream = env.js.get_stream(names.dlq_stream()).await.unwrap();
    let letter = stream
        .get_last_raw_message_by_subject(&names.dlq_subject("acme", "p6"))
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    let msg_id = format!("acme:p6:replay:{}", letter.sequence);
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    let first = job("p6", "acme", "chat", INVALID);
    env.js
        .publish_with_headers(
            names.jobs_subject(Priority::Normal, "acme"),
            headers,
            first.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (code, _, err) = env
        .cli(&["dlq", "replay", "--tenant", "acme", "p6", "--quiet"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 already replayed (duplicate publish dropped)"),
        "{err}"
    );
    assert_eq!(replayed(&err), 0, "{err}");
    assert_eq!(env.jobs_left().await, 1, "only the first replay's message");
    assert!(env.dlq("acme", "p6").await.is_none());

    // The last one goes; an empty DLQ lists and counts nothing.
    let (code, _, err) = env
        .cli(&["dlq", "purge", "--tenant", "acme", "p9", "--yes"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(dlq_messages(&env).await, 0);
    assert_eq!(count(&env, &[]).await, 0);
    assert_eq!(count(&env, &["--feature", "chat"]).await, 0);
    let (code, _, err) = env.cli(&["dlq", "purge", "--all", "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing deleted"), "{err}");
    // Named ids without a dead letter (one with a failed row, one without a row): exit 3.
    let (code, _, err) = env
        .cli(&["dlq", "replay", "--tenant", "acme", "p6", "nope", "--quiet"])
        .await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("2 skipped (2 no dead letter"), "{err}");
}

/// Run the binary, which must succeed; print how long it took. Returns its stdout.
async fn timed(env: &TestEnv, args: &[&str]) -> String {
    let t = std::time::Instant::now();
    let (code, out, err) = env.cli(args).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    eprintln!(
        "{:>8.2} s  switchyard {}",
        t.elapsed().as_secs_f64(),
        args.join(" ")
    );
    out
}

/// Figures for 100k dead letters (not run by default; the machine is shared):
/// `cargo test --test dlq_bulk -- --ignored --nocapture` (`DLQ_BENCH_N` for another size).
/// 1% of them are feature `ocr`, 1% `ner`; each has a failed `jobs` row and a cost row, as the
/// worker leaves them. Times each command, and the whole-stream scan that `dlq list`
/// used before (an ordered consumer reading and parsing every dead letter) to compare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures_at_100k_dead_letters() {
    use futures::StreamExt;
    use switchyard::queue::publish::DlqEntry;
    let n: u64 = std::env::var("DLQ_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let env = TestEnv::new(|_| {}).await;
    env.ensure_streams().await;
    let names = env.names();
    let t = std::time::Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let feature = match i % 100 {
            0 => "ocr",
            1 => "ner",
            _ => "chat",
        };
        let entry = serde_json::json!({
            "job": serde_json::from_str::<serde_json::Value>(&job(&format!("j{i}"), "acme", feature, PINNED)).unwrap(),
            "payload_b64": null, "subject": names.jobs_subject(Priority::Normal, "acme"),
            "error": {"kind": "providers_exhausted", "message": "openai/gpt-4o-mini: server error 500: the simulator failed this call on purpose"},
            "attempts": [{"attempt": 1, "provider": "openai", "model": "gpt-4o-mini", "outcome": "server_error",
                          "latency_ms": 31, "cost_usd": "0", "status": 500, "message": "server error"}],
            "deliveries": 1, "failed_at": chrono::Utc::now(),
        });
        let ack = env
            .js
            .publish(
                names.dlq_subject("acme", &format!("j{i}")),
                serde_json::to_vec(&entry).unwrap().into(),
            )
            .await
            .unwrap();
        acks.push(std::future::IntoFuture::into_future(ack));
        while acks.len() >= 1000 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
    sqlx::query(
        "INSERT INTO jobs (tenant, id, feature, priority, status, error_kind, finished_at)
         SELECT 'acme', 'j' || i, CASE i % 100 WHEN 0 THEN 'ocr' WHEN 1 THEN 'ner' ELSE 'chat' END, 'normal', 'failed',
                'providers_exhausted', now()
           FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(n as i64)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO cost_rows (tenant, job_id, attempt, feature, provider, model, outcome)
         SELECT 'acme', 'j' || i, 1, CASE i % 100 WHEN 0 THEN 'ocr' WHEN 1 THEN 'ner' ELSE 'chat' END, 'openai',
                'gpt-4o-mini', 'server_error'
           FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(n as i64)
    .execute(&env.pool)
    .await
    .unwrap();
    for table in ["jobs", "cost_rows"] {
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(&env.pool)
            .await
            .unwrap();
    }
    eprintln!(
        "seeded {n} dead letters, jobs rows and cost rows in {:?}",
        t.elapsed()
    );

    let ocr = n.div_ceil(100);
    assert_eq!(
        timed(&env, &["dlq", "list", "--count"]).await.trim(),
        n.to_string()
    );
    let out = timed(
        &env,
        &[
            "dlq",
            "list",
            "--count",
            "--feature",
            "ocr",
            "--provider",
            "openai",
        ],
    )
    .await;
    assert_eq!(out.trim(), ocr.to_string());
    let out = timed(
        &env,
        &["dlq", "list", "--feature", "ocr", "--format", "json"],
    )
    .await;
    assert_eq!(out.lines().count() as u64, ocr);
    let out = timed(&env, &["dlq", "list", "--format", "json"]).await;
    assert_eq!(out.lines().count() as u64, n);
    let replay_ocr = [
        "dlq",
        "replay",
        "--all",
        "--feature",
        "ocr",
        "--model",
        "fast",
        "--quiet",
    ];
    let out = timed(&env, &[&replay_ocr[..], &["--dry-run"]].concat()).await;
    assert_eq!(out.lines().count() as u64, ocr);

    // Before: every dead letter read through an ordered consumer and parsed, then filtered.
    let t = std::time::Instant::now();
    let mut stream = env.js.get_stream(names.dlq_stream()).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{}.dlq.>", names.prefix),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let (mut read, mut matched) = (0u64, 0u64);
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let e: DlqEntry = serde_json::from_slice(&m.payload).unwrap();
        read += 1;
        if e.job
            .as_ref()
            .and_then(|j| j.get("feature"))
            .and_then(|f| f.as_str())
            == Some("ocr")
        {
            matched += 1;
        }
        if m.info().unwrap().pending == 0 {
            break;
        }
    }
    assert_eq!((read, matched), (n, ocr));
    eprintln!(
        "{:>8.2} s  scan and parse every dead letter (in this test process)",
        t.elapsed().as_secs_f64()
    );
    let _ = stream.info().await;

    let out = timed(&env, &replay_ocr).await;
    assert_eq!(out.lines().count() as u64, ocr);
    assert_eq!(env.jobs_left().await, ocr);
    timed(
        &env,
        &[
            "dlq",
            "purge",
            "--all",
            "--feature",
            "ner",
            "--yes",
            "--quiet",
        ],
    )
    .await;
    assert_eq!(dlq_messages(&env).await, n - 2 * ocr);
    timed(&env, &["dlq", "purge", "--all", "--yes", "--quiet"]).await;
    assert_eq!(dlq_messages(&env).await, 0);
}
