//! Test harness: real NATS and real Postgres, each test isolated by its own subject prefix
//! (so its own streams) and its own database, both removed when the test ends (even when it
//! fails). The provider simulator runs in-process on a free port, so tests read its counters.
#![allow(dead_code)]

pub mod batch;

use async_nats::jetstream;
use futures::StreamExt;
use sqlx::PgPool;
use std::time::Duration;
use switchyard::config::{Config, FileConfig};
use switchyard::job::{JobResult, Priority};
use switchyard::providers::simulator::{FaultProfile, Simulator};
use switchyard::providers::Providers;
use switchyard::queue::publish::DlqEntry;
use switchyard::queue::{streams, Names};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn admin_db_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `DATABASE_URL` with another database name.
pub fn db_url(name: &str) -> String {
    let base = admin_db_url();
    let mut u = reqwest::Url::parse(&base).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// The simulator's base URL for a provider kind (each API has its own path layout).
pub fn sim_base_url(kind: switchyard::config::ProviderKind, addr: std::net::SocketAddr) -> String {
    use switchyard::config::ProviderKind;
    match kind {
        ProviderKind::Anthropic => format!("http://{addr}"),
        ProviderKind::Gemini => format!("http://{addr}/v1beta"),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => format!("http://{addr}/v1"),
    }
}

/// A TCP port free on 127.0.0.1 now (for a worker's `/metrics`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct TestEnv {
    pub prefix: String,
    pub db_name: String,
    pub config: Config,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub pool: PgPool,
    pub sim: Simulator,
    pub sim_addr: std::net::SocketAddr,
    sim_stop: CancellationToken,
}

impl TestEnv {
    /// A fresh prefix, database and simulator. `tweak` edits the config before use.
    pub async fn new(tweak: impl FnOnce(&mut Config)) -> TestEnv {
        let tag = format!("t{:x}{:x}", std::process::id(), rand::random::<u32>());
        let prefix = tag.clone();
        let db_name = format!("sy_{tag}");
        let admin = PgPool::connect(&admin_db_url())
            .await
            .expect("admin Postgres");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;

        let sim = Simulator::new(FaultProfile::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_addr = listener.local_addr().unwrap();
        let sim_stop = CancellationToken::new();
        {
            let sim = sim.clone();
            let stop = sim_stop.clone();
            tokio::spawn(async move { sim.serve(listener, stop).await });
        }

        // Keys the simulator accepts; the same value in every test, so setting it races harmlessly.
        std::env::set_var("SY_TEST_OPENAI_KEY", "sk-test-openai");
        std::env::set_var("SY_TEST_LOCAL_KEY", "sk-test-local");
        let text = include_str!("../../config/demo.toml");
        let mut config =
            FileConfig::from_toml_with_env(text, "demo.toml", &[]).expect("demo config");
        config.nats.url = nats_url();
        config.nats.prefix = prefix.clone();
        config.postgres.url = db_url(&db_name);
        config.metrics.addr = String::new();
        config.worker.max_in_flight = 64;
        config.worker.retry_base_ms = 100;
        config.worker.retry_max_ms = 500;
        config.worker.shutdown_grace_s = 10;
        for p in &mut config.providers {
            p.base_url = sim_base_url(p.kind, sim_addr);
            p.api_key_env = Some(
                if p.name == "openai" {
                    "SY_TEST_OPENAI_KEY"
                } else {
                    "SY_TEST_LOCAL_KEY"
                }
                .into(),
            );
            p.timeout_s = 30;
        }
        tweak(&mut config);

        // As the worker connects: NATS_URL may list cluster members.
        let client = switchyard::connect::nats(&config.nats, Duration::from_secs(10))
            .await
            .expect("NATS");
        let js = jetstream::new(client.clone());
        let pool = PgPool::connect(&config.postgres.url)
            .await
            .expect("test database");
        switchyard::store::migrate(&pool).await.expect("migrations");
        TestEnv {
            prefix,
            db_name,
            config,
            client,
            js,
            pool,
            sim,
            sim_addr,
            sim_stop,
        }
    }

    pub fn names(&self) -> Names {
        Names::new(&self.prefix)
    }

    /// Start an in-process worker; stop it with the returned token.
    pub async fn start_worker(&self) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        self.start_worker_with(None).await
    }

    /// Start an in-process worker that reloads its config through `reload`.
    pub async fn start_worker_with(
        &self,
        reload: Option<switchyard::worker::reload::Reloader>,
    ) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let providers = Providers::from_config(&self.config).expect("providers");
        let stop = CancellationToken::new();
        let handle = tokio::spawn(switchyard::app::run_worker(
            self.config.clone(),
            providers,
            stop.clone(),
            reload,
        ));
        self.wait_for_consumers().await;
        (stop, handle)
    }

    /// Create the streams without a worker (to build a backlog first).
    pub async fn ensure_streams(&self) {
        streams::ensure(&self.js, &self.config)
            .await
            .expect("streams");
    }

    async fn wait_for_consumers(&self) {
        let name = self.names().jobs_stream();
        for _ in 0..100 {
            if let Ok(mut s) = self.js.get_stream(&name).await {
                if s.info()
                    .await
                    // Fair share makes its consumers as tenants' jobs come.
                    .map(|i| self.config.scheduling.fair || i.state.consumer_count == 3)
                    .unwrap_or(false)
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker did not create its consumers");
    }

    pub async fn publish(&self, p: Priority, tenant: &str, payload: impl Into<Vec<u8>>) -> u64 {
        let subject = self.names().jobs_subject(p, tenant);
        self.publish_raw(&subject, payload).await
    }

    pub async fn publish_raw(&self, subject: &str, payload: impl Into<Vec<u8>>) -> u64 {
        let ack = self
            .js
            .publish(subject.to_string(), payload.into().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
        ack.sequence
    }

    /// The stored result at `<prefix>.results.<tenant>.<id>`, waiting up to `secs`.
    pub async fn result(&self, tenant: &str, id: &str, secs: u64) -> JobResult {
        let stream = self
            .js
            .get_stream(self.names().results_stream())
            .await
            .expect("results stream");
        let subject = self.names().result_subject(tenant, id);
        for _ in 0..secs * 20 {
            if let Ok(m) = stream.get_last_raw_message_by_subject(&subject).await {
                return serde_json::from_slice(&m.payload).expect("result JSON");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no result for {tenant}/{id} within {secs}s");
    }

    pub async fn dlq(&self, tenant: &str, id: &str) -> Option<DlqEntry> {
        let stream = self.js.get_stream(self.names().dlq_stream()).await.ok()?;
        let m = stream
            .get_last_raw_message_by_subject(&self.names().dlq_subject(tenant, id))
            .await
            .ok()?;
        Some(serde_json::from_slice(&m.payload).expect("DLQ JSON"))
    }

    /// Wait until `n` jobs have succeeded (at most `secs`); returns how many did.
    pub async fn wait_succeeded(&self, n: i64, secs: u64) -> i64 {
        let mut done = 0;
        for _ in 0..secs * 20 {
            done = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status='succeeded'")
                .fetch_one(&self.pool)
                .await
                .expect("count jobs");
            if done >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done
    }

    /// Messages still in the jobs stream.
    pub async fn jobs_left(&self) -> u64 {
        let mut s = self
            .js
            .get_stream(self.names().jobs_stream())
            .await
            .expect("jobs stream");
        s.info().await.expect("stream info").state.messages
    }

    /// Wait until the jobs stream holds `n` messages, at most `secs`; returns the last
    /// count seen. A result is published before its message is acked, so a test that has
    /// just read a result must wait for the ack rather than look once.
    pub async fn wait_jobs_left(&self, n: u64, secs: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = self.jobs_left().await;
            if left == n || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        sub
    }

    pub async fn cleanup(self) {
        // Drop runs the cleanup.
    }
}

/// Wait for the next message on `sub`, at most `secs`.
pub async fn next_json(sub: &mut async_nats::Subscriber, secs: u64) -> serde_json::Value {
    let m = tokio::time::timeout(Duration::from_secs(secs), sub.next())
        .await
        .expect("reply in time")
        .expect("subscription open");
    serde_json::from_slice(&m.payload).expect("reply JSON")
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.sim_stop.cancel();
        let prefix = self.prefix.clone();
        let db = self.db_name.clone();
        let nats = self.config.nats.clone();
        // Async cleanup from Drop (also on panic): on its own thread and runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = switchyard::connect::nats(&nats, Duration::from_secs(5)).await {
                    let js = jetstream::new(client);
                    streams::delete_all(&js, &prefix).await;
                }
                if let Ok(admin) = PgPool::connect(&admin_db_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// An in-process `switchyard console` on a free loopback port.
pub struct Console {
    pub base: String,
    pub stop: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

pub async fn serve_console(cfg: Config) -> Console {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(switchyard::console::serve(cfg, listener, stop.clone()));
    Console { base, stop, task }
}

pub fn job(id: &str, tenant: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","tenant":"{tenant}","feature":"test","messages":[{{"role":"user","content":"Say something about {id}"}}]{extra}}}"#
    )
}

impl TestEnv {
    /// The `switchyard` binary, set up for this test's prefix, database and simulator.
    pub fn command(&self) -> tokio::process::Command {
        let addr = self.sim_addr;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.env(
            "SWITCHYARD_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"),
        )
        .env("NATS_URL", &self.config.nats.url)
        .env("DATABASE_URL", &self.config.postgres.url)
        .env("SWITCHYARD_NATS__PREFIX", &self.prefix)
        .env("SWITCHYARD_METRICS__ADDR", "")
        .env(
            "SWITCHYARD_PROVIDERS__OPENAI__BASE_URL",
            format!("http://{addr}/v1"),
        )
        .env(
            "SWITCHYARD_PROVIDERS__LOCAL__BASE_URL",
            format!("http://{addr}/v1"),
        )
        .env(
            "SWITCHYARD_PROVIDERS__ANTHROPIC__BASE_URL",
            format!("http://{addr}"),
        )
        .env(
            "SWITCHYARD_PROVIDERS__GEMINI__BASE_URL",
            format!("http://{addr}/v1beta"),
        )
        .env("OPENAI_API_KEY", "sk-test-openai")
        .env("LOCAL_API_KEY", "sk-test-local")
        .env("ANTHROPIC_API_KEY", "sk-test-anthropic")
        .env("GEMINI_API_KEY", "sk-test-gemini")
        .kill_on_drop(true);
        cmd
    }

    /// Run the `switchyard` binary: (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_env(&[], args).await
    }

    /// [`TestEnv::cli`] with more environment variables.
    pub async fn cli_env(&self, vars: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
        let out = self
            .command()
            .envs(vars.iter().copied())
            .args(args)
            .output()
            .await
            .expect("run switchyard");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl TestEnv {
    /// Run the `switchyard` binary, which must succeed and print one JSON value per line.
    pub async fn cli_json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let (code, out, err) = self.cli(args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: {e}: {l}")))
            .collect()
    }

    /// The simulator answers every call to the model `upstream` with a 500 (the others
    /// answer normally).
    pub fn fail_model(&self, upstream: &str) {
        let broken = FaultProfile {
            error_rate: 1.0,
            error_status: 500,
            ..Default::default()
        };
        self.sim.set_profile(FaultProfile {
            per_model: [(upstream.to_string(), broken)].into(),
            ..Default::default()
        });
    }

    /// Run the `switchyard` binary, which must fail with a stderr that holds every one of
    /// `needles` (bad input is named); returns the stderr.
    pub async fn cli_fails(&self, args: &[&str], needles: &[&str]) -> String {
        let (code, _, err) = self.cli(args).await;
        assert_ne!(code, 0, "{args:?} succeeded: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: no {n:?} in {err}");
        }
        err
    }
}

/// Check `instance` against `schemas/<name>.schema.json` (formats included).
pub fn assert_schema(name: &str, instance: &serde_json::Value) {
    let path = format!("{}/schemas/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let v = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} schema:\n  {}\n{instance:#}",
        errors.join("\n  ")
    );
}

/// Run `scripts/lib/<script>` with the official SDKs' Python (`SWITCHYARD_SDK_PYTHON`)
/// against a fresh in-process simulator, the simulator's URL after `args`; `None` (and a
/// "skipped" line) when that variable is not set. Returns the simulator (for its
/// counters) and the script's output, the output also printed.
pub async fn run_sdk_script(
    script: &str,
    args: &[&str],
) -> Option<(Simulator, std::process::Output)> {
    let Ok(python) = std::env::var("SWITCHYARD_SDK_PYTHON") else {
        eprintln!("skipped: SWITCHYARD_SDK_PYTHON is not set");
        return None;
    };
    let sim = Simulator::new(FaultProfile::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let served = tokio::spawn({
        let (sim, stop) = (sim.clone(), stop.clone());
        async move { sim.serve(listener, stop).await }
    });
    let path = format!("{}/scripts/lib/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(python)
        .arg(path)
        .args(args)
        .arg(format!("http://{addr}"))
        .output()
        .await
        .unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop.cancel();
    served.await.unwrap().unwrap();
    Some((sim, out))
}
