//! Metrics per priority and tenant: the backlog (set by the poller from the jobs stream,
//! [`crate::queue::backlog`]) and the jobs this worker finished (the share each tenant
//! gets: `sum by (tenant) (rate(switchyard_tenant_jobs_total[1m]))` over the pool). At
//! most [`TENANT_LABEL_SETS_MAX`] tenants get their own counter; the rest count under
//! `_other`.

use super::metrics::FloatGauge;
use crate::job::Priority;
use crate::queue::backlog::TenantBacklog;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

pub const TENANT_LABEL_SETS_MAX: usize = 1_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub priority: &'static str,
    pub tenant: String,
}

#[derive(Default)]
pub struct TenantMetrics {
    backlog: Family<TenantLabels, Gauge>,
    oldest_age: Family<TenantLabels, FloatGauge>,
    jobs: Family<TenantLabels, Counter>,
    /// tenant → its counter per priority (found by `&str`: no allocation once seen).
    seen: RwLock<HashMap<String, [Counter; 3]>>,
    /// The label sets the last poll set, to drop those gone since.
    shown: RwLock<HashSet<TenantLabels>>,
}

impl TenantMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "switchyard_tenant_backlog_messages",
            "Jobs in the stream per priority and tenant, waiting or in flight (polled; tenants past 1000 under _other)",
            self.backlog.clone(),
        );
        r.register(
            "switchyard_tenant_oldest_job_age_seconds",
            "Age of the oldest job in the stream per priority and tenant (polled)",
            self.oldest_age.clone(),
        );
        r.register(
            "switchyard_tenant_jobs",
            "Jobs this worker finished per priority and tenant (tenants past 1000 under _other)",
            self.jobs.clone(),
        );
    }

    /// A job of `tenant` at `p` reached its terminal result.
    pub fn finished(&self, p: Priority, tenant: &str) {
        if let Ok(seen) = self.seen.read() {
            if let Some(c) = seen.get(tenant) {
                c[p.index()].inc();
                return;
            }
        }
        let Ok(mut seen) = self.seen.write() else {
            return;
        };
        let key = if seen.len() >= TENANT_LABEL_SETS_MAX && !seen.contains_key(tenant) {
            "_other"
        } else {
            tenant
        };
        let counters = seen.entry(key.to_string()).or_insert_with(|| {
            Priority::ALL.map(|p| {
                self.jobs.get_or_create_owned(&TenantLabels {
                    priority: p.as_str(),
                    tenant: key.to_string(),
                })
            })
        });
        counters[p.index()].inc();
    }

    /// Set the backlog gauges to `now`; drop the label sets not in it.
    pub fn set_backlog(&self, now: &[TenantBacklog]) {
        let mut labels_now = HashSet::with_capacity(now.len());
        for b in now {
            let labels = TenantLabels {
                priority: b.priority.as_str(),
                tenant: b.tenant.clone(),
            };
            self.backlog
                .get_or_create(&labels)
                .set(i64::try_from(b.messages).unwrap_or(i64::MAX));
            self.oldest_age.get_or_create(&labels).set(b.oldest_age_s);
            labels_now.insert(labels);
        }
        if let Ok(mut shown) = self.shown.write() {
            for gone in shown.difference(&labels_now) {
                self.backlog.remove(gone);
                self.oldest_age.remove(gone);
            }
            *shown = labels_now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &TenantMetrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn finished_jobs_per_tenant_and_the_cap() {
        let m = TenantMetrics::default();
        m.finished(Priority::Normal, "acme");
        m.finished(Priority::Normal, "acme");
        m.finished(Priority::High, "globex");
        let out = text(&m);
        assert!(
            out.contains(r#"switchyard_tenant_jobs_total{priority="normal",tenant="acme"} 2"#),
            "{out}"
        );
        assert!(out.contains(r#"switchyard_tenant_jobs_total{priority="high",tenant="globex"} 1"#));
        for i in 0..TENANT_LABEL_SETS_MAX {
            m.finished(Priority::Low, &format!("t{i}"));
        }
        let out = text(&m);
        assert!(out.contains(r#"switchyard_tenant_jobs_total{priority="low",tenant="_other"} 2"#));
    }

    #[test]
    fn backlog_gauges_follow_the_last_poll() {
        let m = TenantMetrics::default();
        let b = |tenant: &str, messages| TenantBacklog {
            priority: Priority::Normal,
            tenant: tenant.into(),
            messages,
            oldest_age_s: 1.5,
        };
        m.set_backlog(&[b("acme", 7), b("globex", 3)]);
        let out = text(&m);
        assert!(out
            .contains(r#"switchyard_tenant_backlog_messages{priority="normal",tenant="acme"} 7"#));
        assert!(out.contains(
            r#"switchyard_tenant_oldest_job_age_seconds{priority="normal",tenant="globex"} 1.5"#
        ));
        m.set_backlog(&[b("acme", 1)]);
        let out = text(&m);
        assert!(!out.contains("globex"), "a tenant gone is dropped: {out}");
    }
}
