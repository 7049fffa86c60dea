//! Tests of the outage, slow-first-byte, truncation, latency-distribution and
//! request-log knobs.

use super::testutil::{start, Running};
use super::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum Api {
    OpenAi,
    Anthropic,
    Gemini,
}

/// A valid request to `api` for `model` (with a key when `key` is set), and its body.
fn request(r: &Running, api: Api, model: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    let (path, body) = match api {
        Api::OpenAi => (
            "/v1/chat/completions".to_owned(),
            json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]}),
        ),
        Api::Anthropic => (
            "/v1/messages".to_owned(),
            json!({"model": model, "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello there"}]}),
        ),
        Api::Gemini => (
            format!("/v1beta/models/{model}:generateContent"),
            json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}),
        ),
    };
    let mut req = r
        .client
        .post(r.url(&path))
        .header("content-type", "application/json")
        .body(body.to_string());
    match (api, key) {
        (_, None) => {}
        (Api::OpenAi, Some(k)) => req = req.bearer_auth(k),
        (Api::Anthropic, Some(k)) => {
            req = req
                .header("x-api-key", k)
                .header("anthropic-version", "2023-06-01");
        }
        (Api::Gemini, Some(k)) => req = req.header("x-goog-api-key", k),
    }
    req
}

fn key_for(api: Api) -> &'static str {
    match api {
        Api::OpenAi => "sk-test",
        Api::Anthropic => "sk-ant-test",
        Api::Gemini => "AIza-test",
    }
}

async fn call(r: &Running, api: Api, model: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = request(r, api, model, Some(key_for(api)))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn outage(start_s: f64, duration_s: f64, status: u16) -> Outage {
    Outage {
        start_s,
        duration_s,
        status,
    }
}

// ---- outages ----

#[test]
fn outage_windows_status_and_time_left() {
    let o: Outage = serde_json::from_str(r#"{"start_s": 10, "duration_s": 5}"#).unwrap();
    assert_eq!(o, outage(10.0, 5.0, 503));
    assert!(serde_json::from_str::<Outage>(r#"{"start_s": 1}"#).is_err());
    assert!(serde_json::from_str::<Outage>(r#"{"start_s":1,"duration_s":1,"x":1}"#).is_err());
    let at = |s: f64| Duration::from_secs_f64(s);
    assert_eq!(o.active_at(at(9.99)), None);
    assert_eq!(o.active_at(at(10.0)), Some((503, 5)));
    assert_eq!(o.active_at(at(12.5)), Some((503, 3)));
    assert_eq!(o.active_at(at(14.9)), Some((503, 1)));
    assert_eq!(o.active_at(at(15.0)), None);
    assert_eq!(outage(0.0, 1.0, 0).active_at(at(0.5)), Some((503, 1)));
    assert_eq!(outage(0.0, 0.0, 500).active_at(at(0.0)), None);
    assert_eq!(outage(f64::NAN, 1.0, 500).active_at(at(0.0)), None);
    let p = FaultProfile {
        outages: vec![outage(0.0, 2.0, 500), outage(1.0, 5.0, 429)],
        ..Default::default()
    };
    assert_eq!(
        p.outage_at(at(1.5)),
        Some((500, 1)),
        "first matching window"
    );
    assert_eq!(p.outage_at(at(3.0)), Some((429, 3)));
    assert_eq!(p.outage_at(at(6.0)), None);
}

#[tokio::test]
async fn outage_answers_every_api_in_its_error_shape_then_recovers() {
    let mut per_model = HashMap::new();
    per_model.insert("healthy".to_owned(), FaultProfile::default());
    let r = start(FaultProfile {
        outages: vec![outage(0.0, 0.8, 0)],
        per_model,
        ..Default::default()
    })
    .await;
    let t = Instant::now();

    let (s, _, b) = call(&r, Api::OpenAi, "gpt-4o").await;
    assert_eq!(s, 503);
    let v = json_of(&b);
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    assert!(v["error"]["message"].is_string());

    let (s, _, b) = call(&r, Api::Anthropic, "claude-3-5-haiku").await;
    assert_eq!(s, 503);
    let v = json_of(&b);
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["type"].is_string());

    let (s, _, b) = call(&r, Api::Gemini, "gemini-2.0-flash").await;
    assert_eq!(s, 503);
    let v = json_of(&b);
    assert_eq!(v["error"]["status"], "UNAVAILABLE", "{v}");
    assert_eq!(v["error"]["code"], 503);

    // Before any check: no key still gets the outage.
    let resp = request(&r, Api::OpenAi, "gpt-4o", None)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 503);

    // A per-model profile without outages is not affected.
    assert_eq!(call(&r, Api::OpenAi, "healthy").await.0, 200);
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "still in the window"
    );

    tokio::time::sleep(Duration::from_millis(850).saturating_sub(t.elapsed())).await;
    assert_eq!(call(&r, Api::OpenAi, "gpt-4o").await.0, 200);
    assert_eq!(call(&r, Api::Gemini, "gemini-2.0-flash").await.0, 200);

    let stats = r.sim.stats();
    assert_eq!(stats.count("openai", "gpt-4o", 503), 2);
    assert_eq!(stats.count("anthropic", "claude-3-5-haiku", 503), 1);
    let log = r.sim.log(100);
    let outages = log.iter().filter(|e| e.fault == Some("outage")).count();
    assert_eq!(outages, 4);
    assert_eq!(log[0].fault, None);
    r.shutdown.cancel();
}

#[tokio::test]
async fn outage_windows_count_from_set_profile() {
    let profile = FaultProfile {
        outages: vec![outage(0.3, 30.0, 429)],
        ..Default::default()
    };
    let r = start(profile.clone()).await;
    assert_eq!(call(&r, Api::Anthropic, "claude-3-5-haiku").await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, h, b) = call(&r, Api::Anthropic, "claude-3-5-haiku").await;
    assert_eq!(s, 429);
    assert_eq!(json_of(&b)["error"]["type"], "rate_limit_error");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (29..=30).contains(&retry),
        "retry-after is the rest: {retry}"
    );
    // Setting the profile again starts its windows again.
    r.sim.set_profile(profile);
    assert_eq!(call(&r, Api::Anthropic, "claude-3-5-haiku").await.0, 200);
    r.shutdown.cancel();
}

#[tokio::test]
async fn outage_status_529_is_anthropic_overloaded_and_a_503_elsewhere() {
    let r = start(FaultProfile {
        outages: vec![outage(0.0, 60.0, 529)],
        ..Default::default()
    })
    .await;
    let (s, _, b) = call(&r, Api::Anthropic, "claude-3-5-haiku").await;
    assert_eq!(s, 529);
    assert_eq!(json_of(&b)["error"]["type"], "overloaded_error");
    assert_eq!(call(&r, Api::OpenAi, "gpt-4o").await.0, 503);
    r.shutdown.cancel();
}

// ---- slow first byte ----

#[tokio::test]
async fn first_byte_sends_headers_then_body_later() {
    let r = start(FaultProfile {
        first_byte_ms: 500,
        ..Default::default()
    })
    .await;
    for api in [Api::OpenAi, Api::Gemini] {
        let model = match api {
            Api::Gemini => "gemini-2.0-flash",
            _ => "gpt-4o",
        };
        let t = Instant::now();
        let resp = request(&r, api, model, Some(key_for(api)))
            .send()
            .await
            .expect("send");
        let headers_at = t.elapsed();
        assert_eq!(resp.status(), 200);
        assert!(
            headers_at < Duration::from_millis(350),
            "{api:?}: headers after {headers_at:?}"
        );
        assert!(resp.content_length().is_none(), "streamed body");
        let body = resp.bytes().await.expect("body");
        assert!(t.elapsed() >= Duration::from_millis(500), "{api:?}");
        json_of(&body);
    }
    // Errors too.
    let t = Instant::now();
    let resp = request(&r, Api::Anthropic, "claude-3-5-haiku", None)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    assert!(t.elapsed() < Duration::from_millis(350));
    let v = json_of(&resp.bytes().await.expect("body"));
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(t.elapsed() >= Duration::from_millis(500));
    // The log's latency is the time to the headers.
    assert!(r.sim.log(10).iter().all(|e| e.latency_ms < 350));
    r.shutdown.cancel();
}

#[tokio::test]
async fn latency_delays_the_headers_unlike_first_byte() {
    let r = start(FaultProfile {
        latency_ms: 400,
        ..Default::default()
    })
    .await;
    let t = Instant::now();
    let resp = request(&r, Api::OpenAi, "gpt-4o", Some("sk-test"))
        .send()
        .await
        .expect("send");
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        resp.content_length(),
        Some(resp.bytes().await.unwrap().len() as u64)
    );
    r.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_releases_a_held_body() {
    let r = start(FaultProfile {
        first_byte_ms: 60_000,
        ..Default::default()
    })
    .await;
    let resp = request(&r, Api::OpenAi, "gpt-4o", Some("sk-test"))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    r.shutdown.cancel();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
        .await
        .expect("body released by shutdown")
        .expect("body");
    json_of(&body);
    let served = tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("serve returns")
        .expect("join");
    assert!(served.is_ok());
}

// ---- truncated bodies ----

#[tokio::test]
async fn truncate_rate_one_cuts_every_200_body_in_half() {
    let r = start(FaultProfile::default()).await;
    let (_, _, full_openai) = call(&r, Api::OpenAi, "gpt-4o").await;
    let (_, _, full_gemini) = call(&r, Api::Gemini, "gemini-2.0-flash").await;
    r.sim.set_profile(FaultProfile {
        truncate_rate: 1.0,
        ..Default::default()
    });
    for (api, model, full) in [
        (Api::OpenAi, "gpt-4o", full_openai),
        (Api::Gemini, "gemini-2.0-flash", full_gemini),
    ] {
        let (s, h, b) = call(&r, api, model).await;
        assert_eq!(s, 200);
        let cl: usize = h["content-length"].to_str().unwrap().parse().unwrap();
        assert_eq!(cl, b.len(), "content-length matches the cut body");
        assert!(
            b.len().abs_diff(full.len() / 2) <= 2,
            "{} vs {}",
            b.len(),
            full.len()
        );
        assert!(serde_json::from_slice::<Value>(&b).is_err(), "unparseable");
        assert!(h["content-type"].to_str().unwrap().contains("json"));
    }
    // Error answers are left whole.
    let resp = request(&r, Api::OpenAi, "gpt-4o", None)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    json_of(&resp.bytes().await.unwrap());

    assert_eq!(r.sim.stats().count("openai", "gpt-4o", 200), 2);
    let log = r.sim.log(10);
    assert_eq!(log[0].fault, None, "the 401");
    assert_eq!(log[1].fault, Some("truncated"));
    assert_eq!(log[2].fault, Some("truncated"));
    assert_eq!(log[3].fault, None, "before the knob");
    r.shutdown.cancel();
}

#[tokio::test]
async fn truncate_rate_half_truncates_some() {
    let r = start(FaultProfile {
        truncate_rate: 0.5,
        ..Default::default()
    })
    .await;
    let mut cut = 0;
    let mut whole = 0;
    for _ in 0..40 {
        let (_, _, b) = call(&r, Api::Anthropic, "claude-3-5-haiku").await;
        if serde_json::from_slice::<Value>(&b).is_ok() {
            whole += 1;
        } else {
            cut += 1;
        }
    }
    assert!(cut > 0 && whole > 0, "cut {cut}, whole {whole}");
    let logged = r
        .sim
        .log(100)
        .iter()
        .filter(|e| e.fault == Some("truncated"))
        .count();
    assert_eq!(logged, cut);
    r.shutdown.cancel();
}

// ---- latency distribution ----

#[test]
fn new_knobs_parse_and_resolve_per_model() {
    let p: FaultProfile = serde_json::from_str(
        r#"{"latency_dist": "exponential", "first_byte_ms": 5, "truncate_rate": 0.1,
            "per_model": {"x": {"latency_dist": "lognormal", "outages": [{"start_s": 0, "duration_s": 9}]}}}"#,
    )
    .unwrap();
    let k = Knobs::resolve(&p, "m");
    assert_eq!(k.latency_dist, LatencyDist::Exponential);
    assert_eq!((k.first_byte_ms, k.truncate_rate), (5, 0.1));
    let k = Knobs::resolve(&p, "x");
    assert_eq!(k.latency_dist, LatencyDist::Lognormal);
    assert_eq!((k.first_byte_ms, k.truncate_rate), (0, 0.0));
    assert_eq!(p.effective("x").outages.len(), 1);
    assert!(p.effective("m").outages.is_empty());
    assert!(serde_json::from_str::<FaultProfile>(r#"{"latency_dist": "normal"}"#).is_err());
    // Old-style construction still works and defaults inject nothing.
    let d = FaultProfile {
        latency_ms: 1,
        ..Default::default()
    };
    assert!(d.outages.is_empty() && d.first_byte_ms == 0 && d.truncate_rate == 0.0);
    assert_eq!(
        (d.latency_dist, d.log_capacity),
        (LatencyDist::Uniform, None)
    );
}

#[tokio::test]
async fn exponential_latency_is_applied_over_http() {
    let r = start(FaultProfile {
        latency_ms: 50,
        latency_dist: LatencyDist::Exponential,
        ..Default::default()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(call(&r, Api::OpenAi, "gpt-4o").await.0, 200);
    }
    // The range of n exponential samples is distributed as the maximum of n - 1 of
    // them: P(range <= 30 ms) = (1 - e^(-30/50))^19 ≈ 3e-7. A constant (uniform with no
    // jitter) delay would give a range of a millisecond or two.
    let logged: Vec<u64> = r.sim.log(20).iter().map(|e| e.latency_ms).collect();
    let (min, max) = (
        logged.iter().min().copied().unwrap(),
        logged.iter().max().copied().unwrap(),
    );
    assert!(max - min > 30, "spread {logged:?}");
    r.shutdown.cancel();
}

// ---- request log ----

#[tokio::test]
async fn request_log_newest_first_with_faults_and_no_keys() {
    let mut per_model = HashMap::new();
    per_model.insert(
        "flaky".to_owned(),
        FaultProfile {
            fail_first: 1,
            ..Default::default()
        },
    );
    per_model.insert(
        "limited".to_owned(),
        FaultProfile {
            rpm: Some(1),
            ..Default::default()
        },
    );
    per_model.insert(
        "stuck".to_owned(),
        FaultProfile {
            hang: true,
            ..Default::default()
        },
    );
    let r = start(FaultProfile {
        per_model,
        ..Default::default()
    })
    .await;
    let secret = "sk-secret-key-0123456789";
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let resp = r
        .client
        .post(r.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(call(&r, Api::OpenAi, "flaky").await.0, 500);
    assert_eq!(call(&r, Api::OpenAi, "limited").await.0, 200);
    assert_eq!(call(&r, Api::OpenAi, "limited").await.0, 429);
    let held = request(&r, Api::Gemini, "stuck", Some("AIza-x"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(held.is_err());
    let resp = request(&r, Api::Anthropic, "claude-3-5-haiku", None)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);

    let log = r.sim.log(100);
    let summary: Vec<(&str, &str, u16, Option<&str>)> = log
        .iter()
        .map(|e| (e.api, e.model.as_str(), e.status, e.fault))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("anthropic", "claude-3-5-haiku", 401, None),
            ("gemini", "stuck", 0, Some("hang")),
            ("openai", "limited", 429, Some("rate_limited")),
            ("openai", "limited", 200, None),
            ("openai", "flaky", 500, Some("injected")),
            ("openai", "m1", 200, None),
        ]
    );
    let first = &log[5];
    assert_eq!(first.request_bytes, body.len() as u64);
    assert!(first.latency_ms < 1000);
    let at = chrono::DateTime::parse_from_rfc3339(&first.at).expect("RFC 3339");
    assert!((chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds() < 30);
    assert!(first.at.ends_with('Z') && first.at.len() == "2025-01-01T00:00:00.000Z".len());
    assert_eq!(r.sim.log(2), log[..2].to_vec());

    // Over HTTP: newest first, limited, and never the key.
    let text = r
        .client
        .get(r.url("/_sim/log?limit=1000"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("secret"), "{text}");
    let all: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 6);
    assert_eq!(all[0]["api"], "anthropic");
    assert!(all[0]["fault"].is_null());
    assert_eq!(all[1]["fault"], "hang");
    let two: Value = r
        .client
        .get(r.url("/_sim/log?limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(two.as_array().unwrap().len(), 2);
    assert_eq!(two[1]["model"], "stuck");
    let bad = r
        .client
        .get(r.url("/_sim/log?limit=many"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    r.client
        .post(r.url("/_sim/reset"))
        .send()
        .await
        .expect("reset");
    assert!(r.sim.log(100).is_empty());
    r.shutdown.cancel();
}

#[tokio::test]
async fn log_capacity_bounds_the_log() {
    let r = start(FaultProfile {
        log_capacity: Some(2),
        ..Default::default()
    })
    .await;
    for model in ["a", "b", "c"] {
        call(&r, Api::OpenAi, model).await;
    }
    let models: Vec<String> = r.sim.log(100).into_iter().map(|e| e.model).collect();
    assert_eq!(models, ["c", "b"]);
    let default: Vec<LogEntry> = {
        r.sim.set_profile(FaultProfile::default());
        for _ in 0..3 {
            call(&r, Api::OpenAi, "d").await;
        }
        r.sim.log(100)
    };
    assert_eq!(default.len(), 5, "default capacity keeps more");
    r.sim.set_profile(FaultProfile {
        log_capacity: Some(0),
        ..Default::default()
    });
    call(&r, Api::OpenAi, "e").await;
    assert!(r.sim.log(100).is_empty());
    // The counters are unaffected by the log's capacity.
    assert_eq!(r.sim.stats().total, 7);
    r.shutdown.cancel();
}
