#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The same job through NATS to every provider: equivalent results and exact cost rows.

mod common;

use common::TestEnv;
use rust_decimal::Decimal;
use switchyard::cost::cost_of;
use switchyard::job::{Priority, Status};

const TARGETS: [(&str, &str, &str); 4] = [
    ("openai", "gpt-4o-mini", "openai/gpt-4o-mini-2024-07-18"),
    (
        "local",
        "llama-3.1-8b",
        "openai/meta-llama/Llama-3.1-8B-Instruct",
    ),
    (
        "anthropic",
        "claude-3-5-haiku",
        "anthropic/claude-3-5-haiku-20241022",
    ),
    ("gemini", "gemini-2.0-flash", "gemini/gemini-2.0-flash"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_on_every_provider() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    for (provider, model, _) in TARGETS {
        let text = format!(
            r#"{{"id":"plain-{provider}","tenant":"acme","feature":"e2e","model":"{provider}/{model}","max_tokens":200,
               "messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"Summarize: the quick brown fox."}},
                           {{"role":"assistant","content":"A fox jumps."}},{{"role":"user","content":"Again, longer."}}]}}"#
        );
        env.publish(Priority::Normal, "acme", text).await;
        let tools = format!(
            r#"{{"id":"tool-{provider}","tenant":"acme","model":"{provider}/{model}","tool_choice":"required",
               "tools":[{{"type":"function","function":{{"name":"get_weather","description":"Weather for a city",
                 "parameters":{{"type":"object","properties":{{"city":{{"type":"string"}}}},"required":["city"]}}}}}}],
               "messages":[{{"role":"user","content":"What is the weather in Oslo? Use get_weather."}}]}}"#
        );
        env.publish(Priority::Normal, "acme", tools).await;
    }
    let router = switchyard::router::Router::new(&env.config);
    for (provider, model, _) in TARGETS {
        let r = env.result("acme", &format!("plain-{provider}"), 20).await;
        assert_eq!(
            r.status,
            Status::Succeeded,
            "{provider}: {:?} {:?}",
            r.error,
            r.attempts
        );
        assert_eq!(r.provider.as_deref(), Some(provider));
        assert_eq!(r.model.as_deref(), Some(model));
        let out = r.output.as_ref().unwrap();
        assert!(
            !out.content.as_deref().unwrap_or("").is_empty(),
            "{provider}: text {out:?} {:?}",
            r.usage
        );
        assert_eq!(out.finish_reason, "stop", "{provider}");
        assert!(
            r.usage.input_tokens > 10 && r.usage.output_tokens > 0,
            "{provider}: {:?}",
            r.usage
        );
        // Cost is exactly usage × the configured prices, and equals the cost row.
        let m = router.model(model).unwrap();
        assert_eq!(r.cost_usd, cost_of(m, &r.usage), "{provider}");
        let row: Decimal = sqlx::query_scalar("SELECT cost_usd FROM cost_rows WHERE job_id=$1")
            .bind(format!("plain-{provider}"))
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(row, r.cost_usd, "{provider}");
        common::assert_schema("result", &serde_json::to_value(&r).unwrap());

        let t = env.result("acme", &format!("tool-{provider}"), 20).await;
        assert_eq!(t.status, Status::Succeeded, "{provider}: {:?}", t.error);
        let out = t.output.as_ref().unwrap();
        assert_eq!(out.finish_reason, "tool_calls", "{provider}");
        assert_eq!(out.tool_calls.len(), 1, "{provider}");
        let call = &out.tool_calls[0];
        assert_eq!(call.function.name, "get_weather");
        let args: serde_json::Value = serde_json::from_str(&call.function.arguments).unwrap();
        assert!(args["city"].is_string(), "{provider}: {args}");
        assert!(!call.id.is_empty());
    }
    let stats = env.sim.stats();
    for (provider, _, key) in TARGETS {
        let (api, model) = key.split_once('/').unwrap();
        assert_eq!(stats.calls(api, model), 2, "{provider}: {stats:?}");
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_and_outages_fail_over() {
    use switchyard::providers::simulator::{FaultProfile, Outage};
    let env = TestEnv::new(|_| {}).await;
    let mut per_model = std::collections::HashMap::new();
    per_model.insert(
        "gpt-4o-mini-2024-07-18".to_string(),
        FaultProfile {
            truncate_rate: 1.0,
            ..Default::default()
        },
    );
    per_model.insert(
        "meta-llama/Llama-3.1-8B-Instruct".to_string(),
        FaultProfile {
            outages: vec![Outage {
                start_s: 0.0,
                duration_s: 600.0,
                status: 503,
            }],
            ..Default::default()
        },
    );
    env.sim.set_profile(FaultProfile {
        per_model,
        ..Default::default()
    });
    let (stop, worker) = env.start_worker().await;
    env.publish(
        Priority::High,
        "acme",
        common::job("trunc", "acme", r#","model":"fast""#),
    )
    .await;
    let r = env.result("acme", "trunc", 20).await;
    assert_eq!(r.status, Status::Succeeded, "{:?}", r.attempts);
    let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        // `fast` is cheapest first: llama (outage), gpt-4o-mini (truncated), gemini-2.5-flash
        ["overloaded", "server_error", "succeeded"],
        "{:?}",
        r.attempts
    );
    assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cost_rows WHERE job_id='trunc'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 3, "one cost row per call, failed ones included");
    stop.cancel();
    worker.await.unwrap().unwrap();
}
