#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Screening before routing, through a real worker (NATS JetStream, Postgres, the
//! simulator): a redacted job's provider request carries the placeholder and not the
//! address; a refused job fails as `refused` with no call and a dead letter; a restricted
//! job is routed to the region it was held to; a tenant without a policy is untouched.

mod common;

use common::{next_json, TestEnv};
use switchyard::config::ScreenConfig;
use switchyard::job::Priority;

fn policies() -> ScreenConfig {
    serde_json::from_value(serde_json::json!({"policies": [{
        "name": "acme-pii",
        "tenant": "acme",
        "checks": ["email", "card", "iban", "injection"],
        "actions": {
            "email": "redact",
            "card": "refuse",
            "iban": {"restrict": {"region": "eu"}},
            "injection": "refuse"
        }
    }]}))
    .unwrap()
}

/// Publish a one-message job with a reply subject under `inbox`; its result.
async fn ask(
    env: &TestEnv,
    replies: &mut async_nats::Subscriber,
    inbox: &str,
    (id, tenant): (&str, &str),
    text: &str,
) -> serde_json::Value {
    let job = serde_json::json!({"id": id, "tenant": tenant, "reply_to": format!("{inbox}.{id}"),
        "messages": [{"role": "user", "content": text}]});
    env.publish(Priority::Normal, tenant, job.to_string()).await;
    let r = next_json(replies, 20).await;
    assert_eq!(r["id"], id, "{r}");
    common::assert_schema("result", &r);
    r
}

/// The simulator's logged prompts (the start of each request's last user message).
fn prompts(env: &TestEnv) -> Vec<String> {
    env.sim
        .log(1000)
        .into_iter()
        .filter_map(|e| e.prompt)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_refuse_restrict_through_a_worker() {
    let env = TestEnv::new(|c| c.screen = policies()).await;
    let (stop, worker) = env.start_worker().await;
    let inbox = format!("_INBOX.{}.screen", env.prefix);
    let mut replies = env.subscribe(&format!("{inbox}.>")).await;

    // Redact: the provider sees [EMAIL], the route says what was done (counts, no text).
    let text = "Write to jane.doe@example.com and bob@example.org about the invoice";
    let r = ask(&env, &mut replies, &inbox, ("r1", "acme"), text).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let screen = &r["route"]["screen"];
    assert_eq!(screen["policy"], "acme-pii");
    assert_eq!(screen["action"], "redact");
    assert_eq!(screen["findings"]["email"], 2);
    assert!(!r.to_string().contains("jane.doe@example.com"), "{r}");
    let seen = prompts(&env);
    assert!(
        seen.iter()
            .any(|p| p.starts_with("Write to [EMAIL] and [EMAIL] about")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|p| p.contains('@')), "{seen:?}");

    // Refuse: no call, failed as `refused`, dead-lettered; the message names no text.
    let calls_before = env.sim.stats().total;
    let text = "Charge card 4111 1111 1111 1111 for the order";
    let r = ask(&env, &mut replies, &inbox, ("f1", "acme"), text).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["kind"], "refused");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("acme-pii") && message.contains("card ×1"),
        "{message}"
    );
    assert!(!message.contains("4111"), "{message}");
    assert_eq!(
        env.sim.stats().total,
        calls_before,
        "a refused job makes no call"
    );
    let dlq = env.dlq("acme", "f1").await.expect("a dead letter");
    assert_eq!(dlq.error.kind.as_str(), "refused");
    let (kind, deliveries): (String, i32) =
        sqlx::query_as("SELECT error_kind, deliveries FROM jobs WHERE tenant='acme' AND id='f1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), deliveries), ("refused", 1), "not retried");

    // Restrict: only providers in region eu (local, gemini in the demo config).
    let text = "Pay the invoice to DE89 3704 0044 0532 0130 00 today";
    let r = ask(&env, &mut replies, &inbox, ("s1", "acme"), text).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["route"]["screen"]["action"], "restrict");
    assert_eq!(r["route"]["screen"]["restrict"]["region"], "eu");
    let provider = r["provider"].as_str().unwrap();
    assert!(["local", "gemini"].contains(&provider), "{provider}");
    assert!(r["route"]["reason"]
        .as_str()
        .unwrap()
        .contains("screen acme-pii: restrict"));

    // Another tenant: no policy applies, nothing changes and nothing is recorded.
    let text = "Write to carol@example.net please";
    let r = ask(&env, &mut replies, &inbox, ("n1", "beta"), text).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["route"].get("screen").is_none(), "{r}");
    assert!(prompts(&env)
        .iter()
        .any(|p| p.contains("carol@example.net")));

    stop.cancel();
    worker.await.unwrap().unwrap();
    env.cleanup().await;
}
