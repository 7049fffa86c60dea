//! Streamed calls (a job with `stream: true`): each provider's streaming wire format read
//! event by event, the text forwarded as it comes, and the events assembled into the body
//! the same call would have answered without streaming, which then goes through the
//! adapter's own `read_answer`. So a streamed answer is read (usage, tool calls and
//! their checks, refusals, finish reasons) exactly as a plain one.
//!
//! - [`sse`]: server-sent events, frames split anywhere across reads;
//! - [`openai`]: chat completions chunks, `[DONE]`, usage in the last chunk
//!   (`stream_options.include_usage`);
//! - [`anthropic`]: `message_start` … `content_block_delta` … `message_delta` (usage) …
//!   `message_stop`, and `error` events;
//! - [`gemini`]: `:streamGenerateContent?alt=sse` chunks, `usageMetadata` in each.
//!
//! A stream that ends before its end (the connection dropped, the body stopped, an
//! `error` event) is a failed call (transient: another candidate or a later try may do
//! better) that carries the usage known so far, so that its cost row bills it.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod sse;

use super::http::{self, Post};
use super::{ChatRequest, ChatResponse, Deltas, FailureClass, ProviderError};
use crate::job::Usage;
use reqwest::header::HeaderMap;

/// One provider's streaming format: events in, the plain answer's body out.
pub trait Assemble: Send {
    /// One event of the stream; text of the answer goes to `deltas` as it comes. An
    /// error event is the call's error.
    fn event(&mut self, ev: sse::Event, deltas: &mut Deltas<'_>) -> Result<(), ProviderError>;
    /// The stream reached its end (`[DONE]`, `message_stop`, a finish reason).
    fn finished(&self) -> bool;
    /// What the call has billed so far, as far as the events said.
    fn usage_so_far(&self) -> Option<Usage>;
    /// The body the same call answers without streaming.
    fn body(self) -> serde_json::Value;
}

/// How an adapter reads one plain HTTP answer (its `read_answer`).
pub type ReadAnswer =
    fn(&ChatRequest<'_>, u16, &HeaderMap, &[u8]) -> Result<ChatResponse, ProviderError>;

/// Send `post` (a streaming request), read its events into `asm`, forwarding text to
/// `deltas`, and read the assembled answer with `read`.
pub async fn call<A: Assemble>(
    pool: &http::Pool,
    post: Post<'_>,
    max_bytes: usize,
    req: &ChatRequest<'_>,
    mut asm: A,
    mut deltas: Deltas<'_>,
    read: ReadAnswer,
) -> Result<ChatResponse, ProviderError> {
    let mut decoder = sse::Decoder::new();
    let answer = {
        let mut feed = |bytes: &[u8]| decoder.feed(bytes, |ev| asm.event(ev, &mut deltas));
        let sink: http::BodySink<'_> = &mut feed;
        pool.send_to(post, max_bytes, Some(sink)).await
    };
    let answer = match answer {
        Ok(a) => a,
        Err(mut e) => {
            if e.usage.is_none() {
                e.usage = asm.usage_so_far();
            }
            return Err(e);
        }
    };
    if !(200..300).contains(&answer.status) {
        return read(req, answer.status, &answer.headers, &answer.body);
    }
    let event_stream = answer
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.contains("event-stream"));
    if !event_stream && !asm.finished() {
        // A server that ignored `stream` (some OpenAI-compatible ones) answers plain JSON.
        return Err(ProviderError::new(
            FailureClass::ServerError,
            Some(answer.status),
            "asked for a stream, the answer is not text/event-stream",
        ));
    }
    if !asm.finished() {
        let how = if decoder.pending() {
            "inside an event"
        } else {
            "between events"
        };
        return Err(ProviderError::new(
            FailureClass::ServerError,
            Some(answer.status),
            format!("the stream ended before its end ({how})"),
        )
        .with_usage(asm.usage_so_far()));
    }
    let body = serde_json::to_vec(&asm.body()).map_err(|e| {
        ProviderError::new(
            FailureClass::ServerError,
            Some(answer.status),
            format!("the streamed answer does not assemble: {e}"),
        )
    })?;
    read(req, answer.status, &answer.headers, &body)
}

/// An event's data that is not the JSON it should be: the stream is unusable.
pub(crate) fn unreadable(what: &str, e: &serde_json::Error) -> ProviderError {
    ProviderError::new(
        FailureClass::ServerError,
        Some(200),
        format!("unreadable {what} in the stream: {e}"),
    )
}

/// An error the provider sent inside a 200 stream, classified as the same error sent as
/// a status would be (`classify` of the adapter, with the status the error names), and
/// marked as mid-stream.
pub(crate) fn mid_stream_error(
    classify: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
    status: u16,
    body: &[u8],
) -> ProviderError {
    let mut e = classify(status, &HeaderMap::new(), body);
    e.message = format!("mid-stream error: {}", e.message);
    e.status = Some(200);
    e
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod test_support {
    use super::*;

    /// An assembled `body` read by an adapter's `read` for a request offering the tool
    /// `get_weather(city)`.
    pub fn read_assembled(
        read: ReadAnswer,
        body: &serde_json::Value,
    ) -> Result<ChatResponse, ProviderError> {
        let tools: Vec<crate::job::Tool> = serde_json::from_value(serde_json::json!([{
            "type": "function", "function": {"name": "get_weather", "parameters":
            {"type": "object", "required": ["city"]}}}]))
        .unwrap();
        let req = crate::providers::test_support::request_with_tools(&tools);
        let bytes = serde_json::to_vec(body).unwrap();
        read(&req, 200, &HeaderMap::new(), &bytes)
    }

    /// Feed `body` split at every `step` bytes through a decoder into `asm`; the deltas
    /// forwarded, and the first error.
    pub fn run<A: Assemble>(
        asm: &mut A,
        body: &[u8],
        step: usize,
    ) -> (Vec<String>, Result<(), ProviderError>) {
        let mut got = Vec::new();
        let r = {
            let mut deltas: Deltas<'_> = Box::new(|d: &str| got.push(d.to_string()));
            let mut dec = sse::Decoder::new();
            let mut r = Ok(());
            for piece in body.chunks(step.max(1)) {
                r = dec.feed(piece, |ev| asm.event(ev, &mut deltas));
                if r.is_err() {
                    break;
                }
            }
            r
        };
        (got, r)
    }

    /// One HTTP/1.1 answer to every connection: `content_type` and `body`.
    async fn serve_once(content_type: &str, body: &str) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        addr
    }

    async fn stream_from(content_type: &str, body: &str) -> Result<ChatResponse, ProviderError> {
        let addr = serve_once(content_type, body).await;
        let p: crate::config::ProviderConfig = toml::from_str(&format!(
            "name = \"o\"\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\nhttp = \"http1\""
        ))
        .unwrap();
        let pool = http::Pool::new(&p).unwrap();
        let post = Post::json(
            format!("http://{addr}/v1/chat/completions"),
            &serde_json::json!({}),
        )
        .unwrap();
        let req = crate::providers::test_support::request_with_tools(&[]);
        let asm = openai::Assembler::default();
        let read: ReadAnswer = crate::providers::openai::read_answer;
        call(
            &pool,
            post,
            1 << 20,
            &req,
            asm,
            Box::new(|_: &str| {}),
            read,
        )
        .await
    }

    #[tokio::test]
    async fn answers_that_are_not_whole_streams_fail_the_call() {
        let e = stream_from("application/json", r#"{"choices":[]}"#)
            .await
            .unwrap_err();
        assert_eq!(e.class, FailureClass::ServerError);
        assert!(e.message.contains("not text/event-stream"), "{}", e.message);
        let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        let e = stream_from("text/event-stream", cut).await.unwrap_err();
        assert_eq!((e.class, e.status), (FailureClass::ServerError, Some(200)));
        assert_eq!(
            e.message,
            "the stream ended before its end (between events)"
        );
        let whole = format!("{cut}data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: [DONE]\n\n");
        let r = stream_from("text/event-stream", &whole).await.unwrap();
        assert_eq!(r.output.content.as_deref(), Some("Hi"));
    }
}
