//! The worker: one task per pulled job, bounded by the slot semaphore. Each task keeps its
//! message alive with in-progress acks while it works, and ends in exactly one of: ack
//! (the result is committed and published) or nak with a delay (try again later).
//!
//! - [`process`]: one delivery, start to end (claim, route, cache, reserve, call, commit,
//!   publish);
//! - [`calls`]: the call chain, one [`crate::store::CallRecord`] per call;
//! - [`decide`]: what a chain's outcome means, without side effects;
//! - [`infra`]: is Postgres / NATS there; waiting in place while they are not;
//! - [`stream`]: a streamed job's chunks on its `reply_to`, before its result;
//! - [`shadow`]: a sampled finished job run again on a candidate model (`[shadow]`).

pub mod batcher;
mod calls;
mod deadline;
pub mod decide;
#[cfg(test)]
mod future_sizes;
pub mod infra;
mod process;
pub mod reload;
pub mod shadow;
mod stream;

use crate::config::Config;
use crate::job::{ParseRules, Priority};
use crate::providers::Providers;
use crate::queue::publish::Publisher;
use crate::queue::scheduler::Dispatch;
use crate::ratelimit::Limiters;
use crate::router::Router;
use crate::store::{Claimer, Writer};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{AckKind, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a job task needs, shared.
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub rules: ParseRules,
    pub router: Router,
    pub providers: Providers,
    pub limiters: Limiters,
    pub budgets: Arc<crate::budget::Budgets>,
    pub claimer: Claimer,
    pub writer: Writer,
    /// Response-cache lookups (batched like claims).
    pub cache: crate::store::cache::CacheLookups,
    pub leases: crate::store::LeaseKeeper,
    pub infra: Arc<infra::Infra>,
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Providers whose input tokens can be counted exactly (OpenAI's tokenizer).
    pub exact_tokens: std::collections::HashSet<String>,
    pub publisher: Publisher,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Circuit breakers, 429 cool-downs and latency per provider+model.
    pub health: Arc<crate::health::Health>,
    /// Cancelled when the shutdown grace period is over: unfinished jobs are handed back.
    pub abort: CancellationToken,
    /// Provider batch APIs and where parked jobs are kept (`[batch]`).
    pub batching: Arc<batcher::Batching>,
    /// Shadow evaluation's tasks (`[shadow]`); offered finished jobs only while routes
    /// are configured.
    pub shadow: shadow::ShadowRunner,
}

/// What happens to the message at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Redeliver after this delay.
    Retry(Duration),
}

/// Providers whose input tokens can be counted exactly (OpenAI's tokenizer).
pub fn exact_tokens(cfg: &Config) -> std::collections::HashSet<String> {
    cfg.providers
        .iter()
        .filter(|p| matches!(p.kind, crate::config::ProviderKind::Openai))
        .map(|p| p.name.clone())
        .collect()
}

/// Spawns one task per message on the tracker.
pub struct JobDispatch {
    /// The context new jobs get (a config reload replaces it).
    pub ctx: Arc<reload::CtxCell>,
    pub tracker: TaskTracker,
}

impl Dispatch for JobDispatch {
    fn dispatch(&self, priority: Priority, msg: Message, slot: OwnedSemaphorePermit) {
        let ctx = self.ctx.get();
        let Some(delivery) = delivery(priority, &msg) else {
            return;
        };
        ctx.metrics
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Split here, not in the task: an async fn keeps its arguments for its whole
        // life, so the whole message would be held beside its two halves. Its headers
        // (`Nats-Msg-Id` …) are read by nothing after this: not held while the job runs.
        let (mut message, acker) = msg.split();
        message.headers = None;
        // Boxed: the task then holds a pointer, not the job's whole state machine, which
        // spawning would otherwise copy several times.
        let job = Box::pin(handle(ctx.clone(), delivery, message, acker));
        self.tracker.spawn(async move {
            job.await;
            ctx.metrics
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(slot);
        });
    }
}

/// Where a message came from, read off its ack subject before the message is split.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub priority: Priority,
    pub stream_seq: u64,
    /// 1 on the first delivery.
    pub delivered: u64,
    /// How long it waited in the stream before this worker took it.
    pub queued: Duration,
    pub received: Instant,
    /// The message is a parked job coming back from a provider batch
    /// ([`batcher::REENTRY_HEADER`]).
    pub reentry: Option<batcher::Reentry>,
}

/// Where `msg` came from; `None` (logged) for a message without JetStream metadata,
/// which has nothing to ack and nothing to file it under.
fn delivery(priority: Priority, msg: &Message) -> Option<Delivery> {
    let received = Instant::now();
    match msg.info() {
        Ok(info) => {
            let published_ns = info.published.unix_timestamp_nanos();
            let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as i128;
            let queued_ns = (now_ns - published_ns).clamp(0, i128::from(u64::MAX)) as u64;
            Some(Delivery {
                priority,
                stream_seq: info.stream_sequence,
                delivered: info.delivered.max(1) as u64,
                queued: Duration::from_nanos(queued_ns),
                received,
                reentry: batcher::Reentry::of(msg.headers.as_ref()),
            })
        }
        Err(e) => {
            tracing::error!(error = %e, subject = %msg.subject, "message without JetStream metadata");
            None
        }
    }
}

async fn handle(ctx: Arc<Ctx>, delivery: Delivery, message: async_nats::Message, acker: Acker) {
    let priority = delivery.priority;
    ctx.metrics.job_started(priority, delivery.queued);
    let period = Duration::from_secs(ctx.cfg.worker.ack_wait_s)
        .div_f64(3.0)
        .max(Duration::from_millis(500));
    let disposition = {
        let work = process::process(&ctx, delivery, &message);
        tokio::pin!(work);
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                d = &mut work => break d,
                _ = keepalive.tick() => {
                    // Boxed: rare, and kept out of the state a job holds while it runs.
                    if let Err(e) = Box::pin(acker.ack_with(AckKind::Progress)).await {
                        tracing::warn!(error = %e, "in-progress ack failed");
                    }
                }
                _ = ctx.abort.cancelled() => break Disposition::Retry(Duration::ZERO),
            }
        }
    };
    // Boxed: short, and larger than what the job holds while it waits for its calls.
    let sent = match disposition {
        Disposition::Ack => Box::pin(acker.ack()).await,
        Disposition::Retry(d) => {
            ctx.metrics.retried();
            Box::pin(acker.ack_with(AckKind::Nak(Some(d)))).await
        }
    };
    if let Err(e) = sent {
        // The message will be redelivered after the ack wait; a committed result is then
        // published again without a new provider call.
        tracing::warn!(error = %e, ?disposition, "ack failed");
    }
}
