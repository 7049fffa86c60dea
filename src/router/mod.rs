//! Routing: from a job's `model` (auto, a tier, a name or alias, or `<provider>/<name>`)
//! to an ordered list of configured candidates, filtered by the job's provider allow/deny
//! list, region, context window and cost cap.

use crate::config::{Config, ModelConfig, ProviderKind, Tier};
use crate::cost;
use crate::job::{ErrorBody, ErrorKind, Job, ResponseFormat, Route, Task};
use std::collections::HashMap;
use std::sync::Arc;

/// One model a job may be sent to.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub model: Arc<ModelConfig>,
    /// `max_tokens` for this model (the job's, clamped to the model's output limit).
    pub max_tokens: u32,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    pub route: Route,
}

pub struct Router {
    models: Vec<Arc<ModelConfig>>,
    by_name: HashMap<String, usize>,
    regions: HashMap<String, Option<String>>,
    /// Providers that speak OpenAI's API (their models can be counted exactly).
    openai_like: std::collections::HashSet<String>,
    auto_tiers: Vec<Tier>,
    default_max_tokens: u32,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let models: Vec<Arc<ModelConfig>> = config.models.iter().cloned().map(Arc::new).collect();
        let mut by_name = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            by_name.insert(m.name.clone(), i);
            for a in &m.aliases {
                by_name.insert(a.clone(), i);
            }
        }
        Router {
            models,
            by_name,
            regions: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.region.clone()))
                .collect(),
            openai_like: config
                .providers
                .iter()
                .filter(|p| matches!(p.kind, ProviderKind::Openai))
                .map(|p| p.name.clone())
                .collect(),
            auto_tiers: config
                .routing
                .auto_tiers
                .iter()
                .filter_map(|t| Tier::parse(t))
                .collect(),
            default_max_tokens: config.limits.default_max_tokens,
        }
    }

    pub fn model(&self, name: &str) -> Option<&Arc<ModelConfig>> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    /// The ordered candidates for `job`, or the error that ends it without a call.
    pub fn plan(&self, job: &Job, input_tokens: u64) -> Result<Plan, ErrorBody> {
        let task = classify(job);
        let (resolved, tier, why) = self.resolve(&job.model)?;
        let requested = job.max_tokens.unwrap_or(self.default_max_tokens);

        let mut candidates = Vec::with_capacity(resolved.len());
        let (mut filtered, mut too_long, mut too_dear) = (0, 0, 0);
        for i in resolved {
            let m = &self.models[i];
            if !self.provider_allowed(job, &m.provider) {
                filtered += 1;
                continue;
            }
            // Near the window, count exactly where a tokenizer is public (OpenAI).
            let tokens = if input_tokens.saturating_mul(4) >= m.context_window.saturating_mul(3)
                && self.openai_like.contains(&m.provider)
            {
                crate::tokens::openai_input_tokens(job, &m.upstream)
            } else {
                input_tokens
            };
            if tokens >= m.context_window {
                too_long += 1;
                continue;
            }
            let max_tokens = m
                .max_output_tokens
                .map_or(requested, |cap| requested.min(cap));
            if let Some(cap) = job.max_cost_usd {
                if cost::worst_case(m, input_tokens, max_tokens) > cap {
                    too_dear += 1;
                    continue;
                }
            }
            candidates.push(Candidate {
                model: m.clone(),
                max_tokens,
            });
        }
        if candidates.is_empty() {
            let err = if too_long > 0 && too_dear == 0 {
                ErrorBody::new(
                    ErrorKind::ContextTooLong,
                    format!(
                        "about {input_tokens} input tokens exceed the context window of every eligible model"
                    ),
                )
            } else if too_dear > 0 {
                ErrorBody::new(
                    ErrorKind::CostCapExceeded,
                    format!(
                        "every eligible model could cost more than max_cost_usd {} for about {input_tokens} input and {requested} output tokens",
                        job.max_cost_usd.unwrap_or_default()
                    ),
                )
            } else {
                ErrorBody::new(
                    ErrorKind::NoRoute,
                    format!(
                        "no model for {:?} passes the job's providers/region filters ({filtered} excluded)",
                        job.model
                    ),
                )
            };
            return Err(err);
        }
        let names: Vec<&str> = candidates.iter().map(|c| c.model.name.as_str()).collect();
        Ok(Plan {
            route: Route {
                task: task.as_str().to_string(),
                tier: tier.map(|t| t.as_str().to_string()),
                reason: format!(
                    "{why}; ~{input_tokens} input tokens; chain {}",
                    names.join(" > ")
                ),
            },
            candidates,
        })
    }

    /// Model indexes for the requested model, in preference order.
    fn resolve(&self, requested: &str) -> Result<(Vec<usize>, Option<Tier>, String), ErrorBody> {
        if requested == "auto" {
            let mut out = Vec::new();
            for t in &self.auto_tiers {
                out.extend(self.tier_models(*t));
            }
            let tiers: Vec<&str> = self.auto_tiers.iter().map(|t| t.as_str()).collect();
            let first = self.auto_tiers.first().copied();
            return Ok((out, first, format!("auto: tiers {}", tiers.join(", "))));
        }
        if let Some(t) = Tier::parse(requested) {
            return Ok((self.tier_models(t), Some(t), format!("tier {requested}")));
        }
        if let Some((provider, name)) = requested.split_once('/') {
            return match self.by_name.get(name) {
                Some(&i) if self.models[i].provider == provider => {
                    let tier = self.models[i].tier;
                    Ok((vec![i], Some(tier), format!("pinned {requested}")))
                }
                _ => Err(ErrorBody::new(
                    ErrorKind::UnknownModel,
                    format!("model {requested:?}: no model {name:?} is configured for provider {provider:?}"),
                )),
            };
        }
        match self.by_name.get(requested) {
            Some(&i) => {
                let tier = self.models[i].tier;
                let mut out = vec![i];
                out.extend(self.tier_models(tier).into_iter().filter(|&j| j != i));
                Ok((out, Some(tier), format!("model {requested}, then its tier")))
            }
            None => Err(ErrorBody::new(
                ErrorKind::UnknownModel,
                format!(
                    "model {requested:?} is not auto, a tier, a configured model or alias, or <provider>/<model>"
                ),
            )),
        }
    }

    fn tier_models(&self, tier: Tier) -> Vec<usize> {
        (0..self.models.len())
            .filter(|&i| self.models[i].tier == tier)
            .collect()
    }

    fn provider_allowed(&self, job: &Job, provider: &str) -> bool {
        if let Some(f) = &job.providers {
            if f.allow
                .as_ref()
                .is_some_and(|a| !a.iter().any(|p| p == provider))
            {
                return false;
            }
            if f.deny.iter().any(|p| p == provider) {
                return false;
            }
        }
        match &job.region {
            None => true,
            Some(r) => self.regions.get(provider).and_then(|x| x.as_ref()) == Some(r),
        }
    }
}

/// The job's task; for `auto`, a first guess from its shape.
pub fn classify(job: &Job) -> Task {
    if job.task != Task::Auto {
        return job.task;
    }
    if matches!(
        job.response_format,
        Some(ResponseFormat::JsonObject) | Some(ResponseFormat::JsonSchema { .. })
    ) {
        return Task::Extraction;
    }
    if job.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Task::Generation;
    }
    let text = job.messages.last().map(|m| m.text()).unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    if lower.contains("summar") {
        Task::Summarization
    } else if lower.contains("classif") || lower.contains("categor") {
        Task::Classification
    } else if lower.contains("```") || lower.contains("fn ") || lower.contains("def ") {
        Task::Code
    } else {
        Task::Generation
    }
}

#[cfg(test)]
mod tests;
