//! Anthropic's Message Batches: `POST /v1/messages/batches` with
//! `{"requests": [{custom_id, params}]}` (`params` a Messages API body, built by the live
//! adapter); `GET /v1/messages/batches/{id}` until `processing_status` is `ended`; then the
//! results (JSONL at `results_url`): per request `{custom_id, result: {type: succeeded,
//! message} | {type: errored, error} | {type: canceled} | {type: expired}}`. Batches carry
//! no metadata, so a batch whose id was not recorded cannot be found again ([`BatchApi::find`]
//! answers none: it is sent again, and the lost one may run and be billed unseen).

use super::{custom_id, line_of, BatchApi, BatchHttp, BatchStatus, LineOutcome, LineResult};
use crate::config::ProviderConfig;
use crate::providers::http::secret_header;
use crate::providers::{ChatRequest, ChatResponse, ProviderError};
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::SecretString;
use serde::Deserialize;

const VERSION: &str = "2023-06-01";

pub struct AnthropicBatch {
    base: String,
    http: BatchHttp,
}

impl AnthropicBatch {
    pub fn new(
        p: &ProviderConfig,
        key: Option<SecretString>,
        max_response_bytes: usize,
    ) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(VERSION),
        );
        if let Some(k) = &key {
            headers.insert(HeaderName::from_static("x-api-key"), secret_header(k)?);
        }
        Ok(AnthropicBatch {
            base: format!("{}/v1/messages/batches", p.base_url.trim_end_matches('/')),
            http: BatchHttp::new(p, headers, max_response_bytes)?,
        })
    }
}

#[derive(Deserialize)]
struct WireBatch {
    id: String,
    processing_status: String,
}

#[derive(Deserialize)]
struct WireLine {
    custom_id: String,
    result: WireResult,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The HTTP status a live call would have had for an errored request's error type.
fn status_of(error: &serde_json::Value) -> u16 {
    match error["error"]["type"].as_str().unwrap_or("") {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// The lines of a results file; unreadable lines are skipped (their requests run live).
pub(crate) fn parse_results(body: &[u8]) -> Vec<LineResult> {
    let mut out = Vec::new();
    for raw in body.split(|b| *b == b'\n') {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(l) = serde_json::from_slice::<WireLine>(raw) else {
            tracing::warn!("unreadable line in a batch results file; its request goes live");
            continue;
        };
        let Some(line) = line_of(&l.custom_id) else {
            continue;
        };
        let outcome = match (l.result.kind.as_str(), l.result.message, l.result.error) {
            ("succeeded", Some(m), _) => LineOutcome::Answer {
                status: 200,
                body: serde_json::to_vec(&m).unwrap_or_default(),
            },
            ("errored", _, Some(e)) => LineOutcome::Answer {
                status: status_of(&e),
                body: serde_json::to_vec(&e).unwrap_or_default(),
            },
            (kind, _, _) => LineOutcome::NotRun {
                message: kind.to_string(),
            },
        };
        out.push(LineResult { line, outcome });
    }
    out
}

impl BatchApi for AnthropicBatch {
    fn submit<'a>(
        &'a self,
        _tag: &'a str,
        requests: &'a [ChatRequest<'a>],
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let mut lines = Vec::with_capacity(requests.len());
            for (i, req) in requests.iter().enumerate() {
                let params = crate::providers::anthropic::build_body(req)?;
                lines.push(serde_json::json!({"custom_id": custom_id(i as u32), "params": params}));
            }
            let post = self
                .http
                .post(&self.base)
                .json(&serde_json::json!({ "requests": lines }));
            let b: WireBatch = self.http.json("message batch create", post).await?;
            Ok(b.id)
        })
    }

    fn find<'a>(&'a self, _tag: &'a str) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }

    fn poll<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<BatchStatus, ProviderError>> {
        Box::pin(async move {
            let get = self.http.get(&format!("{}/{id}", self.base));
            let b: WireBatch = self.http.json("message batch status", get).await?;
            if b.processing_status != "ended" {
                return Ok(BatchStatus::Running(b.processing_status));
            }
            // Read from our own base URL (never send the key elsewhere): the path is the
            // documented one of `results_url`.
            let get = self.http.get(&format!("{}/{}/results", self.base, b.id));
            let body = self.http.call("message batch results", get).await?;
            Ok(BatchStatus::Ended {
                status: b.processing_status,
                lines: parse_results(&body),
            })
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let post = self.http.post(&format!("{}/{id}/cancel", self.base));
            self.http
                .call("message batch cancel", post)
                .await
                .map(|_| ())
        })
    }

    fn read_answer(
        &self,
        req: &ChatRequest<'_>,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        crate::providers::anthropic::read_answer(req, status, &HeaderMap::new(), body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_result_type() {
        let body = br#"{"custom_id":"sy-0","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}}
{"custom_id":"sy-1","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}}}
{"custom_id":"sy-2","result":{"type":"expired"}}
{"custom_id":"sy-3","result":{"type":"canceled"}}
"#;
        let lines = parse_results(body);
        assert_eq!(lines.len(), 4);
        assert!(matches!(
            &lines[0].outcome,
            LineOutcome::Answer { status: 200, .. }
        ));
        assert!(matches!(
            &lines[1].outcome,
            LineOutcome::Answer { status: 400, .. }
        ));
        assert!(
            matches!(&lines[2].outcome, LineOutcome::NotRun { message } if message == "expired")
        );
        assert!(
            matches!(&lines[3].outcome, LineOutcome::NotRun { message } if message == "canceled")
        );
    }
}
