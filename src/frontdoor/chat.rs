//! `POST /v1/chat/completions` (answered whole, or as server-sent `chat.completion.chunk`s
//! with `stream: true`) and `GET /v1/models`.

use super::chat_map::{self, ChatOptions, JobContext};
use super::error::ApiError;
use super::replies::Waiter;
use super::State;
use crate::job::chunk::KIND_HEADER;
use crate::job::{parse_job_checked, Chunk, JobResult, Status};
use axum::body::{Body, Bytes};
use axum::extract::State as S;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The header that sets the jobs' `feature` (cost attribution).
pub const FEATURE_HEADER: &str = "x-switchyard-feature";

pub(super) async fn completions(S(st): S<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    match answer(st, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The body, at most `limit` bytes (413 above).
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

/// Publish a job (already checked) with `Nats-Msg-Id: <tenant>:<id>`; 503 when JetStream
/// does not take it.
pub(super) async fn publish(
    st: &State,
    subject: String,
    tenant: &str,
    id: &str,
    payload: Vec<u8>,
) -> Result<(), ApiError> {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", format!("{tenant}:{id}").as_str());
    let ack = st
        .js
        .publish_with_headers(subject.clone(), h, payload.into())
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "the job queue did not take the job ({subject}): {e}"
            ))
        })?;
    ack.await.map_err(|e| {
        ApiError::unavailable(format!(
            "the job queue did not confirm the job ({subject}): {e}"
        ))
    })?;
    Ok(())
}

async fn answer(st: Arc<State>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let priority = grant.priority(&headers)?;
    let slot = grant.enter()?;
    let bytes = read_body(body, st.cfg.serve.max_body_bytes).await?;
    let req: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let id = super::new_id("fd");
    let timeout = Duration::from_secs(st.cfg.serve.request_timeout_s);
    let deadline = chrono::Utc::now() + timeout;
    let ctx = JobContext {
        id: id.clone(),
        tenant: grant.tenant.clone(),
        feature: headers
            .get(FEATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        reply_to: Some(st.replies.subject(&id)),
        deadline: Some(deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    };
    let (job, opts) = chat_map::request_to_job(&req, &ctx)?;
    let payload = serde_json::to_vec(&job).map_err(|e| ApiError::internal(e.to_string()))?;
    let subject = st.names.jobs_subject(priority, &grant.tenant);
    // The worker's own parser: a bad request is answered now, naming the field.
    if let Err(f) = parse_job_checked(&payload, &subject, 0, &st.rules) {
        return Err(ApiError::from_job(&f.error));
    }
    let mut waiter = st.replies.register(&id);
    publish(&st, subject, &grant.tenant, &id, payload).await?;
    let until = tokio::time::Instant::now() + timeout;
    let created = chrono::Utc::now().timestamp();
    let timed_out = || {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            Some("timeout"),
            format!(
                "no answer within serve.request_timeout_s ({}s); the job (tenant {}, id {id}) is not started after that",
                timeout.as_secs(),
                grant.tenant
            ),
        )
    };
    if !opts.stream {
        let result = loop {
            match next(&mut waiter, until).await.ok_or_else(timed_out)? {
                Reply::Result(r) => break r,
                Reply::Chunk(_) => continue,
            }
        };
        return match (result.status, &result.error) {
            (Status::Succeeded, _) => {
                Ok(axum::Json(chat_map::completion(&result, &opts, created)).into_response())
            }
            (Status::Failed, Some(e)) => Err(ApiError::from_job(e)),
            (Status::Failed, None) => Err(ApiError::internal("the job failed without an error")),
        };
    }
    // Stream: a failure before the first chunk is still answered with its HTTP status.
    let first = next(&mut waiter, until).await.ok_or_else(timed_out)?;
    if let Reply::Result(r) = &first {
        if let (Status::Failed, Some(e)) = (r.status, &r.error) {
            return Err(ApiError::from_job(e));
        }
    }
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let _slot = slot;
        stream_events(first, waiter, until, opts, created, id, tx).await;
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(rx),
    )
        .into_response())
}

/// A message on the reply subject.
enum Reply {
    Chunk(Chunk),
    Result(Box<JobResult>),
}

/// The next readable message before `until` (`None`: time is up or the subscription ended).
async fn next(w: &mut Waiter, until: tokio::time::Instant) -> Option<Reply> {
    loop {
        let m = tokio::time::timeout_at(until, w.rx.recv()).await.ok()??;
        let is_chunk = m
            .headers
            .as_ref()
            .is_some_and(|h| h.get(KIND_HEADER).is_some());
        if is_chunk {
            if let Ok(c) = serde_json::from_slice::<Chunk>(&m.payload) {
                return Some(Reply::Chunk(c));
            }
        } else if let Ok(r) = serde_json::from_slice::<JobResult>(&m.payload) {
            return Some(Reply::Result(Box::new(r)));
        } else {
            tracing::warn!(subject = %m.subject, "front door: unreadable result on a reply subject");
        }
    }
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Forward the job's chunks as `chat.completion.chunk` events, then the closing chunks
/// from its result and `[DONE]`. Text a reset took back, or a gap in `seq`, stops the
/// forwarding; the rest of the answer then comes from the result when what was sent is
/// a prefix of it, else the stream ends with an error event (OpenAI's format cannot
/// take text back).
async fn stream_events(
    first: Reply,
    mut waiter: Waiter,
    until: tokio::time::Instant,
    opts: ChatOptions,
    created: i64,
    id: String,
    mut tx: futures::channel::mpsc::Sender<Result<Bytes, Infallible>>,
) {
    use futures::SinkExt;
    let role = chat_map::chunk(
        &id,
        &opts.model,
        created,
        json!({"role": "assistant", "content": ""}),
        None,
    );
    if tx.send(Ok(event(&role))).await.is_err() {
        return;
    }
    let mut sent = String::new();
    let mut last_seq: Option<u64> = None;
    let mut forwarding = true;
    let mut reply = Some(first);
    loop {
        let r = match reply.take() {
            Some(r) => r,
            None => match next(&mut waiter, until).await {
                Some(r) => r,
                None => {
                    let e = ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        Some("timeout"),
                        "no result before the request timeout",
                    );
                    let _ = tx.send(Ok(event(&e.body()))).await;
                    return;
                }
            },
        };
        match r {
            Reply::Chunk(c) => {
                let in_order = last_seq.map_or(c.seq == 0, |l| c.seq == l + 1);
                last_seq = Some(c.seq);
                if c.reset || !in_order {
                    forwarding = forwarding && sent.is_empty() && c.reset && c.delta.is_none();
                    continue;
                }
                let Some(delta) = c.delta.filter(|_| forwarding) else {
                    continue;
                };
                let ev =
                    chat_map::chunk(&id, &opts.model, created, json!({"content": delta}), None);
                sent.push_str(&delta);
                if tx.send(Ok(event(&ev))).await.is_err() {
                    return;
                }
            }
            Reply::Result(r) => {
                let tail = match (r.status, &r.error) {
                    (Status::Succeeded, _) => chat_map::closing_chunks(&r, &opts, created, &sent),
                    _ => None,
                };
                let events = match tail {
                    Some(chunks) => chunks
                        .iter()
                        .map(event)
                        .chain([Bytes::from_static(b"data: [DONE]\n\n")])
                        .collect(),
                    None => {
                        let e = match &r.error {
                            Some(e) => ApiError::from_job(e),
                            None => ApiError::internal("the answer changed after part of it was streamed (a provider failed mid-stream); retry the request"),
                        };
                        vec![event(&e.body())]
                    }
                };
                for ev in events {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// `GET /v1/models`: the configured models, the tiers and `auto`.
pub(super) async fn models(S(st): S<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(e) = st.keys.authenticate(&headers) {
        return e.into_response();
    }
    let mut ids: Vec<String> = vec!["auto".into()];
    ids.extend(["cheap", "fast", "balanced", "premium"].map(String::from));
    ids.extend(st.cfg.models.iter().map(|m| m.name.clone()));
    let data: Vec<Value> = ids
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
