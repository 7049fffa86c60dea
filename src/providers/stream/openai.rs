//! OpenAI chat completions, streamed (`stream: true`, `stream_options.include_usage`):
//! `data:` lines of `chat.completion.chunk`s, then `data: [DONE]`. Text and tool calls
//! come as deltas of choice 0; the usage comes in a last chunk without choices; an error
//! comes as `data: {"error": {...}}` (what OpenAI's SDK raises on).

use super::{mid_stream_error, sse, unreadable, Assemble};
use crate::job::Usage;
use crate::providers::{openai, Deltas, ProviderError};
use serde::Deserialize;
use serde_json::{json, Value};

/// Tool calls one answer may hold (indexes beyond are refused, not allocated).
const MAX_CALLS: usize = 128;

/// A chat completion assembled from its chunks.
#[derive(Debug, Default)]
pub struct Assembler {
    content: String,
    saw_content: bool,
    refusal: Option<String>,
    calls: Vec<Call>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
}

#[derive(Debug, Default)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<CallDelta>>,
}

#[derive(Deserialize)]
struct CallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// The HTTP status OpenAI answers an error of this type / code with.
fn status_of(error: &Value) -> u16 {
    let field = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("");
    match (field("type"), field("code")) {
        (_, "rate_limit_exceeded" | "insufficient_quota") => 429,
        ("requests" | "tokens" | "insufficient_quota", _) => 429,
        ("invalid_request_error", _) => 400,
        _ => 500,
    }
}

impl Assemble for Assembler {
    fn event(&mut self, ev: sse::Event, deltas: &mut Deltas<'_>) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        if ev.data.starts_with("[DONE]") {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk =
            serde_json::from_str(&ev.data).map_err(|e| unreadable("chat.completion.chunk", &e))?;
        if let Some(error) = chunk.error {
            return Err(mid_stream_error(
                openai::classify,
                status_of(&error),
                ev.data.as_bytes(),
            ));
        }
        if let Some(u) = chunk.usage.filter(|u| !u.is_null()) {
            self.usage = Some(u);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(d) = choice.delta {
                if let Some(t) = d.content {
                    if !t.is_empty() {
                        deltas(&t);
                    }
                    self.content.push_str(&t);
                    self.saw_content = true;
                }
                if let Some(r) = d.refusal {
                    self.refusal.get_or_insert_with(String::new).push_str(&r);
                }
                for c in d.tool_calls.into_iter().flatten() {
                    if c.index >= MAX_CALLS {
                        return Err(unreadable(
                            "tool call",
                            &serde::de::Error::custom(format!("index {} is too large", c.index)),
                        ));
                    }
                    if self.calls.len() <= c.index {
                        self.calls.resize_with(c.index + 1, Call::default);
                    }
                    let call = &mut self.calls[c.index];
                    if let Some(id) = c.id {
                        call.id = id;
                    }
                    if let Some(f) = c.function {
                        call.name.push_str(&f.name.unwrap_or_default());
                        call.arguments.push_str(&f.arguments.unwrap_or_default());
                    }
                }
            }
            if let Some(f) = choice.finish_reason {
                self.finish = Some(f);
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn usage_so_far(&self) -> Option<Usage> {
        openai::billed_usage(&json!({ "usage": self.usage.as_ref()? }))
    }

    fn body(self) -> Value {
        let empty = self.content.is_empty();
        let content =
            if (empty && (self.refusal.is_some() || !self.calls.is_empty())) || !self.saw_content {
                Value::Null
            } else {
                Value::String(self.content)
            };
        let mut message = json!({"role": "assistant", "content": content, "refusal": self.refusal});
        if !self.calls.is_empty() {
            let calls: Vec<Value> = self
                .calls
                .into_iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
        }
        let mut body = json!({"object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish}]});
        if let Some(u) = self.usage {
            body["usage"] = u;
        }
        body
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::test_support::run;
    use super::*;
    use crate::providers::FailureClass;

    /// As OpenAI streams `gpt-4o-mini` with `include_usage` (recorded shape).
    const TEXT: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \u{e9}t\u{e9}\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn read(body: Value) -> Result<crate::providers::ChatResponse, ProviderError> {
        super::super::test_support::read_assembled(openai::read_answer, &body)
    }

    #[test]
    fn text_split_anywhere_assembles_the_same_answer() {
        for step in [1, 2, 7, 64, TEXT.len()] {
            let mut a = Assembler::default();
            let (deltas, r) = run(&mut a, TEXT.as_bytes(), step);
            r.unwrap();
            assert_eq!(deltas, vec!["Hel", "lo \u{e9}t\u{e9}"], "step {step}");
            assert!(a.finished());
            assert_eq!(a.usage_so_far().unwrap().input_tokens, 12);
            let r = read(a.body()).unwrap();
            assert_eq!(r.output.content.as_deref(), Some("Hello \u{e9}t\u{e9}"));
            assert_eq!(r.output.finish_reason, "stop");
            assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (12, 3));
        }
    }

    #[test]
    fn tool_call_deltas_are_joined() {
        let body = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let mut a = Assembler::default();
        let (deltas, r) = run(&mut a, body.as_bytes(), 5);
        r.unwrap();
        assert!(deltas.is_empty());
        let r = read(a.body()).unwrap();
        assert_eq!(r.output.content, None);
        assert_eq!(r.output.finish_reason, "tool_calls");
        assert_eq!(r.output.tool_calls[0].id, "call_1");
        assert_eq!(r.output.tool_calls[0].function.name, "get_weather");
        assert_eq!(
            r.output.tool_calls[0].function.arguments,
            "{\"city\":\"Paris\"}"
        );
    }

    #[test]
    fn an_error_event_fails_the_call_and_a_cut_is_not_finished() {
        let cut = TEXT.len() / 2;
        let mut body = TEXT[..TEXT[..cut].rfind("\n\n").unwrap() + 2].to_string();
        body.push_str("data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n");
        let mut a = Assembler::default();
        let (deltas, r) = run(&mut a, body.as_bytes(), 3);
        let e = r.unwrap_err();
        assert_eq!(e.class, FailureClass::ServerError);
        assert!(e
            .message
            .starts_with("mid-stream error: The server had an error"));
        assert!(!deltas.is_empty());
        let mut a = Assembler::default();
        let (_, r) = run(&mut a, &TEXT.as_bytes()[..cut], 3);
        r.unwrap();
        assert!(!a.finished());
        let rate = "data: {\"error\":{\"message\":\"slow down\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n";
        let (_, r) = run(&mut Assembler::default(), rate.as_bytes(), 100);
        assert_eq!(r.unwrap_err().class, FailureClass::RateLimited);
    }

    #[test]
    fn a_refusal_is_read_as_one() {
        let body = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"I can't\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut a = Assembler::default();
        run(&mut a, body.as_bytes(), 9).1.unwrap();
        let e = read(a.body()).unwrap_err();
        assert_eq!(e.class, FailureClass::ContentFiltered);
        assert_eq!(e.usage.unwrap().output_tokens, 2);
    }
}
