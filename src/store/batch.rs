//! The group-commit loop shared by claims and commits: take what is queued, up to a batch,
//! waiting at most `linger` for more once the first request is in.

use std::time::Duration;
use tokio::sync::mpsc;

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
