#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issue 13: who the worker may publish for and how it proves who it is. The `reply_to`
//! allow-list end to end; NATS with user/password, token and TLS (a throwaway
//! nats-server started here, on a free port), cluster URL lists with members down; and
//! Postgres over TLS.

mod common;

use common::{job, next_json, TestEnv};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchyard::config::{NatsConfig, PgSslMode, PostgresConfig, TenantReplyTo};
use switchyard::connect;
use switchyard::job::{ErrorKind, JobResult, Priority, Status};
use switchyard::queue::Names;

/// A nats-server of our own, stopped and removed on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start one with `extra` in its config (authorization, tls …), JetStream on.
    fn start(extra: &str) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n{extra}\n",
                dir.path().join("js").display().to_string()
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on (bound, then let go).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn nats_cfg(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.into(),
        ..NatsConfig::default()
    }
}

/// Connect and prove the connection works: a message there and back.
async fn round_trip(cfg: &NatsConfig) -> Result<(), String> {
    let client = connect::nats(cfg, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let subject = client.new_inbox();
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish(subject, "ping".into())
        .await
        .map_err(|e| e.to_string())?;
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .map_err(|_| "no echo in time".to_string())?;
    assert_eq!(m.map(|m| m.payload), Some("ping".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_user_and_password_right_wrong_and_missing() {
    let server = NatsServer::start("authorization { user: sy, password: \"pw-right-7f3a\" }");
    std::env::set_var("SY_SEC_PW_RIGHT", "pw-right-7f3a");
    std::env::set_var("SY_SEC_PW_WRONG", "pw-wrong-c41d");
    std::env::remove_var("SY_SEC_PW_UNSET");
    let with = |var: &str| NatsConfig {
        user: Some("sy".into()),
        password_env: Some(var.into()),
        ..nats_cfg(&server.url())
    };
    round_trip(&with("SY_SEC_PW_RIGHT")).await.unwrap();

    let e = round_trip(&with("SY_SEC_PW_WRONG")).await.unwrap_err();
    assert!(
        e.contains("refused the login") && e.contains("SY_SEC_PW_WRONG"),
        "{e}"
    );
    assert!(!e.contains("pw-wrong-c41d"), "{e}");
    let e = round_trip(&with("SY_SEC_PW_UNSET")).await.unwrap_err();
    assert!(
        e.contains("nats.password_env") && e.contains("SY_SEC_PW_UNSET") && e.contains("not set"),
        "{e}"
    );
    let e = round_trip(&nats_cfg(&server.url())).await.unwrap_err();
    assert!(
        e.contains("refused the login") && e.contains("no credentials configured"),
        "{e}"
    );

    // In the URL: used, and never shown.
    let port = server.port;
    round_trip(&nats_cfg(&format!(
        "nats://sy:pw-right-7f3a@127.0.0.1:{port}"
    )))
    .await
    .unwrap();
    let e = round_trip(&nats_cfg(&format!(
        "nats://sy:pw-wrong-c41d@127.0.0.1:{port}"
    )))
    .await
    .unwrap_err();
    assert!(e.contains("refused the login"), "{e}");
    assert!(!e.contains("pw-wrong-c41d"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_token_right_and_wrong() {
    let server = NatsServer::start("authorization { token: \"tok-right-91b2\" }");
    std::env::set_var("SY_SEC_TOKEN_RIGHT", "tok-right-91b2");
    std::env::set_var("SY_SEC_TOKEN_WRONG", "tok-wrong-55e0");
    let with = |var: &str| NatsConfig {
        token_env: Some(var.into()),
        ..nats_cfg(&server.url())
    };
    round_trip(&with("SY_SEC_TOKEN_RIGHT")).await.unwrap();
    let e = round_trip(&with("SY_SEC_TOKEN_WRONG")).await.unwrap_err();
    assert!(
        e.contains("refused the login") && e.contains("nats.token_env"),
        "{e}"
    );
    assert!(!e.contains("tok-wrong-55e0"), "{e}");
    let port = server.port;
    round_trip(&nats_cfg(&format!(
        "nats://tok-right-91b2@127.0.0.1:{port}"
    )))
    .await
    .unwrap();
    let e = round_trip(&nats_cfg(&format!(
        "nats://tok-wrong-55e0@127.0.0.1:{port}"
    )))
    .await
    .unwrap_err();
    assert!(!e.contains("tok-wrong-55e0"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_nkey_from_a_variable_or_a_file() {
    let user = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    let server = NatsServer::start(&format!(
        "authorization {{ users: [ {{ nkey: {:?} }} ] }}",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    std::env::set_var("SY_SEC_NKEY_RIGHT", user.seed().unwrap());
    std::env::set_var("SY_SEC_NKEY_OTHER", other.seed().unwrap());
    round_trip(&NatsConfig {
        nkey_seed_file: Some(seed_file),
        ..nats_cfg(&server.url())
    })
    .await
    .unwrap();
    round_trip(&NatsConfig {
        nkey_env: Some("SY_SEC_NKEY_RIGHT".into()),
        ..nats_cfg(&server.url())
    })
    .await
    .unwrap();
    let e = round_trip(&NatsConfig {
        nkey_env: Some("SY_SEC_NKEY_OTHER".into()),
        ..nats_cfg(&server.url())
    })
    .await
    .unwrap_err();
    assert!(
        e.contains("refused the login") && e.contains("nats.nkey_env"),
        "{e}"
    );
    assert!(!e.contains(&other.seed().unwrap()), "{e}");
    let e = round_trip(&NatsConfig {
        nkey_seed_file: Some(dir.path().join("missing.nk")),
        ..nats_cfg(&server.url())
    })
    .await
    .unwrap_err();
    assert!(
        e.contains("nats.nkey_seed_file") && e.contains("missing.nk"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_with_our_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let server = NatsServer::start(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    ));
    let trusting = NatsConfig {
        tls_ca_file: Some(cert.clone()),
        tls_required: true,
        ..nats_cfg(&server.url())
    };
    round_trip(&trusting).await.unwrap();
    let e = round_trip(&nats_cfg(&server.url())).await.unwrap_err();
    assert!(
        e.contains("TLS failed") && e.contains("nats.tls_ca_file"),
        "{e}"
    );
    let e = round_trip(&NatsConfig {
        tls_ca_file: Some(dir.path().join("missing.pem")),
        ..nats_cfg(&server.url())
    })
    .await
    .unwrap_err();
    assert!(
        e.contains("nats.tls_ca_file") && e.contains("missing.pem"),
        "{e}"
    );

    // A server that verifies clients: our certificate and key get us in; none does not.
    let client = rcgen::generate_simple_self_signed(vec!["switchyard".into()]).unwrap();
    let (client_cert, client_key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&client_cert, client.cert.pem()).unwrap();
    std::fs::write(&client_key, client.key_pair.serialize_pem()).unwrap();
    let verifying = NatsServer::start(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}",
        cert.display().to_string(),
        key.display().to_string(),
        client_cert.display().to_string()
    ));
    let mut with_client_cert = NatsConfig {
        tls_ca_file: Some(cert.clone()),
        tls_cert_file: Some(client_cert.clone()),
        tls_key_file: Some(client_key.clone()),
        ..nats_cfg(&verifying.url())
    };
    round_trip(&with_client_cert).await.unwrap();
    with_client_cert.tls_cert_file = None;
    with_client_cert.tls_key_file = None;
    let e = round_trip(&with_client_cert).await.unwrap_err();
    assert!(e.contains("TLS failed"), "{e}");

    // tls_required against a server without TLS is refused, not silently plain.
    let plain = NatsServer::start("");
    let e = round_trip(&NatsConfig {
        tls_required: true,
        ..nats_cfg(&plain.url())
    })
    .await
    .unwrap_err();
    assert!(e.contains("TLS failed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_list_connects_past_members_that_are_down() {
    let up = common::nats_url();
    let (down1, down2) = (free_port(), free_port());
    for url in [
        format!("nats://127.0.0.1:{down1},{up}"),
        format!("nats://127.0.0.1:{down1}, nats://127.0.0.1:{down2}, {up}"),
    ] {
        round_trip(&nats_cfg(&url))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    let e = round_trip(&nats_cfg(&format!(
        "nats://127.0.0.1:{down1},nats://127.0.0.1:{down2}"
    )))
    .await
    .unwrap_err();
    assert!(e.contains("no member answered"), "{e}");
    assert!(
        e.contains(&down1.to_string()) && e.contains(&down2.to_string()),
        "{e}"
    );

    // A worker given the list (first member down) runs jobs; so does the CLI.
    let mut env = TestEnv::new(|_| {}).await;
    env.config.nats.url = format!("nats://127.0.0.1:{down1},{up}");
    let (stop, worker) = env.start_worker().await;
    env.publish(Priority::Normal, "acme", job("c1", "acme", ""))
        .await;
    assert_eq!(env.result("acme", "c1", 30).await.status, Status::Succeeded);
    let (code, _, err) = env.cli(&["dlq", "list"]).await;
    assert_eq!(code, 0, "{err}");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A worker that logs in with a password, end to end on a server that wants one; the
/// binary with the wrong password stops and says why, never printing it (debug logs on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_logs_in_and_the_password_never_shows() {
    let server = NatsServer::start("authorization { user: sy, password: \"pw-e2e-2c9d\" }");
    std::env::set_var("SY_SEC_E2E_PW", "pw-e2e-2c9d");
    let env = TestEnv::new(|_| {}).await;
    let mut cfg = env.config.clone();
    cfg.nats.url = server.url();
    cfg.nats.user = Some("sy".into());
    cfg.nats.password_env = Some("SY_SEC_E2E_PW".into());
    let providers = switchyard::providers::Providers::from_config(&cfg).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(switchyard::app::run_worker(
        cfg.clone(),
        providers,
        stop.clone(),
        None,
    ));
    let client = connect::nats(&cfg.nats, Duration::from_secs(5))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::new(&env.prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(names.jobs_stream()).await {
            if s.info().await.is_ok_and(|i| i.state.consumer_count == 3) {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no consumers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut replies = client.subscribe("_INBOX.sec.>").await.unwrap();
    client.flush().await.unwrap();
    js.publish(
        names.jobs_subject(Priority::Normal, "acme"),
        job("e1", "acme", r#","reply_to":"_INBOX.sec.e1""#).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("a reply in time")
        .unwrap();
    let r: JobResult = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(r.status, Status::Succeeded, "{:?}", r.error);
    stop.cancel();
    worker.await.unwrap().unwrap();

    for (vars, ok) in [
        (
            vec![
                ("NATS_URL", server.url()),
                ("SWITCHYARD_NATS__USER", "sy".into()),
                ("SWITCHYARD_NATS__PASSWORD_ENV", "SY_SEC_PW".into()),
                ("SY_SEC_PW", "pw-e2e-2c9d".into()),
            ],
            true,
        ),
        (
            vec![
                ("NATS_URL", server.url()),
                ("SWITCHYARD_NATS__USER", "sy".into()),
                ("SWITCHYARD_NATS__PASSWORD_ENV", "SY_SEC_PW".into()),
                ("SY_SEC_PW", "pw-bad-0a1b".into()),
            ],
            false,
        ),
        (
            vec![(
                "NATS_URL",
                format!("nats://sy:pw-e2e-2c9d@127.0.0.1:{}", server.port),
            )],
            true,
        ),
        (
            vec![(
                "NATS_URL",
                format!("nats://sy:pw-bad-0a1b@127.0.0.1:{}", server.port),
            )],
            false,
        ),
    ] {
        for args in [&["dlq", "list"][..], &["worker"]] {
            if ok && args[0] == "worker" {
                continue;
            }
            let out = env
                .command()
                .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
                .env("SWITCHYARD_LOG", "debug")
                .args(args)
                .output()
                .await
                .unwrap();
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert_eq!(out.status.success(), ok, "{vars:?} {args:?}: {stderr}");
            for secret in ["pw-e2e-2c9d", "pw-bad-0a1b"] {
                assert!(
                    !stdout.contains(secret) && !stderr.contains(secret),
                    "{args:?} printed a password:\n{stderr}"
                );
            }
            if !ok {
                assert!(stderr.contains("refused the login"), "{stderr}");
            }
        }
    }
}

/// `[reply_to]`: an allowed subject gets the result; one outside the tenant's list is
/// `invalid_job`, and nothing is published there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_outside_the_allow_list_is_invalid_and_gets_nothing() {
    let env = TestEnv::new(|c| {
        c.reply_to.tenants.push(TenantReplyTo {
            tenant: "initech".into(),
            allow: vec!["initech.ok.>".into()],
        })
    })
    .await;
    let (stop, worker) = env.start_worker().await;
    // The default list, `_INBOX.>`, for acme.
    let mut inbox = env.subscribe("_INBOX.allow.>").await;
    env.publish(
        Priority::Normal,
        "acme",
        job("a1", "acme", r#","reply_to":"_INBOX.allow.a1""#),
    )
    .await;
    assert_eq!(next_json(&mut inbox, 30).await["id"], "a1");

    // initech's own list replaces the default: one subscription sees all of initech.> in
    // the order the worker published, so a refused job's reply would arrive first.
    let mut initech = env.subscribe("initech.>").await;
    for (id, reply_to) in [("g1", "initech.no.g1"), ("g2", "_INBOX.allow.g2")] {
        env.publish(
            Priority::Normal,
            "initech",
            job(id, "initech", &format!(r#","reply_to":"{reply_to}""#)),
        )
        .await;
        let r = env.result("initech", id, 30).await;
        let e = r.error.expect("refused");
        assert_eq!(e.kind, ErrorKind::InvalidJob);
        assert!(
            e.message.contains(reply_to) && e.message.contains("initech.ok.>"),
            "{}",
            e.message
        );
        assert!(env.dlq("initech", id).await.is_some());
    }
    assert_eq!(env.wait_jobs_left(0, 30).await, 0);
    env.publish(
        Priority::Normal,
        "initech",
        job("g3", "initech", r#","reply_to":"initech.ok.g3""#),
    )
    .await;
    let first = next_json(&mut initech, 30).await;
    assert_eq!(first["id"], "g3", "only the allowed subject got a result");
    assert_eq!(first["status"], "succeeded");
    // Nor did acme's inbox subscription see initech's refused _INBOX reply.
    env.publish(
        Priority::Normal,
        "acme",
        job("a2", "acme", r#","reply_to":"_INBOX.allow.a2""#),
    )
    .await;
    assert_eq!(next_json(&mut inbox, 30).await["id"], "a2");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

fn pg(url: &str) -> PostgresConfig {
    PostgresConfig {
        url: url.into(),
        ..PostgresConfig::default()
    }
}

async fn ssl_in_use(cfg: &PostgresConfig) -> Result<bool, String> {
    let pool = connect::postgres(cfg, 1).await.map_err(|e| e.to_string())?;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
    pool.close().await;
    Ok(ssl)
}

/// Postgres over TLS (the test server has `ssl = on`): `ssl_mode` and `ssl_root_cert`
/// are applied over the URL; a certificate we do not trust stops the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    let url = common::admin_db_url();
    let on: String = {
        let pool = connect::postgres(&pg(&url), 1).await.unwrap();
        sqlx::query_scalar("SHOW ssl")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(on, "on", "this test needs a Postgres server with ssl = on");
    let with = |mode, ca: Option<PathBuf>| PostgresConfig {
        ssl_mode: Some(mode),
        ssl_root_cert: ca,
        ..pg(&url)
    };
    assert!(ssl_in_use(&with(PgSslMode::Require, None)).await.unwrap());
    assert!(!ssl_in_use(&with(PgSslMode::Disable, None)).await.unwrap());
    // The key wins over the URL's sslmode.
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut cfg = with(PgSslMode::Require, None);
    cfg.url = format!("{url}{sep}sslmode=disable");
    assert!(ssl_in_use(&cfg).await.unwrap());
    // And the URL's own sslmode works without the key.
    assert!(ssl_in_use(&pg(&format!("{url}{sep}sslmode=require")))
        .await
        .unwrap());

    // Verified against a CA that did not sign the server's certificate: refused.
    let dir = tempfile::tempdir().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let e = ssl_in_use(&with(PgSslMode::VerifyCa, Some(ca)))
        .await
        .unwrap_err();
    assert!(e.starts_with("Postgres at "), "{e}");
    let e = ssl_in_use(&with(
        PgSslMode::VerifyFull,
        Some(Path::new("/nonexistent/ca.pem").into()),
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("postgres.ssl_root_cert") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
}
