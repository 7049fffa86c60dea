use super::*;
use crate::config::FileConfig;
use crate::job::{parse_job, Priority, Task};
use std::collections::HashMap;

fn router() -> (Router, Config) {
    let text = include_str!("../../config/demo.toml");
    let cfg = FileConfig::from_toml_with_env(text, "demo.toml", &[]).unwrap();
    (Router::new(&cfg), cfg)
}

fn job(extra: &str) -> Job {
    job_msgs(r#"[{"role":"user","content":"hello"}]"#, extra)
}

fn chain(p: &Plan) -> Vec<String> {
    p.candidates.iter().map(|c| c.model.name.clone()).collect()
}

/// The route starts at `tier` and its reason says `why`.
fn assert_route(p: &Plan, tier: &str, why: &str) {
    assert_eq!(p.route.tier.as_deref(), Some(tier), "{}", p.route.reason);
    assert!(p.route.reason.contains(why), "{}", p.route.reason);
}

fn normal() -> RouteContext {
    RouteContext::new(Priority::Normal)
}

/// A job with these messages (a JSON array) and extra top-level fields.
fn job_msgs(messages: &str, extra: &str) -> Job {
    let (_, cfg) = router();
    let payload = format!(r#"{{"id":"j","tenant":"acme","messages":{messages}{extra}}}"#);
    parse_job(
        payload.as_bytes(),
        "llm.jobs.normal.acme",
        1,
        &cfg.parse_rules(),
    )
    .unwrap()
    .job
}

fn user(text: &str) -> String {
    serde_json::json!([{"role": "user", "content": text}]).to_string()
}

fn sys_user(system: &str, text: &str) -> String {
    serde_json::json!([{"role": "system", "content": system}, {"role": "user", "content": text}])
        .to_string()
}

fn classify_job(j: &Job) -> Classification {
    classify(j, crate::tokens::estimate_input_tokens(j))
}

fn tool(name: &str) -> String {
    format!(
        r#"{{"type":"function","function":{{"name":"{name}","parameters":{{"type":"object"}}}}}}"#
    )
}

/// Plan with the worker's own estimate of the input.
fn plan_est(r: &Router, j: &Job, ctx: RouteContext) -> Plan {
    r.plan(j, crate::tokens::estimate_input_tokens(j), ctx)
        .unwrap()
}

const EMAIL: &str = "Write a friendly two-paragraph welcome email for new customers of our bike shop, mentioning the free first service.";

#[test]
fn each_signal_names_the_task_and_tier() {
    let doc = "The quarterly revenue grew by eight percent. ".repeat(200);
    let trace = "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    main()\nValueError: bad";
    let tools4 = format!(
        ",\"tools\":[{},{},{},{}]",
        tool("a"),
        tool("b"),
        tool("c"),
        tool("d")
    );
    let chat: String = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(serde_json::json!({"role": "user", "content": format!("and then what about item {i}?")}));
            v.push(serde_json::json!({"role": "assistant", "content": "Here is what I found."}));
        }
        v.push(serde_json::json!({"role": "user", "content": "ok thanks, anything else?"}));
        serde_json::Value::Array(v).to_string()
    };
    let table: Vec<(&str, String, String, Task, Tier, &str)> = vec![
        ("task hint", user("hello there"), r#","task":"code""#.into(), Task::Code, Tier::Fast, "task hint"),
        ("feature name", user("Acme Corp, invoice 42, due 2025-01-01"), r#","feature":"invoice-extraction""#.into(), Task::Extraction, Tier::Cheap, "feature"),
        ("feature triage", user("My card was charged twice"), r#","feature":"ticket-triage""#.into(), Task::Classification, Tier::Cheap, "feature"),
        ("json_object", user("Name: Ada, born 1815"), r#","response_format":{"type":"json_object"}"#.into(), Task::Extraction, Tier::Cheap, "json response_format"),
        ("json_schema", user("Name: Ada, born 1815"), r#","response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{"type":"object"}}}"#.into(), Task::Extraction, Tier::Fast, "json response_format"),
        ("json + classify", sys_user("Classify the ticket as billing, auth or bug.", "I cannot log in"), r#","response_format":{"type":"json_object"}"#.into(), Task::Classification, Tier::Cheap, "json response_format"),
        ("classify words", sys_user("Label the sentiment of the review: positive, negative or neutral.", "Great blender, loud though."), String::new(), Task::Classification, Tier::Cheap, "words"),
        ("extract words", user("Extract every date and amount from: paid $40 on 3 May and $12 on 9 June."), String::new(), Task::Extraction, Tier::Cheap, "words"),
        ("summarise short", user("Summarise this in one line: the meeting moved to Friday because the room was booked."), String::new(), Task::Summarization, Tier::Cheap, "words"),
        ("summarize long", user(&format!("Summarize the following report.\n\n{doc}")), String::new(), Task::Summarization, Tier::Fast, "words"),
        ("translate short", user("Translate to French: Your order has shipped."), String::new(), Task::Generation, Tier::Cheap, "translate"),
        ("code fence", user("What does this do?\n```rust\nfn main() { println!(\"hi\"); }\n```"), String::new(), Task::Code, Tier::Fast, "code"),
        ("write a function", user("Write a Python function that returns the n-th Fibonacci number."), String::new(), Task::Code, Tier::Fast, "code"),
        ("stack trace", user(&format!("Why does this fail and how do I fix it?\n{trace}")), String::new(), Task::Code, Tier::Balanced, "code"),
        ("refactor", user("Refactor this Python function to remove the race:\n```python\ndef f(): pass\n```"), String::new(), Task::Code, Tier::Balanced, "code"),
        ("step by step", user("A shop sells pens at 3 for $2. How much do 12 pens cost? Think step by step."), String::new(), Task::Reasoning, Tier::Fast, "words"),
        ("plan", user("Plan the migration of our billing database to Postgres with zero downtime: milestones, risks, rollback strategy."), String::new(), Task::Reasoning, Tier::Balanced, "words"),
        ("prove", user("Prove that there are infinitely many primes."), String::new(), Task::Reasoning, Tier::Premium, "words"),
        ("tools", user("What's the status of order 1234?"), format!(",\"tools\":[{}]", tool("lookup")), Task::Generation, Tier::Fast, "tools"),
        ("many tools", user("Book me a table and tell my team."), tools4, Task::Generation, Tier::Balanced, "tools"),
        ("short chat", user("hi!"), String::new(), Task::Generation, Tier::Cheap, "default"),
        ("generation", user("Write a friendly two-paragraph welcome email for new customers of our bike shop, mentioning the free first service."), String::new(), Task::Generation, Tier::Fast, "default"),
        ("deep chat", chat, String::new(), Task::Generation, Tier::Fast, "default"),
    ];
    for (name, msgs, extra, task, tier, signal) in table {
        let c = classify_job(&job_msgs(&msgs, &extra));
        assert_eq!(
            (c.task, c.tier, c.signal),
            (task, tier, signal),
            "{name}: {c:?}"
        );
    }
}

#[test]
fn auto_takes_the_cheapest_serving_tier_cheapest_model_first() {
    let (r, _) = router();
    let table: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "cheap",
            user("hi!"),
            "cheap",
            &["gpt-4.1-nano", "gemini-2.0-flash"],
        ),
        (
            "fast, then one tier down",
            user(EMAIL),
            "fast",
            &[
                "llama-3.1-8b",
                "gpt-4o-mini",
                "gemini-2.5-flash",
                "claude-3-5-haiku",
                "gpt-4.1-nano",
                "gemini-2.0-flash",
            ],
        ),
        (
            "balanced",
            user(
                "Plan the migration of our billing database: milestones, risks, rollback strategy.",
            ),
            "balanced",
            &[
                "gpt-4o",
                "claude-sonnet-4",
                "llama-3.1-8b",
                "gpt-4o-mini",
                "gemini-2.5-flash",
                "claude-3-5-haiku",
            ],
        ),
        (
            "premium",
            user("Prove that the square root of 2 is irrational."),
            "premium",
            &["claude-opus-4", "gpt-4o", "claude-sonnet-4"],
        ),
    ];
    for (name, msgs, tier, want) in table {
        let p = plan_est(&r, &job_msgs(&msgs, ""), normal());
        assert_eq!(
            p.route.tier.as_deref(),
            Some(tier),
            "{name}: {}",
            p.route.reason
        );
        assert_eq!(chain(&p), want, "{name}: {}", p.route.reason);
        assert_eq!(p.route.variant, None);
    }
}

#[test]
fn fallback_never_climbs_unless_high_priority_or_allowed() {
    let (r, cfg) = router();
    let j = job_msgs(&user("hi!"), "");
    let high = RouteContext::new(Priority::High);
    let table: Vec<(&str, RouteContext, &Router, Tier)> = vec![
        ("normal", normal(), &r, Tier::Cheap),
        ("low", RouteContext::new(Priority::Low), &r, Tier::Cheap),
        ("high", high, &r, Tier::Premium),
    ];
    for (name, ctx, r, top) in table {
        let p = r.plan(&j, 10, ctx).unwrap();
        let max = p.candidates.iter().map(|c| c.model.tier).max().unwrap();
        assert_eq!(max, top, "{name}: {}", p.route.reason);
        assert_eq!(p.candidates[0].model.tier, Tier::Cheap, "{name}");
    }
    // High priority: the required tier first, then up, then one tier down.
    let p = plan_est(&r, &job_msgs(&user(EMAIL), ""), high);
    let tiers: Vec<Tier> = p.candidates.iter().map(|c| c.model.tier).collect();
    let first_cheap = tiers.iter().position(|&t| t == Tier::Cheap).unwrap();
    assert!(tiers[..first_cheap].contains(&Tier::Premium), "{tiers:?}");
    // allow_upgrade on a rule
    let mut cfg2 = cfg.clone();
    cfg2.routing.rules.push(crate::config::RouteRule {
        tenant: Some("acme".into()),
        allow_upgrade: true,
        ..Default::default()
    });
    let r2 = Router::new(&cfg2);
    let p = r2.plan(&j, 10, normal()).unwrap();
    assert_route(&p, "cheap", "rule 0: allow_upgrade");
    assert_eq!(p.candidates.last().unwrap().model.tier, Tier::Premium);
}

#[test]
fn explicit_models_and_tiers() {
    let (r, _) = router();
    let table: Vec<(&str, Result<&[&str], ErrorKind>)> = vec![
        (
            r#","model":"fast""#,
            Ok(&[
                "llama-3.1-8b",
                "gpt-4o-mini",
                "gemini-2.5-flash",
                "claude-3-5-haiku",
            ]),
        ),
        (
            r#","model":"llama""#,
            Ok(&[
                "llama-3.1-8b",
                "gpt-4o-mini",
                "gemini-2.5-flash",
                "claude-3-5-haiku",
            ]),
        ),
        (
            r#","model":"gpt-4o-mini""#,
            Ok(&[
                "gpt-4o-mini",
                "llama-3.1-8b",
                "gemini-2.5-flash",
                "claude-3-5-haiku",
            ]),
        ),
        (r#","model":"openai/gpt-4o""#, Ok(&["gpt-4o"])),
        (r#","model":"premium""#, Ok(&["claude-opus-4"])),
        (r#","model":"local/gpt-4o""#, Err(ErrorKind::UnknownModel)),
        (r#","model":"gpt-9""#, Err(ErrorKind::UnknownModel)),
    ];
    for (extra, want) in table {
        let got = r
            .plan(&job(extra), 10, normal())
            .map(|p| chain(&p))
            .map_err(|e| e.kind);
        let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "{extra}");
    }
}

#[test]
fn filters() {
    let (r, _) = router();
    let p = r
        .plan(
            &job(r#","model":"fast","providers":{"deny":["openai"]}"#),
            10,
            normal(),
        )
        .unwrap();
    assert_eq!(
        chain(&p),
        ["llama-3.1-8b", "gemini-2.5-flash", "claude-3-5-haiku"]
    );
    let p = r
        .plan(
            &job(r#","providers":{"allow":["anthropic"]},"model":"fast""#),
            10,
            normal(),
        )
        .unwrap();
    assert_eq!(chain(&p), ["claude-3-5-haiku"]);
    let p = r.plan(&job(r#","region":"eu""#), 10, normal()).unwrap();
    assert_eq!(chain(&p), ["gemini-2.0-flash"]);
    assert_eq!(p.route.tier.as_deref(), Some("cheap"));
    let e = r.plan(&job(r#","region":"ap""#), 10, normal()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoRoute);
    let e = r
        .plan(
            &job(r#","model":"anthropic/claude-sonnet-4""#),
            250_000,
            normal(),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextTooLong);
    // 1000 in + 1024 out on gpt-4o ≈ 0.01274: a 0.001 cap leaves only the cheap models.
    let p = r
        .plan(
            &job(r#","model":"balanced","max_cost_usd":0.001,"max_tokens":1024"#),
            1000,
            RouteContext::new(Priority::High),
        )
        .unwrap_err();
    assert_eq!(p.kind, ErrorKind::CostCapExceeded);
    let p = r
        .plan(
            &job(r#","max_cost_usd":0.001,"max_tokens":1024"#),
            1000,
            RouteContext::new(Priority::High),
        )
        .unwrap();
    assert!(
        p.candidates.iter().all(|c| c.model.tier <= Tier::Fast),
        "{:?}",
        chain(&p)
    );
    let e = r
        .plan(
            &job(r#","model":"openai/gpt-4o","max_cost_usd":0.001"#),
            1000,
            normal(),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::CostCapExceeded);
}

fn with_rules(toml_rules: &str) -> Router {
    let text = format!("{}\n{toml_rules}", include_str!("../../config/demo.toml"));
    let cfg = FileConfig::from_toml_with_env(&text, "demo.toml", &[]).unwrap();
    Router::new(&cfg)
}

#[test]
fn rules_override_auto() {
    let r = with_rules(
        r#"
[[routing.rules]]
tenant = "acme"
feature = "legal"
tier = "premium"
[[routing.rules]]
task = "classification"
model = "gpt-4o-mini"
[[routing.rules]]
tenant = "globex"
tier = "balanced"
"#,
    );
    let table: Vec<(&str, &str, &str, &str)> = vec![
        // (extra, message, first model, reason contains)
        (
            r#","feature":"legal""#,
            "hi!",
            "claude-opus-4",
            "rule 0: tier premium",
        ),
        (
            r#","feature":"other""#,
            "hi!",
            "gpt-4.1-nano",
            "→ cheap; chain",
        ),
        (
            "",
            "Classify this: spam or not? WIN A PRIZE",
            "gpt-4o-mini",
            "rule 1: model gpt-4o-mini",
        ),
        // an explicit model is never overridden
        (
            r#","feature":"legal","model":"cheap""#,
            "hi!",
            "gpt-4.1-nano",
            "tier cheap",
        ),
    ];
    for (extra, text, first, why) in table {
        let p = r.plan(&job_msgs(&user(text), extra), 10, normal()).unwrap();
        assert_eq!(chain(&p)[0], first, "{extra}: {}", p.route.reason);
        assert!(p.route.reason.contains(why), "{extra}: {}", p.route.reason);
    }
    // tenant match
    let (_, cfg) = router();
    let payload = r#"{"id":"g","tenant":"globex","messages":[{"role":"user","content":"hi!"}]}"#;
    let j = parse_job(
        payload.as_bytes(),
        "llm.jobs.normal.globex",
        1,
        &cfg.parse_rules(),
    )
    .unwrap()
    .job;
    let p = r.plan(&j, 10, normal()).unwrap();
    assert_eq!(
        p.route.tier.as_deref(),
        Some("balanced"),
        "{}",
        p.route.reason
    );
}

#[test]
fn bad_rules_fail_at_start_naming_the_field() {
    let table = [
        (
            "[[routing.rules]]\ntenant = \"a\"\n",
            "routing.rules[0].tier",
        ),
        (
            "[[routing.rules]]\ntier = \"fast\"\nmodel = \"gpt-4o\"\n",
            "routing.rules[0].model",
        ),
        (
            "[[routing.rules]]\nmodel = \"gpt-9\"\n",
            "routing.rules[0].model",
        ),
        (
            "[[routing.rules]]\nsplit = [{ model = \"gpt-4o\", weight = 0 }]\n",
            "routing.rules[0].split[0].weight",
        ),
        (
            "[[routing.rules]]\nsplit = [{ model = \"nope\", weight = 1 }]\n",
            "routing.rules[0].split[0].model",
        ),
        (
            "[[routing.rules]]\ntier = \"gold\"\n",
            "routing.rules[0].tier",
        ),
        (
            "[[routing.rules]]\ntier = \"fast\"\nteant = \"a\"\n",
            "teant",
        ),
        (
            "[[routing.rules]]\ntask = \"auto\"\ntier = \"fast\"\n",
            "routing.rules[0].task",
        ),
    ];
    for (rules, field) in table {
        let text = format!("{}\n{rules}", include_str!("../../config/demo.toml"));
        let err = FileConfig::from_toml_with_env(&text, "demo.toml", &[]).unwrap_err();
        assert!(err.to_string().contains(field), "{rules}: {err}");
    }
    let text = include_str!("../../config/demo.toml")
        .replace("budget_pressure = 0.8", "budget_pressure = 1.5");
    let err = FileConfig::from_toml_with_env(&text, "demo.toml", &[]).unwrap_err();
    assert!(err.to_string().contains("routing.budget_pressure"), "{err}");
}

#[test]
fn budget_pressure_moves_auto_one_tier_down_except_high_priority() {
    let (r, _) = router();
    let j = job_msgs(
        &user("Plan the migration of our billing database: milestones, risks, rollback strategy."),
        "",
    );
    let table: Vec<(Priority, Option<f64>, &str)> = vec![
        (Priority::Normal, None, "balanced"),
        (Priority::Normal, Some(0.5), "balanced"),
        (Priority::Normal, Some(0.8), "fast"),
        (Priority::Low, Some(0.95), "fast"),
        (Priority::High, Some(0.95), "balanced"),
    ];
    for (priority, used, tier) in table {
        let ctx = RouteContext {
            priority,
            budget_used_fraction: used,
        };
        let p = plan_est(&r, &j, ctx);
        assert_eq!(
            p.route.tier.as_deref(),
            Some(tier),
            "{priority} {used:?}: {}",
            p.route.reason
        );
        if tier == "fast" {
            assert!(
                p.candidates.iter().all(|c| c.model.tier == Tier::Fast),
                "{:?}",
                chain(&p)
            );
            assert!(p.route.reason.contains("budget"), "{}", p.route.reason);
        }
    }
    // an explicit tier is what the job asked for: no pressure
    let p = r
        .plan(
            &job(r#","model":"balanced""#),
            10,
            RouteContext {
                priority: Priority::Normal,
                budget_used_fraction: Some(0.99),
            },
        )
        .unwrap();
    assert_eq!(p.route.tier.as_deref(), Some("balanced"));
    // the cheapest tier has nowhere to go
    let p = r
        .plan(
            &job_msgs(&user("hi!"), ""),
            10,
            RouteContext {
                priority: Priority::Normal,
                budget_used_fraction: Some(0.99),
            },
        )
        .unwrap();
    assert_eq!(p.route.tier.as_deref(), Some("cheap"));
}

#[test]
fn auto_tiers_limit_what_auto_may_use() {
    let text = include_str!("../../config/demo.toml").replace(
        r#"auto_tiers = ["cheap", "fast", "balanced", "premium"]"#,
        r#"auto_tiers = ["fast", "balanced"]"#,
    );
    let cfg = FileConfig::from_toml_with_env(&text, "demo.toml", &[]).unwrap();
    let r = Router::new(&cfg);
    let p = r.plan(&job_msgs(&user("hi!"), ""), 10, normal()).unwrap();
    assert_eq!(p.route.tier.as_deref(), Some("fast"), "{}", p.route.reason);
    let p = r
        .plan(
            &job_msgs(&user("Prove that there are infinitely many primes."), ""),
            10,
            normal(),
        )
        .unwrap();
    assert_route(&p, "balanced", "premium not in routing.auto_tiers");
}

#[test]
fn ab_split_is_stable_and_keeps_its_weights() {
    let r = with_rules(
        r#"
[[routing.rules]]
feature = "ingest"
split = [{ model = "gpt-4o-mini", weight = 90 }, { model = "gemini-2.5-flash", weight = 10 }]
"#,
    );
    let (_, cfg) = router();
    let rules = cfg.parse_rules();
    let mut counts = HashMap::new();
    for i in 0..10_000 {
        let payload = format!(
            r#"{{"id":"doc-{i}","tenant":"acme","feature":"ingest","messages":[{{"role":"user","content":"Extract the dates."}}]}}"#
        );
        let j = parse_job(payload.as_bytes(), "llm.jobs.normal.acme", 1, &rules)
            .unwrap()
            .job;
        let p = r.plan(&j, 10, normal()).unwrap();
        let v = p.route.variant.clone().unwrap();
        assert_eq!(chain(&p)[0], v);
        if i < 100 {
            let again = r.plan(&j, 10, normal()).unwrap();
            assert_eq!(
                again.route.variant.as_deref(),
                Some(v.as_str()),
                "stable per job id"
            );
            assert_eq!(again.route.reason, p.route.reason);
        }
        *counts.entry(v).or_insert(0u32) += 1;
    }
    let a = counts["gpt-4o-mini"];
    let b = counts["gemini-2.5-flash"];
    assert_eq!(a + b, 10_000);
    assert!((8_700..=9_300).contains(&a), "90/10 within ±3%: {counts:?}");
    // the same id in another tenant is hashed apart; the bucket is a pure function
    assert_eq!(
        variant_bucket("acme", "doc-1", 100),
        variant_bucket("acme", "doc-1", 100)
    );
    let differ = (0..100)
        .filter(|i| {
            variant_bucket("acme", &format!("d{i}"), 1000)
                != variant_bucket("globex", &format!("d{i}"), 1000)
        })
        .count();
    assert!(differ > 90);
    // other features are not in the experiment
    let p = r.plan(&job(""), 10, normal()).unwrap();
    assert_eq!(p.route.variant, None);
}

#[test]
fn worst_case_uses_each_candidates_count() {
    let (r, _) = router();
    let p = r
        .plan(&job(r#","model":"fast","max_tokens":100"#), 1000, normal())
        .unwrap();
    assert!(p.candidates.iter().all(|c| c.input_tokens == 1000));
    let haiku = p
        .candidates
        .iter()
        .find(|c| c.model.name == "claude-3-5-haiku")
        .unwrap();
    assert_eq!(p.worst_case(), cost::worst_case(&haiku.model, 1000, 100));
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
    let p = r.plan(&j, approx, normal()).unwrap();
    assert_eq!(chain(&p), ["small-openai"]);
}

#[test]
fn hedging_is_decided_per_priority_and_rule() {
    let (_, mut cfg) = router();
    let ctx = |p| RouteContext::new(p);
    let fast = job(r#","model":"fast""#);
    // Off by default, even for high priority.
    let r = Router::new(&cfg);
    assert_eq!(r.plan(&fast, 10, ctx(Priority::High)).unwrap().hedge, None);
    // hedge_high: high priority only, and only with a second candidate.
    cfg.routing.hedge_high = true;
    let r = Router::new(&cfg);
    let p = r.plan(&fast, 10, ctx(Priority::High)).unwrap();
    assert_eq!(p.hedge, Some(cfg.routing.hedge));
    assert!(
        p.route.reason.ends_with("; hedge after p95"),
        "{}",
        p.route.reason
    );
    for pr in [Priority::Normal, Priority::Low] {
        assert_eq!(r.plan(&fast, 10, ctx(pr)).unwrap().hedge, None, "{pr:?}");
    }
    let pinned = job(r#","model":"openai/gpt-4o-mini""#);
    assert_eq!(
        r.plan(&pinned, 10, ctx(Priority::High)).unwrap().hedge,
        None
    );
    // A rule decides for its auto jobs: its own settings at normal priority too, never
    // at low; `false` wins over hedge_high.
    let own = HedgeConfig {
        min_ms: 300,
        ..HedgeConfig::default()
    };
    cfg.routing.rules = vec![
        crate::config::RouteRule {
            tenant: Some("acme".into()),
            hedge: Some(RuleHedge::With(own)),
            ..Default::default()
        },
        crate::config::RouteRule {
            tenant: Some("globex".into()),
            hedge: Some(RuleHedge::On(false)),
            ..Default::default()
        },
    ];
    let r = Router::new(&cfg);
    let auto = job("");
    assert_eq!(
        r.plan(&auto, 10, ctx(Priority::Normal)).unwrap().hedge,
        Some(own)
    );
    assert_eq!(
        r.plan(&auto, 10, ctx(Priority::High)).unwrap().hedge,
        Some(own)
    );
    assert_eq!(r.plan(&auto, 10, ctx(Priority::Low)).unwrap().hedge, None);
    let mut globex = auto.clone();
    globex.tenant = "globex".into();
    assert_eq!(
        r.plan(&globex, 10, ctx(Priority::High)).unwrap().hedge,
        None
    );
    // A rule applies to auto jobs only: a tier job keeps hedge_high's settings.
    let p = r.plan(&fast, 10, ctx(Priority::High)).unwrap();
    assert_eq!(p.hedge, Some(cfg.routing.hedge));
}

/// Each candidate's worst case, dearest first.
fn dearest_first(p: &Plan) -> Vec<Decimal> {
    let mut worst: Vec<Decimal> = p
        .candidates
        .iter()
        .map(|c| cost::worst_case(&c.model, c.input_tokens, c.max_tokens))
        .collect();
    worst.sort_unstable_by(|a, b| b.cmp(a));
    worst
}

#[test]
fn a_hedged_plan_holds_every_call_that_may_run_at_once() {
    let (_, mut cfg) = router();
    cfg.routing.hedge_high = true;
    let r = Router::new(&cfg);
    let j = job(r#","model":"fast","max_tokens":100"#);
    let one = r.plan(&j, 1000, normal()).unwrap();
    let mut p = r.plan(&j, 1000, RouteContext::new(Priority::High)).unwrap();
    let worst = dearest_first(&p);
    assert_eq!(one.worst_case(), worst[0]);
    assert_eq!(p.worst_case(), worst[0] + worst[1]);
    p.hedge = p.hedge.map(|h| HedgeConfig { max_extra: 2, ..h });
    assert_eq!(p.worst_case(), worst[0] + worst[1] + worst[2]);
    p.hedge = p.hedge.map(|h| HedgeConfig { max_extra: 3, ..h });
    assert_eq!(p.hold(worst.iter().copied().take(2)), worst[0] + worst[1]);
}

#[test]
fn a_cost_cap_below_the_hedged_worst_case_turns_the_hedge_off() {
    let (_, mut cfg) = router();
    cfg.routing.hedge_high = true;
    let r = Router::new(&cfg);
    let high = RouteContext::new(Priority::High);
    let p = r
        .plan(&job(r#","model":"fast","max_tokens":100"#), 10, high)
        .unwrap();
    let worst = dearest_first(&p);
    let capped = |cap: Decimal| {
        let extra = format!(r#","model":"fast","max_tokens":100,"max_cost_usd":{cap}"#);
        r.plan(&job(&extra), 10, high).unwrap()
    };
    // Between the dearest call and the dearest two (away from either bound: the job's
    // number is read as a float).
    let p = capped(worst[0] + worst[1] / Decimal::from(2));
    assert_eq!(p.candidates.len(), worst.len(), "each one alone fits");
    assert_eq!(p.hedge, None);
    assert!(
        p.route.reason.ends_with("; no hedge: max_cost_usd"),
        "{}",
        p.route.reason
    );
    assert!(capped((worst[0] + worst[1]) * Decimal::from(2))
        .hedge
        .is_some());
}
