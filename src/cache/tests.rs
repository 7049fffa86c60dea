use super::*;
use crate::config::{CacheRule, Config};

fn demo() -> Config {
    Config::from_toml_with_env(include_str!("../../config/demo.toml"), "demo.toml", &[])
        .expect("demo config")
}

fn model<'a>(cfg: &'a Config, name: &str) -> &'a ModelConfig {
    cfg.models.iter().find(|m| m.name == name).expect("model")
}

fn job(extra: &str) -> Job {
    serde_json::from_str(&format!(
        r#"{{"id":"a","tenant":"acme","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
    ))
    .expect("job")
}

fn on() -> CacheConfig {
    CacheConfig {
        enabled: true,
        ..CacheConfig::default()
    }
}

#[test]
fn the_key_holds_what_shapes_the_answer_and_nothing_else() {
    let cfg = demo();
    let mini = model(&cfg, "gpt-4o-mini");
    let base = key(&job(r#","temperature":0"#), mini, 100).unwrap();
    // Not the id, feature, metadata, reply subject, priority hints or deadline.
    let same = job(
        r#","temperature":0,"feature":"f","metadata":{"x":1},"reply_to":"_INBOX.a","cache":"refresh""#,
    );
    let mut same = same;
    same.id = "other".into();
    assert_eq!(key(&same, mini, 100).unwrap(), base);
    // Every part of the request after routing changes it.
    for extra in [
        r#","temperature":0.1"#,
        r#","temperature":0,"stop":["x"]"#,
        r#","temperature":0,"response_format":{"type":"json_object"}"#,
        r#","temperature":0,"tool_choice":"none""#,
    ] {
        assert_ne!(key(&job(extra), mini, 100).unwrap(), base, "{extra}");
    }
    assert_ne!(key(&job(r#","temperature":0"#), mini, 101).unwrap(), base);
    let other = model(&cfg, "gpt-4o");
    assert_ne!(key(&job(r#","temperature":0"#), other, 100).unwrap(), base);
    let mut changed = job(r#","temperature":0"#);
    changed.messages[0].content = Some(crate::job::Content::Text("hi!".into()));
    assert_ne!(key(&changed, mini, 100).unwrap(), base);
}

#[test]
fn only_enabled_deterministic_jobs_that_do_not_bypass_are_cached() {
    let cfg = demo();
    let mini = model(&cfg, "gpt-4o-mini");
    let cold = job(r#","temperature":0.2"#);
    assert_eq!(cacheable(&CacheConfig::default(), &cold, mini, 10), None);
    let c = cacheable(&on(), &cold, mini, 10).unwrap();
    assert!(c.lookup);
    assert_eq!(c.ttl_s, 86_400);
    // `refresh` stores without looking up; `bypass` does neither.
    let refresh = cacheable(
        &on(),
        &job(r#","temperature":0,"cache":"refresh""#),
        mini,
        10,
    );
    assert!(!refresh.unwrap().lookup);
    assert_eq!(
        cacheable(
            &on(),
            &job(r#","temperature":0,"cache":"bypass""#),
            mini,
            10
        ),
        None
    );
    // Above the threshold, and without a temperature (the providers' default, 1).
    assert_eq!(
        cacheable(&on(), &job(r#","temperature":0.31"#), mini, 10),
        None
    );
    assert_eq!(cacheable(&on(), &job(""), mini, 10), None);
    // A rule: a tenant's own TTL and threshold; 0 turns it off.
    let ruled = CacheConfig {
        rules: vec![
            CacheRule {
                tenant: Some("acme".into()),
                feature: None,
                model: Some("gpt-4o".into()),
                ttl_s: Some(0),
                max_temperature: None,
                ..CacheRule::default()
            },
            CacheRule {
                tenant: Some("acme".into()),
                feature: None,
                model: None,
                ttl_s: Some(60),
                max_temperature: Some(1.0),
                ..CacheRule::default()
            },
        ],
        ..on()
    };
    let warm = cacheable(&ruled, &job(""), mini, 10).unwrap();
    assert_eq!(warm.ttl_s, 60);
    assert_eq!(cacheable(&ruled, &cold, model(&cfg, "gpt-4o"), 10), None);
}
