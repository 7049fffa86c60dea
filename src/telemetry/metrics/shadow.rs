//! Shadow evaluation's metrics: evaluations by route, candidate and result, the
//! similarity of the compared answers, and sampled jobs dropped (never queued) when
//! shadow work is over its bounds. Labels are bounded: route names and candidate models
//! come from the config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvalLabels {
    route: String,
    candidate: String,
    /// `agree`, `disagree` or `failed`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SimilarityLabels {
    route: String,
    candidate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    route: String,
    /// `busy` (every shadow slot taken), `limits` (the rate limiter or a breaker kept
    /// it waiting too long), `budget` (the tenant's budgets near their limit), `store`
    /// (Postgres did not take the claim), `stopping`.
    reason: &'static str,
}

/// How a shadow evaluation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalResult {
    Agree,
    Disagree,
    Failed,
}

impl EvalResult {
    pub fn as_str(self) -> &'static str {
        match self {
            EvalResult::Agree => "agree",
            EvalResult::Disagree => "disagree",
            EvalResult::Failed => "failed",
        }
    }
}

pub struct ShadowMetrics {
    evals: Family<EvalLabels, Counter>,
    similarity: Family<SimilarityLabels, Histogram>,
    dropped: Family<DropLabels, Counter>,
}

impl Default for ShadowMetrics {
    fn default() -> Self {
        ShadowMetrics {
            evals: Family::default(),
            similarity: Family::new_with_constructor(|| {
                Histogram::new([0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0])
            }),
            dropped: Family::default(),
        }
    }
}

impl ShadowMetrics {
    /// Names without `_total`: the encoder appends it to counters.
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "switchyard_shadow_evals",
            "Shadow evaluations by route, candidate model and result (agree, disagree, failed)",
            self.evals.clone(),
        );
        r.register(
            "switchyard_shadow_similarity",
            "Similarity of the primary's and the candidate's answers (comparisons that give one: embedding)",
            self.similarity.clone(),
        );
        r.register(
            "switchyard_shadow_dropped",
            "Sampled jobs not shadowed because shadow work was over its bounds, by reason",
            self.dropped.clone(),
        );
    }

    /// An evaluation ended.
    pub fn evaluated(
        &self,
        route: &str,
        candidate: &str,
        result: EvalResult,
        similarity: Option<f64>,
    ) {
        self.evals
            .get_or_create(&EvalLabels {
                route: route.to_string(),
                candidate: candidate.to_string(),
                result: result.as_str(),
            })
            .inc();
        if let Some(s) = similarity {
            self.similarity
                .get_or_create(&SimilarityLabels {
                    route: route.to_string(),
                    candidate: candidate.to_string(),
                })
                .observe(s);
        }
    }

    /// A sampled job was not shadowed.
    pub fn dropped(&self, route: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&DropLabels {
                route: route.to_string(),
                reason,
            })
            .inc();
    }
}
