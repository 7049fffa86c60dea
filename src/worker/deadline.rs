//! A job that can no longer finish before its `deadline` fails early as `expired`, before
//! any call: after routing, when the median latency of its route's first model over the
//! last one to two minutes (`health::Health::quantile`, none before 20 calls) would end
//! past the deadline. Pure: the worker asks, then fails the job as for any error.

use super::Ctx;
use crate::job::{ErrorBody, ErrorKind, Job};
use crate::router::Plan;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The quantile of the first model's observed latency that must still fit.
pub const LATENCY_QUANTILE: f64 = 0.5;

/// [`too_late`] for `job` routed by `plan`, now; `None` for a job without a deadline.
pub(super) fn check(ctx: &Ctx, job: &Job, plan: &Plan) -> Option<ErrorBody> {
    let deadline = job.deadline?;
    let (model, latency) = match plan.candidates.first() {
        Some(c) => (
            format!("{}/{}", c.model.provider, c.model.name),
            ctx.health
                .quantile(&c.model.provider, &c.model.name, LATENCY_QUANTILE),
        ),
        None => (String::new(), None),
    };
    too_late(ctx.clock.now(), deadline, &model, latency)
}

/// Why a job with `deadline` cannot finish in time at `now` when its route's first model
/// (`model`, "provider/name") answers in about `latency`; `None` when it can (or no
/// latency is known yet and the deadline has not passed).
pub fn too_late(
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    model: &str,
    latency: Option<Duration>,
) -> Option<ErrorBody> {
    let left_ms = (deadline - now).num_milliseconds();
    if left_ms < 0 {
        return Some(ErrorBody::new(
            ErrorKind::Expired,
            format!(
                "deadline {} passed before the job started",
                deadline.to_rfc3339()
            ),
        ));
    }
    let latency = latency?;
    let needed_ms = i64::try_from(latency.as_millis()).unwrap_or(i64::MAX);
    (needed_ms > left_ms).then(|| {
        ErrorBody::new(
            ErrorKind::Expired,
            format!(
                "deadline {} cannot be met: {left_ms} ms left, and {model} answers in about {needed_ms} ms (median of the last minutes)",
                deadline.to_rfc3339()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_when_the_route_is_slower_than_the_time_left() {
        let now = Utc::now();
        let dl = now + chrono::Duration::milliseconds(500);
        let m = "openai/gpt-4o-mini";
        assert!(too_late(now, dl, m, None).is_none(), "no estimate yet");
        assert!(too_late(now, dl, m, Some(Duration::from_millis(400))).is_none());
        let e = too_late(now, dl, m, Some(Duration::from_millis(900))).unwrap();
        assert_eq!(e.kind, ErrorKind::Expired);
        assert!(
            e.message.contains("900 ms") && e.message.contains(m),
            "{}",
            e.message
        );
        let past = now - chrono::Duration::seconds(1);
        let e = too_late(now, past, m, None).unwrap();
        assert!(e.message.contains("passed before the job started"));
    }
}
