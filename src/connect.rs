//! Connections to NATS and Postgres as the configuration says: a cluster's members,
//! authentication and TLS. Secrets are read here, from the variables and files the
//! config names, held as `SecretString` until handed to the client, and never printed:
//! every address in a message or log line has its userinfo masked (the NATS client is
//! given addresses without userinfo at all, as it logs them).

use crate::config::{redact_url, ConfigError, NatsConfig, PgSslMode, PostgresConfig};
use crate::config::{NatsServer, UrlCredentials};
use async_nats::ConnectErrorKind;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key}: environment variable {var} is not set or is empty")]
    MissingSecret { key: &'static str, var: String },
    #[error("{key}: cannot read {path}: {source}")]
    File {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("NATS at {servers}: {problem}")]
    Nats { servers: String, problem: String },
    #[error("Postgres at {url}: {source}")]
    Postgres { url: String, source: sqlx::Error },
}

/// How long a command waits for a NATS server that does not answer yet before giving up
/// (a refused login or a TLS failure ends it at once).
pub const NATS_PATIENCE: Duration = Duration::from_secs(10);

/// Connect to any member of `nats.url`, with the configured credentials and TLS. A
/// member that does not answer is skipped; when none does, this tries again for
/// `patience`. The client fails over between the members (and the ones the cluster
/// announces) afterwards.
pub async fn nats(
    cfg: &NatsConfig,
    patience: Duration,
) -> Result<async_nats::Client, ConnectError> {
    let servers = cfg.servers()?;
    let shown = servers
        .iter()
        .map(|s| s.addr.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let nats_err = |problem: String| ConnectError::Nats {
        servers: shown.clone(),
        problem,
    };
    let addrs = servers
        .iter()
        .map(|s| s.addr.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| nats_err(e.to_string()))?;
    let (options, login) = nats_options(cfg, &servers).await?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let e = match options.clone().connect(addrs.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        let problem = match e.kind() {
            ConnectErrorKind::AuthorizationViolation => {
                return Err(nats_err(format!("the server refused the login ({login})")))
            }
            ConnectErrorKind::Authentication => {
                return Err(nats_err(format!("could not sign in with {login}: {e}")))
            }
            _ if e.kind() == ConnectErrorKind::Tls || is_tls_failure(&e) => {
                return Err(nats_err(format!(
                    "TLS failed ({e}); see nats.tls_ca_file, nats.tls_cert_file, nats.tls_key_file"
                )))
            }
            ConnectErrorKind::ServerParse => return Err(nats_err(e.to_string())),
            _ => format!("no member answered: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(nats_err(problem));
        }
        tracing::warn!(servers = %shown, error = %problem, "NATS not reachable yet; trying again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A handshake that failed inside TLS (a certificate we do not trust, say): the client
/// reports it as an I/O error, but trying again will not help.
fn is_tls_failure(e: &async_nats::ConnectError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map_or(s, |i| i as &(dyn std::error::Error + 'static));
        if inner.is::<async_nats::rustls::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The client's options, and how it logs in, for messages (no secret in it).
async fn nats_options(
    cfg: &NatsConfig,
    servers: &[NatsServer],
) -> Result<(async_nats::ConnectOptions, String), ConnectError> {
    let mut o = async_nats::ConnectOptions::new()
        .name("switchyard")
        .connection_timeout(Duration::from_secs(5))
        .client_capacity(65_536)
        .subscription_capacity(65_536);
    // Config validation made sure there is at most one way, and one set of URL
    // credentials for all members.
    let login = if let Some(c) = servers.first().and_then(|s| s.credentials.as_ref()) {
        match c {
            UrlCredentials::UserPassword { user, password } => {
                o = o.user_and_password(user.clone(), password.clone());
                format!("user {user:?} with the password in nats.url")
            }
            UrlCredentials::Token(token) => {
                o = o.token(token.clone());
                "the token in nats.url".to_string()
            }
        }
    } else if let (Some(user), Some(var)) = (&cfg.user, &cfg.password_env) {
        let password = secret("nats.password_env", var)?;
        o = o.user_and_password(user.clone(), password.expose_secret().to_string());
        format!("nats.user {user:?} with the password in {var} (nats.password_env)")
    } else if let Some(var) = &cfg.token_env {
        let token = secret("nats.token_env", var)?;
        o = o.token(token.expose_secret().to_string());
        format!("the token in {var} (nats.token_env)")
    } else if let Some(var) = &cfg.nkey_env {
        let seed = secret("nats.nkey_env", var)?;
        o = o.nkey(seed.expose_secret().trim().to_string());
        format!("the NKey seed in {var} (nats.nkey_env)")
    } else if let Some(path) = &cfg.nkey_seed_file {
        let seed = SecretString::from(read_file("nats.nkey_seed_file", path)?);
        o = o.nkey(seed.expose_secret().trim().to_string());
        format!("the NKey seed in {} (nats.nkey_seed_file)", path.display())
    } else if let Some(path) = &cfg.credentials_file {
        o = o
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::File {
                key: "nats.credentials_file",
                path: path.display().to_string(),
                source,
            })?;
        format!(
            "the credentials in {} (nats.credentials_file)",
            path.display()
        )
    } else {
        "no credentials configured: set nats.user with nats.password_env, nats.token_env, nats.nkey_env, nats.nkey_seed_file or nats.credentials_file".to_string()
    };
    if cfg.tls_required {
        o = o.require_tls(true);
    }
    if let Some(ca) = &cfg.tls_ca_file {
        readable("nats.tls_ca_file", ca)?;
        o = o.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        readable("nats.tls_cert_file", cert)?;
        readable("nats.tls_key_file", key)?;
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    Ok((o, login))
}

/// A pool of at most `max_connections` to the configured database, with its TLS and
/// password settings.
pub async fn postgres(cfg: &PostgresConfig, max_connections: u32) -> Result<PgPool, ConnectError> {
    let opts = postgres_options(cfg)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|source| ConnectError::Postgres {
            url: redact_url(&cfg.url),
            source,
        })
}

/// `postgres.url` (with any `sslmode`, `sslrootcert` … it carries), then the keys of
/// `[postgres]` over it.
pub fn postgres_options(cfg: &PostgresConfig) -> Result<PgConnectOptions, ConnectError> {
    let mut o = PgConnectOptions::from_str(&cfg.url)
        .map_err(|source| ConnectError::Postgres {
            url: redact_url(&cfg.url),
            source,
        })?
        .application_name("switchyard")
        .statement_cache_capacity(64);
    if let Some(var) = &cfg.password_env {
        o = o.password(secret("postgres.password_env", var)?.expose_secret());
    }
    if let Some(mode) = cfg.ssl_mode {
        o = o.ssl_mode(match mode {
            PgSslMode::Disable => sqlx::postgres::PgSslMode::Disable,
            PgSslMode::Allow => sqlx::postgres::PgSslMode::Allow,
            PgSslMode::Prefer => sqlx::postgres::PgSslMode::Prefer,
            PgSslMode::Require => sqlx::postgres::PgSslMode::Require,
            PgSslMode::VerifyCa => sqlx::postgres::PgSslMode::VerifyCa,
            PgSslMode::VerifyFull => sqlx::postgres::PgSslMode::VerifyFull,
        });
    }
    if let Some(ca) = &cfg.ssl_root_cert {
        readable("postgres.ssl_root_cert", ca)?;
        o = o.ssl_root_cert(ca);
    }
    if let (Some(cert), Some(key)) = (&cfg.ssl_cert, &cfg.ssl_key) {
        readable("postgres.ssl_cert", cert)?;
        readable("postgres.ssl_key", key)?;
        o = o.ssl_client_cert(cert).ssl_client_key(key);
    }
    Ok(o)
}

/// The value of the variable `var`, named by `key`.
fn secret(key: &'static str, var: &str) -> Result<SecretString, ConnectError> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v)),
        _ => Err(ConnectError::MissingSecret {
            key,
            var: var.to_string(),
        }),
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path).map_err(|source| ConnectError::File {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// Fail now, naming the key, rather than inside the client's handshake.
fn readable(key: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|source| ConnectError::File {
            key,
            path: path.display().to_string(),
            source,
        })
}
