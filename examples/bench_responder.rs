//! A lean mock LLM provider for `scripts/bench.sh`: answers as fast as it can (or after a
//! fixed `--latency-ms`) with minimal but valid OpenAI, Anthropic and Gemini responses,
//! so that the benchmark measures the worker and not the provider.
//!
//! ```text
//! cargo run --release --example bench_responder -- --addr 127.0.0.1:8099 [--latency-ms 0]
//!     [--h2-max-streams 256] [--threads 1]
//! ```
//!
//! One port speaks HTTP/1.1 and HTTP/2 cleartext with prior knowledge (h2c; no TLS, so
//! no ALPN). Routes (any method; the request body is read and thrown away, never parsed):
//! - `…/chat/completions` (OpenAI, OpenAI-compatible): a `chat.completion` with `usage`
//!   (`prompt_tokens_details.cached_tokens` too) and the `x-ratelimit-*` headers;
//! - `…/v1/messages` (Anthropic): a `message` with `usage` and the
//!   `anthropic-ratelimit-*` headers;
//! - `…/models/{m}:generateContent` (Gemini): `candidates` and `usageMetadata`;
//! - `GET /stats`: `{"total", "in_flight", "peak_in_flight", "connections",
//!   "peak_connections"}` as JSON; `GET /stats/reset` sets the peaks to the current values
//!   and `total` to 0. A call is in flight from its request head to its answer, so
//!   `peak_in_flight` counts concurrent calls whether they share connections (HTTP/2
//!   streams) or not.
//!
//! Bodies and headers are static: an answer costs a few allocations. The rate-limit
//! headers report a huge window that is never exhausted, so they never hold the worker.

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

const OPENAI: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"#,
    r#""model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","#,
    r#""content":"{\"label\":\"billing\"}","refusal":null},"logprobs":null,"finish_reason":"stop"}],"#,
    r#""usage":{"prompt_tokens":64,"completion_tokens":8,"total_tokens":72,"#,
    r#""prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#
);
const ANTHROPIC: &str = concat!(
    r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","#,
    r#""content":[{"type":"text","text":"{\"label\":\"billing\"}"}],"stop_reason":"end_turn","#,
    r#""stop_sequence":null,"usage":{"input_tokens":64,"output_tokens":8,"#,
    r#""cache_creation_input_tokens":0,"cache_read_input_tokens":0}}"#
);
const GEMINI: &str = concat!(
    r#"{"candidates":[{"content":{"parts":[{"text":"{\"label\":\"billing\"}"}],"role":"model"},"#,
    r#""finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":64,"#,
    r#""candidatesTokenCount":8,"totalTokenCount":72},"modelVersion":"gemini-2.0-flash"}"#
);
const NOT_FOUND: &str =
    r#"{"error":{"message":"bench_responder: unknown path","type":"invalid_request_error"}}"#;

/// Rate-limit headers of a window that is never exhausted (a reset 1 s ahead is only read
/// when a window is exhausted).
const OPENAI_HEADERS: [(&str, &str); 6] = [
    ("x-ratelimit-limit-requests", "100000000"),
    ("x-ratelimit-remaining-requests", "99999999"),
    ("x-ratelimit-reset-requests", "1ms"),
    ("x-ratelimit-limit-tokens", "4000000000"),
    ("x-ratelimit-remaining-tokens", "3999999999"),
    ("x-ratelimit-reset-tokens", "1ms"),
];
const ANTHROPIC_HEADERS: [(&str, &str); 4] = [
    ("anthropic-ratelimit-requests-limit", "100000000"),
    ("anthropic-ratelimit-requests-remaining", "99999999"),
    ("anthropic-ratelimit-tokens-limit", "4000000000"),
    ("anthropic-ratelimit-tokens-remaining", "3999999999"),
];

#[derive(Default)]
struct Stats {
    total: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    connections: AtomicU64,
    peak_connections: AtomicU64,
}

impl Stats {
    fn up(now: &AtomicU64, peak: &AtomicU64) {
        let v = now.fetch_add(1, Relaxed) + 1;
        peak.fetch_max(v, Relaxed);
    }
    fn json(&self) -> String {
        format!(
            r#"{{"total":{},"in_flight":{},"peak_in_flight":{},"connections":{},"peak_connections":{}}}"#,
            self.total.load(Relaxed),
            self.in_flight.load(Relaxed),
            self.peak_in_flight.load(Relaxed),
            self.connections.load(Relaxed),
            self.peak_connections.load(Relaxed),
        )
    }
    fn reset(&self) {
        self.total.store(0, Relaxed);
        self.peak_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
        self.peak_connections
            .store(self.connections.load(Relaxed), Relaxed);
    }
}

/// A body of one static (or small) chunk.
struct Once(Option<Bytes>);

impl Body for Once {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

fn answer(
    status: StatusCode,
    body: Bytes,
    headers: &[(&'static str, &'static str)],
) -> Response<Once> {
    let mut r = Response::new(Once(Some(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (k, v) in headers {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    r
}

/// Read the request body to its end (HTTP/1.1 keep-alive needs it consumed), keeping none.
async fn drain(mut body: Incoming) {
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if frame.is_err() {
            break;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    latency: Duration,
) -> Result<Response<Once>, Infallible> {
    let path = req.uri().path();
    if path == "/stats" {
        return Ok(answer(StatusCode::OK, Bytes::from(stats.json()), &[]));
    }
    if path == "/stats/reset" {
        stats.reset();
        return Ok(answer(StatusCode::OK, Bytes::from(stats.json()), &[]));
    }
    let (body, headers): (&'static str, &[(&'static str, &'static str)]) =
        if path.ends_with("/chat/completions") {
            (OPENAI, &OPENAI_HEADERS)
        } else if path.ends_with("/v1/messages") {
            (ANTHROPIC, &ANTHROPIC_HEADERS)
        } else if path.ends_with(":generateContent") {
            (GEMINI, &[])
        } else {
            return Ok(answer(
                StatusCode::NOT_FOUND,
                Bytes::from_static(NOT_FOUND.as_bytes()),
                &[],
            ));
        };
    stats.total.fetch_add(1, Relaxed);
    Stats::up(&stats.in_flight, &stats.peak_in_flight);
    drain(req.into_body()).await;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    stats.in_flight.fetch_sub(1, Relaxed);
    Ok(answer(
        StatusCode::OK,
        Bytes::from_static(body.as_bytes()),
        headers,
    ))
}

struct Args {
    addr: String,
    latency: Duration,
    h2_max_streams: u32,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8099".into(),
        latency: Duration::ZERO,
        h2_max_streams: 256,
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = v()?,
            "--latency-ms" => {
                a.latency =
                    Duration::from_millis(v()?.parse().map_err(|e| format!("--latency-ms: {e}"))?)
            }
            "--h2-max-streams" => {
                a.h2_max_streams = v()?.parse().map_err(|e| format!("--h2-max-streams: {e}"))?
            }
            "--threads" => a.threads = v()?.parse().map_err(|e| format!("--threads: {e}"))?,
            _ => {
                return Err(format!(
                    "unknown argument {k} (see the top of examples/bench_responder.rs)"
                ))
            }
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(serve(a))
}

async fn serve(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(&a.addr).await?;
    println!(
        "bench_responder listening on {} (latency {:?}, h2 max streams {})",
        listener.local_addr()?,
        a.latency,
        a.h2_max_streams
    );
    let stats = Arc::new(Stats::default());
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(a.h2_max_streams);
    let builder = Arc::new(builder);
    let latency = a.latency;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (builder, stats) = (builder.clone(), stats.clone());
        tokio::spawn(async move {
            Stats::up(&stats.connections, &stats.peak_connections);
            let svc_stats = stats.clone();
            let svc =
                hyper::service::service_fn(move |req| handle(req, svc_stats.clone(), latency));
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            stats.connections.fetch_sub(1, Relaxed);
        });
    }
}
