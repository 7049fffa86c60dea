//! Where the front door hears its jobs' answers: one core-NATS subscription per serve
//! process on `_INBOX.<serve id>.>`; each request registers its job id and gets the
//! chunks and the result published to `_INBOX.<serve id>.<job id>`.

use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Waiting = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<async_nats::Message>>>>;

/// The subscription and the requests waiting on it.
#[derive(Debug)]
pub struct Replies {
    base: String,
    waiting: Waiting,
}

/// One request's messages; dropping it stops the delivery.
#[derive(Debug)]
pub struct Waiter {
    pub rx: mpsc::UnboundedReceiver<async_nats::Message>,
    id: String,
    waiting: Waiting,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&self.id);
        }
    }
}

impl Replies {
    /// Subscribe on `_INBOX.<serve_id>.>` and deliver until `stop`.
    pub async fn start(
        client: &async_nats::Client,
        serve_id: &str,
        stop: CancellationToken,
    ) -> Result<Arc<Replies>, async_nats::SubscribeError> {
        let base = format!("_INBOX.{serve_id}");
        let mut sub = client.subscribe(format!("{base}.>")).await?;
        let waiting: Waiting = Arc::default();
        let replies = Arc::new(Replies {
            base: base.clone(),
            waiting: waiting.clone(),
        });
        let cut = base.len() + 1;
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                let id = msg.subject.get(cut..).unwrap_or_default().to_string();
                let tx = waiting.lock().ok().and_then(|w| w.get(&id).cloned());
                if let Some(tx) = tx {
                    let _ = tx.send(msg);
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(replies)
    }

    /// The reply subject of job `id`.
    pub fn subject(&self, id: &str) -> String {
        format!("{}.{id}", self.base)
    }

    /// Listen for job `id`'s messages (before its job is published).
    pub fn register(&self, id: &str) -> Waiter {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.to_string(), tx);
        }
        Waiter {
            rx,
            id: id.to_string(),
            waiting: self.waiting.clone(),
        }
    }
}
