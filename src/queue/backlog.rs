//! The backlog per priority and tenant, read from the jobs stream itself: its subject
//! counts (one `STREAM.INFO` with a subjects filter: a work queue deletes a message when
//! it is acked, so a count is the jobs waiting or in flight) and, per subject, its first
//! message's timestamp (the oldest job's age). Read by the metrics poller
//! (`switchyard_tenant_backlog_messages`, `switchyard_tenant_oldest_job_age_seconds`) and
//! by `switchyard queue`. Works with either consumer layout.

use super::tenants::{split_subject, subject_counts, DiscoverError};
use crate::job::Priority;
use async_nats::jetstream::stream::Stream;

/// Subjects past this many are summed under tenant `_other` (largest backlogs first), so
/// a stream with very many tenants costs one age lookup per listed subject at most.
pub const TENANTS_LISTED_MAX: usize = 1_000;

/// Jobs waiting (or in flight) for one priority and tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantBacklog {
    pub priority: Priority,
    /// The subject's tail after `<prefix>.jobs.<priority>.` (a tenant, unless the subject
    /// is malformed), or `_other` beyond [`TENANTS_LISTED_MAX`].
    pub tenant: String,
    pub messages: u64,
    /// Seconds since the oldest of them was published (0 when it was acked meanwhile).
    pub oldest_age_s: f64,
}

/// The backlog of every subject with messages, priority order (high first), then the
/// largest backlog first.
pub async fn read(stream: &Stream, prefix: &str) -> Result<Vec<TenantBacklog>, DiscoverError> {
    let first_seq = {
        let mut s = stream.clone();
        s.info()
            .await
            .map_err(|e| DiscoverError::Info(e.to_string()))?
            .state
            .first_sequence
    };
    let mut counts: Vec<(Priority, String, String, u64)> = subject_counts(stream, prefix)
        .await?
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .filter_map(|(subject, n)| {
            let (p, tenant) = split_subject(&subject, prefix)?;
            let tenant = tenant.to_string();
            Some((p, tenant, subject, n as u64))
        })
        .collect();
    counts.sort_by(|a, b| {
        (a.0.index(), std::cmp::Reverse(a.3), &a.1).cmp(&(
            b.0.index(),
            std::cmp::Reverse(b.3),
            &b.1,
        ))
    });
    let now_ns = i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
    let mut out: Vec<TenantBacklog> = Vec::with_capacity(counts.len().min(TENANTS_LISTED_MAX));
    for (i, (priority, tenant, subject, messages)) in counts.into_iter().enumerate() {
        if i >= TENANTS_LISTED_MAX {
            match out
                .iter_mut()
                .find(|b| b.priority == priority && b.tenant == "_other")
            {
                Some(b) => b.messages += messages,
                None => out.push(TenantBacklog {
                    priority,
                    tenant: "_other".into(),
                    messages,
                    oldest_age_s: 0.0,
                }),
            }
            continue;
        }
        let oldest_age_s = match stream
            .get_first_raw_message_by_subject(&subject, first_seq)
            .await
        {
            Ok(m) => (now_ns - m.time.unix_timestamp_nanos()).max(0) as f64 / 1e9,
            Err(_) => 0.0,
        };
        out.push(TenantBacklog {
            priority,
            tenant,
            messages,
            oldest_age_s,
        });
    }
    Ok(out)
}
