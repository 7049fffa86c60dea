//! OpenAI Batch JSONL, shared by `/v1/batches` and `switchyard submit`: an input line
//! (`{"custom_id", "method", "url", "body"}`) becomes a job whose id is derived from the
//! batch and the `custom_id` (so running the same file again is idempotent), and a job's
//! result becomes an output line (`{"id", "custom_id", "response": {"status_code",
//! "request_id", "body"}, "error"}`) for the output file (succeeded) or the error file.

use super::chat_map::{self, JobContext};
use super::error::ApiError;
use crate::job::{JobResult, Status};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The only endpoint batch lines may name.
pub const CHAT_URL: &str = "/v1/chat/completions";

/// Is this JSON object an OpenAI Batch line (rather than a switchyard job line)?
pub fn is_batch_line(v: &Value) -> bool {
    ["custom_id", "method", "url", "body"]
        .iter()
        .all(|k| v.get(k).is_some())
}

/// The job id of `custom_id` in batch `batch`: `<batch>-<16 hex of SHA-256(custom_id)>`.
pub fn job_id(batch: &str, custom_id: &str) -> String {
    let h = Sha256::digest(custom_id.as_bytes());
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{batch}-{hex}")
}

/// A batch id made from the file's bytes: the same file gives the same job ids.
pub fn file_batch_id(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("ob-{hex}")
}

/// A line's failure before any job ran, as OpenAI's error file reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub custom_id: Option<String>,
    pub code: &'static str,
    pub message: String,
}

impl LineError {
    fn new(custom_id: Option<&str>, code: &'static str, message: impl Into<String>) -> Self {
        LineError {
            custom_id: custom_id.map(str::to_string),
            code,
            message: message.into(),
        }
    }

    /// The error file's line.
    pub fn to_line(&self, line: usize) -> Value {
        json!({"id": format!("batch_req_line{line}"), "custom_id": self.custom_id, "response": null,
            "error": {"code": self.code, "message": format!("line {line}: {}", self.message)}})
    }
}

/// A line mapped to a job.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedLine {
    pub custom_id: String,
    pub job_id: String,
    pub job: Value,
}

/// One input line → its job (for `tenant`, ids under `batch`), or why not.
pub fn line_to_job(
    line: &str,
    batch: &str,
    tenant: &str,
    feature: Option<&str>,
) -> Result<MappedLine, LineError> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| LineError::new(None, "invalid_json_line", format!("not valid JSON: {e}")))?;
    let custom_id = match v.get("custom_id") {
        Some(Value::String(c)) if !c.is_empty() && c.len() <= 512 => c.clone(),
        _ => {
            return Err(LineError::new(
                None,
                "missing_required_parameter",
                "custom_id must be a non-empty string (at most 512 bytes)",
            ))
        }
    };
    let cid = Some(custom_id.as_str());
    if v.get("method").and_then(Value::as_str) != Some("POST") {
        return Err(LineError::new(cid, "invalid_method", "method must be POST"));
    }
    if v.get("url").and_then(Value::as_str) != Some(CHAT_URL) {
        return Err(LineError::new(
            cid,
            "invalid_url",
            format!("url must be {CHAT_URL} (the only endpoint switchyard batches)"),
        ));
    }
    if let Some(extra) = v.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["custom_id", "method", "url", "body"].contains(&k.as_str()))
    }) {
        return Err(LineError::new(
            cid,
            "invalid_request",
            format!("unknown field {extra}"),
        ));
    }
    let body = v.get("body").cloned().unwrap_or(Value::Null);
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(LineError::new(
            cid,
            "invalid_request",
            "body.stream cannot be true in a batch",
        ));
    }
    let job_id = job_id(batch, &custom_id);
    let ctx = JobContext {
        id: job_id.clone(),
        tenant: tenant.to_string(),
        feature: feature.map(str::to_string),
        reply_to: None,
        deadline: None,
    };
    let (job, _) = chat_map::request_to_job(&body, &ctx)
        .map_err(|e| LineError::new(cid, "invalid_request", format!("body: {}", e.message)))?;
    Ok(MappedLine {
        custom_id,
        job_id,
        job,
    })
}

/// A job's result → its output line, and whether it goes to the output file (a
/// succeeded job) or the error file.
pub fn result_line(custom_id: &str, r: &JobResult, created: i64) -> (Value, bool) {
    let opts = chat_map::ChatOptions {
        model: r.model.clone().unwrap_or_default(),
        stream: false,
        include_usage: false,
    };
    let (status, body, ok) = match (r.status, &r.error) {
        (Status::Succeeded, _) => (200, chat_map::completion(r, &opts, created), true),
        (Status::Failed, e) => {
            let e = e.as_ref().map_or_else(
                || ApiError::internal("failed without an error"),
                ApiError::from_job,
            );
            (e.status.as_u16(), e.body(), false)
        }
    };
    let line = json!({"id": format!("batch_req_{}", r.id), "custom_id": custom_id,
        "response": {"status_code": status, "request_id": r.id, "body": body}, "error": null});
    (line, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_maps_to_a_job_with_an_id_from_batch_and_custom_id() {
        let l = r#"{"custom_id":"req-1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":10}}"#;
        let m = line_to_job(l, "b1", "acme", None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(m.job_id, job_id("b1", "req-1"));
        assert_eq!(m.job["id"], m.job_id.as_str());
        assert_eq!(m.job["tenant"], "acme");
        assert!(m.job.get("reply_to").is_none());
        assert_ne!(job_id("b1", "req-1"), job_id("b1", "req-2"));
        assert!(is_batch_line(&serde_json::from_str(l).unwrap_or_default()));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("nope", "invalid_json_line"),
            (
                r#"{"method":"POST","url":"/v1/chat/completions","body":{}}"#,
                "missing_required_parameter",
            ),
            (
                r#"{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{}}"#,
                "invalid_method",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{}}"#,
                "invalid_url",
            ),
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}"#,
                "invalid_request",
            ),
        ];
        for (l, code) in cases {
            let e = line_to_job(l, "b", "acme", None)
                .err()
                .unwrap_or_else(|| panic!("{l} accepted"));
            assert_eq!(e.code, code, "{l}");
            assert_eq!(e.to_line(3)["error"]["code"], code);
        }
    }
}
