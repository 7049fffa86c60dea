//! Our own infrastructure's health: is Postgres answering, is NATS connected? While either
//! is away the worker pulls nothing (`/readyz` answers 503) and jobs in flight wait in
//! place, their messages kept alive, without spending a delivery; when both are back the
//! worker goes on. A job's own failures are counted elsewhere and always bounded.

use crate::store::StoreError;
use crate::telemetry::metrics::Metrics;
use sqlx::PgPool;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Longest pause between two tries of a store operation while Postgres is away.
const WAIT_MAX: Duration = Duration::from_secs(5);

pub struct Infra {
    store_down: AtomicBool,
    nats: async_nats::Client,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

/// Why a store operation gave up.
#[derive(Debug)]
pub enum Gave {
    /// Postgres refused this job's rows: retrying cannot help.
    Refused(StoreError),
    /// The worker is stopping.
    Stopping(StoreError),
}

impl Infra {
    pub fn new(nats: async_nats::Client, metrics: Arc<Metrics>) -> Arc<Infra> {
        let (ready, _) = watch::channel(false);
        Arc::new(Infra {
            store_down: AtomicBool::new(false),
            nats,
            ready,
            metrics,
        })
    }

    /// Becomes true while Postgres answers and NATS is connected.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn nats_up(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    pub fn store_up(&self) -> bool {
        !self.store_down.load(Ordering::Acquire)
    }

    /// Postgres did not answer: pause pulls until the monitor's probe gets through.
    pub fn store_failed(&self) {
        if !self.store_down.swap(true, Ordering::AcqRel) {
            tracing::warn!("postgres unavailable: pausing pulls until it answers");
            self.update();
        }
    }

    pub fn store_answered(&self) {
        if self.store_down.swap(false, Ordering::AcqRel) {
            tracing::info!("postgres answers again: pulling");
            self.update();
        }
    }

    fn update(&self) {
        let up = self.store_up() && self.nats_up();
        self.metrics.ready.store(up, Ordering::Relaxed);
        self.ready.send_if_modified(|r| {
            let changed = *r != up;
            *r = up;
            changed
        });
    }

    /// Watch NATS's connection and probe Postgres while it is marked away, until `stop`.
    pub async fn monitor(self: Arc<Self>, pool: PgPool, stop: CancellationToken) {
        self.update();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !self.store_up() {
                let probe =
                    tokio::time::timeout(Duration::from_secs(2), crate::store::ping(&pool)).await;
                if let Ok(Ok(_)) = probe {
                    self.store_answered();
                }
            }
            self.update();
        }
        self.metrics.ready.store(false, Ordering::Relaxed);
        self.ready.send_replace(false);
    }

    /// Run a store operation, waiting in place (with backoff) while Postgres is away,
    /// until it answers, refuses the job's rows, or `abort` (end of the grace period).
    pub async fn store<T, F, Fut>(&self, abort: &CancellationToken, mut op: F) -> Result<T, Gave>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut pause = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(v) => {
                    self.store_answered();
                    return Ok(v);
                }
                Err(e) if e.is_unavailable() => {
                    self.store_failed();
                    if abort.is_cancelled() || matches!(e, StoreError::Closed) {
                        return Err(Gave::Stopping(e));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = abort.cancelled() => return Err(Gave::Stopping(e)),
                    }
                    pause = (pause * 2).min(WAIT_MAX);
                }
                Err(e) => return Err(Gave::Refused(e)),
            }
        }
    }

    /// Wait until NATS is connected again (or `abort`); returns whether it is.
    pub async fn wait_nats(&self, abort: &CancellationToken) -> bool {
        while !self.nats_up() {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = abort.cancelled() => return false,
            }
        }
        true
    }
}
