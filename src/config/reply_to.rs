//! `[reply_to]`: the subjects jobs may have their results published to, with the
//! worker's own credentials. Patterns are checked here, at load, and compiled into the
//! [`ReplyToRules`] that job validation matches against.

use super::connections::string_or_list;
use super::{invalid, ConfigError};
use crate::job::names::is_valid_tenant;
use crate::job::{ReplyToRules, SubjectPattern};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplyToConfig {
    /// NATS subject patterns (`*` one token, `>` the rest) a job's `reply_to` must
    /// match, for every tenant without a list of its own. Default `["_INBOX.>"]`, the
    /// inboxes of NATS request-reply; `[">"]` allows any subject outside the prefix.
    #[serde(deserialize_with = "string_or_list")]
    pub allow: Vec<String>,
    /// Per-tenant lists; a tenant's list replaces `allow` for its jobs.
    pub tenants: Vec<TenantReplyTo>,
}

impl Default for ReplyToConfig {
    fn default() -> Self {
        ReplyToConfig {
            allow: vec!["_INBOX.>".into()],
            tenants: Vec::new(),
        }
    }
}

/// `[[reply_to.tenants]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantReplyTo {
    pub tenant: String,
    #[serde(deserialize_with = "string_or_list")]
    pub allow: Vec<String>,
}

impl ReplyToConfig {
    /// Check every pattern (naming the one that is wrong) and compile the lists.
    pub fn compile(&self, prefix: &str) -> Result<ReplyToRules, ConfigError> {
        let patterns = |field: &dyn Fn(usize) -> String, list: &[String]| {
            list.iter()
                .enumerate()
                .map(|(i, p)| SubjectPattern::parse(p, prefix).map_err(|e| invalid(field(i), e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let default = patterns(&|i| format!("reply_to.allow[{i}]"), &self.allow)?;
        let mut seen = HashSet::new();
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (t, entry) in self.tenants.iter().enumerate() {
            if !is_valid_tenant(&entry.tenant) {
                return Err(invalid(
                    format!("reply_to.tenants[{t}].tenant"),
                    format!(
                        "{:?} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$",
                        entry.tenant
                    ),
                ));
            }
            if !seen.insert(entry.tenant.as_str()) {
                return Err(invalid(
                    format!("reply_to.tenants[{t}].tenant"),
                    format!("{:?} is listed twice", entry.tenant),
                ));
            }
            let list = patterns(
                &|i| format!("reply_to.tenants[{t}].allow[{i}]"),
                &entry.allow,
            )?;
            tenants.push((entry.tenant.clone(), list));
        }
        Ok(ReplyToRules::new(default, tenants))
    }
}
