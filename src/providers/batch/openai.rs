//! OpenAI's Batch API: the requests as a JSONL file (`POST /files`, multipart, `purpose`
//! `batch`; each line `{custom_id, method, url, body}`), then `POST /batches`
//! `{input_file_id, endpoint: "/v1/chat/completions", completion_window: "24h", metadata}`;
//! `GET /batches/{id}` until its status is `completed`, `expired`, `cancelled` or
//! `failed`; then the output and error files (`GET /files/{id}/content`), one line per
//! request: `{id, custom_id, response: {status_code, request_id, body}, error}`.

use super::{custom_id, line_of, BatchApi, BatchHttp, BatchStatus, LineOutcome, LineResult};
use crate::config::ProviderConfig;
use crate::providers::http::bearer_header;
use crate::providers::{ChatRequest, ChatResponse, FailureClass, ProviderError};
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use secrecy::SecretString;
use serde::Deserialize;

/// The metadata key that holds our batch id.
const TAG_KEY: &str = "switchyard-batch";
const ENDPOINT: &str = "/v1/chat/completions";

pub struct OpenAiBatch {
    base: String,
    http: BatchHttp,
}

impl OpenAiBatch {
    pub fn new(
        p: &ProviderConfig,
        key: Option<SecretString>,
        max_response_bytes: usize,
    ) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        if let Some(k) = &key {
            headers.insert(AUTHORIZATION, bearer_header(k)?);
        }
        Ok(OpenAiBatch {
            base: p.base_url.trim_end_matches('/').to_string(),
            http: BatchHttp::new(p, headers, max_response_bytes)?,
        })
    }

    async fn file_lines(&self, file_id: &str) -> Result<Vec<LineResult>, ProviderError> {
        let url = format!("{}/files/{file_id}/content", self.base);
        let body = self.http.call("file content", self.http.get(&url)).await?;
        Ok(parse_result_file(&body))
    }
}

#[derive(Deserialize)]
struct WireId {
    id: String,
}

#[derive(Deserialize)]
struct WireBatch {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    metadata: Option<std::collections::HashMap<String, String>>,
}

#[derive(Deserialize)]
struct WireList {
    data: Vec<WireBatch>,
}

#[derive(Deserialize)]
struct WireLine {
    custom_id: String,
    #[serde(default)]
    response: Option<WireLineResponse>,
    #[serde(default)]
    error: Option<WireLineError>,
}

#[derive(Deserialize)]
struct WireLineResponse {
    status_code: u16,
    body: serde_json::Value,
}

#[derive(Deserialize)]
struct WireLineError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The lines of an output or error file; unreadable lines are skipped (their requests
/// count as not answered).
pub(crate) fn parse_result_file(body: &[u8]) -> Vec<LineResult> {
    let mut out = Vec::new();
    for raw in body.split(|b| *b == b'\n') {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(l) = serde_json::from_slice::<WireLine>(raw) else {
            tracing::warn!("unreadable line in a batch result file; its request goes live");
            continue;
        };
        let Some(line) = line_of(&l.custom_id) else {
            continue;
        };
        let outcome = match (l.response, l.error) {
            (Some(r), _) => LineOutcome::Answer {
                status: r.status_code,
                body: serde_json::to_vec(&r.body).unwrap_or_default(),
            },
            (None, Some(e)) => LineOutcome::NotRun {
                message: format!(
                    "{}: {}",
                    e.code.as_deref().unwrap_or("error"),
                    e.message.as_deref().unwrap_or("")
                ),
            },
            (None, None) => LineOutcome::NotRun {
                message: "no response".into(),
            },
        };
        out.push(LineResult { line, outcome });
    }
    out
}

/// A `multipart/form-data` body with `purpose=batch` and the file.
fn multipart(boundary: &str, filename: &str, content: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(content.len() + 512);
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(content);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

impl BatchApi for OpenAiBatch {
    fn submit<'a>(
        &'a self,
        tag: &'a str,
        requests: &'a [ChatRequest<'a>],
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let mut jsonl = Vec::new();
            for (i, req) in requests.iter().enumerate() {
                let body = crate::providers::openai::request_body(req).map_err(|e| {
                    ProviderError::new(FailureClass::InvalidRequest, None, e.to_string())
                })?;
                let line = serde_json::json!({
                    "custom_id": custom_id(i as u32),
                    "method": "POST",
                    "url": ENDPOINT,
                    "body": body,
                });
                serde_json::to_writer(&mut jsonl, &line).map_err(|e| {
                    ProviderError::new(FailureClass::InvalidRequest, None, e.to_string())
                })?;
                jsonl.push(b'\n');
            }
            let boundary = format!("sy{:032x}", rand::random::<u128>());
            let body = multipart(&boundary, &format!("{tag}.jsonl"), &jsonl);
            let upload = self
                .http
                .post(&format!("{}/files", self.base))
                .header(
                    CONTENT_TYPE,
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body);
            let file: WireId = self.http.json("file upload", upload).await?;
            let create =
                self.http
                    .post(&format!("{}/batches", self.base))
                    .json(&serde_json::json!({
                        "input_file_id": file.id,
                        "endpoint": ENDPOINT,
                        "completion_window": "24h",
                        "metadata": {TAG_KEY: tag},
                    }));
            let batch: WireBatch = self.http.json("batch create", create).await?;
            Ok(batch.id)
        })
    }

    fn find<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            let list = self
                .http
                .get(&format!("{}/batches", self.base))
                .query(&[("limit", "100")]);
            let list: WireList = self.http.json("batch list", list).await?;
            Ok(list
                .data
                .into_iter()
                .find(|b| {
                    b.metadata
                        .as_ref()
                        .and_then(|m| m.get(TAG_KEY))
                        .is_some_and(|t| t == tag)
                })
                .map(|b| b.id))
        })
    }

    fn poll<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<BatchStatus, ProviderError>> {
        Box::pin(async move {
            let get = self.http.get(&format!("{}/batches/{id}", self.base));
            let b: WireBatch = self.http.json("batch status", get).await?;
            if !matches!(
                b.status.as_str(),
                "completed" | "expired" | "cancelled" | "failed"
            ) {
                return Ok(BatchStatus::Running(b.status));
            }
            let mut lines = Vec::new();
            for f in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
                lines.extend(self.file_lines(f).await?);
            }
            Ok(BatchStatus::Ended {
                status: b.status,
                lines,
            })
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let post = self
                .http
                .post(&format!("{}/batches/{id}/cancel", self.base));
            self.http.call("batch cancel", post).await.map(|_| ())
        })
    }

    fn read_answer(
        &self,
        req: &ChatRequest<'_>,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        crate::providers::openai::read_answer(req, status, &HeaderMap::new(), body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_output_and_error_lines() {
        let body = br#"{"id":"batch_req_1","custom_id":"sy-0","response":{"status_code":200,"request_id":"r","body":{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}},"error":null}
{"id":"batch_req_2","custom_id":"sy-2","response":null,"error":{"code":"batch_expired","message":"This request could not be executed before the completion window expired."}}
{"id":"batch_req_3","custom_id":"sy-1","response":{"status_code":400,"request_id":"r","body":{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}},"error":null}
not json
"#;
        let lines = parse_result_file(body);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].line, 0);
        assert!(matches!(
            &lines[0].outcome,
            LineOutcome::Answer { status: 200, .. }
        ));
        assert_eq!(lines[1].line, 2);
        assert!(
            matches!(&lines[1].outcome, LineOutcome::NotRun { message } if message.starts_with("batch_expired"))
        );
        assert!(matches!(
            &lines[2].outcome,
            LineOutcome::Answer { status: 400, .. }
        ));
    }

    #[test]
    fn multipart_names_both_fields() {
        let b = multipart("XyZ", "f.jsonl", b"{}\n");
        let s = String::from_utf8(b).unwrap();
        assert!(s.starts_with(
            "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
        ));
        assert!(s.contains("name=\"file\"; filename=\"f.jsonl\""));
        assert!(s.ends_with("{}\n\r\n--XyZ--\r\n"));
    }
}
