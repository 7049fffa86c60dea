//! `[console]`: the operator web console (`switchyard console`): where it listens, who may
//! use it, and whether prompt and output text is shown.
//!
//! ```toml
//! [console]
//! listen = "0.0.0.0:8089"
//! show_content = false
//! [[console.tokens]]
//! name = "alice"
//! role = "operator"     # or read_only
//! sha256 = "<hex sha256 of the token>"   # printf %s "$TOKEN" | sha256sum
//! ```
//!
//! Tokens are held only as their SHA-256 (never the token itself). Without tokens the
//! console has no authentication, which it accepts only on a loopback address.

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address to listen on (`host:port`).
    pub listen: String,
    /// Show prompts, outputs and raw payloads (they may hold personal data).
    pub show_content: bool,
    /// Who may sign in; empty: no authentication (loopback only).
    pub tokens: Vec<ConsoleToken>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: "127.0.0.1:8089".into(),
            show_content: false,
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    /// Who it is (shown in the console's header, never the token).
    pub name: String,
    pub role: ConsoleRole,
    /// The token's SHA-256, 64 hex digits.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleRole {
    /// Reads everything, replays and purges dead letters.
    Operator,
    /// Reads only: every POST action answers 403.
    ReadOnly,
}

impl ConsoleRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Operator => "operator",
            ConsoleRole::ReadOnly => "read_only",
        }
    }
}

impl ConsoleConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let f = |k: &str| format!("console.tokens[{i}].{k}");
            if t.name.trim().is_empty() {
                return Err(invalid(f("name"), "must not be empty"));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    f("sha256"),
                    "must be the token's SHA-256 as 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                ));
            }
            if !seen.insert(t.sha256.to_ascii_lowercase()) {
                return Err(invalid(f("sha256"), "the same token is listed twice"));
            }
        }
        Ok(())
    }

    /// `listen` as an address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "console.listen",
                format!("{:?} is not an ip:port address", self.listen),
            )
        })
    }

    /// Refuse to serve without authentication anywhere but on a loopback address.
    pub fn check_exposure(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        if self.tokens.is_empty() && !addr.ip().is_loopback() {
            return Err(invalid(
                "console.tokens",
                format!(
                    "the console listens on {addr}, not a loopback address: configure [[console.tokens]] (operator or read_only) or listen on 127.0.0.1"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sha: &str) -> ConsoleToken {
        ConsoleToken {
            name: "alice".into(),
            role: ConsoleRole::Operator,
            sha256: sha.into(),
        }
    }

    #[test]
    fn no_tokens_only_on_loopback() {
        let c = ConsoleConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.check_exposure("127.0.0.1:8089".parse().unwrap()).is_ok());
        assert!(c.check_exposure("[::1]:8089".parse().unwrap()).is_ok());
        let e = c
            .check_exposure("0.0.0.0:8089".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("console.tokens"), "{e}");
        let with = ConsoleConfig {
            tokens: vec![token(&"a".repeat(64))],
            ..ConsoleConfig::default()
        };
        assert!(with.check_exposure("0.0.0.0:8089".parse().unwrap()).is_ok());
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |c: ConsoleConfig| c.validate().unwrap_err().to_string();
        let e = bad(ConsoleConfig {
            listen: "localhost".into(),
            ..ConsoleConfig::default()
        });
        assert!(e.contains("console.listen"), "{e}");
        let e = bad(ConsoleConfig {
            tokens: vec![token("not-hex")],
            ..ConsoleConfig::default()
        });
        assert!(e.contains("console.tokens[0].sha256"), "{e}");
        let e = bad(ConsoleConfig {
            tokens: vec![token(&"b".repeat(64)), token(&"B".repeat(64))],
            ..ConsoleConfig::default()
        });
        assert!(e.contains("twice"), "{e}");
    }
}
