//! `/v1/files`: upload (multipart, `purpose=batch`), describe, list, download. Files
//! belong to the key's tenant; another tenant's file is not found.

use super::chat::read_body;
use super::error::ApiError;
use super::State;
use crate::store::frontdoor::{self as db, FileRow};
use axum::body::Body;
use axum::extract::{Path, State as S};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) fn file_json(f: &FileRow) -> Value {
    json!({"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at.timestamp(),
        "filename": f.filename, "purpose": f.purpose, "status": "processed", "status_details": null})
}

pub(super) fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::unavailable(format!("the store is not answering: {e}"))
}

/// A row of the key's tenant, or 404 `<what>_not_found`.
pub(super) fn found<T>(
    r: Result<Option<T>, crate::store::StoreError>,
    what: &str,
    id: &str,
) -> Result<T, ApiError> {
    r.map_err(store_err)?.ok_or_else(|| {
        ApiError::not_found(
            &format!("{what}_not_found"),
            format!("no such {what}: {id}"),
        )
    })
}

pub(super) async fn upload(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = super::multipart::boundary(ct).ok_or_else(|| {
        ApiError::bad_request(
            "POST /v1/files takes multipart/form-data (fields `purpose` and `file`)",
        )
    })?;
    let bytes = read_body(body, st.cfg.serve.max_file_bytes.saturating_add(64 * 1024)).await?;
    let parts = super::multipart::parse(&bytes, &boundary).map_err(ApiError::bad_request)?;
    let purpose = parts
        .iter()
        .find(|p| p.name == "purpose")
        .map(|p| String::from_utf8_lossy(p.data).trim().to_string())
        .ok_or_else(|| ApiError::bad_request("missing field `purpose`").with_param("purpose"))?;
    if purpose != "batch" {
        return Err(ApiError::bad_request(format!(
            "purpose {purpose:?} is not supported: only \"batch\""
        ))
        .with_param("purpose"));
    }
    let file = parts
        .iter()
        .find(|p| p.name == "file")
        .ok_or_else(|| ApiError::bad_request("missing field `file`").with_param("file"))?;
    if file.data.len() > st.cfg.serve.max_file_bytes {
        return Err(ApiError::too_large(st.cfg.serve.max_file_bytes));
    }
    let name = file
        .filename
        .clone()
        .unwrap_or_else(|| "upload.jsonl".into());
    let id = super::new_id("file");
    let row = db::insert_file(&st.pool, &id, &grant.tenant, &name, &purpose, file.data)
        .await
        .map_err(store_err)?;
    Ok(Json(file_json(&row)))
}

pub(super) async fn get(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let row = found(db::file(&st.pool, &grant.tenant, &id).await, "file", &id)?;
    Ok(Json(file_json(&row)))
}

pub(super) async fn list(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let rows = db::files(&st.pool, &grant.tenant, 10_000)
        .await
        .map_err(store_err)?;
    let data: Vec<Value> = rows.iter().map(file_json).collect();
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": false}),
    ))
}

pub(super) async fn content(
    S(st): S<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let grant = st.keys.authenticate(&headers)?;
    let bytes = found(
        db::file_content(&st.pool, &grant.tenant, &id).await,
        "file",
        &id,
    )?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
