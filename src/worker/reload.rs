//! Hot reload: a running worker reads its config again on SIGHUP (and, with
//! `worker.watch_config`, when the file changes) and applies routes, models and prices,
//! provider settings and rate limits, `[limits]`, `[routing]`, `[health]`, `[reply_to]`
//! and `[cache]` without dropping a job, then reads budgets from Postgres again.
//!
//! - A file that does not load (bad TOML, a wrong field, a provider whose key variable is
//!   unset) is refused with the error that names it; the running config stays.
//! - Jobs already running finish with the config they started with (they hold their
//!   [`Ctx`]); jobs taken after the reload use the new one.
//! - `[nats]`, `[postgres]`, `[worker]`, `[ratelimit]`, `[metrics]` and `[scheduling]` are read at start
//!   only: a change there is logged as needing a restart, and the running values stay.
//! - Breakers and latency averages of models that stay are kept; a new model starts closed.

use super::Ctx;
use crate::config::Config;
use crate::providers::Providers;
use anyhow::Context as _;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Reads the config again (the same file and environment the worker started from).
pub type LoadConfig = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// How a running worker is told to reload.
#[derive(Clone)]
pub struct Reloader {
    pub load: LoadConfig,
    /// Notified on SIGHUP (or by a test).
    pub trigger: Arc<Notify>,
    /// Poll this file and reload when its content changes (`worker.watch_config`).
    pub watch: Option<PathBuf>,
    /// Told the outcome of each reload (besides the log), if set.
    pub report: Option<tokio::sync::mpsc::UnboundedSender<Result<Applied, String>>>,
}

/// The context new jobs get; replaced whole by a reload.
pub struct CtxCell(RwLock<Arc<Ctx>>);

impl CtxCell {
    pub fn new(ctx: Arc<Ctx>) -> CtxCell {
        CtxCell(RwLock::new(ctx))
    }

    pub fn get(&self) -> Arc<Ctx> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    fn set(&self, ctx: Arc<Ctx>) {
        match self.0.write() {
            Ok(mut g) => *g = ctx,
            Err(e) => *e.into_inner() = ctx,
        }
    }
}

/// Sections read only at start, by name.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let mut out = Vec::new();
    if differs(&old.nats, &new.nats) {
        out.push("nats");
    }
    if differs(&old.postgres, &new.postgres) {
        out.push("postgres");
    }
    if differs(&old.worker, &new.worker) {
        out.push("worker");
    }
    if differs(&old.ratelimit, &new.ratelimit) {
        out.push("ratelimit");
    }
    if differs(&old.metrics, &new.metrics) {
        out.push("metrics");
    }
    if differs(&old.scheduling, &new.scheduling) {
        out.push("scheduling");
    }
    out
}

/// What a reload did, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub providers: usize,
    pub models: usize,
    /// Sections that changed but need a restart (kept as they were).
    pub needs_restart: Vec<&'static str>,
}

/// Build the context for `new` from the running one: everything that lives with the
/// worker (its Postgres loops, NATS client, leases, metrics) is shared; what the file
/// says is new. Limits are changed in place (the cluster shares them at the next
/// heartbeat). Nothing is changed when this fails.
pub fn apply(cell: &CtxCell, mut new: Config) -> anyhow::Result<Applied> {
    let cur = cell.get();
    let needs_restart = restart_only(&cur.cfg, &new);
    // The running values stay for what a reload cannot change.
    new.nats = cur.cfg.nats.clone();
    new.postgres = cur.cfg.postgres.clone();
    new.worker = cur.cfg.worker.clone();
    new.ratelimit = cur.cfg.ratelimit.clone();
    new.metrics = cur.cfg.metrics.clone();
    new.scheduling = cur.cfg.scheduling.clone();
    let providers = Providers::from_config(&new).context("providers")?;
    let health = Arc::new(cur.health.reconfigured(&new));
    cur.metrics.watch_health(health.clone());
    cur.limiters.reconfigure(&new);
    let cfg = Arc::new(new);
    let ctx = Ctx {
        cfg: cfg.clone(),
        rules: cfg.parse_rules(),
        router: crate::router::Router::new(&cfg),
        providers,
        limiters: cur.limiters.clone(),
        budgets: cur.budgets.clone(),
        claimer: cur.claimer.clone(),
        writer: cur.writer.clone(),
        cache: cur.cache.clone(),
        leases: cur.leases.clone(),
        infra: cur.infra.clone(),
        clock: cur.clock.clone(),
        exact_tokens: super::exact_tokens(&cfg),
        publisher: cur.publisher.clone(),
        metrics: cur.metrics.clone(),
        health,
        abort: cur.abort.clone(),
        batching: cur.batching.clone(),
        shadow: cur.shadow.clone(),
    };
    let applied = Applied {
        providers: cfg.providers.len(),
        models: cfg.models.len(),
        needs_restart,
    };
    cell.set(Arc::new(ctx));
    // Budgets (and their limits) are read again at the next job.
    cur.budgets.invalidate();
    Ok(applied)
}

/// Reload whenever `reloader` is triggered (or its watched file changes) until `stop`.
pub async fn run(cell: Arc<CtxCell>, reloader: Reloader, stop: CancellationToken) {
    let mut seen = reloader.watch.as_ref().and_then(|p| std::fs::read(p).ok());
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = reloader.trigger.notified() => "signal",
            _ = poll.tick(), if reloader.watch.is_some() => {
                let now = reloader.watch.as_ref().and_then(|p| std::fs::read(p).ok());
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
        };
        let load = reloader.load.clone();
        let loaded = match tokio::task::spawn_blocking(move || load()).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("reading the config panicked: {e}")),
        };
        let outcome = loaded.and_then(|cfg| apply(&cell, cfg));
        cell.get().metrics.reloaded(outcome.is_ok());
        if let Some(tx) = &reloader.report {
            let _ = tx.send(match &outcome {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(format!("{e:#}")),
            });
        }
        match outcome {
            Ok(a) => {
                tracing::info!(
                    trigger = why,
                    providers = a.providers,
                    models = a.models,
                    "config reloaded: routes, models, prices, providers and limits"
                );
                if !a.needs_restart.is_empty() {
                    tracing::warn!(sections = ?a.needs_restart,
                        "config reload: these sections changed but are read at start only; restart the worker to apply them");
                }
            }
            Err(e) => {
                tracing::error!(trigger = why, error = %format!("{e:#}"),
                    "config reload refused; the running config stays");
            }
        }
    }
}
