//! `[[routing.rules]]`, checked into indexes at start, and the A/B split's stable hash.

use crate::config::{RouteRule, RuleHedge, Tier};
use crate::job::{Job, Task};

/// A configured rule with its models resolved to indexes.
#[derive(Debug)]
pub(super) struct Rule {
    /// The rule's position in `routing.rules`, for the route's reason.
    pub index: usize,
    tenant: Option<String>,
    feature: Option<String>,
    task: Option<Task>,
    pub target: Target,
    pub allow_upgrade: bool,
    /// The rule's `hedge`, when it says one.
    pub hedge: Option<RuleHedge>,
}

#[derive(Debug)]
pub(super) enum Target {
    /// Only `allow_upgrade`: the classifier still picks the tier.
    Classifier,
    Tier(Tier),
    Model(usize),
    Split(Split),
}

impl Rule {
    /// `None` when a model is unknown (config validation refuses that before we get here).
    pub fn new(
        index: usize,
        r: &RouteRule,
        by_name: &foldhash::HashMap<String, usize>,
    ) -> Option<Rule> {
        let target = if let Some(t) = r.tier {
            Target::Tier(t)
        } else if let Some(m) = &r.model {
            Target::Model(*by_name.get(m)?)
        } else if !r.split.is_empty() {
            let mut arms = Vec::with_capacity(r.split.len());
            let mut total = 0u64;
            for e in &r.split {
                total += u64::from(e.weight);
                arms.push((*by_name.get(&e.model)?, total));
            }
            Target::Split(Split { arms, total })
        } else {
            Target::Classifier
        };
        Some(Rule {
            index,
            tenant: r.tenant.clone(),
            feature: r.feature.clone(),
            task: r.task,
            target,
            allow_upgrade: r.allow_upgrade,
            hedge: r.hedge,
        })
    }

    /// Every match key the rule gives equals the job's (`task` as classified).
    pub fn matches(&self, job: &Job, task: Task) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == job.tenant)
            && self
                .feature
                .as_ref()
                .is_none_or(|f| job.feature.as_ref() == Some(f))
            && self.task.is_none_or(|t| t == task)
    }
}

/// Models with cumulative weights: arm `i` takes buckets `[prev, arms[i].1)`.
#[derive(Debug)]
pub(super) struct Split {
    arms: Vec<(usize, u64)>,
    total: u64,
}

impl Split {
    /// The model this job gets: the same for the same tenant and id, every time, on every
    /// worker.
    pub fn pick(&self, tenant: &str, id: &str) -> usize {
        let b = variant_bucket(tenant, id, self.total);
        self.arms
            .iter()
            .find(|&&(_, upto)| b < upto)
            .or(self.arms.last())
            .map_or(0, |&(i, _)| i)
    }

    pub fn models(&self) -> impl Iterator<Item = usize> + '_ {
        self.arms.iter().map(|&(i, _)| i)
    }
}

/// A job's bucket in `0..total`: FNV-1a over tenant, a separator and id, then a 64-bit
/// finaliser (MurmurHash3's fmix64) so the low bits are well mixed. Stable across
/// processes, versions and platforms; no allocation.
pub fn variant_bucket(tenant: &str, id: &str, total: u64) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in tenant.as_bytes().iter().chain(&[0xff]).chain(id.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h % total.max(1)
}
