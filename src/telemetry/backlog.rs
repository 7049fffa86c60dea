//! The JetStream backlog as operators read it: per priority, what is pending, what is
//! held by workers (ack pending) and how old the oldest message is; the dead-letter
//! stream's size (per tenant: [`crate::queue::backlog`]). The metrics poller ([`super::poll`])
//! and the console's overview read it the same way, here.

use crate::job::Priority;
use crate::queue::Names;
use async_nats::jetstream;
use futures::TryStreamExt;

/// One priority's part of the jobs stream.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityBacklog {
    pub priority: Priority,
    /// Not yet delivered to a worker.
    pub pending: u64,
    /// Delivered, not yet acked (held by workers).
    pub ack_pending: u64,
    /// Age of the oldest message still in this priority's part of the stream (0 when
    /// nothing is pending or held).
    pub oldest_age_s: f64,
}

/// The backlog per priority (high, normal, low) and the dead letters' count.
#[derive(Debug, Clone, PartialEq)]
pub struct Backlog {
    pub priorities: Vec<PriorityBacklog>,
    pub dead_letters: u64,
}

/// Read the backlog: one stream info, the consumers' info (one per priority, or with
/// `fair` (`[scheduling] fair`: a consumer per priority and tenant) the list of them,
/// summed per priority) and at most one direct read per priority, and the DLQ stream's
/// info.
pub async fn read(
    js: &jetstream::Context,
    names: &Names,
    fair: bool,
) -> Result<Backlog, async_nats::Error> {
    // Fetched with its info (one request each).
    let jobs = js.get_stream(names.jobs_stream()).await?;
    Ok(Backlog {
        priorities: priorities(&jobs, names, fair).await?,
        dead_letters: dead_letters(js, names).await?,
    })
}

/// Messages in the dead-letter stream.
pub async fn dead_letters(
    js: &jetstream::Context,
    names: &Names,
) -> Result<u64, async_nats::Error> {
    Ok(js
        .get_stream(names.dlq_stream())
        .await?
        .cached_info()
        .state
        .messages)
}

/// The backlog per priority of the jobs stream `jobs` (fetched with its info).
pub async fn priorities(
    jobs: &jetstream::stream::Stream,
    names: &Names,
    fair: bool,
) -> Result<Vec<PriorityBacklog>, async_nats::Error> {
    let first_seq = jobs.cached_info().state.first_sequence;
    let now_ns = i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
    let sums = if fair {
        Some(tenant_consumer_sums(jobs).await?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(3);
    for p in Priority::ALL {
        let (pending, ack_pending) = match &sums {
            Some(sums) => sums[p.index()],
            None => {
                let info = jobs.consumer_info(Names::consumer_name(p)).await?;
                (info.num_pending, info.num_ack_pending as u64)
            }
        };
        // Nothing pending or in flight: none of this priority's messages is left.
        let age = if pending + ack_pending == 0 {
            0.0
        } else {
            let filter = format!("{}.jobs.{}.>", names.prefix, p.as_str());
            match jobs
                .get_first_raw_message_by_subject(&filter, first_seq)
                .await
            {
                Ok(msg) => (now_ns - msg.time.unix_timestamp_nanos()).max(0) as f64 / 1e9,
                // Acked (deleted) between the two reads.
                Err(_) => 0.0,
            }
        };
        out.push(PriorityBacklog {
            priority: p,
            pending,
            ack_pending,
            oldest_age_s: age,
        });
    }
    Ok(out)
}

/// Pending and ack-pending summed over each priority's tenant consumers
/// (`jobs-<priority>-<tenant>`), indexed by [`Priority::index`].
async fn tenant_consumer_sums(
    jobs: &jetstream::stream::Stream,
) -> Result<[(u64, u64); 3], async_nats::Error> {
    let mut sums = [(0u64, 0u64); 3];
    let mut infos = jobs.consumers();
    while let Some(info) = infos.try_next().await? {
        for p in Priority::ALL {
            if info
                .name
                .strip_prefix(&Names::consumer_name(p))
                .is_some_and(|rest| rest.starts_with('-'))
            {
                sums[p.index()].0 += info.num_pending;
                sums[p.index()].1 += info.num_ack_pending as u64;
            }
        }
    }
    Ok(sums)
}
