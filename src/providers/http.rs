//! The HTTP client every adapter uses, and what all wire formats share: sending a JSON
//! body and reading the answer (its body capped at `limits.max_response_bytes`),
//! timeouts and connection errors.

use super::{FailureClass, ProviderError};
use crate::config::ProviderConfig;
use reqwest::header::HeaderMap;
use std::time::Duration;

/// One pooled client per provider: keep-alive, connect and request timeouts, HTTP/2 where
/// the server offers it through TLS ALPN (or always, with `http2_prior_knowledge`).
pub fn client(p: &ProviderConfig) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(p.connect_timeout_s))
        .timeout(Duration::from_secs(p.timeout_s))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        // A burst of thousands of concurrent calls opens thousands of HTTP/1.1
        // connections (~45 KB each in the worker); keep only enough warm ones afterwards.
        .pool_max_idle_per_host(512)
        .http2_adaptive_window(true)
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")));
    if p.http2_prior_knowledge {
        b = b.http2_prior_knowledge();
    }
    b.build()
}

/// One HTTP answer, its body read whole but never past the cap.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Send a request and read its answer, body included, chunk by chunk: a body (success or
/// error) longer than `max_bytes` is not read further and fails the call as a server
/// error (transient: another provider may answer sanely).
pub async fn send(req: reqwest::RequestBuilder, max_bytes: usize) -> Result<Answer, ProviderError> {
    let mut resp = req.send().await.map_err(transport_error)?;
    let status = resp.status().as_u16();
    let headers = std::mem::take(resp.headers_mut());
    let too_large = || body_too_large(status, max_bytes);
    let announced = resp.content_length().unwrap_or(0);
    if announced > max_bytes as u64 {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if chunk.len() > max_bytes - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
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
pub fn secret_header(
    key: &secrecy::SecretString,
) -> Result<reqwest::header::HeaderValue, ProviderError> {
    use secrecy::ExposeSecret;
    let mut v = reqwest::header::HeaderValue::from_str(key.expose_secret()).map_err(|_| {
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
        send(reqwest::Client::new().get(url), max).await
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
