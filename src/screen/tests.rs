#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::ScreenConfig;
use rand::{Rng, SeedableRng};

fn config(toml_text: &str) -> ScreenConfig {
    #[derive(serde::Deserialize)]
    struct File {
        screen: ScreenConfig,
    }
    toml::from_str::<File>(toml_text).unwrap().screen
}

fn job(tenant: &str, feature: Option<&str>, text: &str) -> Job {
    let mut v = serde_json::json!({"id": "j1", "tenant": tenant,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": text}]}]});
    if let Some(f) = feature {
        v["feature"] = f.into();
    }
    serde_json::from_value(v).unwrap()
}

fn user_text(job: &Job) -> String {
    job.messages[1].text()
}

const POLICIES: &str = r#"
[[screen.policies]]
name = "support"
tenant = "acme"
feature = "support"
checks = ["email", "phone", "card", "iban", "injection", "deny"]
deny = ["project falcon"]
[screen.policies.actions]
email = "redact"
phone = "redact"
card = "refuse"
iban = { restrict = { providers = ["anthropic"], region = "eu" } }
injection = "refuse"
deny = "allow"

[[screen.policies]]
name = "default"
checks = ["email"]
[screen.policies.actions]
email = "allow"
"#;

#[test]
fn no_policy_costs_nothing_and_changes_nothing() {
    let s = Screener::new(&ScreenConfig::default());
    assert!(s.screen(&job("acme", None, "mail a@b.co")).is_none());
}

#[test]
fn redacts_and_records_counts_not_text() {
    let s = Screener::new(&config(POLICIES));
    let out = s
        .screen(&job(
            "acme",
            Some("support"),
            "Mail jo@x.org or ann@y.com, call +44 20 7946 0958.",
        ))
        .unwrap();
    assert_eq!(user_text(&out), "Mail [EMAIL] or [EMAIL], call [PHONE].");
    let rec = out.screen.as_deref().unwrap();
    assert_eq!(rec.policy, "support");
    assert_eq!(rec.action, "redact");
    assert_eq!(rec.findings.get("email"), Some(&2));
    assert_eq!(rec.findings.get("phone"), Some(&1));
    let json = serde_json::to_string(rec).unwrap();
    assert!(
        !json.contains("jo@x.org") && !json.contains("7946"),
        "{json}"
    );
}

#[test]
fn refuse_and_restrict() {
    let s = Screener::new(&config(POLICIES));
    let out = s
        .screen(&job("acme", Some("support"), "card 4111 1111 1111 1111"))
        .unwrap();
    assert!(out.screen.as_deref().unwrap().refused());
    let out = s
        .screen(&job(
            "acme",
            Some("support"),
            "IBAN DE89 3704 0044 0532 0130 00 please",
        ))
        .unwrap();
    let rec = out.screen.as_deref().unwrap();
    assert_eq!(rec.action, "restrict");
    assert!(rec.allows("claude", "anthropic", Some("eu")));
    assert!(!rec.allows("claude", "anthropic", Some("us")));
    assert!(!rec.allows("gpt", "openai", Some("eu")));
    // The IBAN itself is not redacted by a restriction.
    assert!(user_text(&out).contains("DE89 3704"));
    // A deny-list term with action allow is counted, nothing else.
    let out = s
        .screen(&job("acme", Some("support"), "status of Project Falcon?"))
        .unwrap();
    let rec = out.screen.as_deref().unwrap();
    assert_eq!(
        (rec.action.as_str(), rec.findings.get("deny")),
        ("allow", Some(&1))
    );
}

#[test]
fn first_matching_policy_wins() {
    let s = Screener::new(&config(POLICIES));
    // Another feature of acme: the catch-all policy (email allowed, left as it is).
    let out = s.screen(&job("acme", Some("sales"), "a@b.co")).unwrap();
    let rec = out.screen.as_deref().unwrap();
    assert_eq!(
        (rec.policy.as_str(), rec.action.as_str()),
        ("default", "allow")
    );
    assert_eq!(user_text(&out), "a@b.co");
}

#[test]
fn config_errors_name_the_field() {
    let providers = ["openai", "anthropic"].into_iter().collect();
    let models = ["gpt-4o-mini"].into_iter().collect();
    let bad = |t: &str| {
        config(t)
            .validate(&providers, &models)
            .unwrap_err()
            .to_string()
    };
    let e = bad("[[screen.policies]]\nname='p'\nchecks=['email','ssn']\nactions={email='redact'}");
    assert!(
        e.contains("screen.policies[0].checks") && e.contains("ssn"),
        "{e}"
    );
    let e = bad("[[screen.policies]]\nname='p'\nchecks=['email','card']\nactions={email='redact'}");
    assert!(e.contains("no action for check \"card\""), "{e}");
    let e = bad("[[screen.policies]]\nname='p'\nchecks=['email']\nactions={email={restrict={models=['gpt-9']}}}");
    assert!(
        e.contains("actions.email.restrict") && e.contains("gpt-9"),
        "{e}"
    );
    let e = bad("[[screen.policies]]\nname='p'\nchecks=['deny']\nactions={deny='refuse'}");
    assert!(e.contains("screen.policies[0].deny"), "{e}");
    assert!(config(POLICIES).validate(&providers, &models).is_ok());
}

/// Property: after redaction no check finds anything it was told to redact, for random
/// text mixing words, separators and planted emails, phones, cards and IBANs.
#[test]
fn redaction_never_leaves_a_detected_span() {
    let cfg = config(
        r#"[[screen.policies]]
name = "all"
checks = ["email", "phone", "card", "iban"]
actions = { email = "redact", phone = "redact", card = "redact", iban = "redact" }"#,
    );
    let s = Screener::new(&cfg);
    let pieces = [
        "hello",
        "x",
        "7",
        "42",
        " ",
        " ",
        ", ",
        ".",
        "-",
        "(",
        ")",
        "+",
        "@",
        "é",
        "DE",
        "00",
        "jane@example.com",
        "a.b@c.io",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "1234",
        "0000",
    ];
    let checks: Vec<Box<dyn Check>> = vec![
        Box::new(Email),
        Box::new(Phone),
        Box::new(Card),
        Box::new(Iban),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut planted = 0;
    for _ in 0..3000 {
        let n = rng.random_range(1..14);
        let text: String = (0..n)
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        let Some(out) = s.screen(&job("t", None, &text)) else {
            panic!("the catch-all policy applies");
        };
        let after = user_text(&out);
        planted += usize::from(after != text);
        for c in &checks {
            let mut found = Vec::new();
            c.scan(&after, &mut found);
            assert!(
                found.is_empty(),
                "{} left {:?} in {after:?} (from {text:?})",
                c.kind(),
                found.iter().map(|r| &after[r.clone()]).collect::<Vec<_>>()
            );
        }
    }
    // The generator does exercise redaction (most texts carry something to redact).
    assert!(planted > 1000, "{planted}");
}

/// Figures (ignored; `cargo test --lib screen::tests::figures -- --ignored --nocapture`):
/// the time `Screener::screen` takes per job, with no policy and with the six checks on
/// a 1 KiB prompt holding an address and a phone number to redact.
#[test]
#[ignore]
fn figures() {
    let text = format!(
        "{} Please reach me at jane.doe@example.com or +44 20 7946 0958 today.",
        "The quarterly report covers revenue, costs and the outlook for next year. ".repeat(13)
    );
    let j = job("acme", Some("support"), &text);
    let n = 20_000;
    for (name, s) in [
        ("no policy", Screener::new(&ScreenConfig::default())),
        ("six checks", Screener::new(&config(POLICIES))),
    ] {
        let t = std::time::Instant::now();
        let mut redacted = 0;
        for _ in 0..n {
            redacted += usize::from(std::hint::black_box(s.screen(&j)).is_some());
        }
        let per = t.elapsed() / n;
        println!(
            "{name}: {per:?} per job ({} bytes of text; {redacted} screened)",
            text.len()
        );
    }
}
