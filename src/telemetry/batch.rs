//! Provider batch metrics (DESIGN.md "Provider batch APIs"; names in
//! `deploy/check/metrics.txt`): batches submitted and ended (by a status common to every
//! provider), jobs parked and how their batch left them (answered or sent live), how
//! long each ended batch took, and — polled from Postgres by [`super::poll`] — the jobs
//! parked now, the open batches and the age of the oldest one. The batcher
//! (`crate::worker::batcher`) and the parking step (`crate::worker::process::batched`)
//! record; this module owns the names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A batch answers within hours: buckets from a second to a day.
const BATCH_SECONDS_BUCKETS: [f64; 10] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 10_800.0, 21_600.0, 43_200.0, 86_400.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    provider: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    provider: String,
    result: &'static str,
}

/// How a provider batch ended, in words common to every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Ran to its end (OpenAI `completed`, Anthropic `ended`, Gemini `SUCCEEDED`).
    Completed,
    /// Its time ran out at the provider (`expired`, `BATCH_STATE_EXPIRED`).
    Expired,
    /// Cancelled (past our deadline): `cancelled`, `BATCH_STATE_CANCELLED`.
    Cancelled,
    /// Failed at the provider (`failed`, `BATCH_STATE_FAILED`).
    Failed,
    /// Never sent, or refused: its jobs ran live.
    Abandoned,
}

impl BatchEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchEnd::Completed => "completed",
            BatchEnd::Expired => "expired",
            BatchEnd::Cancelled => "cancelled",
            BatchEnd::Failed => "failed",
            BatchEnd::Abandoned => "abandoned",
        }
    }

    /// The end a provider's final status word names (anything unknown: failed).
    pub fn of_provider_status(status: &str) -> BatchEnd {
        match status
            .trim_start_matches("BATCH_STATE_")
            .to_ascii_lowercase()
            .as_str()
        {
            "completed" | "ended" | "succeeded" => BatchEnd::Completed,
            "expired" => BatchEnd::Expired,
            "cancelled" | "canceled" => BatchEnd::Cancelled,
            _ => BatchEnd::Failed,
        }
    }
}

pub struct BatchMetrics {
    submitted: Family<ProviderLabels, Counter>,
    ended: Family<EndedLabels, Counter>,
    parked: Family<ProviderLabels, Counter>,
    jobs: Family<JobLabels, Counter>,
    duration: Family<ProviderLabels, Histogram>,
    /// Jobs parked and not in a batch yet (polled).
    pub(super) parked_now: Gauge,
    /// Batches not done (polled).
    pub(super) open: Gauge,
    /// Age of the oldest batch not done, 0 when none (polled).
    pub(super) oldest_open_age: Gauge<f64, AtomicU64>,
}

impl Default for BatchMetrics {
    fn default() -> Self {
        BatchMetrics {
            submitted: Family::default(),
            ended: Family::default(),
            parked: Family::default(),
            jobs: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(BATCH_SECONDS_BUCKETS)),
            parked_now: Gauge::default(),
            open: Gauge::default(),
            oldest_open_age: Gauge::default(),
        }
    }
}

impl BatchMetrics {
    /// Names without `_total`: the encoder appends it to counters.
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "switchyard_batches_submitted",
            "Provider batches sent (one per batch, also when a new worker sends a batch again)",
            self.submitted.clone(),
        );
        r.register(
            "switchyard_batches_ended",
            "Provider batches ended, by status: completed, expired, cancelled, failed, abandoned (never sent or refused)",
            self.ended.clone(),
        );
        r.register(
            "switchyard_batch_jobs_parked",
            "Jobs parked for a provider batch",
            self.parked.clone(),
        );
        r.register(
            "switchyard_batch_jobs",
            "Jobs a provider batch left, by result: answered (at the batch price), live (sent live)",
            self.jobs.clone(),
        );
        r.register(
            "switchyard_batch_duration_seconds",
            "Creation to end of a provider batch",
            self.duration.clone(),
        );
        r.register(
            "switchyard_batch_parked_jobs",
            "Jobs parked and not yet in a batch (polled)",
            self.parked_now.clone(),
        );
        r.register(
            "switchyard_batches_open",
            "Provider batches not done (polled)",
            self.open.clone(),
        );
        r.register(
            "switchyard_oldest_open_batch_age_seconds",
            "Age of the oldest provider batch not done, 0 when none (polled)",
            self.oldest_open_age.clone(),
        );
    }

    fn provider(provider: &str) -> ProviderLabels {
        ProviderLabels {
            provider: provider.to_string(),
        }
    }

    pub fn submitted(&self, provider: &str) {
        self.submitted
            .get_or_create(&Self::provider(provider))
            .inc();
    }

    pub fn parked(&self, provider: &str) {
        self.parked.get_or_create(&Self::provider(provider)).inc();
    }

    /// A batch ended: how, after how long, and how many of its jobs were answered.
    pub fn ended(&self, provider: &str, end: BatchEnd, secs: f64, answered: u64, live: u64) {
        self.ended
            .get_or_create(&EndedLabels {
                provider: provider.to_string(),
                status: end.as_str(),
            })
            .inc();
        if end != BatchEnd::Abandoned {
            self.duration
                .get_or_create(&Self::provider(provider))
                .observe(secs);
        }
        for (result, n) in [("answered", answered), ("live", live)] {
            if n > 0 {
                self.jobs
                    .get_or_create(&JobLabels {
                        provider: provider.to_string(),
                        result,
                    })
                    .inc_by(n);
            }
        }
    }

    /// The polled levels: parked jobs, open batches, the oldest one's age.
    pub fn set_levels(&self, parked: i64, open: i64, oldest_age_s: f64) {
        self.parked_now.set(parked);
        self.open.set(open);
        self.oldest_open_age.set(oldest_age_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_providers_final_status_maps_to_one_end() {
        for (s, e) in [
            ("completed", BatchEnd::Completed),
            ("ended", BatchEnd::Completed),
            ("BATCH_STATE_SUCCEEDED", BatchEnd::Completed),
            ("expired", BatchEnd::Expired),
            ("BATCH_STATE_EXPIRED", BatchEnd::Expired),
            ("cancelled", BatchEnd::Cancelled),
            ("BATCH_STATE_CANCELLED", BatchEnd::Cancelled),
            ("failed", BatchEnd::Failed),
            ("BATCH_STATE_FAILED", BatchEnd::Failed),
            ("something new", BatchEnd::Failed),
        ] {
            assert_eq!(BatchEnd::of_provider_status(s), e, "{s}");
        }
    }
}
