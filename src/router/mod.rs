//! Routing: the router decides, `worker/` executes. From a job's `model` (auto, a tier,
//! a name or alias, or `<provider>/<name>`) to an ordered list of configured candidates,
//! filtered by the job's provider allow/deny list, region, context window and cost cap.
//!
//! For `auto`, [`classify`] names the job's task and the lowest tier that serves it;
//! `[[routing.rules]]` (first match on tenant / feature / task) may set the tier, a model
//! or an A/B split instead. Within a tier, models are tried cheapest first. Fallback
//! never climbs to a pricier tier unless the job is high priority or its rule says
//! `allow_upgrade`; it may go one tier below the required one (still acceptable quality).
//! When the budget is above `routing.budget_pressure`, a job that is not high priority
//! starts one tier below its required tier (see README, "Routing").
//!
//! Screening (`crate::screen`, `[screen]`) runs first, through [`Router::screen`]: a job
//! its policy refused ends here as `refused`; a restricted one keeps only the candidates
//! its restriction allows; `route.screen` records what was done.

pub mod classify;
mod rules;

pub use classify::{classify, Classification};
pub use rules::variant_bucket;

use crate::config::{Config, HedgeConfig, ModelConfig, ProviderKind, RuleHedge, Tier};
use crate::cost;
use crate::job::{ErrorBody, ErrorKind, Job, Priority, Route};
use foldhash::{HashMap, HashMapExt, HashSet};
use rules::{Rule, Target};
use rust_decimal::Decimal;
use std::fmt::Write as _;
use std::sync::Arc;

/// One model a job may be sent to.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub model: Arc<ModelConfig>,
    /// `max_tokens` for this model (the job's, clamped to the model's output limit).
    pub max_tokens: u32,
    /// The input tokens counted for this model: the tokenizer's count where the router
    /// took it (an OpenAI model near its window), else the estimate it was given.
    pub input_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    pub route: Route,
    /// Hedge the calls (a second call when the first is slow), and how: never for low
    /// priority, nor with a single candidate.
    pub hedge: Option<HedgeConfig>,
}

impl Plan {
    /// The most any candidate could cost, with each one's own input count (a budget
    /// reservation's worst case).
    pub fn worst_case(&self) -> Decimal {
        self.hold(
            self.candidates
                .iter()
                .map(|c| cost::worst_case(&c.model, c.input_tokens, c.max_tokens)),
        )
    }

    /// What to hold against a budget, given each candidate's worst case: the dearest
    /// one, or with hedging the sum of the `1 + max_extra` dearest (that many calls may
    /// run at once).
    pub fn hold(&self, worst: impl Iterator<Item = Decimal>) -> Decimal {
        let calls = 1 + self.hedge.map_or(0, |h| h.max_extra as usize);
        if calls == 1 {
            return worst.max().unwrap_or_default();
        }
        let mut all: Vec<Decimal> = worst.collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.iter().take(calls).sum()
    }
}

/// What routing needs to know about a job besides the job itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteContext {
    /// From the subject: high-priority jobs may fall back to pricier tiers and are not
    /// moved down under budget pressure.
    pub priority: Priority,
    /// The largest used fraction (spent + reserved over limit) of the budgets that apply
    /// to the job, when known.
    pub budget_used_fraction: Option<f64>,
}

impl RouteContext {
    pub fn new(priority: Priority) -> RouteContext {
        RouteContext {
            priority,
            budget_used_fraction: None,
        }
    }
}

pub struct Router {
    models: Vec<Arc<ModelConfig>>,
    by_name: HashMap<String, usize>,
    regions: HashMap<String, Option<String>>,
    /// Providers that speak OpenAI's API (their models can be counted exactly).
    openai_like: HashSet<String>,
    /// Model indexes per tier (by [`Tier::rank`]), cheapest first.
    by_tier: [Vec<usize>; 4],
    /// Which tiers `auto` may use (by rank).
    auto_tiers: [bool; 4],
    rules: Vec<Rule>,
    budget_pressure: f64,
    default_max_tokens: u32,
    /// `routing.hedge_high` and `[routing.hedge]`.
    hedge_high: bool,
    hedge: HedgeConfig,
    /// `[screen]`: run before routing ([`Router::screen`]).
    screener: crate::screen::Screener,
}

/// The price a tier's models are ordered by: USD per million tokens at 3 input tokens
/// to 1 output token.
fn blended_price(m: &ModelConfig) -> Decimal {
    m.input_per_mtok * Decimal::from(3) + m.output_per_mtok
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
        let mut by_tier: [Vec<usize>; 4] = Default::default();
        for (i, m) in models.iter().enumerate() {
            by_tier[m.tier.rank()].push(i);
        }
        for list in &mut by_tier {
            // stable: equal prices keep the config's order
            list.sort_by_key(|&i| blended_price(&models[i]));
        }
        let mut auto_tiers = [false; 4];
        for t in config
            .routing
            .auto_tiers
            .iter()
            .filter_map(|t| Tier::parse(t))
        {
            auto_tiers[t.rank()] = true;
        }
        let rules = config
            .routing
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Rule::new(i, r, &by_name))
            .collect();
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
            by_tier,
            auto_tiers,
            rules,
            budget_pressure: config.routing.budget_pressure,
            default_max_tokens: config.limits.default_max_tokens,
            hedge_high: config.routing.hedge_high,
            hedge: config.routing.hedge,
            screener: crate::screen::Screener::new(&config.screen),
        }
    }

    /// Screening before routing: the job as it goes on when a `[screen]` policy applies
    /// to it (text redacted, [`crate::screen::ScreenRecord`] in `job.screen`), `None`
    /// when none does (then the job goes on as it is).
    pub fn screen(&self, job: &Job) -> Option<Job> {
        self.screener.screen(job)
    }

    pub fn model(&self, name: &str) -> Option<&Arc<ModelConfig>> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    /// The ordered candidates for `job`, whose input is about `input_tokens` tokens, or the
    /// error that ends it without a call.
    pub fn plan(&self, job: &Job, input_tokens: u64, ctx: RouteContext) -> Result<Plan, ErrorBody> {
        let screen = job.screen.as_deref();
        if let Some(s) = screen.filter(|s| s.refused()) {
            return Err(ErrorBody::new(ErrorKind::Refused, s.refusal_message()));
        }
        let class = classify(job, input_tokens);
        let mut reason = String::with_capacity(192);
        let (resolved, variant) = if job.model == "auto" {
            self.resolve_auto(job, &class, ctx, input_tokens, &mut reason)
        } else {
            let r = self.resolve(&job.model)?;
            let _ = write!(
                reason,
                "{}; {} ({}); ~{input_tokens} tokens",
                r.1,
                class.task.as_str(),
                class.signal
            );
            (r.0, None)
        };
        let requested = job.max_tokens.unwrap_or(self.default_max_tokens);

        let mut candidates = Vec::with_capacity(resolved.len());
        let (mut filtered, mut too_long, mut too_dear) = (0, 0, 0);
        for i in resolved {
            let m = &self.models[i];
            let region = self.regions.get(&m.provider).and_then(|r| r.as_deref());
            if !self.provider_allowed(job, &m.provider)
                || screen.is_some_and(|s| !s.allows(&m.name, &m.provider, region))
            {
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
                input_tokens: tokens,
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
                        "no model for {:?} passes the job's providers/region filters{} ({filtered} excluded)",
                        job.model,
                        if screen.is_some_and(|s| s.restrict.is_some()) { " and its screening restriction" } else { "" }
                    ),
                )
            };
            return Err(err);
        }
        reason.push_str("; chain ");
        for (i, c) in candidates.iter().enumerate() {
            if i > 0 {
                reason.push_str(" > ");
            }
            reason.push_str(&c.model.name);
        }
        let mut plan = Plan {
            hedge: self
                .hedge_for(job, class.task, ctx.priority)
                .filter(|h| h.max_extra > 0 && candidates.len() > 1),
            route: Route {
                task: class.task.as_str().to_string(),
                tier: candidates
                    .first()
                    .map(|c| c.model.tier.as_str().to_string()),
                reason: String::new(),
                variant: variant.map(str::to_string),
                screen: screen.cloned().map(Box::new),
            },
            candidates,
        };
        if let Some(h) = plan.hedge {
            // A job's cost cap holds for every call that may run at once.
            if job.max_cost_usd.is_some_and(|cap| plan.worst_case() > cap) {
                plan.hedge = None;
                reason.push_str("; no hedge: max_cost_usd");
            } else {
                let _ = write!(reason, "; hedge after {}", h.after);
            }
        }
        if let Some(s) = screen {
            let _ = write!(reason, "; screen {}: {}", s.policy, s.action);
        }
        plan.route.reason = reason;
        Ok(plan)
    }

    /// `auto`: a rule's target, or the classifier's tier (moved for `routing.auto_tiers`
    /// and budget pressure), then the fallback tiers. Writes the reason as it decides.
    fn resolve_auto(
        &self,
        job: &Job,
        class: &Classification,
        ctx: RouteContext,
        tokens: u64,
        reason: &mut String,
    ) -> (Vec<usize>, Option<&str>) {
        let _ = write!(
            reason,
            "{}; {}{}; {tokens} tokens",
            class.signal,
            class.task.as_str(),
            if class.translation {
                " (translation)"
            } else {
                ""
            },
        );
        if !class.bump.is_empty() {
            let _ = write!(reason, "; {}", class.bump);
        }
        let _ = write!(reason, " → {}", class.tier.as_str());
        let high = ctx.priority == Priority::High;
        let rule = self.rules.iter().find(|r| r.matches(job, class.task));
        let upgrade = high || rule.is_some_and(|r| r.allow_upgrade);
        let mut out = Vec::with_capacity(self.models.len());
        let mut variant = None;
        let (start, floor) = match rule.map(|r| (r, &r.target)) {
            Some((r, Target::Tier(t))) => {
                let _ = write!(reason, "; rule {}: tier {}", r.index, t.as_str());
                (*t, self.allowed_below(*t).unwrap_or(*t))
            }
            Some((r, Target::Model(i))) => {
                let t = self.models[*i].tier;
                let _ = write!(reason, "; rule {}: model {}", r.index, self.models[*i].name);
                out.push(*i);
                (t, self.allowed_below(t).unwrap_or(t))
            }
            Some((r, Target::Split(split))) => {
                let i = split.pick(&job.tenant, &job.id);
                let name = self.models[i].name.as_str();
                let _ = write!(reason, "; rule {}: A/B variant {name}", r.index);
                variant = Some(name);
                out.push(i);
                out.extend(split.models().filter(|&j| j != i));
                let t = self.models[i].tier;
                (t, self.allowed_below(t).unwrap_or(t))
            }
            _ => {
                if let Some(r) = rule {
                    let what = if r.allow_upgrade {
                        "allow_upgrade"
                    } else {
                        "hedge"
                    };
                    let _ = write!(reason, "; rule {}: {what}", r.index);
                }
                let required = self.allowed_tier(class.tier);
                if required != class.tier {
                    let _ = write!(
                        reason,
                        "; {} not in routing.auto_tiers → {}",
                        class.tier.as_str(),
                        required.as_str()
                    );
                }
                let floor = self.allowed_below(required).unwrap_or(required);
                match ctx.budget_used_fraction {
                    Some(f) if !high && f >= self.budget_pressure && floor != required => {
                        let _ = write!(
                            reason,
                            "; budget {:.0}% used ≥ {:.0}% → {}",
                            f * 100.0,
                            self.budget_pressure * 100.0,
                            floor.as_str()
                        );
                        (floor, floor)
                    }
                    _ => (required, floor),
                }
            }
        };
        if upgrade {
            let _ = write!(
                reason,
                "; may climb ({})",
                if high { "high priority" } else { "rule" }
            );
        }
        let push_tier = |t: Tier, out: &mut Vec<usize>| {
            for &i in &self.by_tier[t.rank()] {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        };
        push_tier(start, &mut out);
        if upgrade {
            for t in Tier::ALL
                .into_iter()
                .filter(|&t| t > start && self.auto_tiers[t.rank()])
            {
                push_tier(t, &mut out);
            }
        }
        for t in Tier::ALL.into_iter().rev() {
            if t < start && t >= floor && self.auto_tiers[t.rank()] {
                push_tier(t, &mut out);
            }
        }
        (out, variant)
    }

    /// How `job`'s calls hedge: as its rule says (`auto` jobs), else with
    /// `[routing.hedge]` for high priority when `routing.hedge_high`; never for low
    /// priority.
    fn hedge_for(
        &self,
        job: &Job,
        task: crate::job::Task,
        priority: Priority,
    ) -> Option<HedgeConfig> {
        if priority == Priority::Low {
            return None;
        }
        let rule = if job.model == "auto" {
            self.rules.iter().find(|r| r.matches(job, task))
        } else {
            None
        };
        match rule.and_then(|r| r.hedge) {
            Some(RuleHedge::On(true)) => Some(self.hedge),
            Some(RuleHedge::On(false)) => None,
            Some(RuleHedge::With(h)) => Some(h),
            None => (priority == Priority::High && self.hedge_high).then_some(self.hedge),
        }
    }

    /// The tier `auto` uses for a job that needs `t`: `t` when allowed, else the lowest
    /// allowed tier above it, else the highest allowed tier below it.
    fn allowed_tier(&self, t: Tier) -> Tier {
        Tier::ALL
            .into_iter()
            .find(|&x| x >= t && self.auto_tiers[x.rank()])
            .or_else(|| self.allowed_below(t))
            .unwrap_or(t)
    }

    /// The highest allowed tier below `t`.
    fn allowed_below(&self, t: Tier) -> Option<Tier> {
        Tier::ALL
            .into_iter()
            .rev()
            .find(|&x| x < t && self.auto_tiers[x.rank()])
    }

    /// Model indexes for an explicit `model` (not `auto`), in preference order.
    fn resolve(&self, requested: &str) -> Result<(Vec<usize>, String), ErrorBody> {
        if let Some(t) = Tier::parse(requested) {
            return Ok((self.by_tier[t.rank()].clone(), format!("tier {requested}")));
        }
        if let Some((provider, name)) = requested.split_once('/') {
            return match self.by_name.get(name) {
                Some(&i) if self.models[i].provider == provider => {
                    Ok((vec![i], format!("pinned {requested}")))
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
                out.extend(self.by_tier[tier.rank()].iter().filter(|&&j| j != i));
                Ok((out, format!("model {requested}, then its tier")))
            }
            None => Err(ErrorBody::new(
                ErrorKind::UnknownModel,
                format!(
                    "model {requested:?} is not auto, a tier, a configured model or alias, or <provider>/<model>"
                ),
            )),
        }
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

#[cfg(test)]
mod tests;
