#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The provider simulator in ordinary use by today's official Python SDKs (openai,
//! anthropic, google-genai): `scripts/lib/sdk_simulator_check.py` per provider — chat,
//! system prompt, JSON output, a tool round trip with the assistant turn sent back as the
//! SDK returned it, truncation, missing key, unknown model, malformed body, rate-limit
//! headers. Runs when `SWITCHYARD_SDK_PYTHON` names a Python that has the packages
//! (scripts/test.sh sets it); otherwise skipped, saying so.

mod common;

async fn run(provider: &str) {
    let Some((sim, out)) = common::run_sdk_script("sdk_simulator_check.py", &[provider]).await
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the {provider} SDK check failed:\n{text}"
    );
    assert!(text.contains("all passed"));
    // Every case reached the simulator: the SDK made its calls here, none elsewhere.
    let summary: serde_json::Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON summary line");
    assert!(summary["passed"].as_u64().unwrap() >= 12, "{summary}");
    assert!(sim.stats().total >= 12, "{}", sim.stats().total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_in_ordinary_use() {
    run("openai").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_in_ordinary_use() {
    run("anthropic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_google_genai_sdk_in_ordinary_use() {
    run("gemini").await;
}
