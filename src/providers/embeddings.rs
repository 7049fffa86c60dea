//! The semantic cache's embedding endpoint: `POST {base_url}/embeddings` in OpenAI's wire
//! format (also what vLLM, Ollama, LiteLLM and other compatible servers speak).
//!
//! It asks for `encoding_format: "float"` (every compatible server has it; `base64` is an
//! OpenAI saving on the wire that some do not) and `dimensions` only when configured. The
//! answer's `data[0].embedding` is the vector (a base64 string of little-endian `f32`s is
//! read too), `usage.prompt_tokens` what was billed. Any failure (status, transport,
//! timeout, a body that is not an embedding) is an error: the caller treats it as a miss.

use super::error::{FailureClass, ProviderError};
use super::http::{bearer_header, send};
use crate::config::EmbeddingsConfig;
use base64::Engine;
use secrecy::SecretString;
use serde::Deserialize;
use std::sync::OnceLock;
use std::time::Duration;

/// An embedding answer larger than this is refused (3072 floats as JSON are ~70 KB).
const MAX_BODY: usize = 4 << 20;

/// One prompt's vector and what the call was billed for.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vector: Vec<f32>,
    pub prompt_tokens: u64,
}

#[derive(Deserialize)]
struct Body {
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
struct Item {
    embedding: serde_json::Value,
}

#[derive(Deserialize)]
struct UsageBody {
    #[serde(default)]
    prompt_tokens: u64,
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default()
    })
}

/// Embed `text` with the configured endpoint.
pub async fn embed(cfg: &EmbeddingsConfig, text: &str) -> Result<Embedded, ProviderError> {
    let base = cfg
        .base_url
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let mut body = serde_json::json!({
        "model": cfg.model,
        "input": text,
        "encoding_format": "float",
    });
    if let Some(d) = cfg.dimensions {
        body["dimensions"] = d.into();
    }
    let mut req = client()
        .post(format!("{base}/embeddings"))
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .json(&body);
    if let Some(var) = cfg.api_key_env.as_deref() {
        let key = std::env::var(var).map_err(|_| {
            ProviderError::new(FailureClass::Auth, None, format!("{var} is not set"))
        })?;
        req = req.header(
            reqwest::header::AUTHORIZATION,
            bearer_header(&SecretString::from(key))?,
        );
    }
    let answer = send(req, MAX_BODY).await?;
    if answer.status != 200 {
        let class = match answer.status {
            401 | 403 => FailureClass::Auth,
            429 => FailureClass::RateLimited,
            s if s >= 500 => FailureClass::ServerError,
            _ => FailureClass::InvalidRequest,
        };
        let text = String::from_utf8_lossy(&answer.body);
        return Err(ProviderError::new(
            class,
            Some(answer.status),
            super::http::clip(&text),
        ));
    }
    read(&answer.body).map_err(|m| ProviderError::new(FailureClass::ServerError, Some(200), m))
}

/// The vector and billed tokens of an embeddings answer.
pub fn read(body: &[u8]) -> Result<Embedded, String> {
    let b: Body =
        serde_json::from_slice(body).map_err(|e| format!("not an embeddings answer: {e}"))?;
    let first = b
        .data
        .into_iter()
        .next()
        .ok_or("no data[0] in the answer")?;
    let vector: Vec<f32> = match first.embedding {
        serde_json::Value::Array(xs) => xs
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or("data[0].embedding holds a non-number")?,
        serde_json::Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("data[0].embedding is not base64: {e}"))?;
            if bytes.len() % 4 != 0 {
                return Err("data[0].embedding is not whole f32s".into());
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        _ => return Err("data[0].embedding is neither an array nor a string".into()),
    };
    if vector.is_empty() || vector.iter().any(|x| !x.is_finite()) {
        return Err("data[0].embedding is empty or not finite".into());
    }
    Ok(Embedded {
        vector,
        prompt_tokens: b.usage.map_or(0, |u| u.prompt_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_float_and_base64_answers() {
        let f = read(br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25]}],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}"#).unwrap();
        assert_eq!(f.vector, [0.5, -0.25]);
        assert_eq!(f.prompt_tokens, 3);
        let mut raw = Vec::new();
        raw.extend_from_slice(&0.5f32.to_le_bytes());
        raw.extend_from_slice(&(-0.25f32).to_le_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let body = format!(r#"{{"data":[{{"embedding":"{b64}"}}],"usage":{{"prompt_tokens":1}}}}"#);
        assert_eq!(read(body.as_bytes()).unwrap().vector, [0.5, -0.25]);
        assert!(read(br#"{"data":[]}"#).is_err());
        assert!(read(br#"{"data":[{"embedding":["x"]}]}"#).is_err());
    }
}
