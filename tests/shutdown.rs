#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SIGTERM: the worker binary stops pulling, finishes what it holds, exits 0, and loses
//! nothing: another worker completes the rest, with no job called twice.

mod common;

use common::{job, TestEnv};
use std::process::Stdio;
use std::time::Duration;
use switchyard::job::Priority;
use switchyard::providers::simulator::FaultProfile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_jobs_and_loses_nothing() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 8;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 700,
        ..Default::default()
    });
    env.ensure_streams().await;
    const N: usize = 40;
    for i in 0..N {
        env.publish(
            Priority::Normal,
            "acme",
            job(&format!("s{i}"), "acme", r#","model":"openai/gpt-4o-mini""#),
        )
        .await;
    }
    let mut child = env
        .command()
        .arg("worker")
        .env("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "8")
        .env("SWITCHYARD_WORKER__SHUTDOWN_GRACE_S", "20")
        .env("SWITCHYARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker binary starts");
    // Let it take work: wait until some calls are under way.
    for _ in 0..200 {
        if env.sim.stats().total >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        env.sim.stats().total >= 8,
        "the worker binary started working"
    );
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("worker exits within the grace period")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    assert!(stderr.contains("draining"), "{stderr}");

    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status='succeeded'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status='running'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        done >= 8,
        "in-flight jobs were finished, not dropped ({done})"
    );
    assert_eq!(running, 0, "nothing left half-done");
    assert_eq!(
        env.jobs_left().await,
        N as u64 - done as u64,
        "the rest is still queued"
    );

    // A second worker finishes the rest; nothing was lost, nothing called twice.
    let (stop, worker) = env.start_worker().await;
    env.wait_succeeded(N as i64, 20).await;
    for i in 0..N {
        let r = env.result("acme", &format!("s{i}"), 5).await;
        assert_eq!(r.attempts.len(), 1, "s{i}");
    }
    assert_eq!(env.sim.stats().total, N as u64, "one provider call per job");
    assert_eq!(env.wait_jobs_left(0, 10).await, 0);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A worker killed with SIGKILL loses nothing: its un-acked jobs are redelivered after the
/// ack wait and finished by another worker, each with exactly one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing() {
    let env = TestEnv::new(|c| {
        c.worker.max_in_flight = 16;
        c.worker.ack_wait_s = 2;
    })
    .await;
    env.sim.set_profile(FaultProfile {
        latency_ms: 400,
        ..Default::default()
    });
    env.ensure_streams().await;
    const N: usize = 30;
    for i in 0..N {
        env.publish(Priority::Low, "acme", job(&format!("k{i}"), "acme", ""))
            .await;
    }
    let mut child = env
        .command()
        .arg("worker")
        .env("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "16")
        .env("SWITCHYARD_WORKER__ACK_WAIT_S", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker binary starts");
    for _ in 0..200 {
        if env.sim.stats().total >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap(); // SIGKILL: no drain, no flush
    let (stop, worker) = env.start_worker().await;
    for i in 0..N {
        let r = env.result("acme", &format!("k{i}"), 30).await;
        assert_eq!(r.status, switchyard::job::Status::Succeeded, "k{i}");
    }
    let (rows, succeeded): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status='succeeded') FROM jobs")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (rows, succeeded),
        (N as i64, N as i64),
        "one row per job, all succeeded"
    );
    // Calls cut off by the kill were never committed: those jobs were called again. Every
    // committed call has its cost row, and no job has two succeeded calls.
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM cost_rows WHERE outcome='succeeded' GROUP BY job_id HAVING count(*) > 1) x",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(doubled, 0);
    assert_eq!(env.wait_jobs_left(0, 10).await, 0);
    stop.cancel();
    worker.await.unwrap().unwrap();
}
