//! Helpers the adapters' unit tests share: recorded fixtures and message builders.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::job::{Content, Message, Role, Tool};
use crate::providers::ChatRequest;

/// `tests/fixtures/<provider>/<name>`.
pub fn fixture(provider: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/{provider}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn msg(role: Role, content: Option<Content>) -> Message {
    Message {
        role,
        content,
        name: None,
        tool_calls: None,
        tool_call_id: None,
    }
}

pub fn text(role: Role, t: &str) -> Message {
    msg(role, Some(Content::Text(t.into())))
}

/// A request offering `tools`, for reading answers with `read_answer`.
pub fn request_with_tools(tools: &[Tool]) -> ChatRequest<'_> {
    ChatRequest {
        model: "m",
        messages: &[],
        max_tokens: 10,
        temperature: None,
        stop: None,
        response_format: None,
        tools: Some(tools),
        tool_choice: None,
    }
}
