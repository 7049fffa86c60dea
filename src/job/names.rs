//! Name rules of the contract: prefix, tenant, job id and reply subject.

/// `^[a-z][a-z0-9_-]{0,31}$`
pub fn is_valid_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// `^[a-z0-9][a-z0-9_-]{0,63}$`
pub fn is_valid_tenant(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// `^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$`
pub fn is_valid_job_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'-')
}

/// Why a `reply_to` is refused, or `None` when it is acceptable: at most 256 bytes of
/// tokens matching `^[A-Za-z0-9_-]+$` joined by single dots, first token not `prefix`.
pub fn reply_to_problem(s: &str, prefix: &str) -> Option<String> {
    if s.is_empty() {
        return Some("reply_to: must not be empty".into());
    }
    if s.len() > 256 {
        return Some(format!("reply_to: {} bytes, at most 256 allowed", s.len()));
    }
    for (i, token) in s.split('.').enumerate() {
        if token.is_empty() {
            return Some(format!("reply_to: empty token at position {}", i + 1));
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Some(format!(
                "reply_to: token {:?} contains {:?}; tokens may hold only A-Z a-z 0-9 _ -",
                token.escape_debug().to_string(),
                c
            ));
        }
        if i == 0 && token == prefix {
            return Some(format!(
                "reply_to: may not start with the worker's own prefix {prefix:?}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(is_valid_prefix("llm"));
        assert!(is_valid_prefix("t_1-x"));
        assert!(!is_valid_prefix(""));
        assert!(!is_valid_prefix("1abc"));
        assert!(!is_valid_prefix("LLM"));
        assert!(!is_valid_prefix(&"a".repeat(33)));
        assert!(is_valid_prefix(&"a".repeat(32)));
    }

    #[test]
    fn tenants_and_ids() {
        assert!(is_valid_tenant("acme"));
        assert!(is_valid_tenant("0acme-x_y"));
        assert!(!is_valid_tenant("_unknown"));
        assert!(!is_valid_tenant("Acme"));
        assert!(!is_valid_tenant(&"a".repeat(65)));
        assert!(is_valid_job_id("doc-4711:chunk_12"));
        assert!(!is_valid_job_id("_seq1"));
        assert!(!is_valid_job_id("a b"));
        assert!(!is_valid_job_id("a.b"));
        assert!(is_valid_job_id(&"A".repeat(128)));
        assert!(!is_valid_job_id(&"A".repeat(129)));
    }

    #[test]
    fn reply_subjects() {
        assert_eq!(reply_to_problem("_INBOX.x9f.1", "llm"), None);
        assert!(reply_to_problem("llm.results.x", "llm").is_some());
        assert!(reply_to_problem("a.*", "llm").is_some());
        assert!(reply_to_problem("a.>", "llm").is_some());
        assert!(reply_to_problem("$JS.API.x", "llm").is_some());
        assert!(reply_to_problem("a..b", "llm").is_some());
        assert!(reply_to_problem("a b", "llm").is_some());
        assert!(reply_to_problem(".a", "llm").is_some());
        assert!(reply_to_problem(&"a".repeat(257), "llm").is_some());
        assert_eq!(reply_to_problem("llmx.a", "llm"), None);
    }
}
