//! The `reply_to` allow-list: which subjects a tenant's jobs may have their results
//! published to. NATS subject patterns (`*` one token, `>` one or more trailing tokens),
//! compiled once from the configuration (`[reply_to]`) and matched per job without
//! allocating. The contract's other `reply_to` rules are in [`super::names`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens, last in a pattern.
    Rest,
}

/// One NATS subject pattern such as `_INBOX.>` or `acme.*.replies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern {
    text: Box<str>,
    tokens: Box<[Token]>,
}

impl SubjectPattern {
    /// Parse a pattern that a valid `reply_to` of the worker with `prefix` could match:
    /// tokens of `A-Z a-z 0-9 _ -`, or `*`, or a final `>`; not starting with `prefix`.
    pub fn parse(text: &str, prefix: &str) -> Result<SubjectPattern, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "" => return Err(format!("{text:?}: empty token at position {}", i + 1)),
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => return Err(format!("{text:?}: '>' may only be the last token")),
                p if p
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') =>
                {
                    if i == 0 && p == prefix {
                        return Err(format!(
                            "{text:?}: starts with the worker's own prefix {prefix:?}, which no reply_to may"
                        ));
                    }
                    Token::Literal(p.into())
                }
                p => {
                    return Err(format!(
                        "{text:?}: token {p:?} may hold only A-Z a-z 0-9 _ - (or be * or a final >), as a reply_to's tokens do"
                    ))
                }
            };
            tokens.push(token);
        }
        Ok(SubjectPattern {
            text: text.into(),
            tokens: tokens.into(),
        })
    }

    /// Does `subject` (a `reply_to` that passed the contract's rules) match?
    pub fn matches(&self, subject: &str) -> bool {
        let mut parts = subject.split('.');
        for token in self.tokens.iter() {
            match token {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(l) => {
                    if parts.next() != Some(&**l) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug)]
struct Lists {
    default: Box<[SubjectPattern]>,
    tenants: HashMap<Box<str>, Box<[SubjectPattern]>>,
}

/// The compiled allow-list: a default list and per-tenant lists that replace it.
/// Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ReplyToRules {
    lists: Arc<Lists>,
}

impl ReplyToRules {
    pub fn new(
        default: Vec<SubjectPattern>,
        tenants: impl IntoIterator<Item = (String, Vec<SubjectPattern>)>,
    ) -> ReplyToRules {
        ReplyToRules {
            lists: Arc::new(Lists {
                default: default.into(),
                tenants: tenants
                    .into_iter()
                    .map(|(t, l)| (t.into_boxed_str(), l.into_boxed_slice()))
                    .collect(),
            }),
        }
    }

    /// Every subject the contract's rules let through (`>` for all tenants).
    pub fn any() -> ReplyToRules {
        let all = SubjectPattern {
            text: ">".into(),
            tokens: [Token::Rest].into(),
        };
        ReplyToRules::new(vec![all], [])
    }

    /// The list that applies to `tenant`.
    fn list(&self, tenant: &str) -> &[SubjectPattern] {
        self.lists
            .tenants
            .get(tenant)
            .unwrap_or(&self.lists.default)
    }

    pub fn allows(&self, tenant: &str, reply_to: &str) -> bool {
        self.list(tenant).iter().any(|p| p.matches(reply_to))
    }

    /// Why `reply_to` is refused for `tenant`, or `None` when a pattern allows it.
    pub fn problem(&self, tenant: &str, reply_to: &str) -> Option<String> {
        if self.allows(tenant, reply_to) {
            return None;
        }
        let list = self.list(tenant);
        let key = if self.lists.tenants.contains_key(tenant) {
            format!("reply_to.tenants entry for {tenant:?}")
        } else {
            "reply_to.allow".to_string()
        };
        let patterns: Vec<&str> = list.iter().map(SubjectPattern::as_str).collect();
        Some(format!(
            "reply_to: {reply_to:?} is not allowed for tenant {tenant:?} ({key}: {})",
            if patterns.is_empty() {
                "nothing".to_string()
            } else {
                patterns.join(", ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SubjectPattern {
        SubjectPattern::parse(s, "llm").unwrap()
    }

    #[test]
    fn wildcards_follow_nats() {
        assert!(p("_INBOX.>").matches("_INBOX.x9f.1"));
        assert!(p("_INBOX.>").matches("_INBOX.x"));
        assert!(!p("_INBOX.>").matches("_INBOX"));
        assert!(!p("_INBOX.>").matches("_INBOXES.x"));
        assert!(p(">").matches("a"));
        assert!(p(">").matches("a.b.c"));
        assert!(p("acme.*.r").matches("acme.x.r"));
        assert!(!p("acme.*.r").matches("acme.x.y.r"));
        assert!(!p("acme.*.r").matches("acme.r"));
        assert!(p("acme.*").matches("acme.x"));
        assert!(!p("acme.*").matches("acme.x.y"));
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.b.c"));
        assert!(!p("a.b").matches("a"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("a..b", "empty token"),
            ("a.>.b", "last token"),
            ("$JS.>", "may hold only"),
            ("a b", "may hold only"),
            ("a.b*", "may hold only"),
            ("llm.>", "own prefix"),
        ] {
            let e = SubjectPattern::parse(bad, "llm").unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(SubjectPattern::parse("llmx.>", "llm").is_ok());
        assert!(SubjectPattern::parse("*.x", "llm").is_ok());
    }

    #[test]
    fn a_tenant_list_replaces_the_default() {
        let rules = ReplyToRules::new(
            vec![p("_INBOX.>")],
            [("acme".to_string(), vec![p("acme.>")])],
        );
        assert!(rules.allows("globex", "_INBOX.a"));
        assert!(!rules.allows("globex", "acme.a"));
        assert!(rules.allows("acme", "acme.a"));
        assert!(!rules.allows("acme", "_INBOX.a"));
        let e = rules.problem("acme", "_INBOX.a").unwrap();
        assert!(
            e.contains("reply_to.tenants") && e.contains("acme.>"),
            "{e}"
        );
        let e = rules.problem("globex", "orders.create").unwrap();
        assert!(
            e.contains("reply_to.allow") && e.contains("_INBOX.>"),
            "{e}"
        );
        assert!(ReplyToRules::any().allows("x", "orders.create"));
        let none = ReplyToRules::new(vec![], []);
        assert!(none.problem("x", "_INBOX.a").unwrap().contains("nothing"));
    }
}
