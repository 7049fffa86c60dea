//! Hedged calls (`[routing.hedge]`, `routing.hedge_high`, a rule's `hedge`): when a job's
//! call has not answered by its model's observed latency quantile, a second call goes to
//! the next candidate; the first answer wins (see `crate::worker` calls).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// How a route hedges: after the primary model's `after` latency quantile (observed over
/// the last one to two minutes), kept within `min_ms..=max_ms`, at most `max_extra` extra
/// calls per delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    /// The latency quantile of the model being called after which the hedge starts:
    /// `"p50"` … `"p99"`.
    pub after: Quantile,
    /// Never hedge sooner than this after the call started …
    pub min_ms: u64,
    /// … nor later than this.
    pub max_ms: u64,
    /// Extra calls a delivery may start (each one the next candidate, after another
    /// hedge delay); 0 turns hedging off.
    pub max_extra: u32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            after: Quantile(95),
            min_ms: 100,
            max_ms: 10_000,
            max_extra: 1,
        }
    }
}

/// The most extra calls one delivery may start.
pub const MAX_EXTRA: u32 = 3;

impl HedgeConfig {
    /// How long to wait for a call whose model's quantile is `observed` (none yet: no
    /// hedge).
    pub fn delay(&self, observed: Option<Duration>) -> Option<Duration> {
        let d = observed?;
        Some(d.clamp(
            Duration::from_millis(self.min_ms),
            Duration::from_millis(self.max_ms.max(self.min_ms)),
        ))
    }

    /// Why these settings cannot be used, naming the key (relative to `field`).
    pub fn check(&self, field: &str) -> Result<(), super::ConfigError> {
        if self.min_ms > self.max_ms {
            return Err(super::invalid(
                format!("{field}.min_ms"),
                format!("{} is above max_ms {}", self.min_ms, self.max_ms),
            ));
        }
        if self.max_extra > MAX_EXTRA {
            return Err(super::invalid(
                format!("{field}.max_extra"),
                format!("{} is above the most allowed, {MAX_EXTRA}", self.max_extra),
            ));
        }
        Ok(())
    }
}

/// A rule's `hedge`: `false` (never, even for high priority), `true` (with
/// `[routing.hedge]`), or its own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RuleHedge {
    On(bool),
    With(HedgeConfig),
}

/// A boolean or a table, with the table's own errors (an untagged enum would only say
/// that neither matched).
impl<'de> Deserialize<'de> for RuleHedge {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RuleHedge;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table { after, min_ms, max_ms, max_extra }")
            }

            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<RuleHedge, E> {
                Ok(RuleHedge::On(b))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RuleHedge, E> {
                // Environment overrides arrive as strings.
                match s.trim() {
                    "true" => Ok(RuleHedge::On(true)),
                    "false" => Ok(RuleHedge::On(false)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RuleHedge, A::Error> {
                HedgeConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RuleHedge::With)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A latency quantile, `p50` … `p99` (written so in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantile(u8);

impl Quantile {
    pub fn percent(self) -> u8 {
        self.0
    }

    /// The quantile as a fraction (0.95 for `p95`).
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Quantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl std::str::FromStr for Quantile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix('p')
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| (50..=99).contains(n))
            .map(Quantile)
            .ok_or_else(|| format!("{s:?} is not a latency quantile p50 … p99 (e.g. \"p95\")"))
    }
}

impl Serialize for Quantile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
