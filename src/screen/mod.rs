//! Screening before routing: the `[screen]` policies (see `crate::config::ScreenConfig`)
//! run on a job's message text before the router sees it. Owns the checks and what a
//! finding leads to; the router applies the outcome (a refusal, a restriction) and the
//! result records it in `route.screen` (counts per finding kind, never the text).
//!
//! # Adding a check
//! A check is one [`Check`] implementation: a finding kind and a scanner that pushes the
//! byte spans it finds. For example, a check for US social security numbers:
//!
//! ```
//! use std::ops::Range;
//! use switchyard::screen::Check;
//!
//! struct Ssn;
//! impl Check for Ssn {
//!     fn kind(&self) -> &'static str { "ssn" }
//!     fn scan(&self, text: &str, found: &mut Vec<Range<usize>>) {
//!         let b = text.as_bytes();
//!         for i in 0..b.len().saturating_sub(10) {
//!             let s = &b[i..i + 11];
//!             let digit = |k: usize| s[k].is_ascii_digit();
//!             if (0..11).all(|k| if k == 3 || k == 6 { s[k] == b'-' } else { digit(k) }) {
//!                 found.push(i..i + 11);
//!             }
//!         }
//!     }
//! }
//! let mut found = Vec::new();
//! Ssn.scan("ssn 078-05-1120.", &mut found);
//! assert_eq!(found, vec![4..15]);
//! ```
//! then name it in `config::screen::CHECKS` and in [`check_for`], and policies can list
//! it in `checks` with an action in `actions`.

mod deny;
mod injection;
mod pii;

pub use deny::DenyList;
pub use injection::Injection;
pub use pii::{iban_valid, luhn_valid, Card, Email, Iban, Phone};

use crate::config::{Restriction, ScreenAction, ScreenConfig, ScreenPolicy, SimpleAction};
use crate::job::{Content, ContentPart, Job};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

/// One check: the finding kind it reports (`email`, …; the key of a policy's `actions`
/// and of `route.screen.findings`, and the placeholder `[EMAIL]` redaction writes) and a
/// scanner that pushes the byte spans of what it finds in `text` (char boundaries).
pub trait Check: Send + Sync {
    fn kind(&self) -> &'static str;
    fn scan(&self, text: &str, found: &mut Vec<Range<usize>>);
}

/// The built-in check called `name` in a policy's `checks` (its `deny` terms for the
/// deny list); `None` for a name that is not one.
pub fn check_for(name: &str, policy: &ScreenPolicy) -> Option<Box<dyn Check>> {
    Some(match name {
        "email" => Box::new(Email),
        "phone" => Box::new(Phone),
        "card" => Box::new(Card),
        "iban" => Box::new(Iban),
        "injection" => Box::new(Injection),
        "deny" => Box::new(DenyList::new(&policy.deny)),
        _ => return None,
    })
}

/// What screening did, as `route.screen` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenRecord {
    /// The policy that applied.
    pub policy: String,
    /// Findings per kind (counts only, never the text).
    pub findings: BTreeMap<String, u32>,
    /// The strongest action taken: `allow` < `redact` < `restrict` < `refuse`.
    pub action: String,
    /// With `restrict`: the candidates the job was held to (every restriction that
    /// applied, intersected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restrict: Option<Restriction>,
}

impl ScreenRecord {
    pub fn refused(&self) -> bool {
        self.action == "refuse"
    }

    /// The `refused` error's message: the policy and the counts, never the text.
    pub fn refusal_message(&self) -> String {
        let found: Vec<String> = self
            .findings
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        format!(
            "refused by screening policy {:?} (found {})",
            self.policy,
            found.join(", ")
        )
    }

    /// Whether a restricted job may go to `model` on `provider` (in `region`).
    pub fn allows(&self, model: &str, provider: &str, region: Option<&str>) -> bool {
        let Some(r) = &self.restrict else {
            return true;
        };
        r.providers
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| x == provider))
            && r.models
                .as_ref()
                .is_none_or(|m| m.iter().any(|x| x == model))
            && r.region.as_deref().is_none_or(|want| region == Some(want))
    }
}

struct Compiled {
    policy: ScreenPolicy,
    checks: Vec<(Box<dyn Check>, ScreenAction)>,
}

/// The compiled `[screen]` policies.
#[derive(Default)]
pub struct Screener {
    policies: Vec<Compiled>,
}

/// Rank of an action, for "the strongest one".
fn rank(a: &ScreenAction) -> u8 {
    match a {
        ScreenAction::Simple(SimpleAction::Allow) => 0,
        ScreenAction::Simple(SimpleAction::Redact) => 1,
        ScreenAction::Restrict { .. } => 2,
        ScreenAction::Simple(SimpleAction::Refuse) => 3,
    }
}

const ACTION_NAMES: [&str; 4] = ["allow", "redact", "restrict", "refuse"];

/// Redaction passes over one text at most (each one removes what the last uncovered).
const MAX_PASSES: usize = 8;

/// Two restrictions at once: both must hold.
fn intersect(a: Option<Restriction>, b: &Restriction) -> Restriction {
    let Some(a) = a else {
        return b.clone();
    };
    let both = |x: Option<Vec<String>>, y: &Option<Vec<String>>| match (x, y) {
        (Some(x), Some(y)) => Some(x.into_iter().filter(|v| y.contains(v)).collect()),
        (x, y) => x.or_else(|| y.clone()),
    };
    Restriction {
        providers: both(a.providers, &b.providers),
        models: both(a.models, &b.models),
        // Two different regions leave no candidate: the router says no_route.
        region: match (a.region, &b.region) {
            (Some(x), Some(y)) if &x != y => Some(format!("{x}+{y}")),
            (x, y) => x.or_else(|| y.clone()),
        },
    }
}

/// Replace `spans` (sorted, not overlapping) of `text` by their placeholders.
fn redact(text: &str, spans: &[(Range<usize>, &'static str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (r, kind) in spans {
        out.push_str(&text[at..r.start]);
        out.push('[');
        out.push_str(&kind.to_ascii_uppercase());
        out.push(']');
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

impl Screener {
    pub fn new(config: &ScreenConfig) -> Screener {
        let policies = config
            .policies
            .iter()
            .map(|p| Compiled {
                checks: p
                    .checks
                    .iter()
                    .filter_map(|c| Some((check_for(c, p)?, p.actions.get(c)?.clone())))
                    .collect(),
                policy: p.clone(),
            })
            .collect();
        Screener { policies }
    }

    /// Screen `job`: `None` when no policy applies to it (the common case, and the only
    /// cost then is this lookup), else the job as it goes on — its text redacted where
    /// an action says so — carrying its [`ScreenRecord`] in `job.screen`.
    pub fn screen(&self, job: &Job) -> Option<Job> {
        if self.policies.is_empty() {
            return None;
        }
        let c = self.policies.iter().find(|c| {
            c.policy.tenant.as_ref().is_none_or(|t| *t == job.tenant)
                && c.policy
                    .feature
                    .as_ref()
                    .is_none_or(|f| job.feature.as_ref() == Some(f))
        })?;
        let mut out = job.clone();
        let mut findings: BTreeMap<String, u32> = BTreeMap::new();
        let (mut strongest, mut restrict) = (0u8, None);
        let mut found = Vec::new();
        for m in &mut out.messages {
            let texts: Vec<&mut String> = match &mut m.content {
                Some(Content::Text(t)) => vec![t],
                Some(Content::Parts(parts)) => parts
                    .iter_mut()
                    .filter_map(|p| match p {
                        ContentPart::Text { text } => Some(text),
                        ContentPart::ImageUrl { .. } => None,
                    })
                    .collect(),
                None => Vec::new(),
            };
            for text in texts {
                // Pass 0 runs every check; a redaction can join what was glued to its
                // neighbours ("…DE+44 20…" → "[EMAIL]+44 20…"), so the redacting checks
                // run again on the new text until they find nothing (bounded).
                for pass in 0..MAX_PASSES {
                    let mut to_redact: Vec<(Range<usize>, &'static str)> = Vec::new();
                    for (check, action) in &c.checks {
                        let redacts = matches!(action, ScreenAction::Simple(SimpleAction::Redact));
                        if pass > 0 && !redacts {
                            continue;
                        }
                        found.clear();
                        check.scan(text, &mut found);
                        if found.is_empty() {
                            continue;
                        }
                        *findings.entry(check.kind().to_owned()).or_default() += found.len() as u32;
                        strongest = strongest.max(rank(action));
                        if redacts {
                            to_redact.extend(found.iter().map(|r| (r.clone(), check.kind())));
                        } else if let ScreenAction::Restrict { restrict: r } = action {
                            restrict = Some(intersect(restrict, r));
                        }
                    }
                    if to_redact.is_empty() {
                        break;
                    }
                    *text = redact(text, &merge(to_redact));
                }
            }
        }
        out.screen = Some(Arc::new(ScreenRecord {
            policy: c.policy.name.clone(),
            findings,
            action: ACTION_NAMES[usize::from(strongest)].to_owned(),
            restrict: restrict.filter(|_| strongest == 2),
        }));
        Some(out)
    }
}

/// Spans of several checks, sorted, overlapping ones merged into one (named after the
/// first-starting of them, the longer on a tie).
fn merge(mut spans: Vec<(Range<usize>, &'static str)>) -> Vec<(Range<usize>, &'static str)> {
    spans.sort_by(|a, b| a.0.start.cmp(&b.0.start).then(b.0.end.cmp(&a.0.end)));
    let mut out: Vec<(Range<usize>, &'static str)> = Vec::with_capacity(spans.len());
    for (r, kind) in spans {
        match out.last_mut() {
            Some((last, _)) if r.start < last.end => last.end = last.end.max(r.end),
            _ => out.push((r, kind)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
