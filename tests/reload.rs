#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hot reload against real NATS and Postgres: a bad file is refused with the field named
//! and the running config stays; a good one changes routes and prices for the jobs taken
//! after it; jobs in flight across both finish, each with one result and one cost row.

mod common;

use common::{job, TestEnv};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;
use switchyard::config::FileConfig;
use switchyard::job::{Priority, Status};
use switchyard::providers::simulator::FaultProfile;
use switchyard::worker::reload::{Applied, Reloader};
use tokio::sync::mpsc;

const N: usize = 40;

async fn publish_batch(env: &TestEnv, tag: &str) {
    for i in 0..N {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("{tag}{i}"), "acme", r#","model":"auto""#),
        )
        .await;
    }
}

/// `cfg` as TOML with a rule that sends acme's `auto` jobs to gpt-4o.
fn with_rule(cfg: &switchyard::config::Config) -> String {
    let text = toml::to_string(cfg).unwrap();
    assert!(text.contains("rules = []\n"), "no rules to start with");
    text.replacen("rules = []\n", "", 1)
        + "\n[[routing.rules]]\ntenant = \"acme\"\nmodel = \"gpt-4o\"\n"
}

async fn reload(
    path: &std::path::Path,
    text: &str,
    reloader: &Reloader,
    reports: &mut mpsc::UnboundedReceiver<Result<Applied, String>>,
) -> Result<Applied, String> {
    std::fs::write(path, text).unwrap();
    reloader.trigger.notify_one();
    tokio::time::timeout(Duration::from_secs(20), reports.recv())
        .await
        .expect("a reload outcome")
        .expect("the reload task is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_and_a_good_one_changes_routes_and_prices_without_losing_a_job() {
    let env = TestEnv::new(|_| {}).await;
    // Calls take a while, so each reload happens with jobs in flight.
    env.sim.set_profile(FaultProfile {
        latency_ms: 300,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let base = toml::to_string(&env.config).expect("the running config as TOML");
    std::fs::write(&path, &base).unwrap();
    let (tx, mut reports) = mpsc::unbounded_channel();
    let reloader = Reloader {
        load: {
            let path = path.clone();
            Arc::new(move || {
                let text = std::fs::read_to_string(&path)?;
                Ok(FileConfig::from_toml_with_env(
                    &text,
                    &path.display().to_string(),
                    &[],
                )?)
            })
        },
        trigger: Arc::new(tokio::sync::Notify::new()),
        watch: None,
        report: Some(tx),
    };
    let (stop, worker) = env.start_worker_with(Some(reloader.clone())).await;

    // A: a file with a misspelt key, while A runs: refused, the field named.
    publish_batch(&env, "a").await;
    let bad = base.replacen("budget_pressure", "budget_presure", 1);
    assert_ne!(bad, base);
    let refused = reload(&path, &bad, &reloader, &mut reports).await;
    let err = refused.expect_err("a bad file is refused");
    assert!(
        err.contains("budget_presure"),
        "the error names the field: {err}"
    );
    let mut before = None;
    for i in 0..N {
        let r = env.result("acme", &format!("a{i}"), 30).await;
        assert_eq!(r.status, Status::Succeeded, "a{i}");
        // `auto` for this task: one model, the same for every job of the batch.
        let m = r.model.clone().unwrap();
        assert_eq!(before.get_or_insert(m.clone()), &m, "a{i}");
    }
    let before = before.unwrap();
    assert_ne!(before, "gpt-4o", "the rule below must change something");

    // B: a good file, while B runs: a rule sends acme's `auto` jobs to gpt-4o, whose
    // prices change too.
    publish_batch(&env, "b").await;
    let mut cfg = env.config.clone();
    for m in &mut cfg.models {
        if m.name == "gpt-4o" {
            m.input_per_mtok = Decimal::new(100, 0);
            m.output_per_mtok = Decimal::new(200, 0);
        }
    }
    let good = with_rule(&cfg);
    let applied = reload(&path, &good, &reloader, &mut reports)
        .await
        .expect("a good file is applied");
    assert!(applied.needs_restart.is_empty(), "{applied:?}");
    for i in 0..N {
        let r = env.result("acme", &format!("b{i}"), 30).await;
        assert_eq!(r.status, Status::Succeeded, "b{i}");
        let m = r.model.unwrap();
        assert!(m == before || m == "gpt-4o", "b{i} ran on {m}");
    }

    // C: taken after the reload: the new route and the new prices.
    publish_batch(&env, "c").await;
    for i in 0..N {
        let r = env.result("acme", &format!("c{i}"), 30).await;
        assert_eq!(r.status, Status::Succeeded, "c{i}");
        assert_eq!(r.model.as_deref(), Some("gpt-4o"), "c{i}");
        let expect = (Decimal::from(r.usage.input_tokens) * Decimal::new(100, 0)
            + Decimal::from(r.usage.output_tokens) * Decimal::new(200, 0))
            / Decimal::from(1_000_000);
        assert_eq!(r.cost_usd, expect.normalize(), "c{i} at the new price");
    }

    // Nothing lost, nothing doubled.
    let total = (3 * N) as i64;
    assert_eq!(env.wait_succeeded(total, 30).await, total);
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM cost_rows")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(calls, total, "one cost row per job");
    assert_eq!(env.sim.stats().total, total as u64, "one call per job");
    assert_eq!(env.wait_jobs_left(0, 10).await, 0);

    // A section read only at start: applied otherwise, named as needing a restart.
    let mut cfg2 = cfg.clone();
    cfg2.worker.max_deliveries += 1;
    let later = with_rule(&cfg2);
    let applied = reload(&path, &later, &reloader, &mut reports)
        .await
        .expect("applied");
    assert_eq!(applied.needs_restart, vec!["worker"]);

    stop.cancel();
    worker.await.unwrap().unwrap();
}
