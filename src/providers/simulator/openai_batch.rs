//! OpenAI's Files and Batch APIs, as strict as the real ones where switchyard and the
//! official SDK touch them:
//! - `POST /v1/files` (multipart: `purpose` and `file`), `GET /v1/files/{id}`,
//!   `GET /v1/files/{id}/content`;
//! - `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window` "24h",
//!   optional `metadata`; nothing else), `GET /v1/batches/{id}`, `GET /v1/batches`
//!   (newest first, `limit`, `after`), `POST /v1/batches/{id}/cancel`.
//!
//! A batch is `validating` when created; on the next look it is `failed` (with `errors`)
//! when its input file breaks the rules (each line `{custom_id, method: "POST", url: the
//! batch's endpoint, body}`, custom ids unique, one model for the whole file), else
//! `in_progress` until `batch_complete_ms` after its creation, then `completed`: every line
//! is answered as `/v1/chat/completions` would answer it (4xx for a body it refuses) into
//! the output file (and the error file for non-200s). Faults (the base profile's):
//! `batch_expire_every` = N makes every Nth line (1-based) not run, the batch ending
//! `expired` and those lines in the error file with `batch_expired`;
//! `batch_error_every` = N answers every Nth line with a 500; `batch_hang` keeps batches
//! `in_progress` until cancelled. A cancelled batch answers nothing (`cancelling`, then
//! `cancelled` with no output file). Each answered line is counted as
//! `openai-batch/<model>/<status>`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::openai::{answer_body, check_auth, error_body};
use super::openai_validate::OaError;
use super::{header_str, json_response, text, Simulator};

const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/embeddings", "/v1/completions"];
const PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

struct File {
    id: String,
    filename: String,
    purpose: String,
    bytes: Vec<u8>,
    created_at: i64,
}

struct Batch {
    id: String,
    endpoint: String,
    input_file_id: String,
    metadata: Option<Value>,
    created_at: i64,
    created: std::time::Instant,
    status: &'static str,
    errors: Option<Value>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    total: u64,
    completed: u64,
    failed: u64,
    times: Map<String, Value>,
    /// Looked at once (a new batch shows `validating` only until then).
    seen: bool,
}

/// The files and batches of one simulator.
#[derive(Default)]
pub(crate) struct Store {
    files: Mutex<HashMap<String, File>>,
    batches: Mutex<Vec<Batch>>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn err(e: &OaError) -> Response {
    json_response(e.status, Vec::new(), &error_body(e))
}

fn invalid(message: impl Into<String>, param: Option<&str>) -> Response {
    err(&OaError::invalid(
        message.into(),
        param.map(str::to_owned),
        None,
    ))
}

fn not_found(message: String) -> Response {
    err(&OaError {
        status: StatusCode::NOT_FOUND,
        message,
        typ: "invalid_request_error",
        param: None,
        code: None,
    })
}

fn auth(sim: &Simulator, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let no_auth = sim.inner.profile().no_auth;
    check_auth(headers, no_auth).map_err(|e| Box::new(err(&e)))
}

/// One part of a multipart body: its name, filename and content.
type Part<'a> = (String, Option<String>, &'a [u8]);

fn file_json(f: &File) -> Value {
    json!({
        "id": f.id, "object": "file", "bytes": f.bytes.len(), "created_at": f.created_at,
        "filename": f.filename, "purpose": f.purpose, "status": "processed",
        "expires_at": null, "status_details": null,
    })
}

/// The parts of a `multipart/form-data` body: (name, filename, content).
fn parts<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Part<'a>>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut out = Vec::new();
    let mut rest = body;
    // Skip to the first delimiter.
    let start = find(rest, d)?;
    rest = &rest[start + d.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Some(out);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        rest = &rest[head_end + 4..];
        let next = find(rest, format!("\r\n{delim}").as_bytes())?;
        let content = &rest[..next];
        rest = &rest[next + 2 + d.len()..];
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                for p in line.split(';').map(str::trim) {
                    if let Some(v) = p.strip_prefix("name=") {
                        name = Some(v.trim_matches('"').to_string());
                    } else if let Some(v) = p.strip_prefix("filename=") {
                        filename = Some(v.trim_matches('"').to_string());
                    }
                }
            }
        }
        out.push((name?, filename, content));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(crate) async fn create_file(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return *r;
    }
    let ct = header_str(&headers, "content-type").unwrap_or("");
    if !ct.starts_with("multipart/form-data") {
        return invalid(
            "Invalid Content-Type header (expected multipart/form-data)",
            None,
        );
    }
    let Some(parts) = parts(ct, &body) else {
        return invalid("Could not parse multipart form", None);
    };
    let mut purpose = None;
    let mut file = None;
    for (name, filename, content) in parts {
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(content).into_owned()),
            "file" => file = Some((filename.unwrap_or_else(|| "upload".into()), content)),
            other => {
                return invalid(
                    format!("Unrecognized request argument supplied: {other}"),
                    None,
                )
            }
        }
    }
    let Some(purpose) = purpose else {
        return invalid("Missing required parameter: 'purpose'.", Some("purpose"));
    };
    if !PURPOSES.contains(&purpose.as_str()) {
        return invalid(
            format!("'{purpose}' is not one of {PURPOSES:?} - 'purpose'"),
            Some("purpose"),
        );
    }
    let Some((filename, content)) = file else {
        return invalid("Missing required parameter: 'file'.", Some("file"));
    };
    if purpose == "batch" && !filename.ends_with(".jsonl") {
        return invalid(
            "Invalid file format for Batch API. Must be .jsonl",
            Some("file"),
        );
    }
    let f = File {
        id: text::random_id("file-", 24),
        filename,
        purpose,
        bytes: content.to_vec(),
        created_at: now(),
    };
    let out = file_json(&f);
    if let Ok(mut files) = sim.batches.files.lock() {
        files.insert(f.id.clone(), f);
    }
    json_response(StatusCode::OK, Vec::new(), &out)
}

pub(crate) async fn get_file(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return *r;
    }
    let files = match sim.batches.files.lock() {
        Ok(f) => f,
        Err(_) => return not_found(format!("No such File object: {id}")),
    };
    match files.get(&id) {
        Some(f) => json_response(StatusCode::OK, Vec::new(), &file_json(f)),
        None => not_found(format!("No such File object: {id}")),
    }
}

pub(crate) async fn file_content(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return *r;
    }
    let bytes = sim
        .batches
        .files
        .lock()
        .ok()
        .and_then(|f| f.get(&id).map(|f| f.bytes.clone()));
    match bytes {
        Some(b) => {
            let mut resp = Response::new(axum::body::Body::from(b));
            resp.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        None => not_found(format!("No such File object: {id}")),
    }
}

fn batch_json(b: &Batch) -> Value {
    let mut v = json!({
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": b.errors,
        "input_file_id": b.input_file_id, "completion_window": "24h", "status": b.status,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": b.created_at, "in_progress_at": null, "expires_at": b.created_at + 86_400,
        "finalizing_at": null, "completed_at": null, "failed_at": null, "expired_at": null,
        "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata,
    });
    if let Some(obj) = v.as_object_mut() {
        for (k, t) in &b.times {
            obj.insert(k.clone(), t.clone());
        }
    }
    v
}

pub(crate) async fn create_batch(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return *r;
    }
    let Some(Value::Object(obj)) = serde_json::from_slice::<Value>(&body).ok() else {
        return invalid("We could not parse the JSON body of your request.", None);
    };
    const KNOWN: [&str; 5] = [
        "input_file_id",
        "endpoint",
        "completion_window",
        "metadata",
        "output_expires_after",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return invalid(format!("Unrecognized request argument supplied: {k}"), None);
    }
    let s = |k: &str| obj.get(k).and_then(Value::as_str);
    let Some(input) = s("input_file_id") else {
        return invalid(
            "Missing required parameter: 'input_file_id'.",
            Some("input_file_id"),
        );
    };
    let Some(endpoint) = s("endpoint") else {
        return invalid("Missing required parameter: 'endpoint'.", Some("endpoint"));
    };
    if !ENDPOINTS.contains(&endpoint) {
        return invalid(
            format!("'{endpoint}' is not one of {ENDPOINTS:?} - 'endpoint'"),
            Some("endpoint"),
        );
    }
    match s("completion_window") {
        Some("24h") => {}
        None => {
            return invalid(
                "Missing required parameter: 'completion_window'.",
                Some("completion_window"),
            )
        }
        Some(w) => {
            return invalid(
                format!("'{w}' is not one of ['24h'] - 'completion_window'"),
                Some("completion_window"),
            )
        }
    }
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            if m.len() > 16 || m.iter().any(|(k, v)| k.len() > 64 || !v.is_string()) {
                return invalid(
                    "Invalid 'metadata': at most 16 string values, keys of at most 64 characters.",
                    Some("metadata"),
                );
            }
            Some(Value::Object(m.clone()))
        }
        Some(_) => {
            return invalid(
                "Invalid type for 'metadata': expected an object.",
                Some("metadata"),
            )
        }
    };
    let purpose_ok = sim
        .batches
        .files
        .lock()
        .ok()
        .and_then(|f| f.get(input).map(|f| f.purpose == "batch"));
    match purpose_ok {
        None => return not_found(format!("No such File object: {input}")),
        Some(false) => {
            return invalid(
                format!("File {input} was not uploaded with purpose 'batch'."),
                Some("input_file_id"),
            )
        }
        Some(true) => {}
    }
    let b = Batch {
        id: text::random_id("batch_", 24),
        endpoint: endpoint.to_string(),
        input_file_id: input.to_string(),
        metadata,
        created_at: now(),
        created: std::time::Instant::now(),
        status: "validating",
        errors: None,
        output_file_id: None,
        error_file_id: None,
        total: 0,
        completed: 0,
        failed: 0,
        times: Map::new(),
        seen: false,
    };
    let out = batch_json(&b);
    if let Ok(mut batches) = sim.batches.batches.lock() {
        batches.push(b);
    }
    json_response(StatusCode::OK, Vec::new(), &out)
}

/// The problems of an input file: (code, message, line) of the first one.
fn check_lines(
    endpoint: &str,
    bytes: &[u8],
) -> Result<Vec<(String, Value)>, (String, String, usize)> {
    let mut ids = HashSet::new();
    let mut model: Option<String> = None;
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let n = i + 1;
        let Ok(Value::Object(l)) = serde_json::from_slice::<Value>(raw) else {
            return Err((
                "invalid_json_line".into(),
                "This line is not parseable as valid JSON.".into(),
                n,
            ));
        };
        if let Some(k) = l
            .keys()
            .find(|k| !["custom_id", "method", "url", "body"].contains(&k.as_str()))
        {
            return Err((
                "invalid_request".into(),
                format!("Unrecognized field '{k}'."),
                n,
            ));
        }
        let Some(cid) = l.get("custom_id").and_then(Value::as_str) else {
            return Err((
                "missing_required_parameter".into(),
                "Missing required parameter: 'custom_id'.".into(),
                n,
            ));
        };
        if !ids.insert(cid.to_string()) {
            return Err(("duplicate_custom_id".into(), "The custom_id for this request is a duplicate of another request. The custom_id parameter must be unique for each request in a batch.".into(), n));
        }
        if l.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(("invalid_method".into(), "Only POST is supported.".into(), n));
        }
        if l.get("url").and_then(Value::as_str) != Some(endpoint) {
            return Err(("mismatched_endpoint".into(), format!("The URL provided for this request does not match the batch endpoint {endpoint}."), n));
        }
        let Some(body) = l.get("body").filter(|b| b.is_object()) else {
            return Err((
                "missing_required_parameter".into(),
                "Missing required parameter: 'body'.".into(),
                n,
            ));
        };
        let m = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match &model {
            None => model = Some(m),
            Some(first) if *first != m => {
                return Err(("mismatched_model".into(), "The provided model does not match the model of the other requests in this batch. All requests in a batch must use the same model.".into(), n))
            }
            Some(_) => {}
        }
        lines.push((cid.to_string(), body.clone()));
    }
    if lines.is_empty() {
        return Err((
            "empty_file".into(),
            "The batch input file is empty.".into(),
            0,
        ));
    }
    Ok(lines)
}

/// The bytes of a batch's input file.
fn input_of(sim: &Simulator, b: &Batch) -> Vec<u8> {
    sim.batches
        .files
        .lock()
        .ok()
        .and_then(|f| f.get(&b.input_file_id).map(|f| f.bytes.clone()))
        .unwrap_or_default()
}

/// Move a batch along its life as time passes: validating → in_progress → completed
/// (or expired), or failed; cancelling → cancelled.
fn advance(sim: &Simulator, b: &mut Batch) {
    let profile = sim.inner.profile();
    if b.status == "validating" {
        if !b.seen {
            b.seen = true;
            return;
        }
        match check_lines(&b.endpoint, &input_of(sim, b)) {
            Err((code, message, line)) => {
                b.status = "failed";
                b.times.insert("failed_at".into(), json!(now()));
                b.errors = Some(
                    json!({"object": "list", "data": [{"code": code, "message": message, "param": null, "line": if line == 0 { Value::Null } else { json!(line) }}]}),
                );
                return;
            }
            Ok(lines) => {
                b.total = lines.len() as u64;
                b.status = "in_progress";
                b.times.insert("in_progress_at".into(), json!(now()));
            }
        }
    }
    if b.status == "cancelling" {
        b.status = "cancelled";
        b.times.insert("cancelled_at".into(), json!(now()));
        return;
    }
    if b.status != "in_progress"
        || profile.batch_hang
        || b.created.elapsed() < std::time::Duration::from_millis(profile.batch_complete_ms)
    {
        return;
    }
    let Ok(lines) = check_lines(&b.endpoint, &input_of(sim, b)) else {
        return;
    };
    let mut output = Vec::new();
    let mut errors = Vec::new();
    let mut expired = false;
    for (i, (cid, body)) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        let line_id = text::random_id("batch_req_", 24);
        if profile.batch_expire_every > 0 && n % profile.batch_expire_every == 0 {
            expired = true;
            b.failed += 1;
            let l = json!({"id": line_id, "custom_id": cid, "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}});
            errors.push(l.to_string());
            continue;
        }
        let (status, answer) = if profile.batch_error_every > 0
            && n % profile.batch_error_every == 0
        {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error", "param": null, "code": null}}),
            )
        } else {
            answer_body(body)
        };
        sim.inner
            .record(&format!("openai-batch/{model}"), status.as_str());
        let l = json!({"id": line_id, "custom_id": cid, "response": {"status_code": status.as_u16(), "request_id": text::random_id("req_", 24), "body": answer}, "error": null});
        if status == StatusCode::OK {
            b.completed += 1;
            output.push(l.to_string());
        } else {
            b.failed += 1;
            errors.push(l.to_string());
        }
    }
    let store = |lines: Vec<String>, kind: &str| -> Option<String> {
        if lines.is_empty() {
            return None;
        }
        let f = File {
            id: text::random_id("file-", 24),
            filename: format!("{}_{kind}.jsonl", b.id),
            purpose: format!("batch_{kind}"),
            bytes: (lines.join("\n") + "\n").into_bytes(),
            created_at: now(),
        };
        let id = f.id.clone();
        sim.batches.files.lock().ok()?.insert(id.clone(), f);
        Some(id)
    };
    b.output_file_id = store(output, "output");
    b.error_file_id = store(errors, "error");
    b.times.insert("finalizing_at".into(), json!(now()));
    if expired {
        b.status = "expired";
        b.times.insert("expired_at".into(), json!(now()));
    } else {
        b.status = "completed";
        b.times.insert("completed_at".into(), json!(now()));
    }
}

/// Authenticate, then answer with `f` on batch `id` (404 when there is none).
fn on_batch(
    sim: &Simulator,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(&mut Batch) -> Response,
) -> Response {
    if let Err(r) = auth(sim, headers) {
        return *r;
    }
    let missing = || not_found(format!("No batch found with id '{id}'."));
    let Ok(mut batches) = sim.batches.batches.lock() else {
        return missing();
    };
    match batches.iter_mut().find(|b| b.id == id) {
        Some(b) => f(b),
        None => missing(),
    }
}

pub(crate) async fn get_batch(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    on_batch(&sim, &headers, &id, |b| {
        advance(&sim, b);
        json_response(StatusCode::OK, Vec::new(), &batch_json(b))
    })
}

pub(crate) async fn cancel_batch(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    on_batch(&sim, &headers, &id, |b| {
        if !matches!(b.status, "validating" | "in_progress" | "finalizing") {
            return err(&OaError {
                status: StatusCode::CONFLICT,
                message: format!("Cannot cancel a batch with status '{}'.", b.status),
                typ: "invalid_request_error",
                param: None,
                code: None,
            });
        }
        b.status = "cancelling";
        b.times.insert("cancelling_at".into(), json!(now()));
        json_response(StatusCode::OK, Vec::new(), &batch_json(b))
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

pub(crate) async fn list_batches(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = auth(&sim, &headers) {
        return *r;
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return invalid("Invalid 'limit': must be between 1 and 100.", Some("limit"));
    }
    let Ok(batches) = sim.batches.batches.lock() else {
        return invalid("unavailable", None);
    };
    let all = batches.iter().rev().map(batch_json).collect();
    let (page, has_more, first, last) = super::list_page(all, q.after.as_deref(), limit);
    json_response(
        StatusCode::OK,
        Vec::new(),
        &json!({"object": "list", "data": page, "first_id": first, "last_id": last, "has_more": has_more}),
    )
}
