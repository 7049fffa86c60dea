//! `switchyard serve`: an OpenAI-compatible HTTP front door. It is a producer: each
//! request becomes a job published to `<prefix>.jobs.<priority>.<tenant>` with a reply
//! subject this process listens on, and the job's result (and chunks, for `stream: true`)
//! is answered in OpenAI's shapes. Workers (`switchyard worker`, unchanged) do the calls;
//! the front door never calls a provider. Owns: HTTP, API keys, the OpenAI ↔ job mapping,
//! and OpenAI Batch files (`files`, `batches`, whose rows `store::frontdoor` writes).

mod auth;
mod batches;
mod chat;
pub mod chat_map;
pub mod error;
mod files;
mod multipart;
pub mod openai_batch;
mod replies;

pub use auth::hash_key;

use crate::config::Config;
use crate::job::ParseRules;
use crate::queue::Names;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    #[error("connecting: {0}")]
    Connect(#[from] crate::connect::ConnectError),
    #[error("NATS: {0}")]
    Flush(#[from] async_nats::client::FlushError),
    #[error("subscribing to replies: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("postgres: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Everything a request handler needs.
#[derive(Debug)]
pub(crate) struct State {
    pub cfg: Config,
    pub keys: auth::Keys,
    pub js: async_nats::jetstream::Context,
    pub names: Names,
    pub rules: ParseRules,
    pub replies: Arc<replies::Replies>,
    pub pool: PgPool,
}

/// A fresh job id: `<what>-<random>`; a valid job id and reply-subject token.
pub(crate) fn new_id(what: &str) -> String {
    format!(
        "{what}-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// Serve on `listener` until `stop`; batches already created are collected on the way.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Result<(), FrontDoorError> {
    let client = crate::connect::nats(&cfg.nats, crate::connect::NATS_PATIENCE).await?;
    let pool = crate::connect::postgres(&cfg.postgres, 8).await?;
    crate::store::migrate(&pool).await?;
    let serve_id = format!("sy-fd-{}-{:08x}", cfg.nats.prefix, rand::random::<u32>());
    let replies = replies::Replies::start(&client, &serve_id, stop.clone()).await?;
    client.flush().await?;
    let state = Arc::new(State {
        keys: auth::Keys::from_config(&cfg.serve),
        js: async_nats::jetstream::new(client.clone()),
        names: Names::new(&cfg.nats.prefix),
        rules: cfg.parse_rules(),
        replies,
        pool,
        cfg,
    });
    let collector = tokio::spawn(batches::collect_loop(state.clone(), stop.clone()));
    let app = router(state);
    tracing::info!(addr = ?listener.local_addr().ok(), "front door listening");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await;
    stop.cancel();
    let _ = collector.await;
    Ok(served?)
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(chat::models))
        .route("/v1/files", post(files::upload).get(files::list))
        .route("/v1/files/{id}", get(files::get))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .fallback(|| async {
            error::ApiError::not_found(
                "unknown_url",
                "unknown URL: see DESIGN.md \"serve\" for the endpoints",
            )
        })
        .with_state(state)
}
