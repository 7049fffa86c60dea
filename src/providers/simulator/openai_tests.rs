//! HTTP-level tests of the OpenAI endpoint.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::super::testutil::{start, Running};
use super::super::FaultProfile;

async fn post(r: &Running, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    post_path(r, "/v1/chat/completions", Some("sk-test"), body.to_string()).await
}

async fn post_path(
    r: &Running,
    path: &str,
    key: Option<&str>,
    body: String,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = r
        .client
        .post(r.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

fn hello() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello to the team"}
    ]})
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn happy_path_shape_usage_headers_and_determinism() {
    let r = start(FaultProfile::default()).await;
    let (status, headers, v) = post(&r, &hello()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        keys(&v),
        [
            "choices",
            "created",
            "id",
            "model",
            "object",
            "service_tier",
            "system_fingerprint",
            "usage"
        ]
    );
    assert!(v["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_i64().expect("created") > 1_700_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["system_fingerprint"], "fp_sim");
    let choice = &v["choices"][0];
    assert_eq!(
        keys(choice),
        ["finish_reason", "index", "logprobs", "message"]
    );
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    let content = choice["message"]["content"].as_str().expect("content");
    assert!(content.len() > 20);

    let u = &v["usage"];
    // "You are terse." (14) + "Say hello to the team" (21) = 35 chars → 9, + 3 × 2 messages.
    assert_eq!(u["prompt_tokens"], 15);
    assert_eq!(
        u["completion_tokens"],
        content.split_whitespace().count() as u64
    );
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    assert_eq!(
        u["prompt_tokens_details"],
        json!({"cached_tokens": 0, "audio_tokens": 0})
    );
    assert_eq!(
        u["completion_tokens_details"],
        json!({"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0})
    );

    for h in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-request-id",
        "openai-processing-ms",
    ] {
        assert!(headers.contains_key(h), "missing header {h}");
    }
    assert_eq!(headers["x-ratelimit-limit-requests"], "10000");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "9999");

    // Same request → same text; the path without /v1 works too.
    let (status, _, again) =
        post_path(&r, "/chat/completions", Some("sk-x"), hello().to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        again["choices"][0]["message"]["content"],
        choice["message"]["content"]
    );
    assert_ne!(again["id"], v["id"]);
    assert_eq!(r.sim.stats().count("openai", "gpt-4o-mini", 200), 2);
    r.shutdown.cancel();
}

#[tokio::test]
async fn auth_errors() {
    let r = start(FaultProfile::default()).await;
    let (status, _, v) = post_path(&r, "/v1/chat/completions", None, hello().to_string()).await;
    assert_eq!(status, 401);
    assert_eq!(keys(&v["error"]), ["code", "message", "param", "type"]);
    assert!(v["error"]["message"]
        .as_str()
        .expect("msg")
        .starts_with("You didn't provide an API key"));
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], Value::Null);
    let (status, _, v) =
        post_path(&r, "/v1/chat/completions", Some("abc"), hello().to_string()).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(!v.to_string().contains("abc"), "the key must not be echoed");
    assert_eq!(r.sim.stats().count("openai", "gpt-4o-mini", 401), 2);

    r.sim.set_profile(FaultProfile {
        no_auth: true,
        ..Default::default()
    });
    let (status, _, _) = post_path(
        &r,
        "/v1/chat/completions",
        Some("EMPTY"),
        hello().to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post_path(&r, "/v1/chat/completions", None, hello().to_string()).await;
    assert_eq!(status, 200);
    r.shutdown.cancel();
}

#[tokio::test]
async fn validation_errors_have_the_real_shape() {
    let r = start(FaultProfile {
        unknown_models: vec!["gpt-9".into()],
        ..Default::default()
    })
    .await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Value, u16, Option<&str>, Option<&str>)> = vec![
        (json!({"messages": user}), 400, Some("model"), None),
        (
            json!({"model": "m"}),
            400,
            Some("messages"),
            Some("missing_required_parameter"),
        ),
        (
            json!({"model": "m", "messages": []}),
            400,
            Some("messages"),
            Some("empty_array"),
        ),
        (
            json!({"model": "m", "messages": [{"role": "bot", "content": "x"}]}),
            400,
            Some("messages[0].role"),
            Some("invalid_value"),
        ),
        (
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            400,
            Some("messages[0].tool_call_id"),
            Some("missing_required_parameter"),
        ),
        (
            json!({"model": "m", "messages": user, "max_tokens": 5, "max_completion_tokens": 5}),
            400,
            Some("max_tokens"),
            Some("invalid_request"),
        ),
        (
            json!({"model": "m", "messages": user, "temperature": 2.5}),
            400,
            Some("temperature"),
            Some("decimal_above_max_value"),
        ),
        (
            json!({"model": "m", "messages": user, "temperature": -1}),
            400,
            Some("temperature"),
            Some("decimal_below_min_value"),
        ),
        (
            json!({"model": "m", "messages": user, "stop": ["a", "b", "c", "d", "e"]}),
            400,
            Some("stop"),
            Some("array_above_max_length"),
        ),
        (
            json!({"model": "m", "messages": user, "response_format": {"type": "xml"}}),
            400,
            Some("response_format.type"),
            Some("invalid_value"),
        ),
        (
            json!({"model": "m", "messages": user, "top_k": 3}),
            400,
            None,
            None,
        ),
        (
            json!({"model": "m", "messages": user, "response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "strict": true, "schema": {"type": "object", "properties": {}}}}}),
            400,
            Some("response_format"),
            None,
        ),
        (
            json!({"model": "m", "messages": user, "max_tokens": 0}),
            400,
            Some("max_tokens"),
            Some("integer_below_min_value"),
        ),
        (
            json!({"model": "no-such-model", "messages": user}),
            404,
            None,
            Some("model_not_found"),
        ),
        (
            json!({"model": "gpt-9", "messages": user}),
            404,
            None,
            Some("model_not_found"),
        ),
    ];
    for (body, status, param, code) in cases {
        let (s, headers, v) = post(&r, &body).await;
        assert_eq!(s, status, "{body} → {v}");
        assert_eq!(
            keys(&v["error"]),
            ["code", "message", "param", "type"],
            "{v}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{body} → {v}");
        assert_eq!(v["error"]["code"].as_str(), code, "{body} → {v}");
        assert!(headers.contains_key("x-ratelimit-limit-requests"));
    }
    let (_, _, v) = post(&r, &json!({"model": "no-such-model", "messages": user})).await;
    assert_eq!(
        v["error"]["message"],
        "The model `no-such-model` does not exist or you do not have access to it."
    );
    let (s, _, v) = post_path(&r, "/v1/chat/completions", Some("sk-a"), "{nope".into()).await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"]
        .as_str()
        .expect("m")
        .starts_with("We could not parse the JSON body"));
    let stats = r.sim.stats();
    assert_eq!(stats.count("openai", "m", 400), 12);
    assert_eq!(stats.count("openai", "-", 400), 2);
    assert_eq!(stats.count("openai", "no-such-model", 404), 2);
    r.shutdown.cancel();
}

#[tokio::test]
async fn max_tokens_cuts_with_length_and_stop_sequences_stop() {
    let r = start(FaultProfile::default()).await;
    let mut body = hello();
    body["max_completion_tokens"] = json!(5);
    let (_, _, v) = post(&r, &body).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let content = v["choices"][0]["message"]["content"].as_str().expect("c");
    assert_eq!(content.split_whitespace().count(), 5);

    let mut body = hello();
    body["stop"] = json!(".");
    body["max_tokens"] = json!(1000);
    let (_, _, v) = post(&r, &body).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let content = v["choices"][0]["message"]["content"].as_str().expect("c");
    assert!(!content.contains('.'));
    assert_eq!(
        v["usage"]["completion_tokens"],
        content.split_whitespace().count() as u64
    );
    r.shutdown.cancel();
}

#[tokio::test]
async fn json_modes_return_parseable_json() {
    let r = start(FaultProfile::default()).await;
    let body = json!({"model": "m", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "Answer in JSON please"}]});
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().expect("c");
    let parsed: Value = serde_json::from_str(content).expect("valid JSON");
    assert!(parsed.is_object());
    assert_eq!(
        v["usage"]["completion_tokens"],
        (content.chars().count() as u64).div_ceil(4)
    );

    let no_json_word = json!({"model": "m", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, v) = post(&r, &no_json_word).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "messages");

    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {"title": {"type": "string"}, "pages": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"type": "string", "enum": ["memo", "letter"]}},
        "required": ["title", "pages", "tags", "kind"]});
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Extract"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "doc", "strict": true, "schema": schema}}});
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    let parsed: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().expect("c"))
            .expect("json");
    assert!(parsed["title"].is_string());
    assert!(parsed["pages"].is_i64());
    assert!(parsed["tags"].is_array());
    assert!(parsed["kind"] == "memo" || parsed["kind"] == "letter");
    assert_eq!(parsed.as_object().map(|o| o.len()), Some(4));
    r.shutdown.cancel();
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]}, "days": {"type": "integer"}},
            "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}])
}

#[tokio::test]
async fn tool_calls_when_mentioned_or_forced() {
    let r = start(FaultProfile::default()).await;
    let body = json!({"model": "m", "tools": weather_tools(),
        "messages": [{"role": "user", "content": "Use get_weather for Paris"}]});
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().expect("id").starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(
        calls[0]["function"]["arguments"]
            .as_str()
            .expect("string args"),
    )
    .expect("json");
    assert!(args["city"].is_string());
    assert!(args["unit"] == "c" || args["unit"] == "f");
    assert!(args.get("days").is_none());
    assert!(v["usage"]["completion_tokens"].as_u64().expect("n") > 0);

    // Forced by name, even without a mention.
    let forced = json!({"model": "m", "tools": weather_tools(),
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "messages": [{"role": "user", "content": "hello"}]});
    let (_, _, v) = post(&r, &forced).await;
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    let mut required = forced.clone();
    required["tool_choice"] = json!("required");
    let (_, _, v) = post(&r, &required).await;
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let mut none = body.clone();
    none["tool_choice"] = json!("none");
    let (_, _, v) = post(&r, &none).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // After the tool result, the model answers with text.
    let follow = json!({"model": "m", "tools": weather_tools(), "messages": [
        {"role": "user", "content": "Use get_weather for Paris"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"c\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}]});
    let (s, _, v) = post(&r, &follow).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["content"].is_string());
    r.shutdown.cancel();
}

#[tokio::test]
async fn injected_429_and_500_have_headers_and_bodies() {
    let r = start(FaultProfile {
        error_rate: 1.0,
        error_status: 429,
        retry_after_s: Some(7),
        ..Default::default()
    })
    .await;
    let (s, headers, v) = post(&r, &hello()).await;
    assert_eq!(s, 429);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-reset-requests"], "7s");
    assert!(headers.contains_key("x-ratelimit-limit-tokens"));
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["param"], Value::Null);
    let msg = v["error"]["message"].as_str().expect("m");
    assert!(
        msg.starts_with("Rate limit reached for gpt-4o-mini"),
        "{msg}"
    );
    assert!(
        msg.contains("on requests per min (RPM): Limit 10000"),
        "{msg}"
    );

    r.sim.set_profile(FaultProfile {
        error_rate: 1.0,
        ..Default::default()
    });
    let (s, _, v) = post(&r, &hello()).await;
    assert_eq!(s, 500);
    assert_eq!(
        v,
        json!({"error": {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error", "param": null, "code": null}})
    );
    r.sim.set_profile(FaultProfile {
        error_rate: 1.0,
        error_status: 529,
        ..Default::default()
    });
    let (s, _, v) = post(&r, &hello()).await;
    assert_eq!(s, 503);
    assert_eq!(v["error"]["type"], "server_error");
    r.shutdown.cancel();
}

#[tokio::test]
async fn fail_first_is_deterministic_per_model_and_counted() {
    let mut per_model = HashMap::new();
    per_model.insert(
        "flaky".to_owned(),
        FaultProfile {
            fail_first: 2,
            error_status: 503,
            ..Default::default()
        },
    );
    let r = start(FaultProfile {
        per_model,
        ..Default::default()
    })
    .await;
    let body = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(&r, &body("flaky")).await.0);
    }
    assert_eq!(statuses, vec![503, 503, 200, 200]);
    assert_eq!(post(&r, &body("steady")).await.0, 200);
    let s = r.sim.stats();
    assert_eq!(s.count("openai", "flaky", 503), 2);
    assert_eq!(s.count("openai", "flaky", 200), 2);
    assert_eq!(s.calls("openai", "flaky"), 4);
    assert_eq!(s.calls("openai", "steady"), 1);
    assert_eq!(s.total, 5);
    r.shutdown.cancel();
}

#[tokio::test]
async fn rpm_limit_gives_real_429() {
    let r = start(FaultProfile {
        rpm: Some(2),
        ..Default::default()
    })
    .await;
    assert_eq!(post(&r, &hello()).await.0, 200);
    let (s, h, _) = post(&r, &hello()).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    let (s, h, v) = post(&r, &hello()).await;
    assert_eq!(s, 429);
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=60).contains(&retry));
    assert!(v["error"]["message"]
        .as_str()
        .expect("m")
        .contains("Limit 2, Used 2, Requested 1"));
    r.shutdown.cancel();
}

#[tokio::test]
async fn long_prompts_report_cached_tokens() {
    let r = start(FaultProfile::default()).await;
    let long = "word ".repeat(1000); // 5000 chars → 1250 tokens + 3
    let body = json!({"model": "m", "messages": [{"role": "user", "content": long}]});
    let (_, _, v) = post(&r, &body).await;
    assert_eq!(v["usage"]["prompt_tokens"], 1253);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 512);
    r.shutdown.cancel();
}

#[tokio::test]
async fn streaming_matches_the_plain_answer() {
    let r = start(FaultProfile::default()).await;
    let (_, _, plain) = post(&r, &hello()).await;
    let mut body = hello();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = r
        .client
        .post(r.url("/v1/chat/completions"))
        .bearer_auth("sk-t")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/event-stream"));
    let text = resp.text().await.expect("body");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let mut content = String::new();
    let mut usage = Value::Null;
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
    {
        let chunk: Value = serde_json::from_str(line).expect("chunk json");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    assert_eq!(
        content,
        plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("c")
    );
    assert_eq!(usage, plain["usage"]);
    r.shutdown.cancel();
}

#[tokio::test]
async fn reasoning_models_are_strict_and_report_reasoning_tokens() {
    let r = start(FaultProfile::default()).await;
    let body = json!({"model": "o3-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "unsupported_parameter");
    let body = json!({"model": "o3-mini", "max_completion_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    let reasoning = v["usage"]["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .expect("r");
    assert!(reasoning > 0);
    let words = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("c")
        .split_whitespace()
        .count() as u64;
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64(),
        Some(words + reasoning)
    );
    r.shutdown.cancel();
}
