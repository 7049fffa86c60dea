//! `[nats]` and `[postgres]`: where the servers are and how to prove who we are to them.
//! Secrets are never in the file: a key names the environment variable or the file that
//! holds one, read when connecting (see `crate::connect`), never printed.

use super::{invalid, ConfigError};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// One server, or a cluster's members: a comma-separated string or a TOML array
    /// (held comma-separated). The client connects to any member and fails over.
    /// `NATS_URL` overrides. Userinfo (`nats://user:pass@host`, `nats://token@host`)
    /// works and is never logged.
    #[serde(deserialize_with = "comma_joined")]
    pub url: String,
    /// Subjects `<prefix>.*`, streams `<PREFIX>_*`.
    pub prefix: String,
    pub results_max_age_days: u32,
    /// Stream replicas (1 for a single server; 3 in a cluster).
    pub replicas: usize,
    /// JetStream duplicate window for `Nats-Msg-Id` on the jobs stream.
    pub duplicate_window_s: u64,
    /// User name, with the password in the variable `password_env`.
    pub user: Option<String>,
    pub password_env: Option<String>,
    /// The variable that holds an authentication token.
    pub token_env: Option<String>,
    /// An NKey seed (`SU…`): in the variable `nkey_env`, or in the file `nkey_seed_file`.
    pub nkey_env: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes it.
    pub credentials_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS (a `tls://` URL requires it too).
    pub tls_required: bool,
    /// PEM file of the CA that signed the server's certificate (besides the system's).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "llm".into(),
            results_max_age_days: 7,
            replicas: 1,
            duplicate_window_s: 120,
            user: None,
            password_env: None,
            token_env: None,
            nkey_env: None,
            nkey_seed_file: None,
            credentials_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// As derived, but the URL's userinfo masked.
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("results_max_age_days", &self.results_max_age_days)
            .field("replicas", &self.replicas)
            .field("duplicate_window_s", &self.duplicate_window_s)
            .field("user", &self.user)
            .field("password_env", &self.password_env)
            .field("token_env", &self.token_env)
            .field("nkey_env", &self.nkey_env)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("credentials_file", &self.credentials_file)
            .field("tls_required", &self.tls_required)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// A server of `nats.url`, its userinfo taken out (the client is given credentials
/// separately, and addresses appear in its logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServer {
    /// `nats://host:port` or `tls://host:port`, without userinfo: safe to print.
    pub addr: String,
    pub credentials: Option<UrlCredentials>,
}

/// Credentials written into a URL: `user:password@` or `token@`.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    UserPassword { user: String, password: String },
    Token(String),
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlCredentials::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ***)"),
            UrlCredentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl NatsConfig {
    /// The members of `url`, each checked: `nats://` or `tls://` (or a bare `host:port`).
    pub fn servers(&self) -> Result<Vec<NatsServer>, ConfigError> {
        let members: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let mut out = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let field = || {
                if members.len() == 1 {
                    "nats.url".to_string()
                } else {
                    format!("nats.url[{i}]")
                }
            };
            if m.is_empty() {
                return Err(invalid(field(), "empty server address"));
            }
            let with_scheme = if m.contains("://") {
                m.to_string()
            } else {
                format!("nats://{m}")
            };
            let mut u = reqwest::Url::parse(&with_scheme).map_err(|e| {
                invalid(
                    field(),
                    format!("{} is not a URL: {e}", redact_url(&with_scheme)),
                )
            })?;
            if !matches!(u.scheme(), "nats" | "tls") {
                return Err(invalid(
                    field(),
                    format!(
                        "scheme {:?} is not nats:// or tls:// (websockets are not built in)",
                        u.scheme()
                    ),
                ));
            }
            if u.host_str().is_none_or(str::is_empty) {
                return Err(invalid(field(), "no host"));
            }
            let credentials = match (u.username(), u.password()) {
                ("", None) => None,
                (user, Some(password)) => Some(UrlCredentials::UserPassword {
                    user: percent_decode(user),
                    password: percent_decode(password),
                }),
                (token, None) => Some(UrlCredentials::Token(percent_decode(token))),
            };
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let addr = u.to_string();
            out.push(NatsServer {
                addr: addr.strip_suffix('/').unwrap_or(&addr).to_string(),
                credentials,
            });
        }
        Ok(out)
    }

    /// The members of `url` for messages: userinfo masked.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|m| {
                let m = m.trim();
                if m.contains("://") {
                    redact_url(m)
                } else {
                    redact_url(&format!("nats://{m}"))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let servers = self.servers()?;
        let url_creds = servers[0].credentials.is_some();
        if servers
            .iter()
            .any(|s| s.credentials != servers[0].credentials)
        {
            return Err(invalid(
                "nats.url",
                "the members carry different credentials; give them once (in every URL alike, or as nats.user / nats.token_env …)",
            ));
        }
        for (key, v) in [
            ("nats.user", &self.user),
            ("nats.password_env", &self.password_env),
            ("nats.token_env", &self.token_env),
            ("nats.nkey_env", &self.nkey_env),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(key, "must not be empty"));
            }
        }
        together(
            ("nats.user", self.user.is_some()),
            ("nats.password_env", self.password_env.is_some()),
        )?;
        if self.nkey_env.is_some() && self.nkey_seed_file.is_some() {
            return Err(invalid(
                "nats.nkey_seed_file",
                "set nats.nkey_env or nats.nkey_seed_file, not both",
            ));
        }
        let methods: Vec<&str> = [
            (url_creds, "credentials in nats.url"),
            (self.user.is_some(), "nats.user"),
            (self.token_env.is_some(), "nats.token_env"),
            (
                self.nkey_env.is_some() || self.nkey_seed_file.is_some(),
                "nats.nkey_env / nats.nkey_seed_file",
            ),
            (self.credentials_file.is_some(), "nats.credentials_file"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name)
        .collect();
        if methods.len() > 1 {
            return Err(invalid(
                "nats",
                format!(
                    "one way to authenticate, not {}: {}",
                    methods.len(),
                    methods.join(" and ")
                ),
            ));
        }
        together(
            ("nats.tls_cert_file", self.tls_cert_file.is_some()),
            ("nats.tls_key_file", self.tls_key_file.is_some()),
        )
    }
}

/// `[postgres] ssl_mode`, libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgSslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `DATABASE_URL` overrides. It may carry `sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey` as libpq's URLs do; the keys below override those.
    pub url: String,
    pub max_connections: u32,
    /// The variable that holds the password (instead of one in the URL).
    pub password_env: Option<String>,
    /// `disable` | `allow` | `prefer` (the default) | `require` | `verify-ca` | `verify-full`.
    pub ssl_mode: Option<PgSslMode>,
    /// PEM file of the CA that signed the server's certificate.
    pub ssl_root_cert: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://root@127.0.0.1/switchyard".into(),
            max_connections: 8,
            password_env: None,
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
        }
    }
}

/// As derived, but the URL's password masked.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("password_env", &self.password_env)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_cert", &self.ssl_cert)
            .field("ssl_key", &self.ssl_key)
            .finish()
    }
}

impl PostgresConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
            _ => {
                return Err(invalid(
                    "postgres.url",
                    format!("{} is not a postgres:// URL", redact_url(&self.url)),
                ))
            }
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "postgres.max_connections",
                "must be greater than 0",
            ));
        }
        if self
            .password_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return Err(invalid("postgres.password_env", "must not be empty"));
        }
        together(
            ("postgres.ssl_cert", self.ssl_cert.is_some()),
            ("postgres.ssl_key", self.ssl_key.is_some()),
        )
    }
}

/// Two keys that are set together or not at all; the error names the missing one.
fn together(a: (&str, bool), b: (&str, bool)) -> Result<(), ConfigError> {
    if a.1 == b.1 {
        return Ok(());
    }
    let missing = if a.1 { b.0 } else { a.0 };
    Err(invalid(missing, format!("{} and {} go together", a.0, b.0)))
}

/// `text` with the userinfo of every URL in it masked (`nats://***@host`): for messages
/// that quote the file or a value, such as a TOML syntax error.
pub fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || "/?#\"',]".contains(c))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// A URL for messages and logs: a password, or a lone user name (a NATS token), masked.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            } else if !u.username().is_empty() && matches!(u.scheme(), "nats" | "tls") {
                let _ = u.set_username("***");
            }
            u.to_string()
        }
        Err(_) if url.contains('@') => "<unparseable url with userinfo>".into(),
        Err(_) => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A string, or a list of strings held joined by commas (`nats.url`).
fn comma_joined<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(string_or_list(d)?.join(","))
}

/// A list of strings from a TOML array, or from one comma-separated string (as
/// environment overrides arrive).
pub(super) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a string (comma-separated) or an array of strings")
    })? {
        OneOrMany::One(s) if s.trim().is_empty() => Ok(Vec::new()),
        OneOrMany::One(s) => Ok(s.split(',').map(|p| p.trim().to_string()).collect()),
        OneOrMany::Many(v) => Ok(v),
    }
}
