//! The per-provider pool against real HTTP/2 servers (the simulator's serving code with
//! a counting handler): more connections beyond the server's stream limit, the
//! concurrency cap, ALPN over TLS.

use super::http::{Pool, Post};
use crate::config::ProviderConfig;
use crate::providers::simulator::serve::{self, test_identity, ConnCounts};
use crate::providers::simulator::ServeOptions;
use axum::routing::post;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Requests at the server now, and the most seen at once.
#[derive(Default)]
struct Load {
    now: AtomicUsize,
    max: AtomicUsize,
}

struct Server {
    base: String,
    load: Arc<Load>,
    counts: Arc<ConnCounts>,
    stop: CancellationToken,
}

/// A server whose one endpoint holds each request 300 ms, counting them.
async fn server(opts: ServeOptions) -> Server {
    let load = Arc::new(Load::default());
    let router = axum::Router::new().route(
        "/call",
        post({
            let load = Arc::clone(&load);
            move || async move {
                let n = load.now.fetch_add(1, Ordering::SeqCst) + 1;
                load.max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                load.now.fetch_sub(1, Ordering::SeqCst);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().unwrap());
    let counts = Arc::new(ConnCounts::default());
    let stop = CancellationToken::new();
    tokio::spawn({
        let (counts, stop) = (Arc::clone(&counts), stop.clone());
        async move { serve::run(router, listener, stop, &opts, counts, || {}).await }
    });
    Server {
        base,
        load,
        counts,
        stop,
    }
}

fn provider(base: &str, extra: &str) -> ProviderConfig {
    toml::from_str(&format!(
        "name = \"p\"\nkind = \"openai_compatible\"\nbase_url = \"{base}\"\n{extra}"
    ))
    .unwrap()
}

/// `n` calls at once through `pool`; the HTTP versions of the answers.
async fn calls(pool: &Pool, url: &str, n: usize) -> Vec<reqwest::Version> {
    let one = || {
        let post = Post {
            url: url.into(),
            headers: Vec::new(),
            body: bytes::Bytes::from_static(b"{}"),
        };
        pool.send(post, 1 << 20)
    };
    let answers = futures::future::join_all((0..n).map(|_| one())).await;
    answers
        .into_iter()
        .map(|a| {
            let a = a.unwrap();
            assert_eq!(a.status, 200);
            a.version
        })
        .collect()
}

#[tokio::test]
async fn h2_pool_opens_more_connections_beyond_the_stream_limit() {
    let s = server(ServeOptions {
        h2_max_streams: 4,
        tls: None,
    })
    .await;
    let p = provider(
        &s.base,
        "http = \"http2\"\nhttp2_streams_per_connection = 4",
    );
    let pool = Pool::new(&p).unwrap();
    let started = std::time::Instant::now();
    let versions = calls(&pool, &format!("{}/call", s.base), 10).await;
    assert!(versions.iter().all(|v| *v == reqwest::Version::HTTP_2));
    // 10 calls over connections of 4 streams: 3 connections, all at once (one round
    // of the server's 300 ms), none queued behind a full connection.
    assert!(
        s.counts.accepted() >= 3,
        "{} connections",
        s.counts.accepted()
    );
    assert_eq!(s.load.max.load(Ordering::SeqCst), 10);
    assert!(
        started.elapsed() < Duration::from_millis(590),
        "{:?}",
        started.elapsed()
    );
    // Idle again: the extra clients are dropped and their connections close.
    assert_eq!(pool.clients(), 1);
    s.stop.cancel();
}

#[tokio::test]
async fn the_cap_holds_calls_over_it_wait_and_succeed() {
    let s = server(ServeOptions::default()).await;
    for http in ["http1", "http2"] {
        let p = provider(
            &s.base,
            &format!("http = \"{http}\"\nmax_concurrent_calls = 3"),
        );
        let pool = Pool::new(&p).unwrap();
        s.load.max.store(0, Ordering::SeqCst);
        let versions = calls(&pool, &format!("{}/call", s.base), 10).await;
        assert_eq!(versions.len(), 10);
        assert_eq!(s.load.max.load(Ordering::SeqCst), 3, "{http}");
    }
    s.stop.cancel();
}

#[tokio::test]
async fn auto_takes_h2_through_alpn_and_http1_stays_http1() {
    let (id, der) = test_identity();
    let s = server(ServeOptions {
        h2_max_streams: 4,
        tls: Some(id),
    })
    .await;
    let url = format!("{}/call", s.base);
    let auto = provider(&s.base, "http2_streams_per_connection = 4");
    let pool = Pool::with_root(&auto, Some(&der)).unwrap();
    let versions = calls(&pool, &url, 10).await;
    assert!(versions.iter().all(|v| *v == reqwest::Version::HTTP_2));
    // One probe (HEAD) learns HTTP/2 on the first connection; then 4 calls per
    // connection: 3 connections, not one per call.
    assert_eq!(s.counts.accepted(), 3);
    let before = s.counts.accepted();

    let h1 = provider(&s.base, "http = \"http1\"");
    let pool = Pool::with_root(&h1, Some(&der)).unwrap();
    let versions = calls(&pool, &url, 5).await;
    assert!(versions.iter().all(|v| *v == reqwest::Version::HTTP_11));
    assert_eq!(s.counts.accepted() - before, 5);
    s.stop.cancel();
}

#[tokio::test]
async fn http2_over_tls_takes_h2_through_alpn() {
    let (id, der) = test_identity();
    let s = server(ServeOptions {
        h2_max_streams: 4,
        tls: Some(id),
    })
    .await;
    let p = provider(
        &s.base,
        "http = \"http2\"\nhttp2_streams_per_connection = 4",
    );
    let pool = Pool::with_root(&p, Some(&der)).unwrap();
    let versions = calls(&pool, &format!("{}/call", s.base), 10).await;
    assert!(versions.iter().all(|v| *v == reqwest::Version::HTTP_2));
    // No probe: 4 calls per connection, 3 connections.
    assert_eq!(s.counts.accepted(), 3);
    assert_eq!(s.load.max.load(Ordering::SeqCst), 10);
    s.stop.cancel();
}

/// What a call in flight over `http = "http2"` holds in its own future (issue 12: 10,000
/// calls in flight), pool and adapter included; printed with `--nocapture`. A debug build's
/// sizes (a release build's are smaller); the ceiling keeps the per-call state small.
#[test]
fn an_http2_call_in_flight_is_small() {
    use crate::config::FileConfig;
    use crate::providers::Providers;
    // A name no other test reads; the adapters want a key to be built.
    std::env::set_var("SY_HTTP2_SIZE_TEST_KEY", "k");
    let mut sizes = Vec::new();
    for (name, kind, path) in [
        ("openai", "openai", "/v1"),
        ("anthropic", "anthropic", ""),
        ("gemini", "gemini", "/v1beta"),
    ] {
        let toml = format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\n\
             base_url = \"http://127.0.0.1:9{path}\"\nhttp = \"http2\"\n\
             api_key_env = \"SY_HTTP2_SIZE_TEST_KEY\"\n"
        );
        let config = FileConfig::from_toml_with_env(&toml, "t", &[]).unwrap();
        let providers = Providers::from_config(&config).unwrap();
        let messages = [crate::providers::test_support::text(
            crate::job::Role::User,
            "hi",
        )];
        let req = crate::providers::ChatRequest {
            model: "m",
            messages: &messages,
            max_tokens: 10,
            temperature: None,
            stop: None,
            response_format: None,
            tools: None,
            tool_choice: None,
        };
        // Built, never polled: no connection is opened.
        let call = providers.get(name).unwrap().chat(req);
        sizes.push((name, std::mem::size_of_val(&*call)));
    }
    println!("adapter futures (pool and HTTP/2 call inside): {sizes:?}");
    for (name, size) in sizes {
        assert!(size <= 1_400, "{name}: {size} bytes");
    }
}
