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
                "request_bytes",
                "status"
            ]
        );
        assert!(v["fault"].is_null());
    }
}
