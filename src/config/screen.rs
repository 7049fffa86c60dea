//! `[screen]`: screening policies run on a job before it is routed (see `crate::screen`).
//! Each `[[screen.policies]]` entry matches on `tenant` and/or `feature` (the first entry
//! whose keys all match wins; an entry with neither matches every job), names the
//! checks it runs and, per finding kind, what to do: `allow`, `redact` (the text is
//! replaced by `[EMAIL]` … before routing), `{ restrict = { providers, models, region } }`
//! (only those candidates), or `refuse` (the job fails as `refused`, no call). No policy
//! configured: nothing is screened and nothing is spent on it. Reloaded with the file.

use super::{invalid, ConfigError};
use crate::job::names::is_valid_tenant;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// The finding kinds of the built-in checks, as `checks` and `actions` name them.
pub const CHECKS: &[&str] = &["email", "phone", "card", "iban", "injection", "deny"];

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreenConfig {
    pub policies: Vec<ScreenPolicy>,
}

/// One `[[screen.policies]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenPolicy {
    /// What `route.screen.policy` calls it.
    pub name: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub feature: Option<String>,
    /// The checks to run (each one of [`CHECKS`]).
    pub checks: Vec<String>,
    /// What each check's findings lead to; every check in `checks` needs one.
    pub actions: BTreeMap<String, ScreenAction>,
    /// The `deny` check's terms (whole words or phrases, any case).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// What a finding leads to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ScreenAction {
    /// `"allow"`, `"redact"` or `"refuse"`.
    Simple(SimpleAction),
    /// `{ restrict = { … } }`.
    Restrict { restrict: Restriction },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimpleAction {
    Allow,
    Redact,
    Refuse,
}

/// Which candidates a restricted job may go to: every key given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Restriction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl ScreenConfig {
    /// Check names, checks, actions and restrictions against the configured providers
    /// and models; the error names the field.
    pub fn validate(
        &self,
        providers: &HashSet<&str>,
        models: &HashSet<&str>,
    ) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let at = |k: &str| format!("screen.policies[{i}].{k}");
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("{:?}: empty or used twice", p.name),
                ));
            }
            if let Some(t) = p.tenant.as_deref().filter(|t| !is_valid_tenant(t)) {
                return Err(invalid(
                    at("tenant"),
                    format!("{t:?} is not a valid tenant"),
                ));
            }
            if p.checks.is_empty() {
                return Err(invalid(at("checks"), "names no check"));
            }
            for c in &p.checks {
                if !CHECKS.contains(&c.as_str()) {
                    return Err(invalid(
                        at("checks"),
                        format!("unknown check {c:?} (known: {})", CHECKS.join(", ")),
                    ));
                }
                if !p.actions.contains_key(c) {
                    return Err(invalid(at("actions"), format!("no action for check {c:?}")));
                }
            }
            for (kind, action) in &p.actions {
                if !p.checks.contains(kind) {
                    return Err(invalid(
                        at(&format!("actions.{kind}")),
                        "an action for a check the policy does not run",
                    ));
                }
                if let ScreenAction::Restrict { restrict: r } = action {
                    let field = at(&format!("actions.{kind}.restrict"));
                    if r.providers.is_none() && r.models.is_none() && r.region.is_none() {
                        return Err(invalid(
                            field,
                            "restricts nothing (give providers, models or region)",
                        ));
                    }
                    for (list, known, what) in [
                        (&r.providers, providers, "provider"),
                        (&r.models, models, "model"),
                    ] {
                        if let Some(bad) =
                            list.iter().flatten().find(|x| !known.contains(x.as_str()))
                        {
                            return Err(invalid(field, format!("unknown {what} {bad:?}")));
                        }
                    }
                }
            }
            if p.checks.iter().any(|c| c == "deny") && p.deny.iter().all(|t| t.trim().is_empty()) {
                return Err(invalid(
                    at("deny"),
                    "the deny check needs at least one term",
                ));
            }
        }
        Ok(())
    }
}
