//! What a call chain's outcome means, decided without side effects: the job succeeded,
//! failed with which kind, or is retried later (and at least how much later). Executing
//! the verdict (commit, dead letter, publish, ack) is [`super::process`]'s.

use super::calls::ChainOutcome;
use crate::job::{ErrorBody, ErrorKind};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// The retry rules of `[worker]`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_deliveries: u32,
    pub base: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Succeeded,
    Failed(ErrorBody),
    /// Keep the calls made, hand the job back; redeliver no sooner than `at_least`
    /// (what a provider asked for), after the policy's backoff. `free`: no call was made
    /// (every candidate's breaker was open or cooling down after a 429), so the delivery
    /// does not count against `max_deliveries`.
    Retry {
        at_least: Option<Duration>,
        free: bool,
    },
    /// The worker is stopping and cut calls short: hand the job back at once, not
    /// counted as a failure of the job.
    HandBack,
}

/// Free hand-backs (no call made) a job may take, as a multiple of `max_deliveries`,
/// before it fails anyway: a provider whose breaker never closes does not hold a job for
/// ever.
pub const FREE_FACTOR: u64 = 20;

/// `delivery` counts the deliveries that were the job's own tries (hand-backs that were
/// not its fault excluded), 1 on the first; `total` every delivery.
pub fn decide(o: &ChainOutcome, delivery: u64, total: u64, policy: &RetryPolicy) -> Verdict {
    if o.success.is_some() {
        return Verdict::Succeeded;
    }
    if o.cancelled {
        return Verdict::HandBack;
    }
    let last = o
        .calls
        .iter()
        .rev()
        .find_map(|c| {
            let a = &c.attempt;
            a.message
                .as_ref()
                .map(|m| format!("{}/{}: {} ({m})", a.provider, a.model, a.outcome))
        })
        .unwrap_or_else(|| "every candidate's circuit breaker was open or cooling down".into());
    if o.transient {
        let max = u64::from(policy.max_deliveries);
        if o.calls.is_empty() && total < max * FREE_FACTOR {
            return Verdict::Retry {
                at_least: o.retry_after,
                free: true,
            };
        }
        if delivery < max {
            return Verdict::Retry {
                at_least: o.retry_after,
                free: false,
            };
        }
        return Verdict::Failed(ErrorBody::new(
            ErrorKind::ProvidersExhausted,
            format!("{delivery} deliveries, every candidate failed; last: {last}"),
        ));
    }
    if o.calls.is_empty() {
        return Verdict::Failed(ErrorBody::new(
            ErrorKind::NoRoute,
            "no candidate has a usable provider adapter",
        ));
    }
    if o.all_context_too_long {
        return Verdict::Failed(ErrorBody::new(
            ErrorKind::ContextTooLong,
            format!("every provider refused the input as too long; last: {last}"),
        ));
    }
    Verdict::Failed(ErrorBody::new(
        ErrorKind::ProviderRejected,
        format!("every candidate rejected the request; last: {last}"),
    ))
}

/// Exponential from `base`, capped at `max`, with jitter, and never shorter than what a
/// provider asked for.
pub fn backoff_delay(
    base: Duration,
    max: Duration,
    delivered: u64,
    retry_after: Option<Duration>,
) -> Duration {
    let n = delivered.clamp(1, 64) as usize;
    let mut schedule = ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(n)
        .build();
    let computed = schedule.nth(n - 1).unwrap_or(max);
    computed.max(retry_after.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Attempt, Usage};
    use crate::store::CallRecord;
    use rust_decimal::Decimal;

    const POLICY: RetryPolicy = RetryPolicy {
        max_deliveries: 3,
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    fn call(outcome: &str, message: Option<&str>) -> CallRecord {
        CallRecord {
            attempt: Attempt {
                attempt: 1,
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                outcome: outcome.into(),
                latency_ms: 3,
                cost_usd: Decimal::ZERO,
                status: None,
                message: message.map(str::to_string),
            },
            usage: Usage::default(),
        }
    }

    fn outcome(calls: Vec<CallRecord>, transient: bool, too_long: bool) -> ChainOutcome {
        ChainOutcome {
            calls,
            success: None,
            transient,
            retry_after: Some(Duration::from_secs(7)),
            all_context_too_long: too_long,
            cancelled: false,
            hedge_note: None,
        }
    }

    #[test]
    fn transient_failures_retry_until_the_last_delivery() {
        let o = outcome(vec![call("rate_limited", Some("429"))], true, false);
        assert_eq!(
            decide(&o, 1, 1, &POLICY),
            Verdict::Retry {
                at_least: Some(Duration::from_secs(7)),
                free: false,
            }
        );
        assert_eq!(
            decide(&o, 2, 2, &POLICY),
            Verdict::Retry {
                at_least: Some(Duration::from_secs(7)),
                free: false,
            }
        );
        match decide(&o, 3, 3, &POLICY) {
            Verdict::Failed(e) => {
                assert_eq!(e.kind, ErrorKind::ProvidersExhausted);
                assert!(e.message.contains("openai/gpt-4o-mini: rate_limited (429)"));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn permanent_failures_name_their_kind() {
        let o = outcome(vec![call("bad_request", Some("nope"))], false, false);
        assert!(
            matches!(decide(&o, 1, 1, &POLICY), Verdict::Failed(e) if e.kind == ErrorKind::ProviderRejected)
        );
        let o = outcome(vec![call("context_too_long", Some("long"))], false, true);
        assert!(
            matches!(decide(&o, 1, 1, &POLICY), Verdict::Failed(e) if e.kind == ErrorKind::ContextTooLong)
        );
        let o = outcome(vec![], false, true);
        assert!(
            matches!(decide(&o, 1, 1, &POLICY), Verdict::Failed(e) if e.kind == ErrorKind::NoRoute)
        );
    }

    #[test]
    fn skipping_every_candidate_is_a_free_hand_back_within_a_bound() {
        // No call made: every breaker open or cooling down.
        let o = outcome(vec![], true, false);
        assert_eq!(
            decide(&o, 3, 10, &POLICY),
            Verdict::Retry {
                at_least: Some(Duration::from_secs(7)),
                free: true,
            }
        );
        let cap = u64::from(POLICY.max_deliveries) * FREE_FACTOR;
        assert!(matches!(
            decide(&o, 3, cap, &POLICY),
            Verdict::Failed(e) if e.kind == ErrorKind::ProvidersExhausted
        ));
    }

    #[test]
    fn a_cancelled_chain_is_handed_back_not_failed() {
        let mut o = outcome(vec![call("cancelled", Some("shutdown"))], true, false);
        o.cancelled = true;
        assert_eq!(decide(&o, 99, 99, &POLICY), Verdict::HandBack);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for delivered in 1..=20u64 {
            let d = backoff_delay(base, max, delivered, None);
            let floor = base * 2u32.pow((delivered - 1).min(10) as u32);
            assert!(
                d >= floor.min(max),
                "delivery {delivered}: {d:?} < {floor:?}"
            );
            assert!(
                d <= max * 2,
                "delivery {delivered}: {d:?} above cap with jitter"
            );
        }
        let d = backoff_delay(base, max, 1, Some(Duration::from_secs(30)));
        assert_eq!(d, Duration::from_secs(30));
    }
}
