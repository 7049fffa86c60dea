//! Gemini's Batch Mode: `POST {base}/models/{model}:batchGenerateContent` with
//! `{"batch": {displayName, inputConfig: {requests: {requests: [{request, metadata}]}}}}`
//! (each `request` a `generateContent` body built by the live adapter, its `metadata`
//! `{"key": <custom id>}`; our batch id is the `displayName`), answered with a
//! long-running operation named `batches/<id>`; `GET {base}/batches/<id>` until
//! `metadata.state` is `BATCH_STATE_SUCCEEDED`, `FAILED`, `CANCELLED` or `EXPIRED`; then
//! `metadata.output.inlinedResponses.inlinedResponses`, one per request in request order:
//! `{response, metadata}` or `{error: {code, message, status}, metadata}`.
//!
//! Inline requests only (Google's limit for them is 20 MB a batch; a bigger batch is
//! refused and its jobs run live): a batch answered through a responses file (which
//! Google uses only for file input) is read as not answered, so its jobs run live.

use super::{custom_id, line_of, BatchApi, BatchHttp, BatchStatus, LineOutcome, LineResult};
use crate::config::ProviderConfig;
use crate::providers::http::secret_header;
use crate::providers::{ChatRequest, ChatResponse, FailureClass, ProviderError};
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};

const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

pub struct GeminiBatch {
    base: String,
    http: BatchHttp,
}

impl GeminiBatch {
    pub fn new(
        p: &ProviderConfig,
        key: Option<SecretString>,
        max_response_bytes: usize,
    ) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        if let Some(k) = &key {
            headers.insert(X_GOOG_API_KEY, secret_header(k)?);
        }
        Ok(GeminiBatch {
            base: p.base_url.trim_end_matches('/').to_string(),
            http: BatchHttp::new(p, headers, max_response_bytes)?,
        })
    }
}

#[derive(Deserialize)]
struct WireOperation {
    name: String,
    #[serde(default)]
    metadata: WireBatch,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireBatch {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    output: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireList {
    #[serde(default)]
    operations: Vec<WireOperation>,
    #[serde(default)]
    next_page_token: Option<String>,
}

fn is_ended(state: &str) -> bool {
    matches!(
        state,
        "BATCH_STATE_SUCCEEDED"
            | "BATCH_STATE_FAILED"
            | "BATCH_STATE_CANCELLED"
            | "BATCH_STATE_EXPIRED"
    )
}

/// The lines of an ended batch's output: each inline response named by its metadata key
/// (else by its place); a response neither answered nor errored is skipped (its request
/// runs live).
pub(crate) fn parse_output(output: Option<&Value>) -> Vec<LineResult> {
    let Some(list) = output
        .and_then(|o| o.pointer("/inlinedResponses/inlinedResponses"))
        .and_then(Value::as_array)
    else {
        if output.is_some_and(|o| o.get("responsesFile").is_some()) {
            tracing::warn!("a Gemini batch answered through a responses file; its jobs run live");
        }
        return Vec::new();
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let line = r
            .pointer("/metadata/key")
            .and_then(Value::as_str)
            .and_then(line_of)
            .or_else(|| u32::try_from(i).ok());
        let Some(line) = line else { continue };
        let outcome = if let Some(resp) = r.get("response") {
            LineOutcome::Answer {
                status: 200,
                body: serde_json::to_vec(resp).unwrap_or_default(),
            }
        } else if let Some(e) = r.get("error") {
            let code = e
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| *c >= 400)
                .unwrap_or(500);
            LineOutcome::Answer {
                status: code,
                body: serde_json::to_vec(&json!({ "error": e })).unwrap_or_default(),
            }
        } else {
            tracing::warn!(
                line,
                "a Gemini batch response with neither response nor error; its job runs live"
            );
            continue;
        };
        out.push(LineResult { line, outcome });
    }
    out
}

fn invalid(message: String) -> ProviderError {
    ProviderError::new(FailureClass::InvalidRequest, None, message)
}

impl BatchApi for GeminiBatch {
    fn submit<'a>(
        &'a self,
        tag: &'a str,
        requests: &'a [ChatRequest<'a>],
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let Some(first) = requests.first() else {
                return Err(invalid("a Gemini batch needs at least one request".into()));
            };
            let model = first.model.strip_prefix("models/").unwrap_or(first.model);
            let mut lines = Vec::with_capacity(requests.len());
            for (i, req) in requests.iter().enumerate() {
                if req.model.strip_prefix("models/").unwrap_or(req.model) != model {
                    return Err(invalid(format!(
                        "a Gemini batch has one model: request {i} is for {}, not {model}",
                        req.model
                    )));
                }
                let body = crate::providers::gemini::build_body(req)?;
                lines.push(json!({"request": body, "metadata": {"key": custom_id(i as u32)}}));
            }
            let post = self
                .http
                .post(&format!(
                    "{}/models/{model}:batchGenerateContent",
                    self.base
                ))
                .json(&json!({"batch": {
                    "displayName": tag,
                    "inputConfig": {"requests": {"requests": lines}},
                }}));
            let op: WireOperation = self.http.json("batch create", post).await?;
            Ok(op.name)
        })
    }

    fn find<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            // The newest few pages: a batch we lost track of was created a lease ago.
            let mut token: Option<String> = None;
            for _ in 0..5 {
                let mut q = vec![("pageSize", "100".to_string())];
                if let Some(t) = &token {
                    q.push(("pageToken", t.clone()));
                }
                let get = self.http.get(&format!("{}/batches", self.base)).query(&q);
                let page: WireList = self.http.json("batch list", get).await?;
                if let Some(op) = page
                    .operations
                    .into_iter()
                    .find(|o| o.metadata.display_name.as_deref() == Some(tag))
                {
                    return Ok(Some(op.name));
                }
                match page.next_page_token {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => break,
                }
            }
            Ok(None)
        })
    }

    fn poll<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<BatchStatus, ProviderError>> {
        Box::pin(async move {
            let get = self.http.get(&format!("{}/{id}", self.base));
            let op: WireOperation = self.http.json("batch status", get).await?;
            let state = op.metadata.state.unwrap_or_default();
            if !is_ended(&state) {
                return Ok(BatchStatus::Running(state));
            }
            Ok(BatchStatus::Ended {
                lines: parse_output(op.metadata.output.as_ref()),
                status: state,
            })
        })
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let post = self.http.post(&format!("{}/{id}:cancel", self.base));
            self.http.call("batch cancel", post).await.map(|_| ())
        })
    }

    fn read_answer(
        &self,
        req: &ChatRequest<'_>,
        status: u16,
        body: &[u8],
    ) -> Result<ChatResponse, ProviderError> {
        crate::providers::gemini::read_answer(req, status, &HeaderMap::new(), body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_responses_and_errors_by_key_or_place() {
        let output = json!({"inlinedResponses": {"inlinedResponses": [
            {"response": {"candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"},
                "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3,
                "candidatesTokenCount": 1, "totalTokenCount": 4}}, "metadata": {"key": "sy-1"}},
            {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"},
                "metadata": {"key": "sy-0"}},
            {"response": {}},
            {"metadata": {"key": "sy-3"}},
        ]}});
        let lines = parse_output(Some(&output));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].line, 1);
        assert!(matches!(
            &lines[0].outcome,
            LineOutcome::Answer { status: 200, .. }
        ));
        assert_eq!(lines[1].line, 0);
        match &lines[1].outcome {
            LineOutcome::Answer { status: 500, body } => {
                let v: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(v["error"]["status"], "INTERNAL");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(lines[2].line, 2, "no key: its place");
        assert!(parse_output(None).is_empty());
        assert!(parse_output(Some(&json!({"responsesFile": "files/x"}))).is_empty());
    }
}
