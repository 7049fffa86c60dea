//! Prometheus metrics (`prometheus-client`), served with `/healthz` and `/readyz` on
//! `metrics.addr`. The names are contract (dashboards and alert rules use them): see the
//! README's metrics table. Owns every metric and the finished-job log line, so a job's
//! log line and its metrics come from one place and cannot drift apart.
//!
//! Hot path: label sets are `&'static str` or `Arc<str>` built once per configured
//! provider+model ([`ModelMetrics`]), so recording allocates nothing for a label set
//! already seen; no lock is held across an await. Breakers, readiness and jobs in flight
//! are read when `/metrics` is scraped ([`super::live`]); backlog and budget gauges are
//! set by a poller ([`super::poll`]).

use super::live::Live;

mod shadow;
use crate::config::Config;
use crate::health::Health;
use crate::job::{Job, JobResult, Priority, Usage};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use foldhash::{HashMap, HashMapExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
pub use shadow::{EvalResult, ShadowMetrics};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The standard buckets of every `_seconds` histogram.
pub const SECONDS_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Label sets of `switchyard_spend_usd_total` kept apart; later ones count under `_other`.
pub const SPEND_LABEL_SETS_MAX: usize = 1_000;

/// A float counter or gauge (USD, seconds, ratios).
pub type FloatCounter = Counter<f64, AtomicU64>;
pub type FloatGauge = Gauge<f64, AtomicU64>;

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

fn seconds_family<L: Clone + std::hash::Hash + Eq>() -> Family<L, Histogram> {
    Family::new_with_constructor(seconds_histogram)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    priority: &'static str,
    status: &'static str,
    error_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    priority: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PriorityLabels {
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    provider: Arc<str>,
    model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: Arc<str>,
    model: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HedgeLabels {
    provider: Arc<str>,
    model: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: Arc<str>,
    model: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabels {
    tenant: String,
    feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    priority: &'static str,
    error_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BudgetLabels {
    pub tenant: String,
    pub feature: String,
    pub period: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    kind: &'static str,
    result: &'static str,
}

/// Which cache a lookup asked (`switchyard_cache_lookups_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Exact,
    Semantic,
}

impl CacheKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::Exact => "exact",
            CacheKind::Semantic => "semantic",
        }
    }
}

/// The handles of one provider+model, made once: recording a call finds them by name
/// and clones nothing but two `Arc`s.
struct ModelMetrics {
    labels: ModelLabels,
    input_tokens: Counter,
    cached_input_tokens: Counter,
    output_tokens: Counter,
    cost_usd: FloatCounter,
    limiter_wait: Histogram,
    /// `switchyard_hedged_calls_total` by result: won, lost.
    hedged: [Counter; 2],
}

/// One provider call, as [`Metrics::call`] records it.
pub struct CallEvent<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    /// `succeeded` or a failure class.
    pub outcome: &'static str,
    pub duration: Duration,
    /// What the provider billed (zeros when it reported nothing).
    pub usage: &'a Usage,
    pub cost_usd: Decimal,
    pub tenant: &'a str,
    pub feature: Option<&'a str>,
}

/// A job that reached its terminal result, as [`Metrics::job_finished`] records it.
pub struct FinishedJob<'a> {
    pub priority: Priority,
    pub result: &'a JobResult,
    /// The job as parsed (absent when the payload was refused).
    pub job: Option<&'a Job>,
    /// Deliveries so far, this one included.
    pub deliveries: u64,
    /// Publish → this worker took the message.
    pub queued: Duration,
    /// Publish → result published.
    pub latency: Duration,
}

/// outer name → inner name → `T` (tenant → feature, provider → model): found by two
/// `&str`s without allocating.
type TwoKeys<T> = HashMap<String, HashMap<String, T>>;

/// Spend per tenant and feature, with at most [`SPEND_LABEL_SETS_MAX`] label sets.
#[derive(Default)]
struct Spend {
    family: Family<SpendLabels, FloatCounter>,
    /// tenant → feature → counter (found by `&str`: no allocation once seen), and how
    /// many label sets there are.
    seen: RwLock<(TwoKeys<FloatCounter>, usize)>,
    /// `tenant="_other", feature="_other"`, made when the cap is first reached.
    other: OnceLock<FloatCounter>,
}

impl Spend {
    /// Beyond the cap an unseen label set costs a read lock, not the write lock.
    fn add(&self, tenant: &str, feature: &str, usd: f64) {
        if let Ok(seen) = self.seen.read() {
            match seen.0.get(tenant).and_then(|f| f.get(feature)) {
                Some(c) => {
                    c.inc_by(usd);
                    return;
                }
                None if seen.1 >= SPEND_LABEL_SETS_MAX => {
                    drop(seen);
                    self.other().inc_by(usd);
                    return;
                }
                None => {}
            }
        }
        let Ok(mut seen) = self.seen.write() else {
            return;
        };
        let (map, sets) = &mut *seen;
        if let Some(c) = map.get(tenant).and_then(|f| f.get(feature)) {
            c.inc_by(usd);
            return;
        }
        if *sets >= SPEND_LABEL_SETS_MAX {
            drop(seen);
            self.other().inc_by(usd);
            return;
        }
        let labels = SpendLabels {
            tenant: tenant.to_string(),
            feature: feature.to_string(),
        };
        let c = self.family.get_or_create_owned(&labels);
        c.inc_by(usd);
        map.entry(labels.tenant)
            .or_default()
            .insert(labels.feature, c);
        *sets += 1;
    }

    fn other(&self) -> &FloatCounter {
        self.other.get_or_init(|| {
            self.family.get_or_create_owned(&SpendLabels {
                tenant: "_other".into(),
                feature: "_other".into(),
            })
        })
    }
}

pub struct Metrics {
    registry: Registry,
    /// Jobs held by this worker (read by the pull gate, shown as `switchyard_jobs_in_flight`).
    pub in_flight: Arc<AtomicI64>,
    /// `/readyz` and `switchyard_worker_ready`.
    pub ready: Arc<AtomicBool>,
    live: Arc<Live>,
    log_content: bool,
    jobs: Family<JobLabels, Counter>,
    job_latency: Family<LatencyLabels, Histogram>,
    queue_wait: Family<PriorityLabels, Histogram>,
    call_duration: Family<CallLabels, Histogram>,
    calls: Family<CallLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, FloatCounter>,
    limiter_wait: Family<ModelLabels, Histogram>,
    hedged: Family<HedgeLabels, Counter>,
    spend: Spend,
    pub(super) pending: Family<PriorityLabels, Gauge>,
    pub(super) ack_pending: Family<PriorityLabels, Gauge>,
    pub(super) oldest_age: Family<PriorityLabels, FloatGauge>,
    pub(super) tenants: super::tenants::TenantMetrics,
    pub(super) dlq_messages: Gauge,
    dead_letters: Family<DeadLetterLabels, Counter>,
    pub(super) budget_used: Family<BudgetLabels, FloatGauge>,
    pub(super) budget_spent: Family<BudgetLabels, FloatGauge>,
    pub(super) budget_limit: Family<BudgetLabels, FloatGauge>,
    cache_lookups: Family<CacheLabels, Counter>,
    retries: Counter,
    republished: Counter,
    reloads: Family<ReloadLabels, Counter>,
    /// Shadow evaluation (`[shadow]`).
    pub shadow: ShadowMetrics,
    /// Provider batches (`super::batch`).
    pub batch: super::batch::BatchMetrics,
    /// provider → model → handles; the configured models are made at start.
    models: RwLock<TwoKeys<Arc<ModelMetrics>>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::build(false)
    }
}

impl Metrics {
    /// Metrics for a worker with `config`'s models (their handles made now) and
    /// `[logging] log_content`.
    pub fn new(config: &Config) -> Metrics {
        let m = Metrics::build(config.logging.log_content);
        for model in &config.models {
            m.model(&model.provider, &model.name);
        }
        m
    }

    fn build(log_content: bool) -> Metrics {
        let in_flight = Arc::new(AtomicI64::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live::new(in_flight.clone(), ready.clone()));
        let mut m = Metrics {
            registry: Registry::default(),
            in_flight,
            ready,
            live,
            log_content,
            jobs: Family::default(),
            job_latency: seconds_family(),
            queue_wait: seconds_family(),
            call_duration: seconds_family(),
            calls: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            limiter_wait: seconds_family(),
            hedged: Family::default(),
            spend: Spend::default(),
            pending: Family::default(),
            ack_pending: Family::default(),
            oldest_age: Family::default(),
            tenants: Default::default(),
            dlq_messages: Gauge::default(),
            dead_letters: Family::default(),
            budget_used: Family::default(),
            budget_spent: Family::default(),
            budget_limit: Family::default(),
            cache_lookups: Family::default(),
            retries: Counter::default(),
            republished: Counter::default(),
            reloads: Family::default(),
            shadow: ShadowMetrics::default(),
            batch: super::batch::BatchMetrics::default(),
            models: RwLock::new(HashMap::new()),
        };
        // Series that exist before anything happens, so dashboards show 0, not nothing.
        for p in Priority::ALL {
            let l = PriorityLabels {
                priority: p.as_str(),
            };
            m.pending.get_or_create_owned(&l);
            m.ack_pending.get_or_create_owned(&l);
            m.oldest_age.get_or_create_owned(&l);
        }
        for kind in [CacheKind::Exact, CacheKind::Semantic] {
            for result in ["hit", "miss"] {
                m.cache_lookups.get_or_create_owned(&CacheLabels {
                    kind: kind.as_str(),
                    result,
                });
            }
        }
        m.register();
        m
    }

    /// Names without `_total`: the encoder appends it to counters.
    fn register(&mut self) {
        let r = &mut self.registry;
        self.tenants.register(r);
        r.register(
            "switchyard_jobs",
            "Jobs that reached a terminal result (error_kind empty on success)",
            self.jobs.clone(),
        );
        r.register(
            "switchyard_job_latency_seconds",
            "Publish (JetStream timestamp) to result published",
            self.job_latency.clone(),
        );
        r.register(
            "switchyard_queue_wait_seconds",
            "Publish (JetStream timestamp) to the worker starting the delivery",
            self.queue_wait.clone(),
        );
        r.register(
            "switchyard_provider_call_duration_seconds",
            "One provider call, by outcome",
            self.call_duration.clone(),
        );
        r.register(
            "switchyard_provider_calls",
            "Provider calls, by outcome",
            self.calls.clone(),
        );
        r.register(
            "switchyard_tokens",
            "Tokens billed by providers; kind input counts every input token (cached ones included)",
            self.tokens.clone(),
        );
        r.register(
            "switchyard_cost_usd",
            "Spend by provider and model (cost_rows is the exact ledger)",
            self.cost.clone(),
        );
        r.register(
            "switchyard_spend_usd",
            "Spend by tenant and feature (feature empty when none; label sets past 1000 under _other)",
            self.spend.family.clone(),
        );
        r.register(
            "switchyard_consumer_pending_messages",
            "Messages not yet delivered to the priority's consumer (polled)",
            self.pending.clone(),
        );
        r.register(
            "switchyard_consumer_ack_pending_messages",
            "Messages delivered to the priority's consumer and not yet acked (polled)",
            self.ack_pending.clone(),
        );
        r.register(
            "switchyard_oldest_pending_job_age_seconds",
            "Age of the oldest message still in the priority's part of the jobs stream (0 when empty; polled)",
            self.oldest_age.clone(),
        );
        r.register(
            "switchyard_dlq_messages",
            "Messages in the dead-letter stream (polled)",
            self.dlq_messages.clone(),
        );
        r.register(
            "switchyard_dead_letters",
            "Dead letters this worker published",
            self.dead_letters.clone(),
        );
        r.register(
            "switchyard_limiter_wait_seconds",
            "Time a call waited at the worker's own rate limiter (0-wait admissions included)",
            self.limiter_wait.clone(),
        );
        r.register(
            "switchyard_hedged_calls",
            "Hedge calls (started because the call before them had not answered by its model's latency quantile) by result: won (its answer was used), lost",
            self.hedged.clone(),
        );
        r.register(
            "switchyard_budget_used_ratio",
            "(spent + reserved) / limit per configured budget (feature empty for tenant-wide; polled)",
            self.budget_used.clone(),
        );
        r.register(
            "switchyard_budget_spent_usd",
            "Spent in the budget's current period (polled)",
            self.budget_spent.clone(),
        );
        r.register(
            "switchyard_budget_limit_usd",
            "The budget's limit (polled)",
            self.budget_limit.clone(),
        );
        r.register(
            "switchyard_cache_lookups",
            "Response cache lookups by kind (exact, semantic) and result (hit, miss)",
            self.cache_lookups.clone(),
        );
        r.register(
            "switchyard_retries",
            "Deliveries handed back for a later retry",
            self.retries.clone(),
        );
        r.register(
            "switchyard_republished",
            "Stored results published again without a provider call",
            self.republished.clone(),
        );
        r.register(
            "switchyard_config_reloads",
            "Config reloads (SIGHUP or a changed file) by result: applied, refused",
            self.reloads.clone(),
        );
        self.shadow.register(r);
        self.batch.register(r);
        r.register_collector(Box::new(self.live.clone()));
    }

    /// The handles of `provider`/`model`, made on first use.
    fn model(&self, provider: &str, model: &str) -> Option<Arc<ModelMetrics>> {
        if let Ok(models) = self.models.read() {
            if let Some(m) = models.get(provider).and_then(|p| p.get(model)) {
                return Some(m.clone());
            }
        }
        let mut models = self.models.write().ok()?;
        let labels = ModelLabels {
            provider: Arc::from(provider),
            model: Arc::from(model),
        };
        let token = |kind| {
            self.tokens.get_or_create_owned(&TokenLabels {
                provider: labels.provider.clone(),
                model: labels.model.clone(),
                kind,
            })
        };
        let made = Arc::new(ModelMetrics {
            input_tokens: token("input"),
            cached_input_tokens: token("cached_input"),
            output_tokens: token("output"),
            cost_usd: self.cost.get_or_create_owned(&labels),
            limiter_wait: self.limiter_wait.get_or_create_owned(&labels),
            hedged: ["won", "lost"].map(|result| {
                self.hedged.get_or_create_owned(&HedgeLabels {
                    provider: labels.provider.clone(),
                    model: labels.model.clone(),
                    result,
                })
            }),
            labels,
        });
        models
            .entry(provider.to_string())
            .or_default()
            .insert(model.to_string(), made.clone());
        Some(made)
    }

    /// A delivery starts: how long its message waited since it was published.
    pub fn job_started(&self, priority: Priority, queued: Duration) {
        self.queue_wait
            .get_or_create(&PriorityLabels {
                priority: priority.as_str(),
            })
            .observe(queued.as_secs_f64());
    }

    /// A job reached its terminal result: its counters, latency, and its one log line
    /// (target `switchyard::job`; prompt and output only with `[logging] log_content`).
    pub fn job_finished(&self, f: FinishedJob<'_>) {
        let r = f.result;
        let priority = f.priority.as_str();
        let status = r.status.as_str();
        let error_kind = r.error.as_ref().map_or("", |e| e.kind.as_str());
        self.jobs
            .get_or_create(&JobLabels {
                priority,
                status,
                error_kind,
            })
            .inc();
        self.job_latency
            .get_or_create(&LatencyLabels { priority, status })
            .observe(f.latency.as_secs_f64());
        self.tenants.finished(f.priority, &r.tenant);
        let (prompt, output) = if self.log_content {
            (
                f.job.and_then(|j| serde_json::to_string(&j.messages).ok()),
                r.output.as_ref().and_then(|o| o.content.clone()),
            )
        } else {
            (None, None)
        };
        tracing::info!(
            target: "switchyard::job",
            id = r.id.as_str(),
            tenant = r.tenant.as_str(),
            feature = r.feature.as_deref().unwrap_or(""),
            priority,
            provider = r.provider.as_deref().unwrap_or(""),
            model = r.model.as_deref().unwrap_or(""),
            attempts = r.attempts.len(),
            deliveries = f.deliveries,
            input_tokens = r.usage.input_tokens,
            cached_input_tokens = r.usage.cached_input_tokens,
            output_tokens = r.usage.output_tokens,
            cost_usd = %r.cost_usd,
            latency_ms = f.latency.as_millis() as u64,
            queued_ms = f.queued.as_millis() as u64,
            cache = if r.cache_hit { "hit" } else { "miss" },
            outcome = status,
            error_kind,
            prompt,
            output,
            "job finished"
        );
    }

    /// One provider call: its duration, outcome, tokens and spend.
    pub fn call(&self, c: CallEvent<'_>) {
        let Some(m) = self.model(c.provider, c.model) else {
            return;
        };
        let labels = CallLabels {
            provider: m.labels.provider.clone(),
            model: m.labels.model.clone(),
            outcome: c.outcome,
        };
        self.calls.get_or_create(&labels).inc();
        self.call_duration
            .get_or_create(&labels)
            .observe(c.duration.as_secs_f64());
        m.input_tokens.inc_by(c.usage.input_tokens);
        m.cached_input_tokens.inc_by(c.usage.cached_input_tokens);
        m.output_tokens.inc_by(c.usage.output_tokens);
        if c.cost_usd > Decimal::ZERO {
            let usd = c.cost_usd.to_f64().unwrap_or(0.0);
            m.cost_usd.inc_by(usd);
            self.spend.add(c.tenant, c.feature.unwrap_or(""), usd);
        }
    }

    /// A call was admitted by the rate limiter after waiting `waited` (zero included).
    pub fn limiter_waited(&self, provider: &str, model: &str, waited: Duration) {
        if let Some(m) = self.model(provider, model) {
            m.limiter_wait.observe(waited.as_secs_f64());
        }
    }

    /// A hedge call (one started because the call before it was slow) ended: `won`
    /// when its answer was used, else lost (the other answered first, or it failed).
    pub fn hedged(&self, provider: &str, model: &str, won: bool) {
        if let Some(m) = self.model(provider, model) {
            m.hedged[usize::from(!won)].inc();
        }
    }

    pub fn dead_lettered(&self, priority: Priority, error_kind: &'static str) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                priority: priority.as_str(),
                error_kind,
            })
            .inc();
    }

    pub fn cache_lookup(&self, kind: CacheKind, hit: bool) {
        self.cache_lookups
            .get_or_create(&CacheLabels {
                kind: kind.as_str(),
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    pub fn republished(&self) {
        self.republished.inc();
    }

    /// A config reload was applied (true) or refused (false).
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Show `health`'s breakers and latency averages on `/metrics`.
    pub fn watch_health(&self, health: Arc<Health>) {
        self.live.watch_health(health);
    }

    /// The breaker registry in use now (the last one [`Metrics::watch_health`] was given).
    pub fn health(&self) -> Option<Arc<Health>> {
        self.live.health()
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
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
                (
                    [(
                        "content-type",
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    )],
                    m.render(),
                )
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
mod tests;
