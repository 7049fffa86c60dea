//! The limiter on a paused clock: exact sliding windows, waiting in priority and deadline
//! order, token correction, cool-downs, provider readings, and shares between workers
//! whose heartbeats are passed by hand (no NATS).

use super::*;
use crate::config::FileConfig;
use crate::providers::ratelimit_headers::{RateReading, Window};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// One window as the limiter counts it (60 s plus the default 1 s margin).
const W: Duration = Duration::from_secs(61);
const HB: Duration = Duration::from_secs(1);

fn limiters(limits: &str) -> Limiters {
    let text = format!(
        "[[providers]]\nname = \"p\"\nkind = \"openai_compatible\"\nbase_url = \"http://x\"\n{limits}\n\
         [[providers]]\nname = \"q\"\nkind = \"openai_compatible\"\nbase_url = \"http://x\"\nrpm = 600\n"
    );
    Limiters::new(&FileConfig::from_toml_with_env(&text, "t", &[]).unwrap())
}

fn ask(model: &str, tokens: u64) -> Ask<'_> {
    Ask {
        provider: "p",
        model,
        tokens,
    }
}

/// Admitted at once (within the same instant)?
async fn now_or_never(l: &Limiters, a: Ask<'_>) -> Option<Permit> {
    tokio::select! {
        biased;
        p = l.admit(a, Priority::Normal) => Some(p),
        _ = tokio::task::yield_now() => None,
    }
}

/// How long an admission took.
async fn admitted_after(l: &Limiters, a: Ask<'_>) -> Duration {
    let start = Instant::now();
    l.admit(a, Priority::Normal).await.settle(None);
    start.elapsed()
}

/// At most `limit` of `times` (sorted) in any window of length `w`.
fn max_in_any_window(times: &[Instant], w: Duration) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while times[i] >= times[j] + w {
            j += 1;
        }
        best = best.max(i + 1 - j);
    }
    best
}

#[tokio::test(start_paused = true)]
async fn a_full_window_waits_until_its_oldest_call_leaves_it() {
    let l = limiters("rpm = 60");
    let t0 = Instant::now();
    for _ in 0..60 {
        now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    }
    assert!(now_or_never(&l, ask("m", 1)).await.is_none());
    assert_eq!(admitted_after(&l, ask("m", 1)).await, W);
    assert_eq!(Instant::now() - t0, W);
    // Unlimited providers and providers without config always go.
    let other = Ask {
        provider: "unknown",
        model: "m",
        tokens: 1,
    };
    assert!(now_or_never(&l, other).await.is_some());
}

#[tokio::test(start_paused = true)]
async fn never_more_than_the_limit_in_any_window_under_random_arrivals() {
    let l = limiters("rpm = 50\ntpm = 20000");
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut tasks = Vec::new();
    let mut at = Duration::ZERO;
    for _ in 0..400 {
        at += Duration::from_millis(rng.random_range(0..1500));
        let tokens = rng.random_range(1..900);
        let (l, admitted) = (l.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let p = l.admit(ask("m", tokens), Priority::Normal).await;
            admitted.lock().unwrap().push((Instant::now(), tokens));
            p.settle(None);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut got = admitted.lock().unwrap().clone();
    got.sort();
    assert_eq!(got.len(), 400);
    let times: Vec<Instant> = got.iter().map(|(t, _)| *t).collect();
    assert!(max_in_any_window(&times, MINUTE) <= 50);
    // Tokens: no window of 60 s holds more than the tpm.
    for (i, (t, _)) in got.iter().enumerate() {
        let sum: u64 = got[i..]
            .iter()
            .take_while(|(u, _)| *u < *t + MINUTE)
            .map(|(_, k)| k)
            .sum();
        assert!(sum <= 20_000, "{sum} tokens in the minute from {i}");
    }
    // And the limits are used: 400 calls at 50 (or ~44 by tokens) per window take
    // about 9 windows.
    let span = *times.last().unwrap() - times[0];
    assert!(span < W * 10, "{span:?}");
}

#[tokio::test(start_paused = true)]
async fn waiting_jobs_go_high_first_then_in_arrival_order() {
    let l = limiters("rpm = 2");
    for _ in 0..2 {
        now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, prio) in [
        ("low", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high", Priority::High),
        ("normal-2", Priority::Normal),
    ] {
        let (l, order) = (l.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            l.admit(ask("m", 1), prio).await.settle(None);
            order.lock().unwrap().push((name, Instant::now()));
        }));
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
    assert_eq!(l.waiting(), 4);
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let names: Vec<&str> = order.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["high", "normal-1", "normal-2", "low"]);
    // Two per window: the first two in the next window, the others in the one after.
    assert_eq!(order[1].1 - order[0].1, Duration::ZERO);
    assert_eq!(order[2].1 - order[0].1, W);
    assert_eq!(l.waiting(), 0);
}

/// Within a priority, the earliest deadline waiting goes first, jobs without a deadline
/// after every deadline, first come first served among equals; priority still comes
/// first (a high job without a deadline before a normal one with the nearest). A job
/// that arrives with an earlier deadline than everyone waiting is admitted at once when
/// there is room, without queueing behind later deadlines.
#[tokio::test(start_paused = true)]
async fn waiting_jobs_of_a_priority_go_earliest_deadline_first() {
    let l = limiters("rpm = 1");
    now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    let t = chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let at = move |min: i64| Some(t + chrono::Duration::minutes(min));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, prio, deadline) in [
        ("none-1", Priority::Normal, None),
        ("d30-1", Priority::Normal, at(30)),
        ("low-d1", Priority::Low, at(1)),
        ("d10", Priority::Normal, at(10)),
        ("none-2", Priority::Normal, None),
        ("high-none", Priority::High, None),
        ("d30-2", Priority::Normal, at(30)),
    ] {
        let (l, order) = (l.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            l.admit(ask("m", 1), Turn::new(prio, deadline))
                .await
                .settle(None);
            order.lock().unwrap().push(name);
        }));
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
    assert_eq!(l.waiting(), 7);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        [
            "high-none",
            "d10",
            "d30-1",
            "d30-2",
            "none-1",
            "none-2",
            "low-d1"
        ]
    );
    assert_eq!(l.waiting(), 0);

    // With room, a nearer deadline than the queue's goes at once; `queued_ahead` only
    // holds back a job whose turn is not earlier than the head's.
    let l = limiters("rpm = 1");
    now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    let later = {
        let l = l.clone();
        tokio::spawn(async move {
            l.admit(ask("m", 1), Turn::new(Priority::Normal, at(30)))
                .await
                .settle(None);
        })
    };
    tokio::task::yield_now().await;
    {
        let st = l.inner.lock();
        assert!(st.queued_ahead("p", Turn::new(Priority::Normal, at(30))));
        assert!(st.queued_ahead("p", Turn::new(Priority::Normal, None)));
        assert!(!st.queued_ahead("p", Turn::new(Priority::Normal, at(29))));
        assert!(!st.queued_ahead("p", Turn::new(Priority::High, None)));
    }
    later.await.unwrap();
}

/// A change wakes the first job waiting, not all of them: with thousands waiting behind
/// a binding limit, each admission costs a few wake-ups, not one per waiting job (which
/// was quadratic).
#[tokio::test(start_paused = true)]
async fn a_long_queue_drains_in_order_with_a_few_wake_ups_per_admission() {
    const N: usize = 2_000;
    let l = limiters("rpm = 600");
    let order = Arc::new(Mutex::new(Vec::with_capacity(N)));
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let (l, order) = (l.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = l.admit(ask("m", 1), Priority::Normal).await;
            order.lock().unwrap().push(i);
            // Settled (a change) as soon as it is admitted, as a fast call is.
            permit.settle(Some(1));
        }));
        // Arrivals spread out, so the window frees one call at a time later on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        (0..N).collect::<Vec<_>>(),
        "first come, first served"
    );
    let looks = l.looks();
    assert!(
        looks < 4 * N as u64,
        "{looks} wake-ups for {N} admissions: waiting jobs are woken all at once"
    );
    assert_eq!(l.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_job_that_gives_up_leaves_the_queue() {
    let l = limiters("rpm = 1");
    now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    let gave_up =
        tokio::time::timeout(Duration::from_secs(5), l.admit(ask("m", 1), Priority::High)).await;
    assert!(gave_up.is_err());
    assert_eq!(l.waiting(), 0);
    assert_eq!(
        admitted_after(&l, ask("m", 1)).await,
        W - Duration::from_secs(5)
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_are_reserved_and_corrected_to_the_usage() {
    let l = limiters("tpm = 1000");
    let first = now_or_never(&l, ask("m", 600)).await.unwrap();
    assert!(now_or_never(&l, ask("m", 600)).await.is_none());
    assert_eq!(l.calling(), 1);
    // The call used 100: the rest comes back at once, and a waiter goes.
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move { admitted_after(&l, ask("m", 600)).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.settle(Some(100));
    assert_eq!(waiter.await.unwrap(), Duration::from_secs(3));
    assert_eq!(l.calling(), 0);
    // 700 used; a call above the whole limit is clamped to it and waits for an empty window.
    assert_eq!(admitted_after(&l, ask("m", 50_000)).await, W);
}

#[tokio::test(start_paused = true)]
async fn the_first_candidate_that_can_go_goes_else_the_earliest() {
    let l = limiters("rpm = 1");
    let asks = [
        ask("m", 1),
        Ask {
            provider: "q",
            model: "x",
            tokens: 1,
        },
    ];
    let (i, p) = l.admit_first(&asks, Priority::Normal).await.unwrap();
    assert_eq!(i, 0);
    p.settle(None);
    // p is full: q goes.
    let (i, p) = l.admit_first(&asks, Priority::Normal).await.unwrap();
    assert_eq!(i, 1);
    p.settle(None);
    // Cool q down for 90 s: the job waits for p, free first (61 s).
    l.cool_down("q", "x", Some(Duration::from_secs(90))).await;
    let start = Instant::now();
    let (i, p) = l.admit_first(&asks, Priority::Normal).await.unwrap();
    p.settle(None);
    assert_eq!((i, start.elapsed()), (0, W));
    assert!(l.admit_first(&[], Priority::Normal).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_cool_down_holds_that_model_only() {
    let l = limiters("");
    l.cool_down("p", "m", Some(Duration::from_secs(5))).await;
    assert!(now_or_never(&l, ask("other", 1)).await.is_some());
    assert_eq!(
        admitted_after(&l, ask("m", 1)).await,
        Duration::from_secs(5)
    );
    // No delay given: nothing is held.
    l.cool_down("p", "m", None).await;
    assert!(now_or_never(&l, ask("m", 1)).await.is_some());
}

fn exhausted_for(reset: Duration) -> RateReading {
    RateReading {
        requests: Window {
            limit: Some(10),
            remaining: Some(0),
            reset: Some(reset),
        },
        tokens: Window::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_windows_reported_by_the_provider_are_held() {
    let l = limiters("rpm = 600");
    l.observe("p", "m", Some(&exhausted_for(Duration::from_secs(30))));
    l.observe("p", "m", Some(&exhausted_for(Duration::from_secs(5))));
    // Other models of the provider are not held.
    assert!(now_or_never(&l, ask("other", 1)).await.is_some());
    // The later, shorter reading does not shorten the hold.
    assert_eq!(
        admitted_after(&l, ask("m", 1)).await,
        Duration::from_secs(30)
    );
}

#[tokio::test(start_paused = true)]
async fn what_a_provider_reports_left_is_not_exceeded_until_it_resets() {
    let l = limiters("rpm = 600");
    let reading = RateReading {
        requests: Window {
            limit: Some(100),
            remaining: Some(3),
            reset: Some(Duration::from_secs(20)),
        },
        tokens: Window::default(),
    };
    l.observe("p", "m", Some(&reading));
    for _ in 0..3 {
        now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    }
    assert_eq!(
        admitted_after(&l, ask("m", 1)).await,
        Duration::from_secs(20)
    );
}

/// Workers whose heartbeats are delivered by hand, every second, while `up`.
struct Net {
    workers: Vec<(Limiters, bool)>,
}

impl Net {
    fn new(n: usize, limits: &str) -> Net {
        let workers = (0..n)
            .map(|i| {
                let l = limiters(limits);
                l.enter_cluster(format!("w{i}"));
                (l, true)
            })
            .collect();
        Net { workers }
    }

    fn round(&self) {
        let now = Instant::now();
        let reports: Vec<Report> = self
            .workers
            .iter()
            .filter(|(_, up)| *up)
            .map(|(l, _)| l.tick(now))
            .collect();
        for r in reports {
            for (l, up) in &self.workers {
                if *up {
                    l.receive(r.clone(), now);
                }
            }
        }
    }

    fn share(&self, i: usize) -> u64 {
        self.workers[i].0.inner.lock().providers["p"].share.requests
    }
}

/// Rounds every heartbeat until `stop`.
fn run_net(net: Arc<Mutex<Net>>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HB);
        loop {
            tokio::select! {
                _ = tick.tick() => net.lock().unwrap().round(),
                _ = stop.cancelled() => break,
            }
        }
    })
}

use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn shares_follow_the_members_and_grow_only_after_being_announced() {
    let net = Net::new(3, "rpm = 61");
    assert_eq!(net.share(0), 0, "nothing before the first announcement");
    net.round();
    assert_eq!(net.share(0), 0, "announced, not yet in force");
    tokio::time::advance(HB).await;
    net.round();
    let shares: Vec<u64> = (0..3).map(|i| net.share(i)).collect();
    assert_eq!(shares, [21, 20, 20], "the remainder to the lowest id");
    // w2 dies: after the member timeout, the others' shares grow, a heartbeat later.
    let mut net = net;
    net.workers[2].1 = false;
    for _ in 0..3 {
        tokio::time::advance(HB).await;
        net.round();
    }
    assert_eq!((net.share(0), net.share(1)), (21, 20), "w2 still counted");
    tokio::time::advance(HB).await;
    net.round();
    tokio::time::advance(HB).await;
    net.round();
    assert_eq!((net.share(0), net.share(1)), (31, 30));
    // A worker that does not hear itself holds its calls.
    let l = &net.workers[0].0;
    l.inner.lock().me.echo = Instant::now() - Duration::from_secs(10);
    assert!(now_or_never(l, ask("m", 1)).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_waits_for_what_the_others_used_and_a_leaver_s_calls_still_count() {
    let net = Arc::new(Mutex::new(Net::new(3, "rpm = 60")));
    let a = net.lock().unwrap().workers[0].0.clone();
    // Only w0 is up at first: it takes the whole limit.
    for i in 1..3 {
        net.lock().unwrap().workers[i].1 = false;
    }
    let stop = CancellationToken::new();
    let ticker = run_net(net.clone(), stop.clone());
    let t0 = Instant::now();
    let mut times = Vec::new();
    for _ in 0..60 {
        let p = a.admit(ask("m", 1), Priority::Normal).await;
        times.push(Instant::now());
        p.settle(None);
    }
    // w1 and w2 join: they see w0's window and wait for it to pass.
    for i in 1..3 {
        net.lock().unwrap().workers[i].1 = true;
    }
    let all = Arc::new(Mutex::new(times));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let l = net.lock().unwrap().workers[i].0.clone();
        let all = all.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                let p = l.admit(ask("m", 1), Priority::Normal).await;
                all.lock().unwrap().push(Instant::now());
                p.settle(None);
            }
        }));
    }
    // Half-way, w2 leaves (announcing it): its calls still count, its share comes back.
    tokio::time::sleep(Duration::from_secs(100)).await;
    {
        let mut n = net.lock().unwrap();
        let r = n.workers[2].0.leave(Instant::now());
        n.workers[2].1 = false;
        for (l, up) in &n.workers {
            if *up {
                l.receive(r.clone(), Instant::now());
            }
        }
    }
    tasks.pop().unwrap().abort();
    for t in tasks {
        t.await.unwrap();
    }
    stop.cancel();
    ticker.await.unwrap();
    let mut times = all.lock().unwrap().clone();
    times.sort();
    assert!(
        max_in_any_window(&times, MINUTE) <= 60,
        "{} in one minute",
        max_in_any_window(&times, MINUTE)
    );
    // The first 60 went at once, once w0's share was announced (two heartbeats).
    assert!(times[59] - t0 <= 2 * HB);
    // The newcomers waited for w0's window to pass.
    assert!(times[60] - times[0] >= MINUTE);
}

/// A config reload changes the limits in place: a lower rpm binds at once (what the
/// window already holds still counts), a higher one frees capacity at once.
#[tokio::test(start_paused = true)]
async fn a_reload_changes_the_limits_in_place() {
    let l = limiters("rpm = 10");
    for _ in 0..4 {
        now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    }
    let lower = |rpm: u32| {
        let text = format!(
            "[[providers]]\nname = \"p\"\nkind = \"openai_compatible\"\nbase_url = \"http://x\"\nrpm = {rpm}\n"
        );
        FileConfig::from_toml_with_env(&text, "t", &[]).unwrap()
    };
    l.reconfigure(&lower(5));
    now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    assert!(
        now_or_never(&l, ask("m", 1)).await.is_none(),
        "5 in the window: the new limit binds"
    );
    l.reconfigure(&lower(20));
    for _ in 0..15 {
        now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    }
    assert!(
        now_or_never(&l, ask("m", 1)).await.is_none(),
        "20 in the window"
    );
}

/// A hedge's admission: the first ask that may go now, or none, without waiting; and it
/// counts like any other.
#[tokio::test(start_paused = true)]
async fn try_admit_takes_what_is_free_now_and_never_waits() {
    let l = limiters("rpm = 2");
    let q = Ask {
        provider: "q",
        model: "m",
        tokens: 1,
    };
    assert!(l.try_admit_first(&[], Priority::High).is_none());
    let (i, first) = l
        .try_admit_first(&[ask("m", 1), q], Priority::High)
        .unwrap();
    assert_eq!(i, 0);
    first.settle(None);
    now_or_never(&l, ask("m", 1)).await.unwrap().settle(None);
    // p is full: the next one free now is q's; with p alone, nothing (and no wait).
    let t0 = Instant::now();
    let (i, _q) = l
        .try_admit_first(&[ask("m", 1), q], Priority::High)
        .unwrap();
    assert_eq!(i, 1);
    assert!(l.try_admit_first(&[ask("m", 1)], Priority::High).is_none());
    assert_eq!(Instant::now(), t0);
    // What try_admit took counts: p frees up only when the window has passed.
    assert_eq!(admitted_after(&l, ask("m", 1)).await, W);
}

#[test]
fn heartbeats_with_and_without_breakers_read_alike() {
    // A worker that does not report breakers: read as such, and written back the same.
    let old = r#"{"id":"w1","limits":{"p":{"requests":3,"tokens":0,"log":[[5,1,0]]}}}"#;
    let r: Report = serde_json::from_str(old).unwrap();
    assert_eq!(r.breakers, None);
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        old.replace("{\"id\":\"w1\",", "{\"id\":\"w1\",\"leaving\":false,")
    );
    // One that does; fields it does not know are skipped.
    let new = r#"{"id":"w2","limits":{},"future":1,"breakers":[{"provider":"p","model":"a",
        "state":"open","since_ms":1700000000000,"failures":5,"open_until_ms":1700000015000,
        "reason":"5 failures in a row","later":true}]}"#;
    let r: Report = serde_json::from_str(new).unwrap();
    let b = &r.breakers.unwrap()[0];
    assert_eq!(
        (
            b.state.as_str(),
            b.failures,
            b.open_until_ms,
            b.cool_until_ms
        ),
        ("open", 5, Some(1_700_000_015_000), None)
    );
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_carries_the_open_breakers_in_unix_time() {
    let text = "[[providers]]\nname = \"p\"\nkind = \"openai_compatible\"\nbase_url = \"http://x\"\n\
        [[models]]\nname = \"a\"\nprovider = \"p\"\nupstream = \"a\"\ntier = \"fast\"\ncontext_window = 1000\n\
        input_per_mtok = \"1\"\noutput_per_mtok = \"1\"\n";
    let health =
        crate::health::Health::new(&FileConfig::from_toml_with_env(text, "t", &[]).unwrap());
    assert!(breaker_report(&health).is_empty());
    let fail = crate::health::CallOutcome::Failed {
        class: crate::providers::FailureClass::ServerError,
        retry_after: None,
    };
    let before = chrono::Utc::now().timestamp_millis();
    for _ in 0..5 {
        health.record("p", "a", fail, Duration::ZERO);
    }
    let after = chrono::Utc::now().timestamp_millis();
    let r = breaker_report(&health);
    assert_eq!(r.len(), 1);
    let b = &r[0];
    assert_eq!(
        (
            b.provider.as_str(),
            b.model.as_str(),
            b.state.as_str(),
            b.failures
        ),
        ("p", "a", "open", 5)
    );
    assert!(before <= b.since_ms && b.since_ms <= after, "{b:?}");
    let open_ms = b.open_until_ms.unwrap() - b.since_ms;
    assert!(
        (14_990..=15_010).contains(&open_ms),
        "open for 15 s: {open_ms}"
    );
    // Written as the contract says: no empty optional fields.
    let json = serde_json::to_value(b).unwrap();
    assert!(json.get("cool_until_ms").is_none() && json["reason"] == "5 failures in a row");
}
