#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Reports through the CLI against real Postgres (and a worker where the figures come
//! from real jobs): budgets, savings against a baseline model, costs by hour. Every
//! figure is checked against what `cost_rows` and the configured prices say.

mod common;

use common::{job, TestEnv};
use rust_decimal::Decimal;
use std::str::FromStr;
use std::time::Duration;
use switchyard::job::Priority;

fn dec(v: &serde_json::Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

/// A csv report: checks its header line, returns every line.
async fn csv(env: &TestEnv, args: &[&str], header: &str) -> Vec<String> {
    let (code, out, err) = env.cli(args).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(lines.first().map(String::as_str), Some(header), "{out}");
    lines
}

async fn spent(env: &TestEnv, filter: &str) -> Decimal {
    sqlx::query_scalar::<_, Option<Decimal>>(&format!(
        "SELECT sum(cost_usd) FROM cost_rows WHERE {filter}"
    ))
    .fetch_one(&env.pool)
    .await
    .unwrap()
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_report_shows_limit_spent_reserved_and_share_used() {
    let env = TestEnv::new(|_| {}).await;
    for args in [
        &["--tenant", "acme", "--period", "day", "--limit", "1"][..],
        &[
            "--tenant",
            "acme",
            "--feature",
            "ocr",
            "--period",
            "month",
            "--limit",
            "0.5",
            "--policy",
            "defer",
        ],
        &["--tenant", "globex", "--period", "day", "--limit", "0"],
    ] {
        let mut all = vec!["budget", "set"];
        all.extend_from_slice(args);
        let (code, _, err) = env.cli(&all).await;
        assert_eq!(code, 0, "{err}");
    }
    let (stop, worker) = env.start_worker().await;
    for i in 0..6 {
        let feature = if i % 2 == 0 { "ocr" } else { "chat" };
        let j = job(&format!("b{i}"), "acme", "").replace("\"test\"", &format!("\"{feature}\""));
        env.publish(Priority::Normal, "acme", j).await;
    }
    assert_eq!(env.wait_succeeded(6, 30).await, 6);
    let (tenant_spent, ocr_spent) = (
        spent(&env, "tenant='acme'").await,
        spent(&env, "tenant='acme' AND feature='ocr'").await,
    );
    assert!(ocr_spent > Decimal::ZERO && tenant_spent > ocr_spent);

    // Spend lands with the commits and reservations are released by them; poll until
    // the report shows it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = env
            .cli_json(&["report", "budgets", "--format", "json"])
            .await;
        let settled = rows.len() == 3
            && rows.iter().all(|r| dec(&r["reserved_usd"]).is_zero())
            && dec(&rows[0]["spent_usd"]) == tenant_spent;
        if settled || tokio::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    // acme whole tenant first, then its feature budget, then globex.
    let (whole, ocr, globex) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(
        (
            whole["tenant"].as_str(),
            whole["feature"].as_str(),
            whole["period"].as_str()
        ),
        (Some("acme"), None, Some("day"))
    );
    assert_eq!(dec(&whole["limit_usd"]), Decimal::ONE);
    assert_eq!(dec(&whole["spent_usd"]), tenant_spent);
    assert_eq!(dec(&whole["reserved_usd"]), Decimal::ZERO);
    assert_eq!(
        dec(&whole["used_pct"]),
        (tenant_spent * Decimal::ONE_HUNDRED).round_dp(2)
    );
    assert_eq!(dec(&whole["remaining_usd"]), Decimal::ONE - tenant_spent);
    assert_eq!(whole["policy"], "fail");
    assert_eq!(ocr["feature"], "ocr");
    assert_eq!(ocr["period"], "month");
    assert_eq!(ocr["policy"], "defer");
    assert_eq!(dec(&ocr["spent_usd"]), ocr_spent);
    let half = Decimal::from_str("0.5").unwrap();
    assert_eq!(
        dec(&ocr["used_pct"]),
        (ocr_spent * Decimal::ONE_HUNDRED / half).round_dp(2)
    );
    assert_eq!(dec(&ocr["remaining_usd"]), half - ocr_spent);
    assert_eq!(globex["tenant"], "globex");
    assert_eq!(
        dec(&globex["used_pct"]),
        Decimal::ONE_HUNDRED,
        "a zero limit is used up"
    );
    assert_eq!(dec(&globex["remaining_usd"]), Decimal::ZERO);

    // `budget show` prints the same report; csv and one tenant.
    let shown = env.cli_json(&["budget", "show", "--format", "json"]).await;
    assert_eq!(shown, rows);
    let lines = csv(
        &env,
        &["report", "budgets", "--tenant", "globex", "--format", "csv"],
        "tenant,feature,period,limit_usd,spent_usd,reserved_usd,used_pct,remaining_usd,policy,period_start",
    )
    .await;
    let out = lines.join("\n");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].starts_with("globex,,day,0,0,0,100,0,fail,"),
        "{out}"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savings_price_the_same_tokens_at_the_baseline_model() {
    let env = TestEnv::new(|_| {}).await;
    let (stop, worker) = env.start_worker().await;
    let models = [
        ("gpt-4o-mini", 3),
        ("llama", 3),
        ("gemini-2.0-flash", 2),
        ("claude-3-5-haiku", 2),
    ];
    let mut n = 0;
    for (model, count) in models {
        for i in 0..count {
            let extra = format!(r#","model":"{model}""#);
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            env.publish(
                Priority::Normal,
                tenant,
                job(&format!("s{n}"), tenant, &extra),
            )
            .await;
            n += 1;
        }
    }
    assert_eq!(env.wait_succeeded(n, 30).await, n);

    let vs_gpt4o = [
        "report",
        "savings",
        "--baseline",
        "gpt-4o",
        "--format",
        "json",
    ];
    let lines = env
        .cli_json(&[&vs_gpt4o[..], &["--by", "model"]].concat())
        .await;
    let gpt4o = env
        .config
        .models
        .iter()
        .find(|m| m.name == "gpt-4o")
        .unwrap();
    let cached_price = gpt4o.cached_input_per_mtok.unwrap();
    let sums: Vec<(String, i64, i64, i64, i64, Decimal)> = sqlx::query_as(
        "SELECT model, count(*), sum(input_tokens)::bigint, sum(cached_input_tokens)::bigint,
                sum(output_tokens)::bigint, sum(cost_usd)
           FROM cost_rows GROUP BY model ORDER BY model",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(sums.len(), 4);
    assert_eq!(
        lines.len(),
        sums.len() + 1,
        "a line per model and the total: {lines:?}"
    );
    let (mut cost, mut base) = (Decimal::ZERO, Decimal::ZERO);
    for ((model, calls, input, cached, output, own), line) in sums.iter().zip(&lines) {
        let expect = (Decimal::from(input - cached) * gpt4o.input_per_mtok
            + Decimal::from(*cached) * cached_price
            + Decimal::from(*output) * gpt4o.output_per_mtok)
            / Decimal::from(1_000_000);
        assert_eq!(line["model"].as_str(), Some(model.as_str()));
        assert_eq!(line["calls"].as_i64(), Some(*calls));
        assert_eq!(line["input_tokens"].as_i64(), Some(*input));
        assert_eq!(line["output_tokens"].as_i64(), Some(*output));
        assert_eq!(dec(&line["cost_usd"]), *own, "{model}");
        assert_eq!(dec(&line["baseline_usd"]), expect, "{model}");
        assert_eq!(dec(&line["savings_usd"]), expect - own, "{model}");
        assert_eq!(
            dec(&line["savings_pct"]),
            ((expect - own) * Decimal::ONE_HUNDRED / expect).round_dp(2),
            "{model}"
        );
        assert!(expect > *own, "{model} is cheaper than gpt-4o");
        cost += own;
        base += expect;
    }
    let total = lines.last().unwrap();
    assert_eq!(total["total"], true);
    assert_eq!(total["calls"].as_i64(), Some(n));
    assert_eq!(dec(&total["cost_usd"]), cost);
    assert_eq!(cost, spent(&env, "true").await);
    assert_eq!(dec(&total["baseline_usd"]), base);
    assert_eq!(dec(&total["savings_usd"]), base - cost);

    // By tenant in csv, with the totals row; one tenant; a baseline that is not there.
    let rows = csv(
        &env,
        &["report", "savings", "--baseline", "openai/gpt-4o", "--by", "tenant", "--format", "csv"],
        "tenant,calls,input_tokens,cached_input_tokens,output_tokens,cost_usd,baseline_usd,savings_usd,savings_pct,cache_hits,cache_saved_usd",
    )
    .await;
    let out = rows.join("\n");
    assert_eq!(rows.len(), 4, "{out}");
    assert!(
        rows[1].starts_with("acme,") && rows[2].starts_with("globex,"),
        "{out}"
    );
    assert!(rows[3].starts_with(&format!("total,{n},")), "{out}");
    let only = env
        .cli_json(&[&vs_gpt4o[..], &["--by", "", "--tenant", "globex"]].concat())
        .await;
    assert_eq!(
        dec(&only[0]["cost_usd"]),
        spent(&env, "tenant='globex'").await
    );
    env.cli_fails(
        &["report", "savings", "--baseline", "gpt-9"],
        &["gpt-9", "not a configured model"],
    )
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_and_savings_by_hour() {
    let env = TestEnv::new(|_| {}).await;
    // Calls at known times: two in the 10:00 hour, one at its last second of 11:00, one
    // at 12:00 sharp. 1,000 input tokens (200 cached) and 500 output each.
    for (i, (at, cost)) in [
        ("2026-01-02T10:15:00Z", "0.001"),
        ("2026-01-02T10:59:00Z", "0.002"),
        ("2026-01-02T11:59:59.999Z", "0.004"),
        ("2026-01-02T12:00:00Z", "0.008"),
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query(
            "INSERT INTO cost_rows (tenant, job_id, attempt, provider, model, outcome,
                                    input_tokens, cached_input_tokens, output_tokens, cost_usd, created_at)
             VALUES ('hist', $1, 1, 'openai', 'gpt-4o', 'succeeded', 1000, 200, 500, $2::numeric, $3::timestamptz)",
        )
        .bind(format!("h{i}"))
        .bind(cost)
        .bind(at)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let lines = env
        .cli_json(&[
            "report", "costs", "--by", "hour", "--tenant", "hist", "--format", "json",
        ])
        .await;
    let got: Vec<(String, i64, Decimal)> = lines
        .iter()
        .map(|l| {
            (
                l["hour"].as_str().unwrap().to_string(),
                l["calls"].as_i64().unwrap(),
                dec(&l["cost_usd"]),
            )
        })
        .collect();
    let d = |s: &str| Decimal::from_str(s).unwrap();
    assert_eq!(
        got,
        vec![
            ("2026-01-02T10:00Z".to_string(), 2, d("0.003")),
            ("2026-01-02T11:00Z".to_string(), 1, d("0.004")),
            ("2026-01-02T12:00Z".to_string(), 1, d("0.008")),
        ]
    );
    let later = env
        .cli_json(&[
            "report",
            "costs",
            "--by",
            "hour",
            "--since",
            "2026-01-02T11:00:00Z",
            "--until",
            "2026-01-02T12:00:00Z",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0]["hour"], "2026-01-02T11:00Z");

    // At gpt-4o-mini's prices (0.15 in, 0.075 cached, 0.60 out): 800 × 0.15 + 200 × 0.075
    // + 500 × 0.60 = 435 per million per call.
    let per_call = d("0.000435");
    let savings = env
        .cli_json(&[
            "report",
            "savings",
            "--baseline",
            "gpt-4o-mini",
            "--by",
            "hour",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(savings.len(), 4);
    assert_eq!(
        dec(&savings[0]["baseline_usd"]),
        per_call * Decimal::from(2)
    );
    assert_eq!(
        dec(&savings[0]["savings_usd"]),
        per_call * Decimal::from(2) - d("0.003")
    );
    assert_eq!(dec(&savings[2]["baseline_usd"]), per_call);
    assert_eq!(
        dec(&savings[3]["baseline_usd"]),
        per_call * Decimal::from(4)
    );
    assert_eq!(dec(&savings[3]["cost_usd"]), d("0.015"));
    assert_eq!(savings[3]["total"], true);
}
