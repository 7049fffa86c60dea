#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::job::{FunctionDef, ImageUrl, JsonSchemaFormat, Tool};
use crate::providers::test_support::{msg, text};

fn fixture(name: &str) -> Vec<u8> {
    crate::providers::test_support::fixture("gemini", name)
}

fn weather_tool() -> Tool {
    Tool {
        kind: FunctionType::Function,
        function: FunctionDef {
            name: "get_weather".into(),
            description: Some("Current weather for a city".into()),
            parameters: Some(json!({"type": "object", "additionalProperties": false,
                "properties": {"city": {"type": "string"},
                    "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", null]}},
                "required": ["city"]})),
            strict: Some(true),
        },
    }
}

fn ping_tool() -> Tool {
    Tool {
        kind: FunctionType::Function,
        function: FunctionDef {
            name: "ping".into(),
            description: None,
            parameters: Some(json!({"type": "object", "properties": {}})),
            strict: None,
        },
    }
}

fn call(id: &str, name: &str, args: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        kind: FunctionType::Function,
        function: FunctionCall {
            name: name.into(),
            arguments: args.into(),
        },
    }
}

fn conversation() -> Vec<Message> {
    let mut assistant = msg(Role::Assistant, None);
    assistant.tool_calls = Some(vec![
        call("call_a", "get_weather", r#"{"city":"Paris"}"#),
        call("call_b", "ping", ""),
    ]);
    let mut weather = text(Role::Tool, r#"{"temp_c":21}"#);
    weather.tool_call_id = Some("call_a".into());
    let mut pong = text(Role::Tool, "pong");
    pong.tool_call_id = Some("call_b".into());
    vec![
        text(Role::System, "You are terse."),
        text(Role::System, "Answer in English."),
        msg(
            Role::User,
            Some(Content::Parts(vec![
                ContentPart::Text {
                    text: "What is in these pictures, and the weather in Paris?".into(),
                },
                ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: "data:image/png;base64,iVBORw0KGgo=".into(),
                        detail: None,
                    },
                },
                ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: "https://example.com/cat.webp".into(),
                        detail: None,
                    },
                },
            ])),
        ),
        assistant,
        weather,
        pong,
        text(Role::User, "Thanks. Summarise as JSON."),
    ]
}

#[test]
fn builds_a_multi_turn_tool_conversation() {
    let messages = conversation();
    let tools = [weather_tool(), ping_tool()];
    let stop = ["END".to_string()];
    let format = ResponseFormat::JsonSchema {
        json_schema: JsonSchemaFormat {
            name: "summary".into(),
            description: None,
            schema: Some(
                json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object", "properties": {"summary": {"type": "string"},
                    "temp_c": {"type": "number"}},
                "required": ["summary"], "additionalProperties": false}),
            ),
            strict: Some(true),
        },
    };
    let choice = json!({"type": "function", "function": {"name": "get_weather"}});
    let req = ChatRequest {
        model: "gemini-2.0-flash",
        messages: &messages,
        max_tokens: 512,
        temperature: Some(0.2),
        stop: Some(&stop),
        response_format: Some(&format),
        tools: Some(&tools),
        tool_choice: Some(&choice),
    };
    let body = build_body(&req).unwrap();
    let expected = json!({
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in these pictures, and the weather in Paris?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp"}}
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "ping", "args": {}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"content": {"temp_c": 21}}}},
                {"functionResponse": {"name": "ping", "response": {"content": "pong"}}},
                {"text": "Thanks. Summarise as JSON."}
            ]}
        ],
        "systemInstruction": {"parts": [{"text": "You are terse.\n\nAnswer in English."}]},
        "generationConfig": {
            "temperature": 0.2,
            "maxOutputTokens": 512,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT",
                "properties": {"summary": {"type": "STRING"}, "temp_c": {"type": "NUMBER"}},
                "required": ["summary"]}
        },
        "tools": [{"functionDeclarations": [
            {"name": "get_weather", "description": "Current weather for a city",
             "parameters": {"type": "OBJECT", "properties": {
                 "city": {"type": "STRING"},
                 "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"], "nullable": true}},
              "required": ["city"]}},
            {"name": "ping"}
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    });
    assert_eq!(body, expected);
}

#[test]
fn tool_choices_json_object_and_plain_requests() {
    let messages = vec![text(Role::User, "hi")];
    let tools = [ping_tool()];
    let mut req = ChatRequest {
        model: "m",
        messages: &messages,
        max_tokens: 16,
        temperature: None,
        stop: None,
        response_format: None,
        tools: None,
        tool_choice: None,
    };
    assert_eq!(
        build_body(&req).unwrap(),
        json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": 16}})
    );
    req.tools = Some(&tools);
    for (canonical, mode) in [
        (json!("auto"), "AUTO"),
        (json!("required"), "ANY"),
        (json!("none"), "NONE"),
    ] {
        let body = build_body(&ChatRequest {
            tool_choice: Some(&canonical),
            ..req
        })
        .unwrap();
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": mode}})
        );
    }
    let body = build_body(&ChatRequest {
        response_format: Some(&ResponseFormat::JsonObject),
        ..req
    })
    .unwrap();
    assert_eq!(
        body["generationConfig"],
        json!({"maxOutputTokens": 16, "responseMimeType": "application/json"})
    );
}

#[test]
fn a_tool_answer_needs_its_call() {
    let mut tool = text(Role::Tool, "42");
    tool.tool_call_id = Some("call_zzz".into());
    let messages = vec![text(Role::User, "hi"), tool];
    let req = ChatRequest {
        model: "m",
        messages: &messages,
        max_tokens: 16,
        temperature: None,
        stop: None,
        response_format: None,
        tools: None,
        tool_choice: None,
    };
    let e = build_body(&req).unwrap_err();
    assert_eq!(e.class, FailureClass::InvalidRequest);
    assert!(e.message.contains("call_zzz"), "{}", e.message);
}

#[test]
fn model_paths() {
    let p: ProviderConfig = toml::from_str(
        r#"name = "gemini"
kind = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta/"
api_key_env = "GEMINI_API_KEY""#,
    )
    .unwrap();
    let g = Gemini::new(&p, None, super::http::Pool::new(&p).unwrap(), 1 << 20);
    let want =
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent";
    assert_eq!(g.url("gemini-2.0-flash", false), want);
    assert_eq!(g.url("models/gemini-2.0-flash", false), want);
    assert_eq!(
        g.url("gemini-2.0-flash", true),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
}

#[test]
fn parses_a_text_answer() {
    let r = parse_success(200, &fixture("text.json")).unwrap();
    assert_eq!(
        r.output,
        Output {
            content: Some("Paris is the capital of France.".into()),
            tool_calls: vec![],
            finish_reason: "stop".into()
        }
    );
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 8,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 7,
            reasoning_tokens: 0
        }
    );
}

#[test]
fn parses_a_function_call() {
    let r = parse_success(200, &fixture("function_call.json")).unwrap();
    assert_eq!(r.output.finish_reason, "tool_calls");
    assert_eq!(r.output.content, None);
    let c = &r.output.tool_calls[0];
    assert!(c.id.starts_with("call_") && c.id.len() == 29, "{}", c.id);
    assert_eq!(c.function.name, "get_weather");
    assert_eq!(c.function.arguments, r#"{"city":"Paris","unit":"celsius"}"#);
    assert!(tools::check_tool_calls(&[weather_tool()], &r.output.tool_calls).is_ok());
}

#[test]
fn parses_thinking_max_tokens_and_cache_usage() {
    let r = parse_success(200, &fixture("max_tokens.json")).unwrap();
    assert_eq!(r.output.finish_reason, "length");
    assert_eq!(r.output.content, None);
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 12,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 63,
            reasoning_tokens: 63
        }
    );
    let r = parse_success(200, &fixture("cache_thinking.json")).unwrap();
    assert_eq!(
        r.output.content.as_deref(),
        Some("Liability is capped at twelve months of fees.")
    );
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 4242,
            cached_input_tokens: 4096,
            cache_write_tokens: 0,
            output_tokens: 11 + 347,
            reasoning_tokens: 347
        }
    );
}

#[test]
fn blocked_answers_are_content_filtered() {
    let e = parse_success(200, &fixture("safety.json")).unwrap_err();
    assert_eq!(e.class, FailureClass::ContentFiltered);
    // Billed all the same: the error carries the usage.
    assert!(e.usage.is_some_and(|u| u.input_tokens > 0), "{:?}", e.usage);
    let e = parse_success(200, &fixture("prompt_blocked.json")).unwrap_err();
    assert_eq!(e.class, FailureClass::ContentFiltered);
    assert!(e.message.contains("PROHIBITED_CONTENT"), "{}", e.message);
}

#[test]
fn rate_limit_with_retry_info() {
    let e = classify(429, &HeaderMap::new(), &fixture("error_429.json"));
    assert_eq!(e.class, FailureClass::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(26)));
    assert_eq!(
        retry_info(&[
            json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"})
        ]),
        Some(Duration::from_millis(1500))
    );
    let e = classify(
        429,
        &HeaderMap::new(),
        br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
    );
    assert_eq!(e.class, FailureClass::RateLimited);
    assert_eq!(e.retry_after, None);
}

#[test]
fn classifies_errors() {
    let h = HeaderMap::new();
    let cases = [
        (429, "error_quota_day.json", FailureClass::QuotaExhausted),
        (503, "error_503.json", FailureClass::Overloaded),
        (500, "error_500.json", FailureClass::ServerError),
        (504, "error_504.json", FailureClass::Timeout),
        (400, "error_context.json", FailureClass::ContextTooLong),
        (400, "error_key.json", FailureClass::Auth),
        (403, "error_403.json", FailureClass::Auth),
        (400, "error_400.json", FailureClass::InvalidRequest),
        (404, "error_404.json", FailureClass::InvalidRequest),
    ];
    for (status, file, class) in cases {
        let e = classify(status, &h, &fixture(file));
        assert_eq!(e.class, class, "{file}");
        assert_eq!(e.status, Some(status));
        assert!(
            !e.message.is_empty() && !e.message.starts_with('{'),
            "{file}: {}",
            e.message
        );
    }
    // The streaming endpoint's array-wrapped error.
    let e = classify(503, &h, br#"[{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}]"#);
    assert_eq!(e.class, FailureClass::Overloaded);
    assert_eq!(
        e.message,
        "The model is overloaded. Please try again later."
    );
}

#[test]
fn the_key_is_a_sensitive_header() {
    let v = secret_header(&SecretString::from("AIza-secret")).unwrap();
    assert!(v.is_sensitive());
    assert!(!format!("{v:?}").contains("secret"));
}

#[test]
fn unusable_answers_carry_their_billed_usage() {
    let usage = r#""usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 3,
        "thoughtsTokenCount": 5}"#;
    let want = Some(Usage {
        input_tokens: 40,
        output_tokens: 8,
        reasoning_tokens: 5,
        ..Usage::default()
    });
    for body in [
        format!(r#"{{"candidates": [{{"finishReason": "MALFORMED_FUNCTION_CALL"}}], {usage}}}"#),
        format!(r#"{{"candidates": [], {usage}}}"#),
        format!(r#"{{"candidates": "x", {usage}}}"#),
    ] {
        let e = parse_success(200, body.as_bytes()).unwrap_err();
        assert_eq!(e.usage, want, "{body}");
    }
}

#[test]
fn huge_token_counts_and_retry_delays_saturate() {
    let body = format!(
        r#"{{"candidates": [{{"content": {{"parts": [{{"text": "hi"}}]}}}}],
        "usageMetadata": {{"candidatesTokenCount": {m}, "thoughtsTokenCount": {m}}}}}"#,
        m = u64::MAX
    );
    let u = parse_success(200, body.as_bytes()).unwrap().usage;
    assert_eq!(u.output_tokens, u64::MAX);
    let body = br#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "99999999999999999999999s"}]}}"#;
    let e = classify(429, &HeaderMap::new(), body);
    assert_eq!(
        e.retry_after,
        Some(crate::providers::ratelimit_headers::MAX_WAIT)
    );
}
