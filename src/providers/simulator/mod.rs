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
//! - `POST /v1/embeddings` and `POST /embeddings` — OpenAI embeddings
//!   (`openai_embeddings.rs`), float or base64, `dimensions`.
//! - `POST /v1/messages` — Anthropic (`anthropic.rs`), `"stream": true` included
//!   (server-sent events).
//! - `POST /v1beta/models/{model}:generateContent` (and `/v1/models/...`) — Gemini
//!   (`gemini.rs`), plus `:streamGenerateContent` and `:countTokens`.
//! - `POST /v1/files`, `GET /v1/files/{id}[/content]`, `POST|GET /v1/batches`,
//!   `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel` — OpenAI's Batch API
//!   (`openai_batch.rs`).
//! - `POST|GET /v1/messages/batches`, `GET /v1/messages/batches/{id}[/results]`,
//!   `POST /v1/messages/batches/{id}/cancel` — Anthropic's Message Batches
//!   (`anthropic_batch.rs`).
//! - `POST /v1beta/models/{model}:batchGenerateContent`, `GET /v1beta/batches[/{id}]`,
//!   `POST /v1beta/batches/{id}:cancel`, `DELETE /v1beta/batches/{id}` — Gemini's Batch
//!   Mode (`gemini_batch.rs`).
//! - `GET /_sim/stats` — [`Stats`] as JSON; `GET|POST /_sim/profile` — read / replace the
//!   [`FaultProfile`]; `POST /_sim/reset` — zero the counters and clear the request log;
//!   `GET /_sim/log?limit=N` — the newest `N` (default 100) [`LogEntry`]s, newest first,
//!   as a JSON array.
//!
//! # Order of processing for an API request
//! 1. The model id is read (body `model`, or the Gemini path) to pick the effective
//!    profile: `per_model[model]` when present — it *replaces* every knob — else the base.
//! 2. `outages`: a request arriving inside a window is answered with the window's
//!    status in the provider's error shape (after the latency sleep, before any check).
//! 3. `hang`: the request is counted as `<api>/<model>/hang` and never answered until the
//!    simulator shuts down (then it gets a 503).
//! 4. Latency sleep drawn from `latency_dist` (`latency_ms`, `jitter_ms`), cut short by
//!    shutdown.
//! 5. Authentication, then request validation (4xx with the provider's error shape),
//!    then the unknown-model check (`unknown_models` knob, or ids starting `no-such-`).
//! 6. Rate limits (`rpm`, `tpm`: fixed 60 s windows per `<api>/<model>`) → real 429.
//! 7. `fail_first`: the first N requests per `<api>/<model>` that get this far fail
//!    with `error_status` (the count restarts on `set_profile` and `reset_stats`).
//! 8. `error_rate`: random injected `error_status`.
//! 9. The deterministic answer (`text.rs`); a 200 body is cut in half with probability
//!    `truncate_rate`. A streamed answer (server-sent events) goes out event by event
//!    (`stream_chunk_ms` apart) and may break mid-way instead (`stream_fail_first`,
//!    `stream_error_rate`, `stream_fault`).
//! 10. The headers are sent; the body follows after `first_byte_ms` (any status).
//!
//! Every request is counted once as `<api>/<model>/<status>` (model `-` when the body had
//! none), 4xx validation failures included; a request held by `hang` is counted as
//! `hang` when it arrives, one cut short by shutdown during its latency sleep as `503`.
//! Each is also appended to the request log ([`Simulator::log`]).
//!
//! Unknown models: every id is accepted except those in `unknown_models` and ids
//! starting with `no-such-`, which get the provider's "model not found" 404.

mod anthropic;
mod anthropic_batch;
mod anthropic_validate;
mod gemini;
mod gemini_batch;
mod gemini_validate;
mod latency;
mod log;
mod openai;
mod openai_batch;
mod openai_embeddings;
mod openai_messages;
mod openai_validate;
mod schema;
pub(crate) mod serve;
mod state;
mod text;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use latency::LatencyDist;
pub use log::LogEntry;
pub use serve::{ServeOptions, TlsIdentity, DEFAULT_H2_MAX_STREAMS};
use state::Inner;
pub(crate) use state::{Fault, RateSnapshot};

/// Largest request body the simulator accepts.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Entries returned by `GET /_sim/log` without `?limit=`.
const DEFAULT_LOG_LIMIT: usize = 100;

/// Cloneable handle to one simulator; every clone shares the same state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
    conns: Arc<serve::ConnCounts>,
    /// OpenAI's files and batches.
    batches: Arc<openai_batch::Store>,
    /// Anthropic's message batches.
    anthropic_batches: Arc<anthropic_batch::Store>,
    /// Gemini's batches.
    gemini_batches: Arc<gemini_batch::Store>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("total", &self.inner.stats().total)
            .finish_non_exhaustive()
    }
}

/// Fault-injection and behaviour knobs. Every field is optional in JSON (the body of
/// `POST /_sim/profile`, or a profile file); a missing field takes its default, which
/// injects nothing.
///
/// # Knobs
/// | field | default | effect |
/// |---|---|---|
/// | `latency_ms` | 0 | delay before answering (the median / mean, see `latency_dist`) |
/// | `jitter_ms` | 0 | spread of the delay (see `latency_dist`) |
/// | `latency_dist` | `"uniform"` | `"uniform"`: `latency_ms + U(0..=jitter_ms)`; `"exponential"`: mean `latency_ms`, `jitter_ms` unused; `"lognormal"`: median `latency_ms`, 84th percentile `latency_ms + jitter_ms` (samples capped at one hour) |
/// | `first_byte_ms` | 0 | send the status and headers at once, then hold the body this long (a streamed, chunked body); unlike `latency_ms`, which delays the headers too |
/// | `error_rate` | 0 | probability (0..1) of answering `error_status` instead |
/// | `error_status` | 0 = 500 | status of injected errors, in the provider's error shape; 429 comes with `retry-after` and rate-limit headers; 529 is Anthropic's `overloaded_error` (OpenAI and Gemini answer it as their 503) |
/// | `retry_after_s` | 1 | `retry-after` of injected 429s |
/// | `fail_first` | 0 | the first N requests per `<api>/<model>` fail with `error_status` (counted again from each `set_profile` / reset) |
/// | `rpm`, `tpm` | none | own requests / tokens per minute per `<api>/<model>`, answered with the provider's real 429 and headers |
/// | `outages` | `[]` | [`Outage`] windows, in seconds from when this profile was set (or the server started, whichever is later): every request arriving inside one gets its `status` (default 503) in the provider's error shape, before authentication |
/// | `hang` | false | accept the request and never answer (until shutdown, then 503) |
/// | `truncate_rate` | 0 | probability (0..1) that a 200 body is cut in half: valid status and headers, `content-length` of the cut body, unparseable JSON (plain answers; a streamed one breaks with the `stream_*` knobs) |
/// | `unknown_models` | `[]` | model ids answered with the provider's "model not found" 404 (ids starting `no-such-` always are) |
/// | `no_auth` | false | OpenAI endpoint: accept any key or none |
/// | `log_capacity` | 1000 | requests kept in the request log ([`Simulator::log`]); 0 keeps none. Only the base profile's value counts |
/// | `stream_chunk_ms` | 0 | streamed answers (`stream: true`, `:streamGenerateContent`): the wait between two events |
/// | `stream_error_rate` | 0 | probability (0..1) that a streamed answer breaks after about half its events (see `stream_fault`) |
/// | `stream_fail_first` | 0 | the first N streamed answers per `<api>/<model>` break after about half their events (counted again from each `set_profile` / reset) |
/// | `stream_fault` | `"error"` | how a streamed answer breaks: `"error"` — the provider's in-stream error event (OpenAI `data: {"error": …}` server_error, Anthropic `event: error` overloaded_error, Gemini `data: {"error": …}` 503 UNAVAILABLE), then the body ends; `"cut"` — the body stops without its end (the connection is dropped) |
/// | `batch_complete_ms` | 0 | OpenAI Batch API: a batch completes this long after it was created (see `openai_batch.rs`) |
/// | `batch_expire_every` | 0 | Batch API: every Nth line is not run, the batch ends `expired` |
/// | `batch_error_every` | 0 | Batch API: every Nth line is answered with a 500 |
/// | `batch_hang` | false | Batch API: batches stay `in_progress` until cancelled |
/// | `per_model` | `{}` | profiles keyed by model id that replace every knob above for that model (their own `per_model` and `log_capacity` are ignored; `unknown_models` and `no_auth` add to the base's) |
///
/// Example: `{"latency_ms": 400, "jitter_ms": 200, "latency_dist": "lognormal",
/// "outages": [{"start_s": 30, "duration_s": 10}], "per_model": {"gpt-4o":
/// {"error_rate": 0.1, "error_status": 429}}}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultProfile {
    /// Base latency before answering (the median of `lognormal`, the mean of
    /// `exponential`).
    pub latency_ms: u64,
    /// Spread of the latency: uniform `0..=jitter_ms` on top of `latency_ms` by default;
    /// see [`LatencyDist`].
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
    /// Outage windows, counted from the moment this profile was set (or the server
    /// started, whichever is later). A request arriving inside a window gets the
    /// window's status in the provider's error shape, whatever it asks.
    pub outages: Vec<Outage>,
    /// Send the status and headers, then wait this long before the body (which is then
    /// streamed, chunked). Applies to every answer, errors included.
    pub first_byte_ms: u64,
    /// Probability (0..1) that a 200 answer's body is cut to its first half (with a
    /// matching `content-length`), so that clients get unparseable JSON.
    pub truncate_rate: f64,
    /// Shape of the latency distribution; see [`LatencyDist`].
    pub latency_dist: LatencyDist,
    /// Requests kept in the request log (default 1000; 0 keeps none). Only the base
    /// profile's value is used.
    pub log_capacity: Option<usize>,
    /// Streamed answers: milliseconds between two events.
    pub stream_chunk_ms: u64,
    /// Probability (0..1) that a streamed answer breaks mid-way.
    pub stream_error_rate: f64,
    /// The first N streamed answers per `<api>/<model>` break mid-way.
    pub stream_fail_first: u64,
    /// How a streamed answer breaks.
    pub stream_fault: StreamFault,
    /// Batch API (base profile only): a batch completes this long after it was created.
    pub batch_complete_ms: u64,
    /// Batch API: every Nth line (1-based) is not run and the batch ends `expired`.
    pub batch_expire_every: u64,
    /// Batch API: every Nth line is answered with a 500.
    pub batch_error_every: u64,
    /// Batch API: batches stay `in_progress` until cancelled.
    pub batch_hang: bool,
}

/// How a streamed answer breaks (`stream_fault`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFault {
    /// The provider's own in-stream error event, then the end of the body.
    #[default]
    Error,
    /// The body stops mid-way: the connection is dropped.
    Cut,
}

/// One outage window of a [`FaultProfile`].
///
/// In JSON `{"start_s": 30, "duration_s": 10}` (`status` optional, default 503).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Seconds after the profile was set (or the server started) when the outage begins.
    pub start_s: f64,
    /// How long it lasts, in seconds.
    pub duration_s: f64,
    /// Status of every answer during the outage (default 503; 0 also means 503). 529 is
    /// answered as 503 by OpenAI and Gemini; 429 comes with `retry-after` set to the
    /// rest of the window.
    #[serde(default = "default_outage_status")]
    pub status: u16,
}

fn default_outage_status() -> u16 {
    503
}

impl Default for Outage {
    fn default() -> Self {
        Self {
            start_s: 0.0,
            duration_s: 0.0,
            status: default_outage_status(),
        }
    }
}

impl Outage {
    /// The status answered, and whole seconds (at least 1) left in the window, when
    /// `elapsed` (since the profile took effect) falls inside it.
    fn active_at(&self, elapsed: Duration) -> Option<(u16, u64)> {
        let t = elapsed.as_secs_f64();
        let end = self.start_s + self.duration_s;
        if !(self.start_s <= t && t < end) {
            return None;
        }
        let status = if self.status == 0 { 503 } else { self.status };
        let left = (end - t).ceil();
        let left = if left.is_finite() && left >= 1.0 {
            left.min(u32::MAX as f64) as u64
        } else {
            1
        };
        Some((status, left))
    }
}

impl FaultProfile {
    /// Read a profile from a JSON file (the format of `POST /_sim/profile`).
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse_file(path, &bytes)
    }

    fn parse_file(path: &Path, bytes: &[u8]) -> anyhow::Result<Self> {
        serde_json::from_slice(bytes)
            .with_context(|| format!("{}: not a fault profile", path.display()))
    }

    /// The profile that applies to `model`: its `per_model` entry, else this one.
    fn effective(&self, model: &str) -> &FaultProfile {
        self.per_model.get(model).unwrap_or(self)
    }

    /// The first outage window that `elapsed` falls into.
    fn outage_at(&self, elapsed: Duration) -> Option<(u16, u64)> {
        self.outages.iter().find_map(|o| o.active_at(elapsed))
    }
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
            conns: Arc::default(),
            batches: Arc::default(),
            anthropic_batches: Arc::default(),
            gemini_batches: Arc::default(),
        }
    }

    /// The axum Router with every endpoint, sharing this simulator's state.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/chat/completions", post(openai::chat_completions))
            .route("/v1/files", post(openai_batch::create_file))
            .route("/v1/files/{id}", get(openai_batch::get_file))
            .route("/v1/files/{id}/content", get(openai_batch::file_content))
            .route(
                "/v1/batches",
                post(openai_batch::create_batch).get(openai_batch::list_batches),
            )
            .route("/v1/batches/{id}", get(openai_batch::get_batch))
            .route("/v1/batches/{id}/cancel", post(openai_batch::cancel_batch))
            .route("/v1/embeddings", post(openai_embeddings::embeddings))
            .route("/embeddings", post(openai_embeddings::embeddings))
            .route("/v1/messages", post(anthropic::messages))
            .route(
                "/v1/messages/batches",
                post(anthropic_batch::create).get(anthropic_batch::list),
            )
            .route("/v1/messages/batches/{id}", get(anthropic_batch::retrieve))
            .route(
                "/v1/messages/batches/{id}/cancel",
                post(anthropic_batch::cancel),
            )
            .route(
                "/v1/messages/batches/{id}/results",
                get(anthropic_batch::results),
            )
            .route("/v1beta/models/{*rest}", post(gemini::generate_v1beta))
            .route("/v1beta/batches", get(gemini_batch::list))
            .route(
                "/v1beta/batches/{id}",
                get(gemini_batch::get)
                    .post(gemini_batch::post)
                    .delete(gemini_batch::delete),
            )
            .route("/v1/models/{*rest}", post(gemini::generate_v1))
            .route("/_sim/stats", get(admin_stats))
            .route(
                "/_sim/profile",
                get(admin_get_profile).post(admin_set_profile),
            )
            .route("/_sim/reset", post(admin_reset))
            .route("/_sim/log", get(admin_log))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serve on `listener` until `shutdown` is cancelled, with the default
    /// [`ServeOptions`] (cleartext HTTP/1.1 and h2c, 100 streams per HTTP/2 connection).
    /// Requests held by `hang` or a latency sleep are then answered with a 503 so that
    /// the server can drain.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        self.serve_with(listener, shutdown, ServeOptions::default())
            .await
    }

    /// [`Simulator::serve`] with TLS or another HTTP/2 stream limit.
    pub async fn serve_with(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
        opts: ServeOptions,
    ) -> std::io::Result<()> {
        let inner = Arc::clone(&self.inner);
        inner.arm();
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, tls = opts.tls.is_some(), h2_max_streams = opts.h2_max_streams, "provider simulator listening");
        }
        let counts = Arc::clone(&self.conns);
        serve::run(
            self.router(),
            listener,
            shutdown,
            &opts,
            counts,
            move || {
                inner.release_held();
            },
        )
        .await
    }

    /// Connections accepted since start, and open now.
    pub fn connections(&self) -> (u64, u64) {
        (self.conns.accepted(), self.conns.open())
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

    /// Zero the counters, the `fail_first` counts and the rate-limit windows, and clear
    /// the request log.
    pub fn reset_stats(&self) {
        self.inner.reset();
    }

    /// The newest `limit` entries of the request log, newest first (at most
    /// `log_capacity` are kept).
    pub fn log(&self, limit: usize) -> Vec<LogEntry> {
        self.inner.log_newest(limit)
    }

    /// Start handling one API request of `request_bytes` bytes: resolve the profile for
    /// `model`, note an outage, apply `hang` and latency. `None` means the simulator is
    /// shutting down (answer 503). `body` (when it parsed) gives the log its prompt
    /// prefix.
    pub(crate) async fn admit(
        &self,
        api: &'static str,
        model: Option<&str>,
        request_bytes: usize,
        body: Option<&serde_json::Value>,
    ) -> Option<Call> {
        let started = Instant::now();
        let model = match model {
            Some(m) if !m.is_empty() => m.to_owned(),
            _ => "-".to_owned(),
        };
        let (profile, since) = self.inner.profile_since();
        let knobs = Knobs::resolve(&profile, &model);
        let outage = profile
            .effective(&model)
            .outage_at(started.saturating_duration_since(since));
        let call = Call {
            sim: self.clone(),
            api,
            model,
            knobs,
            started,
            request_id: text::random_id("", 24),
            request_bytes: request_bytes as u64,
            prompt: body.and_then(log::prompt_prefix),
            outage,
            fault: OnceLock::new(),
            recorded: std::sync::atomic::AtomicBool::new(false),
        };
        if call.knobs.hang && call.outage.is_none() {
            let release = self.inner.release_token();
            call.set_fault("hang");
            call.record(None);
            release.cancelled().await;
            return None;
        }
        let delay = latency::sample_ms(
            call.knobs.latency_dist,
            call.knobs.latency_ms,
            call.knobs.jitter_ms,
            &mut rand::rng(),
        );
        if delay > 0 {
            let release = self.inner.release_token();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay)) => {}
                () = release.cancelled() => {
                    call.set_fault("shutdown");
                    call.record(Some(StatusCode::SERVICE_UNAVAILABLE));
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
    pub latency_dist: LatencyDist,
    pub first_byte_ms: u64,
    pub truncate_rate: f64,
    pub stream_chunk_ms: u64,
    pub stream_error_rate: f64,
    pub stream_fail_first: u64,
    pub stream_fault: StreamFault,
}

impl Knobs {
    fn resolve(base: &FaultProfile, model: &str) -> Self {
        let p = base.effective(model);
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
            latency_dist: p.latency_dist,
            first_byte_ms: p.first_byte_ms,
            truncate_rate: p.truncate_rate,
            stream_chunk_ms: p.stream_chunk_ms,
            stream_error_rate: p.stream_error_rate,
            stream_fail_first: p.stream_fail_first,
            stream_fault: p.stream_fault,
        }
    }
}

/// One admitted API request.
pub(crate) struct Call {
    sim: Simulator,
    pub api: &'static str,
    pub model: String,
    pub knobs: Knobs,
    pub started: Instant,
    /// Random id for the provider's request-id header.
    pub request_id: String,
    request_bytes: u64,
    /// Start of the last user message, for the request log.
    prompt: Option<String>,
    /// Status and seconds left when the request arrived inside an outage window.
    outage: Option<(u16, u64)>,
    /// Why the answer is abnormal, for the request log (first one set wins).
    fault: OnceLock<&'static str>,
    /// Counted already (answered, or held by `hang`).
    recorded: std::sync::atomic::AtomicBool,
}

impl Drop for Call {
    /// A request whose client went away before it was answered still happened (a real
    /// provider bills the work it started): count and log it, status 0, fault
    /// `client_gone`.
    fn drop(&mut self) {
        if !self.recorded.load(std::sync::atomic::Ordering::Acquire) {
            self.set_fault("client_gone");
            self.record(None);
        }
    }
}

impl Call {
    fn key(&self) -> String {
        format!("{}/{}", self.api, self.model)
    }

    fn set_fault(&self, fault: &'static str) {
        let _ = self.fault.set(fault);
    }

    /// Count the request (once) and append it to the log; `None` for a request never
    /// answered (`hang`, or its client went away).
    fn record(&self, status: Option<StatusCode>) {
        if self
            .recorded
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let status_text = status.as_ref().map_or("hang", StatusCode::as_str);
        self.sim.inner.record(&self.key(), status_text);
        let entry = LogEntry {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            api: self.api,
            model: self.model.clone(),
            status: status.map_or(0, |s| s.as_u16()),
            latency_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            fault: self.fault.get().copied(),
            request_bytes: self.request_bytes,
            prompt: self.prompt.clone(),
        };
        self.sim.inner.log(entry);
    }

    /// The fault to answer with when the request arrived during an outage (answer it
    /// like an injected error of the window's status, before any other check).
    pub fn outage(&self) -> Option<Fault> {
        let (status, left) = self.outage?;
        self.set_fault("outage");
        Some(Fault::Injected {
            status,
            retry_after_s: left,
        })
    }

    /// Rate limits, `fail_first` and `error_rate` for a valid request needing
    /// `prompt_tokens`; returns the fault (if any) and the rate-limit state after it.
    pub fn check_faults(&self, prompt_tokens: u64) -> (Option<Fault>, RateSnapshot) {
        let (fault, snap) = self
            .sim
            .inner
            .check_faults(&self.key(), &self.knobs, prompt_tokens);
        match fault {
            Some(Fault::RateLimited { .. }) => self.set_fault("rate_limited"),
            Some(Fault::Injected { .. }) => self.set_fault("injected"),
            None => {}
        }
        (fault, snap)
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
        let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        self.answer(status, headers, "application/json", bytes)
    }

    /// Count the answer and build a response with a raw body and content type.
    pub fn respond_raw(
        &self,
        status: StatusCode,
        headers: Vec<(HeaderName, String)>,
        content_type: &'static str,
        body: String,
    ) -> Response {
        self.answer(status, headers, content_type, body.into_bytes())
    }

    /// Count and log a streamed 200 answer and build its response: `events` (each a
    /// whole SSE event, blank line included) go out one by one, `stream_chunk_ms` apart,
    /// the first after `first_byte_ms`. When the answer breaks (`stream_fail_first`,
    /// `stream_error_rate`), only the first half of the events go out (at least one,
    /// never all), then `error_event` (`stream_fault: "error"`) or nothing and the
    /// connection is dropped (`"cut"`).
    pub fn respond_sse(
        &self,
        headers: Vec<(HeaderName, String)>,
        content_type: &'static str,
        mut events: Vec<String>,
        error_event: String,
    ) -> Response {
        let breaks = self.sim.inner.stream_breaks(&self.key(), &self.knobs);
        let mut cut = false;
        if breaks && events.len() > 1 {
            events.truncate((events.len() / 2).max(1));
            match self.knobs.stream_fault {
                StreamFault::Error => {
                    self.set_fault("stream_error");
                    events.push(error_event);
                }
                StreamFault::Cut => {
                    self.set_fault("stream_cut");
                    cut = true;
                }
            }
        }
        self.record(Some(StatusCode::OK));
        let first = Duration::from_millis(self.knobs.first_byte_ms);
        let gap = Duration::from_millis(self.knobs.stream_chunk_ms);
        let release = self.sim.inner.release_token();
        let body = futures::stream::unfold(
            (events.into_iter(), true, cut),
            move |(mut it, first_one, cut)| {
                let release = release.clone();
                async move {
                    let wait = if first_one { first } else { gap };
                    if !wait.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = release.cancelled() => {}
                        }
                    }
                    match it.next() {
                        Some(ev) => Some((Ok(Bytes::from(ev)), (it, false, cut))),
                        None if cut => Some((
                            Err(std::io::Error::other("simulated cut mid-stream")),
                            (it, false, false),
                        )),
                        None => None,
                    }
                }
            },
        );
        let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        add_headers(&mut resp, headers);
        resp
    }

    /// Apply `truncate_rate` and `first_byte_ms`, count and log the answer.
    fn answer(
        &self,
        status: StatusCode,
        headers: Vec<(HeaderName, String)>,
        content_type: &'static str,
        mut bytes: Vec<u8>,
    ) -> Response {
        let rate = self.knobs.truncate_rate;
        if status == StatusCode::OK && rate > 0.0 && rand::random::<f64>() < rate {
            bytes.truncate(bytes.len() / 2);
            self.set_fault("truncated");
        }
        self.record(Some(status));
        let body = if self.knobs.first_byte_ms > 0 {
            delayed_body(
                bytes,
                Duration::from_millis(self.knobs.first_byte_ms),
                self.sim.inner.release_token(),
            )
        } else {
            Body::from(bytes)
        };
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        add_headers(&mut resp, headers);
        resp
    }
}

/// A streamed body that yields `bytes` after `wait` (or at once when `release` fires,
/// so that shutdown is not held up): the headers go out first.
fn delayed_body(bytes: Vec<u8>, wait: Duration, release: CancellationToken) -> Body {
    let chunk = futures::stream::once(async move {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = release.cancelled() => {}
        }
        Ok::<_, std::convert::Infallible>(Bytes::from(bytes))
    });
    Body::from_stream(chunk)
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

/// One page of a list endpoint: `all` newest first, the items after the one whose `id` is
/// `after` (from the start without it), at most `limit`; with `has_more` and the page's
/// first and last ids.
pub(crate) fn list_page(
    all: Vec<serde_json::Value>,
    after: Option<&str>,
    limit: usize,
) -> (
    Vec<serde_json::Value>,
    bool,
    serde_json::Value,
    serde_json::Value,
) {
    let start = match after {
        Some(a) => all
            .iter()
            .position(|b| b["id"] == a)
            .map_or(all.len(), |p| p + 1),
        None => 0,
    };
    let total = all.len();
    let page: Vec<serde_json::Value> = all.into_iter().skip(start).take(limit).collect();
    let has_more = total > start + page.len();
    let id = |b: Option<&serde_json::Value>| b.map_or(serde_json::Value::Null, |b| b["id"].clone());
    let (first, last) = (id(page.first()), id(page.last()));
    (page, has_more, first, last)
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

/// `?limit=` of `GET /_sim/log`.
#[derive(Deserialize)]
struct LogQuery {
    limit: Option<usize>,
}

async fn admin_log(
    State(sim): State<Simulator>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    let limit = match query {
        Ok(Query(q)) => q.limit.unwrap_or(DEFAULT_LOG_LIMIT),
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                Vec::new(),
                &serde_json::json!({"error": format!("invalid query: {e}")}),
            )
        }
    };
    let body = serde_json::to_value(sim.log(limit)).unwrap_or_default();
    json_response(StatusCode::OK, Vec::new(), &body)
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

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod fault_tests;

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod serve_tests;
