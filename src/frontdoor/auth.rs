//! API keys: `Authorization: Bearer <key>` → the key's tenant, priorities and in-flight
//! cap. Keys are known only by their SHA-256 (config `[[serve.keys]]`), compared in
//! constant time over every listed key, and never logged: errors name the key's
//! configured `name` at most.

use super::error::ApiError;
use crate::config::ServeConfig;
use crate::job::Priority;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The header that asks for a priority (`high`, `normal`, `low`).
pub const PRIORITY_HEADER: &str = "x-switchyard-priority";

/// What a key grants.
#[derive(Debug)]
pub struct Grant {
    hash: [u8; 32],
    pub tenant: String,
    pub name: String,
    pub priority: Priority,
    pub max_priority: Priority,
    pub max_in_flight: usize,
    in_flight: AtomicUsize,
}

/// Every configured key.
#[derive(Debug, Default)]
pub struct Keys {
    grants: Vec<Arc<Grant>>,
}

/// The lower-case hex SHA-256 of a key (what `[[serve.keys]] sha256` holds).
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Equal in time that does not depend on where the first difference is.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Keys {
    /// From a checked config (`ServeConfig::validate` has seen every field).
    pub fn from_config(cfg: &ServeConfig) -> Keys {
        let grants = cfg
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                Some(Arc::new(Grant {
                    hash: unhex(&k.sha256)?,
                    tenant: k.tenant.clone(),
                    name: k.name.clone().unwrap_or_else(|| format!("serve.keys[{i}]")),
                    priority: Priority::parse(&k.priority)?,
                    max_priority: Priority::parse(&k.max_priority)?,
                    max_in_flight: k.max_in_flight,
                    in_flight: AtomicUsize::new(0),
                }))
            })
            .collect();
        Keys { grants }
    }

    /// The grant of the request's bearer key, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Grant>, ApiError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "no API key: send Authorization: Bearer <key>",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or_default();
        if key.is_empty() {
            return Err(ApiError::unauthorized(
                "the Authorization header is not `Bearer <key>`",
            ));
        }
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for g in &self.grants {
            if same(&g.hash, &hash) {
                found = Some(g.clone());
            }
        }
        found.ok_or_else(|| ApiError::unauthorized("incorrect API key provided"))
    }
}

impl Grant {
    /// The priority a request asks for (`X-Switchyard-Priority`), within what the key
    /// allows; the key's default without the header.
    pub fn priority(&self, headers: &HeaderMap) -> Result<Priority, ApiError> {
        let Some(v) = headers.get(PRIORITY_HEADER) else {
            return Ok(self.priority);
        };
        let asked = v.to_str().ok().and_then(Priority::parse).ok_or_else(|| {
            ApiError::bad_request("X-Switchyard-Priority must be high, normal or low")
        })?;
        // High < Normal < Low in `Ord`: a smaller value is a higher priority.
        if asked < self.max_priority {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("priority_not_allowed"),
                format!(
                    "key {} may ask for priority {} at most, not {asked}",
                    self.name, self.max_priority
                ),
            ));
        }
        Ok(asked)
    }

    /// Count one request in flight, or 429 when the key has its `max_in_flight` already.
    pub fn enter(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(self.clone());
        if now >= self.max_in_flight {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                format!(
                    "key {} has {} requests in flight, its limit (serve.keys max_in_flight); retry when one has finished",
                    self.name, self.max_in_flight
                ),
            ));
        }
        Ok(slot)
    }
}

/// One request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlight(Arc<Grant>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;

    fn keys(max_in_flight: usize) -> Keys {
        Keys::from_config(&ServeConfig {
            keys: vec![ApiKeyConfig {
                sha256: hash_key("sk-good"),
                tenant: "acme".into(),
                name: Some("acme-test".into()),
                priority: "normal".into(),
                max_priority: "normal".into(),
                max_in_flight,
            }],
            ..ServeConfig::default()
        })
    }

    fn bearer(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {k}")
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        h
    }

    #[test]
    fn a_listed_key_gets_its_tenant_and_others_get_401_without_the_key_in_the_message() {
        let k = keys(2);
        let g = k
            .authenticate(&bearer("sk-good"))
            .map_err(|e| e.message)
            .unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(g.tenant, "acme");
        let e = k
            .authenticate(&bearer("sk-bad"))
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(!e.message.contains("sk-bad"));
        assert!(k.authenticate(&HeaderMap::new()).is_err());
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn priority_is_capped_and_in_flight_is_counted() {
        let k = keys(1);
        let g = k
            .authenticate(&bearer("sk-good"))
            .ok()
            .unwrap_or_else(|| panic!("key"));
        let mut h = HeaderMap::new();
        h.insert(
            PRIORITY_HEADER,
            axum::http::HeaderValue::from_static("high"),
        );
        assert_eq!(
            g.priority(&h).err().map(|e| e.status),
            Some(StatusCode::FORBIDDEN)
        );
        h.insert(PRIORITY_HEADER, axum::http::HeaderValue::from_static("low"));
        assert_eq!(g.priority(&h).ok(), Some(Priority::Low));
        let first = g.enter();
        assert!(first.is_ok());
        assert_eq!(
            g.enter().err().map(|e| e.status),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        drop(first);
        assert!(g.enter().is_ok());
    }
}
