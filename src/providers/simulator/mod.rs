//! Provider simulator (`switchyard simulate`).
//!
//! A fake LLM provider HTTP server that speaks the real wire formats of OpenAI chat
//! completions (also what `openai_compatible` servers such as vLLM and Ollama speak),
//! the Anthropic Messages API and Gemini `generateContent`, and checks requests the way
//! the real APIs do. It is used for demos, integration tests and benchmarks on machines
//! without internet access.
//!
//! # Endpoints (one port)
//! - `POST /v1/chat/completions` and `POST /chat/completions` — OpenAI (`openai.rs`),
//!   `"stream": true` included (server-sent events, one body).
//! - `POST /v1/messages` — Anthropic (`anthropic.rs`).
//! - `POST /v1beta/models/{model}:generateContent` (and `/v1/models/...`) — Gemini
//!   (`gemini.rs`), plus `:streamGenerateContent` and `:countTokens`.
//! - `GET /_sim/stats` — [`Stats`] as JSON; `GET|POST /_sim/profile` — read / replace the
//!   [`FaultProfile`]; `POST /_sim/reset` — zero the counters.
//!
//! # Order of processing for an API request
//! 1. The model id is read (body `model`, or the Gemini path) to pick the effective
//!    profile: `per_model[model]` when present — it *replaces* every knob — else the base.
//! 2. `hang`: the request is counted as `<api>/<model>/hang` and never answered until the
//!    simulator shuts down (then it gets a 503).
//! 3. `latency_ms` + uniform `0..=jitter_ms` sleep (cut short by shutdown).
//! 4. Authentication, then request validation (4xx with the provider's error shape),
//!    then the unknown-model check (`unknown_models` knob, or ids starting `no-such-`).
//! 5. Rate limits (`rpm`, `tpm`: fixed 60 s windows per `<api>/<model>`) → real 429.
//! 6. `fail_first`: the first N requests per `<api>/<model>` that get this far fail
//!    with `error_status` (the count restarts on `set_profile` and `reset_stats`).
//! 7. `error_rate`: random injected `error_status`.
//! 8. The deterministic answer (`text.rs`).
//!
//! Every request is counted once as `<api>/<model>/<status>` (model `-` when the body had
//! none), 4xx validation failures included; a request held by `hang` is counted as
//! `hang` when it arrives, one cut short by shutdown during its latency sleep as `503`.
//!
//! Unknown models: every id is accepted except those in `unknown_models` and ids
//! starting with `no-such-`, which get the provider's "model not found" 404.

mod anthropic;
mod anthropic_validate;
mod gemini;
mod gemini_validate;
mod openai;
mod openai_messages;
mod openai_validate;
mod schema;
mod state;
mod text;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use state::Inner;
pub(crate) use state::{Fault, RateSnapshot};

/// Largest request body the simulator accepts.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Cloneable handle to one simulator; every clone shares the same state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("total", &self.inner.stats().total)
            .finish_non_exhaustive()
    }
}

/// Fault-injection and behaviour knobs. Every field is optional in JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultProfile {
    /// Base latency before answering.
    pub latency_ms: u64,
    /// Plus uniform random `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Probability (0..1) of an injected `error_status`.
    pub error_rate: f64,
    /// Status to inject; 0 means 500. 429 comes with `retry-after` and rate-limit headers;
    /// use 529 for Anthropic's `overloaded_error` (OpenAI and Gemini, which never send
    /// 529, answer a 529 with their own overloaded 503).
    pub error_status: u16,
    /// `retry-after` seconds on injected 429s (default 1).
    pub retry_after_s: Option<u64>,
    /// The first N requests per `<api>/<model>` fail with `error_status`.
    pub fail_first: u64,
    /// Requests per minute per `<api>/<model>`; beyond it a real 429.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute per `<api>/<model>`; beyond it a real 429.
    pub tpm: Option<u64>,
    /// Accept and never answer (until shutdown).
    pub hang: bool,
    /// Model ids answered with the provider's "model not found" 404 (besides any id
    /// starting with `no-such-`, which is always unknown).
    pub unknown_models: Vec<String>,
    /// OpenAI endpoint only: accept any key or none (by default a `Bearer sk-…` key is
    /// required), like a vLLM / Ollama server started without an API key, for
    /// `openai_compatible` providers that send no key or an arbitrary one.
    pub no_auth: bool,
    /// Overrides keyed by upstream model id; an override replaces every knob above
    /// for that model (its own `per_model` is ignored).
    pub per_model: HashMap<String, FaultProfile>,
}

/// Request counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Every request counted.
    pub total: u64,
    /// Counts keyed `"<api>/<model>/<status>"`, e.g. `"openai/gpt-4o-mini/200"`;
    /// `<status>` is `hang` for requests held by the `hang` knob.
    pub by_key: BTreeMap<String, u64>,
}

impl Stats {
    /// Requests to `model` on `api` (`openai`, `anthropic`, `gemini`), all statuses summed.
    pub fn calls(&self, api: &str, model: &str) -> u64 {
        let prefix = format!("{api}/{model}/");
        self.by_key
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(&prefix)
                    .is_some_and(|status| !status.is_empty() && !status.contains('/'))
            })
            .map(|(_, n)| *n)
            .sum()
    }

    /// Requests to `model` on `api` answered with `status`.
    pub fn count(&self, api: &str, model: &str, status: u16) -> u64 {
        self.by_key
            .get(&format!("{api}/{model}/{status}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Simulator {
    /// A simulator with the given profile and zeroed counters.
    pub fn new(profile: FaultProfile) -> Self {
        Self {
            inner: Arc::new(Inner::new(profile)),
        }
    }

    /// The axum Router with every endpoint, sharing this simulator's state.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/chat/completions", post(openai::chat_completions))
            .route("/v1/messages", post(anthropic::messages))
            .route("/v1beta/models/{*rest}", post(gemini::generate_v1beta))
            .route("/v1/models/{*rest}", post(gemini::generate_v1))
            .route("/_sim/stats", get(admin_stats))
            .route(
                "/_sim/profile",
                get(admin_get_profile).post(admin_set_profile),
            )
            .route("/_sim/reset", post(admin_reset))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serve on `listener` until `shutdown` is cancelled. Requests held by `hang` or a
    /// latency sleep are then answered with a 503 so that the server can drain.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let inner = Arc::clone(&self.inner);
        inner.arm();
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "provider simulator listening");
        }
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                inner.release_held();
            })
            .await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Replace the profile (restarts the `fail_first` counts).
    pub fn set_profile(&self, profile: FaultProfile) {
        self.inner.set_profile(profile);
    }

    /// The current profile.
    pub fn profile(&self) -> FaultProfile {
        self.inner.profile().as_ref().clone()
    }

    /// Zero the counters, the `fail_first` counts and the rate-limit windows.
    pub fn reset_stats(&self) {
        self.inner.reset();
    }

    /// Start handling one API request: resolve the profile for `model`, apply `hang`
    /// and latency. `None` means the simulator is shutting down (answer 503).
    pub(crate) async fn admit(&self, api: &'static str, model: Option<&str>) -> Option<Call> {
        let model = match model {
            Some(m) if !m.is_empty() => m.to_owned(),
            _ => "-".to_owned(),
        };
        let profile = self.inner.profile();
        let knobs = Knobs::resolve(&profile, &model);
        let call = Call {
            sim: self.clone(),
            api,
            model,
            knobs,
            started: std::time::Instant::now(),
            request_id: text::random_id("", 24),
        };
        if call.knobs.hang {
            let release = self.inner.release_token();
            self.inner.record(&call.key(), "hang");
            release.cancelled().await;
            return None;
        }
        let delay = call.knobs.latency_ms
            + if call.knobs.jitter_ms > 0 {
                rand::random_range(0..=call.knobs.jitter_ms)
            } else {
                0
            };
        if delay > 0 {
            let release = self.inner.release_token();
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(delay)) => {}
                () = release.cancelled() => {
                    self.inner.record(&call.key(), "503");
                    return None;
                }
            }
        }
        Some(call)
    }
}

/// The effective knobs for one request.
#[derive(Clone, Debug)]
pub(crate) struct Knobs {
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub error_rate: f64,
    pub error_status: u16,
    pub retry_after_s: u64,
    pub fail_first: u64,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub hang: bool,
    pub unknown_model: bool,
    pub no_auth: bool,
}

impl Knobs {
    fn resolve(base: &FaultProfile, model: &str) -> Self {
        let p = base.per_model.get(model).unwrap_or(base);
        let unknown_model = model.starts_with("no-such-")
            || base.unknown_models.iter().any(|m| m == model)
            || p.unknown_models.iter().any(|m| m == model);
        Self {
            latency_ms: p.latency_ms,
            jitter_ms: p.jitter_ms,
            error_rate: p.error_rate,
            error_status: if p.error_status == 0 {
                500
            } else {
                p.error_status
            },
            retry_after_s: p.retry_after_s.unwrap_or(1),
            fail_first: p.fail_first,
            rpm: p.rpm,
            tpm: p.tpm,
            hang: p.hang,
            unknown_model,
            no_auth: p.no_auth || base.no_auth,
        }
    }
}

/// One admitted API request.
pub(crate) struct Call {
    sim: Simulator,
    pub api: &'static str,
    pub model: String,
    pub knobs: Knobs,
    pub started: std::time::Instant,
    /// Random id for the provider's request-id header.
    pub request_id: String,
}

impl Call {
    fn key(&self) -> String {
        format!("{}/{}", self.api, self.model)
    }

    /// Rate limits, `fail_first` and `error_rate` for a valid request needing
    /// `prompt_tokens`; returns the fault (if any) and the rate-limit state after it.
    pub fn check_faults(&self, prompt_tokens: u64) -> (Option<Fault>, RateSnapshot) {
        self.sim
            .inner
            .check_faults(&self.key(), &self.knobs, prompt_tokens)
    }

    /// Rate-limit state without consuming anything (for error answers).
    pub fn peek(&self) -> RateSnapshot {
        self.sim.inner.peek(&self.key(), &self.knobs)
    }

    /// Add generated tokens to the token window.
    pub fn commit_tokens(&self, tokens: u64, snap: &mut RateSnapshot) {
        self.sim.inner.commit_tokens(&self.key(), tokens);
        snap.tokens_remaining = snap.tokens_remaining.saturating_sub(tokens);
    }

    /// Milliseconds since the request was admitted.
    pub fn elapsed_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// Count the answer and build the response.
    pub fn respond(
        &self,
        status: StatusCode,
        headers: Vec<(HeaderName, String)>,
        body: &serde_json::Value,
    ) -> Response {
        self.sim.inner.record(&self.key(), status.as_str());
        json_response(status, headers, body)
    }

    /// Count the answer and build a response with a raw body and content type.
    pub fn respond_raw(
        &self,
        status: StatusCode,
        headers: Vec<(HeaderName, String)>,
        content_type: &'static str,
        body: String,
    ) -> Response {
        self.sim.inner.record(&self.key(), status.as_str());
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        add_headers(&mut resp, headers);
        resp
    }
}

/// A JSON response with extra headers.
pub(crate) fn json_response(
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: &serde_json::Value,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_headers(&mut resp, headers);
    resp
}

fn add_headers(resp: &mut Response, headers: Vec<(HeaderName, String)>) {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
}

/// A header name from a static string (all names used here are valid lowercase).
pub(crate) fn hname(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// A header's value as text, if present and visible ASCII.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The status to inject for `api`: 529 exists only at Anthropic.
pub(crate) fn injected_status(api: &str, status: u16) -> StatusCode {
    let status = if status == 529 && api != "anthropic" {
        503
    } else {
        status
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn admin_stats(State(sim): State<Simulator>) -> Response {
    let stats = sim.stats();
    let body = serde_json::to_value(&stats).unwrap_or_default();
    json_response(StatusCode::OK, Vec::new(), &body)
}

async fn admin_get_profile(State(sim): State<Simulator>) -> Response {
    let body = serde_json::to_value(sim.profile()).unwrap_or_default();
    json_response(StatusCode::OK, Vec::new(), &body)
}

async fn admin_set_profile(State(sim): State<Simulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultProfile>(&body) {
        Ok(profile) => {
            let out = serde_json::to_value(&profile).unwrap_or_default();
            sim.set_profile(profile);
            json_response(StatusCode::OK, Vec::new(), &out)
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            Vec::new(),
            &serde_json::json!({"error": format!("invalid profile: {e}")}),
        ),
    }
}

async fn admin_reset(State(sim): State<Simulator>) -> Response {
    sim.reset_stats();
    json_response(StatusCode::OK, Vec::new(), &serde_json::json!({"ok": true}))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
pub(crate) mod testutil;

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests;
