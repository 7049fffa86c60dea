//! Deny lists: terms a policy does not let through (a project's code name, a
//! competitor's product), matched case-insensitively as whole words or phrases.

use std::ops::Range;

use super::Check;

/// A policy's deny list (finding kind `deny`). Terms are kept lowercased.
pub struct DenyList {
    terms: Vec<String>,
}

impl DenyList {
    pub fn new(terms: &[String]) -> DenyList {
        DenyList {
            terms: terms.iter().map(|t| t.trim().to_lowercase()).collect(),
        }
    }
}

fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

impl Check for DenyList {
    fn kind(&self) -> &'static str {
        "deny"
    }

    fn scan(&self, text: &str, found: &mut Vec<Range<usize>>) {
        if self.terms.is_empty() {
            return;
        }
        // Lowercasing keeps byte offsets for ASCII; text with other letters whose
        // lowercase differs in length is compared on its ASCII-lowercased copy instead.
        let lower = text.to_lowercase();
        let hay = if lower.len() == text.len() {
            lower
        } else {
            text.to_ascii_lowercase()
        };
        let b = hay.as_bytes();
        for term in &self.terms {
            let mut from = 0;
            while let Some(pos) = hay[from..].find(term.as_str()) {
                let (start, end) = (from + pos, from + pos + term.len());
                let whole = (start == 0 || !word_byte(b[start - 1]))
                    && (end >= b.len() || !word_byte(b[end]));
                if whole {
                    found.push(start..end);
                }
                from = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_any_case() {
        let list = DenyList::new(&["Project Falcon".into(), "acme".into()]);
        let text = "About PROJECT FALCON: ask Acme, not acmecorp.";
        let mut found = Vec::new();
        list.scan(text, &mut found);
        let hits: Vec<&str> = found.into_iter().map(|r| &text[r]).collect();
        assert_eq!(hits, vec!["PROJECT FALCON", "Acme"]);
    }
}
