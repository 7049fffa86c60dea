//! One suite, run over every adapter (openai, openai_compatible, anthropic, gemini),
//! against the in-process provider simulator: each adapter is built the way the worker
//! builds it (`Providers::from_config` over a TOML config), pointed at the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::sync::{Arc, Once};
use std::time::Duration;
use switchyard::config::FileConfig;
use switchyard::job::{
    Content, ContentPart, FunctionDef, FunctionType, ImageUrl, JsonSchemaFormat, Message,
    ResponseFormat, Role, Tool,
};
use switchyard::providers::simulator::{FaultProfile, Simulator};
use switchyard::providers::tools::check_tool_calls;
use switchyard::providers::{
    ChatRequest, ChatResponse, FailureClass, Provider, ProviderError, Providers,
};
use tokio_util::sync::CancellationToken;

/// One adapter under test.
struct Adapter {
    /// Provider `name` and `kind` in the config.
    name: &'static str,
    kind: &'static str,
    /// The simulator's API (its stats key) and the base URL's path.
    api: &'static str,
    path: &'static str,
    model: &'static str,
    /// JSON output is enforced by the API (Anthropic only gets an instruction, which the
    /// simulator does not follow).
    native_json: bool,
    /// The API reports implicit prompt-cache reads for long prompts (Anthropic caches
    /// only blocks marked `cache_control`, which the adapter never sends).
    implicit_cache: bool,
    /// The provider's `http` setting: `auto` (HTTP/1.1 over `http://`, through reqwest) or
    /// `http2` (h2c on the worker's own HTTP/2 client): the same wire format either way.
    http: &'static str,
}

const OPENAI: Adapter = Adapter {
    name: "openai",
    kind: "openai",
    api: "openai",
    path: "/v1",
    model: "gpt-4o-mini-2024-07-18",
    native_json: true,
    implicit_cache: true,
    http: "auto",
};
const COMPATIBLE: Adapter = Adapter {
    name: "local",
    kind: "openai_compatible",
    api: "openai",
    path: "/v1",
    model: "llama-3.1-8b-instruct",
    native_json: true,
    implicit_cache: true,
    http: "auto",
};
const ANTHROPIC: Adapter = Adapter {
    name: "anthropic",
    kind: "anthropic",
    api: "anthropic",
    path: "",
    model: "claude-3-5-haiku-20241022",
    native_json: false,
    implicit_cache: false,
    http: "auto",
};
const GEMINI: Adapter = Adapter {
    name: "gemini",
    kind: "gemini",
    api: "gemini",
    path: "/v1beta",
    model: "gemini-2.0-flash",
    native_json: true,
    implicit_cache: true,
    http: "auto",
};

/// The same adapter on the worker's own HTTP/2 client (h2c).
const fn over_h2(a: Adapter) -> Adapter {
    Adapter { http: "http2", ..a }
}

const KEY_VAR: &str = "SY_PROVIDERS_SUITE_KEY";
const BLANK_KEY_VAR: &str = "SY_PROVIDERS_SUITE_BLANK_KEY";

fn set_keys() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(KEY_VAR, "sk-test");
        // Non-empty (so the adapter is built) but blank on the wire: every API refuses it.
        std::env::set_var(BLANK_KEY_VAR, " ");
    });
}

/// A simulator on 127.0.0.1:0, stopped when dropped.
struct Sim {
    sim: Simulator,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(profile: FaultProfile) -> Sim {
    let sim = Simulator::new(profile);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn({
        let sim = sim.clone();
        let stop = stop.clone();
        async move { sim.serve(listener, stop).await }
    });
    Sim { sim, addr, stop }
}

impl Sim {
    /// The adapter, built from a config whose key is in `key_var` (none: no key line).
    fn adapter_with_key(&self, a: &Adapter, key_var: Option<&str>) -> Arc<dyn Provider> {
        set_keys();
        let key_line = key_var.map_or(String::new(), |v| format!("api_key_env = \"{v}\""));
        let toml = format!(
            r#"
[[providers]]
name = "{name}"
kind = "{kind}"
base_url = "http://{addr}{path}"
{key_line}
timeout_s = 20
http = "{http}"
"#,
            http = a.http,
            name = a.name,
            kind = a.kind,
            addr = self.addr,
            path = a.path,
        );
        let config = FileConfig::from_toml_with_env(&toml, "t", &[]).expect("config");
        let providers = Providers::from_config(&config).expect("adapters");
        Arc::clone(providers.get(a.name).expect("adapter by name"))
    }

    fn adapter(&self, a: &Adapter) -> Arc<dyn Provider> {
        self.adapter_with_key(a, Some(KEY_VAR))
    }

    fn calls(&self, a: &Adapter, model: &str) -> u64 {
        self.sim.stats().calls(a.api, model)
    }

    fn count(&self, a: &Adapter, model: &str, status: u16) -> u64 {
        self.sim.stats().count(a.api, model, status)
    }
}

fn msg(role: Role, text: &str) -> Message {
    Message {
        role,
        content: Some(Content::Text(text.into())),
        name: None,
        tool_calls: None,
        tool_call_id: None,
    }
}

fn request<'a>(model: &'a str, messages: &'a [Message]) -> ChatRequest<'a> {
    ChatRequest {
        model,
        messages,
        max_tokens: 256,
        temperature: Some(0.2),
        stop: None,
        response_format: None,
        tools: None,
        tool_choice: None,
    }
}

async fn ok(p: &Arc<dyn Provider>, req: ChatRequest<'_>) -> ChatResponse {
    match p.chat(req).await {
        Ok(r) => r,
        Err(e) => panic!("call failed: {e}"),
    }
}

async fn err(p: &Arc<dyn Provider>, req: ChatRequest<'_>) -> ProviderError {
    match p.chat(req).await {
        Ok(r) => panic!("call succeeded: {r:?}"),
        Err(e) => e,
    }
}

fn weather_tool() -> Tool {
    Tool {
        kind: FunctionType::Function,
        function: FunctionDef {
            name: "get_weather".into(),
            description: Some("The current weather in a city".into()),
            parameters: Some(json!({"type": "object",
                "properties": {"city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"], "additionalProperties": false})),
            strict: None,
        },
    }
}

fn lookup_tool() -> Tool {
    Tool {
        kind: FunctionType::Function,
        function: FunctionDef {
            name: "lookup_order".into(),
            description: Some("Find an order".into()),
            parameters: Some(json!({"type": "object",
                "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]})),
            strict: None,
        },
    }
}

async fn text(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let messages = [msg(Role::User, "Say hello to the team in one sentence.")];
    let r = ok(&p, request(a.model, &messages)).await;
    let content = r.output.content.expect("content");
    assert!(!content.trim().is_empty());
    assert!(r.output.tool_calls.is_empty());
    assert_eq!(r.output.finish_reason, "stop");
    assert!(r.usage.input_tokens > 0, "{:?}", r.usage);
    assert!(r.usage.output_tokens > 0, "{:?}", r.usage);
    assert!(r.usage.cached_input_tokens <= r.usage.input_tokens);
    assert_eq!(s.calls(a, a.model), 1);
    assert_eq!(s.count(a, a.model, 200), 1);
}

async fn system_prompt(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let plain = [msg(Role::User, "Describe the harbour.")];
    let with_system = [
        msg(
            Role::System,
            "You are a terse harbour master who answers in one line.",
        ),
        msg(Role::User, "Describe the harbour."),
    ];
    let r1 = ok(&p, request(a.model, &plain)).await;
    let r2 = ok(&p, request(a.model, &with_system)).await;
    // The simulator's answer is seeded by everything the model reads, system included.
    assert_ne!(r1.output.content, r2.output.content);
    assert!(
        r2.usage.input_tokens > r1.usage.input_tokens,
        "{:?} {:?}",
        r1.usage,
        r2.usage
    );
    assert_eq!(s.count(a, a.model, 200), 2);
}

async fn multi_turn(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let messages = [
        msg(Role::System, "You are helpful."),
        msg(Role::User, "Name a colour."),
        msg(Role::Assistant, "Blue."),
        msg(Role::User, "Another one?"),
        msg(Role::User, "And why?"),
    ];
    let r = ok(&p, request(a.model, &messages)).await;
    assert!(r.output.content.is_some_and(|c| !c.is_empty()));
    assert_eq!(r.output.finish_reason, "stop");
    assert_eq!(s.calls(a, a.model), 1);
    assert_eq!(s.count(a, a.model, 200), 1);
}

async fn images(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let messages = [Message {
        role: Role::User,
        content: Some(Content::Parts(vec![
            ContentPart::Text {
                text: "What is in this picture?".into(),
            },
            ContentPart::ImageUrl {
                image_url: ImageUrl {
                    url: "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==".into(),
                    detail: None,
                },
            },
        ])),
        name: None,
        tool_calls: None,
        tool_call_id: None,
    }];
    let r = ok(&p, request(a.model, &messages)).await;
    assert!(r.output.content.is_some());
    // An image costs a flat amount of prompt tokens on top of the text.
    assert!(r.usage.input_tokens > 80, "{:?}", r.usage);
    assert_eq!(s.count(a, a.model, 200), 1);
}

async fn tools(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let tools = [weather_tool(), lookup_tool()];
    let auto = json!("auto");
    let mut messages = vec![
        msg(Role::System, "Use tools when they help."),
        msg(Role::User, "Please call get_weather for Paris."),
    ];
    let r = ok(
        &p,
        ChatRequest {
            tools: Some(&tools),
            tool_choice: Some(&auto),
            ..request(a.model, &messages)
        },
    )
    .await;
    assert_eq!(r.output.finish_reason, "tool_calls");
    assert_eq!(r.output.tool_calls.len(), 1, "{:?}", r.output);
    let call = &r.output.tool_calls[0];
    assert!(!call.id.is_empty());
    assert_eq!(call.kind, FunctionType::Function);
    assert_eq!(call.function.name, "get_weather");
    let args: Value = serde_json::from_str(&call.function.arguments).expect("JSON arguments");
    assert!(args.get("city").is_some_and(Value::is_string), "{args}");
    assert!(r.usage.output_tokens > 0);

    // Second turn: the tool's answer goes back, the model answers in text.
    messages.push(Message {
        role: Role::Assistant,
        content: None,
        name: None,
        tool_calls: Some(r.output.tool_calls.clone()),
        tool_call_id: None,
    });
    messages.push(Message {
        role: Role::Tool,
        content: Some(Content::Text(r#"{"temp_c": 21, "sky": "clear"}"#.into())),
        name: None,
        tool_calls: None,
        tool_call_id: Some(call.id.clone()),
    });
    let r = ok(
        &p,
        ChatRequest {
            tools: Some(&tools),
            tool_choice: Some(&auto),
            ..request(a.model, &messages)
        },
    )
    .await;
    assert_eq!(r.output.finish_reason, "stop", "{:?}", r.output);
    assert!(r.output.tool_calls.is_empty());
    assert!(r.output.content.is_some_and(|c| !c.is_empty()));

    // Forced choices: `required` calls some tool, a named choice calls that one,
    // `none` calls none even when the prompt names a tool.
    let quiet = [msg(Role::User, "Tell me something.")];
    let required = json!("required");
    let r = ok(
        &p,
        ChatRequest {
            tools: Some(&tools),
            tool_choice: Some(&required),
            ..request(a.model, &quiet)
        },
    )
    .await;
    assert_eq!(r.output.tool_calls.len(), 1, "{:?}", r.output);
    let named = json!({"type": "function", "function": {"name": "lookup_order"}});
    let r = ok(
        &p,
        ChatRequest {
            tools: Some(&tools),
            tool_choice: Some(&named),
            ..request(a.model, &quiet)
        },
    )
    .await;
    assert_eq!(r.output.tool_calls.len(), 1, "{:?}", r.output);
    assert_eq!(r.output.tool_calls[0].function.name, "lookup_order");
    let args: Value = serde_json::from_str(&r.output.tool_calls[0].function.arguments).unwrap();
    assert!(args.get("order_id").is_some(), "{args}");
    let none = json!("none");
    let r = ok(
        &p,
        ChatRequest {
            tools: Some(&tools),
            tool_choice: Some(&none),
            ..request(a.model, &messages[..2])
        },
    )
    .await;
    assert!(r.output.tool_calls.is_empty());
    assert_eq!(r.output.finish_reason, "stop");
    assert_eq!(s.calls(a, a.model), 5);
    assert_eq!(s.count(a, a.model, 200), 5);
}

async fn json_output(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let messages = [msg(
        Role::User,
        "Extract the parties from: ACME sells to Globex. Answer in JSON.",
    )];
    let schema = ResponseFormat::JsonSchema {
        json_schema: JsonSchemaFormat {
            name: "parties".into(),
            description: None,
            schema: Some(json!({"type": "object", "additionalProperties": false,
                "properties": {"seller": {"type": "string"}, "buyer": {"type": "string"},
                    "count": {"type": "integer"}},
                "required": ["seller", "buyer", "count"]})),
            strict: Some(true),
        },
    };
    let r = ok(
        &p,
        ChatRequest {
            response_format: Some(&schema),
            ..request(a.model, &messages)
        },
    )
    .await;
    assert_eq!(r.output.finish_reason, "stop");
    let content = r.output.content.expect("content");
    if a.native_json {
        let v: Value = serde_json::from_str(&content).expect("JSON answer");
        for k in ["seller", "buyer", "count"] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert!(v["count"].is_i64(), "{v}");
    }
    let r = ok(
        &p,
        ChatRequest {
            response_format: Some(&ResponseFormat::JsonObject),
            ..request(a.model, &messages)
        },
    )
    .await;
    if a.native_json {
        let v: Value = serde_json::from_str(&r.output.content.unwrap()).expect("JSON answer");
        assert!(v.is_object());
    }
    assert_eq!(s.count(a, a.model, 200), 2);
}

async fn max_tokens(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let messages = [msg(Role::User, "Write a long story about ships.")];
    let r = ok(
        &p,
        ChatRequest {
            max_tokens: 3,
            ..request(a.model, &messages)
        },
    )
    .await;
    assert_eq!(r.output.finish_reason, "length");
    assert!(r.usage.output_tokens <= 3, "{:?}", r.usage);
    assert_eq!(s.count(a, a.model, 200), 1);
}

async fn cached_usage(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let long = "The contract between the parties sets out the terms of delivery. ".repeat(120);
    let messages = [msg(Role::System, &long), msg(Role::User, "Summarise it.")];
    let r = ok(&p, request(a.model, &messages)).await;
    assert!(r.usage.input_tokens >= 1024, "{:?}", r.usage);
    assert!(r.usage.cached_input_tokens <= r.usage.input_tokens);
    if a.implicit_cache {
        assert!(r.usage.cached_input_tokens > 0, "{:?}", r.usage);
    } else {
        assert_eq!(r.usage.cached_input_tokens, 0);
    }
    assert_eq!(s.count(a, a.model, 200), 1);
}

/// Every status the simulator injects, with the class the router acts on.
async fn injected_errors(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let messages = [msg(Role::User, "Hello there.")];
    let cases = [
        (400, FailureClass::InvalidRequest),
        (401, FailureClass::Auth),
        (403, FailureClass::Auth),
        (404, FailureClass::InvalidRequest),
        (429, FailureClass::RateLimited),
        (500, FailureClass::ServerError),
        (503, FailureClass::Overloaded),
        (529, FailureClass::Overloaded),
    ];
    let mut expected_calls = 0;
    let mut by_status: std::collections::HashMap<u16, u64> = Default::default();
    for (status, class) in cases {
        s.sim.set_profile(FaultProfile {
            fail_first: 1,
            error_status: status,
            retry_after_s: Some(7),
            ..Default::default()
        });
        let e = err(&p, request(a.model, &messages)).await;
        assert_eq!(e.class, class, "{status}: {e}");
        // Only Anthropic has a 529; the others answer it with their own 503.
        let wire = if status == 529 && a.api != "anthropic" {
            503
        } else {
            status
        };
        assert_eq!(e.status, Some(wire), "{e}");
        assert!(!e.message.is_empty() && !e.message.starts_with('{'), "{e}");
        if class == FailureClass::RateLimited {
            assert_eq!(e.retry_after, Some(Duration::from_secs(7)), "{e:?}");
        }
        // The fault was one request: the next one succeeds.
        ok(&p, request(a.model, &messages)).await;
        expected_calls += 2;
        assert_eq!(s.calls(a, a.model), expected_calls);
        *by_status.entry(wire).or_default() += 1;
        assert_eq!(s.count(a, a.model, wire), by_status[&wire]);
    }
    // 504: transient whatever the adapter calls it.
    s.sim.set_profile(FaultProfile {
        fail_first: 1,
        error_status: 504,
        ..Default::default()
    });
    let e = err(&p, request(a.model, &messages)).await;
    assert!(e.class.is_transient(), "{e}");
    assert_eq!(s.count(a, a.model, 200), 8);
}

async fn rate_limited_by_rpm(a: &Adapter) {
    let s = start(FaultProfile {
        rpm: Some(2),
        ..Default::default()
    })
    .await;
    let p = s.adapter(a);
    let messages = [msg(Role::User, "Hello there.")];
    ok(&p, request(a.model, &messages)).await;
    ok(&p, request(a.model, &messages)).await;
    let e = err(&p, request(a.model, &messages)).await;
    assert_eq!(e.class, FailureClass::RateLimited, "{e}");
    assert_eq!(e.status, Some(429));
    let wait = e.retry_after.expect("a retry delay");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert_eq!(s.count(a, a.model, 200), 2);
    assert_eq!(s.count(a, a.model, 429), 1);
}

async fn unknown_model(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let messages = [msg(Role::User, "Hello there.")];
    let e = err(&p, request("no-such-model", &messages)).await;
    assert_eq!(e.class, FailureClass::InvalidRequest, "{e}");
    assert_eq!(e.status, Some(404));
    assert!(!e.class.is_transient());
    assert_eq!(s.calls(a, "no-such-model"), 1);
    assert_eq!(s.count(a, "no-such-model", 404), 1);
}

async fn bad_key(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter_with_key(a, Some(BLANK_KEY_VAR));
    let messages = [msg(Role::User, "Hello there.")];
    let e = err(&p, request(a.model, &messages)).await;
    assert_eq!(e.class, FailureClass::Auth, "{e}");
    assert!(!e.class.is_transient());
    assert_eq!(s.calls(a, a.model), 1);
    assert_eq!(s.count(a, a.model, 200), 0);
}

/// Returned tool calls are checked against the request's tools (the public check every
/// adapter applies): a call missing a required argument names the tool and the field.
async fn tool_calls_are_checked(a: &Adapter) {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(a);
    let sent = [weather_tool()];
    let messages = [msg(Role::User, "Please call get_weather for Oslo.")];
    let r = ok(
        &p,
        ChatRequest {
            tools: Some(&sent),
            ..request(a.model, &messages)
        },
    )
    .await;
    assert_eq!(r.output.tool_calls.len(), 1);
    assert_eq!(check_tool_calls(&sent, &r.output.tool_calls), Ok(()));
    // The same call against a stricter declaration of the tool.
    let mut stricter = weather_tool();
    stricter.function.parameters = Some(json!({"type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"]}));
    let e = check_tool_calls(&[stricter], &r.output.tool_calls).unwrap_err();
    assert!(e.contains("get_weather") && e.contains("country"), "{e}");
    assert_eq!(s.count(a, a.model, 200), 1);
}

macro_rules! suite {
    ($($module:ident => $adapter:expr),* $(,)?) => {$(
        mod $module {
            use super::*;
            #[tokio::test] async fn text() { super::text(&$adapter).await }
            #[tokio::test] async fn system_prompt() { super::system_prompt(&$adapter).await }
            #[tokio::test] async fn multi_turn() { super::multi_turn(&$adapter).await }
            #[tokio::test] async fn images() { super::images(&$adapter).await }
            #[tokio::test] async fn tools() { super::tools(&$adapter).await }
            #[tokio::test] async fn json_output() { super::json_output(&$adapter).await }
            #[tokio::test] async fn max_tokens() { super::max_tokens(&$adapter).await }
            #[tokio::test] async fn cached_usage() { super::cached_usage(&$adapter).await }
            #[tokio::test] async fn injected_errors() { super::injected_errors(&$adapter).await }
            #[tokio::test] async fn rate_limited_by_rpm() { super::rate_limited_by_rpm(&$adapter).await }
            #[tokio::test] async fn unknown_model() { super::unknown_model(&$adapter).await }
            #[tokio::test] async fn bad_key() { super::bad_key(&$adapter).await }
            #[tokio::test] async fn tool_calls_are_checked() { super::tool_calls_are_checked(&$adapter).await }
        }
    )*};
}

suite! {
    openai => OPENAI,
    openai_compatible => COMPATIBLE,
    anthropic => ANTHROPIC,
    gemini => GEMINI,
    openai_h2 => over_h2(OPENAI),
    openai_compatible_h2 => over_h2(COMPATIBLE),
    anthropic_h2 => over_h2(ANTHROPIC),
    gemini_h2 => over_h2(GEMINI),
}

/// An `openai_compatible` provider may have no key at all; the simulator (like OpenAI)
/// then refuses it, and with `no_auth` (like a vLLM started without a key) accepts it.
#[tokio::test]
async fn compatible_without_a_key() {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter_with_key(&COMPATIBLE, None);
    let messages = [msg(Role::User, "Hello there.")];
    let e = err(&p, request(COMPATIBLE.model, &messages)).await;
    assert_eq!(e.class, FailureClass::Auth);
    s.sim.set_profile(FaultProfile {
        no_auth: true,
        ..Default::default()
    });
    ok(&p, request(COMPATIBLE.model, &messages)).await;
    assert_eq!(s.count(&COMPATIBLE, COMPATIBLE.model, 401), 1);
    assert_eq!(s.count(&COMPATIBLE, COMPATIBLE.model, 200), 1);
}

/// Gemini thinking models: thoughts are billed output and reported as reasoning.
#[tokio::test]
async fn gemini_thinking_tokens() {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(&GEMINI);
    let messages = [msg(Role::User, "Plan a three-step experiment.")];
    // Thoughts count against maxOutputTokens, as at Google: leave room for them.
    let r = ok(
        &p,
        ChatRequest {
            max_tokens: 2048,
            ..request("gemini-2.5-flash", &messages)
        },
    )
    .await;
    assert!(r.usage.reasoning_tokens > 0, "{:?}", r.usage);
    assert!(
        r.usage.output_tokens > r.usage.reasoning_tokens,
        "{:?}",
        r.usage
    );
    assert!(r.output.content.is_some());
    // A limit the thoughts use up: MAX_TOKENS and no text.
    let r = ok(
        &p,
        ChatRequest {
            max_tokens: 16,
            ..request("gemini-2.5-flash", &messages)
        },
    )
    .await;
    assert_eq!(r.output.finish_reason, "length");
    assert_eq!(r.output.content, None);
    assert_eq!(s.count(&GEMINI, "gemini-2.5-flash", 200), 2);
}

/// End to end through an adapter: Gemini's schema subset keeps only declared `required`
/// properties, so a tool that requires an undeclared one gets calls without it, and the
/// check fails the call as a server error (the router retries or fails over).
#[tokio::test]
async fn gemini_bad_tool_call_is_a_server_error() {
    let s = start(FaultProfile::default()).await;
    let p = s.adapter(&GEMINI);
    let mut tool = weather_tool();
    tool.function.parameters = Some(json!({"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city", "ghost"]}));
    let tools = [tool];
    let messages = [msg(Role::User, "Please call get_weather for Oslo.")];
    let e = err(
        &p,
        ChatRequest {
            tools: Some(&tools),
            ..request(GEMINI.model, &messages)
        },
    )
    .await;
    assert_eq!(e.class, FailureClass::ServerError, "{e}");
    assert_eq!(e.status, Some(200));
    assert!(
        e.message.contains("get_weather") && e.message.contains("ghost"),
        "{e}"
    );
    assert_eq!(s.count(&GEMINI, GEMINI.model, 200), 1);
}
