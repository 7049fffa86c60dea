#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The environment and the built binary (issue 13): variables that start with
//! `SWITCHYARD_` but are not config-shaped (the simulator's `SWITCHYARD_SIM_ADDR`, a
//! script's `SWITCHYARD_BIN`) leave every command working; a config-shaped one that names
//! no section or key stops every command with an error naming it.

mod common;

use common::{job, TestEnv};
use switchyard::job::{Priority, Status};

/// Variables a user's shell may well hold, none of them config.
const NOT_CONFIG: [(&str, &str); 4] = [
    ("SWITCHYARD_SIM_ADDR", "127.0.0.1:1"),
    ("SWITCHYARD_BIN", "/usr/local/bin/switchyard"),
    ("SWITCHYARD_SKIP_CHAOS", "1"),
    ("SWITCHYARD_HOME", "/srv/switchyard"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_that_are_not_config_leave_every_command_working() {
    let env = TestEnv::new(|_| {}).await;
    env.ensure_streams().await;
    for args in [
        &["--help"][..],
        &["migrate"],
        &["budget", "show"],
        &[
            "budget", "set", "--tenant", "acme", "--period", "day", "--limit", "5",
        ],
        &["report", "costs"],
        &["dlq", "list"],
        &["status", "--tenant", "acme", "nope"],
    ] {
        let (code, out, err) = env.cli_env(&NOT_CONFIG, args).await;
        // `status` of an unknown job exits 3 and says so; everything else exits 0.
        let want = if args[0] == "status" { 3 } else { 0 };
        assert_eq!(code, want, "{args:?}: {out}\n{err}");
        assert!(!err.contains("unknown field"), "{args:?}: {err}");
        assert!(!err.contains("SWITCHYARD_"), "{args:?}: {err}");
    }

    // The worker too: it starts and runs a job with those variables set.
    let mut worker = env
        .command()
        .envs(NOT_CONFIG)
        .arg("worker")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start worker");
    env.publish(Priority::Normal, "acme", job("env-1", "acme", ""))
        .await;
    let r = env.result("acme", "env-1", 30).await;
    assert_eq!(r.status, Status::Succeeded, "{:?}", r.error);
    let _ = worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_shaped_variable_that_names_nothing_stops_every_command_naming_it() {
    let env = TestEnv::new(|_| {}).await;
    for (var, says) in [
        ("SWITCHYARD_WORKER__MAX_IN_FLITE", "max_in_flite"),
        ("SWITCHYARD_SIM__ADDR", "no section [sim]"),
        ("SWITCHYARD_PROVIDERS__OPENAI__RPN", "rpn"),
    ] {
        for args in [&["migrate"][..], &["budget", "show"], &["worker"]] {
            let (code, _, err) = env.cli_env(&[(var, "1")], args).await;
            assert_ne!(code, 0, "{var} {args:?}");
            assert!(err.contains(var), "{var} {args:?}: {err}");
            assert!(err.contains(says), "{var} {args:?}: {err}");
        }
    }
    // A value of the wrong type names the variable, too.
    let (code, _, err) = env
        .cli_env(
            &[("SWITCHYARD_WORKER__MAX_IN_FLIGHT", "lots")],
            &["migrate"],
        )
        .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("SWITCHYARD_WORKER__MAX_IN_FLIGHT") && err.contains("worker.max_in_flight"),
        "{err}"
    );
}
