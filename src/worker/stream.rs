//! Streamed jobs (`stream: true`): the chunks a job gets on its `reply_to` before its
//! result (DESIGN.md "Streamed output"; `schemas/chunk.schema.json`).
//!
//! The call chain hands pieces to a [`Chunks`] (text as a provider streams it, a call that
//! failed, a whole cached answer) through an unbounded channel, never waiting; one task
//! per streamed delivery numbers them and publishes them with core NATS, in order,
//! without a flush per chunk (what is already queued is joined into one chunk, up to
//! [`JOIN_UP_TO`] bytes). A call that fails after some of its text went out is followed
//! by a `reset` chunk; the next candidate's text follows. [`Chunks::close`] waits until
//! every chunk is handed to the NATS client, so that the result, published after it on
//! the same connection, comes after the last chunk.

use crate::job::chunk::{Chunk, CHUNK_KIND, DELIVERY_STRIDE, JOB_HEADER, KIND_HEADER, SEQ_HEADER};
use crate::job::Job;
use crate::providers::Deltas;
use tokio::sync::mpsc;

/// Deltas already queued are joined into one chunk up to this many bytes.
const JOIN_UP_TO: usize = 16 * 1024;
/// How long the end of a delivery waits for its chunks to be handed to NATS.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// A whole answer (from the response cache) goes out in chunks of at most this many
/// bytes, so that each fits in a NATS message.
const WHOLE_PIECE: usize = 64 * 1024;

/// What the chain hands to the stream.
#[derive(Debug)]
enum Piece {
    /// Text of call `attempt`, as the provider sent it.
    Delta { attempt: u32, text: String },
    /// Call `attempt` failed or was cut short: what it streamed is void.
    Failed { attempt: u32, reason: String },
    /// A whole answer at once (the response cache's).
    Whole(String),
}

/// The chunks of one streamed delivery.
pub(super) struct Chunks {
    tx: mpsc::UnboundedSender<Piece>,
    task: tokio::task::JoinHandle<()>,
}

impl Chunks {
    /// Start publishing `job`'s chunks to `reply_to` (checked already) for its delivery
    /// number `delivered`.
    pub(super) fn start(
        client: &async_nats::Client,
        job: &Job,
        reply_to: &str,
        delivered: u64,
    ) -> Chunks {
        let (tx, rx) = mpsc::unbounded_channel();
        let out = Out {
            client: client.clone(),
            subject: reply_to.to_string(),
            job: format!("{}:{}", job.tenant, job.id),
            id: job.id.clone(),
            seq: delivered.saturating_sub(1).saturating_mul(DELIVERY_STRIDE),
        };
        let task = tokio::spawn(forward(out, rx, delivered > 1));
        Chunks { tx, task }
    }

    /// Where call `attempt`'s text goes.
    pub(super) fn deltas(&self, attempt: u32) -> Deltas<'static> {
        let tx = self.tx.clone();
        Box::new(move |text: &str| {
            let _ = tx.send(Piece::Delta {
                attempt,
                text: text.to_string(),
            });
        })
    }

    /// Call `attempt` failed (or was cut short): a reset follows its text, if any went out.
    pub(super) fn failed(&self, attempt: u32, reason: String) {
        let _ = self.tx.send(Piece::Failed { attempt, reason });
    }

    /// The whole answer as chunks (an answer from the response cache).
    pub(super) fn whole(&self, text: String) {
        let _ = self.tx.send(Piece::Whole(text));
    }

    /// Wait until every chunk is handed to the NATS client, at most [`CLOSE_WAIT`]: the
    /// client buffers while NATS is away, so only a long outage makes this wait; then the
    /// chunks left are dropped (their `seq`s never appear) and the job goes on to its
    /// commit, whose result waits for NATS as for any job.
    pub(super) async fn close(self) {
        let Chunks { tx, mut task } = self;
        drop(tx);
        match tokio::time::timeout(CLOSE_WAIT, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the chunk publisher ended abnormally"),
            Err(_) => {
                task.abort();
                tracing::warn!(
                    wait_s = CLOSE_WAIT.as_secs(),
                    "chunks could not be handed to NATS in time; the rest are dropped"
                );
            }
        }
    }
}

/// Where and how the chunks go.
struct Out {
    client: async_nats::Client,
    subject: String,
    /// `<tenant>:<id>`, the `Switchyard-Job` header.
    job: String,
    id: String,
    /// The next chunk's `seq`.
    seq: u64,
}

impl Out {
    async fn publish(&mut self, delta: Option<String>, reset: Option<String>) {
        let seq = self.seq;
        self.seq += 1;
        let chunk = Chunk {
            id: self.id.clone(),
            seq,
            reset: reset.is_some(),
            reason: reset,
            delta,
        };
        let body = match serde_json::to_vec(&chunk) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "a chunk does not encode; skipped");
                return;
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(KIND_HEADER, CHUNK_KIND);
        headers.insert(SEQ_HEADER, seq.to_string().as_str());
        headers.insert(JOB_HEADER, self.job.as_str());
        // Core NATS: at most once. A chunk that cannot be handed over is lost (its `seq`
        // is skipped, so the listener sees the gap); the result still has it all.
        if let Err(e) = self
            .client
            .publish_with_headers(self.subject.clone(), headers, body.into())
            .await
        {
            tracing::debug!(error = %e, seq, "a chunk could not be published");
        }
    }
}

async fn forward(mut out: Out, mut rx: mpsc::UnboundedReceiver<Piece>, redelivered: bool) {
    // A redelivery's first chunk is a reset: an earlier delivery may have streamed text
    // that no result followed (its worker died, or it was handed back).
    let mut reset_first = redelivered;
    // The call whose text went out since the last reset.
    let mut live: Option<u32> = None;
    let mut held: Option<Piece> = None;
    loop {
        let piece = match held.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        match piece {
            Piece::Delta { attempt, mut text } => {
                if reset_first {
                    reset_first = false;
                    let why = "redelivered: discard what an earlier delivery of this job streamed";
                    out.publish(None, Some(why.into())).await;
                }
                if let Some(other) = live.filter(|&a| a != attempt) {
                    let why = format!("attempt {other} was superseded by attempt {attempt}");
                    out.publish(None, Some(why)).await;
                }
                live = Some(attempt);
                // Join what is already queued of the same call (no waiting).
                while text.len() < JOIN_UP_TO {
                    match rx.try_recv() {
                        Ok(Piece::Delta {
                            attempt: a,
                            text: t,
                        }) if a == attempt => {
                            text.push_str(&t);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                out.publish(Some(text), None).await;
            }
            Piece::Failed { attempt, reason } => {
                if live == Some(attempt) {
                    live = None;
                    out.publish(None, Some(reason)).await;
                }
            }
            Piece::Whole(text) => {
                if std::mem::take(&mut reset_first) {
                    let why = "redelivered: discard what an earlier delivery of this job streamed";
                    out.publish(None, Some(why.into())).await;
                }
                for piece in pieces(&text, WHOLE_PIECE) {
                    out.publish(Some(piece.to_string()), None).await;
                }
            }
        }
    }
}

/// `text` cut into pieces of at most `max` bytes, at character boundaries.
fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max.max(4));
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        out.push(head);
        rest = tail;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn whole_answers_are_cut_at_character_boundaries() {
        let text = "ab\u{e9}\u{1F600}cd".repeat(1000);
        let ps = pieces(&text, 7);
        assert!(ps.iter().all(|p| p.len() <= 7 && !p.is_empty()));
        assert_eq!(ps.concat(), text);
        assert!(pieces("", 7).is_empty());
    }
}
