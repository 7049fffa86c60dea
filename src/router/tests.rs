use super::*;
use crate::config::FileConfig;
use crate::job::parse_job;

fn router() -> (Router, Config) {
    let text = include_str!("../../config/demo.toml");
    let cfg = FileConfig::from_toml_with_env(text, "demo.toml", &[]).unwrap();
    (Router::new(&cfg), cfg)
}

fn job(extra: &str) -> Job {
    let (_, cfg) = router();
    let payload = format!(
        r#"{{"id":"j","tenant":"acme","messages":[{{"role":"user","content":"hello"}}]{extra}}}"#
    );
    parse_job(
        payload.as_bytes(),
        "llm.jobs.normal.acme",
        1,
        &cfg.parse_rules(),
    )
    .unwrap()
    .job
}

fn chain(p: &Plan) -> Vec<String> {
    p.candidates.iter().map(|c| c.model.name.clone()).collect()
}

#[test]
fn auto_walks_the_configured_tiers() {
    let (r, _) = router();
    let p = r.plan(&job(""), 10).unwrap();
    assert_eq!(
        chain(&p),
        [
            "gpt-4o-mini",
            "llama-3.1-8b",
            "claude-3-5-haiku",
            "gemini-2.5-flash",
            "gpt-4.1-nano",
            "gemini-2.0-flash",
            "gpt-4o",
            "claude-sonnet-4"
        ]
    );
    assert_eq!(p.route.tier.as_deref(), Some("fast"));
}

#[test]
fn names_aliases_and_pins() {
    let (r, _) = router();
    let p = r.plan(&job(r#","model":"llama""#), 10).unwrap();
    assert_eq!(
        chain(&p),
        [
            "llama-3.1-8b",
            "gpt-4o-mini",
            "claude-3-5-haiku",
            "gemini-2.5-flash"
        ]
    );
    let p = r.plan(&job(r#","model":"openai/gpt-4o""#), 10).unwrap();
    assert_eq!(chain(&p), ["gpt-4o"]);
    let e = r.plan(&job(r#","model":"local/gpt-4o""#), 10).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownModel);
    let e = r.plan(&job(r#","model":"gpt-9""#), 10).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownModel);
}

#[test]
fn filters() {
    let (r, _) = router();
    let p = r
        .plan(&job(r#","providers":{"deny":["openai"]}"#), 10)
        .unwrap();
    assert!(p.candidates.iter().all(|c| c.model.provider != "openai"));
    assert_eq!(p.candidates.len(), 5);
    let p = r
        .plan(
            &job(r#","providers":{"allow":["anthropic"]},"model":"fast""#),
            10,
        )
        .unwrap();
    assert_eq!(chain(&p), ["claude-3-5-haiku"]);
    let p = r.plan(&job(r#","region":"eu""#), 10).unwrap();
    assert_eq!(
        chain(&p),
        ["llama-3.1-8b", "gemini-2.5-flash", "gemini-2.0-flash"]
    );
    let e = r.plan(&job(r#","region":"ap""#), 10).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoRoute);
    let e = r
        .plan(&job(r#","model":"anthropic/claude-sonnet-4""#), 250_000)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextTooLong);
    // 1000 in + 1024 out on gpt-4o ≈ 0.01274: a 0.001 cap leaves only the cheap models.
    let p = r
        .plan(&job(r#","max_cost_usd":0.001,"max_tokens":1024"#), 1000)
        .unwrap();
    assert!(!chain(&p).contains(&"gpt-4o".to_string()));
    let e = r
        .plan(
            &job(r#","model":"openai/gpt-4o","max_cost_usd":0.001"#),
            1000,
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CostCapExceeded);
}

#[test]
fn classification() {
    assert_eq!(
        classify(&job(r#","response_format":{"type":"json_object"}"#)),
        Task::Extraction
    );
    assert_eq!(classify(&job(r#","task":"code""#)), Task::Code);
}

#[test]
fn near_the_window_openai_models_are_counted_exactly() {
    let text = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://x/v1"
api_key_env = "K"
[[providers]]
name = "other"
kind = "openai_compatible"
base_url = "http://y/v1"
[[models]]
name = "small-openai"
provider = "openai"
upstream = "gpt-4o-mini"
tier = "fast"
context_window = 120
input_per_mtok = "1"
output_per_mtok = "1"
[[models]]
name = "small-other"
provider = "other"
upstream = "x"
tier = "fast"
context_window = 120
input_per_mtok = "1"
output_per_mtok = "1"
"#;
    let cfg = FileConfig::from_toml_with_env(text, "t", &[]).unwrap();
    let r = Router::new(&cfg);
    let content = "hello ".repeat(100);
    let payload = serde_json::json!({"id": "j", "tenant": "acme", "model": "fast",
        "messages": [{"role": "user", "content": content}]});
    let j = parse_job(
        payload.to_string().as_bytes(),
        "llm.jobs.normal.acme",
        1,
        &cfg.parse_rules(),
    )
    .unwrap()
    .job;
    let approx = crate::tokens::estimate_input_tokens(&j);
    assert!(
        approx >= 120,
        "the approximation says it does not fit: {approx}"
    );
    // OpenAI's tokenizer reads " hello" as one token: ~106 tokens, so it fits there only.
    let p = r.plan(&j, approx).unwrap();
    assert_eq!(chain(&p), ["small-openai"]);
}
