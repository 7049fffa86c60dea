//! Provider health: a circuit breaker, a 429 cool-down, a latency average (EWMA) and a
//! latency histogram (quantiles for the hedge delay, [`latency`]) per provider+model, and
//! the latency-aware order of a job's candidates. The worker asks
//! [`Health::allow`] before each call and tells [`Health::record`] its outcome; the
//! breaker rules are in [`breaker`]. State changes are logged here (one line each) and
//! counted for `/metrics` (rendered from [`Health::for_each`]).
//!
//! The registry is built once, with one entry per configured model: a call locks one
//! small mutex and allocates nothing.

pub mod breaker;
pub mod latency;

pub use breaker::{Admit, CallOutcome, SkipReason, State};

use crate::config::{Config, Tier};
use crate::router::Candidate;
use breaker::{Breaker, Settings, Transition};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Entries = BTreeMap<String, BTreeMap<String, Arc<Mutex<Breaker>>>>;
use std::time::Duration;
use tokio::time::Instant;

/// A model counts as slow only when it is also this much slower than the fastest of its
/// tier: below that, the difference is noise (and not worth leaving the router's order).
pub const SLOW_MIN_GAP: Duration = Duration::from_millis(250);

pub struct Health {
    settings: Settings,
    latency_order: bool,
    slow_factor: f64,
    /// provider → model name → breaker.
    /// Shared with the registry a config reload builds, so a model that stays keeps
    /// its breaker and latency average.
    entries: BTreeMap<String, BTreeMap<String, Arc<Mutex<Breaker>>>>,
}

/// One entry as `/metrics` shows it.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub state: State,
    /// Transitions into each state, indexed by `State as usize`.
    pub transitions: [u64; 3],
    pub ewma: Option<Duration>,
}

impl Health {
    pub fn new(config: &Config) -> Health {
        let settings = Settings::from_config(&config.health);
        let now = Instant::now();
        let mut entries: Entries = BTreeMap::new();
        for m in &config.models {
            entries.entry(m.provider.clone()).or_default().insert(
                m.name.clone(),
                Arc::new(Mutex::new(Breaker::new(&settings, now))),
            );
        }
        Health {
            settings,
            latency_order: config.health.latency_order,
            slow_factor: config.health.slow_factor,
            entries,
        }
    }

    /// The registry for a reloaded `config`: the entries of models that stay are shared
    /// with this one (their state goes on); new models start closed; the breaker
    /// settings are the new ones.
    pub fn reconfigured(&self, config: &Config) -> Health {
        let mut next = Health::new(config);
        for (provider, models) in next.entries.iter_mut() {
            for (model, entry) in models.iter_mut() {
                if let Some(old) = self.entries.get(provider).and_then(|m| m.get(model)) {
                    *entry = old.clone();
                }
            }
        }
        next
    }

    fn entry(&self, provider: &str, model: &str) -> Option<&Mutex<Breaker>> {
        self.entries.get(provider)?.get(model).map(|e| &**e)
    }

    /// May `provider`/`model` be called now? An unknown pair always may.
    pub fn allow(&self, provider: &str, model: &str) -> Admit {
        let Some(e) = self.entry(provider, model) else {
            return Admit::Go;
        };
        let Ok(mut b) = e.lock() else {
            return Admit::Go;
        };
        let (admit, change) = b.allow(&self.settings, Instant::now());
        drop(b);
        if let Some(t) = change {
            announce(provider, model, &t);
        }
        admit
    }

    /// The outcome of a call admitted by [`Health::allow`] (`latency` counts for
    /// successes only).
    pub fn record(&self, provider: &str, model: &str, outcome: CallOutcome, latency: Duration) {
        let Some(e) = self.entry(provider, model) else {
            return;
        };
        let Ok(mut b) = e.lock() else {
            return;
        };
        let change = b.record(&self.settings, outcome, latency, Instant::now());
        drop(b);
        if let Some(t) = change {
            announce(provider, model, &t);
        }
    }

    /// A call to `provider`/`model` that was slow enough to be hedged and lost the race
    /// was cut after `at_least`: it counts in the latency histogram at that (a lower
    /// bound of its latency). Leaving such calls out would lower the quantile each time
    /// the tail is cut, and hedge ever sooner. The breaker and the average are not told.
    pub fn record_cut(&self, provider: &str, model: &str, at_least: std::time::Duration) {
        let Some(e) = self.entry(provider, model) else {
            return;
        };
        if let Ok(mut b) = e.lock() {
            b.record_cut(at_least, Instant::now());
        }
    }

    /// The `q` latency quantile (0..1) of `provider`/`model`'s successful calls over the
    /// last one to two minutes; `None` for an unknown pair or before
    /// [`latency::MIN_SAMPLES`] calls.
    pub fn quantile(&self, provider: &str, model: &str, q: f64) -> Option<std::time::Duration> {
        let mut b = self.entry(provider, model)?.lock().ok()?;
        b.quantile(q, Instant::now())
    }

    /// The candidates in the order to try them. For a job asking for `auto` or a tier
    /// (when `health.latency_order` is on): the router's order, except that a model
    /// slower than `slow_factor` × the fastest of its tier (and by at least
    /// [`SLOW_MIN_GAP`]) goes behind the rest of its
    /// tier (never behind a pricier tier), and models that would be skipped now (open,
    /// cooling down) go last, the one free soonest first. A named model keeps the
    /// router's order: the job chose it.
    pub fn order<'a>(&self, requested: &str, candidates: &'a [Candidate]) -> Vec<&'a Candidate> {
        let mut out: Vec<&Candidate> = candidates.iter().collect();
        if !self.latency_order
            || candidates.len() < 2
            || !(requested == "auto" || Tier::parse(requested).is_some())
        {
            return out;
        }
        let now = Instant::now();
        let looks: Vec<(Option<Instant>, Option<Duration>)> = candidates
            .iter()
            .map(|c| {
                self.entry(&c.model.provider, &c.model.name)
                    .and_then(|e| e.lock().ok())
                    .map_or((None, None), |b| {
                        (b.blocked_until(&self.settings, now), b.ewma())
                    })
            })
            .collect();
        let best_of = |tier: Tier| {
            candidates
                .iter()
                .zip(&looks)
                .filter(|(c, (blocked, _))| c.model.tier == tier && blocked.is_none())
                .filter_map(|(_, (_, ewma))| *ewma)
                .min()
        };
        let mut tiers: Vec<Tier> = Vec::new();
        let mut keys: Vec<(Option<Instant>, usize, bool, usize)> = Vec::new();
        for (i, (c, (blocked, ewma))) in candidates.iter().zip(&looks).enumerate() {
            let tier = c.model.tier;
            let group = match tiers.iter().position(|&t| t == tier) {
                Some(g) => g,
                None => {
                    tiers.push(tier);
                    tiers.len() - 1
                }
            };
            let slow = match (ewma, best_of(tier)) {
                (Some(e), Some(best)) => {
                    e.as_secs_f64() > self.slow_factor * best.as_secs_f64()
                        && *e >= best + SLOW_MIN_GAP
                }
                _ => false,
            };
            keys.push((*blocked, group, slow, i));
        }
        // Not blocked first (None sorts before Some), then by when they are free again.
        let mut idx: Vec<usize> = (0..candidates.len()).collect();
        idx.sort_by_key(|&i| {
            let (blocked, group, slow, i) = keys[i];
            (blocked.is_some(), blocked, group, slow, i)
        });
        out.clear();
        out.extend(idx.into_iter().map(|i| &candidates[i]));
        out
    }

    /// Every entry, in provider then model order (for `/metrics`).
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, Reading)) {
        let now = Instant::now();
        for (provider, models) in &self.entries {
            for (model, e) in models {
                let Ok(b) = e.lock() else { continue };
                let r = Reading {
                    state: b.state(now),
                    transitions: b.transitions(),
                    ewma: b.ewma(),
                };
                drop(b);
                f(provider, model, r);
            }
        }
    }

    /// The breakers that are not plainly closed now (open, half-open, or cooling down
    /// after a 429), in provider then model order: what a heartbeat tells the console.
    /// Read on the heartbeat's tick, never on a call's path.
    pub fn unwell(&self, now: Instant) -> Vec<(&str, &str, breaker::Look)> {
        let mut out = Vec::new();
        for (provider, models) in &self.entries {
            for (model, e) in models {
                let Ok(b) = e.lock() else { continue };
                let look = b.look(now);
                drop(b);
                if look.state != State::Closed || look.cool_until.is_some() {
                    out.push((provider.as_str(), model.as_str(), look));
                }
            }
        }
        out
    }
}

/// The log line of a state change (its counter is kept with the breaker).
fn announce(provider: &str, model: &str, t: &Transition) {
    let (from, to) = (t.from.as_str(), t.to.as_str());
    if t.to == State::Open {
        tracing::warn!(%provider, %model, from, to, reason = %t.reason, "circuit breaker opened");
    } else {
        tracing::info!(%provider, %model, from, to, reason = %t.reason, "circuit breaker state changed");
    }
}

#[cfg(test)]
mod tests;
