//! Prometheus metrics, served with `/healthz` and `/readyz` on `metrics.addr`.
//!
//! Counters are kept in a few small maps behind mutexes (one short lock per event, no
//! allocation once a label set has been seen) and rendered in the text exposition format.

use crate::health::{Health, State as BreakerState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// (provider, model, outcome) → (calls, microseconds)
type CallKey = (String, String, String);

#[derive(Default)]
pub struct Metrics {
    /// (priority, status, error_kind)
    jobs: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    /// (provider, model, outcome)
    calls: Mutex<BTreeMap<CallKey, (u64, u64)>>,
    /// (provider, model) → nano-dollars, for dashboards (cost_rows is the ledger)
    cost_nanousd: Mutex<BTreeMap<(String, String), u64>>,
    job_seconds_sum_us: AtomicU64,
    job_seconds_count: AtomicU64,
    retries: AtomicU64,
    republished: AtomicU64,
    pub in_flight: AtomicI64,
    pub ready: AtomicBool,
    /// Breakers and latency averages, read when `/metrics` is scraped.
    health: OnceLock<Arc<Health>>,
}

impl Metrics {
    pub fn job_finished(
        &self,
        priority: &'static str,
        status: &'static str,
        error_kind: &'static str,
        latency: Duration,
    ) {
        if let Ok(mut m) = self.jobs.lock() {
            *m.entry((priority, status, error_kind)).or_default() += 1;
        }
        self.job_seconds_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        self.job_seconds_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn call(
        &self,
        provider: &str,
        model: &str,
        outcome: &str,
        latency: Duration,
        cost_nanousd: u64,
    ) {
        if let Ok(mut m) = self.calls.lock() {
            let key = (provider.to_string(), model.to_string(), outcome.to_string());
            let e = m.entry(key).or_default();
            e.0 += 1;
            e.1 += latency.as_micros() as u64;
        }
        if cost_nanousd > 0 {
            if let Ok(mut m) = self.cost_nanousd.lock() {
                *m.entry((provider.to_string(), model.to_string()))
                    .or_default() += cost_nanousd;
            }
        }
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn republished(&self) {
        self.republished.fetch_add(1, Ordering::Relaxed);
    }

    /// Show `health`'s breakers and latency averages on `/metrics`.
    pub fn watch_health(&self, health: Arc<Health>) {
        let _ = self.health.set(health);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP switchyard_jobs_total Jobs that reached a terminal result.\n# TYPE switchyard_jobs_total counter\n");
        if let Ok(m) = self.jobs.lock() {
            for ((p, s, k), n) in m.iter() {
                let _ = writeln!(out, "switchyard_jobs_total{{priority=\"{p}\",status=\"{s}\",error_kind=\"{k}\"}} {n}");
            }
        }
        out.push_str("# HELP switchyard_provider_calls_total Provider calls by outcome.\n# TYPE switchyard_provider_calls_total counter\n");
        out.push_str("# HELP switchyard_provider_call_seconds_total Time spent in provider calls.\n# TYPE switchyard_provider_call_seconds_total counter\n");
        if let Ok(m) = self.calls.lock() {
            for ((p, mo, o), (n, us)) in m.iter() {
                let labels = format!(
                    "provider=\"{}\",model=\"{}\",outcome=\"{}\"",
                    esc(p),
                    esc(mo),
                    esc(o)
                );
                let _ = writeln!(out, "switchyard_provider_calls_total{{{labels}}} {n}");
                let _ = writeln!(
                    out,
                    "switchyard_provider_call_seconds_total{{{labels}}} {:.6}",
                    *us as f64 / 1e6
                );
            }
        }
        out.push_str("# HELP switchyard_cost_usd_total Spend by provider and model (approximate; cost_rows is exact).\n# TYPE switchyard_cost_usd_total counter\n");
        if let Ok(m) = self.cost_nanousd.lock() {
            for ((p, mo), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "switchyard_cost_usd_total{{provider=\"{}\",model=\"{}\"}} {:.9}",
                    esc(p),
                    esc(mo),
                    *n as f64 / 1e9
                );
            }
        }
        let sum = self.job_seconds_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let count = self.job_seconds_count.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP switchyard_job_seconds Worker-side time from pull to result.\n# TYPE switchyard_job_seconds summary\nswitchyard_job_seconds_sum {sum:.6}\nswitchyard_job_seconds_count {count}\n\
# HELP switchyard_retries_total Deliveries handed back for a later retry.\n# TYPE switchyard_retries_total counter\nswitchyard_retries_total {}\n\
# HELP switchyard_republished_total Stored results published again without a provider call.\n# TYPE switchyard_republished_total counter\nswitchyard_republished_total {}\n\
# HELP switchyard_jobs_in_flight Jobs held by this worker.\n# TYPE switchyard_jobs_in_flight gauge\nswitchyard_jobs_in_flight {}\n",
            self.retries.load(Ordering::Relaxed),
            self.republished.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        );
        if let Some(h) = self.health.get() {
            render_health(h, &mut out);
        }
        out
    }
}

fn render_health(h: &Health, out: &mut String) {
    let mut state = String::from("# HELP switchyard_breaker_state Circuit breaker per provider and model: 0 closed, 1 half-open, 2 open.\n# TYPE switchyard_breaker_state gauge\n");
    let mut moves = String::from("# HELP switchyard_breaker_transitions_total Circuit breaker state changes, by the state entered.\n# TYPE switchyard_breaker_transitions_total counter\n");
    let mut ewma = String::from("# HELP switchyard_provider_latency_ewma_seconds Moving average of successful calls' latency.\n# TYPE switchyard_provider_latency_ewma_seconds gauge\n");
    h.for_each(|provider, model, r| {
        let labels = format!("provider=\"{}\",model=\"{}\"", esc(provider), esc(model));
        let _ = writeln!(
            state,
            "switchyard_breaker_state{{{labels}}} {}",
            r.state as u8
        );
        for to in BreakerState::ALL {
            let _ = writeln!(
                moves,
                "switchyard_breaker_transitions_total{{{labels},to=\"{}\"}} {}",
                to.as_str(),
                r.transitions[to as usize]
            );
        }
        if let Some(e) = r.ewma {
            let _ = writeln!(
                ewma,
                "switchyard_provider_latency_ewma_seconds{{{labels}}} {:.6}",
                e.as_secs_f64()
            );
        }
    });
    out.push_str(&state);
    out.push_str(&moves);
    out.push_str(&ewma);
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until `stop`.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                ([("content-type", "text/plain; version=0.0.4")], m.render())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                }
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.job_finished("high", "failed", "invalid_job", Duration::from_millis(5));
        m.call(
            "openai",
            "gpt-4o-mini",
            "rate_limited",
            Duration::from_millis(30),
            0,
        );
        m.call(
            "openai",
            "gpt-4o-mini",
            "succeeded",
            Duration::from_millis(30),
            1500,
        );
        let text = m.render();
        assert!(text.contains(
            r#"switchyard_jobs_total{priority="high",status="failed",error_kind="invalid_job"} 1"#
        ));
        assert!(text.contains(r#"switchyard_provider_calls_total{provider="openai",model="gpt-4o-mini",outcome="rate_limited"} 1"#));
        assert!(text.contains(
            r#"switchyard_cost_usd_total{provider="openai",model="gpt-4o-mini"} 0.000001500"#
        ));
        assert!(!text.contains("switchyard_breaker_state"));
    }

    #[tokio::test(start_paused = true)]
    async fn renders_breakers_and_latency() {
        use crate::health::CallOutcome;
        use crate::providers::FailureClass;
        let cfg = crate::config::FileConfig::from_toml_with_env(
            include_str!("../../config/demo.toml"),
            "demo.toml",
            &[],
        )
        .unwrap();
        let h = Arc::new(Health::new(&cfg));
        let m = Metrics::default();
        m.watch_health(h.clone());
        let fail = CallOutcome::Failed {
            class: FailureClass::ServerError,
            retry_after: None,
        };
        for _ in 0..5 {
            h.record("openai", "gpt-4o", fail, Duration::ZERO);
        }
        h.record(
            "gemini",
            "gemini-2.0-flash",
            CallOutcome::Succeeded,
            Duration::from_millis(250),
        );
        let text = m.render();
        for line in [
            r#"switchyard_breaker_state{provider="openai",model="gpt-4o"} 2"#,
            r#"switchyard_breaker_state{provider="openai",model="gpt-4o-mini"} 0"#,
            r#"switchyard_breaker_transitions_total{provider="openai",model="gpt-4o",to="open"} 1"#,
            r#"switchyard_breaker_transitions_total{provider="openai",model="gpt-4o",to="closed"} 0"#,
            r#"switchyard_provider_latency_ewma_seconds{provider="gemini",model="gemini-2.0-flash"} 0.250000"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE switchyard_breaker_state gauge")
                .count(),
            1
        );
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(m
            .render()
            .contains(r#"switchyard_breaker_state{provider="openai",model="gpt-4o"} 1"#));
    }
}
