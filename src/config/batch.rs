//! `[batch]`: provider batch APIs for latency-tolerant jobs (see `crate::worker::batcher`).
//! Off unless enabled; when on, a job of one of `priorities` (or with `"batch": "prefer"`),
//! whose first candidate's provider has a batch API and whose model has batch prices, is
//! parked in Postgres, sent in a provider batch at the batch price, and answered when the
//! batch ends; what the batch does not answer within `deadline_s` runs live.

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Park and batch jobs at all. Batches already submitted are polled and answered
    /// whatever this says.
    pub enabled: bool,
    /// The priorities that go through batches (a job's `"batch": "never"` opts out,
    /// `"prefer"` opts in at any priority).
    pub priorities: Vec<String>,
    /// Jobs per provider batch, at most.
    pub max_jobs: usize,
    /// A batch is sent once it has `max_jobs`, or once its oldest job has waited this long.
    pub max_wait_s: u64,
    /// How often an open batch is asked for its status (and parked jobs looked at).
    pub poll_interval_s: u64,
    /// After this many seconds a batch is cancelled; what it did not answer runs live.
    pub deadline_s: u64,
    /// How long a worker holds a batch while it submits or fans it out; another worker
    /// takes it over after this (its holder died).
    pub lease_s: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            enabled: false,
            priorities: vec!["low".into()],
            max_jobs: 1000,
            max_wait_s: 60,
            poll_interval_s: 30,
            deadline_s: 86_400,
            lease_s: 60,
        }
    }
}

impl BatchConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, p) in self.priorities.iter().enumerate() {
            if crate::job::Priority::parse(p).is_none() {
                return Err(invalid(
                    format!("batch.priorities[{i}]"),
                    format!("{p:?} is not a priority (high, normal, low)"),
                ));
            }
        }
        if self.max_jobs == 0 || self.max_jobs > 50_000 {
            return Err(invalid("batch.max_jobs", "must be 1..=50000"));
        }
        if self.poll_interval_s == 0 {
            return Err(invalid("batch.poll_interval_s", "must be at least 1"));
        }
        if self.lease_s == 0 {
            return Err(invalid("batch.lease_s", "must be at least 1"));
        }
        if self.deadline_s == 0 {
            return Err(invalid("batch.deadline_s", "must be at least 1"));
        }
        Ok(())
    }

    /// Whether jobs of `priority` go through batches by default.
    pub fn takes(&self, priority: crate::job::Priority) -> bool {
        self.priorities.iter().any(|p| p == priority.as_str())
    }
}
