//! The request log: the last N requests in a ring buffer (`GET /_sim/log`,
//! [`super::Simulator::log`]).
//!
//! An entry is built outside the lock; the lock is held only to push (and drop the
//! oldest entry) or to copy out the newest entries, so the log costs well under a
//! microsecond per request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::state::lock;

/// Entries kept when the profile sets no `log_capacity`.
pub(crate) const DEFAULT_LOG_CAPACITY: usize = 1000;

/// One request as the simulator saw it. Request headers (and so API keys) and bodies
/// are never kept.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogEntry {
    /// When the request was answered (or, for `hang`, when it arrived), RFC 3339 in
    /// UTC with milliseconds, e.g. `2025-06-01T12:00:00.123Z`.
    pub at: String,
    /// `openai`, `anthropic` or `gemini`.
    pub api: &'static str,
    /// The model id from the request (`-` when it had none).
    pub model: String,
    /// HTTP status of the answer; 0 for a request held by `hang` (never answered).
    pub status: u16,
    /// Milliseconds from arrival until the response headers were ready: includes the
    /// `latency_ms` sleep, not the `first_byte_ms` wait or the body transfer.
    pub latency_ms: u64,
    /// Why the answer is not the normal one, when a knob caused it: `outage`,
    /// `rate_limited` (`rpm` / `tpm`), `injected` (`fail_first` / `error_rate`),
    /// `truncated`, `hang`, or `shutdown` (cut short by shutdown). `None` for normal
    /// answers and for ordinary 4xx validation failures.
    pub fault: Option<&'static str>,
    /// Size of the request body in bytes.
    pub request_bytes: u64,
    /// The first [`PROMPT_PREFIX_CHARS`] characters of the text of the last user
    /// message (OpenAI / Anthropic `messages`, Gemini `contents`), so that a test can
    /// attribute each request to the job that made it; `None` when there is none.
    pub prompt: Option<String>,
}

/// Characters of the last user message kept in [`LogEntry::prompt`].
pub(crate) const PROMPT_PREFIX_CHARS: usize = 80;

/// The start of the last user message's text in a request body of any of the three
/// wire formats: `messages[].content` (a string, or parts / blocks with `text`) or
/// Gemini's `contents[].parts[].text`.
pub(crate) fn prompt_prefix(body: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let list = body
        .get("messages")
        .or_else(|| body.get("contents"))?
        .as_array()?;
    let last = list
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let mut text = String::new();
    let mut push_parts = |parts: &Vec<Value>| {
        for part in parts {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                text.push_str(t);
            }
        }
    };
    match last.get("content").or_else(|| last.get("parts")) {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(parts)) => push_parts(parts),
        _ => return None,
    }
    Some(text.chars().take(PROMPT_PREFIX_CHARS).collect())
}

/// A bounded ring of [`LogEntry`], newest at the back.
pub(crate) struct RequestLog {
    capacity: AtomicUsize,
    entries: Mutex<VecDeque<LogEntry>>,
}

impl RequestLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: AtomicUsize::new(capacity),
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(DEFAULT_LOG_CAPACITY))),
        }
    }

    /// Change the capacity, dropping the oldest entries beyond it.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        let mut entries = lock(&self.entries);
        let excess = entries.len().saturating_sub(capacity);
        entries.drain(..excess);
        if entries.capacity() > 2 * capacity.max(DEFAULT_LOG_CAPACITY) {
            entries.shrink_to(capacity);
        }
    }

    pub(crate) fn push(&self, entry: LogEntry) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        if capacity == 0 {
            return;
        }
        let mut entries = lock(&self.entries);
        while entries.len() >= capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Up to `limit` entries, newest first.
    pub(crate) fn newest(&self, limit: usize) -> Vec<LogEntry> {
        let entries = lock(&self.entries);
        entries.iter().rev().take(limit).cloned().collect()
    }

    pub(crate) fn clear(&self) {
        lock(&self.entries).clear();
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(i: u64) -> LogEntry {
        LogEntry {
            at: "2025-01-01T00:00:00.000Z".into(),
            api: "openai",
            model: format!("m{i}"),
            status: 200,
            latency_ms: i,
            fault: None,
            request_bytes: i,
            prompt: None,
        }
    }

    fn ids(v: &[LogEntry]) -> Vec<u64> {
        v.iter().map(|e| e.latency_ms).collect()
    }

    #[test]
    fn keeps_the_newest_capacity_entries_newest_first() {
        let log = RequestLog::new(3);
        for i in 0..5 {
            log.push(entry(i));
        }
        assert_eq!(ids(&log.newest(100)), vec![4, 3, 2]);
        assert_eq!(ids(&log.newest(2)), vec![4, 3]);
        assert!(log.newest(0).is_empty());
        log.set_capacity(1);
        assert_eq!(ids(&log.newest(10)), vec![4]);
        log.set_capacity(4);
        log.push(entry(5));
        assert_eq!(ids(&log.newest(10)), vec![5, 4]);
        log.clear();
        assert!(log.newest(10).is_empty());
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let log = RequestLog::new(0);
        log.push(entry(1));
        assert!(log.newest(10).is_empty());
    }

    #[test]
    fn many_pushes_from_many_threads_stay_bounded_and_cheap() {
        let log = std::sync::Arc::new(RequestLog::new(DEFAULT_LOG_CAPACITY));
        let t = std::time::Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..50_000 {
                        log.push(entry(i));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // 200k pushes: far more than thousands per second even unoptimised.
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(log.newest(usize::MAX).len(), DEFAULT_LOG_CAPACITY);
    }

    #[test]
    fn serialises_without_extra_fields() {
        let v = serde_json::to_value(entry(7)).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "api",
                "at",
                "fault",
                "latency_ms",
                "model",
                "prompt",
                "request_bytes",
                "status"
            ]
        );
        assert!(v["fault"].is_null());
    }

    #[test]
    fn prompt_prefix_reads_the_last_user_message_of_each_wire_format() {
        let oa = serde_json::json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "job acme/1: "}, {"type": "text", "text": "go"}]}
        ]});
        assert_eq!(prompt_prefix(&oa).as_deref(), Some("job acme/1: go"));
        let an = serde_json::json!({"system": "s", "messages": [{"role": "user", "content": "job a/b: hi"}]});
        assert_eq!(prompt_prefix(&an).as_deref(), Some("job a/b: hi"));
        let ge =
            serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "job g/1: x"}]}]});
        assert_eq!(prompt_prefix(&ge).as_deref(), Some("job g/1: x"));
        let long = serde_json::json!({"messages": [{"role": "user", "content": "é".repeat(500)}]});
        assert_eq!(
            prompt_prefix(&long).map(|s| s.chars().count()),
            Some(PROMPT_PREFIX_CHARS)
        );
        assert_eq!(prompt_prefix(&serde_json::json!({"model": "m"})), None);
        assert_eq!(
            prompt_prefix(&serde_json::json!({"messages": [{"role": "system", "content": "s"}]})),
            None
        );
    }
}
