//! Gemini, streamed: `:streamGenerateContent?alt=sse`, each `data:` a
//! `GenerateContentResponse` holding the next parts of candidate 0 and the usage so far
//! (`usageMetadata`); the last one has the `finishReason`. A prompt that is blocked comes
//! as one chunk with `promptFeedback` and no candidates; an error as
//! `data: {"error": {"code", "message", "status"}}` (what google-genai raises on).

use super::{mid_stream_error, sse, unreadable, Assemble};
use crate::job::Usage;
use crate::providers::{gemini, Deltas, ProviderError};
use serde_json::{json, Value};

/// A response assembled from its chunks.
#[derive(Debug, Default)]
pub struct Assembler {
    parts: Vec<Value>,
    finish: Option<Value>,
    usage: Option<Value>,
    feedback: Option<Value>,
    candidate: bool,
}

impl Assemble for Assembler {
    fn event(&mut self, ev: sse::Event, deltas: &mut Deltas<'_>) -> Result<(), ProviderError> {
        let chunk: Value = serde_json::from_str(&ev.data)
            .map_err(|e| unreadable("GenerateContentResponse", &e))?;
        if let Some(error) = chunk.get("error") {
            let code = error.get("code").and_then(Value::as_u64).unwrap_or(500);
            let status = u16::try_from(code).unwrap_or(500);
            return Err(mid_stream_error(
                gemini::classify,
                status,
                ev.data.as_bytes(),
            ));
        }
        if let Some(u) = chunk.get("usageMetadata").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        if let Some(f) = chunk.get("promptFeedback").filter(|f| !f.is_null()) {
            self.feedback = Some(f.clone());
        }
        let Some(candidate) = chunk.pointer("/candidates/0") else {
            return Ok(());
        };
        self.candidate = true;
        let parts = candidate
            .pointer("/content/parts")
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            let thought = part.get("thought").and_then(Value::as_bool) == Some(true);
            match part.get("text").and_then(Value::as_str) {
                Some(t) if !thought => {
                    if !t.is_empty() {
                        deltas(t);
                    }
                    // Adjacent text parts are one text (as the plain answer has it).
                    let last_text = self
                        .parts
                        .last_mut()
                        .filter(|p| p.get("thought").is_none() && p.get("text").is_some());
                    match last_text.and_then(|p| p.get_mut("text")) {
                        Some(Value::String(s)) => s.push_str(t),
                        _ => self.parts.push(json!({ "text": t })),
                    }
                }
                _ => self.parts.push(part.clone()),
            }
        }
        if let Some(f) = candidate.get("finishReason").filter(|f| !f.is_null()) {
            self.finish = Some(f.clone());
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        let blocked = self
            .feedback
            .as_ref()
            .and_then(|f| f.get("blockReason"))
            .is_some();
        self.finish.is_some() || (blocked && !self.candidate)
    }

    fn usage_so_far(&self) -> Option<Usage> {
        gemini::billed_usage(&json!({ "usageMetadata": self.usage.as_ref()? }))
    }

    fn body(self) -> Value {
        let mut body = json!({});
        if self.candidate {
            body["candidates"] = json!([{"content": {"role": "model", "parts": self.parts},
                "finishReason": self.finish, "index": 0}]);
        }
        if let Some(u) = self.usage {
            body["usageMetadata"] = u;
        }
        if let Some(f) = self.feedback {
            body["promptFeedback"] = f;
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

    /// As Gemini streams with `alt=sse` (CRLF line ends, usage in every chunk).
    const TEXT: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The quick\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.0-flash\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" brown fox\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 3,\"totalTokenCount\": 12},\"modelVersion\": \"gemini-2.0-flash\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" jumps.\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 6,\"totalTokenCount\": 15,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 9}]},\"modelVersion\": \"gemini-2.0-flash\"}\r\n\r\n",
    );

    fn read(body: Value) -> Result<crate::providers::ChatResponse, ProviderError> {
        super::super::test_support::read_assembled(gemini::read_answer, &body)
    }

    #[test]
    fn text_split_anywhere_assembles_the_same_answer() {
        for step in [1, 2, 13, TEXT.len()] {
            let mut a = Assembler::default();
            let (deltas, r) = run(&mut a, TEXT.as_bytes(), step);
            r.unwrap();
            assert_eq!(deltas, vec!["The quick", " brown fox", " jumps."]);
            assert!(a.finished());
            let r = read(a.body()).unwrap();
            assert_eq!(
                r.output.content.as_deref(),
                Some("The quick brown fox jumps.")
            );
            assert_eq!(r.output.finish_reason, "stop");
            assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (9, 6));
        }
    }

    #[test]
    fn function_calls_thoughts_and_blocked_prompts() {
        let body = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"plan\",\"thought\":true}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":20,\"totalTokenCount\":20}}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Paris\"}}}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":20,\"candidatesTokenCount\":5,\"thoughtsTokenCount\":4,\"totalTokenCount\":29}}\r\n\r\n",
        );
        let mut a = Assembler::default();
        let (deltas, r) = run(&mut a, body.as_bytes(), 4);
        r.unwrap();
        assert!(deltas.is_empty(), "thoughts are not forwarded");
        let r = read(a.body()).unwrap();
        assert_eq!(r.output.finish_reason, "tool_calls");
        assert_eq!(r.output.tool_calls[0].function.name, "get_weather");
        assert_eq!(r.output.content, None);

        let blocked = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":7,\"totalTokenCount\":7}}\r\n\r\n";
        let mut a = Assembler::default();
        run(&mut a, blocked.as_bytes(), 5).1.unwrap();
        assert!(a.finished());
        let e = read(a.body()).unwrap_err();
        assert_eq!(e.class, FailureClass::ContentFiltered);
        assert_eq!(e.usage.unwrap().input_tokens, 7);
    }

    #[test]
    fn an_error_chunk_fails_the_call_with_the_usage_so_far() {
        let first = TEXT.split_inclusive("\r\n\r\n").next().unwrap();
        let body = format!("{first}data: {{\"error\": {{\"code\": 503, \"message\": \"The model is overloaded. Please try again later.\", \"status\": \"UNAVAILABLE\"}}}}\r\n\r\n");
        let mut a = Assembler::default();
        let (deltas, r) = run(&mut a, body.as_bytes(), 6);
        let e = r.unwrap_err();
        assert_eq!(e.class, FailureClass::Overloaded);
        assert!(e
            .message
            .starts_with("mid-stream error: The model is overloaded"));
        assert_eq!(deltas, vec!["The quick"]);
        assert!(!a.finished());
        assert_eq!(a.usage_so_far().unwrap().input_tokens, 9);
    }
}
