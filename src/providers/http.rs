//! The HTTP client every adapter uses, and what all wire formats share: a [`Post`] of a
//! JSON body and reading the answer (its body capped at `limits.max_response_bytes`),
//! timeouts and connection errors, and the pool of connections per provider ([`Pool`]):
//! reqwest for HTTP/1.1 and `auto`, [`super::http2`] for `http = "http2"`.

use super::http2;
use super::{FailureClass, ProviderError};
use crate::config::{HttpVersion, ProviderConfig};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// HTTP/2 flow-control windows: the answers are small JSON, so small windows bound what
/// a server can push ahead of the reader (hyper's defaults are 2 MiB per stream and
/// 5 MiB per connection, grown further by the adaptive window).
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The `user-agent` of every call.
pub(super) const USER_AGENT: &str = concat!("switchyard/", env!("CARGO_PKG_VERSION"));

/// Calls in flight through every [`Pool`] of this process (for the allocator's trim).
static CALLS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Provider calls in flight in this process right now, waiting at a cap or not.
pub fn calls_in_flight() -> usize {
    CALLS_IN_FLIGHT.load(Ordering::Relaxed)
}

/// One call as an adapter describes it: a POST of a JSON body, encoded once, to `url`,
/// with the provider's own headers (its key, its API version). The pool adds
/// `content-type: application/json` and the user agent.
pub struct Post<'a> {
    pub url: Cow<'a, str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl<'a> Post<'a> {
    /// `body` encoded as JSON: what is encoded can be dropped before the call.
    pub fn json(
        url: impl Into<Cow<'a, str>>,
        body: &impl serde::Serialize,
    ) -> Result<Post<'a>, ProviderError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            ProviderError::new(
                FailureClass::InvalidRequest,
                None,
                format!("the request does not encode as JSON: {e}"),
            )
        })?;
        Ok(Post {
            url: url.into(),
            headers: Vec::new(),
            body: body.into(),
        })
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// One provider's HTTP connections.
///
/// HTTP/1.1 holds one connection per call in flight, so one reqwest client (one pool of
/// connections) is all it takes. HTTP/2 carries many calls on one connection, and a
/// single connection queues the calls above the server's SETTINGS_MAX_CONCURRENT_STREAMS
/// inside it; so with HTTP/2 the pool holds several slots (one connection each), fills
/// them in order up to `http2_streams_per_connection` calls each, and opens another
/// when all are full. The tail slots are dropped (closing their connections) when the
/// load falls. With `http = "http2"` a slot is an [`http2::Connection`] of our own;
/// with `auto` a reqwest client (which keeps one HTTP/2 connection per host) once ALPN
/// has chosen HTTP/2. `max_concurrent_calls` caps the calls in flight: a call over it
/// waits for a slot.
pub struct Pool {
    build: ClientSpec,
    /// `http = "http2"`: how the slots' connections are opened.
    dial: Option<Arc<http2::Dial>>,
    /// Calls per connection before another client is opened (HTTP/2 only).
    streams: usize,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// What the server answered with: 0 not known yet, 1 HTTP/1.x, 2 HTTP/2.
    seen: AtomicU8,
    /// `auto` over TLS: the first call waits for one `HEAD base_url` that learns the
    /// protocol (see [`Pool::probe`]).
    probed: tokio::sync::OnceCell<()>,
    /// More than one client now (releases then check whether the tail can go).
    extra: AtomicBool,
    cap: Option<Semaphore>,
}

/// One connection (or reqwest client) and the calls in flight on it.
struct Slot {
    via: Via,
    in_flight: AtomicUsize,
}

enum Via {
    Reqwest(reqwest::Client),
    H2(http2::Connection),
}

impl Slot {
    fn new(via: Via) -> Arc<Slot> {
        Arc::new(Slot {
            via,
            in_flight: AtomicUsize::new(0),
        })
    }
}

/// Everything needed to build one more client for the provider.
struct ClientSpec {
    http: HttpVersion,
    https: bool,
    base_url: String,
    connect_timeout: Duration,
    timeout: Duration,
    tls: Option<rustls::ClientConfig>,
    /// With `auto` over TLS once the server chose HTTP/2: ALPN `h2` only.
    tls_h2: Option<rustls::ClientConfig>,
}

impl ClientSpec {
    /// A client speaking `http` (`auto` only for the first client of a pool).
    fn client(&self, http: HttpVersion) -> Result<reqwest::Client, reqwest::Error> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // A burst of thousands of concurrent HTTP/1.1 calls opens thousands of
            // connections (~45 KB each in the worker); keep only enough warm ones.
            .pool_max_idle_per_host(512)
            .http2_initial_stream_window_size(H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .user_agent(USER_AGENT);
        let tls = match http {
            HttpVersion::Http2 if self.http == HttpVersion::Auto => &self.tls_h2,
            _ => &self.tls,
        };
        if let Some(tls) = tls {
            b = b.use_preconfigured_tls(tls.clone());
        }
        b = match http {
            HttpVersion::Http1 => b.http1_only(),
            // h2c with prior knowledge over http://, ALPN `h2` only over https://.
            HttpVersion::Http2 => b.http2_prior_knowledge(),
            HttpVersion::Auto => b,
        };
        b.build()
    }
}

/// One rustls configuration for all of a provider's clients (the system's roots are
/// read once, not once per client), offering the ALPN protocols `http` allows.
fn tls_config(
    http: HttpVersion,
    extra_root: Option<&[u8]>,
    need_roots: bool,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(der) = extra_root {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() && need_roots {
        return Err("no trusted root certificates found on this system".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = match http {
        HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
        HttpVersion::Http2 => vec![b"h2".to_vec()],
        HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(tls)
}

/// A call holding a slot of the pool; gives it back when dropped.
struct Lease<'a> {
    pool: &'a Pool,
    slot: Arc<Slot>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        CALLS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.pool.extra.load(Ordering::Relaxed) {
            self.pool.shrink();
        }
    }
}

impl Pool {
    /// The pool for one provider (no connection is opened yet).
    pub fn new(p: &ProviderConfig) -> Result<Pool, PoolError> {
        Self::with_root(p, None)
    }

    /// As [`Pool::new`], also trusting the DER certificate `extra_root` (tests).
    pub(crate) fn with_root(
        p: &ProviderConfig,
        extra_root: Option<&[u8]>,
    ) -> Result<Pool, PoolError> {
        let https = p.base_url.starts_with("https:");
        let http = p.http();
        // Given to every client, also for http:// (where it is never used): a client
        // built without one reads the system's roots itself (~110 KB per client).
        let tls = |http| {
            tls_config(http, extra_root, https)
                .map(Some)
                .map_err(PoolError::Tls)
        };
        let build = ClientSpec {
            http,
            https,
            base_url: p.base_url.clone(),
            tls: tls(http)?,
            tls_h2: tls(HttpVersion::Http2)?,
            connect_timeout: Duration::from_secs(p.connect_timeout_s),
            timeout: Duration::from_secs(p.timeout_s),
        };
        let (dial, first) = if http == HttpVersion::Http2 {
            let windows = (H2_STREAM_WINDOW, H2_CONNECTION_WINDOW);
            let dial = http2::Dial::new(
                &p.base_url,
                build.tls.as_ref(),
                build.connect_timeout,
                windows,
            )
            .map_err(PoolError::Url)?;
            let dial = Arc::new(dial);
            (
                Some(Arc::clone(&dial)),
                Via::H2(http2::Connection::new(dial)),
            )
        } else {
            let client = build.client(http).map_err(PoolError::Client)?;
            (None, Via::Reqwest(client))
        };
        Ok(Pool {
            build,
            dial,
            streams: p.http2_streams_per_connection.max(1),
            slots: Mutex::new(vec![Slot::new(first)]),
            seen: AtomicU8::new(0),
            probed: tokio::sync::OnceCell::new(),
            extra: AtomicBool::new(false),
            cap: p.max_concurrent_calls.map(Semaphore::new),
        })
    }

    /// More than one client only helps where calls go over HTTP/2.
    fn multiplexed(&self) -> bool {
        match self.build.http {
            HttpVersion::Http1 => false,
            HttpVersion::Http2 => true,
            // Only once an answer came over HTTP/2 (plain `http://` never negotiates it).
            HttpVersion::Auto => self.seen.load(Ordering::Relaxed) == 2,
        }
    }

    /// The first client with room, else a new one (HTTP/2), else the least busy.
    fn lease(&self) -> Lease<'_> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let room = |s: &Arc<Slot>| s.in_flight.load(Ordering::Acquire) < self.streams;
        let slot = if !self.multiplexed() {
            Arc::clone(&slots[0])
        } else if let Some(s) = slots.iter().find(|s| room(s)) {
            Arc::clone(s)
        } else {
            // Once HTTP/2 is known, the new client speaks only HTTP/2: it then opens one
            // connection for all the calls given to it at once, where `auto` would race
            // one TLS connection per call until ALPN has answered.
            let via = match &self.dial {
                Some(dial) => Ok(Via::H2(http2::Connection::new(Arc::clone(dial)))),
                None => self.build.client(HttpVersion::Http2).map(Via::Reqwest),
            };
            match via {
                Ok(via) => {
                    let s = Slot::new(via);
                    slots.push(Arc::clone(&s));
                    self.extra.store(true, Ordering::Relaxed);
                    s
                }
                // Building the first client worked, so this is not expected; the
                // least busy client queues the call instead.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open another HTTP client");
                    let least = slots
                        .iter()
                        .min_by_key(|s| s.in_flight.load(Ordering::Acquire));
                    Arc::clone(least.unwrap_or(&slots[0]))
                }
            }
        };
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        CALLS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Lease { pool: self, slot }
    }

    /// Drop idle clients from the tail while the others keep half a connection's worth
    /// of room for the calls in flight (so a load at a boundary does not reconnect on
    /// every call); with HTTP/1.1 (learnt from an answer) only the first is used.
    fn shrink(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        while slots.len() > 1 {
            let last_idle = slots
                .last()
                .is_some_and(|s| s.in_flight.load(Ordering::Acquire) == 0);
            if !last_idle {
                break;
            }
            if self.multiplexed() {
                let busy: usize = slots
                    .iter()
                    .map(|s| s.in_flight.load(Ordering::Acquire))
                    .sum();
                if busy + self.streams / 2 > (slots.len() - 1) * self.streams {
                    break;
                }
            }
            slots.pop();
        }
        self.extra.store(slots.len() > 1, Ordering::Relaxed);
    }

    /// `auto` over TLS: learn whether the server speaks HTTP/2 with one `HEAD` of the base
    /// URL on the first client, before the first calls. Without it a burst of calls on a
    /// fresh client opens one connection per call (each racing its own ALPN answer).
    /// A failed probe leaves the protocol unknown; the calls then go ahead as they are.
    async fn probe(&self) {
        let client = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match &slots[0].via {
                Via::Reqwest(c) => c.clone(),
                Via::H2(_) => return,
            }
        };
        match client.head(&self.build.base_url).send().await {
            Ok(resp) => {
                let v = if resp.version() >= reqwest::Version::HTTP_2 {
                    2
                } else {
                    1
                };
                self.seen.store(v, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e.without_url(), "HTTP version probe failed"),
        }
    }

    /// Connections (clients) the pool holds now.
    pub fn clients(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.len())
    }

    /// Wait for a slot under `max_concurrent_calls`, send `post` on a connection with
    /// room and read the answer (see [`send_to`]). The wait is not part of the call's
    /// timeout (`timeout_s`, which counts from connecting to the answer's last byte), and
    /// is not an error.
    pub fn send<'s>(
        &'s self,
        post: Post<'s>,
        max_bytes: usize,
    ) -> impl std::future::Future<Output = Result<Answer, ProviderError>> + Send + 's {
        // Not an `async fn`: a wrapper future would hold a second copy of its arguments.
        self.send_to(post, max_bytes, None)
    }

    /// [`Pool::send`], a 2xx body going to `sink` piece by piece as it arrives (a
    /// streamed answer) instead of into [`Answer::body`]; other bodies are read whole.
    /// `max_bytes` caps the whole stream, and `timeout_s` counts to its last byte.
    pub async fn send_to(
        &self,
        post: Post<'_>,
        max_bytes: usize,
        sink: Option<BodySink<'_>>,
    ) -> Result<Answer, ProviderError> {
        let _permit = match &self.cap {
            Some(cap) => Some(cap.acquire().await.map_err(|_| {
                ProviderError::new(FailureClass::Connection, None, "HTTP pool closed")
            })?),
            None => None,
        };
        if self.build.http == HttpVersion::Auto && self.build.https {
            // Boxed: once per pool; it would otherwise size every call's future.
            Box::pin(self.probed.get_or_init(|| self.probe())).await;
        }
        let lease = self.lease();
        let answer = match &lease.slot.via {
            Via::H2(conn) => {
                let call = conn.send(post, max_bytes, sink);
                match tokio::time::timeout(self.build.timeout, call).await {
                    Ok(answer) => answer,
                    Err(_) => Err(ProviderError::new(
                        FailureClass::Timeout,
                        None,
                        format!(
                            "no answer within {} s (providers.timeout_s)",
                            self.build.timeout.as_secs()
                        ),
                    )),
                }
            }
            Via::Reqwest(client) => {
                // Boxed: HTTP/1.1 and `auto` only; the HTTP/2 calls stay small.
                Box::pin(send_to(reqwest_post(client, post), max_bytes, sink)).await
            }
        };
        if let Ok(a) = &answer {
            let v = if a.version >= reqwest::Version::HTTP_2 {
                2
            } else {
                1
            };
            self.seen.store(v, Ordering::Relaxed);
        }
        answer
    }
}

/// `post` as a reqwest request: the bytes and headers as they are, and
/// `content-type: application/json` (as reqwest's `json` sets it).
fn reqwest_post(client: &reqwest::Client, post: Post<'_>) -> reqwest::RequestBuilder {
    let mut b = client
        .post(post.url.as_ref())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in post.headers {
        b = b.header(name, value);
    }
    b.body(post.body)
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    Client(reqwest::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Url(String),
}

/// One HTTP answer, its body read whole but never past the cap.
pub struct Answer {
    pub status: u16,
    pub version: reqwest::Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Where a streamed 2xx body goes, piece by piece as it arrives; an error stops the
/// reading (the request is dropped) and is the call's error.
pub type BodySink<'s> = &'s mut (dyn FnMut(&[u8]) -> Result<(), ProviderError> + Send);

/// Send a request and read its answer, body included, chunk by chunk: a body (success or
/// error) longer than `max_bytes` is not read further and fails the call as a server
/// error (transient: another provider may answer sanely).
pub async fn send(req: reqwest::RequestBuilder, max_bytes: usize) -> Result<Answer, ProviderError> {
    send_to(req, max_bytes, None).await
}

/// As [`send`]; a 2xx body goes to `sink` (when given) instead of into the answer.
async fn send_to(
    req: reqwest::RequestBuilder,
    max_bytes: usize,
    sink: Option<BodySink<'_>>,
) -> Result<Answer, ProviderError> {
    let mut resp = req.send().await.map_err(transport_error)?;
    let status = resp.status().as_u16();
    let version = resp.version();
    let headers = std::mem::take(resp.headers_mut());
    let too_large = || body_too_large(status, max_bytes);
    let announced = resp.content_length().unwrap_or(0);
    if announced > max_bytes as u64 {
        return Err(too_large());
    }
    let mut sink = if (200..300).contains(&status) {
        sink
    } else {
        None
    };
    let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
    let mut streamed = 0usize;
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if chunk.len() > max_bytes - body.len() - streamed {
            return Err(too_large());
        }
        match sink.as_mut() {
            Some(sink) => {
                streamed += chunk.len();
                sink(&chunk)?;
            }
            None => body.extend_from_slice(&chunk),
        }
    }
    Ok(Answer {
        status,
        version,
        headers,
        body,
    })
}

/// The error for an answer whose body is over `limits.max_response_bytes`.
pub fn body_too_large(status: u16, max_bytes: usize) -> ProviderError {
    ProviderError::new(
        FailureClass::ServerError,
        Some(status),
        format!("response body exceeds limits.max_response_bytes ({max_bytes} bytes)"),
    )
}

/// A transport failure (no HTTP status) as a provider error. The URL is dropped from the
/// message: some providers take the key in the query string.
pub fn transport_error(e: reqwest::Error) -> ProviderError {
    let class = if e.is_timeout() {
        FailureClass::Timeout
    } else if e.is_connect() {
        FailureClass::Connection
    } else if e.is_decode() || e.is_body() {
        FailureClass::ServerError
    } else {
        FailureClass::Connection
    };
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ProviderError::new(class, None, msg)
}

/// An API key as a header value that is never printed (`Debug` shows `Sensitive`).
pub fn secret_header(key: &secrecy::SecretString) -> Result<HeaderValue, ProviderError> {
    use secrecy::ExposeSecret;
    sensitive(key.expose_secret())
}

/// `Bearer <key>` (OpenAI's `authorization`), never printed.
pub fn bearer_header(key: &secrecy::SecretString) -> Result<HeaderValue, ProviderError> {
    use secrecy::ExposeSecret;
    sensitive(&format!("Bearer {}", key.expose_secret()))
}

fn sensitive(value: &str) -> Result<HeaderValue, ProviderError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::new(
            FailureClass::Auth,
            None,
            "the API key holds characters that cannot be sent in a header",
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Cut a provider's error message to a size fit for a result and a log line.
pub fn clip(s: &str) -> String {
    const MAX: usize = 500;
    let mut s = s.replace('\0', "");
    if s.contains("sk-") || s.contains("AIza") {
        s = redact_keys(&s);
    }
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Providers echo (masked) keys in auth errors: drop anything that looks like one, from
/// where it starts to the end of its word.
fn redact_keys(s: &str) -> String {
    s.split(' ')
        .map(|w| match key_start(w) {
            Some(i) => format!("{}[redacted]", &w[..i]),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where a key starts in a word: `sk-` or `AIza` at its start or after a character that
/// is not alphanumeric (`key=sk-…`, `'AIza…'`), not inside a word (`task-1`).
fn key_start(w: &str) -> Option<usize> {
    w.char_indices().map(|(i, _)| i).find(|&i| {
        let rest = &w[i..];
        (rest.starts_with("sk-") || rest.starts_with("AIza"))
            && w[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_provider_messages_are_redacted() {
        let m = clip("Incorrect API key provided: sk-proj-****abcd. You can find your API key");
        assert_eq!(
            m,
            "Incorrect API key provided: [redacted] You can find your API key"
        );
        assert!(!clip("bad key AIzaSyA-123456").contains("AIza"));
        assert_eq!(
            clip("key='sk-abc', x=AIza1"),
            "key='[redacted] x=[redacted]"
        );
    }

    #[test]
    fn key_like_text_inside_words_is_kept() {
        // Fuzzing found these made `clip` recurse until the stack overflowed: the words
        // hold `sk-` / `AIza` but are not keys, so redaction left them and clip retried.
        assert_eq!(clip("unknown task-id"), "unknown task-id");
        assert_eq!(clip("4AIza-rateli\0mi"), "4AIza-ratelimi");
        let long = "ask-".repeat(300);
        assert_eq!(clip(&long).chars().count(), 501);
    }

    /// A one-shot HTTP server that answers every connection with `response`.
    async fn serve(response: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            }
        });
        format!("http://{addr}/")
    }

    fn with_length(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn chunked(status: &str, chunk: &[u8], chunks: usize) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                .into_bytes();
        for _ in 0..chunks {
            r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            r.extend_from_slice(chunk);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    }

    async fn get(response: Vec<u8>, max: usize) -> Result<Answer, ProviderError> {
        let url = serve(response).await;
        send_to(reqwest::Client::new().get(url), max, None).await
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_cap() {
        let a = get(with_length("200 OK", &[b'x'; 1000]), 1000)
            .await
            .unwrap();
        assert_eq!((a.status, a.body.len()), (200, 1000));
        let a = get(chunked("200 OK", &[b'y'; 100], 10), 1000)
            .await
            .unwrap();
        assert_eq!(a.body.len(), 1000);

        // Announced too long: refused before reading.
        let e = get(with_length("200 OK", &[b'x'; 1001]), 1000)
            .await
            .err()
            .unwrap();
        assert_eq!(e.class, FailureClass::ServerError);
        assert!(e.class.is_transient());
        assert_eq!(e.status, Some(200));
        assert!(
            e.message.contains("limits.max_response_bytes (1000 bytes)"),
            "{}",
            e.message
        );
        // Not announced (chunked): stopped at the cap. Error bodies alike.
        let e = get(chunked("200 OK", &[b'y'; 100], 11), 1000)
            .await
            .err()
            .unwrap();
        assert_eq!((e.class, e.status), (FailureClass::ServerError, Some(200)));
        let e = get(
            chunked("500 Internal Server Error", &[b'z'; 64], 1000),
            1000,
        )
        .await
        .err()
        .unwrap();
        assert_eq!((e.class, e.status), (FailureClass::ServerError, Some(500)));
        assert!(e.message.contains("max_response_bytes"), "{}", e.message);
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let s = "é".repeat(400);
        let c = clip(&s);
        assert!(c.len() <= 504);
    }
}
