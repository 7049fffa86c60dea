//! OpenAI chat completions, and every OpenAI-compatible server (vLLM, Ollama, Groq,
//! Together, Mistral …): `POST {base_url}/chat/completions`.

use super::http::clip;
use super::ratelimit_headers::{self, parse_go_duration, retry_after};
use super::{http, stream, ChatRequest, ChatResponse, FailureClass, Provider, ProviderError};
use crate::config::{ProviderConfig, ProviderKind};
use crate::job::{Message, Output, ResponseFormat, Tool, ToolCall, Usage};
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, AUTHORIZATION};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub struct OpenAi {
    url: String,
    key: Option<SecretString>,
    client: http::Pool,
    /// OpenAI proper takes `max_completion_tokens`; compatible servers `max_tokens`.
    compatible: bool,
    max_response_bytes: usize,
}

impl OpenAi {
    pub fn new(
        p: &ProviderConfig,
        key: Option<SecretString>,
        client: http::Pool,
        max_response_bytes: usize,
    ) -> Self {
        OpenAi {
            url: format!("{}/chat/completions", p.base_url.trim_end_matches('/')),
            key,
            client,
            compatible: p.kind == ProviderKind::OpenaiCompatible,
            max_response_bytes,
        }
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [Tool]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a serde_json::Value>,
    /// `Some(true)` for a streamed call, with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

/// Only the usage of a completion whose other fields are unreadable (it is still billed).
#[derive(Deserialize)]
struct WireBilled {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

impl OpenAi {
    /// The request for `req`, streamed or not.
    fn post<'a>(
        &'a self,
        req: &ChatRequest<'_>,
        stream: bool,
    ) -> Result<http::Post<'a>, ProviderError> {
        // The wire struct is a temporary: only the encoded bytes wait for the answer.
        let mut post = http::Post::json(&self.url, &wire_request(req, self.compatible, stream))?;
        if let Some(key) = &self.key {
            post = post.header(AUTHORIZATION, http::bearer_header(key)?);
        }
        Ok(post)
    }
}

http_provider!(OpenAi, stream::openai::Assembler);

/// The chat-completions body of `req` (also each line's `body` in a batch input file).
fn wire_request<'a>(req: &ChatRequest<'a>, compatible: bool, stream: bool) -> WireRequest<'a> {
    WireRequest {
        model: req.model,
        messages: req.messages,
        max_completion_tokens: (!compatible).then_some(req.max_tokens),
        max_tokens: compatible.then_some(req.max_tokens),
        temperature: req.temperature,
        stop: req.stop,
        response_format: req.response_format,
        tools: req.tools.filter(|t| !t.is_empty()),
        tool_choice: req
            .tool_choice
            .filter(|_| req.tools.is_some_and(|t| !t.is_empty())),
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    }
}

/// The chat-completions body OpenAI proper is sent for `req`, as JSON.
pub(crate) fn request_body(req: &ChatRequest<'_>) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(wire_request(req, false, false))
}

/// One HTTP answer to `req` read into the adapter's result, without the network (what
/// `fuzz/` fuzzes).
pub fn read_answer(
    req: &ChatRequest<'_>,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ChatResponse, ProviderError> {
    let rate = ratelimit_headers::openai(headers);
    super::read_answer_with(req, (status, headers, body), rate, parse_success, classify)
}

/// The usage of a (possibly incomplete) completion body, when it has one.
pub(crate) fn billed_usage(body: &serde_json::Value) -> Option<Usage> {
    WireBilled::deserialize(body).ok()?.usage.map(usage)
}

fn usage(u: WireUsage) -> Usage {
    Usage {
        input_tokens: u.prompt_tokens,
        cached_input_tokens: u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(u.prompt_tokens),
        cache_write_tokens: 0,
        output_tokens: u.completion_tokens,
        reasoning_tokens: u
            .completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0)
            .min(u.completion_tokens),
    }
}

fn parse_success(status: u16, bytes: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(bytes).map_err(|e| {
        let billed = serde_json::from_slice::<WireBilled>(bytes).ok();
        ProviderError::new(
            FailureClass::ServerError,
            Some(status),
            format!("unreadable chat completion: {e}"),
        )
        .with_usage(billed.and_then(|b| b.usage).map(usage))
    })?;
    let billed = wire.usage.map(usage);
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(ProviderError::new(
            FailureClass::ServerError,
            Some(status),
            "chat completion without choices",
        )
        .with_usage(billed));
    };
    let finish = choice.finish_reason.unwrap_or_else(|| "stop".into());
    if choice.message.refusal.is_some() && choice.message.content.is_none() {
        let msg = choice.message.refusal.unwrap_or_default();
        return Err(ProviderError::new(
            FailureClass::ContentFiltered,
            Some(status),
            format!("refused: {}", clip(&msg)),
        )
        .with_usage(billed));
    }
    let usage = billed.unwrap_or_default();
    Ok(ChatResponse {
        rate: None,
        output: Output {
            content: choice.message.content,
            tool_calls: choice.message.tool_calls.unwrap_or_default(),
            finish_reason: normalise_finish(&finish).to_string(),
        },
        usage,
    })
}

fn normalise_finish(f: &str) -> &'static str {
    match f {
        "length" => "length",
        "tool_calls" | "function_call" => "tool_calls",
        "content_filter" => "content_filter",
        _ => "stop",
    }
}

/// Classify a non-2xx answer from its status, error code and headers.
pub(crate) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<WireErrorBody> = serde_json::from_slice::<WireError>(body)
        .ok()
        .map(|e| e.error);
    let code = parsed
        .as_ref()
        .and_then(|e| e.code.as_ref())
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let kind = parsed
        .as_ref()
        .and_then(|e| e.kind.as_deref())
        .unwrap_or("");
    let message = match &parsed {
        Some(e) if !e.message.is_empty() => clip(&e.message),
        _ => clip(&String::from_utf8_lossy(body)),
    };
    let class = match status {
        429 if code == "insufficient_quota" || kind == "insufficient_quota" => {
            FailureClass::QuotaExhausted
        }
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        400 if code == "context_length_exceeded" => FailureClass::ContextTooLong,
        400 if code == "content_filter" || code == "content_policy_violation" => {
            FailureClass::ContentFiltered
        }
        408 => FailureClass::Timeout,
        503 => FailureClass::Overloaded,
        s if s >= 500 => FailureClass::ServerError,
        _ => FailureClass::InvalidRequest,
    };
    let mut err = ProviderError::new(class, Some(status), message);
    if class == FailureClass::RateLimited {
        err.retry_after = retry_after(headers).or_else(|| ratelimit_reset(headers));
    } else if class.is_transient() {
        err.retry_after = retry_after(headers);
    }
    err
}

/// The longer of OpenAI's `x-ratelimit-reset-requests` / `-tokens` when exhausted.
fn ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let exhausted = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok()) == Some(0);
    let mut best: Option<Duration> = None;
    for (remaining, reset) in [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ] {
        if exhausted(remaining) {
            if let Some(d) = get(reset).and_then(parse_go_duration) {
                best = Some(best.map_or(d, |b| b.max(d)));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_recorded_completion() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18",
          "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},"logprobs":null,"finish_reason":"stop"}],
          "usage":{"prompt_tokens":812,"completion_tokens":96,"total_tokens":908,
            "prompt_tokens_details":{"cached_tokens":512,"audio_tokens":0},
            "completion_tokens_details":{"reasoning_tokens":10,"audio_tokens":0}}}"#;
        let r = parse_success(200, body).unwrap();
        assert_eq!(r.output.content.as_deref(), Some("Hi"));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 812,
                cached_input_tokens: 512,
                cache_write_tokens: 0,
                output_tokens: 96,
                reasoning_tokens: 10
            }
        );
    }

    fn fixture(name: &str) -> Vec<u8> {
        crate::providers::test_support::fixture("openai", name)
    }

    #[test]
    fn parses_recorded_fixtures() {
        let r = parse_success(200, &fixture("text.json")).unwrap();
        assert_eq!(r.output.finish_reason, "stop");
        assert!(r.output.content.unwrap().contains("Acme Corp"));
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (812, 96));

        let r = parse_success(200, &fixture("tool_call.json")).unwrap();
        assert_eq!(r.output.finish_reason, "tool_calls");
        assert_eq!(r.output.content, None);
        assert_eq!(r.output.tool_calls[0].function.name, "get_weather");
        assert_eq!(r.output.tool_calls[0].id, "call_DdmO9pD3xa9XTPNJ32zg2hcA");

        let r = parse_success(200, &fixture("length_cached_reasoning.json")).unwrap();
        assert_eq!(r.output.finish_reason, "length");
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 2048,
                cached_input_tokens: 1920,
                cache_write_tokens: 0,
                output_tokens: 300,
                reasoning_tokens: 256
            }
        );
    }

    #[test]
    fn classifies_recorded_errors() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1".parse().unwrap());
        let e = classify(429, &h, &fixture("error_429_rate.json"));
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
        assert!(e.message.starts_with("Rate limit reached"));
        let e = classify(429, &HeaderMap::new(), &fixture("error_429_quota.json"));
        assert_eq!(e.class, FailureClass::QuotaExhausted);
        let e = classify(400, &HeaderMap::new(), &fixture("error_400_context.json"));
        assert_eq!(e.class, FailureClass::ContextTooLong);
        let e = classify(401, &HeaderMap::new(), &fixture("error_401.json"));
        assert_eq!(e.class, FailureClass::Auth);
        let e = classify(500, &HeaderMap::new(), &fixture("error_500.json"));
        assert_eq!(e.class, FailureClass::ServerError);
        assert!(e.class.is_transient());
    }

    #[test]
    fn classifies_errors() {
        let h = HeaderMap::new();
        let e = classify(429, &h, br#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#);
        assert_eq!(e.class, FailureClass::QuotaExhausted);
        let e = classify(400, &h, br#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#);
        assert_eq!(e.class, FailureClass::ContextTooLong);
        let e = classify(500, &h, b"oops");
        assert_eq!(e.class, FailureClass::ServerError);
        assert_eq!(e.message, "oops");
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        let e = classify(
            429,
            &h,
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(e.class, FailureClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    }

    #[test]
    fn unusable_answers_carry_their_billed_usage() {
        let tools: Vec<crate::job::Tool> = serde_json::from_value(serde_json::json!([{
            "type": "function", "function": {"name": "get_weather", "parameters":
            {"type": "object", "required": ["city"]}}}]))
        .unwrap();
        let req = crate::providers::test_support::request_with_tools(&tools);
        let usage = r#""usage":{"prompt_tokens":50,"completion_tokens":9,
            "prompt_tokens_details":{"cached_tokens":20}}"#;
        let want = Some(Usage {
            input_tokens: 50,
            cached_input_tokens: 20,
            output_tokens: 9,
            ..Usage::default()
        });
        let h = HeaderMap::new();
        for body in [
            // A refusal.
            format!(r#"{{"choices":[{{"message":{{"content":null,"refusal":"no"}}}}],{usage}}}"#),
            // A tool call that fails validation (no `city`).
            format!(
                r#"{{"choices":[{{"message":{{"content":null,"tool_calls":[{{"id":"c1",
                "type":"function","function":{{"name":"get_weather","arguments":"{{}}"}}}}]}},
                "finish_reason":"tool_calls"}}],{usage}}}"#
            ),
            // No choices; choices of the wrong shape.
            format!(r#"{{"choices":[],{usage}}}"#),
            format!(r#"{{"choices":7,{usage}}}"#),
        ] {
            let e = read_answer(&req, 200, &h, body.as_bytes()).unwrap_err();
            assert_eq!(e.usage, want, "{body}");
        }
        let e = read_answer(&req, 200, &h, b"not json").unwrap_err();
        assert_eq!((e.class, e.usage), (FailureClass::ServerError, None));
        let e = read_answer(&req, 429, &h, &fixture("error_429_rate.json")).unwrap_err();
        assert_eq!(e.usage, None);
    }

    #[test]
    fn huge_waits_in_errors_saturate() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
        h.insert(
            "x-ratelimit-reset-tokens",
            "99999999999999999999h".parse().unwrap(),
        );
        let e = classify(429, &h, b"{}");
        assert_eq!(e.retry_after, Some(ratelimit_headers::MAX_WAIT));
        h.insert("retry-after-ms", "1e30".parse().unwrap());
        let e = classify(503, &h, b"{}");
        assert_eq!(e.retry_after, Some(ratelimit_headers::MAX_WAIT));
    }
}
