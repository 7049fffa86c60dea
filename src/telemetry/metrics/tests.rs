use super::*;
use crate::job::{ErrorBody, ErrorKind, Output, Status};
use std::io::Write;
use std::sync::Mutex;

fn result(status: Status, kind: Option<ErrorKind>) -> JobResult {
    JobResult {
        id: "doc-1".into(),
        tenant: "acme".into(),
        feature: Some("extract".into()),
        status,
        output: Some(Output {
            content: Some("the secret answer".into()),
            tool_calls: Vec::new(),
            finish_reason: "stop".into(),
        }),
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        usage: Usage {
            input_tokens: 812,
            cached_input_tokens: 12,
            cache_write_tokens: 0,
            output_tokens: 96,
            reasoning_tokens: 0,
        },
        cost_usd: Decimal::new(1196, 7),
        route: None,
        attempts: Vec::new(),
        cache_hit: false,
        queued_ms: 3,
        latency_ms: 40,
        error: kind.map(|k| ErrorBody::new(k, "no")),
        metadata: None,
        truncated: false,
    }
}

fn finished<'a>(r: &'a JobResult, job: Option<&'a Job>) -> FinishedJob<'a> {
    FinishedJob {
        priority: Priority::High,
        result: r,
        job,
        deliveries: 1,
        queued: Duration::from_millis(3),
        latency: Duration::from_millis(70),
    }
}

/// The value of the one sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn renders_jobs_calls_tokens_and_spend() {
    let m = Metrics::default();
    let ok = result(Status::Succeeded, None);
    let failed = result(Status::Failed, Some(ErrorKind::InvalidJob));
    m.job_finished(finished(&ok, None));
    m.job_finished(finished(&failed, None));
    m.job_started(Priority::Low, Duration::from_millis(20));
    let usage = ok.usage;
    let call = |outcome, cost| CallEvent {
        provider: "openai",
        model: "gpt-4o-mini",
        outcome,
        duration: Duration::from_millis(30),
        usage: &usage,
        cost_usd: cost,
        tenant: "acme",
        feature: None,
    };
    m.call(call("rate_limited", Decimal::ZERO));
    m.call(call("succeeded", Decimal::new(15, 7)));
    m.limiter_waited("openai", "gpt-4o-mini", Duration::ZERO);
    m.hedged("openai", "gpt-4o-mini", true);
    m.hedged("openai", "gpt-4o-mini", false);
    m.hedged("openai", "gpt-4o-mini", false);
    m.dead_lettered(Priority::High, "invalid_job");
    m.retried();
    m.reloaded(false);
    m.reloaded(true);
    m.reloaded(true);
    let text = m.render();
    for (series, want) in [
        (
            r#"switchyard_jobs_total{priority="high",status="failed",error_kind="invalid_job"}"#,
            1.0,
        ),
        (
            r#"switchyard_jobs_total{priority="high",status="succeeded",error_kind=""}"#,
            1.0,
        ),
        (
            r#"switchyard_job_latency_seconds_bucket{priority="high",status="succeeded",le="0.1"}"#,
            1.0,
        ),
        (
            r#"switchyard_job_latency_seconds_bucket{priority="high",status="succeeded",le="0.05"}"#,
            0.0,
        ),
        (
            r#"switchyard_job_latency_seconds_count{priority="high",status="failed"}"#,
            1.0,
        ),
        (
            r#"switchyard_queue_wait_seconds_count{priority="low"}"#,
            1.0,
        ),
        (
            r#"switchyard_provider_calls_total{provider="openai",model="gpt-4o-mini",outcome="rate_limited"}"#,
            1.0,
        ),
        (
            r#"switchyard_provider_call_duration_seconds_count{provider="openai",model="gpt-4o-mini",outcome="succeeded"}"#,
            1.0,
        ),
        (
            r#"switchyard_tokens_total{provider="openai",model="gpt-4o-mini",kind="input"}"#,
            1624.0,
        ),
        (
            r#"switchyard_tokens_total{provider="openai",model="gpt-4o-mini",kind="cached_input"}"#,
            24.0,
        ),
        (
            r#"switchyard_tokens_total{provider="openai",model="gpt-4o-mini",kind="output"}"#,
            192.0,
        ),
        (
            r#"switchyard_cost_usd_total{provider="openai",model="gpt-4o-mini"}"#,
            0.0000015,
        ),
        (
            r#"switchyard_spend_usd_total{tenant="acme",feature=""}"#,
            0.0000015,
        ),
        (
            r#"switchyard_limiter_wait_seconds_bucket{provider="openai",model="gpt-4o-mini",le="0.005"}"#,
            1.0,
        ),
        (
            r#"switchyard_hedged_calls_total{provider="openai",model="gpt-4o-mini",result="won"}"#,
            1.0,
        ),
        (
            r#"switchyard_hedged_calls_total{provider="openai",model="gpt-4o-mini",result="lost"}"#,
            2.0,
        ),
        (
            r#"switchyard_dead_letters_total{priority="high",error_kind="invalid_job"}"#,
            1.0,
        ),
        (
            r#"switchyard_cache_lookups_total{kind="semantic",result="hit"}"#,
            0.0,
        ),
        (
            r#"switchyard_consumer_pending_messages{priority="normal"}"#,
            0.0,
        ),
        (
            r#"switchyard_oldest_pending_job_age_seconds{priority="low"}"#,
            0.0,
        ),
        ("switchyard_retries_total", 1.0),
        (r#"switchyard_config_reloads_total{result="applied"}"#, 2.0),
        (r#"switchyard_config_reloads_total{result="refused"}"#, 1.0),
        ("switchyard_republished_total", 0.0),
        ("switchyard_jobs_in_flight", 0.0),
        ("switchyard_worker_ready", 0.0),
        ("switchyard_dlq_messages", 0.0),
    ] {
        let got = sample(&text, series);
        assert!(
            got.is_some_and(|v| (v - want).abs() < 1e-12),
            "{series} = {got:?}, want {want}, in\n{text}"
        );
    }
    // Prometheus text format: one TYPE per family, counters typed under their _total name.
    assert_eq!(
        text.matches("# TYPE switchyard_jobs_total counter").count(),
        1
    );
    assert!(text.contains("# TYPE switchyard_job_latency_seconds histogram"));
    assert!(!text.contains("_total_total"));
    assert!(!text.contains("switchyard_breaker_state"));
}

#[test]
fn spend_label_sets_are_capped() {
    let m = Metrics::default();
    let usage = Usage::default();
    for i in 0..SPEND_LABEL_SETS_MAX + 5 {
        let tenant = format!("t{i}");
        m.call(CallEvent {
            provider: "openai",
            model: "gpt-4o",
            outcome: "succeeded",
            duration: Duration::ZERO,
            usage: &usage,
            cost_usd: Decimal::ONE,
            tenant: &tenant,
            feature: Some("f"),
        });
    }
    let text = m.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with("switchyard_spend_usd_total{"))
        .count();
    assert_eq!(series, SPEND_LABEL_SETS_MAX + 1, "{text}");
    assert_eq!(
        sample(
            &text,
            r#"switchyard_spend_usd_total{tenant="_other",feature="_other"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_spend_usd_total{tenant="t7",feature="f"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn renders_breakers_and_latency() {
    use crate::health::CallOutcome;
    use crate::providers::FailureClass;
    let cfg = crate::config::FileConfig::from_toml_with_env(
        include_str!("../../../config/demo.toml"),
        "demo.toml",
        &[],
    )
    .unwrap();
    let h = Arc::new(Health::new(&cfg));
    let m = Metrics::new(&cfg);
    m.watch_health(h.clone());
    let fail = CallOutcome::Failed {
        class: FailureClass::ServerError,
        retry_after: None,
    };
    for _ in 0..5 {
        h.record("openai", "gpt-4o", fail, Duration::ZERO);
    }
    h.record(
        "gemini",
        "gemini-2.0-flash",
        CallOutcome::Succeeded,
        Duration::from_millis(250),
    );
    let text = m.render();
    for line in [
        r#"switchyard_breaker_state{provider="openai",model="gpt-4o"} 2"#,
        r#"switchyard_breaker_state{provider="openai",model="gpt-4o-mini"} 0"#,
        r#"switchyard_breaker_transitions_total{provider="openai",model="gpt-4o",state="open"} 1"#,
        r#"switchyard_breaker_transitions_total{provider="openai",model="gpt-4o",state="closed"} 0"#,
        r#"switchyard_provider_latency_ewma_seconds{provider="gemini",model="gemini-2.0-flash"} 0.25"#,
        // Every configured model's token counters exist from the start.
        r#"switchyard_tokens_total{provider="anthropic",model="claude-opus-4",kind="output"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert_eq!(
        text.matches("# TYPE switchyard_breaker_state gauge")
            .count(),
        1
    );
    assert!(text.contains("# TYPE switchyard_breaker_transitions_total counter"));
    tokio::time::advance(Duration::from_secs(15)).await;
    assert!(m
        .render()
        .contains(r#"switchyard_breaker_state{provider="openai",model="gpt-4o"} 1"#));
}

/// Collects what a subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The JSON lines `f` logs, as `SWITCHYARD_LOG_FORMAT=json` writes them.
fn json_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .fmt_fields(crate::telemetry::json::JsonFields)
        .event_format(crate::telemetry::json::JsonLines)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn one_json_line_per_finished_job_without_content_by_default() {
    let job: Job = serde_json::from_str(
        r#"{"id":"doc-1","tenant":"acme","messages":[{"role":"user","content":"my private prompt"}]}"#,
    )
    .unwrap();
    let r = result(Status::Failed, Some(ErrorKind::ProvidersExhausted));
    let m = Metrics::default();
    let lines = json_lines(|| m.job_finished(finished(&r, Some(&job))));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["target"], "switchyard::job");
    assert_eq!(line["level"], "INFO");
    let f = &line["fields"];
    for (key, want) in [
        ("message", serde_json::json!("job finished")),
        ("id", "doc-1".into()),
        ("tenant", "acme".into()),
        ("feature", "extract".into()),
        ("priority", "high".into()),
        ("provider", "openai".into()),
        ("model", "gpt-4o-mini".into()),
        ("attempts", 0.into()),
        ("deliveries", 1.into()),
        ("input_tokens", 812.into()),
        ("cached_input_tokens", 12.into()),
        ("output_tokens", 96.into()),
        ("cost_usd", "0.0001196".into()),
        ("latency_ms", 70.into()),
        ("queued_ms", 3.into()),
        ("cache", "miss".into()),
        ("outcome", "failed".into()),
        ("error_kind", "providers_exhausted".into()),
    ] {
        assert_eq!(f[key], want, "{key} in {line}");
    }
    let text = line.to_string();
    assert!(!text.contains("my private prompt"), "{text}");
    assert!(!text.contains("the secret answer"), "{text}");
    assert!(f.get("prompt").is_none() && f.get("output").is_none());
}

#[test]
fn log_content_puts_prompt_and_output_in_the_line() {
    let job: Job = serde_json::from_str(
        r#"{"id":"doc-1","tenant":"acme","messages":[{"role":"user","content":"my private prompt"}]}"#,
    )
    .unwrap();
    let r = result(Status::Succeeded, None);
    let m = Metrics::build(true);
    let lines = json_lines(|| m.job_finished(finished(&r, Some(&job))));
    assert_eq!(lines.len(), 1);
    let f = &lines[0]["fields"];
    assert!(
        f["prompt"].as_str().unwrap().contains("my private prompt"),
        "{f}"
    );
    assert_eq!(f["output"], "the secret answer");
    assert_eq!(f["error_kind"], "");
}

/// The provider-batch families render under the names deploy/check/metrics.txt lists
/// (counters with `_total`), with the values recorded.
#[test]
fn batch_families_render_under_their_exported_names() {
    use crate::telemetry::batch::BatchEnd;
    let m = Metrics::default();
    m.batch.parked("openai");
    m.batch.parked("openai");
    m.batch.submitted("openai");
    m.batch.ended("openai", BatchEnd::Expired, 12.0, 1, 1);
    m.batch.set_levels(2, 1, 30.5);
    let text = m.render();
    for (series, want) in [
        (
            r#"switchyard_batch_jobs_parked_total{provider="openai"}"#,
            2.0,
        ),
        (
            r#"switchyard_batches_submitted_total{provider="openai"}"#,
            1.0,
        ),
        (
            r#"switchyard_batches_ended_total{provider="openai",status="expired"}"#,
            1.0,
        ),
        (
            r#"switchyard_batch_jobs_total{provider="openai",result="answered"}"#,
            1.0,
        ),
        (
            r#"switchyard_batch_jobs_total{provider="openai",result="live"}"#,
            1.0,
        ),
        (
            r#"switchyard_batch_duration_seconds_count{provider="openai"}"#,
            1.0,
        ),
        ("switchyard_batch_parked_jobs", 2.0),
        ("switchyard_batches_open", 1.0),
        ("switchyard_oldest_open_batch_age_seconds", 30.5),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
}

/// The shadow-evaluation families render under the names deploy/check/metrics.txt lists
/// (counters with `_total`), with the values recorded.
#[test]
fn shadow_families_render_under_their_exported_names() {
    use super::shadow::EvalResult;
    let m = Metrics::default();
    m.shadow
        .evaluated("extract", "gpt-4o-mini", EvalResult::Agree, Some(0.93));
    m.shadow
        .evaluated("extract", "gpt-4o-mini", EvalResult::Disagree, None);
    m.shadow.dropped("extract", "busy");
    let text = m.render();
    for (series, want) in [
        (
            r#"switchyard_shadow_evals_total{route="extract",candidate="gpt-4o-mini",result="agree"}"#,
            1.0,
        ),
        (
            r#"switchyard_shadow_evals_total{route="extract",candidate="gpt-4o-mini",result="disagree"}"#,
            1.0,
        ),
        (
            r#"switchyard_shadow_similarity_count{route="extract",candidate="gpt-4o-mini"}"#,
            1.0,
        ),
        (
            r#"switchyard_shadow_dropped_total{route="extract",reason="busy"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
}
