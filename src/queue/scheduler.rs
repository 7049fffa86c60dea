//! Pulling jobs: free slots are offered to the priorities by weight each round (high,
//! normal, low = 8:3:1 by default), and what one priority leaves unused goes to the others,
//! high first. So high is served first under a backlog and low still progresses. Only as
//! many messages are pulled as there are free slots: a buffered message's ack wait runs.

use crate::job::Priority;
use async_nats::jetstream::{consumer::PullConsumer, Message};
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest single pull request.
const MAX_FETCH: usize = 256;
/// Longest wait for the next message or status of a no-wait pull.
const FETCH_STALL: Duration = Duration::from_secs(2);
/// How long an idle worker's pull request waits on the server.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Receives each pulled message together with the slot it occupies.
pub trait Dispatch: Send + Sync + 'static {
    fn dispatch(&self, priority: Priority, msg: Message, slot: OwnedSemaphorePermit);
}

pub struct Scheduler<D: Dispatch> {
    pub consumers: [PullConsumer; 3],
    pub weights: [u32; 3],
    pub slots: Arc<Semaphore>,
    pub dispatch: Arc<D>,
    /// True while our own infrastructure (Postgres, NATS) answers: nothing is pulled
    /// while it is false.
    pub ready: tokio::sync::watch::Receiver<bool>,
}

impl<D: Dispatch> Scheduler<D> {
    /// Pull until `stop` is cancelled. Returns once no pull request is outstanding.
    pub async fn run(mut self, stop: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let polling: [Arc<AtomicBool>; 3] = Default::default();
        let polls = TaskTracker::new();
        while !stop.is_cancelled() {
            if !*self.ready.borrow_and_update() {
                tokio::select! {
                    r = self.ready.wait_for(|up| *up) => if r.is_err() { break },
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.cancelled() => break,
            };
            let mut budget = first;
            let more = self.slots.available_permits().min(MAX_FETCH * 3);
            if more > 0 {
                if let Ok(p) = self.slots.clone().try_acquire_many_owned(more as u32) {
                    budget.merge(p);
                }
            }
            let got = self.round(&mut budget).await;
            if got > 0 {
                continue;
            }
            // Nothing waiting: one long pull per idle priority, each holding one slot.
            for p in Priority::ALL {
                let flag = &polling[p.index()];
                if flag.load(Ordering::Acquire) {
                    continue;
                }
                let Some(slot) = budget.split(1) else { break };
                flag.store(true, Ordering::Release);
                polls.spawn(long_poll(
                    self.consumers[p.index()].clone(),
                    p,
                    slot,
                    self.dispatch.clone(),
                    wake.clone(),
                    flag.clone(),
                ));
            }
            drop(budget);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.cancelled() => break,
            }
        }
        polls.close();
        polls.wait().await;
    }

    /// One round of no-wait pulls; returns how many messages were dispatched.
    async fn round(&self, budget: &mut OwnedSemaphorePermit) -> usize {
        let total = budget.num_permits();
        let sum: u32 = self.weights.iter().sum();
        let mut quotas = [0usize; 3];
        for p in Priority::ALL {
            let share = total * self.weights[p.index()] as usize / sum.max(1) as usize;
            quotas[p.index()] = share.clamp(1, MAX_FETCH);
        }
        let mut got = [0usize; 3];
        for p in Priority::ALL {
            let want = quotas[p.index()].min(budget.num_permits());
            got[p.index()] = self.pull(p, want, budget).await;
        }
        // Work-conserving: slots a priority left unused go to those that filled their quota.
        for p in Priority::ALL {
            let i = p.index();
            if got[i] == quotas[i] && budget.num_permits() > 0 {
                let want = budget.num_permits().min(MAX_FETCH);
                got[i] += self.pull(p, want, budget).await;
            }
        }
        got.iter().sum()
    }

    async fn pull(&self, p: Priority, want: usize, budget: &mut OwnedSemaphorePermit) -> usize {
        if want == 0 {
            return 0;
        }
        let consumer = &self.consumers[p.index()];
        let mut batch = match consumer.fetch().max_messages(want).messages().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(priority = %p, error = %e, "pull request failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return 0;
            }
        };
        let mut n = 0;
        // A no-wait pull is answered at once, but NATS 2.9 has been seen to leave one
        // unanswered, and async-nats sets no client deadline without `expires` (which
        // would make the server wait): bound each wait here so the scheduler never stalls.
        // Messages the server might still send to the abandoned inbox are redelivered
        // after the ack wait.
        loop {
            let item = match tokio::time::timeout(FETCH_STALL, batch.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(priority = %p, got = n, "pull request unanswered; abandoning it");
                    break;
                }
            };
            match item {
                Ok(msg) => {
                    // The server never sends more than asked, so a slot is always there.
                    match budget.split(1) {
                        Some(slot) => self.dispatch.dispatch(p, msg, slot),
                        None => {
                            let _ = msg
                                .ack_with(async_nats::jetstream::AckKind::Nak(None))
                                .await;
                        }
                    }
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(priority = %p, error = %e, "pull batch ended with an error");
                    break;
                }
            }
        }
        n
    }
}

async fn long_poll<D: Dispatch>(
    consumer: PullConsumer,
    p: Priority,
    slot: OwnedSemaphorePermit,
    dispatch: Arc<D>,
    wake: Arc<Notify>,
    flag: Arc<AtomicBool>,
) {
    match consumer
        .batch()
        .max_messages(1)
        .expires(IDLE_POLL)
        .messages()
        .await
    {
        Ok(mut batch) => {
            let mut slot = Some(slot);
            while let Some(item) = batch.next().await {
                match (item, slot.take()) {
                    (Ok(msg), Some(s)) => dispatch.dispatch(p, msg, s),
                    (Ok(msg), None) => {
                        let _ = msg
                            .ack_with(async_nats::jetstream::AckKind::Nak(None))
                            .await;
                    }
                    (Err(e), _) => {
                        tracing::debug!(priority = %p, error = %e, "long pull ended");
                        break;
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(priority = %p, error = %e, "long pull request failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    flag.store(false, Ordering::Release);
    wake.notify_one();
}
