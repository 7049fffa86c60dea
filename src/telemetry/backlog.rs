//! The JetStream backlog as operators read it: per priority, what is pending, what is
//! held by workers (ack pending) and how old the oldest message is; per tenant, what the
//! jobs stream holds; the dead-letter stream's size. The metrics poller ([`super::poll`])
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

/// Read the backlog: one stream info, one consumer info and at most one direct read per
/// priority, and the DLQ stream's info.
pub async fn read(js: &jetstream::Context, names: &Names) -> Result<Backlog, async_nats::Error> {
    // Fetched with its info (one request each).
    let jobs = js.get_stream(names.jobs_stream()).await?;
    let first_seq = jobs.cached_info().state.first_sequence;
    let now_ns = i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
    let mut priorities = Vec::with_capacity(3);
    for p in Priority::ALL {
        let info = jobs.consumer_info(Names::consumer_name(p)).await?;
        let ack_pending = info.num_ack_pending as u64;
        // Nothing pending or in flight: none of this priority's messages is left.
        let age = if info.num_pending + ack_pending == 0 {
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
        priorities.push(PriorityBacklog {
            priority: p,
            pending: info.num_pending,
            ack_pending,
            oldest_age_s: age,
        });
    }
    let dlq = js.get_stream(names.dlq_stream()).await?;
    Ok(Backlog {
        priorities,
        dead_letters: dlq.cached_info().state.messages,
    })
}

/// Messages the jobs stream holds (pending or held), per (priority, tenant), from the
/// stream's subjects (no message read), sorted.
pub async fn per_tenant(
    js: &jetstream::Context,
    names: &Names,
) -> Result<Vec<(String, String, u64)>, async_nats::Error> {
    let jobs = js.get_stream(names.jobs_stream()).await?;
    let subjects: Vec<(String, usize)> = jobs
        .info_with_subjects(format!("{}.jobs.>", names.prefix))
        .await?
        .try_collect()
        .await?;
    let head = format!("{}.jobs.", names.prefix);
    let mut out: Vec<(String, String, u64)> = subjects
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .filter_map(|(s, n)| {
            let (priority, tenant) = s.strip_prefix(&head)?.split_once('.')?;
            Some((priority.to_string(), tenant.to_string(), n as u64))
        })
        .collect();
    out.sort();
    Ok(out)
}
