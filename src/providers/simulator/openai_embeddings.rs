//! OpenAI embeddings: `POST /v1/embeddings` (and `/embeddings`).
//!
//! Checked as the real API does: `model` and `input` required; `input` a non-empty
//! string, an array of 1..=2048 non-empty strings, an array of token ids, or an array of
//! arrays of token ids; `encoding_format` `float` | `base64`; `dimensions` a positive
//! integer, only for `text-embedding-3` models and at most their size; `user` a string;
//! any other field is refused. Each input is at most 8192 tokens.
//!
//! The vectors are deterministic: the built-in embedder of the semantic cache
//! (`crate::cache::embed`) at the requested size (1536 for `text-embedding-3-small` and
//! `text-embedding-ada-002`, 3072 for `text-embedding-3-large`), so paraphrases score as
//! they do with the built-in embedder. `base64` is the little-endian `f32` bytes, as
//! OpenAI sends them (the official Python SDK asks for base64 unless told otherwise).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Value};

use super::openai::{
    admit_request, base_headers, error, fault_response, model_not_found, rate_headers,
};
use super::openai_validate::{invalid_type, invalid_value, known_params_and_model, OaError};
use super::{text, Simulator};

const KNOWN: &[&str] = &["model", "input", "encoding_format", "dimensions", "user"];
const MAX_INPUTS: usize = 2048;
const MAX_TOKENS_PER_INPUT: u64 = 8192;

/// One input: its text (token ids become words) and its token count.
struct Input {
    text: String,
    tokens: u64,
}

fn invalid_input() -> OaError {
    OaError::invalid(
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.".into(),
        None,
        None,
    )
}

fn inputs(v: Option<&Value>) -> Result<Vec<Input>, OaError> {
    let token_list = |a: &[Value]| -> Option<Input> {
        if a.is_empty() {
            return None;
        }
        let ids: Option<Vec<u64>> = a.iter().map(Value::as_u64).collect();
        let ids = ids?;
        Some(Input {
            text: ids
                .iter()
                .map(|i| format!("t{i}"))
                .collect::<Vec<_>>()
                .join(" "),
            tokens: ids.len() as u64,
        })
    };
    let string = |s: &str| Input {
        text: s.to_string(),
        tokens: text::estimate_tokens(s.chars().count(), 0).max(1),
    };
    match v {
        None | Some(Value::Null) => Err(OaError::invalid(
            "'input' is a required property".into(),
            None,
            None,
        )),
        Some(Value::String(s)) if s.is_empty() => Err(invalid_input()),
        Some(Value::String(s)) => Ok(vec![string(s)]),
        Some(Value::Array(a)) if a.is_empty() || a.len() > MAX_INPUTS => Err(invalid_input()),
        Some(Value::Array(a)) => match a.first().unwrap_or(&Value::Null) {
            Value::String(_) => a
                .iter()
                .map(|x| match x.as_str() {
                    Some(s) if !s.is_empty() => Ok(string(s)),
                    _ => Err(invalid_input()),
                })
                .collect(),
            Value::Number(_) => token_list(a).map(|i| vec![i]).ok_or_else(invalid_input),
            Value::Array(_) => a
                .iter()
                .map(|x| {
                    x.as_array()
                        .and_then(|t| token_list(t))
                        .ok_or_else(invalid_input)
                })
                .collect(),
            _ => Err(invalid_input()),
        },
        Some(_) => Err(invalid_input()),
    }
}

/// The model's native size, and whether it takes `dimensions`.
fn native(model: &str) -> (usize, bool) {
    if model.starts_with("text-embedding-3-large") {
        (3072, true)
    } else if model.starts_with("text-embedding-3") {
        (1536, true)
    } else {
        (1536, false)
    }
}

/// What a valid request asks for.
struct EmbeddingsRequest {
    model: String,
    inputs: Vec<Input>,
    base64: bool,
    dims: usize,
}

fn validate(body: &Value) -> Result<EmbeddingsRequest, OaError> {
    let Some(obj) = body.as_object() else {
        return Err(invalid_type("body", "an object", body));
    };
    let model = known_params_and_model(obj, KNOWN)?;
    let inputs = inputs(obj.get("input"))?;
    let base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(Value::String(f)) => {
            return Err(invalid_value("encoding_format", f, "'float' and 'base64'"))
        }
        Some(v) => return Err(invalid_type("encoding_format", "a string", v)),
    };
    if let Some(u) = obj.get("user").filter(|u| !u.is_null() && !u.is_string()) {
        return Err(invalid_type("user", "a string", u));
    }
    let (size, resizable) = native(&model);
    let dims = match obj.get("dimensions") {
        None | Some(Value::Null) => size,
        Some(_) if !resizable => {
            return Err(OaError::invalid(
                "This model does not support specifying dimensions.".into(),
                None,
                None,
            ));
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(d) if d >= 1 && d as usize <= size => d as usize,
            Some(_) => {
                return Err(OaError::invalid(
                    format!(
                    "Invalid value for 'dimensions' = {n}. Must be at least 1 and at most {size}."
                ),
                    Some("dimensions".into()),
                    None,
                ))
            }
            _ => {
                return Err(invalid_type(
                    "dimensions",
                    "an integer",
                    &Value::Number(n.clone()),
                ))
            }
        },
        Some(v) => return Err(invalid_type("dimensions", "an integer", v)),
    };
    if let Some(long) = inputs.iter().find(|i| i.tokens > MAX_TOKENS_PER_INPUT) {
        return Err(OaError::invalid(
            format!(
                "This model's maximum context length is {MAX_TOKENS_PER_INPUT} tokens, however you requested {} tokens ({} in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
                long.tokens, long.tokens
            ),
            None,
            None,
        ));
    }
    Ok(EmbeddingsRequest {
        model,
        inputs,
        base64,
        dims,
    })
}

pub(crate) async fn embeddings(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (call, body) = match admit_request(&sim, &headers, &body, false).await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let req = match validate(&body) {
        Ok(r) => r,
        Err(e) => return error(&call, &e, Some(&call.peek())),
    };
    if call.knobs.unknown_model {
        return model_not_found(&call, &req.model);
    }
    let tokens: u64 = req.inputs.iter().map(|i| i.tokens).sum();
    let (fault, snap) = call.check_faults(tokens);
    if let Some(f) = fault {
        return fault_response(&call, &f, snap);
    }
    let data: Vec<Value> = req
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let v = crate::cache::embed::builtin(&input.text, req.dims);
            let embedding = if req.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut headers = base_headers(&call);
    headers.extend(rate_headers(&snap));
    let body = json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    call.respond(StatusCode::OK, headers, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Value) -> Result<EmbeddingsRequest, String> {
        validate(&body).map_err(|e| e.message)
    }

    #[test]
    fn inputs_and_options_are_checked_like_the_real_api() {
        let ok = check(json!({"model": "text-embedding-3-small", "input": "hi", "dimensions": 64, "encoding_format": "base64"})).unwrap();
        assert_eq!((ok.dims, ok.base64, ok.inputs.len()), (64, true, 1));
        assert_eq!(
            check(json!({"model": "text-embedding-3-large", "input": ["a", "b"]}))
                .unwrap()
                .dims,
            3072
        );
        assert_eq!(
            check(json!({"model": "text-embedding-3-small", "input": [[1, 2], [3]]}))
                .unwrap()
                .inputs
                .len(),
            2
        );
        assert_eq!(
            check(json!({"model": "text-embedding-3-small", "input": [1, 2, 3]}))
                .unwrap()
                .inputs[0]
                .tokens,
            3
        );
        for (bad, says) in [
            (json!({"input": "x"}), "you must provide a model parameter"),
            (
                json!({"model": "text-embedding-3-small"}),
                "'input' is a required property",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": ""}),
                "'$.input' is invalid",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": []}),
                "'$.input' is invalid",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": ["a", ""]}),
                "'$.input' is invalid",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": ["a", 1]}),
                "'$.input' is invalid",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": "a", "encoding_format": "int8"}),
                "Invalid value: 'int8'",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": "a", "dimensions": 0}),
                "at least 1 and at most 1536",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": "a", "dimensions": 2000}),
                "at most 1536",
            ),
            (
                json!({"model": "text-embedding-ada-002", "input": "a", "dimensions": 8}),
                "does not support specifying dimensions",
            ),
            (
                json!({"model": "text-embedding-3-small", "input": "a", "temperature": 0}),
                "Unrecognized request argument supplied: temperature",
            ),
        ] {
            let got = check(bad.clone()).err().unwrap_or_default();
            assert!(got.contains(says), "{bad}: {got}");
        }
    }
}
