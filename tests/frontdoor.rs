#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The OpenAI-compatible front door (issue 15): `switchyard serve` in-process on an
//! ephemeral port, a real worker against the simulator, real NATS and Postgres. Driven
//! with plain HTTP (reqwest) and, when `SWITCHYARD_SDK_PYTHON` is set, with the official
//! `openai` Python SDK (`scripts/lib/sdk_frontdoor_check.py`).

mod common;

use common::TestEnv;
use serde_json::{json, Value};
use std::time::Duration;
use switchyard::config::ApiKeyConfig;
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-frontdoor-test-key";

/// A test env whose config has one key for tenant `acme` (and `tweak` applied).
async fn env(tweak: impl FnOnce(&mut switchyard::config::Config)) -> TestEnv {
    TestEnv::new(|c| {
        c.serve.keys = vec![ApiKeyConfig {
            sha256: switchyard::frontdoor::hash_key(KEY),
            tenant: "acme".into(),
            name: Some("acme-test".into()),
            priority: "normal".into(),
            max_priority: "normal".into(),
            max_in_flight: 64,
        }];
        c.serve.batch_poll_ms = 200;
        tweak(c);
    })
    .await
}

/// Start `serve` on a free port: (base URL `http://…/v1`, its stop token, its task).
async fn serve(env: &TestEnv) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let cfg = env.config.clone();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            switchyard::frontdoor::run(cfg, listener, stop)
                .await
                .unwrap()
        }
    });
    // Ready when it answers (401 without a key).
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("http://{addr}/v1/models"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (format!("http://{addr}/v1"), stop, task)
}

/// A running serve and worker, stopped together at the end of a test.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    wstop: CancellationToken,
    worker: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A worker and a serve for `env`: (serve's base URL, both running).
async fn start(env: &TestEnv) -> (String, Running) {
    let (wstop, worker) = env.start_worker().await;
    let (base, stop, task) = serve(env).await;
    (
        base,
        Running {
            stop,
            task,
            wstop,
            worker,
        },
    )
}

impl Running {
    async fn end(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        self.wstop.cancel();
        self.worker.await.unwrap().unwrap();
    }
}

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}], "max_tokens": 50})
}

async fn post(base: &str, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_completion_becomes_a_job_of_the_key_s_tenant_and_comes_back_in_openai_s_shape() {
    let env = env(|_| {}).await;
    let (base, run) = start(&env).await;

    let (s, v) = post(
        &base,
        "/chat/completions",
        Some(KEY),
        &chat("gpt-4o-mini", "Say hello"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    let job_id = v["switchyard"]["job_id"].as_str().unwrap();
    assert_eq!(v["id"], format!("chatcmpl-{job_id}"));
    // The job is an ordinary job: its row, tenant, priority and cost row.
    let (tenant, priority, output, cost): (String, String, Value, rust_decimal::Decimal) =
        sqlx::query_as("SELECT tenant, priority, output, cost_usd FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((tenant.as_str(), priority.as_str()), ("acme", "normal"));
    assert_eq!(output["content"], content);
    assert!(cost > rust_decimal::Decimal::ZERO);
    assert_eq!(v["switchyard"]["cost_usd"], cost.to_string());
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM cost_rows WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            + v["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // Low priority by header (the key allows normal at most, so high is refused).
    let r = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .bearer_auth(KEY)
        .header("X-Switchyard-Priority", "high")
        .json(&chat("gpt-4o-mini", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .bearer_auth(KEY)
        .header("X-Switchyard-Priority", "low")
        .header("X-Switchyard-Feature", "fd-test")
        .json(&chat("auto", "Summarize: the sky is blue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    let (priority, feature): (String, String) =
        sqlx::query_as("SELECT priority, feature FROM jobs WHERE id = $1")
            .bind(v["switchyard"]["job_id"].as_str().unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((priority.as_str(), feature.as_str()), ("low", "fd-test"));

    run.end().await;
}

/// Parse an SSE body into its `data:` payloads.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_true_answers_with_chunks_whose_text_is_the_job_s_output() {
    let env = env(|_| {}).await;
    let (base, run) = start(&env).await;

    let mut body = chat("gpt-4o-mini", "Tell me a long story about trains");
    body["max_tokens"] = json!(300);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let evs = events(&text);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // role, at least one delta (the worker joins deltas already queued), finish, usage
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    let mut streamed = String::new();
    let mut finish = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(choice) = c["choices"].get(0) {
            streamed.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    let job_id = chunks[chunks.len() - 2]["switchyard"]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let output: Value = sqlx::query_scalar("SELECT output FROM jobs WHERE id = $1")
        .bind(&job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(streamed, output["content"].as_str().unwrap());
    assert_eq!(finish.as_deref(), output["finish_reason"].as_str());

    run.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_in_openai_s_shape_with_its_statuses() {
    let env = env(|c| c.serve.max_body_bytes = 4096).await;
    let (base, run) = start(&env).await;
    let ok = chat("gpt-4o-mini", "hi");

    let cases: Vec<(Option<&str>, Value, u16, &str)> = vec![
        (None, ok.clone(), 401, "invalid_api_key"),
        (Some("sk-not-a-key"), ok.clone(), 401, "invalid_api_key"),
        (
            Some(KEY),
            chat("no-such-model", "hi"),
            404,
            "model_not_found",
        ),
        (
            Some(KEY),
            json!({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}),
            400,
            "invalid_job",
        ),
        (
            Some(KEY),
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "seed": 3}),
            400,
            "",
        ),
        (
            Some(KEY),
            json!({"messages": [{"role": "user", "content": "x"}]}),
            400,
            "",
        ),
        (
            Some(KEY),
            chat("gpt-4o-mini", &"x".repeat(5000)),
            413,
            "request_too_large",
        ),
    ];
    for (key, body, status, code) in cases {
        let (s, v) = post(&base, "/chat/completions", key, &body).await;
        assert_eq!(s, status, "{body}: {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        if !code.is_empty() {
            assert_eq!(e["code"], code, "{v}");
        }
        assert!(
            !v.to_string().contains("sk-not-a-key"),
            "the key is never echoed"
        );
    }
    // Not JSON at all.
    let r = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .bearer_auth(KEY)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // A streamed request that fails before any output gets its status, not a stream.
    let mut b = chat("no-such-model", "hi");
    b["stream"] = json!(true);
    let (s, v) = post(&base, "/chat/completions", Some(KEY), &b).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );

    run.end().await;
}

fn multipart(name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let b = "syTestBoundary7";
    let mut body = format!("--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

/// Upload `lines`, create a batch, wait for it to end; returns the batch and the output
/// and error files' lines.
pub async fn run_batch(
    base: &str,
    key: &str,
    lines: &[String],
    secs: u64,
) -> (Value, Vec<Value>, Vec<Value>) {
    let http = reqwest::Client::new();
    let (ct, body) = multipart("in.jsonl", lines.join("\n").as_bytes());
    let f: Value = http
        .post(format!("{base}/files"))
        .bearer_auth(key)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(f["object"], "file", "{f}");
    let (s, mut b) = post(base, "/batches", Some(key),
        &json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})).await;
    assert_eq!(s, 200, "{b}");
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while ["in_progress", "cancelling", "finalizing"].contains(&b["status"].as_str().unwrap()) {
        assert!(std::time::Instant::now() < until, "batch still {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        b = http
            .get(format!("{base}/batches/{}", b["id"].as_str().unwrap()))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    let mut files = Vec::new();
    for k in ["output_file_id", "error_file_id"] {
        let lines = match b[k].as_str() {
            Some(id) => {
                let t = http
                    .get(format!("{base}/files/{id}/content"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                t.lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect()
            }
            None => Vec::new(),
        };
        files.push(lines);
    }
    let errs = files.pop().unwrap();
    (b, files.pop().unwrap(), errs)
}

fn batch_line(i: usize, model: &str) -> String {
    json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": format!("Say something about {i}")}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_file_runs_as_low_priority_jobs_and_ends_with_openai_s_output_and_error_files() {
    let env = env(|_| {}).await;
    let (base, run) = start(&env).await;

    let mut lines: Vec<String> = (0..30).map(|i| batch_line(i, "gpt-4o-mini")).collect();
    lines.push(batch_line(30, "no-such-model"));
    lines
        .push(r#"{"custom_id":"bad-url","method":"POST","url":"/v1/embeddings","body":{}}"#.into());
    lines.push("not json".into());
    let (b, out, errs) = run_batch(&base, KEY, &lines, 60).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": 33, "completed": 30, "failed": 3})
    );
    assert_eq!(out.len(), 30);
    for o in &out {
        assert_eq!(o["response"]["status_code"], 200);
        assert!(o["response"]["body"]["choices"][0]["message"]["content"].is_string());
    }
    let mut ids: Vec<&str> = out
        .iter()
        .map(|o| o["custom_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30);
    let codes: Vec<Value> = errs
        .iter()
        .map(|e| {
            json!([
                e["custom_id"],
                e["response"]["status_code"],
                e["error"]["code"]
            ])
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            json!(["req-30", 404, null]),
            json!(["bad-url", null, "invalid_url"]),
            json!([null, null, "invalid_json_line"]),
        ]
    );
    // Every line ran as a low-priority job of the key's tenant.
    let low: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant = 'acme' AND priority = 'low'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(low, 31);
    // Another tenant's key cannot see it (there is none here: a wrong key is 401).
    let r = reqwest::Client::new()
        .get(format!("{base}/batches/{}", b["id"].as_str().unwrap()))
        .bearer_auth("sk-other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    run.end().await;
}

/// The official `openai` SDK against a running front door, when `SWITCHYARD_SDK_PYTHON`
/// names a Python that has it; otherwise skipped, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_works_against_serve() {
    let Ok(python) = std::env::var("SWITCHYARD_SDK_PYTHON") else {
        eprintln!("skipped: SWITCHYARD_SDK_PYTHON is not set");
        return;
    };
    let env = env(|_| {}).await;
    let (base, run) = start(&env).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/lib/sdk_frontdoor_check.py"
    );
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&base)
        .arg(KEY)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the SDK check failed:\n{text}");
    assert!(text.contains("all passed"));
    run.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_reads_openai_batch_jsonl_and_writes_openai_s_output_and_error_files() {
    let env = env(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.jsonl");
    let mut lines: Vec<String> = (0..10).map(|i| batch_line(i, "gpt-4o-mini")).collect();
    lines.push(batch_line(10, "no-such-model"));
    lines.push(
        r#"{"custom_id":"get","method":"GET","url":"/v1/chat/completions","body":{}}"#.into(),
    );
    // A switchyard job line in the same file.
    lines.push(common::job("own-line", "acme", ""));
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (out, errs) = (dir.path().join("out.jsonl"), dir.path().join("err.jsonl"));
    let args = [
        "submit",
        file.to_str().unwrap(),
        "--tenant",
        "acme",
        "--priority",
        "low",
        "--wait",
        "--quiet",
        "--timeout-s",
        "60",
        "--format",
        "openai",
        "--results",
        out.to_str().unwrap(),
        "--errors",
        errs.to_str().unwrap(),
    ];
    let (code, _, err) = env.cli(&args).await;
    assert_eq!(code, 4, "one line could not become a job: {err}");
    assert!(
        err.contains("line 12: not submitted") && err.contains("method must be POST"),
        "{err}"
    );
    let read = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let ok = read(&out);
    assert_eq!(ok.len(), 11, "10 batch lines and the job line");
    let mut ids: Vec<&str> = ok
        .iter()
        .map(|o| o["custom_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..10).map(|i| format!("req-{i}")).collect();
    want.push("own-line".into());
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(ok.iter().all(|o| o["response"]["status_code"] == 200));
    let bad = read(&errs);
    let codes: Vec<Value> = bad
        .iter()
        .map(|e| {
            json!([
                e["custom_id"],
                e["response"]["status_code"],
                e["error"]["code"]
            ])
        })
        .collect();
    assert_eq!(codes.len(), 2);
    assert!(
        codes.contains(&json!(["get", null, "invalid_method"])),
        "{codes:?}"
    );
    assert!(codes.contains(&json!(["req-10", 404, null])), "{codes:?}");
    // The same file again: the same job ids, answered from their stored results.
    let (code, _, err) = env.cli(&args).await;
    assert_eq!(code, 4, "{err}");
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant = 'acme' AND priority = 'low'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(n, 12);
    let calls: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cost_rows WHERE outcome = 'succeeded'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(calls, 11, "the second run made no provider call");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_ends_with_what_finished_and_says_which_lines_did_not() {
    let env = env(|_| {}).await;
    env.ensure_streams().await;
    // No worker: nothing finishes before the cancel.
    let (base, stop, task) = serve(&env).await;
    let lines: Vec<String> = (0..3).map(|i| batch_line(i, "gpt-4o-mini")).collect();
    let http = reqwest::Client::new();
    let (ct, body) = multipart("in.jsonl", lines.join("\n").as_bytes());
    let f: Value = http
        .post(format!("{base}/files"))
        .bearer_auth(KEY)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (s, b) = post(&base, "/batches", Some(KEY),
        &json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})).await;
    assert_eq!(s, 200, "{b}");
    let id = b["id"].as_str().unwrap();
    let (s, c) = post(
        &base,
        &format!("/batches/{id}/cancel"),
        Some(KEY),
        &json!({}),
    )
    .await;
    assert_eq!((s, c["status"].as_str()), (200, Some("cancelling")), "{c}");
    let mut b = c;
    for _ in 0..100 {
        if b["status"] == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        b = http
            .get(format!("{base}/batches/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    assert_eq!(b["status"], "cancelled", "{b}");
    assert_eq!(b["output_file_id"], Value::Null);
    let t = http
        .get(format!(
            "{base}/files/{}/content",
            b["error_file_id"].as_str().unwrap()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let codes: Vec<Value> = t
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["error"]["code"].clone())
        .collect();
    assert_eq!(codes, vec![json!("batch_cancelled"); 3]);
    // An unknown batch or file is 404 in OpenAI's shape.
    let r = http
        .get(format!("{base}/batches/batch-nope"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "batch_not_found");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_in_flight_limit_gets_429_and_its_slot_back_after() {
    let env = env(|c| c.serve.keys[0].max_in_flight = 1).await;
    env.sim
        .set_profile(switchyard::providers::simulator::FaultProfile {
            latency_ms: 1500,
            ..Default::default()
        });
    let (base, run) = start(&env).await;
    let slow = tokio::spawn({
        let base = base.clone();
        async move {
            post(
                &base,
                "/chat/completions",
                Some(KEY),
                &chat("gpt-4o-mini", "slow one"),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = post(
        &base,
        "/chat/completions",
        Some(KEY),
        &chat("gpt-4o-mini", "second"),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("acme-test"),
        "{v}"
    );
    let (s, v) = slow.await.unwrap();
    assert_eq!(s, 200, "{v}");
    env.sim
        .set_profile(switchyard::providers::simulator::FaultProfile::default());
    let (s, v) = post(
        &base,
        "/chat/completions",
        Some(KEY),
        &chat("gpt-4o-mini", "third"),
    )
    .await;
    assert_eq!(s, 200, "the slot came back: {v}");
    run.end().await;
}
