#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The classifier against a hand-labeled set (`tests/fixtures/routing/labeled.jsonl`):
//! each line is a job and the lowest tier a careful engineer would send it to. Asserts
//! agreement ≥ 85% and that ≥ 95% land on their tier or above, and prints both with the
//! cost of routing the set versus sending every job to the premium tier.

use rust_decimal::Decimal;
use std::collections::BTreeMap;
use switchyard::config::{FileConfig, Tier};
use switchyard::cost::cost_of;
use switchyard::job::{parse_job, Job, Priority, Usage};
use switchyard::router::{RouteContext, Router};
use switchyard::tokens::estimate_input_tokens;

#[derive(serde::Deserialize)]
struct Labeled {
    job: serde_json::Value,
    tier: Tier,
    task: String,
}

/// What a job is assumed to produce for the cost comparison: half its `max_tokens`.
fn output_tokens(job: &Job) -> u64 {
    u64::from(job.max_tokens.unwrap_or(1024)) / 2
}

#[test]
fn labeled_set_agreement_and_cost() {
    let cfg = FileConfig::from_toml_with_env(include_str!("../config/demo.toml"), "demo.toml", &[])
        .unwrap();
    let router = Router::new(&cfg);
    let rules = cfg.parse_rules();
    let text = include_str!("fixtures/routing/labeled.jsonl");
    let ctx = RouteContext::new(Priority::Normal);
    let (mut n, mut agree, mut at_or_above, mut task_agree) = (0u32, 0u32, 0u32, 0u32);
    let (mut routed, mut premium) = (Decimal::ZERO, Decimal::ZERO);
    let mut misses: BTreeMap<String, u32> = BTreeMap::new();
    let mut below = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l: Labeled =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let payload = serde_json::to_vec(&l.job).unwrap();
        let tenant = l.job["tenant"].as_str().unwrap();
        let job = parse_job(&payload, &format!("llm.jobs.normal.{tenant}"), 1, &rules)
            .unwrap_or_else(|e| panic!("line {}: not a valid job: {:?}", i + 1, e.error))
            .job;
        assert_eq!(job.model, "auto", "line {}", i + 1);
        let tokens = estimate_input_tokens(&job);
        let plan = router.plan(&job, tokens, ctx).unwrap();
        let tier = Tier::parse(plan.route.tier.as_deref().unwrap()).unwrap();
        n += 1;
        if tier == l.tier {
            agree += 1;
        } else {
            *misses
                .entry(format!("{} → {}", l.tier.as_str(), tier.as_str()))
                .or_default() += 1;
        }
        if tier >= l.tier {
            at_or_above += 1;
        } else {
            below.push(format!("{}: {}", job.id, plan.route.reason));
        }
        if plan.route.task == l.task {
            task_agree += 1;
        }
        let usage = Usage {
            input_tokens: tokens,
            output_tokens: output_tokens(&job),
            ..Default::default()
        };
        routed += cost_of(&plan.candidates[0].model, &usage);
        let mut all_premium = job.clone();
        all_premium.model = "premium".into();
        let p = router.plan(&all_premium, tokens, ctx).unwrap();
        premium += cost_of(&p.candidates[0].model, &usage);
    }
    let pct = |k: u32| f64::from(k) * 100.0 / f64::from(n);
    println!("labeled jobs: {n}");
    println!("tier agreement: {agree}/{n} = {:.1}%", pct(agree));
    println!(
        "at or above the required tier: {at_or_above}/{n} = {:.1}%",
        pct(at_or_above)
    );
    println!("task agreement: {task_agree}/{n} = {:.1}%", pct(task_agree));
    println!("disagreements (label → routed): {misses:?}");
    println!("below the required tier: {below:#?}");
    println!(
        "cost (demo.toml prices, input estimate + half max_tokens out): routed ${} vs all-premium ${} ({:.1}% of it)",
        routed.round_dp(4),
        premium.round_dp(4),
        (routed * Decimal::from(100) / premium)
            .round_dp(1)
    );
    assert!(n >= 300, "at least 300 labeled jobs, got {n}");
    assert!(
        pct(agree) >= 85.0,
        "tier agreement {:.1}% < 85%",
        pct(agree)
    );
    assert!(
        pct(at_or_above) >= 95.0,
        "at or above {:.1}% < 95%",
        pct(at_or_above)
    );
}
