//! The simulator speaks HTTP/1.1 and HTTP/2 on one port: h2c with prior knowledge, and
//! ALPN over TLS; an HTTP/2 connection carries at most `h2_max_streams` calls at once.

use super::serve::test_identity;
use super::testutil::{start, start_with};
use super::*;
use serde_json::json;
use std::time::Duration;

fn chat() -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

async fn call(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth("sk-test")
        .json(&chat())
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http1_on_one_port() {
    let r = start(FaultProfile::default()).await;
    let url = r.url("/v1/chat/completions");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = call(&h2, &url).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");

    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let resp = call(&h1, &url).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    assert_eq!(r.sim.stats().count("openai", "gpt-4o-mini", 200), 2);
    assert_eq!(r.sim.connections().0, 2);
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn tls_alpn_offers_h2_and_http1() {
    let (id, der) = test_identity();
    let opts = ServeOptions {
        tls: Some(id),
        ..ServeOptions::default()
    };
    let r = start_with(FaultProfile::default(), opts).await;
    let url = r.url("/v1/chat/completions");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let cert = reqwest::Certificate::from_der(&der).unwrap();
    let client = |h1: bool| {
        let b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert.clone());
        let b = if h1 { b.http1_only() } else { b };
        b.build().unwrap()
    };
    let resp = call(&client(false), &url).await;
    assert_eq!(
        (resp.version(), resp.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    let resp = call(&client(true), &url).await;
    assert_eq!(
        (resp.version(), resp.status().as_u16()),
        (reqwest::Version::HTTP_11, 200)
    );
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn one_h2_connection_carries_at_most_h2_max_streams_calls() {
    let profile = FaultProfile {
        latency_ms: 300,
        ..FaultProfile::default()
    };
    let opts = ServeOptions {
        h2_max_streams: 4,
        ..ServeOptions::default()
    };
    let r = start_with(profile, opts).await;
    let url = r.url("/v1/chat/completions");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // One reqwest client keeps one HTTP/2 connection: 8 calls at 4 per connection take
    // two rounds of the 300 ms latency.
    let started = std::time::Instant::now();
    let calls = (0..8).map(|_| call(&h2, &url));
    for resp in futures::future::join_all(calls).await {
        assert_eq!(resp.status(), 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.sim.connections().0, 1);
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}
