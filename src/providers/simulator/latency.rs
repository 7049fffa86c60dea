//! Latency distributions for the `latency_ms` / `jitter_ms` / `latency_dist` knobs,
//! sampled with `rand` alone (no `rand_distr`).

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Upper bound of one sampled delay (one hour): the tails of the exponential and the
/// lognormal distribution are unbounded.
pub(crate) const MAX_DELAY_MS: u64 = 3_600_000;

/// Shape of the per-request latency (`latency_dist` in a [`super::FaultProfile`]).
///
/// In JSON: `"uniform"` (the default), `"exponential"` or `"lognormal"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyDist {
    /// `latency_ms` plus a uniform random `0..=jitter_ms`.
    #[default]
    Uniform,
    /// Exponential with mean `latency_ms` (`-ln(U)·latency_ms`); `jitter_ms` is not
    /// used (an exponential's spread equals its mean).
    Exponential,
    /// Lognormal with median `latency_ms`; `jitter_ms` is the distance from the median
    /// to the 84th percentile (one sigma up): `σ = ln(1 + jitter_ms / latency_ms)`, so
    /// the 16th percentile is `latency_ms² / (latency_ms + jitter_ms)`.
    Lognormal,
}

/// A uniform sample in `(0, 1]` (never 0, so its logarithm is finite).
fn open_unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    1.0 - rng.random::<f64>()
}

/// A standard normal sample (Box–Muller).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1 = open_unit(rng);
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Milliseconds from a real-valued sample, clamped to `0..=MAX_DELAY_MS`.
fn to_ms(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= MAX_DELAY_MS as f64 {
        MAX_DELAY_MS
    } else {
        x.round() as u64
    }
}

/// One delay in milliseconds.
pub(crate) fn sample_ms<R: Rng + ?Sized>(
    dist: LatencyDist,
    latency_ms: u64,
    jitter_ms: u64,
    rng: &mut R,
) -> u64 {
    match dist {
        LatencyDist::Uniform => {
            let jitter = if jitter_ms > 0 {
                rng.random_range(0..=jitter_ms)
            } else {
                0
            };
            latency_ms.saturating_add(jitter)
        }
        LatencyDist::Exponential => {
            if latency_ms == 0 {
                return 0;
            }
            to_ms(-open_unit(rng).ln() * latency_ms as f64)
        }
        LatencyDist::Lognormal => {
            if latency_ms == 0 {
                return 0;
            }
            let median = latency_ms as f64;
            let sigma = (1.0 + jitter_ms as f64 / median).ln();
            if sigma == 0.0 {
                return latency_ms;
            }
            to_ms(median * (sigma * standard_normal(rng)).exp())
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const N: usize = 40_000;

    fn samples(dist: LatencyDist, latency: u64, jitter: u64) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut v: Vec<u64> = (0..N)
            .map(|_| sample_ms(dist, latency, jitter, &mut rng))
            .collect();
        v.sort_unstable();
        v
    }

    fn quantile(sorted: &[u64], q: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
    }

    fn mean(v: &[u64]) -> f64 {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }

    fn near(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= expected * tolerance
    }

    #[test]
    fn json_names() {
        let d: LatencyDist = serde_json::from_str(r#""lognormal""#).unwrap();
        assert_eq!(d, LatencyDist::Lognormal);
        assert_eq!(
            serde_json::to_string(&LatencyDist::Exponential).unwrap(),
            r#""exponential""#
        );
        assert!(serde_json::from_str::<LatencyDist>(r#""gaussian""#).is_err());
    }

    #[test]
    fn uniform_stays_in_latency_plus_jitter() {
        let v = samples(LatencyDist::Uniform, 100, 50);
        assert!(v.iter().all(|d| (100..=150).contains(d)));
        assert!(v[0] <= 102 && v[N - 1] >= 148, "covers the range");
        assert!(near(mean(&v), 125.0, 0.02));
        assert!(samples(LatencyDist::Uniform, 80, 0)
            .iter()
            .all(|d| *d == 80));
    }

    #[test]
    fn exponential_has_mean_latency_and_median_ln2_mean() {
        let v = samples(LatencyDist::Exponential, 200, 999);
        assert!(near(mean(&v), 200.0, 0.03), "mean {}", mean(&v));
        let median = quantile(&v, 0.5);
        assert!(
            near(median, 200.0 * std::f64::consts::LN_2, 0.05),
            "median {median}"
        );
        // P(X > 3·mean) = e^-3 ≈ 0.0498.
        let tail = v.iter().filter(|d| **d > 600).count() as f64 / N as f64;
        assert!((0.04..0.06).contains(&tail), "tail {tail}");
        assert!(samples(LatencyDist::Exponential, 0, 50)
            .iter()
            .all(|d| *d == 0));
    }

    #[test]
    fn lognormal_has_median_latency_and_sigma_from_jitter() {
        let v = samples(LatencyDist::Lognormal, 200, 100);
        let median = quantile(&v, 0.5);
        assert!(near(median, 200.0, 0.03), "median {median}");
        let p84 = quantile(&v, 0.8413);
        assert!(near(p84, 300.0, 0.05), "p84 {p84}");
        let p16 = quantile(&v, 0.1587);
        assert!(near(p16, 200.0 * 200.0 / 300.0, 0.05), "p16 {p16}");
        // Right-skewed: the mean exceeds the median (exp(σ²/2) ≈ 1.085).
        assert!(near(mean(&v), 200.0 * 1.085, 0.03), "mean {}", mean(&v));
        assert!(samples(LatencyDist::Lognormal, 150, 0)
            .iter()
            .all(|d| *d == 150));
        assert!(samples(LatencyDist::Lognormal, 0, 150)
            .iter()
            .all(|d| *d == 0));
    }

    #[test]
    fn huge_spreads_are_clamped() {
        let v = samples(LatencyDist::Lognormal, 1_000_000, u64::MAX / 4);
        assert!(v.iter().all(|d| *d <= MAX_DELAY_MS));
        assert_eq!(to_ms(f64::INFINITY), MAX_DELAY_MS);
        assert_eq!(to_ms(f64::NAN), 0);
        assert_eq!(to_ms(-3.0), 0);
    }
}
