//! `[cache]`: the exact-match response cache (see `crate::cache`). Off unless enabled;
//! when on, a job whose request is deterministic enough (its temperature at most
//! `max_temperature`) is answered from an earlier identical request of the same tenant
//! for `ttl_s` seconds. `[[cache.rules]]` change the TTL or the threshold per tenant,
//! feature or routed model (the first rule whose keys all match wins; `ttl_s = 0` turns
//! the cache off for what it matches). Reloaded with the rest of the file (SIGHUP).
//!
//! `semantic = true` (off by default) also answers a paraphrase: the same request but
//! for the prompt's wording, when the prompt's embedding is at least `min_similarity`
//! (cosine) from a stored one's. Embeddings come from `[cache.embeddings]`: the built-in
//! hashed embedder (no download, no server) unless an OpenAI-compatible endpoint is
//! configured. Rules may turn it on or off and change `min_similarity` per scope.

use super::{invalid, ConfigError};
use crate::job::names::is_valid_tenant;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The largest TTL accepted: a year.
const MAX_TTL_S: u64 = 366 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Look up and store answers at all. Off by default: a deployment turns it on.
    pub enabled: bool,
    /// How long an answer is served, in seconds (from when it was stored).
    pub ttl_s: u64,
    /// Only jobs whose `temperature` is at most this are cached (a job without one is
    /// taken at the providers' default, 1).
    pub max_temperature: f64,
    /// Also answer paraphrases (the semantic cache). Off by default.
    pub semantic: bool,
    /// The cosine similarity from which a stored prompt's answer is served.
    pub min_similarity: f64,
    /// Where prompt embeddings come from.
    pub embeddings: EmbeddingsConfig,
    /// Per tenant / feature / routed model overrides; the first match wins.
    pub rules: Vec<CacheRule>,
}

/// `[cache.embeddings]`: the built-in embedder, or an OpenAI-compatible `/embeddings`
/// endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsConfig {
    pub kind: EmbeddingsKind,
    /// What the embedding call's cost row names as its provider; when it is a configured
    /// provider, that provider's rate limits admit the embedding calls.
    pub name: String,
    /// The API root, e.g. `https://api.openai.com/v1` (`/embeddings` is appended).
    pub base_url: Option<String>,
    /// The variable that holds the key (sent as `Authorization: Bearer`); none: no key.
    pub api_key_env: Option<String>,
    /// The upstream model id.
    pub model: String,
    /// Ask for this many dimensions (`text-embedding-3` models and later); the
    /// built-in embedder's size.
    pub dimensions: Option<u32>,
    /// USD per million input tokens, a decimal string: the embedding call's cost.
    pub input_per_mtok: Decimal,
    /// A call that has not answered by then is a miss.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingsKind {
    /// Hashed words and character n-grams (see `crate::cache::embed`).
    Builtin,
    /// `POST {base_url}/embeddings`, OpenAI's wire format.
    Openai,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        EmbeddingsConfig {
            kind: EmbeddingsKind::Builtin,
            name: "embeddings".into(),
            base_url: None,
            api_key_env: None,
            model: "text-embedding-3-small".into(),
            dimensions: None,
            input_per_mtok: Decimal::new(2, 2),
            timeout_ms: 2000,
        }
    }
}

impl EmbeddingsConfig {
    /// What names this embedder's vectors: vectors of two embedders are never compared.
    pub fn id(&self) -> String {
        match self.kind {
            EmbeddingsKind::Builtin => format!(
                "builtin-v1/{}",
                self.dimensions
                    .map_or(crate::cache::embed::BUILTIN_DIMS, |d| d as usize)
            ),
            EmbeddingsKind::Openai => format!(
                "openai/{}/{}/{}",
                self.base_url.as_deref().unwrap_or(""),
                self.model,
                self.dimensions.map_or_else(String::new, |d| d.to_string())
            ),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            ttl_s: 86_400,
            max_temperature: 0.3,
            semantic: false,
            min_similarity: 0.92,
            embeddings: EmbeddingsConfig::default(),
            rules: Vec::new(),
        }
    }
}

/// `[[cache.rules]]`: match keys (each optional, all given must match) and what changes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// The model name the job is routed to (its first candidate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// This scope's TTL; 0: nothing it matches is cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature: Option<f64>,
    /// The semantic cache on or off for this scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<bool>,
    /// This scope's similarity threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_similarity: Option<f64>,
}

/// What applies to one job: its TTL (0: not cached), temperature threshold, and the
/// semantic cache's switch and threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheScope {
    pub ttl_s: u64,
    pub max_temperature: f64,
    pub semantic: bool,
    pub min_similarity: f64,
}

impl CacheConfig {
    /// The TTL and threshold for a job of `tenant` / `feature` routed to `model`.
    pub fn scope(&self, tenant: &str, feature: Option<&str>, model: &str) -> CacheScope {
        let base = CacheScope {
            ttl_s: self.ttl_s,
            max_temperature: self.max_temperature,
            semantic: self.semantic,
            min_similarity: self.min_similarity,
        };
        let rule = self.rules.iter().find(|r| {
            r.tenant.as_deref().is_none_or(|t| t == tenant)
                && r.feature.as_deref().is_none_or(|f| Some(f) == feature)
                && r.model.as_deref().is_none_or(|m| m == model)
        });
        match rule {
            Some(r) => CacheScope {
                ttl_s: r.ttl_s.unwrap_or(base.ttl_s),
                max_temperature: r.max_temperature.unwrap_or(base.max_temperature),
                semantic: r.semantic.unwrap_or(base.semantic),
                min_similarity: r.min_similarity.unwrap_or(base.min_similarity),
            },
            None => base,
        }
    }

    /// Check every value, naming the one that is wrong. `models`: the configured model
    /// names a rule may match.
    pub fn validate(&self, models: &HashSet<&str>) -> Result<(), ConfigError> {
        check_ttl("cache.ttl_s", self.ttl_s)?;
        check_temperature("cache.max_temperature", self.max_temperature)?;
        check_similarity("cache.min_similarity", self.min_similarity)?;
        self.embeddings.validate()?;
        for (i, r) in self.rules.iter().enumerate() {
            let f = |k: &str| format!("cache.rules[{i}].{k}");
            if r.tenant.is_none() && r.feature.is_none() && r.model.is_none() {
                return Err(invalid(
                    f("tenant"),
                    "a rule must match on tenant, feature or model",
                ));
            }
            if r.ttl_s.is_none()
                && r.max_temperature.is_none()
                && r.semantic.is_none()
                && r.min_similarity.is_none()
            {
                return Err(invalid(
                    f("ttl_s"),
                    "a rule must set ttl_s, max_temperature, semantic or min_similarity",
                ));
            }
            if let Some(m) = r.min_similarity {
                check_similarity(&f("min_similarity"), m)?;
            }
            if let Some(t) = r.tenant.as_deref().filter(|t| !is_valid_tenant(t)) {
                return Err(invalid(
                    f("tenant"),
                    format!("{t:?} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$"),
                ));
            }
            if let Some(m) = r.model.as_deref().filter(|m| !models.contains(m)) {
                return Err(invalid(
                    f("model"),
                    format!("{m:?} is not a configured model"),
                ));
            }
            if let Some(ttl) = r.ttl_s {
                check_ttl(&f("ttl_s"), ttl)?;
            }
            if let Some(t) = r.max_temperature {
                check_temperature(&f("max_temperature"), t)?;
            }
        }
        Ok(())
    }
}

fn check_ttl(field: &str, ttl: u64) -> Result<(), ConfigError> {
    if ttl > MAX_TTL_S {
        return Err(invalid(
            field,
            format!("{ttl} is above {MAX_TTL_S} (a year)"),
        ));
    }
    Ok(())
}

fn check_similarity(field: &str, s: f64) -> Result<(), ConfigError> {
    if !(s > 0.0 && s <= 1.0) {
        return Err(invalid(field, format!("{s} is not in (0, 1]")));
    }
    Ok(())
}

impl EmbeddingsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let f = |k: &str| format!("cache.embeddings.{k}");
        if let Some(d) = self.dimensions {
            if !(8..=8192).contains(&d) {
                return Err(invalid(f("dimensions"), format!("{d} is not in 8..=8192")));
            }
        }
        if self.input_per_mtok < Decimal::ZERO {
            return Err(invalid(f("input_per_mtok"), "a price may not be negative"));
        }
        if self.timeout_ms == 0 {
            return Err(invalid(f("timeout_ms"), "must be above 0"));
        }
        if self.kind == EmbeddingsKind::Openai {
            match self.base_url.as_deref() {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                _ => {
                    return Err(invalid(
                        f("base_url"),
                        "kind = \"openai\" needs an http:// or https:// base_url",
                    ))
                }
            }
            if self.model.is_empty() {
                return Err(invalid(f("model"), "may not be empty"));
            }
        }
        Ok(())
    }
}

fn check_temperature(field: &str, t: f64) -> Result<(), ConfigError> {
    if !(0.0..=2.0).contains(&t) {
        return Err(invalid(field, format!("{t} is not in 0..2")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(tenant: Option<&str>, model: Option<&str>, ttl: Option<u64>) -> CacheRule {
        CacheRule {
            tenant: tenant.map(str::to_string),
            feature: None,
            model: model.map(str::to_string),
            ttl_s: ttl,
            ..CacheRule::default()
        }
    }

    #[test]
    fn the_first_matching_rule_sets_the_scope() {
        let c = CacheConfig {
            rules: vec![
                rule(Some("acme"), Some("gpt-4o"), Some(0)),
                rule(Some("acme"), None, Some(60)),
            ],
            ..CacheConfig::default()
        };
        assert_eq!(c.scope("acme", None, "gpt-4o").ttl_s, 0);
        assert_eq!(c.scope("acme", Some("x"), "gpt-4o-mini").ttl_s, 60);
        let other = c.scope("globex", None, "gpt-4o");
        assert_eq!(other.ttl_s, 86_400);
        assert_eq!(other.max_temperature, 0.3);
    }

    #[test]
    fn bad_values_are_named() {
        let models: HashSet<&str> = ["gpt-4o"].into();
        let bad = |c: CacheConfig| c.validate(&models).unwrap_err().to_string();
        let with = |r: CacheRule| CacheConfig {
            rules: vec![r],
            ..CacheConfig::default()
        };
        assert!(bad(CacheConfig {
            max_temperature: 2.5,
            ..CacheConfig::default()
        })
        .contains("cache.max_temperature"));
        assert!(bad(with(rule(None, None, Some(1)))).contains("cache.rules[0].tenant"));
        assert!(bad(with(rule(Some("Acme!"), None, Some(1)))).contains("cache.rules[0].tenant"));
        assert!(bad(with(rule(None, Some("gpt-9"), Some(1)))).contains("cache.rules[0].model"));
        assert!(bad(with(rule(Some("acme"), None, None))).contains("cache.rules[0].ttl_s"));
        assert!(bad(with(rule(Some("acme"), None, Some(MAX_TTL_S + 1)))).contains("ttl_s"));
        assert!(with(rule(Some("acme"), Some("gpt-4o"), Some(0)))
            .validate(&models)
            .is_ok());
    }
}
