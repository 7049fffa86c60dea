#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fair share among tenants of one priority (`[scheduling] fair`), against the real NATS
//! and Postgres: a small tenant publishing after a huge backlog of another is served at
//! once, at its weighted share, by one worker and by a pool of three.

mod common;

use common::{job, TestEnv};
use rust_decimal::Decimal;
use std::time::Duration;
use switchyard::job::Priority;
use switchyard::providers::simulator::FaultProfile;

const PINNED: &str = r#","model":"openai/gpt-4o-mini""#;

/// Publish `n` jobs of `tenant` at normal priority, acks awaited in batches.
async fn publish_many(env: &TestEnv, tenant: &str, n: usize) {
    let subject = env.names().jobs_subject(Priority::Normal, tenant);
    let mut acks = Vec::with_capacity(500);
    for i in 0..n {
        let payload = job(&format!("{tenant}-{i}"), tenant, PINNED);
        acks.push(
            env.js
                .publish(subject.clone(), payload.into())
                .await
                .expect("publish"),
        );
        if acks.len() == 500 || i + 1 == n {
            for a in acks.drain(..) {
                a.await.expect("publish ack");
            }
        }
    }
}

async fn succeeded(env: &TestEnv, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant = $1 AND status = 'succeeded'")
        .bind(tenant)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Finish times (ms since the epoch) of each tenant's succeeded jobs.
async fn finish_times(env: &TestEnv, tenant: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM finished_at) * 1000)::bigint FROM jobs
         WHERE tenant = $1 AND status = 'succeeded' ORDER BY finished_at",
    )
    .bind(tenant)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// B's share of completions in every 10 s window while B had jobs (the whole span of B's
/// completions when it is shorter), each printed; returns the (min, max) share seen.
fn shares(a: &[i64], b: &[i64]) -> (f64, f64) {
    let (t0, t1) = (b[0], *b.last().unwrap());
    let count = |v: &[i64], s: i64, e: i64| v.iter().filter(|&&t| t >= s && t <= e).count();
    let mut windows = Vec::new();
    if t1 - t0 <= 10_000 {
        windows.push((t0, t1));
    } else {
        let mut s = t0;
        while s + 10_000 <= t1 {
            windows.push((s, s + 10_000));
            s += 1_000;
        }
    }
    let (mut lo, mut hi) = (1.0f64, 0.0f64);
    for (s, e) in windows {
        let (na, nb) = (count(a, s, e), count(b, s, e));
        let share = nb as f64 / (na + nb) as f64;
        println!(
            "window {:.1}s..{:.1}s: a {na}, b {nb}, b's share {share:.3}",
            (s - t0) as f64 / 1e3,
            (e - t0) as f64 / 1e3
        );
        lo = lo.min(share);
        hi = hi.max(share);
    }
    (lo, hi)
}

/// A publishes 10,000, then B 100, same priority; B's weight `wb` against A's 1. Runs
/// `workers` workers of `in_flight` slots each, with the simulator answering in
/// `latency_ms`, so the pool does `workers × in_flight / latency` jobs a second.
async fn small_tenant_behind_a_big_one(workers: usize, in_flight: usize, wb: u32) {
    let env = TestEnv::new(|c| {
        c.scheduling.fair = true;
        c.scheduling.discover_ms = 200;
        if wb != 1 {
            c.scheduling.weights.insert("bee".into(), wb);
        }
        c.worker.max_in_flight = in_flight;
        c.worker.commit_linger_ms = 1;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 300,
        ..FaultProfile::default()
    });
    env.ensure_streams().await;
    publish_many(&env, "ant", 10_000).await;
    publish_many(&env, "bee", 100).await;
    let mut running = Vec::new();
    for _ in 0..workers {
        running.push(env.start_worker().await);
    }
    let started = std::time::Instant::now();
    let mut done_b = 0;
    while started.elapsed() < Duration::from_secs(90) {
        done_b = succeeded(&env, "bee").await;
        if done_b == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    for (stop, _) in &running {
        stop.cancel();
    }
    for (_, handle) in running {
        handle.await.unwrap().unwrap();
    }
    let done_a = succeeded(&env, "ant").await;
    let left = env.jobs_left().await;
    println!(
        "{workers} worker(s) × {in_flight} slots, weights ant 1 / bee {wb}: bee's 100 done in {:.1}s; ant {done_a} done, {left} left in the stream",
        took.as_secs_f64()
    );
    assert_eq!(done_b, 100, "all of bee's jobs finish");
    assert!(
        left >= 9_000,
        "ant still has thousands waiting when bee is done: {left} left"
    );
    let (a, b) = (
        finish_times(&env, "ant").await,
        finish_times(&env, "bee").await,
    );
    let want = f64::from(wb) / f64::from(wb + 1);
    let (lo, hi) = shares(&a, &b);
    assert!(
        lo >= want * 0.8 && hi <= (want * 1.2).min(1.0),
        "bee's share {lo:.3}..{hi:.3}, weight share {want:.3} ± 20%"
    );
    // The stream is deleted with the env; nothing of the backlog is left behind.
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_tenant_is_served_at_its_share_behind_a_big_backlog() {
    small_tenant_behind_a_big_one(1, 6, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_by_tenant_weight() {
    small_tenant_behind_a_big_one(3, 2, 3).await;
}

/// `switchyard queue`: jobs waiting per priority and tenant with the oldest one's age,
/// then, once a worker ran them, what each tenant got finished and its share.
#[tokio::test]
async fn queue_shows_the_backlog_and_the_shares() {
    let env = TestEnv::new(|c| c.scheduling.fair = true).await;
    env.ensure_streams().await;
    for i in 0..5 {
        env.publish(
            Priority::Normal,
            "ant",
            job(&format!("a{i}"), "ant", PINNED),
        )
        .await;
    }
    for i in 0..3 {
        env.publish(
            Priority::Normal,
            "bee",
            job(&format!("b{i}"), "bee", PINNED),
        )
        .await;
    }
    env.publish(Priority::High, "bee", job("h0", "bee", PINNED))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rows = env.cli_json(&["queue", "--format", "json"]).await;
    let row = |rows: &[serde_json::Value], p: &str, t: &str| {
        rows.iter()
            .find(|r| r["priority"] == p && r["tenant"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no row {p}/{t} in {rows:?}"))
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0]["priority"], "high", "high first: {rows:?}");
    assert_eq!(row(&rows, "normal", "ant")["waiting"], 5);
    assert_eq!(row(&rows, "normal", "bee")["waiting"], 3);
    assert_eq!(row(&rows, "high", "bee")["waiting"], 1);
    let age: f64 = row(&rows, "normal", "ant")["oldest_age_s"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1.0..30.0).contains(&age), "oldest age {age}");

    let (stop, worker) = env.start_worker().await;
    assert_eq!(env.wait_succeeded(9, 30).await, 9);
    stop.cancel();
    worker.await.unwrap().unwrap();
    let rows = env.cli_json(&["queue", "--format", "json"]).await;
    let ant = row(&rows, "normal", "ant");
    assert_eq!(
        (ant["waiting"].as_i64(), ant["finished"].as_i64()),
        (Some(0), Some(5))
    );
    assert_eq!(ant["share_pct"], "62.5");
    assert_eq!(row(&rows, "normal", "bee")["share_pct"], "37.5");
    assert_eq!(row(&rows, "high", "bee")["share_pct"], "100");
    // The per-tenant consumers the worker made are named after the tenants.
    let stream = env.js.get_stream(env.names().jobs_stream()).await.unwrap();
    let names: Vec<String> = {
        use futures::TryStreamExt;
        stream.consumer_names().try_collect().await.unwrap()
    };
    for n in ["jobs-normal-ant", "jobs-normal-bee", "jobs-high-bee"] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    assert!(!names.iter().any(|x| x == "jobs-normal"), "{names:?}");
}

/// Records the order messages are dispatched in (each holds its slot; nothing is acked:
/// the stream goes with the test).
struct Recorder(std::sync::Mutex<Vec<(String, tokio::sync::OwnedSemaphorePermit)>>);

impl switchyard::queue::scheduler::Dispatch for Recorder {
    fn dispatch(
        &self,
        _p: Priority,
        msg: async_nats::jetstream::Message,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        self.0.lock().unwrap().push((id, slot));
    }
}

struct Open;
impl switchyard::queue::scheduler::PullGate for Open {
    fn room(&self) -> usize {
        usize::MAX
    }
}

/// A fair-share scheduler over `stream`'s tenant consumers with `slots` slots, dispatching
/// into a [`Recorder`], running until the token is cancelled.
fn run_recording_scheduler(
    env: &TestEnv,
    stream: async_nats::jetstream::stream::Stream,
    slots: usize,
) -> (
    std::sync::Arc<Recorder>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    use switchyard::queue::scheduler::{Scheduler, Source};
    use switchyard::queue::tenants::Tenants;
    let recorder = std::sync::Arc::new(Recorder(Default::default()));
    let (ready_tx, ready) = tokio::sync::watch::channel(true);
    let scheduler = Scheduler {
        source: Source::Tenant(std::sync::Arc::new(Tenants::new(
            env.client.clone(),
            stream,
            &env.config,
        ))),
        weights: env.config.worker.priority_weights,
        slots: std::sync::Arc::new(tokio::sync::Semaphore::new(slots)),
        dispatch: recorder.clone(),
        ready,
        gate: std::sync::Arc::new(Open),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_run = stop.clone();
    let run = tokio::spawn(async move {
        // The scheduler stops pulling when its readiness sender is gone.
        let _ready_tx = ready_tx;
        scheduler.run(stop_run).await;
    });
    (recorder, stop, run)
}

/// Deadlines: a mixed backlog (deadlines in reverse stream order, every third job without
/// one) pulled in one window by the scheduler from the tenant's consumer on the real
/// server is dispatched earliest deadline first, the jobs without one after in stream
/// order. (What happens after dispatch is concurrent: calls start in about that order.)
#[tokio::test]
async fn a_mixed_backlog_is_dispatched_earliest_deadline_first() {
    use switchyard::queue::streams::{ensure, Consumers};
    let env = TestEnv::new(|c| c.scheduling.fair = true).await;
    let Consumers::Tenant(stream) = ensure(&env.js, &env.config).await.unwrap() else {
        panic!("fair scheduling makes per-tenant consumers");
    };
    let now = chrono::Utc::now();
    let mut want: Vec<(Option<chrono::DateTime<chrono::Utc>>, usize)> = Vec::new();
    for i in 0..60usize {
        let dl = (i % 3 != 0).then(|| now + chrono::Duration::minutes(120 - i as i64));
        let extra = match dl {
            Some(d) => format!(r#"{PINNED},"deadline":"{}""#, d.to_rfc3339()),
            None => PINNED.to_string(),
        };
        env.publish(
            Priority::Normal,
            "ant",
            job(&format!("j{i}"), "ant", &extra),
        )
        .await;
        want.push((dl, i));
    }
    want.sort_by_key(|(dl, i)| (dl.is_none(), *dl, *i));
    let want: Vec<String> = want.iter().map(|(_, i)| format!("j{i}")).collect();
    let (recorder, stop, run) = run_recording_scheduler(&env, *stream, 60);
    for _ in 0..100 {
        if recorder.0.lock().unwrap().len() == 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    run.await.unwrap();
    let got: Vec<String> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(got, want);
}

/// A job whose deadline is nearer than its route's observed median latency fails as
/// `expired` before any call; one with time enough runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_the_route_cannot_meet_expires_before_any_call() {
    let env = TestEnv::new(|_| {}).await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 600,
        ..FaultProfile::default()
    });
    let (stop, worker) = env.start_worker().await;
    // 25 calls teach the worker the model's latency (20 are needed for an estimate).
    for i in 0..25 {
        env.publish(
            Priority::Normal,
            "ant",
            job(&format!("w{i}"), "ant", PINNED),
        )
        .await;
    }
    assert_eq!(env.wait_succeeded(25, 30).await, 25);
    let calls = env.sim.stats().total;
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    let later = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    env.publish(
        Priority::Normal,
        "ant",
        job("soon", "ant", &format!(r#"{PINNED},"deadline":"{soon}""#)),
    )
    .await;
    let r = env.result("ant", "soon", 10).await;
    let err = r.error.expect("expired");
    assert_eq!(err.kind, switchyard::job::ErrorKind::Expired);
    assert!(err.message.contains("cannot be met"), "{}", err.message);
    assert!(r.attempts.is_empty(), "{:?}", r.attempts);
    assert_eq!(env.sim.stats().total, calls, "no call for the expired job");
    env.publish(
        Priority::Normal,
        "ant",
        job("later", "ant", &format!(r#"{PINNED},"deadline":"{later}""#)),
    )
    .await;
    let r = env.result("ant", "later", 10).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Wait until `n` jobs have a terminal row.
async fn finished(env: &TestEnv, n: usize) {
    for _ in 0..600 {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'running'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if done as usize >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} jobs did not finish");
}

/// `submit --estimate` against a real run of the labeled routing set: the first half runs
/// (its calls are the history the estimate reads: each model's mean output), then the
/// second half is estimated, run, and its estimate compared with the cost rows it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_estimate_is_within_ten_percent_of_the_real_bill() {
    let env = TestEnv::new(|_| {}).await;
    let text = include_str!("fixtures/routing/labeled.jsonl");
    let jobs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["job"].clone())
        .collect();
    let (first, second) = jobs.split_at(jobs.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, part: &[serde_json::Value]| {
        let path = dir.path().join(name);
        let body: Vec<String> = part.iter().map(|j| j.to_string()).collect();
        std::fs::write(&path, body.join("\n")).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (f1, f2) = (write("first.jsonl", first), write("second.jsonl", second));
    let (stop, worker) = env.start_worker().await;
    let (code, _, err) = env.cli(&["submit", &f1, "--quiet"]).await;
    assert_eq!(code, 0, "{err}");
    finished(&env, first.len()).await;

    let blind = env
        .cli_json(&[
            "submit",
            "--estimate",
            &f2,
            "--format",
            "json",
            "--history-days",
            "0",
        ])
        .await;
    let rows = env
        .cli_json(&["submit", "--estimate", &f2, "--format", "json"])
        .await;
    let total = |rows: &[serde_json::Value]| -> f64 {
        let t = rows.iter().find(|r| r["total"] == true).expect("total row");
        t["cost_usd"].as_str().unwrap().parse().unwrap()
    };
    let before: Decimal = sqlx::query_scalar("SELECT coalesce(sum(cost_usd), 0) FROM cost_rows")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let (code, _, err) = env.cli(&["submit", &f2, "--quiet"]).await;
    assert_eq!(code, 0, "{err}");
    finished(&env, jobs.len()).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let after: Decimal = sqlx::query_scalar("SELECT coalesce(sum(cost_usd), 0) FROM cost_rows")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let real: f64 = (after - before).to_string().parse().unwrap();
    let (est, blind) = (total(&rows), total(&blind));
    println!(
        "{} jobs: estimate {est:.6} USD (output from history), {blind:.6} USD (no history: 25% of max_tokens); real bill {real:.6} USD; error {:+.1}% / {:+.1}%",
        second.len(),
        100.0 * (est - real) / real,
        100.0 * (blind - real) / real
    );
    for r in &rows {
        println!("{r}");
    }
    let by_model: Vec<(String, i64, i64, i64, Decimal)> = sqlx::query_as(
        "SELECT provider || '/' || model, count(*), sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(cost_usd)
         FROM cost_rows WHERE job_id = ANY($1) GROUP BY 1 ORDER BY 1",
    )
    .bind(second.iter().map(|j| j["id"].as_str().unwrap().to_string()).collect::<Vec<_>>())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for m in by_model {
        println!("real: {m:?}");
    }
    assert!(real > 0.0);
    assert!(
        ((est - real) / real).abs() <= 0.10,
        "estimate {est} vs real {real}"
    );
}

/// CPU time of this process so far (user + system), from /proc/self/stat (clock ticks of
/// 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The single-tenant cost of fair share (opt-in: `cargo test --test fair -- --ignored
/// --nocapture`): 3,000 jobs of one tenant as a backlog, one worker in this process
/// against the simulator at 0 ms, per-priority consumers and per-tenant ones alternated
/// three times each; jobs/s and CPU of the whole process (worker, simulator, test) per
/// job. A debug build: the ratio, not the figures, is the point.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn single_tenant_cost_of_fair_share() {
    const N: usize = 3_000;
    let mut figures: Vec<(bool, f64, f64)> = Vec::new();
    for run in 0..6 {
        let fair = run % 2 == 1;
        let env = TestEnv::new(|c| {
            c.scheduling.fair = fair;
            c.worker.max_in_flight = 512;
        })
        .await;
        env.ensure_streams().await;
        publish_many(&env, "ant", N).await;
        let (cpu0, t0) = (cpu_seconds(), std::time::Instant::now());
        let (stop, worker) = env.start_worker().await;
        assert_eq!(env.wait_succeeded(N as i64, 300).await, N as i64);
        let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        stop.cancel();
        worker.await.unwrap().unwrap();
        println!(
            "{}: {:.0} jobs/s, {:.0} µs CPU per job",
            if fair { "fair" } else { "per-priority" },
            N as f64 / secs,
            cpu * 1e6 / N as f64
        );
        figures.push((fair, N as f64 / secs, cpu * 1e6 / N as f64));
    }
    let median = |fair: bool, i: usize| {
        let mut v: Vec<f64> = figures
            .iter()
            .filter(|f| f.0 == fair)
            .map(|f| if i == 0 { f.1 } else { f.2 })
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median: per-priority {:.0} jobs/s {:.0} µs/job; fair {:.0} jobs/s {:.0} µs/job",
        median(false, 0),
        median(false, 1),
        median(true, 0),
        median(true, 1)
    );
}

/// The consumers of the jobs stream now.
async fn consumer_names(env: &TestEnv) -> Vec<String> {
    use futures::TryStreamExt;
    let stream = env.js.get_stream(env.names().jobs_stream()).await.unwrap();
    stream.consumer_names().try_collect().await.unwrap()
}

/// Publish tenant ant's normal jobs `ids`; returns how many.
async fn publish_ant(env: &TestEnv, ids: impl Iterator<Item = String>) -> i64 {
    let mut n = 0;
    for id in ids {
        env.publish(Priority::Normal, "ant", job(&id, "ant", PINNED))
            .await;
        n += 1;
    }
    n
}

/// Watches the jobs stream's consumers every 20 ms until `stop`: how many times `name`
/// went away.
fn count_removals(
    env: &TestEnv,
    name: &'static str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    let (js, stream_name) = (env.js.clone(), env.names().jobs_stream());
    tokio::spawn(async move {
        use futures::TryStreamExt;
        let (mut removals, mut present) = (0, false);
        while !stop.is_cancelled() {
            if let Ok(stream) = js.get_stream(&stream_name).await {
                if let Ok(names) = stream.consumer_names().try_collect::<Vec<String>>().await {
                    let now = names.iter().any(|n| n == name);
                    if present && !now {
                        removals += 1;
                    }
                    present = now;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        removals
    })
}

/// A tenant's consumer is removed by the server once no worker has pulled it for
/// `idle_s` (the workers let it go `idle_s` after its last job), and made again when the
/// tenant publishes again; across two workers, no job is lost, also when a job is
/// published while the consumer is being removed: jobs one at a time, each published a
/// little longer after the previous one finished, so the publishes fall before, during
/// and after the removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_tenant_s_consumer_is_removed_and_made_again_without_losing_a_job() {
    const CONSUMER: &str = "jobs-normal-ant";
    let env = TestEnv::new(|c| {
        c.scheduling.fair = true;
        c.scheduling.discover_ms = 100;
        c.scheduling.idle_s = 1;
        c.worker.commit_linger_ms = 1;
    })
    .await;
    env.ensure_streams().await;
    let workers = [env.start_worker().await, env.start_worker().await];
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = count_removals(&env, CONSUMER, watching.clone());
    let mut published = 0i64;

    // Jobs, then nothing: the consumer goes.
    published += publish_ant(&env, (0..10).map(|i| format!("a{i}"))).await;
    assert_eq!(env.wait_succeeded(published, 30).await, published);
    assert!(consumer_names(&env).await.iter().any(|n| n == CONSUMER));
    let idle_since = std::time::Instant::now();
    let mut gone = false;
    for _ in 0..300 {
        if !consumer_names(&env).await.iter().any(|n| n == CONSUMER) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "{CONSUMER} still there after 15 s idle");
    println!(
        "{CONSUMER} removed {:.2}s after the last job finished",
        idle_since.elapsed().as_secs_f64()
    );

    // The tenant publishes again: the consumer is made again and the jobs run.
    published += publish_ant(&env, (0..10).map(|i| format!("b{i}"))).await;
    assert_eq!(env.wait_succeeded(published, 30).await, published);
    assert!(consumer_names(&env).await.iter().any(|n| n == CONSUMER));

    // One job at a time, each published 1.0 s, 1.2 s, … 3.8 s after the previous one
    // finished: around the time the consumer is removed.
    for k in 0..15u64 {
        published += publish_ant(&env, [format!("c{k}")].into_iter()).await;
        assert_eq!(
            env.wait_succeeded(published, 30).await,
            published,
            "job c{k} ran"
        );
        tokio::time::sleep(Duration::from_millis(1_000 + 200 * k)).await;
    }
    assert_eq!(env.wait_jobs_left(0, 10).await, 0, "every job acked");
    watching.cancel();
    let removals = watcher.await.unwrap();
    println!("{CONSUMER} removed {removals} times");
    assert!(removals >= 2, "removed {removals} times");
    for (stop, _) in &workers {
        stop.cancel();
    }
    for (_, handle) in workers {
        handle.await.unwrap().unwrap();
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, published, "one row per job");
}

/// The race the idle removal opens, made to happen: a tenant's consumer is deleted on the
/// server while a worker still pulls it (its lane is kept for `idle_s`). The pulls that
/// find it gone let the lane go, the next discovery makes the consumer again, and the
/// job published after the deletion (and the one delivered before it, unacked) is
/// dispatched.
#[tokio::test]
async fn a_consumer_deleted_under_a_worker_is_made_again() {
    use switchyard::queue::streams::{ensure, Consumers};
    let env = TestEnv::new(|c| {
        c.scheduling.fair = true;
        c.scheduling.discover_ms = 100;
    })
    .await;
    let Consumers::Tenant(stream) = ensure(&env.js, &env.config).await.unwrap() else {
        panic!("fair scheduling makes per-tenant consumers");
    };
    let (recorder, stop, run) = run_recording_scheduler(&env, *stream.clone(), 8);
    let dispatched = |id: &str| recorder.0.lock().unwrap().iter().any(|r| r.0 == id);
    // Publish `id`; whether it is dispatched within 10 s.
    let publish_and_wait = |id: &'static str| {
        let env = &env;
        async move {
            env.publish(Priority::Normal, "ant", job(id, "ant", PINNED))
                .await;
            for _ in 0..200 {
                if dispatched(id) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(publish_and_wait("before").await);
    stream.delete_consumer("jobs-normal-ant").await.unwrap();
    let after = publish_and_wait("after").await;
    stop.cancel();
    run.await.unwrap();
    assert!(after, "the job published after the deletion ran");
    assert!(consumer_names(&env)
        .await
        .iter()
        .any(|n| n == "jobs-normal-ant"));
}

/// An idle worker (no tenant's consumer yet) takes the first job as it is published, not
/// at its next discovery: here discovery is every 60 s, and the job is done in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_worker_takes_the_first_job_without_waiting_for_discovery() {
    let env = TestEnv::new(|c| {
        c.scheduling.fair = true;
        c.scheduling.discover_ms = 60_000;
    })
    .await;
    env.ensure_streams().await;
    let (stop, worker) = env.start_worker().await;
    // Past the worker's discovery at start, which found nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = std::time::Instant::now();
    env.publish(Priority::Normal, "ant", job("first", "ant", PINNED))
        .await;
    let r = env.result("ant", "first", 20).await;
    println!(
        "first job's result {:.3}s after its publish",
        t0.elapsed().as_secs_f64()
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    stop.cancel();
    worker.await.unwrap().unwrap();
}
