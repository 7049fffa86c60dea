#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operator console in a real headless browser (Debian's Chromium, driven through
//! chromedriver): sign in with the login form, the overview with a worker running and
//! jobs in flight (and an open breaker heard from the worker's heartbeat), a job found by
//! the search form and opened, a dead letter replayed from the browser (the selection,
//! the server's confirmation page, the browser's confirm dialog) until the job ends
//! succeeded, and the spend chart drawn. `scripts/test.sh` installs Chromium and sets
//! SWITCHYARD_BROWSER_TESTS=1, which makes a missing chromedriver a failure; without it
//! the tests say "skipped: no chromedriver".
//!
//! `console_screenshots` (ignored; `scripts/screenshots.sh` runs it) takes a PNG of each
//! page into docs/console/.

#[path = "../common/mod.rs"]
mod common;
mod webdriver;

use common::{job, serve_console as serve, TestEnv};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;
use switchyard::config::{ConsoleRole, ConsoleToken};
use switchyard::job::{ErrorKind, Priority, Status};
use switchyard::providers::simulator::FaultProfile;
use webdriver::{Driver, Session};

/// The upstream ids of the demo config's models the tests make fail or slow.
const FAILING: &str = "gpt-4o-mini-2024-07-18";
const SLOW: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// `FAILING` answers 500, `SLOW` takes `slow_ms`; the rest answer at once.
fn profile(slow_ms: u64) -> FaultProfile {
    let broken = FaultProfile {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    };
    let slow = FaultProfile {
        latency_ms: slow_ms,
        ..Default::default()
    };
    FaultProfile {
        per_model: HashMap::from([(FAILING.to_string(), broken), (SLOW.to_string(), slow)]),
        ..Default::default()
    }
}

/// Reload `path` until its text holds every one of `needles` (at most `secs`); the text.
async fn until_text(s: &Session, url: &str, needles: &[&str], secs: u64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        s.goto(url).await.unwrap();
        let text = s.body_text().await.unwrap();
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} lacks one of {needles:?} after {secs} s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait for the page whose heading is `title` (after a form's submission); its text.
async fn until_h1(s: &Session, title: &str) -> String {
    for _ in 0..100 {
        if let Some(h) = s.all("h1").await.unwrap().first() {
            if s.text(h).await.unwrap_or_default() == title {
                return s.body_text().await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no page {title:?}: {}", s.body_text().await.unwrap());
}

/// Stop the console and the worker.
async fn stop_all(
    env: &TestEnv,
    console: common::Console,
    (stop, worker): (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
) {
    env.sim.set_profile(FaultProfile::default());
    console.stop.cancel();
    console.task.await.unwrap().unwrap();
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// How many elements match `css` on the current page.
async fn count(s: &Session, css: &str) -> usize {
    s.all(css).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_overview_search_replay_spend() {
    let Some(driver) = Driver::start("console_in_a_browser").await.unwrap() else {
        return;
    };
    let env = TestEnv::new(|c| {
        c.worker.max_deliveries = 1;
        c.health.consecutive_failures = 2;
        // The slow jobs are still running when the test ends: hand them back at once.
        c.worker.shutdown_grace_s = 1;
        c.ratelimit.heartbeat_ms = 200;
        c.ratelimit.member_timeout_ms = 1000;
        c.console.tokens = vec![ConsoleToken {
            name: "oncall".into(),
            role: ConsoleRole::Operator,
            sha256: Sha256::digest(b"browser-token")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }];
    })
    .await;
    env.sim.set_profile(profile(30_000));
    let console = serve(env.config.clone()).await;
    let (stop, worker) = env.start_worker().await;

    // Two dead letters (their model fails: the breaker opens), one job done, and three
    // held by the slow provider.
    let pinned = r#","model":"openai/gpt-4o-mini""#;
    for id in ["dead1", "dead2"] {
        env.publish(Priority::Low, "acme", job(id, "acme", pinned))
            .await;
    }
    for id in ["dead1", "dead2"] {
        let r = env.result("acme", id, 20).await;
        assert_eq!(r.error.unwrap().kind, ErrorKind::ProvidersExhausted);
    }
    env.publish(
        Priority::Normal,
        "acme",
        job("quick1", "acme", r#","model":"gpt-4.1-nano""#),
    )
    .await;
    assert_eq!(
        env.result("acme", "quick1", 20).await.status,
        Status::Succeeded
    );
    for id in ["slow1", "slow2", "slow3"] {
        env.publish(
            Priority::High,
            "globex",
            job(id, "globex", r#","model":"llama-3.1-8b""#),
        )
        .await;
    }

    let s = driver.session(1280, 900, "America/New_York").await.unwrap();
    let base = &console.base;

    // Sign in with the form.
    s.goto(&format!("{base}/")).await.unwrap();
    assert!(s.body_text().await.unwrap().contains("sign in first"));
    let token = s.find("input[name=token]", 5).await.unwrap();
    s.type_text(&token, "browser-token").await.unwrap();
    s.click_to_load("form.login button").await.unwrap();
    s.find("nav", 5).await.unwrap();
    assert_eq!(s.url().await.unwrap(), format!("{base}/"));

    // Overview: the slow jobs are running, the worker is heard with its open breaker.
    let text = until_text(
        &s,
        &format!("{base}/"),
        &["3\nrunning now", "live", "on 1 of 1"],
        15,
    )
    .await;
    assert!(text.contains("2 dead letters"), "{text}");
    assert!(text.contains("oncall (operator)"), "{text}");
    let row = s
        .find("tr:has(.breaker-open, .breaker-half_open)", 5)
        .await
        .unwrap();
    let row = s.text(&row).await.unwrap();
    assert!(
        row.contains("openai") && row.contains("gpt-4o-mini"),
        "{row}"
    );
    // Times are shown in the viewer's zone (the UTC text is kept as the title).
    let t = s.find("time[datetime]", 5).await.unwrap();
    assert!(!s.text(&t).await.unwrap().contains("UTC"));

    // A running job's page shows its message as received (prompts hidden).
    s.goto(&format!("{base}/jobs/globex/slow2")).await.unwrap();
    let text = s.body_text().await.unwrap();
    assert!(
        text.contains("running") && text.contains("Still in the jobs stream"),
        "{text}"
    );
    assert!(
        text.contains(r#""id": "slow2""#) && text.contains(r#""messages": "(hidden"#),
        "{text}"
    );

    // Jobs: search by id with the form, open the job.
    s.click_to_load("nav a[href='/jobs']").await.unwrap();
    let id = s.find("form.filters input[name=id]", 5).await.unwrap();
    s.type_text(&id, "quick1").await.unwrap();
    s.click_to_load("form.filters button").await.unwrap();
    assert!(s.url().await.unwrap().contains("id=quick1"));
    assert_eq!(count(&s, "a[href='/jobs/acme/dead1']").await, 0);
    s.click_to_load("a[href='/jobs/acme/quick1']")
        .await
        .unwrap();
    let h1 = s.find("h1", 5).await.unwrap();
    assert_eq!(s.text(&h1).await.unwrap(), "Job acme/quick1");
    let text = s.body_text().await.unwrap();
    assert!(
        text.contains("succeeded") && text.contains("gpt-4.1-nano"),
        "{text}"
    );
    assert_eq!(
        count(&s, "h2 + table tbody tr").await,
        1,
        "one provider call"
    );

    // Dead letters: select dead1, replay it on a healthy model, confirm twice (the
    // server's confirmation page, then the browser's dialog).
    s.click_to_load("nav a[href='/dlq']").await.unwrap();
    s.click_on("input[name=key][value='acme/dead1']")
        .await
        .unwrap();
    let model = s.find("#selection input[name=model]", 5).await.unwrap();
    s.type_text(&model, "gpt-4.1-nano").await.unwrap();
    s.click_to_load("#selection button:not(.danger)")
        .await
        .unwrap();
    let text = s.body_text().await.unwrap();
    assert!(
        text.contains("Confirm the replay") && text.contains("would replay acme/dead1"),
        "{text}"
    );
    assert!(env.dlq("acme", "dead1").await.is_some(), "nothing done yet");
    s.mark().await.unwrap();
    s.click_on("form[data-confirm] button").await.unwrap();
    let asked = s.dialog_text().await.unwrap();
    assert!(asked.to_lowercase().contains("replay"), "{asked}");
    s.accept_dialog().await.unwrap();
    s.wait_loaded().await.unwrap();
    let text = until_h1(&s, "Replayed").await;
    assert!(text.contains("replayed acme/dead1"), "{text}");
    let text = until_text(&s, &format!("{base}/jobs/acme/dead1"), &["succeeded"], 20).await;
    assert!(text.contains("gpt-4.1-nano"), "{text}");
    assert_eq!(
        env.result("acme", "dead1", 5).await.status,
        Status::Succeeded
    );
    assert!(
        env.dlq("acme", "dead1").await.is_none(),
        "its dead letter is gone"
    );

    // Spend: the chart is drawn with a bar per day.
    s.click_to_load("nav a[href='/spend']").await.unwrap();
    s.find("svg.chart", 5).await.unwrap();
    assert!(count(&s, "svg.chart rect").await >= 1);
    let drawn = s
        .script(
            "return document.querySelector('svg.chart rect').getBBox().height;",
            serde_json::json!([]),
        )
        .await
        .unwrap();
    assert!(
        drawn.as_f64().unwrap() > 0.0,
        "a bar with a height: {drawn}"
    );

    s.quit().await.unwrap();
    drop(driver);
    stop_all(&env, console, (stop, worker)).await;
}

/// Jobs `ids` over three tenants, features and five models; waits until `before` plus
/// these have succeeded and returns how many these are.
async fn run_jobs(env: &TestEnv, ids: std::ops::Range<usize>, before: i64) -> i64 {
    let tenants = ["acme", "globex", "initech"];
    let features = ["support-chat", "summarize", "extract"];
    let models = [
        "gpt-4.1-nano",
        "gpt-4o",
        "claude-3-5-haiku",
        "gemini-2.0-flash",
        "auto",
    ];
    let n = ids.len() as i64;
    for i in ids {
        let (tenant, feature) = (tenants[i % 3], features[(i / 3) % 3]);
        let body = serde_json::json!({"id": format!("{feature}-{i:03}"), "tenant": tenant,
            "feature": feature, "model": models[i % models.len()], "max_tokens": 200 + 40 * i,
            "messages": [{"role": "user", "content": format!("Write {} lines about item {i}", 3 + i % 7)}]});
        env.publish(Priority::ALL[i % 3], tenant, body.to_string())
            .await;
    }
    assert_eq!(env.wait_succeeded(before + n, 60).await, before + n);
    n
}

/// A PNG of each page, over a few dozen real jobs (run by `scripts/screenshots.sh`, into
/// SWITCHYARD_SCREENSHOTS or docs/console/). The jobs run through a worker and the
/// simulator; their rows are then spread over the past week (created_at moved back by
/// whole days) so the spend chart has days to draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/console/*.png: scripts/screenshots.sh"]
async fn console_screenshots() {
    let Some(driver) = Driver::start("console_screenshots").await.unwrap() else {
        return;
    };
    let dir = std::env::var("SWITCHYARD_SCREENSHOTS").map_or_else(
        |_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    let env = TestEnv::new(|c| {
        c.worker.max_deliveries = 1;
        // One call a refund job: the third opens the breaker.
        c.health.consecutive_failures = 3;
        c.health.open_s = 120;
        c.health.max_open_s = 120;
        c.worker.shutdown_grace_s = 1;
        c.ratelimit.heartbeat_ms = 200;
        c.ratelimit.member_timeout_ms = 1000;
    })
    .await;
    env.sim.set_profile(profile(60_000));
    for (tenant, period, limit) in [
        ("acme", "day", "25"),
        ("globex", "month", "400"),
        ("initech", "day", "5"),
    ] {
        sqlx::query("INSERT INTO budgets (tenant, period, limit_usd) VALUES ($1, $2, $3::numeric)")
            .bind(tenant)
            .bind(period)
            .bind(limit)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    let console = serve(env.config.clone()).await;
    let (stop, worker) = env.start_worker().await;

    // A week of jobs: run now, then moved back 0..6 days and up to 10 hours.
    let mut done = run_jobs(&env, 0..36, 0).await;
    for sql in [
        "UPDATE cost_rows SET created_at = created_at - make_interval(days => abs(hashtext(job_id)) % 7, mins => abs(hashtext(job_id)) % 600)",
        "UPDATE jobs SET created_at = created_at - make_interval(days => abs(hashtext(id)) % 7, mins => abs(hashtext(id)) % 600),
                         started_at = started_at - make_interval(days => abs(hashtext(id)) % 7, mins => abs(hashtext(id)) % 600),
                         finished_at = finished_at - make_interval(days => abs(hashtext(id)) % 7, mins => abs(hashtext(id)) % 600)",
    ] {
        sqlx::query(sql).execute(&env.pool).await.unwrap();
    }
    // The last hour's: more jobs, and three that fail (their model answers 500) into
    // dead letters; the third failure in a row opens the breaker.
    done += run_jobs(&env, 36..50, done).await;
    for (i, tenant) in ["acme", "globex", "acme"].iter().enumerate() {
        let id = format!("refund-{i}");
        let body = serde_json::json!({"id": id, "tenant": tenant, "feature": "refunds",
            "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Draft a refund reply"}]});
        env.publish(Priority::Normal, tenant, body.to_string())
            .await;
        assert!(env.result(tenant, &id, 20).await.error.is_some());
    }
    assert!(done >= 50);
    // Spread over the hour, for its chart (each job and its calls moved back alike).
    for sql in [
        "UPDATE cost_rows SET created_at = created_at - make_interval(mins => abs(hashtext(job_id)) % 55)
          WHERE created_at > now() - interval '5 minutes'",
        "UPDATE jobs SET created_at = created_at - make_interval(mins => abs(hashtext(id)) % 55),
                         started_at = started_at - make_interval(mins => abs(hashtext(id)) % 55),
                         finished_at = finished_at - make_interval(mins => abs(hashtext(id)) % 55)
          WHERE finished_at > now() - interval '5 minutes'",
    ] {
        sqlx::query(sql).execute(&env.pool).await.unwrap();
    }
    // In flight: the slow provider holds these.
    for i in 0..4 {
        let id = format!("long-{i}");
        env.publish(
            Priority::High,
            "globex",
            job(&id, "globex", r#","model":"llama-3.1-8b""#),
        )
        .await;
    }

    let s = driver.session(1280, 900, "Europe/Berlin").await.unwrap();
    let base = &console.base;
    until_text(
        &s,
        &format!("{base}/"),
        &["4\nrunning now", "live", "on 1 of 1"],
        20,
    )
    .await;
    let shots: [(&str, String); 6] = [
        ("overview", format!("{base}/")),
        ("jobs", format!("{base}/jobs")),
        ("job", format!("{base}/jobs/acme/support-chat-000")),
        ("dead-letters", format!("{base}/dlq")),
        ("dead-letter", format!("{base}/dlq/acme/refund-0")),
        ("spend", format!("{base}/spend")),
    ];
    for (name, url) in &shots {
        s.goto(url).await.unwrap();
        s.find("main h1", 5).await.unwrap();
        let path = dir.join(format!("{name}.png"));
        s.screenshot(&path).await.unwrap();
        println!("wrote {}", path.display());
    }
    s.quit().await.unwrap();
    drop(driver);
    stop_all(&env, console, (stop, worker)).await;
}
