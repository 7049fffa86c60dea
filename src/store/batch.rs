//! The group-commit loop shared by claims, reservations and commits: take what is queued, up to a batch,
//! waiting at most `linger` for more once the first request is in.

use super::StoreError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Statements a batch loop keeps in flight at once: the next batch is cut and sent while
/// the last one is still in Postgres, so one round trip does not hold every job behind
/// it. (Each job's own requests still go one after another: it awaits each answer.)
pub const LANES: u32 = 2;

/// The statements of one batch loop in flight, at most [`LANES`].
pub struct Lanes {
    free: Arc<Semaphore>,
}

impl Default for Lanes {
    fn default() -> Lanes {
        Lanes {
            free: Arc::new(Semaphore::new(LANES as usize)),
        }
    }
}

impl Lanes {
    /// Run `work` once a lane is free (waiting here, which holds the loop back).
    pub async fn run(&self, work: impl Future<Output = ()> + Send + 'static) {
        let Ok(lane) = self.free.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            work.await;
            drop(lane);
        });
    }

    /// Wait for every statement in flight to finish.
    pub async fn drain(&self) {
        let _ = self.free.acquire_many(LANES).await;
    }
}

/// Where one request's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The asking side of a batch loop: send a request, await its answer.
pub struct Asker<Req, Resp> {
    tx: mpsc::Sender<(Req, Reply<Resp>)>,
}

impl<Req, Resp> Clone for Asker<Req, Resp> {
    fn clone(&self) -> Self {
        Asker {
            tx: self.tx.clone(),
        }
    }
}

impl<Req, Resp> Asker<Req, Resp> {
    /// An asker and the queue its loop reads (a few batches deep).
    pub fn channel(max_batch: usize) -> (Self, mpsc::Receiver<(Req, Reply<Resp>)>) {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        (Asker { tx }, rx)
    }

    /// `Closed` when the loop is gone.
    pub async fn ask(&self, req: Req) -> Result<Resp, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Receive the next batch; `None` when every sender is gone and the queue is empty.
pub async fn next_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    max: usize,
    linger: Duration,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(max.min(1024));
    batch.push(first);
    // Take what is already queued without waiting …
    while batch.len() < max {
        match rx.try_recv() {
            Ok(x) => batch.push(x),
            Err(_) => break,
        }
    }
    // … and linger briefly for more only when the batch is small.
    if batch.len() < max && !linger.is_zero() {
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(x)) => batch.push(x),
                _ => break,
            }
        }
    }
    Some(batch)
}
