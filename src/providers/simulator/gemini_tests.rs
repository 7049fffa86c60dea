//! HTTP-level tests of the Gemini endpoint.

use serde_json::{json, Value};

use super::super::testutil::{start, Running};
use super::super::FaultProfile;

async fn send(r: &Running, path: &str, key: Option<&str>, body: String) -> (u16, Value) {
    let mut req = r
        .client
        .post(r.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.header("x-goog-api-key", k);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const FLASH: &str = "/v1beta/models/gemini-2.0-flash:generateContent";

async fn post(r: &Running, body: &Value) -> (u16, Value) {
    send(r, FLASH, Some("AIza-test"), body.to_string()).await
}

fn hello() -> Value {
    json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello to the team"}]}]})
}

fn assert_google_error(v: &Value, code: u16, status: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["status"], status, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[tokio::test]
async fn happy_path_shape_and_usage() {
    let r = start(FaultProfile::default()).await;
    let (s, v) = post(&r, &hello()).await;
    assert_eq!(s, 200, "{v}");
    let cand = &v["candidates"][0];
    assert_eq!(cand["content"]["role"], "model");
    assert_eq!(cand["finishReason"], "STOP");
    assert_eq!(cand["index"], 0);
    let text = cand["content"]["parts"][0]["text"].as_str().expect("text");
    let u = &v["usageMetadata"];
    // 9 + 21 = 30 chars → 8, + 3 × 1 content.
    assert_eq!(u["promptTokenCount"], 11);
    assert_eq!(
        u["candidatesTokenCount"],
        text.split_whitespace().count() as u64
    );
    assert_eq!(
        u["totalTokenCount"].as_u64(),
        Some(11 + text.split_whitespace().count() as u64)
    );
    assert!(u.get("cachedContentTokenCount").is_none());
    assert!(u.get("thoughtsTokenCount").is_none());
    assert_eq!(v["modelVersion"], "gemini-2.0-flash");
    assert!(v["responseId"].is_string());
    // The key may also come as ?key=, and /v1 works too.
    let (s, again) = send(
        &r,
        "/v1/models/gemini-2.0-flash:generateContent?key=AIza",
        None,
        hello().to_string(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(again["candidates"][0]["content"], cand["content"]);
    assert_eq!(r.sim.stats().count("gemini", "gemini-2.0-flash", 200), 2);
    r.shutdown.cancel();
}

#[tokio::test]
async fn validation_errors() {
    let r = start(FaultProfile::default()).await;
    let (s, v) = send(&r, FLASH, None, hello().to_string()).await;
    assert_eq!(s, 403);
    assert_google_error(&v, 403, "PERMISSION_DENIED");
    let (s, v) = send(&r, FLASH, Some("k"), "{nope".into()).await;
    assert_eq!(s, 400);
    assert_google_error(&v, 400, "INVALID_ARGUMENT");
    let text = json!([{"parts": [{"text": "hi"}]}]);
    let cases = [
        (json!({"contents": []}), "contents is not specified"),
        (
            json!({"contents": text, "foo": 1}),
            "Unknown name \"foo\": Cannot find field.",
        ),
        (
            json!({"contents": text, "generationConfig": {"topK": 3, "max_tokens": 5}}),
            "Unknown name \"max_tokens\" at 'generation_config'",
        ),
        (
            json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}),
            "Please use a valid role: user, model.",
        ),
        (
            json!({"contents": [{"role": "user", "parts": []}]}),
            "contents.parts must not be empty",
        ),
        (
            json!({"contents": text, "generationConfig": {"temperature": 2.5}}),
            "temperature value of 2.5",
        ),
        (
            // Proto JSON takes a number or a numeric string, not a word.
            json!({"contents": text, "generationConfig": {"temperature": "hot", "topK": "3"}}),
            "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
        ),
        (
            json!({"contents": text, "generationConfig": {"stopSequences": ["a", "b", "c", "d", "e", "f"]}}),
            "maximum allowed is 5",
        ),
        (
            json!({"contents": text, "generationConfig": {"responseMimeType": "text/csv"}}),
            "allowed mimetypes",
        ),
        (
            json!({"contents": text, "generationConfig": {"responseMimeType": "application/json",
            "responseSchema": {"type": "object", "additionalProperties": false}}}),
            "Unknown name \"additionalProperties\" at 'generation_config.response_schema'",
        ),
        (
            json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
            "function response turn comes immediately after a function call turn",
        ),
    ];
    for (body, needle) in cases {
        let (s, v) = post(&r, &body).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert_google_error(&v, 400, "INVALID_ARGUMENT");
        let msg = v["error"]["message"].as_str().expect("msg");
        assert!(msg.contains(needle), "{msg} should contain {needle}");
    }
    let (s, v) = send(
        &r,
        "/v1beta/models/no-such-gemini:generateContent",
        Some("k"),
        hello().to_string(),
    )
    .await;
    assert_eq!(s, 404);
    assert_google_error(&v, 404, "NOT_FOUND");
    assert_eq!(r.sim.stats().count("gemini", "gemini-2.0-flash", 400), 12);
    r.shutdown.cancel();
}

#[tokio::test]
async fn json_schema_function_calls_and_thinking() {
    let r = start(FaultProfile::default()).await;
    let body = json!({"contents": [{"parts": [{"text": "Extract"}]}], "generationConfig": {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"title": {"type": "STRING"}, "n": {"type": "INTEGER"}},
            "required": ["title", "n"]}}});
    let (s, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    let parsed: Value = serde_json::from_str(
        v["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .expect("t"),
    )
    .expect("json");
    assert!(parsed["title"].is_string());
    assert!(parsed["n"].is_i64());

    let tools = json!([{"functionDeclarations": [{"name": "get_weather", "description": "w",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}]);
    let body = json!({"tools": tools, "contents": [{"role": "user", "parts": [{"text": "call get_weather for Paris"}]}]});
    let (s, v) = post(&r, &body).await;
    assert_eq!(s, 200, "{v}");
    let call = &v["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "get_weather");
    assert!(call["args"]["city"].is_string());
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");

    let follow = json!({"tools": tools, "contents": [
        {"role": "user", "parts": [{"text": "call get_weather for Paris"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 18}}}]}]});
    let (s, v) = post(&r, &follow).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());

    // Thinking models report thoughts, which count against maxOutputTokens.
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let (s, v) = send(&r, path, Some("k"), hello().to_string()).await;
    assert_eq!(s, 200);
    let u = &v["usageMetadata"];
    let thoughts = u["thoughtsTokenCount"].as_u64().expect("thoughts");
    assert!(thoughts > 0);
    assert_eq!(
        u["totalTokenCount"].as_u64(),
        Some(11 + thoughts + u["candidatesTokenCount"].as_u64().expect("c"))
    );
    let mut small = hello();
    small["generationConfig"] = json!({"maxOutputTokens": 10});
    let (_, v) = send(&r, path, Some("k"), small.to_string()).await;
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert!(v["candidates"][0]["content"].get("parts").is_none());
    r.shutdown.cancel();
}

#[tokio::test]
async fn injected_429_has_retry_info_and_503_is_overloaded() {
    let r = start(FaultProfile {
        error_rate: 1.0,
        error_status: 429,
        retry_after_s: Some(7),
        ..Default::default()
    })
    .await;
    let (s, v) = post(&r, &hello()).await;
    assert_eq!(s, 429);
    assert_google_error(&v, 429, "RESOURCE_EXHAUSTED");
    let details = v["error"]["details"].as_array().expect("details");
    let retry = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .expect("RetryInfo");
    assert_eq!(retry["retryDelay"], "7s");
    r.sim.set_profile(FaultProfile {
        error_rate: 1.0,
        error_status: 529,
        ..Default::default()
    });
    let (s, v) = post(&r, &hello()).await;
    assert_eq!(s, 503);
    assert_google_error(&v, 503, "UNAVAILABLE");
    assert_eq!(
        v["error"]["message"],
        "The model is overloaded. Please try again later."
    );
    r.shutdown.cancel();
}

#[tokio::test]
async fn sse_streams_come_in_chunks_with_usage_and_break_on_demand() {
    let r = start(FaultProfile {
        stream_fail_first: 1,
        ..Default::default()
    })
    .await;
    let path = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse";
    let chunks = |text: &str| -> Vec<Value> {
        text.split("\r\n\r\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    };
    // The first stream breaks with Gemini's error chunk.
    let (s, v) = send(&r, path, Some("AIza-test"), hello().to_string()).await;
    assert_eq!(s, 200);
    let broken = chunks(v.as_str().unwrap());
    assert_google_error(&broken.last().unwrap().clone(), 503, "UNAVAILABLE");
    // The next one: text in pieces, usage in each, the finish reason and whole usage last.
    let (_, plain) = post(&r, &hello()).await;
    let (_, v) = send(&r, path, Some("AIza-test"), hello().to_string()).await;
    let all = chunks(v.as_str().unwrap());
    assert!(all.len() > 2, "{} chunks", all.len());
    assert!(all
        .iter()
        .all(|c| c["usageMetadata"]["promptTokenCount"]
            == plain["usageMetadata"]["promptTokenCount"]));
    let text: String = all
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(
        text,
        plain["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
    );
    let last = all.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"], plain["usageMetadata"]);
    assert!(all[..all.len() - 1]
        .iter()
        .all(|c| c["candidates"][0].get("finishReason").is_none()));
    r.shutdown.cancel();
}
