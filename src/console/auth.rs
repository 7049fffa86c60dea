//! Who is asking, and may they: tokens (an `Authorization: Bearer` header, or the
//! HttpOnly cookie the login form sets), checked against the SHA-256 hashes of
//! `[console] tokens` in constant time; roles (operator, read_only: every POST of a
//! read_only session answers 403); CSRF (every POST form of a cookie session carries a
//! token derived from the session and a per-process secret). Without configured tokens
//! (allowed on loopback only) everyone is the operator `local`.

use super::ConsoleError;
use crate::config::{ConsoleConfig, ConsoleRole};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The login cookie's name.
pub const COOKIE: &str = "sy_console";

/// A signed-in (or anonymous, when auth is off) user, for one request.
#[derive(Debug, Clone)]
pub struct Session {
    pub who: String,
    pub role: ConsoleRole,
    /// Authentication is off (no tokens configured).
    pub anonymous: bool,
    /// Came with a bearer header: a browser cannot forge that cross-site, so its POSTs
    /// need no CSRF token.
    pub bearer: bool,
    /// The CSRF token of this session.
    pub csrf: String,
}

/// The configured tokens and this process's CSRF secret.
pub struct Auth {
    tokens: Vec<([u8; 32], String, ConsoleRole)>,
    secret: [u8; 32],
}

impl Auth {
    pub fn new(cfg: &ConsoleConfig) -> Auth {
        let tokens = cfg
            .tokens
            .iter()
            .filter_map(|t| Some((decode_hex(&t.sha256)?, t.name.clone(), t.role)))
            .collect();
        Auth {
            tokens,
            secret: rand::random(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The session of a presented token, if it is a configured one. Every configured
    /// hash is compared, each in constant time.
    pub fn check(&self, token: &str, bearer: bool) -> Option<Session> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, name, role) in &self.tokens {
            if constant_time_eq(hash, &presented) {
                found = Some((name.clone(), *role));
            }
        }
        let (who, role) = found?;
        Some(Session {
            who,
            role,
            anonymous: false,
            bearer,
            csrf: self.csrf_for(&presented),
        })
    }

    fn anonymous(&self) -> Session {
        Session {
            who: "local".into(),
            role: ConsoleRole::Operator,
            anonymous: true,
            bearer: false,
            csrf: self.csrf_for(&[0u8; 32]),
        }
    }

    fn csrf_for(&self, session_key: &[u8; 32]) -> String {
        let mut h = Sha256::new();
        h.update(b"switchyard-console-csrf");
        h.update(self.secret);
        h.update(session_key);
        hex(&h.finalize())
    }
}

/// Equal bytes, in a time that depends only on the length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The token a request presents: its bearer header, else its login cookie.
fn presented(req: &Request) -> Option<(String, bool)> {
    let headers = req.headers();
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some((t.trim().to_string(), true));
        }
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| {
            // set url-encoded by the login form
            let decoded = form_urlencoded::parse(format!("t={v}").as_bytes())
                .next()
                .map(|(_, t)| t.into_owned())
                .unwrap_or_default();
            (decoded, false)
        })
}

/// The middleware: a session for the request, or 401; a POST of a read_only session is
/// refused with 403 here, before any handler runs.
pub async fn require(
    State(auth): State<Arc<Auth>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ConsoleError> {
    let session = if auth.enabled() {
        match presented(&req).and_then(|(t, bearer)| auth.check(&t, bearer)) {
            Some(s) => s,
            None => return Err(ConsoleError::Unauthorized),
        }
    } else {
        auth.anonymous()
    };
    if req.method() == axum::http::Method::POST
        && session.role != ConsoleRole::Operator
        && req.uri().path() != "/logout"
    {
        return Err(ConsoleError::Forbidden(format!(
            "{} is read_only: replay and purge need the operator role",
            session.who
        )));
    }
    req.extensions_mut().insert(session);
    Ok(next.run(req).await)
}

/// A POST form's fields (repeated names kept), after its CSRF token is checked.
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8], session: &Session) -> Result<Form, ConsoleError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        if !session.bearer {
            let sent = pairs
                .iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), session.csrf.as_bytes()) {
                return Err(ConsoleError::Forbidden(
                    "the form's CSRF token is missing or not this session's: reload the page and try again".into(),
                ));
            }
        }
        Ok(Form(pairs))
    }

    /// The first value of `name`, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsoleToken;

    fn auth() -> Auth {
        let sha = hex(&Sha256::digest(b"s3cret"));
        Auth::new(&ConsoleConfig {
            tokens: vec![ConsoleToken {
                name: "alice".into(),
                role: ConsoleRole::ReadOnly,
                sha256: sha.to_uppercase(),
            }],
            ..ConsoleConfig::default()
        })
    }

    #[test]
    fn tokens_are_checked_by_hash() {
        let a = auth();
        assert!(a.enabled());
        let s = a.check("s3cret", false).unwrap();
        assert_eq!((s.who.as_str(), s.role), ("alice", ConsoleRole::ReadOnly));
        assert!(a.check("s3cre", false).is_none());
        assert!(a.check("", true).is_none());
        // the CSRF token is the session's, stable, and not the token
        assert_eq!(s.csrf, a.check("s3cret", true).unwrap().csrf);
        assert!(!s.csrf.contains("s3cret") && s.csrf.len() == 64);
        assert_ne!(s.csrf, a.anonymous().csrf);
    }

    #[test]
    fn equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn forms_need_the_sessions_csrf_token_unless_bearer() {
        let a = auth();
        let s = a.check("s3cret", false).unwrap();
        assert!(Form::parse(b"key=a", &s).is_err());
        assert!(Form::parse(b"key=a&csrf=nope", &s).is_err());
        let body = format!("key=acme%2Fa&key=acme%2Fb&csrf={}", s.csrf);
        let f = Form::parse(body.as_bytes(), &s).unwrap();
        assert_eq!(f.all("key"), ["acme/a", "acme/b"]);
        assert_eq!(f.get("model"), None);
        let bearer = a.check("s3cret", true).unwrap();
        assert!(Form::parse(b"key=a", &bearer).is_ok());
    }
}
