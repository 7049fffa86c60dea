//! Metrics read when `/metrics` is scraped rather than counted as they happen: the
//! circuit breakers and latency averages (kept by [`crate::health`]), readiness and the
//! jobs in flight. A breaker's state depends on the time it is read (an open breaker turns
//! half-open when its time is up), so it is read, not pushed.

use crate::health::{Health, State as BreakerState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

pub struct Live {
    in_flight: Arc<AtomicI64>,
    ready: Arc<AtomicBool>,
    /// The registry in use (a config reload hands over a new one).
    health: RwLock<Option<Arc<Health>>>,
}

/// One breaker as read at scrape time.
struct BreakerRow {
    provider: String,
    model: String,
    state: i64,
    transitions: [u64; 3],
    ewma: Option<f64>,
}

impl Live {
    pub fn new(in_flight: Arc<AtomicI64>, ready: Arc<AtomicBool>) -> Live {
        Live {
            in_flight,
            ready,
            health: RwLock::new(None),
        }
    }

    pub fn watch_health(&self, health: Arc<Health>) {
        match self.health.write() {
            Ok(mut g) => *g = Some(health),
            Err(e) => *e.into_inner() = Some(health),
        }
    }

    /// The registry in use now.
    pub fn health(&self) -> Option<Arc<Health>> {
        match self.health.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    fn breakers(&self) -> Vec<BreakerRow> {
        let mut rows = Vec::new();
        if let Some(h) = self.health() {
            h.for_each(|provider, model, r| {
                rows.push(BreakerRow {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    state: r.state as i64,
                    transitions: r.transitions,
                    ewma: r.ewma.map(|d| d.as_secs_f64()),
                })
            });
        }
        rows
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |v: i64| ConstGauge::new(v);
        gauge(self.in_flight.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
            "switchyard_jobs_in_flight",
            "Jobs held by this worker",
            None,
            MetricType::Gauge,
        )?)?;
        gauge(i64::from(self.ready.load(Ordering::Relaxed))).encode(encoder.encode_descriptor(
            "switchyard_worker_ready",
            "1 while the worker pulls (Postgres and NATS answer), else 0",
            None,
            MetricType::Gauge,
        )?)?;
        let rows = self.breakers();
        if rows.is_empty() {
            return Ok(());
        }
        let labels =
            |r: &BreakerRow| [("provider", r.provider.clone()), ("model", r.model.clone())];
        {
            let mut family = encoder.encode_descriptor(
                "switchyard_breaker_state",
                "Circuit breaker per provider and model: 0 closed, 1 half-open, 2 open",
                None,
                MetricType::Gauge,
            )?;
            for r in &rows {
                let l = labels(r);
                gauge(r.state).encode(family.encode_family(&l)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "switchyard_breaker_transitions",
                "Circuit breaker state changes, by the state entered",
                None,
                MetricType::Counter,
            )?;
            for r in &rows {
                for to in BreakerState::ALL {
                    let [p, m] = labels(r);
                    let l = [p, m, ("state", to.as_str().to_string())];
                    ConstCounter::new(r.transitions[to as usize])
                        .encode(family.encode_family(&l)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "switchyard_provider_latency_ewma_seconds",
            "Moving average of successful calls' latency",
            None,
            MetricType::Gauge,
        )?;
        for r in &rows {
            if let Some(e) = r.ewma {
                let l = labels(r);
                ConstGauge::new(e).encode(family.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}
