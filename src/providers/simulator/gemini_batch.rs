//! Gemini's Batch Mode, as strict as the real one where switchyard and the official
//! `google-genai` SDK touch it:
//!
//! - `POST /v1beta/models/{model}:batchGenerateContent` with `{"batch": {displayName,
//!   inputConfig: {requests: {requests: [{request, metadata}]}}, priority}}`; the answer is
//!   a long-running `Operation` (`{name: "batches/…", metadata: GenerateContentBatch}`).
//!   Unknown field names are refused as Google refuses them (`Invalid JSON payload
//!   received. Unknown name …`), so is a request whose `model` is not the batch's, an
//!   empty batch, a missing `displayName`, and a body over 20 MB (the documented limit
//!   for inline requests). A request that would not even parse (an unknown field in it)
//!   refuses the whole batch; one that parses but `generateContent` would refuse is
//!   answered with its error in the output, as a live call would be.
//! - `GET /v1beta/batches/{id}` (the operation: `metadata.state` `BATCH_STATE_PENDING`,
//!   `RUNNING`, then `SUCCEEDED` with `metadata.output.inlinedResponses.inlinedResponses`
//!   in request order: `{response, metadata}` or `{error, metadata}`; `done` and
//!   `response` once ended), `GET /v1beta/batches` (`pageSize`, `pageToken`; answers
//!   `{operations, nextPageToken}`), `POST /v1beta/batches/{id}:cancel`, `DELETE
//!   /v1beta/batches/{id}`. The key as on `generateContent`.
//! - Input files (`inputConfig.fileName`, uploaded through the Files API's resumable
//!   upload) are not simulated: such a batch is refused with a message saying so.
//!
//! A batch is pending until its first look, running until `batch_complete_ms` after its
//! creation, then succeeded: each request answered as `generateContent` would (the same
//! deterministic text). Profile knobs: `batch_error_every` (every Nth request answered
//! with a 500 `INTERNAL` error), `batch_expire_every` (any value above 0: the batch ends
//! `BATCH_STATE_EXPIRED` with no output, as an expired Gemini batch has none),
//! `batch_hang` (stays running until cancelled); a cancelled batch ends
//! `BATCH_STATE_CANCELLED` with no output. Each answered request is counted as
//! `gemini-batch/<model>/<status>`.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::gemini::{answer, check_key, error_body};
use super::gemini_validate::{fields, validate, GErr};
use super::{json_response, text, Simulator};

/// The documented limit of a batch created with inline requests.
const MAX_INLINE_BYTES: usize = 20 * 1024 * 1024;
const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch";
const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput";

struct Batch {
    /// The id after `batches/`.
    id: String,
    model: String,
    display_name: String,
    priority: Option<Value>,
    created: std::time::Instant,
    create_time: String,
    update_time: String,
    end_time: Option<String>,
    /// `(request, metadata)` per inline request.
    requests: Vec<InlineRequest>,
    state: &'static str,
    /// One `{response|error, metadata}` per request, once succeeded.
    output: Option<Vec<Value>>,
}

#[derive(Default)]
pub(crate) struct Store {
    batches: Mutex<Vec<Batch>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn err(e: &GErr) -> Response {
    let status = StatusCode::from_u16(e.0).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, Vec::new(), &error_body(e.0, &e.1, None))
}

fn key_refused(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<Response> {
    check_key(headers, query).err().map(|(e, details)| {
        let status = StatusCode::from_u16(e.0).unwrap_or(StatusCode::BAD_REQUEST);
        json_response(status, Vec::new(), &error_body(e.0, &e.1, details))
    })
}

fn not_found(id: &str) -> Response {
    err(&GErr(404, format!("Batch batches/{id} not found.")))
}

fn is_done(state: &str) -> bool {
    matches!(
        state,
        "BATCH_STATE_SUCCEEDED"
            | "BATCH_STATE_FAILED"
            | "BATCH_STATE_CANCELLED"
            | "BATCH_STATE_EXPIRED"
    )
}

/// The `Operation` for a batch.
fn operation(b: &Batch) -> Value {
    let n = b.requests.len();
    let (ok, failed) = b.output.as_ref().map_or((0, 0), |out| {
        let failed = out.iter().filter(|r| r.get("error").is_some()).count();
        (out.len() - failed, failed)
    });
    let pending = if is_done(b.state) { 0 } else { n };
    let mut meta = json!({
        "@type": BATCH_TYPE,
        "model": format!("models/{}", b.model),
        "displayName": b.display_name,
        "createTime": b.create_time,
        "updateTime": b.update_time,
        "batchStats": {"requestCount": n.to_string(), "pendingRequestCount": pending.to_string(),
            "successfulRequestCount": ok.to_string(), "failedRequestCount": failed.to_string()},
        "state": b.state,
        "name": format!("batches/{}", b.id),
    });
    if let Some(m) = meta.as_object_mut() {
        if let Some(p) = &b.priority {
            m.insert("priority".into(), p.clone());
        }
        if let Some(t) = &b.end_time {
            m.insert("endTime".into(), json!(t));
        }
    }
    let mut op = json!({"name": format!("batches/{}", b.id), "metadata": meta});
    if is_done(b.state) {
        op["done"] = json!(true);
        if let Some(out) = &b.output {
            let output = json!({"inlinedResponses": {"inlinedResponses": out}});
            op["metadata"]["output"] = output.clone();
            let mut resp = json!({"@type": OUTPUT_TYPE});
            resp["inlinedResponses"] = output["inlinedResponses"].clone();
            op["response"] = resp;
        }
    }
    op
}

/// One inline request: its `request` object and its `metadata`, if any.
type InlineRequest = (Map<String, Value>, Option<Value>);

/// Read `inputConfig` into its inline requests.
fn inline_requests(input: &Value, model: &str) -> Result<Vec<InlineRequest>, GErr> {
    let bad = |m: String| GErr(400, m);
    let Some(obj) = input.as_object() else {
        return Err(bad("batch.input_config: must be an object".into()));
    };
    let input = fields(obj, &["fileName", "requests"], "batch.inputConfig")?;
    match (input.get("fileName"), input.get("requests")) {
        (Some(_), Some(_)) => Err(bad(
            "batch.input_config: only one of file_name and requests may be set".into(),
        )),
        (Some(_), None) => Err(bad(
            "batch.input_config.file_name: this simulator keeps no Gemini files (the Files API is not simulated); send the requests inline".into(),
        )),
        (None, None) => Err(bad("batch.input_config: one of file_name or requests is required".into())),
        (None, Some(r)) => {
            let r = r
                .as_object()
                .ok_or_else(|| bad("batch.input_config.requests: must be an object".into()))?;
            let r = fields(r, &["requests"], "batch.inputConfig.requests")?;
            let list = r.get("requests").and_then(Value::as_array).ok_or_else(|| {
                bad("batch.input_config.requests.requests: at least one request is required".into())
            })?;
            if list.is_empty() {
                return Err(bad(
                    "batch.input_config.requests.requests: at least one request is required".into(),
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let at = format!("batch.inputConfig.requests.requests[{i}]");
                let item = item
                    .as_object()
                    .ok_or_else(|| bad(format!("{at}: must be an object")))?;
                let item = fields(item, &["request", "metadata"], &at)?;
                let mut req = item
                    .get("request")
                    .and_then(Value::as_object)
                    .cloned()
                    .ok_or_else(|| bad(format!("{at}.request: is required")))?;
                if let Some(m) = req.remove("model") {
                    let m = m.as_str().unwrap_or("");
                    if m.strip_prefix("models/").unwrap_or(m) != model {
                        return Err(bad(format!(
                            "{at}.request.model: {m} is not the batch's model models/{model}"
                        )));
                    }
                }
                out.push((req, item.get("metadata").cloned()));
            }
            Ok(out)
        }
    }
}

/// `POST /v1beta/models/{model}:batchGenerateContent`.
pub(crate) fn create(
    sim: &Simulator,
    model: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    if let Some(r) = key_refused(headers, query) {
        return r;
    }
    let model = model.strip_prefix("models/").unwrap_or(model);
    if body.len() > MAX_INLINE_BYTES {
        return err(&GErr(
            400,
            format!("Request payload size exceeds the limit: {MAX_INLINE_BYTES} bytes."),
        ));
    }
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(body) else {
        return err(&GErr(
            400,
            "Invalid JSON payload received. Unexpected token.".into(),
        ));
    };
    let batch = match fields(&top, &["batch"], "") {
        Ok(t) => t,
        Err(e) => return err(&e),
    };
    let Some(batch) = batch.get("batch").and_then(Value::as_object) else {
        return err(&GErr(400, "batch: is required".into()));
    };
    // Output-only fields are accepted and ignored, as proto JSON does.
    let allowed = [
        "name",
        "model",
        "displayName",
        "inputConfig",
        "output",
        "createTime",
        "endTime",
        "updateTime",
        "batchStats",
        "state",
        "priority",
    ];
    let batch = match fields(batch, &allowed, "batch") {
        Ok(b) => b,
        Err(e) => return err(&e),
    };
    if let Some(m) = batch.get("model").and_then(Value::as_str) {
        if m.strip_prefix("models/").unwrap_or(m) != model {
            return err(&GErr(
                400,
                format!("batch.model: {m} does not match the URL's models/{model}"),
            ));
        }
    }
    let display_name = match batch.get("displayName").and_then(Value::as_str) {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => return err(&GErr(400, "batch.display_name: is required".into())),
    };
    let priority = batch.get("priority").cloned();
    if let Some(p) = &priority {
        let ok = p.as_i64().is_some() || p.as_str().is_some_and(|s| s.parse::<i64>().is_ok());
        if !ok {
            return err(&GErr(
                400,
                format!("Invalid value at 'batch.priority' (TYPE_INT64), {p}"),
            ));
        }
    }
    let Some(input) = batch.get("inputConfig") else {
        return err(&GErr(400, "batch.input_config: is required".into()));
    };
    let requests = match inline_requests(input, model) {
        Ok(r) => r,
        Err(e) => return err(&e),
    };
    // A request that does not parse (an unknown field) refuses the whole batch, as the
    // body's parse fails at Google; other refusals are that request's answer.
    for (i, (req, _)) in requests.iter().enumerate() {
        if let Err(e) = validate(req, model) {
            if e.1.starts_with("Invalid JSON payload received") {
                return err(&GErr(
                    400,
                    format!(
                        "{} (batch.input_config.requests.requests[{i}].request)",
                        e.1
                    ),
                ));
            }
        }
    }
    let t = now();
    let b = Batch {
        id: text::random_id("", 32).to_ascii_lowercase(),
        model: model.to_string(),
        display_name,
        priority,
        created: std::time::Instant::now(),
        create_time: t.clone(),
        update_time: t,
        end_time: None,
        requests,
        state: "BATCH_STATE_PENDING",
        output: None,
    };
    let out = operation(&b);
    if let Ok(mut batches) = sim.gemini_batches.batches.lock() {
        batches.push(b);
    }
    json_response(StatusCode::OK, Vec::new(), &out)
}

/// One request's inline response, as `generateContent` would answer it.
fn respond(
    sim: &Simulator,
    model: &str,
    n: u64,
    req: &Map<String, Value>,
    error_every: u64,
) -> Value {
    let key = format!("gemini-batch/{model}");
    if error_every > 0 && n % error_every == 0 {
        sim.inner.record(&key, "500");
        return json!({"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}});
    }
    match validate(req, model) {
        Ok(r) => {
            sim.inner.record(&key, "200");
            let seed = text::seed_of(
                &json!([req.get("systemInstruction"), req.get("contents")]),
                0,
            );
            json!({ "response": answer(&r, model, seed) })
        }
        Err(e) => {
            sim.inner.record(&key, &e.0.to_string());
            error_body(e.0, &e.1, None)
        }
    }
}

/// Move a batch along: pending → running at its first look; running → succeeded (or
/// expired) once `batch_complete_ms` have passed.
fn advance(sim: &Simulator, b: &mut Batch) {
    let profile = sim.inner.profile();
    match b.state {
        "BATCH_STATE_PENDING" => {
            b.state = "BATCH_STATE_RUNNING";
            b.update_time = now();
        }
        "BATCH_STATE_RUNNING" => {}
        _ => return,
    }
    if profile.batch_hang
        || b.created.elapsed() < std::time::Duration::from_millis(profile.batch_complete_ms)
    {
        return;
    }
    let t = now();
    if profile.batch_expire_every > 0 {
        b.state = "BATCH_STATE_EXPIRED";
    } else {
        let out = b
            .requests
            .iter()
            .enumerate()
            .map(|(i, (req, meta))| {
                let mut r = respond(sim, &b.model, i as u64 + 1, req, profile.batch_error_every);
                if let (Some(m), Some(o)) = (meta, r.as_object_mut()) {
                    o.insert("metadata".into(), m.clone());
                }
                r
            })
            .collect();
        b.output = Some(out);
        b.state = "BATCH_STATE_SUCCEEDED";
    }
    b.update_time = t.clone();
    b.end_time = Some(t);
}

type Q = Result<Query<HashMap<String, String>>, QueryRejection>;

fn query_of(q: Q) -> HashMap<String, String> {
    q.map(|q| q.0).unwrap_or_default()
}

/// Check the key, then answer with `f` on batch `id` (404 when there is none).
fn on_batch(
    sim: &Simulator,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    id: &str,
    f: impl FnOnce(&mut Batch) -> Response,
) -> Response {
    if let Some(r) = key_refused(headers, query) {
        return r;
    }
    let Ok(mut batches) = sim.gemini_batches.batches.lock() else {
        return not_found(id);
    };
    match batches.iter_mut().find(|b| b.id == id) {
        Some(b) => f(b),
        None => not_found(id),
    }
}

/// `GET /v1beta/batches/{id}`.
pub(crate) async fn get(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Q,
) -> Response {
    let query = query_of(query);
    on_batch(&sim, &headers, &query, &id, |b| {
        advance(&sim, b);
        json_response(StatusCode::OK, Vec::new(), &operation(b))
    })
}

/// `POST /v1beta/batches/{id}:cancel` (the only POST on a batch).
pub(crate) async fn post(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(rest): Path<String>,
    query: Q,
) -> Response {
    let query = query_of(query);
    let Some(id) = rest.strip_suffix(":cancel") else {
        return err(&GErr(404, format!("Method not found: batches/{rest}")));
    };
    on_batch(&sim, &headers, &query, id, |b| {
        if !is_done(b.state) {
            let t = now();
            b.state = "BATCH_STATE_CANCELLED";
            b.update_time = t.clone();
            b.end_time = Some(t);
        }
        json_response(StatusCode::OK, Vec::new(), &json!({}))
    })
}

/// `DELETE /v1beta/batches/{id}`.
pub(crate) async fn delete(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Q,
) -> Response {
    let query = query_of(query);
    if let Some(r) = key_refused(&headers, &query) {
        return r;
    }
    let Ok(mut batches) = sim.gemini_batches.batches.lock() else {
        return not_found(&id);
    };
    match batches.iter().position(|b| b.id == id) {
        Some(i) => {
            batches.remove(i);
            json_response(StatusCode::OK, Vec::new(), &json!({}))
        }
        None => not_found(&id),
    }
}

/// `GET /v1beta/batches`: newest first; `pageToken` is where the page starts.
pub(crate) async fn list(State(sim): State<Simulator>, headers: HeaderMap, query: Q) -> Response {
    let query = query_of(query);
    if let Some(r) = key_refused(&headers, &query) {
        return r;
    }
    let size = match query.get("pageSize").map(|s| s.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if n > 0 => n.min(1000),
        Some(_) => {
            return err(&GErr(
                400,
                "Invalid value for page_size: must be a positive integer".into(),
            ))
        }
    };
    let start = match query.get("pageToken").map(|t| t.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return err(&GErr(400, "Invalid page_token.".into())),
    };
    let Ok(mut batches) = sim.gemini_batches.batches.lock() else {
        return not_found("-");
    };
    for b in batches.iter_mut() {
        advance(&sim, b);
    }
    let all: Vec<Value> = batches.iter().rev().map(operation).collect();
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(start).take(size).collect();
    let mut out = json!({ "operations": page });
    if start + size < total {
        out["nextPageToken"] = json!((start + size).to_string());
    }
    json_response(StatusCode::OK, Vec::new(), &out)
}
