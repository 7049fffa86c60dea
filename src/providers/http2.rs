//! HTTP/2 straight on the `h2` crate, for providers with `http = "http2"`: one connection
//! (h2c with prior knowledge over `http://`, TLS with ALPN `h2` over `https://`), opened
//! by the first call that needs it and again once it has closed, kept alive with pings,
//! and one call on it.
//!
//! Why not reqwest here: a call in flight through reqwest → hyper-util → hyper holds a copy
//! of its request (for redirects), the pool's checkout future, a spawned task and a
//! channel per call, ~5 KB beside the HTTP/2 stream itself (issue 12: 10,000 calls in
//! flight). Here a waiting call holds its stream's state in the connection and its own
//! small future; the request's headers and body are gone once written.

use super::http::{body_too_large, Answer, BodySink, Post};
use super::{FailureClass, ProviderError};
use bytes::Bytes;
use h2::client::{self, SendRequest};
use hyper::{Method, Request, Uri, Version};
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A ping this often on each connection (as reqwest was set up)...
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ... and a connection whose pong is this late is closed (its calls fail over).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Response headers beyond this are refused (h2's default is 16 MiB).
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// How a provider's connections are opened.
pub(super) struct Dial {
    host: String,
    port: u16,
    /// Over `https://`: the TLS client (ALPN `h2` only) and the name to verify.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    stream_window: u32,
    connection_window: u32,
}

impl Dial {
    /// For `base_url`; `tls` (offering ALPN `h2`) is used when it is `https://`.
    pub(super) fn new(
        base_url: &str,
        tls: Option<&rustls::ClientConfig>,
        connect_timeout: Duration,
        (stream_window, connection_window): (u32, u32),
    ) -> Result<Dial, String> {
        let uri: Uri = base_url
            .parse()
            .map_err(|e| format!("base_url is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("base_url: expected http:// or https://".into()),
        };
        let host = uri
            .host()
            .ok_or("base_url has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match (https, tls) {
            (false, _) => None,
            (true, None) => return Err("https:// without a TLS configuration".into()),
            (true, Some(config)) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("base_url's host is not a TLS server name: {e}"))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
                Some((connector, name))
            }
        };
        Ok(Dial {
            host,
            port,
            tls,
            connect_timeout,
            stream_window,
            connection_window,
        })
    }

    async fn connect(&self) -> Result<Live, ProviderError> {
        let timed_out = || {
            ProviderError::new(
                FailureClass::Timeout,
                None,
                format!(
                    "connecting timed out after {} s",
                    self.connect_timeout.as_secs()
                ),
            )
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(self.connect_timeout, tcp)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| connection(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let Some((tls, name)) = &self.tls else {
            return self.handshake(tcp).await;
        };
        let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name.clone(), tcp))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| connection(format!("TLS handshake failed: {e}")))?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(connection(
                "the server did not agree to HTTP/2 (ALPN); set http = \"auto\" or \"http1\""
                    .into(),
            ));
        }
        self.handshake(stream).await
    }

    async fn handshake<T>(&self, io: T) -> Result<Live, ProviderError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = client::Builder::new()
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<T, Bytes>(io)
            .await
            .map_err(h2_error)?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = conn.ping_pong();
        tokio::spawn({
            let closed = Arc::clone(&closed);
            async move {
                tokio::select! {
                    r = conn => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP/2 connection ended");
                        }
                    }
                    () = keep_alive(pings) => {
                        tracing::warn!("HTTP/2 connection: no answer to a ping; closing it");
                    }
                }
                closed.store(true, Ordering::Release);
            }
        });
        Ok(Live { send, closed })
    }
}

/// Ping until a pong does not come in time (then return: the connection is dropped).
async fn keep_alive(pings: Option<h2::PingPong>) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        let pong = tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pings.ping(h2::Ping::opaque()));
        if !matches!(pong.await, Ok(Ok(_))) {
            return;
        }
    }
}

/// An open connection: the handle calls are sent on, and whether its task has ended.
#[derive(Clone)]
struct Live {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// One HTTP/2 connection of a pool's slot, opened when first needed and again once it
/// has closed.
pub(super) struct Connection {
    dial: Arc<Dial>,
    live: Mutex<Option<Live>>,
    /// One call opens the connection; the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    pub(super) fn new(dial: Arc<Dial>) -> Connection {
        Connection {
            dial,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn live(&self) -> Option<Live> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|l| !l.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// The open connection, or a new one.
    async fn open(&self) -> Result<Live, ProviderError> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _one = self.connecting.lock().await;
        if let Some(live) = self.live() {
            return Ok(live);
        }
        // Boxed: rare, and TLS and the handshake would otherwise size every call.
        let live = Box::pin(self.dial.connect()).await?;
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
        Ok(live)
    }

    /// A handle ready for one more stream. A connection that refuses new streams (it
    /// got a GOAWAY, or broke while idle) is replaced once: nothing was sent on it.
    async fn ready(&self) -> Result<SendRequest<Bytes>, ProviderError> {
        let live = self.open().await?;
        match live.send.ready().await {
            Ok(send) => Ok(send),
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 connection refuses new streams; reconnecting");
                live.closed.store(true, Ordering::Release);
                let live = self.open().await?;
                live.send.ready().await.map_err(h2_error)
            }
        }
    }

    /// Send `post` and read the answer, its body capped at `max_bytes` (as
    /// `super::http::send_to` does), a 2xx body going to `sink` when given. No timeout of
    /// its own.
    pub(super) async fn send(
        &self,
        post: Post<'_>,
        max_bytes: usize,
        sink: Option<BodySink<'_>>,
    ) -> Result<Answer, ProviderError> {
        let mut send = self.ready().await?;
        let Post { url, headers, body } = post;
        let request = head(&url, headers)?;
        let eos = body.is_empty();
        let (response, mut stream) = send.send_request(request, eos).map_err(h2_error)?;
        if !eos {
            stream.send_data(body, true).map_err(h2_error)?;
        }
        drop(stream);
        let (parts, mut body) = response.await.map_err(h2_error)?.into_parts();
        let status = parts.status.as_u16();
        let announced = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if announced > max_bytes as u64 {
            return Err(body_too_large(status, max_bytes));
        }
        let mut sink = if (200..300).contains(&status) {
            sink
        } else {
            None
        };
        let mut read = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        let mut streamed = 0usize;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_error)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if chunk.len() > max_bytes - read.len() - streamed {
                return Err(body_too_large(status, max_bytes));
            }
            match sink.as_mut() {
                Some(sink) => {
                    streamed += chunk.len();
                    sink(&chunk)?;
                }
                None => read.extend_from_slice(&chunk),
            }
        }
        Ok(Answer {
            status,
            version: Version::HTTP_2,
            headers: parts.headers,
            body: read,
        })
    }
}

/// The request line and headers of a post (what reqwest sends: the provider's headers,
/// `content-type: application/json`, `accept: */*`, the user agent).
fn head(
    url: &str,
    provider_headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<Request<()>, ProviderError> {
    let uri = Uri::try_from(url).map_err(|e| {
        ProviderError::new(
            FailureClass::InvalidRequest,
            None,
            format!("the request URL is not valid: {e}"),
        )
    })?;
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    for (name, value) in provider_headers {
        headers.insert(name, value);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(super::http::USER_AGENT),
    );
    Ok(request)
}

fn connection(message: String) -> ProviderError {
    ProviderError::new(FailureClass::Connection, None, message)
}

/// A failure of the connection or of the call's stream (reset, GOAWAY, I/O): another
/// provider, or a later try, may do better.
fn h2_error(e: h2::Error) -> ProviderError {
    let mut msg = format!("HTTP/2: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    connection(msg)
}
