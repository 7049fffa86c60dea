//! `/v1/batches`: an uploaded JSONL file's lines run as low-priority jobs (through the
//! provider batch APIs when `[batch]` is on: the worker decides); a collector reads their
//! results from Postgres and, when every line has ended (or the batch is cancelled or
//! expires), writes OpenAI's output and error files.

use super::chat::{publish, read_body, FEATURE_HEADER};
use super::error::ApiError;
use super::files::{found, store_err};
use super::openai_batch::{self, CHAT_URL};
use super::State;
use crate::job::{parse_job_checked, JobResult, Priority};
use crate::store::frontdoor::{self as db, BatchRow, Finished, LineOutcome, NewLine};
use axum::body::Body;
use axum::extract::{Path, Query, State as S};
use axum::http::HeaderMap;
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map_or(Value::Null, |t| json!(t.timestamp()))
}

fn batch_json(b: &BatchRow) -> Value {
    json!({"id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": b.errors,
        "input_file_id": b.input_file_id, "completion_window": b.completion_window, "status": b.status,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": b.created_at.timestamp(), "in_progress_at": ts(b.in_progress_at),
        "expires_at": b.expires_at.timestamp(), "finalizing_at": ts(b.finalizing_at),
        "completed_at": ts(b.completed_at), "failed_at": ts(b.failed_at), "expired_at": ts(b.expired_at),
        "cancelling_at": ts(b.cancelling_at), "cancelled_at": ts(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata})
}

pub(super) async fn create(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    create_batch(&st, &headers, body).await.map(Json)
}

async fn create_batch(st: &State, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let grant = st.keys.authenticate(headers)?;
    let bytes = read_body(body, st.cfg.serve.max_body_bytes).await?;
    let req: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let file_id = req["input_file_id"].as_str().ok_or_else(|| {
        ApiError::bad_request("missing input_file_id").with_param("input_file_id")
    })?;
    if req["endpoint"].as_str() != Some(CHAT_URL) {
        return Err(
            ApiError::bad_request(format!("endpoint must be {CHAT_URL}")).with_param("endpoint"),
        );
    }
    if req["completion_window"].as_str() != Some("24h") {
        return Err(ApiError::bad_request("completion_window must be \"24h\"")
            .with_param("completion_window"));
    }
    let metadata = req.get("metadata").filter(|m| !m.is_null());
    let content = db::file_content(&st.pool, &grant.tenant, file_id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| ApiError::not_found("file_not_found", format!("no such file: {file_id}")))?;
    let text = std::str::from_utf8(&content)
        .map_err(|_| ApiError::bad_request(format!("file {file_id} is not UTF-8 text")))?;
    let feature = headers.get(FEATURE_HEADER).and_then(|v| v.to_str().ok());
    let id = super::new_id("batch");
    let subject = st.names.jobs_subject(Priority::Low, &grant.tenant);
    let mut lines = Vec::new();
    let mut jobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let n = i + 1;
        if lines.len() >= st.cfg.serve.max_batch_lines {
            return Err(ApiError::bad_request(format!(
                "file {file_id} has more than serve.max_batch_lines ({}) requests",
                st.cfg.serve.max_batch_lines
            )));
        }
        let mapped = openai_batch::line_to_job(line, &id, &grant.tenant, feature).and_then(|m| {
            let payload = serde_json::to_vec(&m.job).unwrap_or_default();
            match parse_job_checked(&payload, &subject, 0, &st.rules) {
                Ok(_) => Ok((m, payload)),
                Err(f) => Err(openai_batch::LineError {
                    custom_id: Some(m.custom_id),
                    code: "invalid_request",
                    message: f.error.message,
                }),
            }
        });
        match mapped {
            Ok((m, payload)) => {
                if let Some(first) = seen.insert(m.custom_id.clone(), n) {
                    return Err(ApiError::bad_request(format!(
                        "custom_id {:?} is used on lines {first} and {n}: each must be unique",
                        m.custom_id
                    )));
                }
                lines.push(NewLine {
                    line: n as i32,
                    custom_id: Some(m.custom_id),
                    job_id: Some(m.job_id.clone()),
                    error: None,
                });
                jobs.push((m.job_id, payload));
            }
            Err(e) => lines.push(NewLine {
                line: n as i32,
                custom_id: e.custom_id.clone(),
                job_id: None,
                error: Some(e.to_line(n)),
            }),
        }
    }
    if lines.is_empty() {
        return Err(ApiError::bad_request(format!(
            "file {file_id} has no requests"
        )));
    }
    let expires = chrono::Utc::now() + chrono::Duration::hours(24);
    let row = db::insert_batch(
        &st.pool,
        &id,
        &grant.tenant,
        file_id,
        "24h",
        metadata,
        expires,
        &lines,
    )
    .await
    .map_err(store_err)?;
    // Publish with up to 256 acks outstanding (one at a time is a round trip per line).
    let published: Vec<Result<(), ApiError>> = futures::stream::iter(jobs)
        .map(|(job_id, payload)| {
            let subject = subject.clone();
            let tenant = grant.tenant.clone();
            async move { publish(st, subject, &tenant, &job_id, payload).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    if let Some(Err(e)) = published.into_iter().find(Result::is_err) {
        let errors = json!({"object": "list", "data": [{"code": "queue_unavailable",
            "message": e.message, "param": null, "line": null}]});
        let _ = db::fail(&st.pool, &id, &errors).await;
        return Err(e);
    }
    tracing::info!(batch = %id, tenant = %grant.tenant, lines = lines.len(), "front door: batch queued");
    Ok(batch_json(&row))
}

pub(super) async fn get(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let b = found(db::batch(&st.pool, &grant.tenant, &id).await, "batch", &id)?;
    Ok(Json(batch_json(&b)))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn list(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let rows = db::batches(&st.pool, &grant.tenant, q.after.as_deref(), limit + 1)
        .await
        .map_err(store_err)?;
    let more = rows.len() as i64 > limit;
    let data: Vec<Value> = rows.iter().take(limit as usize).map(batch_json).collect();
    let (first, last) = (
        data.first().map(|b| b["id"].clone()),
        data.last().map(|b| b["id"].clone()),
    );
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": more, "first_id": first, "last_id": last}),
    ))
}

/// `POST /v1/batches/{id}/cancel`: an open batch ends `cancelled` at the collector's next
/// look, with what has finished; jobs already queued still run (their results are not
/// in the files).
pub(super) async fn cancel(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let b = found(db::cancel(&st.pool, &grant.tenant, &id).await, "batch", &id)?;
    Ok(Json(batch_json(&b)))
}

/// Every `serve.batch_poll_ms`: count each open batch's ended lines, and end the batches
/// whose lines have all ended, that were cancelled, or whose window passed.
pub(super) async fn collect_loop(st: Arc<State>, stop: CancellationToken) {
    let every = Duration::from_millis(st.cfg.serve.batch_poll_ms);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = collect_once(&st).await {
            tracing::warn!(error = %e, "front door: collecting batches failed; trying again");
        }
    }
}

async fn collect_once(st: &State) -> Result<(), crate::store::StoreError> {
    for b in db::open_batches(&st.pool).await? {
        let (ok, bad) = db::progress(&st.pool, &b).await?;
        let expired = chrono::Utc::now() >= b.expires_at;
        let due = ok + bad >= b.total || b.status == "cancelling" || expired;
        if due && db::finish(&st.pool, &b.id, |row, lines| finished(row, lines, expired)).await? {
            tracing::info!(batch = %b.id, tenant = %b.tenant, "front door: batch ended");
        }
    }
    Ok(())
}

/// The output and error files of a batch that ends now.
fn finished(row: &BatchRow, lines: Vec<LineOutcome>, expired: bool) -> Finished {
    let status = match (row.status.as_str(), expired) {
        ("cancelling", _) => "cancelled",
        (_, true) => "expired",
        _ => "completed",
    };
    let created = chrono::Utc::now().timestamp();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut completed, mut failed) = (0, 0);
    for l in lines {
        let custom_id = l.custom_id.clone().unwrap_or_default();
        let result = l
            .result
            .filter(|_| matches!(l.status.as_deref(), Some("succeeded" | "failed")))
            .and_then(|r| serde_json::from_value::<JobResult>(r).ok());
        let (value, ok) = match (l.error, result) {
            (Some(e), _) => (e, false),
            (None, Some(r)) => openai_batch::result_line(&custom_id, &r, created),
            (None, None) => {
                let code = if status == "expired" {
                    "batch_expired"
                } else {
                    "batch_cancelled"
                };
                (
                    json!({"id": format!("batch_req_line{}", l.line), "custom_id": custom_id, "response": null,
                    "error": {"code": code, "message": format!("line {}: the batch ended ({status}) before this request finished; its job {} may still run", l.line, l.job_id.unwrap_or_default())}}),
                    false,
                )
            }
        };
        let target = if ok { &mut out } else { &mut err };
        target.extend_from_slice(value.to_string().as_bytes());
        target.push(b'\n');
        if ok {
            completed += 1;
        } else {
            failed += 1;
        }
    }
    Finished {
        status,
        completed,
        failed,
        output: (!out.is_empty()).then(|| (super::new_id("file"), out)),
        error: (!err.is_empty()).then(|| (super::new_id("file"), err)),
    }
}
