#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `/metrics` scraped and parsed after real runs (real NATS, Postgres and the simulator),
//! and the finished-job JSON log line of the real binary.

mod common;

use common::{free_port, job, TestEnv};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use switchyard::job::Priority;
use switchyard::providers::simulator::FaultProfile;
use tokio::io::AsyncBufReadExt;

const BUCKETS: [&str; 16] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
    "120", "300", "+Inf",
];

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed: `# TYPE` per family and every sample.
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
    text: String,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label key");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("closing quote");
            match c {
                '\\' => {
                    let (_, e) = chars.next().expect("escaped char");
                    value.push(if e == 'n' { '\n' } else { e });
                }
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

fn parse(text: String) -> Scrape {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("TYPE line");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("closing brace"))),
            None => (series, BTreeMap::new()),
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Scrape {
        types,
        samples,
        text,
    }
}

impl Scrape {
    /// The samples of `name` whose labels include every one of `with`.
    fn find<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.find(name, with).map(|s| s.value).sum()
    }

    fn one(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.find(name, with).collect();
        assert_eq!(found.len(), 1, "one {name} {with:?} in\n{}", self.text);
        found[0].value
    }

    /// Every series of histogram `name` has the standard buckets, cumulative, its `+Inf`
    /// bucket equal to its count, and a sum; returns the total count.
    fn histogram(&self, name: &str) -> f64 {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some("histogram"),
            "{name} is a histogram"
        );
        let mut total = 0.0;
        let counts: Vec<&Sample> = self.find_owned(format!("{name}_count"));
        assert!(!counts.is_empty(), "{name} has series in\n{}", self.text);
        for c in counts {
            let labels = &c.labels;
            let same = |s: &&Sample| {
                let mut l = s.labels.clone();
                l.remove("le");
                &l == labels
            };
            let buckets: Vec<&Sample> = self
                .find_owned(format!("{name}_bucket"))
                .into_iter()
                .filter(same)
                .collect();
            let les: Vec<&str> = buckets.iter().map(|b| b.labels["le"].as_str()).collect();
            assert_eq!(les, BUCKETS, "{name} {labels:?} buckets");
            assert!(
                buckets.windows(2).all(|w| w[0].value <= w[1].value),
                "{name} buckets are cumulative"
            );
            assert_eq!(buckets[15].value, c.value, "{name} +Inf bucket = count");
            let sums: Vec<&Sample> = self
                .find_owned(format!("{name}_sum"))
                .into_iter()
                .filter(|s| &s.labels == labels)
                .collect();
            assert_eq!(sums.len(), 1, "{name} {labels:?} has a sum");
            assert!(sums[0].value >= 0.0);
            total += c.value;
        }
        total
    }

    fn find_owned(&self, name: String) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

async fn scrape(port: u16) -> Result<Scrape, reqwest::Error> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?;
    assert!(resp.status().is_success());
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    Ok(parse(resp.text().await?))
}

/// Scrape until `ready` holds, at most `secs`; the last scrape either way. The endpoint
/// may not listen yet when the worker's consumers exist: a refused connection is retried.
async fn scrape_until(port: u16, secs: u64, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let late = tokio::time::Instant::now() >= deadline;
        match scrape(port).await {
            Ok(s) if late || ready(&s) => return s,
            Err(e) if late => panic!("scraping /metrics: {e}"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Jobs that succeed (one failed call first on each model) and jobs that fail (bad
/// payloads, an unknown model): every family of the spec present, histograms with their
/// buckets, counts equal to the jobs run, calls, tokens and cost equal to the cost rows,
/// and the backlog, dead-letter and budget gauges polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_count_the_jobs_run() {
    let port = free_port();
    let env = TestEnv::new(|c| {
        c.metrics.addr = format!("127.0.0.1:{port}");
        c.metrics.poll_ms = 200;
    })
    .await;
    // The first request to each model fails with a 500: the chain fails over.
    env.sim.set_profile(FaultProfile {
        fail_first: 1,
        ..FaultProfile::default()
    });
    sqlx::query("INSERT INTO budgets (tenant, period, limit_usd) VALUES ('acme', 'day', 10)")
        .execute(&env.pool)
        .await
        .unwrap();
    let (stop, worker) = env.start_worker().await;

    let mut ok = Vec::new();
    for (i, p) in Priority::ALL.iter().cycle().take(6).enumerate() {
        let id = format!("ok-{i}");
        env.publish(*p, "acme", job(&id, "acme", "")).await;
        ok.push(id);
    }
    let malformed = env.publish(Priority::Low, "acme", "not json").await;
    env.publish(
        Priority::Normal,
        "acme",
        r#"{"id":"bad-1","tenant":"acme"}"#,
    )
    .await;
    env.publish(
        Priority::High,
        "acme",
        job("bad-2", "acme", r#","model":"openai/no-such-model""#),
    )
    .await;
    for id in &ok {
        assert_eq!(
            env.result("acme", id, 30).await.status.as_str(),
            "succeeded"
        );
    }
    let malformed_id = format!("_seq{malformed}");
    for id in [malformed_id.as_str(), "bad-1", "bad-2"] {
        assert_eq!(env.result("acme", id, 30).await.status.as_str(), "failed");
    }

    // The ledger is final: every result is published after its commit.
    let (rows, input, cached, output, cost): (i64, Decimal, Decimal, Decimal, Decimal) =
        sqlx::query_as(
            "SELECT count(*), coalesce(sum(input_tokens), 0)::numeric,
                    coalesce(sum(cached_input_tokens), 0)::numeric,
                    coalesce(sum(output_tokens), 0)::numeric, coalesce(sum(cost_usd), 0)
               FROM cost_rows",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let f = |d: Decimal| d.to_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 + b.abs() * 1e-9;
    // Counted after the result is published: wait for the last ones, and for the poller
    // to have read the final stream and budget state.
    let budget = [("tenant", "acme"), ("feature", ""), ("period", "day")];
    let m = scrape_until(port, 20, |s| {
        s.sum("switchyard_jobs_total", &[]) >= 9.0
            && s.one("switchyard_dlq_messages", &[]) >= 3.0
            && s.sum("switchyard_consumer_ack_pending_messages", &[]) == 0.0
            && close(s.sum("switchyard_budget_spent_usd", &budget), f(cost))
    })
    .await;

    // Jobs: by status and error kind, and one latency observation per job.
    assert_eq!(m.sum("switchyard_jobs_total", &[]), 9.0, "{}", m.text);
    assert_eq!(
        m.sum(
            "switchyard_jobs_total",
            &[("status", "succeeded"), ("error_kind", "")]
        ),
        6.0
    );
    for (p, n) in [("high", 2.0), ("normal", 2.0), ("low", 2.0)] {
        assert_eq!(
            m.sum(
                "switchyard_jobs_total",
                &[("status", "succeeded"), ("priority", p)]
            ),
            n
        );
    }
    for (kind, p) in [
        ("malformed_job", "low"),
        ("invalid_job", "normal"),
        ("unknown_model", "high"),
    ] {
        let labels = [("status", "failed"), ("error_kind", kind), ("priority", p)];
        assert_eq!(m.one("switchyard_jobs_total", &labels), 1.0, "{kind}");
        let dead = [("error_kind", kind), ("priority", p)];
        assert_eq!(m.one("switchyard_dead_letters_total", &dead), 1.0, "{kind}");
    }
    assert_eq!(m.types["switchyard_jobs_total"], "counter");
    assert_eq!(m.histogram("switchyard_job_latency_seconds"), 9.0);
    assert!(m.histogram("switchyard_queue_wait_seconds") >= 9.0);
    assert_eq!(
        m.sum(
            "switchyard_job_latency_seconds_count",
            &[("status", "failed")]
        ),
        3.0
    );

    // Calls, tokens and cost agree with the ledger (cost_rows).
    let calls = m.sum("switchyard_provider_calls_total", &[]);
    assert_eq!(calls, rows as f64, "one call per cost row");
    assert!(calls > 6.0, "failed calls were made too");
    assert_eq!(
        m.sum(
            "switchyard_provider_calls_total",
            &[("outcome", "succeeded")]
        ),
        6.0
    );
    assert!(
        m.sum(
            "switchyard_provider_calls_total",
            &[("outcome", "server_error")]
        ) >= 1.0
    );
    assert_eq!(
        m.histogram("switchyard_provider_call_duration_seconds"),
        calls
    );
    assert_eq!(m.histogram("switchyard_limiter_wait_seconds"), calls);
    let f = |d: Decimal| d.to_f64().unwrap();
    assert_eq!(
        m.sum("switchyard_tokens_total", &[("kind", "input")]),
        f(input)
    );
    assert_eq!(
        m.sum("switchyard_tokens_total", &[("kind", "cached_input")]),
        f(cached)
    );
    assert_eq!(
        m.sum("switchyard_tokens_total", &[("kind", "output")]),
        f(output)
    );
    assert!(f(output) > 0.0);
    let cost_metric = m.sum("switchyard_cost_usd_total", &[]);
    assert!(
        f(cost) > 0.0 && close(cost_metric, f(cost)),
        "{cost_metric} vs {cost}"
    );
    let spend = m.one(
        "switchyard_spend_usd_total",
        &[("tenant", "acme"), ("feature", "test")],
    );
    assert!(close(spend, f(cost)), "{spend} vs {cost}");

    // Polled gauges: nothing left in the jobs stream, three dead letters, the budget.
    for p in ["high", "normal", "low"] {
        let l = [("priority", p)];
        assert_eq!(m.one("switchyard_consumer_pending_messages", &l), 0.0);
        assert_eq!(m.one("switchyard_consumer_ack_pending_messages", &l), 0.0);
        assert_eq!(m.one("switchyard_oldest_pending_job_age_seconds", &l), 0.0);
    }
    assert_eq!(m.one("switchyard_dlq_messages", &[]), 3.0);
    assert_eq!(m.one("switchyard_budget_limit_usd", &budget), 10.0);
    let spent = m.one("switchyard_budget_spent_usd", &budget);
    assert!(close(spent, f(cost)), "{spent} vs {cost}");
    let ratio = m.one("switchyard_budget_used_ratio", &budget);
    assert!(close(ratio, f(cost) / 10.0), "{ratio}");

    // Read at scrape time, and registered before use.
    assert_eq!(m.one("switchyard_worker_ready", &[]), 1.0);
    assert_eq!(m.one("switchyard_jobs_in_flight", &[]), 0.0);
    assert_eq!(
        m.one(
            "switchyard_breaker_state",
            &[("provider", "openai"), ("model", "gpt-4o-mini")]
        ),
        0.0
    );
    assert_eq!(
        m.find("switchyard_breaker_transitions_total", &[]).count(),
        3 * m.find("switchyard_breaker_state", &[]).count()
    );
    assert!(
        m.find("switchyard_provider_latency_ewma_seconds", &[])
            .count()
            >= 1
    );
    assert_eq!(m.find("switchyard_cache_lookups_total", &[]).count(), 4);
    for name in ["switchyard_retries_total", "switchyard_republished_total"] {
        assert_eq!(m.types[name], "counter", "{name}");
    }
    // Bounded labels: no job id anywhere.
    assert!(!m.text.contains("ok-0") && !m.text.contains("bad-1"));

    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A backlog the worker cannot take (one slot, a provider that never answers): pending,
/// ack pending and the oldest message's age are polled from JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauges_follow_the_stream() {
    let port = free_port();
    let env = TestEnv::new(|c| {
        c.metrics.addr = format!("127.0.0.1:{port}");
        c.metrics.poll_ms = 200;
        c.worker.max_in_flight = 1;
        c.worker.shutdown_grace_s = 1;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        hang: true,
        ..FaultProfile::default()
    });
    let (stop, worker) = env.start_worker().await;
    for i in 0..3 {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("held-{i}"), "acme", ""),
        )
        .await;
    }
    let normal = [("priority", "normal")];
    let m = scrape_until(port, 20, |s| {
        s.one("switchyard_consumer_pending_messages", &normal) == 2.0
            && s.one("switchyard_consumer_ack_pending_messages", &normal) == 1.0
            && s.one("switchyard_oldest_pending_job_age_seconds", &normal) > 0.0
    })
    .await;
    assert_eq!(
        m.one("switchyard_consumer_pending_messages", &normal),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.one("switchyard_consumer_ack_pending_messages", &normal),
        1.0
    );
    let age = m.one("switchyard_oldest_pending_job_age_seconds", &normal);
    assert!(age > 0.0 && age < 60.0, "{age}");
    assert_eq!(m.one("switchyard_jobs_in_flight", &[]), 1.0);
    for p in ["high", "low"] {
        assert_eq!(
            m.one(
                "switchyard_oldest_pending_job_age_seconds",
                &[("priority", p)]
            ),
            0.0
        );
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A provider batch seen on `/metrics`: three low-priority jobs parked and sent in one
/// OpenAI batch; the polled levels show them parked, then one open batch with an age
/// while it runs, and once it ends the counters say one batch submitted and completed,
/// three jobs parked and answered, one duration observed, and the levels are back at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_metrics_follow_a_batched_job() {
    let port = free_port();
    let env = TestEnv::new(|c| {
        common::batch::batch_config(c);
        // Parked for 3 s before the batch is gathered: the parked level is seen.
        c.batch.max_wait_s = 3;
        c.metrics.addr = format!("127.0.0.1:{port}");
        c.metrics.poll_ms = 200;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        batch_complete_ms: 3000,
        ..FaultProfile::default()
    });
    let (stop, worker) = env.start_worker().await;
    let pinned = r#","model":"openai/gpt-4o-mini""#;
    for i in 0..3 {
        let payload = job(&format!("bulk-{i}"), "acme", pinned);
        env.publish(Priority::Low, "acme", payload).await;
    }
    let openai = [("provider", "openai")];
    // Parked, not in a batch yet (the batch is gathered after max_wait_s).
    let parked = scrape_until(port, 20, |s| {
        s.sum("switchyard_batch_parked_jobs", &[]) == 3.0
    })
    .await;
    assert_eq!(
        parked.one("switchyard_batch_parked_jobs", &[]),
        3.0,
        "{}",
        parked.text
    );
    assert_eq!(
        parked.one("switchyard_batch_jobs_parked_total", &openai),
        3.0
    );
    assert_eq!(
        parked.sum("switchyard_batches_submitted_total", &openai),
        0.0
    );
    // Sent: one open batch, growing older, nothing parked outside it.
    let running = scrape_until(port, 30, |s| {
        s.sum("switchyard_batches_open", &[]) == 1.0
            && s.sum("switchyard_oldest_open_batch_age_seconds", &[]) > 0.0
    })
    .await;
    assert_eq!(
        running.one("switchyard_batches_open", &[]),
        1.0,
        "{}",
        running.text
    );
    assert!(running.one("switchyard_oldest_open_batch_age_seconds", &[]) > 0.0);
    assert_eq!(running.one("switchyard_batch_parked_jobs", &[]), 0.0);
    assert_eq!(
        running.one("switchyard_batches_submitted_total", &openai),
        1.0
    );
    for i in 0..3 {
        let r = env.result("acme", &format!("bulk-{i}"), 60).await;
        assert_eq!(r.status, switchyard::job::Status::Succeeded);
    }
    let done = scrape_until(port, 20, |s| {
        s.sum("switchyard_batches_ended_total", &openai) == 1.0
            && s.sum("switchyard_batches_open", &[]) == 0.0
            && s.sum("switchyard_batch_parked_jobs", &[]) == 0.0
    })
    .await;
    let completed = [("provider", "openai"), ("status", "completed")];
    assert_eq!(
        done.one("switchyard_batches_ended_total", &completed),
        1.0,
        "{}",
        done.text
    );
    assert_eq!(done.one("switchyard_batches_submitted_total", &openai), 1.0);
    assert_eq!(
        done.one(
            "switchyard_batch_jobs_total",
            &[("provider", "openai"), ("result", "answered")]
        ),
        3.0
    );
    assert_eq!(
        done.sum(
            "switchyard_batch_jobs_total",
            &[("provider", "openai"), ("result", "live")]
        ),
        0.0
    );
    assert_eq!(
        done.types
            .get("switchyard_batch_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        done.one("switchyard_batch_duration_seconds_count", &openai),
        1.0
    );
    assert!(done.one("switchyard_batch_duration_seconds_sum", &openai) > 0.0);
    assert_eq!(done.one("switchyard_batches_open", &[]), 0.0);
    assert_eq!(done.one("switchyard_batch_parked_jobs", &[]), 0.0);
    assert_eq!(
        done.one("switchyard_oldest_open_batch_age_seconds", &[]),
        0.0
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// The real binary with `SWITCHYARD_LOG_FORMAT=json`: one `switchyard::job` line for the
/// finished job with its fields, and no prompt or output text (`log_content` is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_one_json_line_per_finished_job() {
    let env = TestEnv::new(|_| {}).await;
    env.ensure_streams().await;
    let mut child = env
        .command()
        .arg("worker")
        .env("SWITCHYARD_LOG_FORMAT", "json")
        .env("SWITCHYARD_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the worker");
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    env.publish(Priority::High, "acme", job("logged-1", "acme", ""))
        .await;
    let mut seen = Vec::new();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"));
            seen.push(l);
            if v["target"] == "switchyard::job" {
                return v;
            }
        }
        panic!("the worker's stderr ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no job line within 60s; saw:\n{}", seen.join("\n")));
    let f = &line["fields"];
    assert_eq!(f["message"], "job finished");
    assert_eq!(f["id"], "logged-1");
    assert_eq!(f["tenant"], "acme");
    assert_eq!(f["feature"], "test");
    assert_eq!(f["priority"], "high");
    assert_eq!(f["outcome"], "succeeded");
    assert_eq!(f["error_kind"], "");
    assert_eq!(f["cache"], "miss");
    assert_eq!(f["attempts"], 1);
    assert!(f["provider"].as_str().is_some_and(|p| !p.is_empty()));
    assert!(f["model"].as_str().is_some_and(|p| !p.is_empty()));
    assert!(f["input_tokens"].as_u64().unwrap() > 0);
    assert!(f["output_tokens"].as_u64().unwrap() > 0);
    assert!(f["cost_usd"].as_str().unwrap().parse::<Decimal>().unwrap() > Decimal::ZERO);
    assert!(f["latency_ms"].is_u64() && f["queued_ms"].is_u64());
    assert!(f.get("prompt").is_none() && f.get("output").is_none());
    let stored = env.result("acme", "logged-1", 5).await;
    let content = stored.output.unwrap().content.unwrap();
    for l in &seen {
        assert!(
            !l.contains("Say something about"),
            "prompt text logged: {l}"
        );
        if content.len() >= 12 {
            assert!(!l.contains(&content), "output text logged: {l}");
        }
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
