#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The exact-match response cache end to end, against real NATS, Postgres and the
//! simulator: a repeated request is answered without a provider call (the simulator's
//! counters say so), with no budget or rate-limit charge, and what it saved is recorded
//! and reported; `bypass` and `refresh`; tenants never share entries; expired entries are
//! not served and are swept; too-random requests and failed results are not cached; two
//! workers racing on one key leave one entry.

mod common;

use common::TestEnv;
use rust_decimal::Decimal;
use std::str::FromStr;
use switchyard::config::{CacheRule, Config};
use switchyard::job::{JobResult, Priority, Status};

/// The model every job here is pinned to, and its upstream id (the simulator's name).
const MODEL: &str = "openai/gpt-4o-mini";
const UPSTREAM: &str = "gpt-4o-mini-2024-07-18";

fn cache_on(c: &mut Config) {
    c.cache.enabled = true;
}

/// A job asking the same thing as every other job with the same `chunk` (and `extra`).
fn ask(id: &str, tenant: &str, chunk: u32, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","tenant":"{tenant}","feature":"ingest","model":"{MODEL}","temperature":0,"max_tokens":64,"messages":[{{"role":"system","content":"Extract the parties."}},{{"role":"user","content":"Chunk {chunk}: ACME Corp and Globex agree."}}]{extra}}}"#
    )
}

/// The worker's /metrics text (the endpoint may not listen at once: retried a while).
async fn scrape(port: u16) -> String {
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            return r.text().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no /metrics on port {port}");
}

fn calls(env: &TestEnv) -> u64 {
    env.sim.stats().total
}

fn dec(v: &serde_json::Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("not a decimal: {v}"))).unwrap()
}

async fn run(env: &TestEnv, tenant: &str, id: &str, payload: String) -> JobResult {
    env.publish(Priority::Normal, tenant, payload).await;
    let r = env.result(tenant, id, 60).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    r
}

/// (cache_hit, cache_saved_usd, cost_usd) of a job's row.
async fn row(env: &TestEnv, tenant: &str, id: &str) -> (bool, Decimal, Decimal) {
    sqlx::query_as(
        "SELECT cache_hit, cache_saved_usd, cost_usd FROM jobs WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

/// The job whose answer the tenant's only entry holds.
async fn entry_owner(env: &TestEnv, tenant: &str) -> String {
    sqlx::query_scalar("SELECT job_id FROM cache_entries WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_makes_no_call_and_its_saving_is_recorded_and_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = TestEnv::new(|c| {
        cache_on(c);
        c.metrics.addr = format!("127.0.0.1:{port}");
    })
    .await;
    let (stop, worker) = env.start_worker().await;
    let first = run(&env, "acme", "a1", ask("a1", "acme", 1, "")).await;
    assert!(!first.cache_hit);
    assert_eq!(calls(&env), 1);
    assert!(first.cost_usd > Decimal::ZERO);

    let second = run(
        &env,
        "acme",
        "a2",
        ask("a2", "acme", 1, r#","metadata":{"n":2}"#),
    )
    .await;
    assert_eq!(calls(&env), 1, "a hit makes no provider call");
    assert!(second.cache_hit);
    assert_eq!(second.cost_usd, Decimal::ZERO);
    assert_eq!(second.output, first.output);
    assert_eq!(
        (&second.provider, &second.model),
        (&first.provider, &first.model)
    );
    assert!(second.attempts.is_empty());
    assert_eq!(second.usage, Default::default());
    assert_eq!(second.metadata, Some(serde_json::json!({"n": 2})));
    assert_eq!(
        row(&env, "acme", "a2").await,
        (true, first.cost_usd, Decimal::ZERO)
    );
    assert_eq!(
        row(&env, "acme", "a1").await,
        (false, Decimal::ZERO, first.cost_usd)
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM cost_rows WHERE job_id = 'a2'").await,
        0,
        "no cost row: no call was made"
    );
    // A different request is a miss.
    let other = run(&env, "acme", "b1", ask("b1", "acme", 2, "")).await;
    assert!(!other.cache_hit);
    assert_eq!(calls(&env), 2);
    // Every lookup counted: a1 and b1 missed, a2 hit.
    let metrics = scrape(port).await;
    for (result, n) in [("hit", 1), ("miss", 2)] {
        let line =
            format!(r#"switchyard_cache_lookups_total{{kind="exact",result="{result}"}} {n}"#);
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }

    // Reports: the calls as before, and the hit with what it saved.
    let costs = env
        .cli_json(&["report", "costs", "--by", "tenant", "--format", "json"])
        .await;
    assert_eq!(costs.len(), 1, "{costs:?}");
    assert_eq!(costs[0]["calls"].as_i64(), Some(2));
    assert_eq!(costs[0]["cache_hits"].as_i64(), Some(1));
    assert_eq!(dec(&costs[0]["cache_saved_usd"]), first.cost_usd);
    assert_eq!(dec(&costs[0]["cost_usd"]), first.cost_usd + other.cost_usd);
    // By outcome: the hit is a group of its own, with no calls.
    let by_outcome = env
        .cli_json(&["report", "costs", "--by", "outcome", "--format", "json"])
        .await;
    let hit = by_outcome
        .iter()
        .find(|l| l["outcome"] == "cache_hit")
        .unwrap_or_else(|| panic!("{by_outcome:?}"));
    assert_eq!(hit["calls"].as_i64(), Some(0));
    assert_eq!(hit["cache_hits"].as_i64(), Some(1));
    let savings = env
        .cli_json(&[
            "report",
            "savings",
            "--baseline",
            "gpt-4o",
            "--by",
            "model",
            "--format",
            "json",
        ])
        .await;
    let total = savings.last().unwrap();
    assert_eq!(total["total"], true);
    assert_eq!(total["cache_hits"].as_i64(), Some(1));
    assert_eq!(dec(&total["cache_saved_usd"]), first.cost_usd);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_neither_reads_nor_writes_and_refresh_calls_and_replaces() {
    let env = TestEnv::new(cache_on).await;
    let (stop, worker) = env.start_worker().await;
    run(&env, "acme", "a1", ask("a1", "acme", 1, "")).await;
    let bypass = run(
        &env,
        "acme",
        "a2",
        ask("a2", "acme", 1, r#","cache":"bypass""#),
    )
    .await;
    assert!(!bypass.cache_hit);
    assert_eq!(calls(&env), 2, "bypass calls");
    assert_eq!(
        entry_owner(&env, "acme").await,
        "a1",
        "bypass stores nothing"
    );

    let refresh = run(
        &env,
        "acme",
        "a3",
        ask("a3", "acme", 1, r#","cache":"refresh""#),
    )
    .await;
    assert!(!refresh.cache_hit);
    assert_eq!(calls(&env), 3, "refresh calls");
    assert_eq!(
        entry_owner(&env, "acme").await,
        "a3",
        "refresh replaces the entry"
    );
    let used = run(&env, "acme", "a4", ask("a4", "acme", 1, "")).await;
    assert!(used.cache_hit);
    assert_eq!(used.output, refresh.output);
    assert_eq!(calls(&env), 3);
    assert_eq!(row(&env, "acme", "a4").await.1, refresh.cost_usd);
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 1);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_an_entry() {
    let env = TestEnv::new(cache_on).await;
    let (stop, worker) = env.start_worker().await;
    run(&env, "acme", "a1", ask("a1", "acme", 1, "")).await;
    let theirs = run(&env, "globex", "a1", ask("a1", "globex", 1, "")).await;
    assert!(!theirs.cache_hit);
    assert_eq!(calls(&env), 2);
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 2);
    // Each tenant's own repeat hits its own entry.
    assert!(
        run(&env, "globex", "a2", ask("a2", "globex", 1, ""))
            .await
            .cache_hit
    );
    assert!(
        run(&env, "acme", "a2", ask("a2", "acme", 1, ""))
            .await
            .cache_hit
    );
    assert_eq!(calls(&env), 2);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_not_served_and_are_swept() {
    let env = TestEnv::new(|c| {
        cache_on(c);
        // globex's answers are served for a minute only.
        c.cache.rules.push(CacheRule {
            tenant: Some("globex".into()),
            feature: None,
            model: None,
            ttl_s: Some(60),
            max_temperature: None,
            ..CacheRule::default()
        });
    })
    .await;
    let (stop, worker) = env.start_worker().await;
    run(&env, "acme", "a1", ask("a1", "acme", 1, "")).await;
    let ttl: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM cache_entries",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(ttl, 86_400.0, "the default TTL");
    // Age the entry past its expiry: the next identical job calls and stores anew.
    sqlx::query(
        "UPDATE cache_entries SET created_at = now() - interval '2 days',
                                  expires_at = now() - interval '1 day'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert!(
        !run(&env, "acme", "a2", ask("a2", "acme", 1, ""))
            .await
            .cache_hit
    );
    assert_eq!(calls(&env), 2);
    assert_eq!(entry_owner(&env, "acme").await, "a2");

    // A tenant whose TTL is shorter: an entry older than it is not served, even before
    // its own expiry (the TTL the config gives now applies).
    run(&env, "globex", "g1", ask("g1", "globex", 1, "")).await;
    sqlx::query(
        "UPDATE cache_entries SET created_at = now() - interval '2 minutes' WHERE tenant = 'globex'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert!(
        !run(&env, "globex", "g2", ask("g2", "globex", 1, ""))
            .await
            .cache_hit
    );
    assert_eq!(calls(&env), 4);
    assert!(
        run(&env, "globex", "g3", ask("g3", "globex", 1, ""))
            .await
            .cache_hit
    );

    // The sweeper deletes what expired, and only that.
    sqlx::query(
        "UPDATE cache_entries SET expires_at = now() - interval '1 second' WHERE tenant = 'acme'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let swept = switchyard::store::cache::sweep(&env.pool).await.unwrap();
    assert_eq!(swept, 1);
    assert_eq!(entry_owner(&env, "globex").await, "g2");
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 1);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_and_failed_results_are_not_cached() {
    let env = TestEnv::new(|c| {
        cache_on(c);
        c.worker.max_deliveries = 2;
    })
    .await;
    let (stop, worker) = env.start_worker().await;
    // Above max_temperature (0.3 by default), or none given (taken as 1): never cached.
    for id in ["hot1", "hot2"] {
        let payload =
            ask(id, "acme", 1, "").replace(r#""temperature":0,"#, r#""temperature":0.9,"#);
        assert!(!run(&env, "acme", id, payload).await.cache_hit);
    }
    for id in ["none1", "none2"] {
        let payload = ask(id, "acme", 2, "").replace(r#""temperature":0,"#, "");
        assert!(!run(&env, "acme", id, payload).await.cache_hit);
    }
    assert_eq!(calls(&env), 4);
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 0);

    // A job that fails stores nothing; the next identical one calls, and is cached.
    env.fail_model(UPSTREAM);
    env.publish(Priority::Normal, "acme", ask("f1", "acme", 3, ""))
        .await;
    let failed = env.result("acme", "f1", 60).await;
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 0);
    env.sim.set_profile(Default::default());
    let before = calls(&env);
    assert!(
        !run(&env, "acme", "f2", ask("f2", "acme", 3, ""))
            .await
            .cache_hit
    );
    assert_eq!(calls(&env), before + 1);
    assert_eq!(entry_owner(&env, "acme").await, "f2");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_charges_no_budget_and_waits_for_no_rate_limit() {
    // One request a minute: a second call would wait about a minute for the limit.
    let env = TestEnv::new(|c| {
        cache_on(c);
        for p in &mut c.providers {
            if p.name == "openai" {
                p.rpm = Some(1);
            }
        }
    })
    .await;
    let (code, _, err) = env
        .cli(&[
            "budget", "set", "--tenant", "acme", "--period", "day", "--limit", "1",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let (stop, worker) = env.start_worker().await;
    let first = run(&env, "acme", "a1", ask("a1", "acme", 1, "")).await;
    let budget = || async {
        sqlx::query_as::<_, (Decimal, Decimal)>(
            "SELECT spent_usd, reserved_usd FROM budgets WHERE tenant = 'acme'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    assert_eq!(budget().await, (first.cost_usd, Decimal::ZERO));
    // Answered well inside the minute the limiter would hold a call.
    env.publish(Priority::Normal, "acme", ask("a2", "acme", 1, ""))
        .await;
    let hit = env.result("acme", "a2", 20).await;
    assert!(hit.cache_hit);
    assert_eq!(calls(&env), 1);
    assert_eq!(budget().await, (first.cost_usd, Decimal::ZERO));
    assert_eq!(
        count(&env, "SELECT count(*) FROM budget_reservations").await,
        0
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_on_one_request_leave_one_entry() {
    let env = TestEnv::new(cache_on).await;
    let (stop_a, a) = env.start_worker().await;
    let (stop_b, b) = env.start_worker().await;
    // A burst of the same request: many run at once on both workers (before any answer
    // is stored), and may all call; whatever the race, one entry results.
    let n = 40;
    for i in 0..n {
        let id = format!("r{i}");
        env.publish(Priority::Normal, "acme", ask(&id, "acme", 1, ""))
            .await;
    }
    assert_eq!(env.wait_succeeded(n, 60).await, n);
    let called = count(&env, "SELECT count(*) FROM jobs WHERE NOT cache_hit").await;
    assert!(called >= 1);
    // Each job that was not a hit made exactly one call; a hit made none.
    assert_eq!(calls(&env), called as u64);
    let succeeded_calls = "SELECT count(*) FROM cost_rows WHERE outcome = 'succeeded'";
    assert_eq!(count(&env, succeeded_calls).await, called);
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 1);
    // Afterwards every repeat, on either worker, is a hit.
    for i in n..n + 10 {
        let id = format!("r{i}");
        env.publish(Priority::Normal, "acme", ask(&id, "acme", 1, ""))
            .await;
    }
    assert_eq!(env.wait_succeeded(n + 10, 60).await, n + 10);
    let late_hits = "SELECT count(*) FROM jobs WHERE cache_hit AND id IN
                     ('r40','r41','r42','r43','r44','r45','r46','r47','r48','r49')";
    assert_eq!(count(&env, late_hits).await, 10);
    assert_eq!(calls(&env), called as u64);
    assert_eq!(count(&env, "SELECT count(*) FROM cache_entries").await, 1);
    stop_a.cancel();
    stop_b.cancel();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

/// The issue's figures: an ingestion run where chunks repeat (a corpus of `DISTINCT`
/// chunks ingested `REPEATS` times, one pass after the other, as when documents are
/// re-ingested), with the cache off and on: provider calls made, spend, and spend the
/// cache saved.
/// `cargo test --test cache -- --ignored --nocapture cache_figures`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures for BENCHMARKS.md; prints them"]
async fn cache_figures_on_an_ingestion_workload() {
    const DISTINCT: u32 = 1000;
    const REPEATS: u32 = 4;
    for enabled in [false, true] {
        let env = TestEnv::new(|c| {
            c.cache.enabled = enabled;
            c.worker.max_in_flight = 256;
        })
        .await;
        let (stop, worker) = env.start_worker().await;
        let started = std::time::Instant::now();
        let mut rounds = Vec::new();
        for r in 0..REPEATS {
            let round = std::time::Instant::now();
            for chunk in 0..DISTINCT {
                let id = format!("d{r}-c{chunk}");
                let payload = ask(&id, "acme", chunk, "").replace(
                    &format!(r#""model":"{MODEL}""#),
                    r#""model":"auto","task":"extraction""#,
                );
                env.publish(Priority::Normal, "acme", payload).await;
            }
            let done = i64::from(DISTINCT * (r + 1));
            assert_eq!(env.wait_succeeded(done, 300).await, done);
            rounds.push(format!("{:.2}", round.elapsed().as_secs_f64()));
        }
        let total = i64::from(DISTINCT * REPEATS);
        let took = started.elapsed();
        stop.cancel();
        worker.await.unwrap().unwrap();
        let (spent, saved, hits): (Decimal, Decimal, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(cost_usd), 0) FROM cost_rows),
                    coalesce(sum(cache_saved_usd), 0), count(*) FILTER (WHERE cache_hit)
               FROM jobs",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        println!(
            "cache {}: {total} jobs ({DISTINCT} distinct chunks x {REPEATS} passes), {} provider calls, {hits} cache hits, spent ${spent}, saved ${saved}, {:.1} s ({:.0} jobs/s; passes {} s)",
            if enabled { "on " } else { "off" },
            calls(&env),
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64().max(1e-9),
            rounds.join(" / "),
        );
    }
}
