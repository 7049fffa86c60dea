//! The gauges no event updates: the JetStream backlog per priority (pending, ack pending,
//! the oldest message's age; with `[scheduling] fair` summed over the priority's tenant
//! consumers) and per priority and tenant ([`crate::queue::backlog`]), the dead-letter
//! stream's size, each budget's level, and the provider batches' (jobs parked, batches
//! open, the oldest one's age),
//! read every `metrics.poll_ms` by one small task per worker. Every worker reports the
//! same backlog: aggregate with `max`, not `sum`.

use super::metrics::{BudgetLabels, Metrics, PriorityLabels};
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
    /// Per-tenant consumers (`[scheduling] fair`) instead of one per priority.
    pub fair: bool,
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
        m.tenants
            .set_backlog(&crate::queue::backlog::read(&jobs, &self.names.prefix).await?);
        for b in super::backlog::priorities(&jobs, &self.names, self.fair).await? {
            let labels = PriorityLabels {
                priority: b.priority.as_str(),
            };
            m.pending
                .get_or_create(&labels)
                .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
            m.ack_pending
                .get_or_create(&labels)
                .set(i64::try_from(b.ack_pending).unwrap_or(i64::MAX));
            m.oldest_age.get_or_create(&labels).set(b.oldest_age_s);
        }
        let dead_letters = super::backlog::dead_letters(&self.js, &self.names).await?;
        m.dlq_messages
            .set(i64::try_from(dead_letters).unwrap_or(i64::MAX));
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
