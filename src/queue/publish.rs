//! Publishing a job's terminal result (reply subject and results stream) and its dead
//! letter. JetStream publishes are awaited (each job task awaits its own ack, and jobs in
//! flight are bounded), so a job is acked only once its result is stored in NATS too.
//! A replayed dead letter is removed by its stream sequence ([`remove_dead_letter`]).

use super::Names;
use crate::job::{Attempt, ErrorBody, JobResult};
use async_nats::jetstream::{
    self,
    stream::{DeleteMessageErrorKind, LastRawMessageErrorKind},
};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish to {subject}: {message}")]
    Nats { subject: String, message: String },
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

fn nats_err(subject: &str, e: impl std::fmt::Display) -> PublishError {
    PublishError::Nats {
        subject: subject.to_string(),
        message: e.to_string(),
    }
}

/// A dead letter, as on `<prefix>.dlq.<tenant>.<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DlqEntry {
    pub job: Option<serde_json::Value>,
    pub payload_b64: Option<String>,
    pub subject: String,
    pub error: ErrorBody,
    pub attempts: Vec<Attempt>,
    pub deliveries: u64,
    pub failed_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

const TRUNCATED_KEEP: usize = 256 * 1024;

impl DlqEntry {
    /// Encode, falling back to the truncated form when the entry would not fit in one
    /// NATS message.
    pub fn encode(&self, raw: &[u8], max_payload: usize) -> Result<Vec<u8>, PublishError> {
        let full = serde_json::to_vec(self)?;
        if full.len() <= max_payload {
            return Ok(full);
        }
        let keep = &raw[..raw.len().min(TRUNCATED_KEEP)];
        let small = DlqEntry {
            job: None,
            payload_b64: Some(base64::engine::general_purpose::STANDARD.encode(keep)),
            attempts: self.attempts.iter().rev().take(50).rev().cloned().collect(),
            truncated: true,
            ..self.clone()
        };
        Ok(serde_json::to_vec(&small)?)
    }
}

/// Encode a result so it fits in one NATS message: when the whole result is larger than
/// `max_payload`, it goes out with `output` null and `"truncated": true` (the full output
/// stays in Postgres). Attempts are cut to the last 50 if it is still too large.
pub fn encode_result(result: &JobResult, max_payload: usize) -> Result<Bytes, PublishError> {
    let full = serde_json::to_vec(result)?;
    if full.len() <= max_payload {
        return Ok(Bytes::from(full));
    }
    let mut small = JobResult {
        output: None,
        truncated: true,
        ..result.clone()
    };
    let mut body = serde_json::to_vec(&small)?;
    if body.len() > max_payload && small.attempts.len() > 50 {
        let keep = small.attempts.len() - 50;
        small.attempts.drain(..keep);
        body = serde_json::to_vec(&small)?;
    }
    Ok(Bytes::from(body))
}

#[derive(Clone)]
pub struct Publisher {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub names: Names,
}

impl Publisher {
    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload.max(1024)
    }

    pub fn encode_result(&self, result: &JobResult) -> Result<Bytes, PublishError> {
        encode_result(result, self.max_payload())
    }

    /// Result to the results stream (awaiting its ack) and to `reply_to` when given.
    /// `encoded`: the result already encoded whole (as committed), used when it fits in a
    /// message.
    pub async fn result_of(
        &self,
        result: &JobResult,
        encoded: Option<Bytes>,
        reply_to: Option<&str>,
    ) -> Result<(), PublishError> {
        let body = match encoded {
            Some(b) if b.len() <= self.max_payload() => b,
            _ => self.encode_result(result)?,
        };
        let subject = self.names.result_subject(&result.tenant, &result.id);
        let ack = self
            .js
            .publish(subject.clone(), body.clone())
            .await
            .map_err(|e| nats_err(&subject, e))?;
        if let Some(r) = reply_to {
            self.client
                .publish(r.to_string(), body)
                .await
                .map_err(|e| nats_err(r, e))?;
        }
        ack.await.map_err(|e| nats_err(&subject, e))?;
        Ok(())
    }

    /// Only to `reply_to`: a refused payload whose key belongs to another job run.
    pub async fn reply_only(&self, result: &JobResult, reply_to: &str) -> Result<(), PublishError> {
        let body = self.encode_result(result)?;
        self.client
            .publish(reply_to.to_string(), body)
            .await
            .map_err(|e| nats_err(reply_to, e))
    }

    pub async fn dead_letter(
        &self,
        tenant: &str,
        id: &str,
        entry: &DlqEntry,
        raw: &[u8],
    ) -> Result<(), PublishError> {
        let body = entry.encode(raw, self.max_payload())?;
        let subject = self.names.dlq_subject(tenant, id);
        self.js
            .publish(subject.clone(), Bytes::from(body))
            .await
            .map_err(|e| nats_err(&subject, e))?
            .await
            .map_err(|e| nats_err(&subject, e))?;
        Ok(())
    }
}

/// Delete the dead letter at stream sequence `sequence`, and only it: a newer dead letter
/// of the same job has a newer sequence and stays. One that is gone already (that newer
/// dead letter replaced it: one message per subject) counts as removed.
pub async fn remove_dead_letter(
    stream: &jetstream::stream::Stream,
    sequence: u64,
) -> Result<(), jetstream::stream::DeleteMessageError> {
    let Err(e) = stream.delete_message(sequence).await else {
        return Ok(());
    };
    // NATS 2.9 answers a missing sequence with "no message found" (10057, which other
    // delete failures share): ask whether it is really gone.
    if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) {
        if let Err(get) = stream.get_raw_message(sequence).await {
            if get.kind() == LastRawMessageErrorKind::NoMessageFound {
                return Ok(());
            }
        }
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ErrorKind;

    #[test]
    fn oversized_results_go_out_without_output() {
        let result: JobResult = serde_json::from_value(serde_json::json!({
            "id": "big", "tenant": "acme", "feature": null, "status": "succeeded",
            "output": {"content": "x".repeat(4000), "tool_calls": [], "finish_reason": "stop"},
            "provider": "openai", "model": "gpt-4o-mini",
            "usage": {"input_tokens": 1, "cached_input_tokens": 0, "output_tokens": 1000, "reasoning_tokens": 0},
            "cost_usd": "0.01", "route": null, "attempts": [], "cache_hit": false,
            "queued_ms": 1, "latency_ms": 2, "error": null, "metadata": null
        }))
        .unwrap();
        let fits = encode_result(&result, 1 << 20).unwrap();
        let back: JobResult = serde_json::from_slice(&fits).unwrap();
        assert_eq!(back, result, "a result that fits goes out whole");
        assert!(!String::from_utf8_lossy(&fits).contains("truncated"));
        let cut = encode_result(&result, 1024).unwrap();
        assert!(cut.len() <= 1024);
        let back: JobResult = serde_json::from_slice(&cut).unwrap();
        assert!(back.truncated);
        assert!(back.output.is_none());
        assert_eq!(
            back.usage, result.usage,
            "everything but the output is kept"
        );
    }

    #[test]
    fn oversized_entries_are_truncated() {
        let raw = vec![b'x'; 600 * 1024];
        let e = DlqEntry {
            job: Some(serde_json::json!({"big": String::from_utf8(raw.clone()).unwrap()})),
            payload_b64: Some(base64::engine::general_purpose::STANDARD.encode(&raw)),
            subject: "llm.jobs.low.acme".into(),
            error: ErrorBody::new(ErrorKind::InvalidJob, "too big"),
            attempts: vec![],
            deliveries: 1,
            failed_at: chrono::Utc::now(),
            truncated: false,
        };
        let out = e.encode(&raw, 1024 * 1024).unwrap();
        assert!(out.len() <= 1024 * 1024);
        let back: DlqEntry = serde_json::from_slice(&out).unwrap();
        assert!(back.truncated);
        assert!(back.job.is_none());
        let kept = base64::engine::general_purpose::STANDARD
            .decode(back.payload_b64.unwrap())
            .unwrap();
        assert_eq!(kept.len(), 256 * 1024);
    }
}
