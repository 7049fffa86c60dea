//! Pulling jobs: each free slot goes to a priority by weight (high, normal, low = 8:3:1 by
//! default) through a smooth weighted round-robin that persists across rounds
//! ([`Weighted`]), so the weights hold even when slots free one at a time. A priority
//! found empty is skipped for the rest of the round and its slots go to the others at
//! once. So high is served first under a backlog and low still progresses. Only as many
//! messages are pulled as there are free slots: a buffered message's ack wait runs. And
//! no more than the [`PullGate`] has room for: jobs waiting for a provider's rate limit
//! stay in JetStream, not in the worker.
//!
//! With `[scheduling] fair` ([`Source::Tenant`]) a priority's slots are shared again
//! among its tenants' consumers by the same round-robin, weighted per tenant
//! ([`Tenants`]); a tenant found empty is skipped for the rest of the round. And each
//! pulled window is dispatched earliest deadline first ([`edf_order`]). A tenant's pull
//! that fails or goes unanswered before any message (its consumer was deleted) lets the
//! tenant go until discovery finds it again; an idle worker with no tenant at all waits
//! on [`Tenants::first_job`] as well.

use super::deadline_order::edf_order;
use super::tenants::Tenants;
use super::weighted::Weighted;
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

/// How long to wait before asking a closed [`PullGate`] again.
const GATE_POLL: Duration = Duration::from_millis(100);

/// How many more messages may be pulled now (`usize::MAX`: no limit).
pub trait PullGate: Send + Sync + 'static {
    fn room(&self) -> usize;
}

/// Receives each pulled message together with the slot it occupies.
pub trait Dispatch: Send + Sync + 'static {
    fn dispatch(&self, priority: Priority, msg: Message, slot: OwnedSemaphorePermit);
}

/// Where the scheduler pulls from.
pub enum Source {
    /// One consumer per priority, high first: stream order within a priority.
    Priority(Box<[PullConsumer; 3]>),
    /// One consumer per priority and tenant with jobs waiting, found as they come.
    Tenant(Arc<Tenants>),
}

pub struct Scheduler<D: Dispatch> {
    pub source: Source,
    pub weights: [u32; 3],
    pub slots: Arc<Semaphore>,
    pub dispatch: Arc<D>,
    /// True while our own infrastructure (Postgres, NATS) answers: nothing is pulled
    /// while it is false.
    pub ready: tokio::sync::watch::Receiver<bool>,
    pub gate: Arc<dyn PullGate>,
}

impl<D: Dispatch> Scheduler<D> {
    /// Pull until `stop` is cancelled. Returns once no pull request is outstanding.
    pub async fn run(mut self, stop: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let polling: [Arc<AtomicBool>; 3] = Default::default();
        let polls = TaskTracker::new();
        let mut shares = Weighted::new(self.weights);
        // Fair share, idle: the first job published wakes the scheduler.
        let mut first_job: Option<async_nats::Subscriber> = None;
        while !stop.is_cancelled() {
            if !*self.ready.borrow_and_update() {
                tokio::select! {
                    r = self.ready.wait_for(|up| *up) => if r.is_err() { break },
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            if let Source::Tenant(t) = &self.source {
                if let Err(e) = t.discover_if_due().await {
                    tracing::warn!(error = %e, "finding tenants with jobs waiting failed");
                }
            }
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.cancelled() => break,
            };
            let room = self.gate.room();
            if room == 0 {
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(GATE_POLL) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            let mut budget = first;
            let more = self
                .slots
                .available_permits()
                .min(MAX_FETCH * 3)
                .min(room - 1);
            if more > 0 {
                if let Ok(p) = self.slots.clone().try_acquire_many_owned(more as u32) {
                    budget.merge(p);
                }
            }
            let got = self.round(&mut shares, &mut budget).await;
            if got > 0 {
                continue;
            }
            // Nothing waiting: one long pull per idle consumer, each holding one slot.
            for p in Priority::ALL {
                let idle: Vec<(PullConsumer, Arc<AtomicBool>)> = match &self.source {
                    Source::Priority(c) => {
                        vec![(c[p.index()].clone(), polling[p.index()].clone())]
                    }
                    Source::Tenant(t) => t
                        .lanes(p)
                        .into_iter()
                        .map(|l| (l.consumer.clone(), l.polling.clone()))
                        .collect(),
                };
                for (consumer, flag) in idle {
                    if flag.load(Ordering::Acquire) {
                        continue;
                    }
                    let Some(slot) = budget.split(1) else { break };
                    flag.store(true, Ordering::Release);
                    polls.spawn(long_poll(
                        consumer,
                        p,
                        slot,
                        self.dispatch.clone(),
                        wake.clone(),
                        flag,
                    ));
                }
            }
            drop(budget);
            let idle_wait = match &self.source {
                Source::Priority(_) => IDLE_POLL,
                Source::Tenant(t) => {
                    if !t.is_empty() {
                        first_job = None;
                    } else if first_job.is_none() {
                        first_job = t.first_job().await;
                        continue;
                    }
                    t.discover_every().min(IDLE_POLL)
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(idle_wait) => {}
                _ = next_message(&mut first_job) => {
                    first_job = None;
                    if let Source::Tenant(t) = &self.source {
                        t.discover_soon();
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
        polls.close();
        polls.wait().await;
    }

    /// One round of no-wait pulls into the slots of `budget`, shared by `shares`; returns
    /// how many messages were dispatched. A priority that returns fewer messages than it
    /// was granted is empty for the rest of the round: its unused grants are given back
    /// and the slots go to the others at once.
    async fn round(&self, shares: &mut Weighted, budget: &mut OwnedSemaphorePermit) -> usize {
        // Fair share: a priority without tenants is empty before it is asked, so one
        // window goes to the priority that has jobs (earliest deadline first within it).
        let mut empty = match &self.source {
            Source::Priority(_) => [false; 3],
            Source::Tenant(t) => Priority::ALL.map(|p| !t.has_lanes(p)),
        };
        let mut total = 0;
        while budget.num_permits() > 0 && empty.contains(&false) {
            let grant = shares.grant(budget.num_permits(), empty);
            for p in Priority::ALL {
                let granted = grant.slots[p.index()];
                if granted == 0 {
                    continue;
                }
                let want = granted.min(MAX_FETCH).min(budget.num_permits());
                let got = self.pull(p, want, budget).await;
                if got < granted {
                    shares.refund(&grant, p, granted - got);
                }
                if got < want {
                    empty[p.index()] = true;
                }
                total += got;
            }
        }
        total
    }

    async fn pull(&self, p: Priority, want: usize, budget: &mut OwnedSemaphorePermit) -> usize {
        match &self.source {
            Source::Priority(c) => self
                .pull_from(&c[p.index()], p, want, budget)
                .await
                .unwrap_or(0),
            Source::Tenant(t) => self.pull_tenants(t, p, want, budget).await,
        }
    }

    /// Up to `want` messages of priority `p` from its tenants' consumers, shared by weight;
    /// a tenant that returns fewer than asked is empty for the rest of this pull.
    async fn pull_tenants(
        &self,
        t: &Tenants,
        p: Priority,
        want: usize,
        budget: &mut OwnedSemaphorePermit,
    ) -> usize {
        let lanes = t.lanes(p);
        let mut empty = vec![false; lanes.len()];
        let mut total = 0;
        while total < want && budget.num_permits() > 0 && empty.contains(&false) {
            let grant = t.grant(p, want - total, &empty);
            for (i, lane) in lanes.iter().enumerate() {
                let granted = grant.slots[i];
                if granted == 0 {
                    continue;
                }
                let ask = granted.min(MAX_FETCH).min(budget.num_permits());
                let got = match self.pull_from(&lane.consumer, p, ask, budget).await {
                    Some(n) => n,
                    None => {
                        // Most likely deleted for inactivity: found again if jobs wait.
                        t.drop_lane(p, &lane.subject);
                        0
                    }
                };
                t.settle(p, &grant, i, got);
                if got < ask {
                    empty[i] = true;
                }
                total += got;
            }
        }
        total
    }

    /// Up to `want` messages from `consumer`; `None` when the pull request failed, or
    /// was answered with an error or not at all before any message (the consumer is
    /// gone: deleted for inactivity).
    async fn pull_from(
        &self,
        consumer: &PullConsumer,
        p: Priority,
        want: usize,
        budget: &mut OwnedSemaphorePermit,
    ) -> Option<usize> {
        if want == 0 {
            return Some(0);
        }
        let mut batch = match consumer.fetch().max_messages(want).messages().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(priority = %p, error = %e, "pull request failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
        };
        let mut n = 0;
        let mut failed = false;
        // Fair share: the window is dispatched at its end, earliest deadline first.
        let mut held: Vec<Message> = Vec::new();
        let hold = matches!(self.source, Source::Tenant(_)) && want > 1;
        // A no-wait pull is answered at once, but NATS 2.9 leaves one unanswered when the
        // consumer is gone (deleted for inactivity: the account's JetStream API import
        // still takes the request, so there is no "no responders" either), and async-nats
        // sets no client deadline without `expires` (which would make the server wait):
        // bound each wait here so the scheduler never stalls, and call a pull unanswered
        // before any message failed, so that a tenant's lane is let go and its consumer
        // made again. Messages the server might still send to the abandoned inbox are
        // redelivered after the ack wait.
        loop {
            let item = match tokio::time::timeout(FETCH_STALL, batch.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(priority = %p, got = n, "pull request unanswered; abandoning it");
                    failed = n == 0;
                    break;
                }
            };
            match item {
                Ok(msg) if hold => {
                    held.push(msg);
                    n += 1;
                }
                Ok(msg) => {
                    self.dispatch_one(p, msg, budget).await;
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(priority = %p, error = %e, "pull batch ended with an error");
                    failed = n == 0;
                    break;
                }
            }
        }
        if !held.is_empty() {
            let order = edf_order(held.iter().map(|m| m.payload.as_ref()));
            let mut held: Vec<Option<Message>> = held.into_iter().map(Some).collect();
            for i in order {
                if let Some(msg) = held.get_mut(i).and_then(Option::take) {
                    self.dispatch_one(p, msg, budget).await;
                }
            }
        }
        (!failed).then_some(n)
    }

    /// Hand `msg` to the dispatcher with one of `budget`'s slots.
    async fn dispatch_one(&self, p: Priority, msg: Message, budget: &mut OwnedSemaphorePermit) {
        // The server never sends more than asked, so a slot is always there.
        match budget.split(1) {
            Some(slot) => self.dispatch.dispatch(p, msg, slot),
            None => {
                let _ = msg
                    .ack_with(async_nats::jetstream::AckKind::Nak(None))
                    .await;
            }
        }
    }
}

/// The next message of `sub`; never when there is none.
async fn next_message(sub: &mut Option<async_nats::Subscriber>) {
    match sub {
        Some(s) => {
            s.next().await;
        }
        None => std::future::pending().await,
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
