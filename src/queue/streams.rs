//! The three streams and the durable pull consumers (three per priority, or per tenant with
//! `[scheduling] fair`), created or updated at start.
//! Safe to run from several workers at once (a lost create race is retried as an update).

use crate::config::Config;
use crate::job::Priority;
use async_nats::jetstream::{self, consumer, stream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
}

/// Subject and stream names for one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }
    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.prefix.to_ascii_uppercase())
    }
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.prefix.to_ascii_uppercase())
    }
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.prefix.to_ascii_uppercase())
    }
    pub fn jobs_subject(&self, p: Priority, tenant: &str) -> String {
        format!("{}.jobs.{}.{tenant}", self.prefix, p.as_str())
    }
    pub fn result_subject(&self, tenant: &str, id: &str) -> String {
        format!("{}.results.{tenant}.{id}", self.prefix)
    }
    pub fn dlq_subject(&self, tenant: &str, id: &str) -> String {
        format!("{}.dlq.{tenant}.{id}", self.prefix)
    }
    pub fn consumer_name(p: Priority) -> String {
        format!("jobs-{}", p.as_str())
    }
}

pub fn jobs_stream_config(cfg: &Config) -> stream::Config {
    let n = Names::new(&cfg.nats.prefix);
    stream::Config {
        name: n.jobs_stream(),
        subjects: Priority::ALL
            .iter()
            .map(|p| format!("{}.jobs.{}.>", n.prefix, p.as_str()))
            .collect(),
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: cfg.nats.replicas,
        duplicate_window: Duration::from_secs(cfg.nats.duplicate_window_s),
        description: Some("switchyard: incoming completion jobs".into()),
        ..Default::default()
    }
}

pub fn results_stream_config(cfg: &Config) -> stream::Config {
    let n = Names::new(&cfg.nats.prefix);
    stream::Config {
        name: n.results_stream(),
        subjects: vec![format!("{}.results.>", n.prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: cfg.nats.replicas,
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(u64::from(cfg.nats.results_max_age_days) * 86_400),
        allow_direct: true,
        description: Some("switchyard: the latest terminal result of each job".into()),
        ..Default::default()
    }
}

pub fn dlq_stream_config(cfg: &Config) -> stream::Config {
    let n = Names::new(&cfg.nats.prefix);
    stream::Config {
        name: n.dlq_stream(),
        subjects: vec![format!("{}.dlq.>", n.prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: cfg.nats.replicas,
        max_messages_per_subject: 1,
        allow_direct: true,
        description: Some("switchyard: dead-lettered jobs".into()),
        ..Default::default()
    }
}

pub fn consumer_config(cfg: &Config, p: Priority) -> consumer::pull::Config {
    let name = Names::consumer_name(p);
    consumer::pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        description: Some(format!("switchyard workers, {} priority", p.as_str())),
        filter_subject: format!("{}.jobs.{}.>", cfg.nats.prefix, p.as_str()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(cfg.worker.ack_wait_s),
        // Redelivery is bounded by the worker (worker.max_deliveries), which dead-letters
        // the job itself: a server-side limit would strand the message in the stream.
        max_deliver: -1,
        max_ack_pending: -1,
        max_waiting: 4096,
        ..Default::default()
    }
}

/// The consumers the workers pull from: one per priority, or (`[scheduling] fair`) one
/// per priority and tenant, made as tenants are found ([`super::tenants`]).
pub enum Consumers {
    /// `jobs-high`, `jobs-normal`, `jobs-low`.
    Priority(Box<[consumer::PullConsumer; 3]>),
    /// The jobs stream, whose per-tenant consumers are made on demand.
    Tenant(Box<jetstream::stream::Stream>),
}

/// Create or update the streams and consumers. A work-queue stream refuses overlapping
/// consumer filters, so the layout not configured is removed first: with `fair` the
/// three per-priority consumers, without it every per-tenant one.
pub async fn ensure(js: &jetstream::Context, cfg: &Config) -> Result<Consumers, SetupError> {
    for config in [
        jobs_stream_config(cfg),
        results_stream_config(cfg),
        dlq_stream_config(cfg),
    ] {
        ensure_stream(js, config).await?;
    }
    let stream_name = Names::new(&cfg.nats.prefix).jobs_stream();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| SetupError::Stream {
            stream: stream_name.clone(),
            message: e.to_string(),
        })?;
    remove_other_layout(&stream, cfg.scheduling.fair).await?;
    if cfg.scheduling.fair {
        return Ok(Consumers::Tenant(Box::new(stream)));
    }
    let mut out = Vec::with_capacity(3);
    for p in Priority::ALL {
        let config = consumer_config(cfg, p);
        let name = Names::consumer_name(p);
        let mut last = String::new();
        let mut made = None;
        for _ in 0..3 {
            match stream.create_consumer(config.clone()).await {
                Ok(c) => {
                    made = Some(c);
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let c = made.ok_or(SetupError::Consumer {
            consumer: name,
            message: last,
        })?;
        out.push(c);
    }
    out.try_into()
        .map(|c| Consumers::Priority(Box::new(c)))
        .map_err(|_| SetupError::Consumer {
            consumer: "jobs-*".into(),
            message: "expected three consumers".into(),
        })
}

/// Delete the consumers of the layout not in use: `jobs-<priority>` when `fair`, else
/// `jobs-<priority>-<tenant>`. Messages they held unacked stay in the stream (a work
/// queue deletes a message only on ack) and go to the new layout's consumers.
async fn remove_other_layout(
    stream: &jetstream::stream::Stream,
    fair: bool,
) -> Result<(), SetupError> {
    use futures::TryStreamExt;
    let names: Vec<String> =
        stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(|e| SetupError::Consumer {
                consumer: "jobs-*".into(),
                message: format!("listing consumers: {e}"),
            })?;
    for name in names {
        let per_priority = Priority::ALL
            .iter()
            .any(|p| name == Names::consumer_name(*p));
        let per_tenant = Priority::ALL
            .iter()
            .any(|p| name.starts_with(&format!("{}-", Names::consumer_name(*p))));
        if (fair && per_priority) || (!fair && per_tenant) {
            // Another worker may have removed it already.
            let _ = stream.delete_consumer(&name).await;
        }
    }
    Ok(())
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), SetupError> {
    let name = config.name.clone();
    let mut last = String::new();
    // create_or_update tries update then create; two workers starting together can both
    // try to create: the loser's retry finds the stream and updates it.
    for _ in 0..3 {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(SetupError::Stream {
        stream: name,
        message: last,
    })
}

/// Delete the three streams of a prefix (tests and `switchyard` admin use).
pub async fn delete_all(js: &jetstream::Context, prefix: &str) {
    let n = Names::new(prefix);
    for s in [n.jobs_stream(), n.results_stream(), n.dlq_stream()] {
        let _ = js.delete_stream(&s).await;
    }
}
