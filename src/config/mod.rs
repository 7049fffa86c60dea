//! Configuration: one TOML file, every key overridable from the environment.
//!
//! `SWITCHYARD_<SECTION>__<KEY>=value` overrides `[section] key` (e.g.
//! `SWITCHYARD_WORKER__MAX_IN_FLIGHT=500`); `SWITCHYARD_PROVIDERS__<NAME>__<KEY>` and
//! `SWITCHYARD_MODELS__<NAME>__<KEY>` override one provider's or model's key. `NATS_URL`
//! and `DATABASE_URL` override the URLs. Other variables, `SWITCHYARD_` ones without
//! `__` included, are not the config's (see `env`). A bad file or variable fails at
//! start naming the field or the variable.

mod batch;
mod cache;
mod connections;
mod console;
mod env;
mod hedge;
mod reply_to;
mod scheduling;
mod screen;
mod sections;
mod serve;
mod shadow;

pub use batch::BatchConfig;
pub use cache::{CacheConfig, CacheRule, CacheScope, EmbeddingsConfig, EmbeddingsKind};
use connections::mask_userinfo;
pub use connections::{
    redact_url, NatsConfig, NatsServer, PgSslMode, PostgresConfig, UrlCredentials,
};
pub use console::{ConsoleConfig, ConsoleRole, ConsoleToken};
pub use hedge::{HedgeConfig, Quantile, RuleHedge};
pub use reply_to::{ReplyToConfig, TenantReplyTo};
pub use scheduling::SchedulingConfig;
pub use screen::{Restriction, ScreenAction, ScreenConfig, ScreenPolicy, SimpleAction};
pub use sections::*;
pub use serve::{ApiKeyConfig, ServeConfig};
pub use shadow::{CompareKind, ShadowConfig, ShadowRoute, DEFAULT_JUDGE_PROMPT};

use crate::job::names::is_valid_prefix;
use crate::job::{ParseRules, ReplyToRules};
use rust_decimal::Decimal;
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {field}: {message}")]
    Invalid { field: String, message: String },
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub type Config = FileConfig;

impl FileConfig {
    /// Read `path` (or start from the defaults when `None`), apply the environment, check.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let name = path.map_or("<defaults>".to_string(), |p| p.display().to_string());
        Self::from_toml_with_env(&text, &name, &vars)
    }

    pub fn from_toml_with_env(
        text: &str,
        name: &str,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: name.to_string(),
                    message: mask_userinfo(&e.to_string()),
                })?;
        let applied = env::apply(&mut doc, vars)?;
        let cfg: FileConfig =
            serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
                let (path, inner) = (e.path().to_string(), e.inner().to_string());
                let message = mask_userinfo(&format!("{path}: {inner}"));
                match applied.iter().find(|a| a.explains(&path, &inner)) {
                    Some(a) => ConfigError::Env {
                        var: a.var.clone(),
                        message,
                    },
                    None => ConfigError::Parse {
                        path: name.to_string(),
                        message,
                    },
                }
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !is_valid_prefix(&self.nats.prefix) {
            return Err(invalid(
                "nats.prefix",
                format!(
                    "{:?} does not match ^[a-z][a-z0-9_-]{{0,31}}$",
                    self.nats.prefix
                ),
            ));
        }
        self.nats.validate()?;
        self.console.validate()?;
        self.postgres.validate()?;
        self.reply_to.compile(&self.nats.prefix)?;
        let w = &self.worker;
        for (field, v) in [
            ("worker.max_in_flight", w.max_in_flight as u64),
            ("worker.max_deliveries", w.max_deliveries as u64),
            ("worker.ack_wait_s", w.ack_wait_s),
            ("worker.commit_batch", w.commit_batch as u64),
            (
                "limits.max_payload_bytes",
                self.limits.max_payload_bytes as u64,
            ),
            ("limits.max_messages", self.limits.max_messages as u64),
            ("limits.max_tokens_cap", self.limits.max_tokens_cap as u64),
            (
                "limits.default_max_tokens",
                self.limits.default_max_tokens as u64,
            ),
            (
                "limits.max_response_bytes",
                self.limits.max_response_bytes as u64,
            ),
            ("nats.replicas", self.nats.replicas as u64),
            ("metrics.poll_ms", self.metrics.poll_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if w.priority_weights.contains(&0) {
            return Err(invalid(
                "worker.priority_weights",
                "every weight must be at least 1 (a 0 would starve that priority)",
            ));
        }
        let r = &self.ratelimit;
        if r.heartbeat_ms == 0 || r.member_timeout_ms < 2 * r.heartbeat_ms {
            return Err(invalid(
                "ratelimit.member_timeout_ms",
                "heartbeat_ms must be above 0 and member_timeout_ms at least twice it",
            ));
        }
        if w.max_waiting_at_limits == Some(0) {
            return Err(invalid(
                "worker.max_waiting_at_limits",
                "must be greater than 0",
            ));
        }
        if self.limits.default_max_tokens > self.limits.max_tokens_cap {
            return Err(invalid(
                "limits.default_max_tokens",
                "must not exceed limits.max_tokens_cap",
            ));
        }
        let mut names = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let f = |k: &str| format!("providers[{i}].{k}");
            if p.name.is_empty()
                || p.name.contains('/')
                || !p.name.bytes().all(|c| c.is_ascii_graphic())
            {
                return Err(invalid(
                    f("name"),
                    format!("{:?} is not a usable name", p.name),
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(invalid(f("name"), format!("{:?} is listed twice", p.name)));
            }
            match reqwest::Url::parse(&p.base_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(invalid(
                        f("base_url"),
                        format!("{:?} is not an http(s) URL", p.base_url),
                    ))
                }
            }
            if p.api_key_env.is_none() && p.kind != ProviderKind::OpenaiCompatible {
                return Err(invalid(
                    f("api_key_env"),
                    "required (the name of the variable that holds the key)",
                ));
            }
            if p.rpm == Some(0) || p.tpm == Some(0) {
                return Err(invalid(f("rpm"), "rpm and tpm must be greater than 0"));
            }
            if p.timeout_s == 0 || p.connect_timeout_s == 0 {
                return Err(invalid(f("timeout_s"), "timeouts must be greater than 0"));
            }
            if p.max_concurrent_calls == Some(0) {
                return Err(invalid(f("max_concurrent_calls"), "must be greater than 0"));
            }
            if p.http2_streams_per_connection == 0 {
                return Err(invalid(
                    f("http2_streams_per_connection"),
                    "must be greater than 0",
                ));
            }
            if p.http2_prior_knowledge == Some(true)
                && p.http_setting.is_some_and(|v| v != HttpVersion::Http2)
            {
                return Err(invalid(
                    f("http2_prior_knowledge"),
                    "deprecated alias of http = \"http2\"; it contradicts `http`: drop it",
                ));
            }
        }
        let mut model_names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let f = |k: &str| format!("models[{i}].{k}");
            if m.name.is_empty() || m.name.contains('/') || Tier::parse(&m.name).is_some() {
                return Err(invalid(
                    f("name"),
                    format!(
                        "{:?} is not usable (empty, holds '/', or is a tier)",
                        m.name
                    ),
                ));
            }
            for n in std::iter::once(&m.name).chain(&m.aliases) {
                if !model_names.insert(n.as_str()) || n == "auto" {
                    return Err(invalid(
                        f("name"),
                        format!("{n:?} is used twice or reserved"),
                    ));
                }
            }
            if !names.contains(m.provider.as_str()) {
                return Err(invalid(
                    f("provider"),
                    format!("{:?} is not a configured provider", m.provider),
                ));
            }
            if m.upstream.is_empty() {
                return Err(invalid(f("upstream"), "must not be empty"));
            }
            if m.context_window == 0 {
                return Err(invalid(f("context_window"), "must be greater than 0"));
            }
            for (k, v) in [
                ("input_per_mtok", Some(m.input_per_mtok)),
                ("output_per_mtok", Some(m.output_per_mtok)),
                ("cached_input_per_mtok", m.cached_input_per_mtok),
                ("cache_write_per_mtok", m.cache_write_per_mtok),
                ("batch_input_per_mtok", m.batch_input_per_mtok),
                ("batch_output_per_mtok", m.batch_output_per_mtok),
            ] {
                if v.is_some_and(|v| v < Decimal::ZERO) {
                    return Err(invalid(f(k), "prices must not be negative"));
                }
            }
        }
        self.validate_health()?;
        self.cache.validate(&model_names)?;
        self.batch.validate()?;
        self.shadow.validate(&self.model_references())?;
        self.serve.validate()?;
        self.screen.validate(&names, &model_names)?;
        self.scheduling.validate()?;
        self.validate_routing(&model_names)
    }

    fn validate_routing(&self, model_names: &HashSet<&str>) -> Result<(), ConfigError> {
        let r = &self.routing;
        for (i, t) in r.auto_tiers.iter().enumerate() {
            if Tier::parse(t).is_none() {
                return Err(invalid(
                    format!("routing.auto_tiers[{i}]"),
                    format!("{t:?} is not one of cheap, fast, balanced, premium"),
                ));
            }
        }
        if r.auto_tiers.is_empty() {
            return Err(invalid("routing.auto_tiers", "must name at least one tier"));
        }
        if !(r.budget_pressure > 0.0 && r.budget_pressure <= 1.0) {
            return Err(invalid(
                "routing.budget_pressure",
                format!("{} is not a fraction in (0, 1]", r.budget_pressure),
            ));
        }
        r.hedge.check("routing.hedge")?;
        for (i, rule) in r.rules.iter().enumerate() {
            let f = |k: &str| format!("routing.rules[{i}].{k}");
            if rule.tier.is_none()
                && rule.model.is_none()
                && rule.split.is_empty()
                && !rule.allow_upgrade
                && rule.hedge.is_none()
            {
                return Err(invalid(
                    f("tier"),
                    "a rule must set tier, model, split, allow_upgrade or hedge",
                ));
            }
            if let Some(RuleHedge::With(h)) = &rule.hedge {
                h.check(&f("hedge"))?;
            }
            let set = [
                rule.tier.is_some(),
                rule.model.is_some(),
                !rule.split.is_empty(),
            ];
            if set.iter().filter(|&&b| b).count() > 1 {
                return Err(invalid(
                    f("model"),
                    "tier, model and split are alternatives: set one",
                ));
            }
            if rule.task == Some(crate::job::Task::Auto) {
                return Err(invalid(f("task"), "\"auto\" is not a task to match"));
            }
            if let Some(m) = &rule.model {
                if !model_names.contains(m.as_str()) {
                    return Err(invalid(
                        f("model"),
                        format!("{m:?} is not a configured model"),
                    ));
                }
            }
            for (j, e) in rule.split.iter().enumerate() {
                if !model_names.contains(e.model.as_str()) {
                    return Err(invalid(
                        f(&format!("split[{j}].model")),
                        format!("{:?} is not a configured model", e.model),
                    ));
                }
                if e.weight == 0 {
                    return Err(invalid(
                        f(&format!("split[{j}].weight")),
                        "must be greater than 0",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_health(&self) -> Result<(), ConfigError> {
        let h = &self.health;
        for (field, v) in [
            ("health.window_s", h.window_s),
            ("health.min_calls", u64::from(h.min_calls)),
            (
                "health.consecutive_failures",
                u64::from(h.consecutive_failures),
            ),
            ("health.open_s", h.open_s),
            ("health.half_open_probes", u64::from(h.half_open_probes)),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if h.window_s > 3600 {
            return Err(invalid("health.window_s", "must be at most 3600"));
        }
        if h.max_open_s < h.open_s {
            return Err(invalid(
                "health.max_open_s",
                "must not be below health.open_s",
            ));
        }
        for (field, v) in [
            ("health.error_rate", h.error_rate),
            ("health.ewma_alpha", h.ewma_alpha),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(invalid(field, format!("{v} is not in (0, 1]")));
            }
        }
        if !(h.slow_factor >= 1.0 && h.slow_factor.is_finite()) {
            return Err(invalid("health.slow_factor", "must be at least 1"));
        }
        Ok(())
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    pub fn parse_rules(&self) -> ParseRules {
        ParseRules {
            prefix: self.nats.prefix.clone(),
            max_payload_bytes: self.limits.max_payload_bytes,
            max_messages: self.limits.max_messages,
            max_tokens_cap: self.limits.max_tokens_cap,
            providers: self.providers.iter().map(|p| p.name.clone()).collect(),
            // Checked by `validate`; were it to fail here, no reply_to would be allowed.
            reply_to: self
                .reply_to
                .compile(&self.nats.prefix)
                .unwrap_or_else(|_| ReplyToRules::new(Vec::new(), [])),
        }
    }
}

#[cfg(test)]
mod tests;
