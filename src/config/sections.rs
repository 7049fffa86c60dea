//! The TOML file's sections as serde structs. Unknown keys are refused, so a typo fails
//! at start instead of being silently ignored.

use super::{
    BatchConfig, CacheConfig, NatsConfig, PostgresConfig, ReplyToConfig, SchedulingConfig,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub reply_to: ReplyToConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub shadow: super::ShadowConfig,
    #[serde(default)]
    pub serve: super::ServeConfig,
    #[serde(default)]
    pub screen: super::ScreenConfig,
    #[serde(default)]
    pub console: super::ConsoleConfig,
    #[serde(default)]
    pub scheduling: SchedulingConfig,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs held at once by one worker (pulled only into free slots).
    pub max_in_flight: usize,
    /// Deliveries of one job before it fails as `providers_exhausted`.
    pub max_deliveries: u32,
    pub shutdown_grace_s: u64,
    /// JetStream ack wait; long calls send in-progress acks well before it runs out.
    pub ack_wait_s: u64,
    /// Share of free slots offered to each priority per round (high, normal, low).
    pub priority_weights: [u32; 3],
    /// Redelivery delay after every candidate failed: exponential from this base …
    pub retry_base_ms: u64,
    /// … up to this cap, with jitter; never below a provider's Retry-After.
    pub retry_max_ms: u64,
    /// Jobs per group commit, and how long a commit waits to fill up.
    pub commit_batch: usize,
    pub commit_linger_ms: u64,
    /// Pull nothing while more than this many held jobs are not calling a provider
    /// (waiting for a rate limit, mostly), so a backlog stays in JetStream. Unset: five
    /// seconds' worth of the providers' `rpm` (at least 32), or `max_in_flight` when no
    /// provider has one.
    pub max_waiting_at_limits: Option<usize>,
    /// A running job's lease: renewed every third of it while the job runs; a worker that
    /// died gives its jobs up this long after its last renewal.
    pub lease_s: u64,
    /// Also reload when the config file's content changes (checked every 2 s), besides
    /// SIGHUP: for a file that a deployment replaces (a Kubernetes ConfigMap).
    pub watch_config: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_in_flight: 2000,
            max_deliveries: 5,
            shutdown_grace_s: 30,
            ack_wait_s: 30,
            priority_weights: [8, 3, 1],
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            commit_batch: 256,
            commit_linger_ms: 2,
            max_waiting_at_limits: None,
            lease_s: 15,
            watch_config: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_payload_bytes: usize,
    pub max_messages: usize,
    pub max_tokens_cap: u32,
    /// `max_tokens` sent when a job gives none.
    pub default_max_tokens: u32,
    /// Largest provider response body read (success or error); a longer one fails the
    /// call as a server error.
    pub max_response_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 1_048_576,
            max_messages: 1000,
            max_tokens_cap: 32_768,
            default_max_tokens: 1024,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// How the workers share the providers' `rpm` / `tpm` (see `ratelimit`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Each worker announces itself (and its use of each limit) this often.
    pub heartbeat_ms: u64,
    /// A worker not heard from for this long is gone: its share goes to the others.
    pub member_timeout_ms: u64,
    /// Admissions count for 60 s plus this long, so that the time between admission and
    /// the request reaching the provider cannot push one into a provider's next window.
    pub margin_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            heartbeat_ms: 1000,
            member_timeout_ms: 3000,
            margin_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `/metrics`, `/healthz`, `/readyz`; empty to disable.
    pub addr: String,
    /// How often the backlog and budget gauges are read (JetStream consumer and stream
    /// info, the `budgets` table).
    pub poll_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: "127.0.0.1:9464".into(),
            poll_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Put the prompt (the job's messages) and the output text in each finished job's
    /// log line. Off by default: they may hold personal data.
    pub log_content: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The tiers `model: "auto"` may use (a set; order does not matter). A job whose task
    /// needs a tier outside it gets the nearest allowed tier above, else the highest below.
    pub auto_tiers: Vec<String>,
    /// Fraction of a budget above which `auto` prefers a cheaper tier (one below the
    /// task's required tier) for jobs that are not high priority.
    pub budget_pressure: f64,
    /// Per tenant / feature / task overrides for `auto` jobs; the first match wins.
    pub rules: Vec<RouteRule>,
    /// Hedge high-priority jobs (with `hedge`) unless their rule says otherwise. Off by
    /// default: a hedge is a second paid call.
    pub hedge_high: bool,
    /// The hedge settings of `hedge_high` and of rules with `hedge = true`.
    pub hedge: super::HedgeConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            auto_tiers: Tier::ALL.iter().map(|t| t.as_str().to_string()).collect(),
            budget_pressure: 0.8,
            rules: Vec::new(),
            hedge_high: false,
            hedge: super::HedgeConfig::default(),
        }
    }
}

/// Circuit breakers and latency tracking per provider+model (see `crate::health`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Breakers and 429 cool-downs on; when off, every call goes ahead (latency is still
    /// tracked).
    pub enabled: bool,
    /// The sliding window the error rate is computed over, in seconds.
    pub window_s: u64,
    /// Calls in the window before the error rate can open a breaker.
    pub min_calls: u32,
    /// Failed share of the window's calls (0..1] that opens a breaker.
    #[serde(deserialize_with = "number_or_string")]
    pub error_rate: f64,
    /// Failures in a row that open a breaker, whatever the volume.
    pub consecutive_failures: u32,
    /// How long a breaker stays open before a probe; doubled on each failed probe …
    pub open_s: u64,
    /// … up to this.
    pub max_open_s: u64,
    /// Calls let through at a time while half-open.
    pub half_open_probes: u32,
    /// Weight of the newest latency in the moving average (0..1].
    #[serde(deserialize_with = "number_or_string")]
    pub ewma_alpha: f64,
    /// Reorder a tier's models by latency for jobs asking for `auto` or a tier.
    pub latency_order: bool,
    /// A model slower than this many times the fastest of its tier goes behind the others.
    #[serde(deserialize_with = "number_or_string")]
    pub slow_factor: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            window_s: 30,
            min_calls: 10,
            error_rate: 0.5,
            consecutive_failures: 5,
            open_s: 15,
            max_open_s: 120,
            half_open_probes: 1,
            ewma_alpha: 0.2,
            latency_order: true,
            slow_factor: 3.0,
        }
    }
}

/// A float from a TOML number or, as environment overrides arrive, a string.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        I(i64),
        S(String),
    }
    match Num::deserialize(d)? {
        Num::F(f) => Ok(f),
        Num::I(i) => Ok(i as f64),
        Num::S(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
    }
}

/// `[[routing.rules]]`: when every `match` key given equals the job's, the rule sets the
/// tier, the model or an A/B split for an `auto` job, and may allow fallback to climb.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub feature: Option<String>,
    /// The job's task (as given, or as classified).
    #[serde(default)]
    pub task: Option<crate::job::Task>,
    /// Route to this tier instead of the classifier's.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Route to this model (name or alias) first, then its tier.
    #[serde(default)]
    pub model: Option<String>,
    /// Fallback may climb to pricier tiers (as it does for high-priority jobs).
    #[serde(default)]
    pub allow_upgrade: bool,
    /// A/B split between models: each job goes to one, chosen by a stable hash of its
    /// tenant and id, in proportion to the weights.
    #[serde(default)]
    pub split: Vec<SplitEntry>,
    /// Hedge this route's calls (never for low priority): `true` with `[routing.hedge]`,
    /// a table of its own settings, or `false` (not even for high priority).
    #[serde(default)]
    pub hedge: Option<super::RuleHedge>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    pub model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    OpenaiCompatible,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// The name of the environment variable that holds the key, never the key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Requests in any 60 s.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (input estimate + max output) in any 60 s.
    #[serde(default)]
    pub tpm: Option<u32>,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// Which HTTP to speak: `auto` (HTTP/2 when TLS ALPN offers it, else HTTP/1.1; an
    /// `http://` URL gets HTTP/1.1), `http1`, or `http2` (ALPN `h2` only for `https://`,
    /// cleartext h2c with prior knowledge for `http://`). See [`ProviderConfig::http`].
    #[serde(default, rename = "http")]
    pub http_setting: Option<HttpVersion>,
    /// Deprecated: `true` is `http = "http2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_prior_knowledge: Option<bool>,
    /// Calls to this provider in flight at once from this worker; a call over the cap
    /// waits for a free slot (not a failure). Unset: no cap but `worker.max_in_flight`.
    #[serde(default)]
    pub max_concurrent_calls: Option<usize>,
    /// With HTTP/2: calls sent on one connection before another is opened; the server's
    /// own limit (SETTINGS_MAX_CONCURRENT_STREAMS) is commonly 100 to 256. Above the
    /// server's limit the extra calls queue in the connection; below it only more
    /// connections are opened.
    #[serde(default = "default_http2_streams_per_connection")]
    pub http2_streams_per_connection: usize,
}

/// `[[providers]] http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    #[default]
    Auto,
    Http1,
    Http2,
}

impl ProviderConfig {
    /// The HTTP version setting, the deprecated `http2_prior_knowledge = true` read as
    /// `http2` (config validation refuses it beside another `http`).
    pub fn http(&self) -> HttpVersion {
        match (self.http_setting, self.http2_prior_knowledge) {
            (Some(v), _) => v,
            (None, Some(true)) => HttpVersion::Http2,
            (None, _) => HttpVersion::Auto,
        }
    }
}

fn default_http2_streams_per_connection() -> usize {
    100
}

fn default_timeout_s() -> u64 {
    120
}
fn default_connect_timeout_s() -> u64 {
    5
}

/// Model tiers, from least to most capable (and costly): the derived order is the
/// contract's `cheap` < `fast` < `balanced` < `premium`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Cheap,
    Fast,
    Balanced,
    Premium,
}

impl Tier {
    /// Every tier, cheapest first.
    pub const ALL: [Tier; 4] = [Tier::Cheap, Tier::Fast, Tier::Balanced, Tier::Premium];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Cheap => "cheap",
            Tier::Balanced => "balanced",
            Tier::Premium => "premium",
        }
    }
    /// 0 for `cheap` … 3 for `premium`.
    pub fn rank(self) -> usize {
        self as usize
    }
    /// The next tier down, if any.
    pub fn below(self) -> Option<Tier> {
        self.rank().checked_sub(1).map(|r| Tier::ALL[r])
    }
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "fast" => Some(Tier::Fast),
            "cheap" => Some(Tier::Cheap),
            "balanced" => Some(Tier::Balanced),
            "premium" => Some(Tier::Premium),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub provider: String,
    pub upstream: String,
    pub tier: Tier,
    pub context_window: u64,
    /// USD per million tokens, decimal strings.
    #[serde(with = "rust_decimal::serde::str")]
    pub input_per_mtok: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub output_per_mtok: Decimal,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub cached_input_per_mtok: Option<Decimal>,
    /// Price of input tokens written to the prompt cache (Anthropic); 1.25 × input
    /// when not given. See [`ModelConfig::cache_write_price`].
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub cache_write_per_mtok: Option<Decimal>,
    /// Batch-API prices (USD per million tokens): what a call sent in a provider batch
    /// costs (`[batch]`); a model without both is never batched.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub batch_input_per_mtok: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub batch_output_per_mtok: Option<Decimal>,
    /// Other names jobs may use for this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Largest `max_tokens` the model accepts (jobs asking more are clamped).
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
}

impl ModelConfig {
    /// Input tokens read from the prompt cache: `cached_input_per_mtok`, else the input
    /// price.
    pub fn cached_input_price(&self) -> Decimal {
        self.cached_input_per_mtok.unwrap_or(self.input_per_mtok)
    }

    /// Input tokens written to the prompt cache: `cache_write_per_mtok`, else 1.25 × the
    /// input price (Anthropic's 5-minute cache writes).
    pub fn cache_write_price(&self) -> Decimal {
        self.cache_write_per_mtok
            .unwrap_or_else(|| self.input_per_mtok.saturating_mul(Decimal::new(125, 2)))
    }
}
