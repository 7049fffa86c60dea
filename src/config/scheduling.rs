//! `[scheduling]`: fair share among the tenants of one priority (see `crate::queue::tenants`).
//! Off unless `fair = true`: then the workers pull each priority through one durable
//! consumer per tenant with jobs waiting (`jobs-<priority>-<tenant>`) instead of one per
//! priority (`jobs-<priority>`), in weighted round-robin (`weights`, 1 by default).

use super::{invalid, ConfigError};
use crate::job::names::is_valid_tenant;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// One consumer per (priority, tenant) and a weighted round-robin among tenants.
    /// Every worker of a pool must agree (the two consumer layouts cannot coexist on a
    /// work-queue stream; a worker removes the other layout's consumers at start).
    pub fair: bool,
    /// How often each worker reads the stream's subject counts to find tenants with jobs
    /// waiting (the longest a tenant that was idle waits before its first pull).
    pub discover_ms: u64,
    /// A tenant's consumer is still pulled (long-polled when idle) this long after its
    /// last job was seen; then the worker lets it go and the server deletes it after
    /// `idle_s` more seconds without pulls (its `inactive_threshold`).
    pub idle_s: u64,
    /// Weight per tenant (share of the pool within a priority); tenants not listed: 1.
    pub weights: BTreeMap<String, u32>,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            fair: false,
            discover_ms: 1000,
            idle_s: 60,
            weights: BTreeMap::new(),
        }
    }
}

impl SchedulingConfig {
    /// The weight of `tenant` (1 unless configured).
    pub fn weight(&self, tenant: &str) -> u32 {
        self.weights.get(tenant).copied().unwrap_or(1)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.discover_ms == 0 {
            return Err(invalid("scheduling.discover_ms", "must be greater than 0"));
        }
        if self.idle_s == 0 {
            return Err(invalid("scheduling.idle_s", "must be greater than 0"));
        }
        for (tenant, w) in &self.weights {
            if !is_valid_tenant(tenant) {
                return Err(invalid(
                    format!("scheduling.weights.{tenant}"),
                    "not a valid tenant (^[a-z0-9][a-z0-9_-]{0,63}$)",
                ));
            }
            if *w == 0 {
                return Err(invalid(
                    format!("scheduling.weights.{tenant}"),
                    "must be at least 1 (a 0 would starve the tenant)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_weights_are_refused_naming_the_tenant() {
        let mut s = SchedulingConfig::default();
        s.weights.insert("acme".into(), 0);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("scheduling.weights.acme"), "{e}");
        let mut s = SchedulingConfig::default();
        s.weights.insert("Acme".into(), 2);
        assert!(s.validate().is_err());
        let mut s = SchedulingConfig::default();
        s.weights.insert("acme".into(), 3);
        assert!(s.validate().is_ok());
        assert_eq!(s.weight("acme"), 3);
        assert_eq!(s.weight("other"), 1);
    }
}
