//! `[serve]`: the OpenAI-compatible HTTP front door (`switchyard serve`, see
//! `crate::frontdoor`). API keys are listed by their SHA-256 (never the key itself), each
//! mapped to a tenant, a default and a highest priority, and a cap on requests in flight.

use super::{invalid, ConfigError};
use crate::job::names::is_valid_tenant;
use crate::job::Priority;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address the front door listens on.
    pub listen: String,
    /// A request with no result after this long answers 504 (the job is given this as
    /// its `deadline`, so it is not started after the client was told to give up).
    pub request_timeout_s: u64,
    /// Largest request body of `/v1/chat/completions` and `/v1/batches` (413 above it).
    pub max_body_bytes: usize,
    /// Largest file `/v1/files` takes (413 above it).
    pub max_file_bytes: usize,
    /// Lines in one batch input file, at most.
    pub max_batch_lines: usize,
    /// How often open batches look for their jobs' results.
    pub batch_poll_ms: u64,
    /// The API keys: `Authorization: Bearer <key>`.
    pub keys: Vec<ApiKeyConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8080".into(),
            request_timeout_s: 600,
            max_body_bytes: 1_048_576,
            max_file_bytes: 200 * 1_048_576,
            max_batch_lines: 50_000,
            batch_poll_ms: 1000,
            keys: Vec::new(),
        }
    }
}

/// One API key, known by its SHA-256 only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Lower-case hex SHA-256 of the key (`switchyard serve --hash-key` prints it).
    pub sha256: String,
    /// The tenant this key's jobs belong to.
    pub tenant: String,
    /// A name for logs and errors (never the key).
    #[serde(default)]
    pub name: Option<String>,
    /// Priority of chat requests without `X-Switchyard-Priority` (batches run `low`).
    #[serde(default = "normal")]
    pub priority: String,
    /// The highest priority this key may ask for.
    #[serde(default = "normal")]
    pub max_priority: String,
    /// Requests in flight at once with this key (429 above it).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
}

fn normal() -> String {
    "normal".into()
}

fn default_in_flight() -> usize {
    256
}

impl ServeConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "serve.listen",
                format!("{:?} is not an address (host:port)", self.listen),
            ));
        }
        for (field, v) in [
            ("serve.request_timeout_s", self.request_timeout_s),
            ("serve.max_body_bytes", self.max_body_bytes as u64),
            ("serve.max_file_bytes", self.max_file_bytes as u64),
            ("serve.max_batch_lines", self.max_batch_lines as u64),
            ("serve.batch_poll_ms", self.batch_poll_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let f = |n: &str| format!("serve.keys[{i}].{n}");
            if k.sha256.len() != 64
                || !k
                    .sha256
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(invalid(
                    f("sha256"),
                    "must be 64 lower-case hex digits (the key's SHA-256, not the key)",
                ));
            }
            if !seen.insert(k.sha256.as_str()) {
                return Err(invalid(f("sha256"), "the same key is listed twice"));
            }
            if !is_valid_tenant(&k.tenant) {
                return Err(invalid(
                    f("tenant"),
                    format!("{:?} is not a valid tenant", k.tenant),
                ));
            }
            let (Some(p), Some(max)) = (
                Priority::parse(&k.priority),
                Priority::parse(&k.max_priority),
            ) else {
                return Err(invalid(
                    f("priority"),
                    "priority and max_priority must be high, normal or low",
                ));
            };
            // Priority orders High < Normal < Low.
            if p < max {
                return Err(invalid(
                    f("priority"),
                    format!("{p} is above max_priority {max}"),
                ));
            }
            if k.max_in_flight == 0 {
                return Err(invalid(f("max_in_flight"), "must be greater than 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::FileConfig;

    fn load(serve: &str) -> Result<FileConfig, String> {
        FileConfig::from_toml_with_env(serve, "t.toml", &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_are_hashes_with_a_valid_tenant_and_priorities_in_order() {
        let good = format!(
            "[serve]\nlisten = \"127.0.0.1:0\"\n[[serve.keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\nmax_priority = \"high\"",
            "a".repeat(64)
        );
        let cfg = load(&good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.serve.keys[0].priority, "normal");
        for (bad, field) in [
            (
                good.replace(&"a".repeat(64), "sk-plain-key"),
                "serve.keys[0].sha256",
            ),
            (good.replace("acme", "Acme!"), "serve.keys[0].tenant"),
            (
                good.replace("max_priority = \"high\"", "priority = \"high\""),
                "serve.keys[0].priority",
            ),
            (good.replace("127.0.0.1:0", "nowhere"), "serve.listen"),
            (format!("{good}\nbogus = 1"), "bogus"),
        ] {
            let e = load(&bad).err().unwrap_or_else(|| panic!("{bad} loaded"));
            assert!(e.contains(field), "{e}");
        }
        let vars = [(
            "SWITCHYARD_SERVE__LISTEN".to_string(),
            "0.0.0.0:9000".to_string(),
        )];
        let cfg = FileConfig::from_toml_with_env("", "t", &vars).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.serve.listen, "0.0.0.0:9000");
    }
}
