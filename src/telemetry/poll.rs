//! The gauges no event updates: the JetStream backlog per priority (pending, ack pending,
//! the oldest message's age), the dead-letter stream's size, each budget's level, and
//! the provider batches' (jobs parked, batches open, the oldest one's age),
//! read every `metrics.poll_ms` by one small task per worker. Every worker reports the
//! same backlog: aggregate with `max`, not `sum`.

use super::metrics::{BudgetLabels, Metrics, PriorityLabels};
use crate::job::Priority;
use crate::queue::Names;
use async_nats::jetstream;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest a round may take before it is given up (NATS or Postgres away).
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Poller {
    pub metrics: Arc<Metrics>,
    pub js: jetstream::Context,
    pub names: Names,
    pub pool: PgPool,
    pub every: Duration,
}

impl Poller {
    /// Poll until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budgets: HashSet<BudgetLabels> = HashSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match tokio::time::timeout(ROUND_TIMEOUT, self.streams()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: reading the streams failed"),
                Err(_) => tracing::debug!("metrics: reading the streams timed out"),
            }
            match tokio::time::timeout(ROUND_TIMEOUT, self.budgets(&mut budgets)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: reading budgets failed"),
                Err(_) => tracing::debug!("metrics: reading budgets timed out"),
            }
            let levels = crate::store::batches::levels(&self.pool);
            match tokio::time::timeout(ROUND_TIMEOUT, levels).await {
                Ok(Ok((parked, open, age))) => self.metrics.batch.set_levels(parked, open, age),
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: reading batches failed"),
                Err(_) => tracing::debug!("metrics: reading batches timed out"),
            }
        }
    }

    async fn streams(&self) -> Result<(), async_nats::Error> {
        let m = &self.metrics;
        // Fetched with its info (one request each).
        let jobs = self.js.get_stream(self.names.jobs_stream()).await?;
        let first_seq = jobs.cached_info().state.first_sequence;
        let now_ns = i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
        for p in Priority::ALL {
            let labels = PriorityLabels {
                priority: p.as_str(),
            };
            let info = jobs.consumer_info(Names::consumer_name(p)).await?;
            let ack_pending = info.num_ack_pending as u64;
            m.pending
                .get_or_create(&labels)
                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
            m.ack_pending
                .get_or_create(&labels)
                .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
            // Nothing pending or in flight: none of this priority's messages is left.
            let age = if info.num_pending + ack_pending == 0 {
                0.0
            } else {
                let filter = format!("{}.jobs.{}.>", self.names.prefix, p.as_str());
                match jobs
                    .get_first_raw_message_by_subject(&filter, first_seq)
                    .await
                {
                    Ok(msg) => (now_ns - msg.time.unix_timestamp_nanos()).max(0) as f64 / 1e9,
                    // Acked (deleted) between the two reads.
                    Err(_) => 0.0,
                }
            };
            m.oldest_age.get_or_create(&labels).set(age);
        }
        let dlq = self.js.get_stream(self.names.dlq_stream()).await?;
        let dead = dlq.cached_info().state.messages;
        m.dlq_messages.set(i64::try_from(dead).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Set every budget's gauges; drop the gauges of budgets that are gone.
    async fn budgets(
        &self,
        shown: &mut HashSet<BudgetLabels>,
    ) -> Result<(), crate::store::StoreError> {
        let rows = crate::store::budgets::budget_levels(&self.pool).await?;
        let m = &self.metrics;
        let mut now_shown = HashSet::with_capacity(rows.len());
        for b in rows {
            let labels = BudgetLabels {
                tenant: b.tenant,
                feature: b.feature,
                period: b.period,
            };
            let used = b.spent_usd + b.reserved_usd;
            let ratio = if b.limit_usd > Decimal::ZERO {
                used / b.limit_usd
            } else {
                Decimal::ONE
            };
            let f = |d: Decimal| d.to_f64().unwrap_or(0.0);
            m.budget_used.get_or_create(&labels).set(f(ratio));
            m.budget_spent.get_or_create(&labels).set(f(b.spent_usd));
            m.budget_limit.get_or_create(&labels).set(f(b.limit_usd));
            now_shown.insert(labels);
        }
        for gone in shown.difference(&now_shown) {
            m.budget_used.remove(gone);
            m.budget_spent.remove(gone);
            m.budget_limit.remove(gone);
        }
        *shown = now_shown;
        Ok(())
    }
}
