//! HTTP-level tests of the Anthropic endpoint.

use serde_json::{json, Value};

use super::super::testutil::{start, Running};
use super::super::FaultProfile;

async fn send(
    r: &Running,
    key: Option<&str>,
    version: Option<&str>,
    body: String,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = r
        .client
        .post(r.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    if let Some(v) = version {
        req = req.header("anthropic-version", v);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(r: &Running, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    send(r, Some("sk-ant-test"), Some("2023-06-01"), body.to_string()).await
}

fn hello() -> Value {
    json!({"model": "claude-3-5-haiku", "max_tokens": 1024, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello to the team"}]})
}

fn assert_error(v: &Value, ty: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], ty, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(
        v["request_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("req_")),
        "{v}"
    );
}

#[tokio::test]
async fn happy_path_shape_usage_and_headers() {
    let r = start(FaultProfile::default()).await;
    let (s, h, v) = post(&r, &hello()).await;
    assert_eq!(s, 200, "{v}");
    let mut keys: Vec<&String> = v.as_object().expect("obj").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "content",
            "id",
            "model",
            "role",
            "stop_reason",
            "stop_sequence",
            "type",
            "usage"
        ]
    );
    assert!(v["id"].as_str().expect("id").starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-3-5-haiku");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(v["content"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["content"][0]["type"], "text");
    let text = v["content"][0]["text"].as_str().expect("text");
    // "Be brief." (9) + "Say hello to the team" (21) = 30 chars → 8, + 3 × 1 message.
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(
        v["usage"]["output_tokens"],
        text.split_whitespace().count() as u64
    );
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 0);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
    for name in [
        "request-id",
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ] {
        assert!(h.contains_key(name), "missing {name}");
    }
    let reset = h["anthropic-ratelimit-requests-reset"]
        .to_str()
        .expect("ascii");
    assert!(
        chrono::DateTime::parse_from_rfc3339(reset).is_ok(),
        "{reset}"
    );
    let (_, _, again) = post(&r, &hello()).await;
    assert_eq!(again["content"], v["content"]);
    assert_eq!(r.sim.stats().count("anthropic", "claude-3-5-haiku", 200), 2);
    r.shutdown.cancel();
}

#[tokio::test]
async fn header_and_body_errors() {
    let r = start(FaultProfile::default()).await;
    let (s, _, v) = send(&r, None, Some("2023-06-01"), hello().to_string()).await;
    assert_eq!(s, 401);
    assert_error(&v, "authentication_error");
    assert_eq!(v["error"]["message"], "x-api-key header is required");
    let (s, _, v) = send(&r, Some("k"), None, hello().to_string()).await;
    assert_eq!(s, 400);
    assert_error(&v, "invalid_request_error");
    let (s, _, v) = send(&r, Some("k"), Some("2023-06-01"), "nope".into()).await;
    assert_eq!(s, 400);
    assert_error(&v, "invalid_request_error");
    // What the current Python SDK sends: the key as a bearer token, a newer version.
    let resp = r
        .client
        .post(r.url("/v1/messages"))
        .header("authorization", "Bearer sk-ant-test")
        .header("anthropic-version", "2026-10-21")
        .header("content-type", "application/json")
        .body(hello().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for bad in ["2022-01-01", "latest", "2026-1-21"] {
        let (s, _, v) = send(&r, Some("k"), Some(bad), hello().to_string()).await;
        assert_eq!(s, 400, "{bad}");
        assert_error(&v, "invalid_request_error");
    }

    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": "c", "messages": user}),
            "max_tokens: Field required",
        ),
        (
            json!({"max_tokens": 5, "messages": user}),
            "model: Field required",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": []}),
            "messages: at least one message is required",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]}),
            "Unexpected role \"system\"",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]}),
            "first message must use the \"user\" role",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": user, "temperature": 1.5}),
            "temperature: Input should be less than or equal to 1",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": user, "stop": ["x"]}),
            "stop: Extra inputs are not permitted",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
            "messages.0.content.0: Input tag 'video'",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": user, "tool_choice": {"type": "tool", "name": "x"}, "tools": [{"name": "y", "input_schema": {"type": "object"}}]}),
            "Tool 'x' not found",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": user, "tools": [{"name": "y"}]}),
            "tools.0.custom.input_schema: Field required",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "y", "input": {}}]},
            {"role": "user", "content": "next"}]}),
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]}),
            "unexpected `tool_use_id`",
        ),
    ];
    for (body, needle) in cases {
        let (s, _, v) = post(&r, &body).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert_error(&v, "invalid_request_error");
        let msg = v["error"]["message"].as_str().expect("msg");
        assert!(msg.contains(needle), "{msg} should contain {needle}");
    }
    let (s, _, v) = post(
        &r,
        &json!({"model": "no-such-claude", "max_tokens": 5, "messages": user}),
    )
    .await;
    assert_eq!(s, 404);
    assert_error(&v, "not_found_error");
    assert_eq!(r.sim.stats().count("anthropic", "c", 400), 11);
    r.shutdown.cancel();
}

#[tokio::test]
async fn max_tokens_stop_sequences_and_tool_use() {
    let r = start(FaultProfile::default()).await;
    let mut body = hello();
    body["max_tokens"] = json!(3);
    let (_, _, v) = post(&r, &body).await;
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 3);
    let mut body = hello();
    body["stop_sequences"] = json!(["."]);
    let (_, _, v) = post(&r, &body).await;
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], ".");

    let tools = json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}]);
    let body = json!({"model": "c", "max_tokens": 200, "tools": tools,
        "messages": [{"role": "user", "content": "Please use get_weather for Paris"}]});
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().expect("id").starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert!(block["input"]["city"].is_string());
    assert!(block["input"].get("days").is_none());

    let forced = json!({"model": "c", "max_tokens": 200, "tools": tools, "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "hello"}]});
    assert_eq!(post(&r, &forced).await.2["stop_reason"], "tool_use");

    let follow = json!({"model": "c", "max_tokens": 200, "tools": tools, "messages": [
        {"role": "user", "content": "Please use get_weather for Paris"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]}]});
    let (s, _, v) = post(&r, &follow).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stop_reason"], "end_turn");
    r.shutdown.cancel();
}

#[tokio::test]
async fn cache_reads_are_excluded_from_input_tokens() {
    let r = start(FaultProfile::default()).await;
    let long = "word ".repeat(1000);
    let body = json!({"model": "c", "max_tokens": 50,
        "system": [{"type": "text", "text": long, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}]});
    let (_, _, v) = post(&r, &body).await;
    // 5000 + 2 chars → 1251 tokens, + 3 = 1254 in all; 512 read from the cache.
    assert_eq!(v["usage"]["cache_read_input_tokens"], 512);
    assert_eq!(v["usage"]["input_tokens"], 1254 - 512);
    r.shutdown.cancel();
}

#[tokio::test]
async fn injected_errors_have_anthropic_shapes() {
    let r = start(FaultProfile {
        error_rate: 1.0,
        error_status: 429,
        retry_after_s: Some(3),
        ..Default::default()
    })
    .await;
    let (s, h, v) = post(&r, &hello()).await;
    assert_eq!(s, 429);
    assert_error(&v, "rate_limit_error");
    assert_eq!(h["retry-after"], "3");
    assert_eq!(h["anthropic-ratelimit-requests-remaining"], "0");
    r.sim.set_profile(FaultProfile {
        error_rate: 1.0,
        error_status: 529,
        ..Default::default()
    });
    let (s, _, v) = post(&r, &hello()).await;
    assert_eq!(s, 529);
    assert_error(&v, "overloaded_error");
    assert_eq!(v["error"]["message"], "Overloaded");
    r.sim.set_profile(FaultProfile {
        error_rate: 1.0,
        ..Default::default()
    });
    let (s, _, v) = post(&r, &hello()).await;
    assert_eq!(s, 500);
    assert_error(&v, "api_error");
    r.sim.set_profile(FaultProfile {
        fail_first: 1,
        error_status: 529,
        ..Default::default()
    });
    assert_eq!(post(&r, &hello()).await.0, 529);
    assert_eq!(post(&r, &hello()).await.0, 200);
    r.shutdown.cancel();
}

/// The events of a streamed answer: (event name, data).
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn streaming_matches_the_plain_answer_and_breaks_on_demand() {
    let r = start(FaultProfile {
        stream_fail_first: 1,
        ..Default::default()
    })
    .await;
    let mut body = hello();
    body["stream"] = json!(true);
    // The first stream breaks after half its events with Anthropic's error event.
    let (s, h, v) = post(&r, &body).await;
    assert_eq!(s, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let broken = sse_events(v.as_str().unwrap());
    let (last, data) = broken.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(broken.iter().all(|(n, _)| n != "message_stop"));
    // The next one is whole, and says what the plain answer says.
    let (_, _, plain) = post(&r, &hello()).await;
    let (_, _, v) = post(&r, &body).await;
    let events = sse_events(v.as_str().unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
    for (n, d) in &events {
        assert_eq!(d["type"], n.as_str(), "the data's type is the event's name");
    }
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, plain["content"][0]["text"].as_str().unwrap());
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], plain["stop_reason"]);
    assert_eq!(
        delta["usage"]["output_tokens"],
        plain["usage"]["output_tokens"]
    );
    assert_eq!(
        events[0].1["message"]["usage"]["input_tokens"],
        plain["usage"]["input_tokens"]
    );
    // `stream` must be a boolean.
    body["stream"] = json!("yes");
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "stream: Input should be a valid boolean"
    );
    r.shutdown.cancel();
}

/// Structured outputs (`output_config.format`, what today's SDKs send, `messages.parse`
/// too): the text is JSON of the schema; a malformed config is a 400 naming the field.
#[tokio::test]
async fn output_config_format_answers_json_of_the_schema() {
    let r = start(FaultProfile::default()).await;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"},
        "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": false});
    let mut body = hello();
    body["output_config"] =
        json!({"effort": "low", "format": {"type": "json_schema", "schema": schema}});
    let (s, _, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stop_reason"], "end_turn");
    let out: Value =
        serde_json::from_str(v["content"][0]["text"].as_str().expect("text")).expect("JSON text");
    assert!(out["name"].is_string() && out["age"].is_i64(), "{out}");
    for (config, needle) in [
        (
            json!({"format": {"type": "json_object"}}),
            "output_config.format.type",
        ),
        (
            json!({"format": {"type": "json_schema"}}),
            "output_config.format.schema: Field required",
        ),
        (json!({"effort": "extreme"}), "output_config.effort"),
        (
            json!({"colour": "blue"}),
            "output_config.colour: Extra inputs",
        ),
    ] {
        let mut body = hello();
        body["output_config"] = config;
        let (s, _, v) = post(&r, &body).await;
        assert_eq!(s, 400, "{v}");
        assert_error(&v, "invalid_request_error");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.contains(needle), "{msg} should contain {needle}");
    }
    r.shutdown.cancel();
}
