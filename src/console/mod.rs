//! The operator web console (`switchyard console`): server-rendered pages over Postgres
//! and NATS — overview (backlog, last hour, budgets), jobs (search, a job's calls), dead
//! letters (list, show, replay, purge: through the CLI's own `dlq` code) and spend (the
//! `report costs` numbers, a chart by day, the same CSV/JSON). Assets are compiled in.
//! The workers and their breakers are heard on the heartbeat subject ([`workers`]).
//! Who may do what: [`auth`]. Every value rendered goes through [`html::esc`].

pub mod auth;
pub mod html;
mod pages;
pub mod workers;

use crate::config::Config;
use crate::queue::Names;
use async_nats::jetstream;
use auth::{Auth, Form, Session};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a request failed; each renders a page with its status.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("sign in first: a bearer token or the login form")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for ConsoleError {
    fn from(e: crate::store::StoreError) -> Self {
        ConsoleError::Internal(e.to_string())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            ConsoleError::Unauthorized => (StatusCode::UNAUTHORIZED, "Sign in"),
            ConsoleError::Forbidden(_) => (StatusCode::FORBIDDEN, "Not allowed"),
            ConsoleError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            ConsoleError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            ConsoleError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Error"),
        };
        let mut body = format!("<p class=\"error\">{}</p>", html::esc(&self.to_string()));
        if matches!(self, ConsoleError::Unauthorized) {
            body.push_str(LOGIN_FORM);
        }
        (status, axum::response::Html(html::page(title, None, &body))).into_response()
    }
}

/// Everything a handler reads.
pub struct Console {
    pub cfg: Config,
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub names: Names,
    /// The workers heard on `<prefix>.ctl.heartbeat`, with their breakers.
    pub workers: Arc<workers::Workers>,
}

type Shared = Arc<Console>;

/// The console's routes over `console`, behind `auth`.
pub fn router(console: Console, auth: Auth) -> Router {
    let auth = Arc::new(auth);
    let guarded = Router::new()
        .route("/", get(pages::overview::show))
        .route("/jobs", get(pages::jobs::search))
        .route("/jobs/{tenant}/{id}", get(pages::jobs::show))
        .route("/dlq", get(pages::dlq::list))
        .route("/dlq/{tenant}/{id}", get(pages::dlq::show))
        .route("/dlq/replay", post(pages::dlq::replay))
        .route("/dlq/purge", post(pages::dlq::purge))
        .route("/spend", get(pages::spend::show))
        .route("/spend/download", get(pages::spend::download))
        .route("/logout", post(logout))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            auth::require,
        ))
        .with_state(Arc::new(console));
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .with_state(auth)
        .merge(guarded)
}

/// Connect, check the exposure rule, and serve on `listener` until `stop`.
pub async fn serve(
    cfg: Config,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    cfg.console.check_exposure(addr)?;
    let pool = crate::connect::postgres(&cfg.postgres, 4).await?;
    let client = crate::connect::nats(&cfg.nats, crate::connect::NATS_PATIENCE).await?;
    let auth = Auth::new(&cfg.console);
    let workers = Arc::new(workers::Workers::new(chrono::Utc::now()));
    let hush = stop.child_token();
    let listening = workers
        .clone()
        .listen(&client, &cfg.nats.prefix, hush.clone())
        .await?;
    let console = Console {
        names: Names::new(&cfg.nats.prefix),
        js: jetstream::new(client),
        pool,
        cfg,
        workers,
    };
    tracing::info!(%addr, auth = auth.enabled(), "console listening");
    let served = axum::serve(listener, router(console, auth))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    hush.cancel();
    let _ = listening.await;
    served?;
    Ok(())
}

const LOGIN_FORM: &str = "<form method=\"post\" action=\"/login\" class=\"login\">\
    <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label>\
    <button>Sign in</button></form>";

async fn login_page() -> impl IntoResponse {
    axum::response::Html(html::page("Sign in", None, LOGIN_FORM))
}

/// The login form: a configured token sets the HttpOnly cookie.
async fn login(
    axum::extract::State(auth): axum::extract::State<Arc<Auth>>,
    body: axum::body::Bytes,
) -> Response {
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !auth.enabled() || auth.check(&token, false).is_none() {
        let body = format!(
            "<p class=\"error\">{}</p>{LOGIN_FORM}",
            if auth.enabled() {
                "That token is not one of the console's."
            } else {
                "Authentication is off (no [console] tokens): nothing to sign in to."
            }
        );
        return (
            StatusCode::UNAUTHORIZED,
            axum::response::Html(html::page("Sign in", None, &body)),
        )
            .into_response();
    }
    // A token is sent back only as this cookie (never rendered, never logged).
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/",
        auth::COOKIE,
        form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn logout(
    Extension(session): Extension<Session>,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    Form::parse(&body, &session)?;
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
}
