#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::job::{FunctionDef, ImageUrl, JsonSchemaFormat, Tool};
use crate::providers::test_support::{msg, text};

fn fixture(name: &str) -> Vec<u8> {
    crate::providers::test_support::fixture("anthropic", name)
}

fn weather_tool() -> Tool {
    Tool {
        kind: FunctionType::Function,
        function: FunctionDef {
            name: "get_weather".into(),
            description: Some("Current weather for a city".into()),
            parameters: Some(json!({"type": "object",
                "properties": {"city": {"type": "string"}}, "required": ["city"]})),
            strict: None,
        },
    }
}

fn ping_tool() -> Tool {
    Tool {
        kind: FunctionType::Function,
        function: FunctionDef {
            name: "ping".into(),
            description: None,
            parameters: None,
            strict: None,
        },
    }
}

fn conversation() -> Vec<Message> {
    let mut assistant = text(Role::Assistant, "Let me check.");
    assistant.tool_calls = Some(vec![ToolCall {
        id: "toolu_01A".into(),
        kind: FunctionType::Function,
        function: FunctionCall {
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        },
    }]);
    let mut tool = text(Role::Tool, r#"{"temp_c":21}"#);
    tool.tool_call_id = Some("toolu_01A".into());
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
                        detail: Some("low".into()),
                    },
                },
                ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: "https://example.com/cat.jpg".into(),
                        detail: None,
                    },
                },
            ])),
        ),
        assistant,
        tool,
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
                json!({"type": "object", "properties": {"summary": {"type": "string"}},
                "required": ["summary"], "additionalProperties": false}),
            ),
            strict: Some(true),
        },
    };
    let choice = json!({"type": "function", "function": {"name": "get_weather"}});
    let req = ChatRequest {
        model: "claude-sonnet-4-20250514",
        messages: &messages,
        max_tokens: 512,
        temperature: Some(1.4),
        stop: Some(&stop),
        response_format: Some(&format),
        tools: Some(&tools),
        tool_choice: Some(&choice),
    };
    let body = build_body(&req).unwrap();
    let expected = json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 512,
        "system": "You are terse.\n\nAnswer in English.\n\nRespond with a single JSON object only: no prose before or after it, no Markdown code fences. It must conform to this JSON schema:\n{\"type\":\"object\",\"properties\":{\"summary\":{\"type\":\"string\"}},\"required\":[\"summary\"],\"additionalProperties\":false}",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these pictures, and the weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "{\"temp_c\":21}"},
                {"type": "text", "text": "Thanks. Summarise as JSON."}
            ]}
        ],
        "temperature": 1.0,
        "stop_sequences": ["END"],
        "tools": [
            {"name": "get_weather", "description": "Current weather for a city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "ping", "input_schema": {"type": "object", "properties": {}}}
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"}
    });
    assert_eq!(body, expected);
}

#[test]
fn tool_choices_and_plain_requests() {
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
        json!({"model": "m", "max_tokens": 16,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    );
    req.tools = Some(&tools);
    for (canonical, wire) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("required"), json!({"type": "any"})),
        (json!("none"), json!({"type": "none"})),
    ] {
        let body = build_body(&ChatRequest {
            tool_choice: Some(&canonical),
            ..req
        })
        .unwrap();
        assert_eq!(body["tool_choice"], wire);
    }
    // A tool choice without tools is not sent.
    let auto = json!("auto");
    let body = build_body(&ChatRequest {
        tools: None,
        tool_choice: Some(&auto),
        ..req
    })
    .unwrap();
    assert!(body.get("tool_choice").is_none());
    // json_object: only the instruction.
    let body = build_body(&ChatRequest {
        response_format: Some(&ResponseFormat::JsonObject),
        ..req
    })
    .unwrap();
    assert_eq!(body["system"], JSON_INSTRUCTION);
}

#[test]
fn refuses_what_anthropic_cannot_take() {
    let messages = vec![msg(
        Role::User,
        Some(Content::Parts(vec![ContentPart::ImageUrl {
            image_url: ImageUrl {
                url: "ftp://example.com/a.png".into(),
                detail: None,
            },
        }])),
    )];
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
    assert!(
        e.message.contains("messages[0].content[0]"),
        "{}",
        e.message
    );
}

#[test]
fn parses_a_text_answer() {
    let r = parse_success(200, &fixture("text.json"), false).unwrap();
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
            input_tokens: 21,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 10,
            reasoning_tokens: 0
        }
    );
}

#[test]
fn parses_a_tool_call() {
    let r = parse_success(200, &fixture("tool_use.json"), false).unwrap();
    assert_eq!(r.output.finish_reason, "tool_calls");
    assert_eq!(
        r.output.content.as_deref(),
        Some("I'll check the current weather in Paris for you.")
    );
    assert_eq!(
        r.output.tool_calls,
        vec![ToolCall {
            id: "toolu_01A09q90qw90lq917835lq9".into(),
            kind: FunctionType::Function,
            function: FunctionCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris","unit":"celsius"}"#.into()
            }
        }]
    );
    assert!(tools::check_tool_calls(&[weather_tool()], &r.output.tool_calls).is_ok());
}

#[test]
fn parses_a_max_tokens_stop_and_cache_usage() {
    let r = parse_success(200, &fixture("max_tokens.json"), false).unwrap();
    assert_eq!(r.output.finish_reason, "length");
    let r = parse_success(200, &fixture("cache_usage.json"), false).unwrap();
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 12 + 2048 + 248,
            cached_input_tokens: 2048,
            cache_write_tokens: 248,
            output_tokens: 57,
            reasoning_tokens: 0
        }
    );
}

#[test]
fn refusal_without_content_is_content_filtered() {
    let e = parse_success(200, &fixture("refusal.json"), false).unwrap_err();
    assert_eq!(e.class, FailureClass::ContentFiltered);
    // Billed all the same: the error carries the usage.
    let u = e.usage.unwrap();
    assert!(u.input_tokens > 0 && u.output_tokens > 0, "{u:?}");
}

#[test]
fn unusable_answers_carry_their_billed_usage() {
    // A tool call that fails validation (`city` is required).
    let body = json!({"content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
        "input": {}}], "stop_reason": "tool_use",
        "usage": {"input_tokens": 30, "output_tokens": 7, "cache_creation_input_tokens": 5}});
    let tools = [weather_tool()];
    let req = crate::providers::test_support::request_with_tools(&tools);
    let read = |body: Value| {
        read_answer(
            &req,
            200,
            &HeaderMap::new(),
            &serde_json::to_vec(&body).unwrap(),
        )
        .unwrap_err()
    };
    let e = read(body);
    assert_eq!(e.class, FailureClass::ServerError);
    let want = Usage {
        input_tokens: 35,
        cached_input_tokens: 0,
        cache_write_tokens: 5,
        output_tokens: 7,
        reasoning_tokens: 0,
    };
    assert_eq!(e.usage, Some(want));
    // A body whose content is unreadable but whose usage is not.
    let e = read(
        json!({"content": "not blocks", "usage": {"input_tokens": 30,
        "output_tokens": 7, "cache_creation_input_tokens": 5}}),
    );
    assert_eq!((e.class, e.usage), (FailureClass::ServerError, Some(want)));
    // An error status bills nothing.
    let e = read_answer(&req, 500, &HeaderMap::new(), &fixture("error_500.json")).unwrap_err();
    assert_eq!(e.usage, None);
}

#[test]
fn huge_token_counts_saturate() {
    let body = format!(
        r#"{{"content": [], "usage": {{"input_tokens": {m}, "output_tokens": {m},
        "cache_creation_input_tokens": {m}, "cache_read_input_tokens": {m}}}}}"#,
        m = u64::MAX
    );
    let u = parse_success(200, body.as_bytes(), false).unwrap().usage;
    assert_eq!(u.input_tokens, u64::MAX);
    assert_eq!(u.cached_input_tokens, u64::MAX);
    assert_eq!(u.cache_write_tokens, 0);
}

#[test]
fn json_answers_lose_code_fences() {
    let body = json!({"content": [{"type": "text", "text": "```json\n{\"a\": 1}\n```"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let r = parse_success(200, &bytes, true).unwrap();
    assert_eq!(r.output.content.as_deref(), Some("{\"a\": 1}"));
    let r = parse_success(200, &bytes, false).unwrap();
    assert!(r.output.content.unwrap().starts_with("```"));
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn rate_limit_with_retry_after() {
    let h = headers(&[("retry-after", "17".into())]);
    let e = classify(429, &h, &fixture("error_429.json"));
    assert_eq!(e.class, FailureClass::RateLimited);
    assert_eq!(e.status, Some(429));
    assert_eq!(e.retry_after, Some(Duration::from_secs(17)));
    assert!(e.message.contains("rate limit"), "{}", e.message);
}

#[test]
fn rate_limit_from_reset_headers() {
    let at = |s: i64| {
        (chrono::Utc::now() + chrono::Duration::seconds(s))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let h = headers(&[
        ("anthropic-ratelimit-requests-remaining", "0".into()),
        ("anthropic-ratelimit-requests-reset", at(20)),
        ("anthropic-ratelimit-input-tokens-remaining", "0".into()),
        ("anthropic-ratelimit-input-tokens-reset", at(40)),
        // Not exhausted: its reset does not count.
        ("anthropic-ratelimit-output-tokens-remaining", "900".into()),
        ("anthropic-ratelimit-output-tokens-reset", at(600)),
    ]);
    let e = classify(429, &h, &fixture("error_429.json"));
    assert_eq!(e.class, FailureClass::RateLimited);
    let d = e.retry_after.unwrap();
    assert!(
        d > Duration::from_secs(38) && d <= Duration::from_secs(40),
        "{d:?}"
    );
    // Nothing exhausted, no retry-after: no delay to report.
    let e = classify(429, &HeaderMap::new(), &fixture("error_429.json"));
    assert_eq!(e.retry_after, None);
}

#[test]
fn classifies_errors() {
    let h = HeaderMap::new();
    let cases = [
        (529, "error_529.json", FailureClass::Overloaded),
        (500, "error_500.json", FailureClass::ServerError),
        (400, "error_context.json", FailureClass::ContextTooLong),
        (400, "error_credit.json", FailureClass::QuotaExhausted),
        (401, "error_401.json", FailureClass::Auth),
        (403, "error_403.json", FailureClass::Auth),
        (404, "error_404.json", FailureClass::InvalidRequest),
        (413, "error_413.json", FailureClass::ContextTooLong),
        (400, "error_400.json", FailureClass::InvalidRequest),
        (429, "error_spend_limit.json", FailureClass::QuotaExhausted),
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
    let e = classify(502, &h, b"<html>Bad Gateway</html>");
    assert_eq!(e.class, FailureClass::ServerError);
    assert_eq!(e.message, "<html>Bad Gateway</html>");
    let e = classify(
        529,
        &headers(&[("retry-after", "3".into())]),
        &fixture("error_529.json"),
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
}

#[test]
fn the_key_is_a_sensitive_header() {
    let v = secret_header(&SecretString::from("sk-ant-secret")).unwrap();
    assert!(v.is_sensitive());
    assert!(!format!("{v:?}").contains("secret"));
    let e = secret_header(&SecretString::from("bad\nkey-secret")).unwrap_err();
    assert_eq!(e.class, FailureClass::Auth);
    assert!(!e.message.contains("secret"));
}
