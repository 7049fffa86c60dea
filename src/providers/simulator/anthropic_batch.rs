//! Anthropic's Message Batches API, as strict as the real one where switchyard and the
//! official SDK touch it: `POST /v1/messages/batches` (`{"requests": [{custom_id, params}]}`,
//! nothing else; custom ids `^[a-zA-Z0-9_-]{1,64}$`, unique; 1 to 100,000 requests),
//! `GET /v1/messages/batches/{id}`, `GET /v1/messages/batches` (newest first, `limit`,
//! `after_id`), `POST /v1/messages/batches/{id}/cancel`, and `GET
//! /v1/messages/batches/{id}/results` (JSONL, once `ended`). The key and
//! `anthropic-version` headers as on `/v1/messages`.
//!
//! A batch is `in_progress` until `batch_complete_ms` after its creation, then `ended`:
//! each request's `params` are checked and answered as `/v1/messages` would (`succeeded`
//! with the message, or `errored` with the error). The same profile knobs as OpenAI's
//! batches apply: `batch_expire_every` (those requests `expired`), `batch_error_every`
//! (`errored`, `api_error`), `batch_hang`; a cancelled batch ends with every request
//! `canceled`. Each answered request is counted as `anthropic-batch/<model>/<status>`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Mutex;

use super::anthropic::{check_headers, message_json};
use super::anthropic_validate::{invalid, validate, AErr};
use super::{header_str, json_response, text, Simulator};

const MAX_REQUESTS: usize = 100_000;

struct Batch {
    id: String,
    created: std::time::Instant,
    created_at: String,
    requests: Vec<(String, Value)>,
    /// `in_progress`, `canceling` or `ended`.
    status: &'static str,
    cancel_initiated_at: Option<String>,
    ended_at: Option<String>,
    /// One JSONL line per request, once ended.
    results: Vec<Value>,
}

#[derive(Default)]
pub(crate) struct Store {
    batches: Mutex<Vec<Batch>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn err(e: &AErr) -> Response {
    json_response(
        e.0,
        Vec::new(),
        &json!({"type": "error", "error": {"type": e.1, "message": e.2}}),
    )
}

fn not_found(id: &str) -> Response {
    err(&AErr(
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("Message batch {id} not found"),
    ))
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn batch_json(b: &Batch, base: &str) -> Value {
    let count = |t: &str| {
        b.results
            .iter()
            .filter(|r| r["result"]["type"] == t)
            .count()
    };
    let processing = if b.status == "ended" {
        0
    } else {
        b.requests.len()
    };
    json!({
        "id": b.id, "type": "message_batch", "processing_status": b.status,
        "request_counts": {"processing": processing, "succeeded": count("succeeded"),
            "errored": count("errored"), "canceled": count("canceled"), "expired": count("expired")},
        "ended_at": b.ended_at, "created_at": b.created_at,
        "expires_at": b.created_at, "archived_at": null,
        "cancel_initiated_at": b.cancel_initiated_at,
        "results_url": if b.status == "ended" {
            Value::String(format!("{base}/v1/messages/batches/{}/results", b.id))
        } else {
            Value::Null
        },
    })
}

/// `http://<host>` of this request, for `results_url`.
fn base_of(headers: &HeaderMap) -> String {
    format!(
        "http://{}",
        header_str(headers, "host").unwrap_or("127.0.0.1")
    )
}

pub(crate) async fn create(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = check_headers(&headers) {
        return err(&e);
    }
    let Some(Value::Object(obj)) = serde_json::from_slice::<Value>(&body).ok() else {
        return err(&invalid(
            "There was an error parsing the body of your request. Please check that it is valid JSON."
                .into(),
        ));
    };
    if let Some(k) = obj.keys().find(|k| k.as_str() != "requests") {
        return err(&invalid(format!("{k}: Extra inputs are not permitted")));
    }
    let Some(Value::Array(reqs)) = obj.get("requests") else {
        return err(&invalid("requests: Field required".into()));
    };
    if reqs.is_empty() || reqs.len() > MAX_REQUESTS {
        return err(&invalid(format!(
            "requests: must hold 1 to {MAX_REQUESTS} requests"
        )));
    }
    let mut ids = HashSet::new();
    let mut requests = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let Some(r) = r.as_object() else {
            return err(&invalid(format!("requests.{i}: Input should be an object")));
        };
        if let Some(k) = r
            .keys()
            .find(|k| !["custom_id", "params"].contains(&k.as_str()))
        {
            return err(&invalid(format!(
                "requests.{i}.{k}: Extra inputs are not permitted"
            )));
        }
        let Some(cid) = r.get("custom_id").and_then(Value::as_str) else {
            return err(&invalid(format!("requests.{i}.custom_id: Field required")));
        };
        if !valid_custom_id(cid) {
            return err(&invalid(format!(
                "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )));
        }
        if !ids.insert(cid.to_string()) {
            return err(&invalid(format!(
                "requests.{i}.custom_id: Duplicate custom_id '{cid}': custom_ids must be unique within a batch"
            )));
        }
        let Some(params) = r.get("params").filter(|p| p.is_object()) else {
            return err(&invalid(format!("requests.{i}.params: Field required")));
        };
        requests.push((cid.to_string(), params.clone()));
    }
    let b = Batch {
        id: text::random_id("msgbatch_01", 22),
        created: std::time::Instant::now(),
        created_at: now(),
        requests,
        status: "in_progress",
        cancel_initiated_at: None,
        ended_at: None,
        results: Vec::new(),
    };
    let out = batch_json(&b, &base_of(&headers));
    if let Ok(mut batches) = sim.anthropic_batches.batches.lock() {
        batches.push(b);
    }
    json_response(StatusCode::OK, Vec::new(), &out)
}

/// The result of one request: each answered as `/v1/messages` would.
fn result_of(
    sim: &Simulator,
    n: u64,
    params: &Value,
    expire_every: u64,
    error_every: u64,
) -> Value {
    if expire_every > 0 && n % expire_every == 0 {
        return json!({"type": "expired"});
    }
    let model = params
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string();
    let key = format!("anthropic-batch/{model}");
    if error_every > 0 && n % error_every == 0 {
        sim.inner.record(&key, "500");
        return json!({"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}});
    }
    let Some(obj) = params.as_object() else {
        return json!({"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "params: Input should be an object"}}});
    };
    match validate(obj) {
        Ok(req) => {
            sim.inner.record(&key, "200");
            let (message, _) = message_json(&req, obj);
            json!({"type": "succeeded", "message": message})
        }
        Err(e) => {
            sim.inner.record(&key, e.0.as_str());
            json!({"type": "errored", "error": {"type": "error", "error": {"type": e.1, "message": e.2}}})
        }
    }
}

/// Move a batch along: in_progress → ended (answered), canceling → ended (canceled).
fn advance(sim: &Simulator, b: &mut Batch) {
    let profile = sim.inner.profile();
    let canceled = b.status == "canceling";
    if !canceled
        && (b.status != "in_progress"
            || profile.batch_hang
            || b.created.elapsed() < std::time::Duration::from_millis(profile.batch_complete_ms))
    {
        return;
    }
    b.results = b
        .requests
        .iter()
        .enumerate()
        .map(|(i, (cid, params))| {
            let result = if canceled {
                json!({"type": "canceled"})
            } else {
                result_of(
                    sim,
                    i as u64 + 1,
                    params,
                    profile.batch_expire_every,
                    profile.batch_error_every,
                )
            };
            json!({"custom_id": cid, "result": result})
        })
        .collect();
    b.status = "ended";
    b.ended_at = Some(now());
}

/// Check the headers, then answer with `f` on batch `id` (404 when there is none).
fn on_batch(
    sim: &Simulator,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(&mut Batch) -> Response,
) -> Response {
    if let Err(e) = check_headers(headers) {
        return err(&e);
    }
    let Ok(mut batches) = sim.anthropic_batches.batches.lock() else {
        return not_found(id);
    };
    match batches.iter_mut().find(|b| b.id == id) {
        Some(b) => f(b),
        None => not_found(id),
    }
}

pub(crate) async fn retrieve(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let base = base_of(&headers);
    on_batch(&sim, &headers, &id, |b| {
        advance(&sim, b);
        json_response(StatusCode::OK, Vec::new(), &batch_json(b, &base))
    })
}

pub(crate) async fn cancel(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let base = base_of(&headers);
    on_batch(&sim, &headers, &id, |b| {
        if b.status == "in_progress" {
            b.status = "canceling";
            b.cancel_initiated_at = Some(now());
        }
        json_response(StatusCode::OK, Vec::new(), &batch_json(b, &base))
    })
}

pub(crate) async fn results(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    on_batch(&sim, &headers, &id, |b| {
        if b.status != "ended" {
            return err(&invalid(format!(
                "Message batch {} has not yet ended: results are not available",
                b.id
            )));
        }
        let mut body = String::new();
        for r in &b.results {
            body.push_str(&r.to_string());
            body.push('\n');
        }
        let mut resp = Response::new(axum::body::Body::from(body));
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/binary"),
        );
        resp
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    after_id: Option<String>,
}

pub(crate) async fn list(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(e) = check_headers(&headers) {
        return err(&e);
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return err(&invalid("limit: must be between 1 and 1000".into()));
    }
    let base = base_of(&headers);
    let Ok(batches) = sim.anthropic_batches.batches.lock() else {
        return not_found("-");
    };
    let all = batches.iter().rev().map(|b| batch_json(b, &base)).collect();
    let (page, has_more, first, last) = super::list_page(all, q.after_id.as_deref(), limit);
    json_response(
        StatusCode::OK,
        Vec::new(),
        &json!({"data": page, "has_more": has_more, "first_id": first, "last_id": last}),
    )
}
