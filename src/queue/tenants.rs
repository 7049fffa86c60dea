//! Fair share among the tenants of one priority (`[scheduling] fair = true`): one durable
//! pull consumer per subject with jobs waiting (`<prefix>.jobs.<priority>.<tenant>`,
//! consumer `jobs-<priority>-<tenant>`), found by reading the jobs stream's subject counts
//! every `scheduling.discover_ms`, and a smooth weighted round-robin among the tenants of
//! a priority (weights from `scheduling.weights`) deciding which consumer the next free
//! slot pulls from. Owns the per-tenant consumer layout; the scheduler owns pulling.
//!
//! Why consumers per tenant and nothing per priority: the jobs stream is a work queue,
//! where JetStream refuses overlapping consumer filters, so a catch-all `jobs-normal`
//! cannot coexist with `jobs-normal-acme`; and one consumer per priority delivers in
//! stream order, so no pull window can reach a small tenant behind a large one. Every
//! worker pulls the same durables and gives each tenant its weighted share of its own
//! slots, so each tenant's share of the pool is its weighted share. A consumer nobody
//! pulled for `scheduling.idle_s` is deleted by the server (`inactive_threshold`); a
//! worker stops pulling a tenant's consumer `idle_s` after it last saw jobs there, or as
//! soon as a pull finds it gone (the scheduler drops the lane; discovery makes it again).
//! A worker without any tenant's consumer waits on [`Tenants::first_job`] too.
//!
//! A subject that is not `<prefix>.jobs.<priority>.<valid tenant>` (a malformed one that
//! must still end in an `invalid_job` result) gets a consumer named after a hash of the
//! subject, `jobs-<priority>-x<16 hex>`, and weight 1.

use super::weighted::{smooth_grant, smooth_refund};
use crate::config::Config;
use crate::job::names::is_valid_tenant;
use crate::job::Priority;
use async_nats::jetstream::{consumer, consumer::PullConsumer, stream::Stream};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("reading the jobs stream's subjects: {0}")]
    Info(String),
    #[error("consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
}

/// One tenant's consumer within a priority.
#[derive(Clone)]
pub struct Lane {
    pub subject: String,
    pub tenant: String,
    pub consumer: PullConsumer,
    /// True while one of this worker's long pulls waits on this consumer.
    pub polling: Arc<AtomicBool>,
}

struct LaneState {
    /// Shared: the scheduler takes the lanes every round (a consumer's info is large).
    lane: Arc<Lane>,
    weight: i64,
    credit: i64,
    last_seen: Instant,
}

/// The tenants with jobs waiting, per priority, and their round-robin credit.
pub struct Tenants {
    client: async_nats::Client,
    stream: Stream,
    prefix: String,
    ack_wait: Duration,
    discover_every: Duration,
    idle: Duration,
    weights: HashMap<String, i64>,
    lanes: Mutex<[Vec<LaneState>; 3]>,
    last_discovery: Mutex<Option<Instant>>,
}

/// Slots granted to the lanes of one priority (index = the lane's place in
/// [`Tenants::lanes`]).
pub struct TenantGrant {
    pub slots: Vec<usize>,
    eligible: Vec<bool>,
}

impl Tenants {
    /// `client`: the connection `stream` was read through (for [`Tenants::first_job`]).
    pub fn new(client: async_nats::Client, stream: Stream, cfg: &Config) -> Tenants {
        let s = &cfg.scheduling;
        Tenants {
            client,
            stream,
            prefix: cfg.nats.prefix.clone(),
            ack_wait: Duration::from_secs(cfg.worker.ack_wait_s),
            discover_every: Duration::from_millis(s.discover_ms),
            idle: Duration::from_secs(s.idle_s),
            weights: s
                .weights
                .iter()
                .map(|(t, w)| (t.clone(), i64::from((*w).max(1))))
                .collect(),
            lanes: Mutex::new(Default::default()),
            last_discovery: Mutex::new(None),
        }
    }

    /// How often tenants are looked for.
    pub fn discover_every(&self) -> Duration {
        self.discover_every
    }

    /// Whether no priority has any tenant's consumer now (the worker is idle).
    pub fn is_empty(&self) -> bool {
        let lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        lanes.iter().all(Vec::is_empty)
    }

    /// A core NATS subscription to every jobs subject that ends after its first message:
    /// an idle worker (no tenant's consumer) waits on it so that the first job after an
    /// idle spell is pulled at once rather than at the next discovery, `discover_ms`
    /// later (in a backlog run of one tenant, up to 1 s of the run's wall time). Nothing
    /// flows through it while the worker has consumers. The next [`Tenants::discover_if_due`]
    /// runs at once, for a job published before the subscription.
    pub async fn first_job(&self) -> Option<async_nats::Subscriber> {
        let subject = format!("{}.jobs.>", self.prefix);
        let mut sub = match self.client.subscribe(subject).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::debug!(error = %e, "subscribing to the first job failed");
                return None;
            }
        };
        if let Err(e) = sub.unsubscribe_after(1).await {
            tracing::debug!(error = %e, "subscribing to the first job failed");
            return None;
        }
        self.discover_soon();
        Some(sub)
    }

    /// Make the next [`Tenants::discover_if_due`] discover.
    pub fn discover_soon(&self) {
        *self
            .last_discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether `p` has any tenant's consumer now.
    pub fn has_lanes(&self, p: Priority) -> bool {
        let lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        !lanes[p.index()].is_empty()
    }

    /// The lanes of `p` now (their order is the grants' order until the next discovery).
    pub fn lanes(&self, p: Priority) -> Vec<Arc<Lane>> {
        let lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        lanes[p.index()].iter().map(|l| l.lane.clone()).collect()
    }

    /// Share `k` slots among the lanes of `p` not marked `empty`, by weight.
    pub fn grant(&self, p: Priority, k: usize, empty: &[bool]) -> TenantGrant {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let lanes = &mut lanes[p.index()];
        let eligible: Vec<bool> = (0..lanes.len())
            .map(|i| !empty.get(i).copied().unwrap_or(true))
            .collect();
        let weights: Vec<i64> = lanes.iter().map(|l| l.weight).collect();
        let mut credit: Vec<i64> = lanes.iter().map(|l| l.credit).collect();
        let mut slots = vec![0; lanes.len()];
        smooth_grant(&weights, &mut credit, &eligible, k, &mut slots);
        for (l, c) in lanes.iter_mut().zip(credit) {
            l.credit = c;
        }
        TenantGrant { slots, eligible }
    }

    /// Give back `n` of `grant`'s slots for lane `i` of `p`; `got` > 0 marks the lane seen.
    pub fn settle(&self, p: Priority, grant: &TenantGrant, i: usize, got: usize) {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let lanes = &mut lanes[p.index()];
        if lanes.len() != grant.slots.len() {
            return;
        }
        if got > 0 {
            if let Some(l) = lanes.get_mut(i) {
                l.last_seen = Instant::now();
            }
        }
        let unused = grant.slots[i].saturating_sub(got);
        if unused > 0 {
            let weights: Vec<i64> = lanes.iter().map(|l| l.weight).collect();
            let mut credit: Vec<i64> = lanes.iter().map(|l| l.credit).collect();
            smooth_refund(&weights, &mut credit, &grant.eligible, i, unused);
            for (l, c) in lanes.iter_mut().zip(credit) {
                l.credit = c;
            }
        }
    }

    /// Forget a lane whose consumer is gone (the server deleted it); the next discovery
    /// makes it again if jobs wait there.
    pub fn drop_lane(&self, p: Priority, subject: &str) {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        lanes[p.index()].retain(|l| l.lane.subject != subject);
    }

    /// Discover when `discover_ms` has passed since the last discovery.
    pub async fn discover_if_due(&self) -> Result<(), DiscoverError> {
        let due = {
            let last = self
                .last_discovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            last.is_none_or(|t| t.elapsed() >= self.discover_every)
        };
        if due {
            *self
                .last_discovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.discover().await?;
        }
        Ok(())
    }

    /// Read the subjects with messages, make a consumer for each new one (idempotent: the
    /// same config again is no change, so every worker may do it), and let go of lanes
    /// not seen for `idle_s`.
    pub async fn discover(&self) -> Result<(), DiscoverError> {
        let counts = subject_counts(&self.stream, &self.prefix).await?;
        let now = Instant::now();
        let mut new = Vec::new();
        {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            for (subject, count) in &counts {
                if *count == 0 {
                    continue;
                }
                let Some((p, _)) = split_subject(subject, &self.prefix) else {
                    continue;
                };
                match lanes[p.index()]
                    .iter_mut()
                    .find(|l| &l.lane.subject == subject)
                {
                    Some(l) => l.last_seen = now,
                    None => new.push((p, subject.clone())),
                }
            }
            for list in lanes.iter_mut() {
                list.retain(|l| now.duration_since(l.last_seen) < self.idle);
            }
        }
        for (p, subject) in new {
            let tenant = split_subject(&subject, &self.prefix)
                .map(|(_, t)| t.to_string())
                .unwrap_or_default();
            let config = lane_consumer_config(&self.prefix, p, &subject, self.ack_wait, self.idle);
            let name = config.durable_name.clone().unwrap_or_default();
            let consumer: PullConsumer =
                self.stream
                    .create_consumer(config)
                    .await
                    .map_err(|e| DiscoverError::Consumer {
                        consumer: name,
                        message: e.to_string(),
                    })?;
            let weight = self.weights.get(&tenant).copied().unwrap_or(1);
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let list = &mut lanes[p.index()];
            if list.iter().all(|l| l.lane.subject != subject) {
                list.push(LaneState {
                    lane: Arc::new(Lane {
                        subject,
                        tenant,
                        consumer,
                        polling: Arc::default(),
                    }),
                    weight,
                    credit: 0,
                    last_seen: now,
                });
            }
        }
        Ok(())
    }
}

/// Messages per subject in the jobs stream (waiting or in flight: a work queue deletes a
/// message when it is acked).
pub async fn subject_counts(
    stream: &Stream,
    prefix: &str,
) -> Result<Vec<(String, usize)>, DiscoverError> {
    let info = stream
        .info_with_subjects(format!("{prefix}.jobs.>"))
        .await
        .map_err(|e| DiscoverError::Info(e.to_string()))?;
    info.try_collect()
        .await
        .map_err(|e| DiscoverError::Info(e.to_string()))
}

/// The priority and the rest after `<prefix>.jobs.<priority>.` of a jobs subject.
pub fn split_subject<'a>(subject: &'a str, prefix: &str) -> Option<(Priority, &'a str)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".jobs.")?;
    let (p, tenant) = rest.split_once('.')?;
    Some((Priority::parse(p)?, tenant))
}

/// `jobs-<priority>-<tenant>`, or `jobs-<priority>-x<hash>` for a subject whose tail is
/// not one valid tenant.
pub fn lane_consumer_name(prefix: &str, p: Priority, subject: &str) -> String {
    match split_subject(subject, prefix) {
        Some((_, t)) if is_valid_tenant(t) => format!("jobs-{}-{t}", p.as_str()),
        _ => {
            let digest = Sha256::digest(subject.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("jobs-{}-x{hex}", p.as_str())
        }
    }
}

pub fn lane_consumer_config(
    prefix: &str,
    p: Priority,
    subject: &str,
    ack_wait: Duration,
    idle: Duration,
) -> consumer::pull::Config {
    let name = lane_consumer_name(prefix, p, subject);
    consumer::pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        description: Some(format!("switchyard workers, fair share: {subject}")),
        filter_subject: subject.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: -1,
        max_waiting: 4096,
        inactive_threshold: idle,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_tenant_consumers() {
        assert_eq!(
            lane_consumer_name("llm", Priority::Normal, "llm.jobs.normal.acme"),
            "jobs-normal-acme"
        );
        let odd = lane_consumer_name("llm", Priority::Low, "llm.jobs.low.Acme.x");
        assert!(odd.starts_with("jobs-low-x") && odd.len() == "jobs-low-x".len() + 16);
        assert_ne!(
            odd,
            lane_consumer_name("llm", Priority::Low, "llm.jobs.low.Acme.y")
        );
        assert_eq!(
            split_subject("llm.jobs.high.a.b", "llm"),
            Some((Priority::High, "a.b"))
        );
        assert_eq!(split_subject("llm.jobs.urgent.a", "llm"), None);
        assert_eq!(split_subject("llmx.jobs.high.a", "llm"), None);
    }
}
