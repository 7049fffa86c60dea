#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Streamed output (issue 14): a job with `stream: true` gets ordered chunks on its
//! `reply_to` before its one terminal result; a provider that fails mid-stream is
//! followed by a reset chunk and the next candidate's text. Real NATS, Postgres and the
//! simulator, which streams each provider's own wire format.

mod common;

use common::{job, TestEnv};
use futures::StreamExt;
use rust_decimal::Decimal;
use std::time::Duration;
use switchyard::job::chunk::{CHUNK_KIND, JOB_HEADER, KIND_HEADER, SEQ_HEADER};
use switchyard::job::{Priority, Status};
use switchyard::providers::simulator::{FaultProfile, StreamFault};

/// What a listener saw on a reply subject: the chunks (in arrival order) and the result.
struct Seen {
    chunks: Vec<serde_json::Value>,
    result: serde_json::Value,
}

impl Seen {
    /// The text a listener ends with: deltas appended, a reset discarding all before it.
    fn text(&self) -> String {
        let mut text = String::new();
        for c in &self.chunks {
            if c["reset"] == true {
                text.clear();
            } else {
                text.push_str(c["delta"].as_str().unwrap());
            }
        }
        text
    }

    fn resets(&self) -> Vec<&serde_json::Value> {
        self.chunks.iter().filter(|c| c["reset"] == true).collect()
    }
}

/// Read `sub` until the terminal result (the message without `Switchyard-Kind`),
/// checking every chunk's headers, schema and order on the way.
async fn listen(sub: &mut async_nats::Subscriber, tenant: &str, id: &str) -> Seen {
    let mut chunks: Vec<serde_json::Value> = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a message in time")
            .expect("subscription open");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let kind = m.headers.as_ref().and_then(|h| h.get(KIND_HEADER));
        if kind.is_none() {
            common::assert_schema("result", &body);
            return Seen {
                chunks,
                result: body,
            };
        }
        let h = m.headers.as_ref().unwrap();
        assert_eq!(kind.unwrap().as_str(), CHUNK_KIND);
        common::assert_schema("chunk", &body);
        assert_eq!(body["id"], id);
        assert_eq!(
            h.get(JOB_HEADER).unwrap().as_str(),
            format!("{tenant}:{id}")
        );
        let seq = body["seq"].as_u64().unwrap();
        assert_eq!(h.get(SEQ_HEADER).unwrap().as_str(), seq.to_string());
        if let Some(last) = chunks.last() {
            assert_eq!(
                seq,
                last["seq"].as_u64().unwrap() + 1,
                "chunks in order, none lost"
            );
        } else {
            assert_eq!(seq, 0, "the first delivery's chunks start at 0");
        }
        chunks.push(body);
    }
}

/// (outcome, cost) of each of the job's cost rows, in attempt order.
async fn cost_rows(env: &TestEnv, id: &str) -> Vec<(String, Decimal, i64)> {
    sqlx::query_as(
        "SELECT outcome, cost_usd, input_tokens::bigint FROM cost_rows
         WHERE tenant = 'acme' AND job_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// Streamed events a little apart, so that chunks really go out before the answer ends.
fn paced() -> FaultProfile {
    FaultProfile {
        stream_chunk_ms: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_in_order_and_make_the_output_on_every_provider() {
    let env = TestEnv::new(|c| c.health.latency_order = false).await;
    env.sim.set_profile(paced());
    let (stop, worker) = env.start_worker().await;
    let models = [
        ("openai/gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18"),
        (
            "anthropic/claude-3-5-haiku",
            "anthropic",
            "claude-3-5-haiku-20241022",
        ),
        ("gemini/gemini-2.0-flash", "gemini", "gemini-2.0-flash"),
    ];
    for (i, (model, provider, upstream)) in models.iter().enumerate() {
        let id = format!("s-{provider}");
        let inbox = format!("_INBOX.{}.stream.{i}", env.prefix);
        let mut sub = env.subscribe(&inbox).await;
        let extra =
            format!(r#","model":"{model}","max_tokens":300,"stream":true,"reply_to":"{inbox}""#);
        env.publish(Priority::Normal, "acme", job(&id, "acme", &extra))
            .await;
        let seen = listen(&mut sub, "acme", &id).await;
        assert_eq!(seen.result["status"], "succeeded", "{model}");
        assert_eq!(seen.result["provider"], *provider);
        assert!(
            seen.chunks.len() >= 3,
            "{model}: {} chunks",
            seen.chunks.len()
        );
        assert!(seen.resets().is_empty());
        let content = seen.result["output"]["content"].as_str().unwrap();
        assert!(!content.is_empty());
        assert_eq!(seen.text(), content, "{model}: the chunks make the output");
        let rows = cost_rows(&env, &id).await;
        assert_eq!(rows.len(), 1, "{model}: one cost row");
        assert_eq!(rows[0].0, "succeeded");
        assert!(rows[0].1 > Decimal::ZERO, "{model}: the call is billed");
        assert_eq!(env.sim.stats().count(provider, upstream, 200), 1);
        // Nothing after the result.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sub.next())
                .await
                .is_err(),
            "{model}: the result is the last message"
        );
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// The first candidate breaks after half its events (`fault`), the second answers: a reset
/// between them, the result from the second, and a cost row for each call.
async fn failover_after(fault: StreamFault, first: &str, first_api: &str) {
    let env = TestEnv::new(|c| c.health.latency_order = false).await;
    let broken = FaultProfile {
        stream_fail_first: 1,
        stream_fault: fault,
        ..paced()
    };
    env.sim.set_profile(FaultProfile {
        per_model: [(first.to_string(), broken)].into(),
        ..paced()
    });
    let (stop, worker) = env.start_worker().await;
    // Two tests share this: a reply subject of this test's own (core NATS subjects are
    // global, and the two run at once).
    let inbox = format!("_INBOX.{}.fo", env.prefix);
    let mut sub = env.subscribe(&inbox).await;
    let extra = format!(
        r#","model":"claude-3-5-haiku","providers":{{"allow":["anthropic","gemini"]}},"max_tokens":300,"stream":true,"reply_to":"{inbox}""#
    );
    env.publish(Priority::Normal, "acme", job("fo", "acme", &extra))
        .await;
    let seen = listen(&mut sub, "acme", "fo").await;
    assert_eq!(seen.result["status"], "succeeded");
    assert_eq!(
        seen.result["provider"], "gemini",
        "the second candidate answered"
    );
    let resets = seen.resets();
    assert_eq!(resets.len(), 1, "one reset: {:?}", seen.chunks);
    let reason = resets[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("anthropic/claude-3-5-haiku failed ("),
        "{reason}"
    );
    let at = seen.chunks.iter().position(|c| c["reset"] == true).unwrap();
    assert!(at > 0, "the first candidate streamed text before it broke");
    assert!(
        at + 1 < seen.chunks.len(),
        "the second candidate's text follows"
    );
    assert_eq!(
        seen.text(),
        seen.result["output"]["content"].as_str().unwrap(),
        "after the reset, the chunks make the output"
    );
    let rows = cost_rows(&env, "fo").await;
    assert_eq!(rows.len(), 2, "one cost row per call: {rows:?}");
    assert_eq!(rows[1].0, "succeeded");
    assert_ne!(rows[0].0, "succeeded");
    // Anthropic said the input usage in message_start: the broken call is billed for it.
    assert!(rows[0].2 > 0, "the broken call's usage so far: {rows:?}");
    assert!(rows[0].1 > Decimal::ZERO);
    let attempts = seen.result["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    let total: Decimal = rows.iter().map(|r| r.1).sum();
    assert_eq!(
        seen.result["cost_usd"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        total,
        "both calls are in the job's cost"
    );
    assert_eq!(env.sim.stats().calls(first_api, first), 1);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_mid_stream_resets_and_fails_over() {
    failover_after(StreamFault::Error, "claude-3-5-haiku-20241022", "anthropic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_stream_resets_and_fails_over() {
    failover_after(StreamFault::Cut, "claude-3-5-haiku-20241022", "anthropic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_jobs_get_only_their_result() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    let inbox = format!("_INBOX.{}.plain", env.prefix);
    let mut sub = env.subscribe(&inbox).await;
    let extra = &format!(r#","model":"openai/gpt-4o-mini","reply_to":"{inbox}""#);
    env.publish(Priority::Normal, "acme", job("plain", "acme", extra))
        .await;
    let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert!(m.headers.is_none(), "a result carries no headers");
    let r: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(r["status"], "succeeded");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "no chunk, one message"
    );
    let log = env.sim.log(10);
    assert_eq!(log.len(), 1);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_reply_to_is_an_invalid_job() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    env.publish(
        Priority::Normal,
        "acme",
        job("noreply", "acme", r#","stream":true"#),
    )
    .await;
    let r = env.result("acme", "noreply", 20).await;
    assert_eq!(r.status, Status::Failed);
    let e = r.error.unwrap();
    assert_eq!(e.kind.as_str(), "invalid_job");
    assert!(e.message.contains("stream"), "{}", e.message);
    assert_eq!(env.sim.stats().total, 0, "no provider call");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_is_one_chunk_then_the_result() {
    let env = TestEnv::new(|c| c.cache.enabled = true).await;
    let (stop, worker) = env.start_worker().await;
    let extra = |inbox: &str| {
        format!(
            r#","model":"openai/gpt-4o-mini","temperature":0,"stream":true,"reply_to":"{inbox}""#
        )
    };
    let (c1, c2) = (
        format!("_INBOX.{}.c1", env.prefix),
        format!("_INBOX.{}.c2", env.prefix),
    );
    let mut first = env.subscribe(&c1).await;
    let body = |id: &str, inbox: &str| {
        format!(
            r#"{{"id":"{id}","tenant":"acme","messages":[{{"role":"user","content":"the same question"}}]{}}}"#,
            extra(inbox)
        )
    };
    env.publish(Priority::Normal, "acme", body("c1", &c1)).await;
    let one = listen(&mut first, "acme", "c1").await;
    assert_eq!(one.result["cache_hit"], false);
    let mut second = env.subscribe(&c2).await;
    env.publish(Priority::Normal, "acme", body("c2", &c2)).await;
    let two = listen(&mut second, "acme", "c2").await;
    assert_eq!(two.result["cache_hit"], true);
    assert_eq!(two.chunks.len(), 1, "one chunk with the whole output");
    assert_eq!(two.text(), one.text());
    assert_eq!(
        two.text(),
        two.result["output"]["content"].as_str().unwrap()
    );
    assert_eq!(env.sim.stats().total, 1, "the second job made no call");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A worker stopped mid-stream (its grace period over) hands the job back; another worker
/// streams it again: its first chunk is a reset with `seq` 2^32 (delivery 2), and the
/// text after it is the result's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_stream_starts_with_a_reset_at_the_next_delivery_s_seq() {
    let env = TestEnv::new(|c| c.worker.shutdown_grace_s = 0).await;
    env.sim.set_profile(FaultProfile {
        stream_chunk_ms: 100,
        ..Default::default()
    });
    let (stop_a, worker_a) = env.start_worker().await;
    let inbox = format!("_INBOX.{}.re", env.prefix);
    let mut sub = env.subscribe(&inbox).await;
    let extra = format!(
        r#","model":"openai/gpt-4o-mini","max_tokens":300,"stream":true,"reply_to":"{inbox}""#
    );
    env.publish(Priority::Normal, "acme", job("re", "acme", &extra))
        .await;
    let mut seqs = Vec::new();
    let mut chunks = Vec::new();
    // The first delivery's first chunks, then stop its worker mid-stream.
    while seqs.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap()
            .unwrap();
        let c: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(c["delta"].is_string(), "{c}");
        seqs.push(c["seq"].as_u64().unwrap());
        chunks.push(c);
    }
    stop_a.cancel();
    worker_a.await.unwrap().unwrap();
    let (stop_b, worker_b) = env.start_worker().await;
    let result = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if m.headers.is_none() {
            break body;
        }
        common::assert_schema("chunk", &body);
        seqs.push(body["seq"].as_u64().unwrap());
        chunks.push(body);
    };
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increasing: {seqs:?}"
    );
    let first_b = chunks
        .iter()
        .position(|c| c["seq"].as_u64().unwrap() >= 1 << 32)
        .expect("chunks of the second delivery");
    assert_eq!(chunks[first_b]["seq"].as_u64().unwrap(), 1 << 32);
    assert_eq!(chunks[first_b]["reset"], true, "{}", chunks[first_b]);
    let seen = Seen { chunks, result };
    assert_eq!(seen.result["status"], "succeeded");
    assert_eq!(
        seen.text(),
        seen.result["output"]["content"].as_str().unwrap()
    );
    stop_b.cancel();
    worker_b.await.unwrap().unwrap();
}

/// The official SDKs (openai, anthropic, google-genai) against the simulator's streaming
/// endpoints (`scripts/lib/sdk_stream_check.py`), when `SWITCHYARD_SDK_PYTHON` names a
/// Python that has them (no internet needed then); otherwise skipped, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_read_the_simulator_s_streams() {
    let Some((_, out)) = common::run_sdk_script("sdk_stream_check.py", &[]).await else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the SDK check failed:\n{text}");
    assert!(text.contains("all passed"));
}

/// Figures (ignored; `cargo test --test stream figures -- --ignored --nocapture`): how much
/// sooner a listener sees text with `stream: true`. Per provider, 20 streamed jobs one
/// after the other (each answer ~25 events, 10 ms apart in the simulator) and the same 20
/// without streaming: time from publish to the first chunk and to the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures() {
    let env = TestEnv::new(|c| c.health.latency_order = false).await;
    env.sim.set_profile(FaultProfile {
        stream_chunk_ms: 10,
        latency_ms: 50,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    let p50 = |v: &mut Vec<u128>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "| provider | first chunk p50 | streamed result p50 | plain result p50 | chunks per job |"
    );
    println!("|---|---|---|---|---|");
    for (n, model) in [
        "openai/gpt-4o-mini",
        "anthropic/claude-3-5-haiku",
        "gemini/gemini-2.0-flash",
    ]
    .iter()
    .enumerate()
    {
        let (mut first, mut streamed, mut plain, mut count) = (vec![], vec![], vec![], 0);
        for i in 0..20 {
            for stream in [true, false] {
                let id = format!("f{n}-{i}-{stream}");
                let inbox = format!("_INBOX.fig.{n}.{i}.{stream}");
                let mut sub = env.subscribe(&inbox).await;
                let extra = format!(
                    r#","model":"{model}","max_tokens":200,"stream":{stream},"reply_to":"{inbox}""#
                );
                let t0 = std::time::Instant::now();
                env.publish(Priority::Normal, "acme", job(&id, "acme", &extra))
                    .await;
                let mut first_chunk = None;
                loop {
                    let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
                        .await
                        .unwrap()
                        .unwrap();
                    let ms = t0.elapsed().as_millis();
                    if m.headers.is_some() {
                        first_chunk.get_or_insert(ms);
                        count += 1;
                        continue;
                    }
                    if stream {
                        streamed.push(ms);
                        first.push(first_chunk.expect("a chunk before the result"));
                    } else {
                        assert!(first_chunk.is_none());
                        plain.push(ms);
                    }
                    break;
                }
            }
        }
        println!(
            "| {model} | {} ms | {} ms | {} ms | {:.1} |",
            p50(&mut first),
            p50(&mut streamed),
            p50(&mut plain),
            count as f64 / 20.0
        );
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
}
