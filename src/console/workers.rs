//! The workers the console hears. Breakers live only in each worker's memory; every
//! worker's heartbeat on `<prefix>.ctl.heartbeat` carries its breakers that are not
//! closed ([`crate::ratelimit::ReportBreaker`]). The console listens there as the workers
//! do and keeps each worker's last heartbeat (when, leaving or not, its breakers) for
//! the overview. Nothing is stored: a console that starts knows the workers after one
//! heartbeat period.

use crate::ratelimit::ReportBreaker;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker as last heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub id: String,
    pub heard: DateTime<Utc>,
    /// Where it runs (`<hostname> pid <pid>`), if it says.
    pub host: Option<String>,
    /// Its last heartbeat said it was stopping.
    pub leaving: bool,
    /// Its breakers that are not closed; `None` from a worker that does not report them.
    pub breakers: Option<Vec<ReportBreaker>>,
}

/// The part of a heartbeat the console reads (the rate-limit shares are skipped).
#[derive(Deserialize)]
struct Heard {
    id: String,
    #[serde(default)]
    leaving: bool,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    breakers: Option<Vec<ReportBreaker>>,
}

/// Everyone heard, by worker id.
pub struct Workers {
    since: DateTime<Utc>,
    seen: Mutex<BTreeMap<String, Seen>>,
}

/// A worker unheard for this long is dropped from the list.
pub const FORGET_AFTER: chrono::Duration = chrono::Duration::minutes(10);

impl Workers {
    /// Listening since `since`.
    pub fn new(since: DateTime<Utc>) -> Workers {
        Workers {
            since,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn since(&self) -> DateTime<Utc> {
        self.since
    }

    /// A heartbeat's bytes, heard `at`; an unreadable one is skipped.
    pub fn heard(&self, payload: &[u8], at: DateTime<Utc>) {
        let h: Heard = match serde_json::from_slice(payload) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable heartbeat");
                return;
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.insert(
            h.id.clone(),
            Seen {
                id: h.id,
                heard: at,
                host: h.host,
                leaving: h.leaving,
                breakers: h.breakers,
            },
        );
    }

    /// The workers heard within [`FORGET_AFTER`] of `now`, by id.
    pub fn list(&self, now: DateTime<Utc>) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, s| now - s.heard <= FORGET_AFTER);
        seen.values().cloned().collect()
    }

    /// Listen to `<prefix>.ctl.heartbeat` until `stop`.
    pub async fn listen(
        self: std::sync::Arc<Self>,
        client: &async_nats::Client,
        prefix: &str,
        stop: CancellationToken,
    ) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
        let mut sub = client
            .subscribe(crate::ratelimit::heartbeat_subject(prefix))
            .await?;
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => match m {
                        Some(m) => self.heard(&m.payload, Utc::now()),
                        None => break,
                    },
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_workers_last_heartbeat_old_and_new_alike() {
        let t0 = Utc::now();
        let w = Workers::new(t0);
        // A worker that reports breakers (the rate-limit part is skipped).
        w.heard(
            br#"{"id":"a","limits":{"openai":{"requests":5,"tokens":0,"log":[]}},
                "breakers":[{"provider":"openai","model":"gpt-4o","state":"open",
                "since_ms":1,"failures":5,"open_until_ms":2,"reason":"5 failures in a row"}]}"#,
            t0,
        );
        // One that does not (an older worker), and garbage.
        w.heard(br#"{"id":"b","limits":{}}"#, t0);
        w.heard(b"not json", t0);
        let l = w.list(t0);
        assert_eq!(l.len(), 2);
        let b = l[0].breakers.as_ref().unwrap();
        assert_eq!((b[0].state.as_str(), b[0].failures), ("open", 5));
        assert_eq!(b[0].cool_until_ms, None);
        assert_eq!(l[1].breakers, None);
        // The next heartbeat replaces the last: all closed now, then leaving.
        w.heard(
            br#"{"id":"a","limits":{},"host":"node-1 pid 7","breakers":[]}"#,
            t0,
        );
        w.heard(br#"{"id":"b","leaving":true,"limits":{}}"#, t0);
        let l = w.list(t0);
        assert_eq!(l[0].breakers, Some(vec![]));
        assert_eq!(l[0].host.as_deref(), Some("node-1 pid 7"));
        assert_eq!(l[1].host, None);
        assert!(l[1].leaving);
        // Unheard for long: forgotten.
        assert!(w
            .list(t0 + FORGET_AFTER + chrono::Duration::seconds(1))
            .is_empty());
    }
}
