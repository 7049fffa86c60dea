use super::*;
use crate::config::FileConfig;
use crate::providers::FailureClass;
use std::sync::Arc;
use tokio::time::advance;

const CONFIG: &str = r#"
[[providers]]
name = "p"
kind = "openai_compatible"
base_url = "http://x"
[[models]]
name = "a"
provider = "p"
upstream = "a"
tier = "fast"
context_window = 1000
input_per_mtok = "1"
output_per_mtok = "1"
[[models]]
name = "b"
provider = "p"
upstream = "b"
tier = "fast"
context_window = 1000
input_per_mtok = "1"
output_per_mtok = "1"
[[models]]
name = "c"
provider = "p"
upstream = "c"
tier = "balanced"
context_window = 1000
input_per_mtok = "1"
output_per_mtok = "1"
"#;

fn config(health: &str) -> Config {
    FileConfig::from_toml_with_env(&format!("{CONFIG}\n[health]\n{health}\n"), "t", &[]).unwrap()
}

fn health(extra: &str) -> Health {
    Health::new(&config(extra))
}

const FAIL: CallOutcome = CallOutcome::Failed {
    class: FailureClass::ServerError,
    retry_after: None,
};

fn ok(h: &Health, m: &str) {
    h.record("p", m, CallOutcome::Succeeded, Duration::from_millis(10));
}

fn fail(h: &Health, m: &str) {
    h.record("p", m, FAIL, Duration::from_millis(10));
}

fn failed_with(h: &Health, class: FailureClass) {
    let outcome = CallOutcome::Failed {
        class,
        retry_after: None,
    };
    h.record("p", "a", outcome, Duration::ZERO);
}

fn reading(h: &Health, m: &str) -> Reading {
    let mut found = None;
    h.for_each(|_, model, r| {
        if model == m {
            found = Some(r);
        }
    });
    found.unwrap()
}

fn state(h: &Health, m: &str) -> State {
    reading(h, m).state
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn opens_on_error_rate_once_the_window_has_the_minimum_volume() {
    let h = health("");
    // Alternating: never two failures in a row, 50% failed once there are 10 calls.
    for i in 0..9 {
        assert_eq!(h.allow("p", "a"), Admit::Go, "call {i}");
        if i % 2 == 0 {
            ok(&h, "a");
        } else {
            fail(&h, "a");
        }
        advance(Duration::from_millis(500)).await;
    }
    assert_eq!(state(&h, "a"), State::Closed, "4 of 9 failed");
    fail(&h, "a");
    assert_eq!(state(&h, "a"), State::Open, "5 of 10 failed");
    assert_eq!(h.allow("p", "a"), Admit::Skip(SkipReason::Open, secs(15)));
    // Other models are not affected.
    assert_eq!(h.allow("p", "b"), Admit::Go);
}

#[tokio::test(start_paused = true)]
async fn below_the_minimum_volume_or_outside_the_window_nothing_opens() {
    let h = health("");
    // 4 of 7 failed, never 5 in a row: too few calls to judge.
    for outcome in [FAIL, FAIL, CallOutcome::Succeeded, FAIL, FAIL] {
        h.record("p", "a", outcome, Duration::from_millis(5));
    }
    ok(&h, "a");
    ok(&h, "a");
    assert_eq!(h.allow("p", "a"), Admit::Go);
    // Calls older than the 30 s window fall out of it: a failure and a success every
    // 8 s, so the window never holds 10 calls.
    let h = health("consecutive_failures = 100");
    for _ in 0..30 {
        fail(&h, "a");
        ok(&h, "a");
        advance(secs(8)).await;
        assert_eq!(state(&h, "a"), State::Closed);
    }
}

#[tokio::test(start_paused = true)]
async fn opens_on_consecutive_failures_and_a_success_resets_the_count() {
    let h = health("");
    for _ in 0..4 {
        fail(&h, "a");
    }
    ok(&h, "a");
    for _ in 0..4 {
        fail(&h, "a");
    }
    assert_eq!(h.allow("p", "a"), Admit::Go);
    fail(&h, "a");
    assert_eq!(h.allow("p", "a"), Admit::Skip(SkipReason::Open, secs(15)));
    advance(secs(10)).await;
    assert_eq!(h.allow("p", "a"), Admit::Skip(SkipReason::Open, secs(5)));
}

fn open(h: &Health, m: &str) {
    for _ in 0..5 {
        fail(h, m);
    }
    assert_eq!(state(h, m), State::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_one_probe_through_and_its_success_closes() {
    let h = health("");
    open(&h, "a");
    advance(secs(15)).await;
    assert_eq!(state(&h, "a"), State::HalfOpen);
    assert_eq!(h.allow("p", "a"), Admit::Probe);
    assert_eq!(
        h.allow("p", "a"),
        Admit::Skip(SkipReason::Probing, secs(1)),
        "one probe at a time"
    );
    ok(&h, "a");
    assert_eq!(state(&h, "a"), State::Closed);
    assert_eq!(h.allow("p", "a"), Admit::Go);
    // A clean window: the failures before do not count against it.
    fail(&h, "a");
    assert_eq!(h.allow("p", "a"), Admit::Go);
    assert_eq!(
        reading(&h, "a").transitions,
        [1, 1, 1],
        "closed, half-open, open: once each"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
    let h = health("");
    open(&h, "a");
    for expected in [30, 60, 120, 120] {
        // Wait out the current period; the probe fails.
        while let Admit::Skip(_, d) = h.allow("p", "a") {
            advance(d).await;
        }
        fail(&h, "a");
        assert_eq!(
            h.allow("p", "a"),
            Admit::Skip(SkipReason::Open, secs(expected))
        );
    }
    // A success after the last period closes it, and the next opening is back at 15 s.
    advance(secs(120)).await;
    assert_eq!(h.allow("p", "a"), Admit::Probe);
    ok(&h, "a");
    open(&h, "a");
    assert_eq!(h.allow("p", "a"), Admit::Skip(SkipReason::Open, secs(15)));
}

#[tokio::test(start_paused = true)]
async fn a_probe_without_an_answer_frees_its_slot() {
    let h = health("");
    open(&h, "a");
    advance(secs(15)).await;
    assert_eq!(h.allow("p", "a"), Admit::Probe);
    h.record("p", "a", CallOutcome::Abandoned, Duration::ZERO);
    assert_eq!(h.allow("p", "a"), Admit::Probe);
    // A probe whose outcome never comes is given up after the longest open period.
    assert!(matches!(
        h.allow("p", "a"),
        Admit::Skip(SkipReason::Probing, _)
    ));
    advance(secs(121)).await;
    assert_eq!(h.allow("p", "a"), Admit::Probe);
}

#[tokio::test(start_paused = true)]
async fn a_429_cools_down_without_tripping() {
    let h = health("");
    let limited = |after: Option<u64>| CallOutcome::Failed {
        class: FailureClass::RateLimited,
        retry_after: after.map(secs),
    };
    h.record("p", "a", limited(Some(3)), Duration::ZERO);
    assert_eq!(
        h.allow("p", "a"),
        Admit::Skip(SkipReason::CoolingDown, secs(3))
    );
    advance(secs(3)).await;
    assert_eq!(h.allow("p", "a"), Admit::Go);
    // Without Retry-After: 1 s. Many 429s never open the breaker.
    for _ in 0..50 {
        h.record("p", "a", limited(None), Duration::ZERO);
    }
    assert_eq!(
        h.allow("p", "a"),
        Admit::Skip(SkipReason::CoolingDown, secs(1))
    );
    assert_eq!(state(&h, "a"), State::Closed);
    advance(secs(1)).await;
    assert_eq!(h.allow("p", "a"), Admit::Go);
    // Nor do they break a run of failures (they are no success either).
    for _ in 0..4 {
        fail(&h, "a");
    }
    h.record("p", "a", limited(None), Duration::ZERO);
    fail(&h, "a");
    assert_eq!(state(&h, "a"), State::Open);
}

#[tokio::test(start_paused = true)]
async fn client_errors_do_not_count() {
    let h = health("");
    for class in [
        FailureClass::InvalidRequest,
        FailureClass::ContextTooLong,
        FailureClass::Auth,
        FailureClass::QuotaExhausted,
        FailureClass::ContentFiltered,
    ] {
        for _ in 0..20 {
            failed_with(&h, class);
        }
    }
    assert_eq!(h.allow("p", "a"), Admit::Go);
    for class in [
        FailureClass::Overloaded,
        FailureClass::Timeout,
        FailureClass::Connection,
        FailureClass::ServerError,
        FailureClass::ServerError,
    ] {
        failed_with(&h, class);
    }
    assert_eq!(state(&h, "a"), State::Open, "server-side failures do");
}

#[tokio::test(start_paused = true)]
async fn disabled_breakers_admit_everything_and_still_track_latency() {
    let h = health("enabled = false");
    for _ in 0..50 {
        fail(&h, "a");
    }
    assert_eq!(h.allow("p", "a"), Admit::Go);
    ok(&h, "a");
    assert_eq!(reading(&h, "a").ewma, Some(Duration::from_millis(10)));
    // Unknown pairs are always admitted.
    assert_eq!(h.allow("nobody", "a"), Admit::Go);
    h.record("nobody", "a", FAIL, Duration::ZERO);
}

fn candidates(cfg: &Config) -> Vec<Candidate> {
    cfg.models
        .iter()
        .map(|m| Candidate {
            model: Arc::new(m.clone()),
            max_tokens: 10,
            input_tokens: 100,
        })
        .collect()
}

fn names(order: Vec<&Candidate>) -> Vec<&str> {
    order.into_iter().map(|c| c.model.name.as_str()).collect()
}

fn ewma_of(h: &Health, m: &str) -> f64 {
    reading(h, m).ewma.unwrap().as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn ewma_follows_successful_calls() {
    let h = health("");
    h.record("p", "a", CallOutcome::Succeeded, Duration::from_millis(100));
    assert!((ewma_of(&h, "a") - 0.1).abs() < 1e-9);
    h.record("p", "a", CallOutcome::Succeeded, Duration::from_millis(600));
    assert!(
        (ewma_of(&h, "a") - 0.2).abs() < 1e-9,
        "0.2 × 0.6 + 0.8 × 0.1"
    );
    // Failures do not move it.
    h.record("p", "a", FAIL, secs(30));
    assert!((ewma_of(&h, "a") - 0.2).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn latency_order_moves_slow_and_open_models_back() {
    let cfg = config("");
    let h = Health::new(&cfg);
    let c = candidates(&cfg);
    assert_eq!(names(h.order("auto", &c)), ["a", "b", "c"], "nothing known");
    // a is 4× slower than b, same tier: behind b, not behind the pricier c.
    h.record("p", "a", CallOutcome::Succeeded, Duration::from_millis(400));
    h.record("p", "b", CallOutcome::Succeeded, Duration::from_millis(100));
    h.record("p", "c", CallOutcome::Succeeded, Duration::from_millis(10));
    assert_eq!(names(h.order("fast", &c)), ["b", "a", "c"]);
    assert_eq!(names(h.order("auto", &c)), ["b", "a", "c"]);
    // A named model keeps the router's order; so does a slowness under the factor.
    assert_eq!(names(h.order("a", &c)), ["a", "b", "c"]);
    h.record("p", "a", CallOutcome::Succeeded, Duration::from_millis(100));
    h.record("p", "a", CallOutcome::Succeeded, Duration::from_millis(100));
    assert_eq!(names(h.order("fast", &c)), ["a", "b", "c"], "a now ~0.29 s");
    // Open models go last, the one free soonest first.
    open(&h, "b");
    advance(secs(5)).await;
    open(&h, "a");
    assert_eq!(names(h.order("auto", &c)), ["c", "b", "a"]);
    // Milliseconds apart is noise, whatever the ratio.
    let h = health("");
    h.record("p", "a", CallOutcome::Succeeded, Duration::from_millis(40));
    h.record("p", "b", CallOutcome::Succeeded, Duration::from_millis(2));
    assert_eq!(names(h.order("fast", &c)), ["a", "b", "c"]);
    // With latency order off, the router's order stands.
    let h = health("latency_order = false");
    open(&h, "a");
    assert_eq!(names(h.order("auto", &c)), ["a", "b", "c"]);
}

/// The hedge delay's estimate: successes only, per model, none before enough calls, and
/// it follows a model that turned slow; a reload keeps it.
#[tokio::test(start_paused = true)]
async fn latency_quantiles_come_from_successes_and_follow_a_change() {
    let h = health("");
    let ms = Duration::from_millis;
    for _ in 0..latency::MIN_SAMPLES - 1 {
        h.record("p", "a", CallOutcome::Succeeded, ms(40));
    }
    assert_eq!(h.quantile("p", "a", 0.95), None, "too few calls");
    h.record("p", "a", FAIL, ms(5000));
    assert_eq!(
        h.quantile("p", "a", 0.95),
        None,
        "failures are not latencies"
    );
    h.record("p", "a", CallOutcome::Succeeded, ms(40));
    let p95 = h.quantile("p", "a", 0.95).unwrap();
    assert!(p95 >= ms(40) && p95 < ms(48), "{p95:?}");
    assert_eq!(h.quantile("p", "b", 0.95), None, "per model");
    assert_eq!(h.quantile("p", "nobody", 0.95), None);
    let h = h.reconfigured(&config(""));
    assert_eq!(h.quantile("p", "a", 0.95), Some(p95), "a reload keeps it");
    // Slow now: within two minutes only the slow calls count.
    advance(latency::HALF_SPAN).await;
    for _ in 0..40 {
        h.record("p", "a", CallOutcome::Succeeded, ms(900));
    }
    advance(latency::HALF_SPAN).await;
    let p95 = h.quantile("p", "a", 0.95).unwrap();
    assert!(p95 >= ms(900) && p95 < ms(1100), "{p95:?}");
}

/// A hedged call cut short counts in the quantile at the time it ran (else each cut tail
/// would lower the estimate), but says nothing to the breaker or the average.
#[tokio::test(start_paused = true)]
async fn calls_cut_by_their_hedge_keep_the_tail_in_the_quantile() {
    let h = health("");
    let ms = Duration::from_millis;
    for _ in 0..95 {
        h.record("p", "a", CallOutcome::Succeeded, ms(40));
    }
    for _ in 0..5 {
        h.record_cut("p", "a", ms(700));
    }
    let p99 = h.quantile("p", "a", 0.99).unwrap();
    assert!(p99 >= ms(700), "{p99:?}");
    let mut ewma = None;
    h.for_each(|_, m, r| {
        if m == "a" {
            ewma = r.ewma;
        }
    });
    assert_eq!(ewma, Some(ms(40)));
    h.record_cut("p", "nobody", ms(700));
}

#[tokio::test(start_paused = true)]
async fn unwell_lists_the_breakers_a_heartbeat_tells_and_since_when() {
    let h = health("");
    assert!(h.unwell(Instant::now()).is_empty(), "all closed: nothing");
    advance(secs(2)).await;
    let opened = Instant::now();
    open(&h, "a");
    h.record(
        "p",
        "b",
        CallOutcome::Failed {
            class: FailureClass::RateLimited,
            retry_after: Some(secs(4)),
        },
        Duration::ZERO,
    );
    let now = Instant::now();
    let got = h.unwell(now);
    let names: Vec<(&str, &str)> = got.iter().map(|(p, m, _)| (*p, *m)).collect();
    assert_eq!(names, [("p", "a"), ("p", "b")]);
    let a = &got[0].2;
    assert_eq!(
        (a.state, a.since, a.failures, a.open_until),
        (State::Open, opened, 5, Some(opened + secs(15)))
    );
    assert_eq!(a.reason, "5 failures in a row");
    let b = &got[1].2;
    assert_eq!(
        (b.state, b.cool_until),
        (State::Closed, Some(now + secs(4)))
    );
    // The open period over: half-open since it ended (before any call says so); the
    // cool-down over: b is plainly closed again.
    advance(secs(15)).await;
    let got = h.unwell(Instant::now());
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].2.state, got[0].2.since, got[0].2.open_until),
        (State::HalfOpen, opened + secs(15), None)
    );
    // A probe succeeds: closed, and gone from the list.
    assert_eq!(h.allow("p", "a"), Admit::Probe);
    ok(&h, "a");
    assert!(h.unwell(Instant::now()).is_empty());
}
