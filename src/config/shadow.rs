//! `[shadow]`: shadow evaluation (see `crate::shadow` and DESIGN.md "Shadow evaluation").
//! Each `[[shadow.routes]]` entry names a route (tenant / feature / task / answering
//! model, each optional, all given must match; the first entry that matches wins), a
//! candidate model, the share of the route's succeeded jobs that also run on the
//! candidate (decided by a hash of tenant and id: a redelivery decides the same), and how
//! the two answers are compared. Nothing here changes what the producer gets. Off while
//! no route is listed. Routes, candidates and comparisons reload with the file; the
//! per-worker bounds (`max_concurrent`, `max_wait_ms`) need a restart.

use super::{invalid, ConfigError};
use crate::job::names::is_valid_tenant;
use crate::job::Task;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The judge's instructions unless a route gives its own.
pub const DEFAULT_JUDGE_PROMPT: &str = "You compare two answers to the same request. \
Say \"agree\" when they give the same facts, decisions and structure (wording may differ), \
\"disagree\" otherwise. Answer with the JSON object {\"verdict\": \"agree\"} or \
{\"verdict\": \"disagree\"} and nothing else.";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// Shadow calls in flight at once per worker (judge calls included); a sampled job
    /// that finds them all busy is dropped and counted, never queued.
    pub max_concurrent: usize,
    /// How long a shadow call may wait at the rate limiter before it is dropped
    /// (counted): shadow work never holds a provider's limit for long.
    pub max_wait_ms: u64,
    /// A tenant whose budgets are used at least this much (spent + reserved over limit,
    /// as last read) gets no shadow calls: they are charged to its budgets.
    pub pause_at_budget_share: f64,
    pub routes: Vec<ShadowRoute>,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            max_concurrent: 8,
            max_wait_ms: 30_000,
            pause_at_budget_share: 0.8,
            routes: Vec::new(),
        }
    }
}

/// `[[shadow.routes]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowRoute {
    /// The route's name in `shadow_evals`, `report eval` and the metrics' `route` label.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// The job's task as given (`auto` matches jobs that gave none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// The model that answered the job (its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The candidate: a model name, alias or `<provider>/<name>`.
    pub candidate: String,
    /// The share of matching jobs shadowed, 0..=1.
    pub sample_rate: f64,
    #[serde(default)]
    pub compare: CompareKind,
    /// `embedding`: the cosine from which the answers agree.
    #[serde(default = "default_min_similarity")]
    pub min_similarity: f64,
    /// `judge`: the judging model (name, alias or `<provider>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// `judge`: its instructions (the request and both answers follow them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_prompt: Option<String>,
}

fn default_min_similarity() -> f64 {
    0.9
}

/// How two answers are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareKind {
    /// The same text and tool calls, byte for byte.
    #[default]
    Exact,
    /// Both parse as JSON and are equal as values (key order, whitespace and number
    /// spelling aside); text that is not JSON is compared exactly.
    Json,
    /// The cosine of the answers' built-in embeddings is at least `min_similarity`.
    Embedding,
    /// A judge model says `agree`.
    Judge,
}

impl CompareKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareKind::Exact => "exact",
            CompareKind::Json => "json",
            CompareKind::Embedding => "embedding",
            CompareKind::Judge => "judge",
        }
    }
}

impl ShadowRoute {
    /// Every match key the route gives equals the job's.
    pub fn matches(&self, tenant: &str, feature: Option<&str>, task: Task, model: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.feature.as_deref().is_none_or(|f| Some(f) == feature)
            && self.task.is_none_or(|t| t == task)
            && self.model.as_deref().is_none_or(|m| m == model)
    }
}

impl ShadowConfig {
    /// The first route that matches a job of `tenant` / `feature` / `task` answered by
    /// `model`.
    pub fn route_for(
        &self,
        tenant: &str,
        feature: Option<&str>,
        task: Task,
        model: &str,
    ) -> Option<&ShadowRoute> {
        self.routes
            .iter()
            .find(|r| r.matches(tenant, feature, task, model))
    }

    /// Check every value, naming the one that is wrong. `models`: the configured model
    /// names and aliases, and `<provider>/<name>` for each model.
    pub fn validate(&self, models: &HashSet<String>) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(invalid("shadow.max_concurrent", "must be greater than 0"));
        }
        if !(self.pause_at_budget_share > 0.0 && self.pause_at_budget_share <= 1.0) {
            return Err(invalid(
                "shadow.pause_at_budget_share",
                format!("{} is not a fraction in (0, 1]", self.pause_at_budget_share),
            ));
        }
        let mut names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let f = |k: &str| format!("shadow.routes[{i}].{k}");
            let label_ok = !r.name.is_empty()
                && r.name.len() <= 64
                && r.name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c));
            if !label_ok {
                return Err(invalid(
                    f("name"),
                    format!("{:?} is not 1-64 of [A-Za-z0-9_.-]", r.name),
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(invalid(f("name"), format!("{:?} is listed twice", r.name)));
            }
            if let Some(t) = r.tenant.as_deref().filter(|t| !is_valid_tenant(t)) {
                return Err(invalid(
                    f("tenant"),
                    format!("{t:?} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$"),
                ));
            }
            if let Some(m) = r.model.as_deref().filter(|m| !models.contains(*m)) {
                return Err(invalid(
                    f("model"),
                    format!("{m:?} is not a configured model"),
                ));
            }
            if !models.contains(&r.candidate) {
                return Err(invalid(
                    f("candidate"),
                    format!("{:?} is not a configured model", r.candidate),
                ));
            }
            if !(0.0..=1.0).contains(&r.sample_rate) {
                return Err(invalid(
                    f("sample_rate"),
                    format!("{} is not a fraction in [0, 1]", r.sample_rate),
                ));
            }
            if !(r.min_similarity > 0.0 && r.min_similarity <= 1.0) {
                return Err(invalid(
                    f("min_similarity"),
                    format!("{} is not in (0, 1]", r.min_similarity),
                ));
            }
            match (r.compare, r.judge.as_deref()) {
                (CompareKind::Judge, None) => {
                    return Err(invalid(
                        f("judge"),
                        "compare = \"judge\" needs a judge model",
                    ))
                }
                (CompareKind::Judge, Some(j)) if !models.contains(j) => {
                    return Err(invalid(
                        f("judge"),
                        format!("{j:?} is not a configured model"),
                    ))
                }
                (k, Some(_)) if k != CompareKind::Judge => {
                    return Err(invalid(f("judge"), "only for compare = \"judge\""))
                }
                _ => {}
            }
            if r.judge_prompt
                .as_deref()
                .is_some_and(|p| p.trim().is_empty())
            {
                return Err(invalid(f("judge_prompt"), "must not be empty"));
            }
        }
        Ok(())
    }
}

impl super::FileConfig {
    /// Every way a config may name a model: names, aliases and `<provider>/<name>`.
    pub fn model_references(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        for m in &self.models {
            out.insert(m.name.clone());
            out.insert(format!("{}/{}", m.provider, m.name));
            out.extend(m.aliases.iter().cloned());
        }
        out
    }

    /// The model `reference` names: a name, an alias or `<provider>/<name>`.
    pub fn find_model(&self, reference: &str) -> Option<&super::ModelConfig> {
        let (provider, bare) = match reference.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, reference),
        };
        self.models.iter().find(|m| {
            (m.name == bare || (provider.is_none() && m.aliases.iter().any(|a| a == bare)))
                && provider.is_none_or(|p| m.provider == p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn load(extra: &str) -> Result<FileConfig, ConfigError> {
        let text = format!("{}\n{extra}", include_str!("../../config/demo.toml"));
        FileConfig::from_toml_with_env(&text, "demo.toml", &[])
    }

    #[test]
    fn a_route_loads_and_matches() {
        let cfg = load(
            r#"
[shadow]
max_concurrent = 2
[[shadow.routes]]
name = "acme-extract"
tenant = "acme"
task = "extraction"
candidate = "gemini/gemini-2.5-flash"
sample_rate = 0.25
compare = "json"
"#,
        )
        .unwrap();
        let r = &cfg.shadow.routes[0];
        assert_eq!(r.compare, CompareKind::Json);
        assert_eq!(r.min_similarity, 0.9);
        assert!(r.matches("acme", None, Task::Extraction, "gpt-4o-mini"));
        assert!(!r.matches("other", None, Task::Extraction, "gpt-4o-mini"));
        assert!(!r.matches("acme", None, Task::Auto, "gpt-4o-mini"));
        assert_eq!(
            cfg.find_model(&r.candidate).map(|m| m.name.as_str()),
            Some("gemini-2.5-flash")
        );
        assert!(cfg.find_model("openai/gemini-2.5-flash").is_none());
    }

    #[test]
    fn bad_routes_name_the_field() {
        for (toml, field) in [
            (
                "name = \"a b\"\ncandidate = \"gpt-4o\"\nsample_rate = 0.1",
                "name",
            ),
            (
                "name = \"a\"\ncandidate = \"nope\"\nsample_rate = 0.1",
                "candidate",
            ),
            (
                "name = \"a\"\ncandidate = \"gpt-4o\"\nsample_rate = 1.5",
                "sample_rate",
            ),
            (
                "name = \"a\"\ncandidate = \"gpt-4o\"\nsample_rate = 1\ncompare = \"judge\"",
                "judge",
            ),
            (
                "name = \"a\"\ncandidate = \"gpt-4o\"\nsample_rate = 1\njudge = \"gpt-4o\"",
                "judge",
            ),
            (
                "name = \"a\"\ncandidate = \"gpt-4o\"\nsample_rate = 1\nmodel = \"x\"",
                "model",
            ),
            (
                "name = \"a\"\ncandidate = \"gpt-4o\"\nsample_rate = 1\nmin_similarity = 0",
                "min_similarity",
            ),
        ] {
            let e = load(&format!("[[shadow.routes]]\n{toml}"))
                .expect_err(toml)
                .to_string();
            assert!(
                e.contains(&format!("shadow.routes[0].{field}")),
                "{toml}: {e}"
            );
        }
        let e = load(
            "[[shadow.routes]]\nname = \"a\"\ncandidate = \"gpt-4o\"\nsample_rate = 1\ncolour = 1",
        )
        .expect_err("unknown key")
        .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = load("[shadow]\nmax_concurrent = 0")
            .expect_err("0")
            .to_string();
        assert!(e.contains("shadow.max_concurrent"), "{e}");
    }
}
