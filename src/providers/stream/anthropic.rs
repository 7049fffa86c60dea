//! Anthropic Messages, streamed (`stream: true`): `message_start` (the message, its
//! input usage), per content block `content_block_start` / `content_block_delta`
//! (`text_delta`, `input_json_delta`, `thinking_delta` …) / `content_block_stop`, then
//! `message_delta` (stop reason, cumulative output usage) and `message_stop`; `ping`s
//! anywhere; an `error` event (e.g. `overloaded_error`) ends the stream. Unknown event
//! types are ignored, as Anthropic asks of clients.

use super::{mid_stream_error, sse, unreadable, Assemble};
use crate::job::Usage;
use crate::providers::{anthropic, Deltas, ProviderError};
use serde_json::{json, Map, Value};

/// Content blocks one answer may hold (indexes beyond are refused, not allocated).
const MAX_BLOCKS: usize = 1024;

/// A message assembled from its events.
#[derive(Debug, Default)]
pub struct Assembler {
    blocks: Vec<Block>,
    stop_reason: Option<Value>,
    stop_sequence: Option<Value>,
    usage: Map<String, Value>,
    started: bool,
    done: bool,
}

#[derive(Debug, Default)]
enum Block {
    #[default]
    Missing,
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
    /// Thinking and other blocks: not part of the answer.
    Other(Value),
}

/// The HTTP status Anthropic answers an error of this type with.
fn status_of(kind: &str) -> u16 {
    match kind {
        "overloaded_error" => 529,
        "rate_limit_error" => 429,
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "timeout_error" => 504,
        _ => 500,
    }
}

impl Assembler {
    fn block(&mut self, ev: &Value) -> Result<&mut Block, ProviderError> {
        let i = ev.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        if i >= MAX_BLOCKS {
            return Err(unreadable(
                "content block",
                &serde::de::Error::custom(format!("index {i} is too large")),
            ));
        }
        if self.blocks.len() <= i {
            self.blocks.resize_with(i + 1, Block::default);
        }
        Ok(&mut self.blocks[i])
    }

    /// Usage fields of an event (cumulative: a later value replaces an earlier one).
    fn merge_usage(&mut self, usage: Option<&Value>) {
        for (k, v) in usage.and_then(Value::as_object).into_iter().flatten() {
            if !v.is_null() {
                self.usage.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Assemble for Assembler {
    fn event(&mut self, ev: sse::Event, deltas: &mut Deltas<'_>) -> Result<(), ProviderError> {
        let data: Value =
            serde_json::from_str(&ev.data).map_err(|e| unreadable("Messages event", &e))?;
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "message_start" => {
                self.started = true;
                self.merge_usage(data.pointer("/message/usage"));
            }
            "content_block_start" => {
                let cb = data.get("content_block").cloned().unwrap_or(Value::Null);
                let field = |k: &str| cb.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let block = match cb.get("type").and_then(Value::as_str) {
                    Some("text") => Block::Text(field("text")),
                    Some("tool_use") => Block::ToolUse {
                        id: field("id"),
                        name: field("name"),
                        json: String::new(),
                    },
                    _ => Block::Other(cb.clone()),
                };
                *self.block(&data)? = block;
            }
            "content_block_delta" => {
                let delta = data.get("delta").cloned().unwrap_or(Value::Null);
                let text = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or("");
                match (self.block(&data)?, text("type")) {
                    (Block::Text(t), "text_delta") => {
                        let piece = text("text");
                        if !piece.is_empty() {
                            deltas(piece);
                        }
                        t.push_str(piece);
                    }
                    (Block::ToolUse { json, .. }, "input_json_delta") => {
                        json.push_str(text("partial_json"));
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(d) = data.get("delta") {
                    self.stop_reason = d.get("stop_reason").cloned();
                    self.stop_sequence = d.get("stop_sequence").cloned();
                }
                self.merge_usage(data.get("usage"));
            }
            "message_stop" => self.done = true,
            "error" => {
                let t = data.pointer("/error/type").and_then(Value::as_str);
                return Err(mid_stream_error(
                    anthropic::classify,
                    status_of(t.unwrap_or("")),
                    ev.data.as_bytes(),
                ));
            }
            // `ping`, `content_block_stop`, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.started && self.done
    }

    fn usage_so_far(&self) -> Option<Usage> {
        if self.usage.is_empty() {
            return None;
        }
        anthropic::billed_usage(&json!({ "usage": self.usage }))
    }

    fn body(self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .into_iter()
            .filter_map(|b| match b {
                Block::Missing => None,
                Block::Text(t) => Some(json!({"type": "text", "text": t})),
                Block::ToolUse { id, name, json } => {
                    let input = if json.trim().is_empty() {
                        json!({})
                    } else {
                        // Unparseable input stays a string: the tool-call check refuses it.
                        serde_json::from_str(&json).unwrap_or(Value::String(json))
                    };
                    Some(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
                }
                Block::Other(v) => Some(v),
            })
            .collect();
        json!({"type": "message", "role": "assistant", "content": content,
            "stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence,
            "usage": self.usage})
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::test_support::run;
    use super::*;
    use crate::providers::FailureClass;

    /// As the Messages API streams a text answer (recorded shape, API docs' example).
    const TEXT: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-5-haiku-20241022\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn read(body: Value) -> Result<crate::providers::ChatResponse, ProviderError> {
        super::super::test_support::read_assembled(anthropic::read_answer, &body)
    }

    #[test]
    fn text_split_anywhere_assembles_the_same_answer() {
        for step in [1, 3, 50, TEXT.len()] {
            let mut a = Assembler::default();
            let (deltas, r) = run(&mut a, TEXT.as_bytes(), step);
            r.unwrap();
            assert_eq!(deltas, vec!["Hello", "!"]);
            assert!(a.finished());
            let r = read(a.body()).unwrap();
            assert_eq!(r.output.content.as_deref(), Some("Hello!"));
            assert_eq!(r.output.finish_reason, "stop");
            assert_eq!(
                (
                    r.usage.input_tokens,
                    r.usage.cached_input_tokens,
                    r.usage.output_tokens
                ),
                (35, 10, 15)
            );
        }
    }

    #[test]
    fn tool_use_with_partial_json_and_thinking() {
        let body = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Pa\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ris\\\"}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let mut a = Assembler::default();
        let (deltas, r) = run(&mut a, body.as_bytes(), 11);
        r.unwrap();
        assert!(deltas.is_empty(), "thinking is not forwarded");
        let r = read(a.body()).unwrap();
        assert_eq!(r.output.finish_reason, "tool_calls");
        assert_eq!(r.output.tool_calls[0].id, "toolu_1");
        assert_eq!(
            r.output.tool_calls[0].function.arguments,
            "{\"city\":\"Paris\"}"
        );
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (40, 30));
    }

    #[test]
    fn an_error_event_fails_the_call_with_the_usage_so_far() {
        let mut body = TEXT[..TEXT.find("event: content_block_stop").unwrap()].to_string();
        body.push_str("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        let mut a = Assembler::default();
        let (deltas, r) = run(&mut a, body.as_bytes(), 7);
        let e = r.unwrap_err();
        assert_eq!(e.class, FailureClass::Overloaded);
        assert_eq!(e.message, "mid-stream error: Overloaded");
        assert_eq!(deltas, vec!["Hello", "!"]);
        assert!(!a.finished());
        let u = a.usage_so_far().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (35, 1));
    }
}
