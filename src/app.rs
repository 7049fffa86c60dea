//! Wiring: connect, set up streams and tables, start the claim and commit loops, the
//! scheduler and the job tasks; shut down in order on a signal.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::job::Priority;
use crate::providers::Providers;
use crate::queue::publish::Publisher;
use crate::queue::scheduler::{PullGate, Scheduler, Source};
use crate::queue::tenants::Tenants;
use crate::queue::{streams, Names};
use crate::ratelimit::Limiters;
use crate::router::Router;
use crate::store::{self, Claimer, LeaseKeeper, Writer};
use crate::telemetry::metrics::{serve as serve_metrics, Metrics};
use crate::worker::infra::Infra;
use crate::worker::reload::{CtxCell, Reloader};
use crate::worker::{Ctx, JobDispatch};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a starting worker waits for a NATS server that does not answer yet.
const WORKER_NATS_PATIENCE: Duration = Duration::from_secs(30);

/// Pull nothing while more than `max` held jobs are not calling a provider (most of them
/// waiting for a rate limit): the backlog stays in JetStream.
struct LimitGate {
    limiters: Limiters,
    metrics: Arc<Metrics>,
    max: usize,
}

impl PullGate for LimitGate {
    fn room(&self) -> usize {
        let held = self
            .metrics
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed);
        let idle = usize::try_from(held)
            .unwrap_or(0)
            .saturating_sub(self.limiters.calling());
        self.max.saturating_sub(idle)
    }
}

/// `worker.max_waiting_at_limits`, or five seconds' worth of the providers' `rpm` (at
/// least 32), or no limit but the slots when no provider has an `rpm`.
fn max_waiting_at_limits(cfg: &Config) -> usize {
    if let Some(n) = cfg.worker.max_waiting_at_limits {
        return n;
    }
    let rpm: Option<u64> = cfg
        .providers
        .iter()
        .filter_map(|p| p.rpm.map(u64::from))
        .reduce(|a, b| a + b);
    match rpm {
        Some(rpm) => usize::try_from(rpm.div_ceil(12))
            .unwrap_or(usize::MAX)
            .max(32),
        None => cfg.worker.max_in_flight,
    }
}

/// The heartbeat's breakers: those of the registry in use (a reload hands over a new one).
fn breaker_feed(metrics: Arc<Metrics>) -> crate::ratelimit::BreakerFeed {
    Box::new(move || {
        metrics
            .health()
            .map_or_else(Vec::new, |h| crate::ratelimit::breaker_report(&h))
    })
}

/// Run a worker until `shutdown` is cancelled, then drain: stop pulling, let in-flight
/// jobs finish within `worker.shutdown_grace_s`, hand the rest back, flush, return.
/// With `reload`, the config is read again when it is triggered (SIGHUP) or its file
/// changes ([`crate::worker::reload`]).
pub async fn run_worker(
    cfg: Config,
    providers: Providers,
    shutdown: CancellationToken,
    reload: Option<Reloader>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let client = crate::connect::nats(&cfg.nats, WORKER_NATS_PATIENCE).await?;
    let js = async_nats::jetstream::new(client.clone());
    let consumers = streams::ensure(&js, &cfg).await?;
    let pool = crate::connect::postgres(&cfg.postgres, cfg.postgres.max_connections).await?;
    store::migrate(&pool).await?;

    let linger = Duration::from_millis(cfg.worker.commit_linger_ms);
    let lease_ttl = Duration::from_secs(cfg.worker.lease_s.max(1));
    let (claimer, claim_loop) =
        Claimer::start(pool.clone(), cfg.worker.commit_batch, linger, lease_ttl);
    let (writer, commit_loop) = Writer::start(pool.clone(), cfg.worker.commit_batch, linger);
    let (cache, cache_loop) =
        store::cache::CacheLookups::start(pool.clone(), cfg.worker.commit_batch, linger);
    let keeper_stop = CancellationToken::new();
    let (leases, lease_loop) = LeaseKeeper::start(pool.clone(), lease_ttl, keeper_stop.clone());
    let abort = CancellationToken::new();
    let metrics = Arc::new(Metrics::new(&cfg));
    // Breakers and latency per provider+model, shown on /metrics.
    let health = Arc::new(crate::health::Health::new(&cfg));
    metrics.watch_health(health.clone());
    let infra = Infra::new(client.clone(), metrics.clone());
    let infra_stop = CancellationToken::new();
    let infra_task = tokio::spawn(infra.clone().monitor(pool.clone(), infra_stop.clone()));
    // Expired response-cache entries (swept whether or not this worker's cache is on:
    // another worker's, or an earlier config's, may have stored them).
    let cache_sweep = tokio::spawn(store::cache::sweep_until(pool.clone(), infra_stop.clone()));
    // Give freed memory back after bursts (jobs held, or calls in flight).
    tokio::spawn(crate::alloc::trim_after_bursts(
        {
            let m = metrics.clone();
            move || {
                let jobs = m.in_flight.load(std::sync::atomic::Ordering::Relaxed);
                usize::try_from(jobs).unwrap_or(0) + crate::providers::calls_in_flight()
            }
        },
        infra_stop.clone(),
    ));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics_stop = CancellationToken::new();
    let metrics_task = if cfg.metrics.addr.is_empty() {
        None
    } else {
        let (addr, m, stop) = (
            cfg.metrics.addr.clone(),
            metrics.clone(),
            metrics_stop.clone(),
        );
        // Backlog and budget gauges, read every `metrics.poll_ms`.
        let poller = crate::telemetry::poll::Poller {
            metrics: metrics.clone(),
            js: async_nats::jetstream::new(client.clone()),
            names: Names::new(&cfg.nats.prefix),
            pool: pool.clone(),
            every: Duration::from_millis(cfg.metrics.poll_ms),
            fair: cfg.scheduling.fair,
        };
        let poll_stop = stop.clone();
        Some(tokio::spawn(async move {
            let polling = tokio::spawn(poller.run(poll_stop));
            if let Err(e) = serve_metrics(&addr, m, stop).await {
                tracing::error!(addr = %addr, error = %e, "metrics endpoint failed");
            }
            let _ = polling.await;
        }))
    };
    let limiters = Limiters::new(&cfg);
    let limits_stop = CancellationToken::new();
    let limits_task = limiters
        .join(
            client.clone(),
            &cfg.nats.prefix,
            limits_stop.clone(),
            Some(breaker_feed(metrics.clone())),
        )
        .await
        .context("subscribing to the other workers' heartbeats")?;
    let budgets = Arc::new(crate::budget::Budgets::new(
        pool.clone(),
        clock.clone(),
        cfg.worker.commit_batch,
        linger,
    ));
    let batching = Arc::new(crate::worker::batcher::Batching {
        pool: pool.clone(),
        apis: crate::providers::batch::BatchApis::from_config(&cfg)?,
    });
    let publisher = Publisher {
        client: client.clone(),
        js,
        names: Names::new(&cfg.nats.prefix),
    };
    // Provider batches: gathered, sent, polled and fanned out beside the job tasks.
    let batch_task = tokio::spawn(
        crate::worker::batcher::Batcher {
            cfg: cfg.clone(),
            batching: batching.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
        }
        .run(infra_stop.clone()),
    );
    let shadow = crate::worker::shadow::ShadowRunner::new(pool.clone(), cfg.shadow.max_concurrent);
    let ctx = Arc::new(Ctx {
        shadow: shadow.clone(),
        metrics: metrics.clone(),
        health,
        rules: cfg.parse_rules(),
        router: Router::new(&cfg),
        limiters: limiters.clone(),
        budgets: budgets.clone(),
        providers,
        claimer,
        writer,
        cache,
        leases,
        infra: infra.clone(),
        clock,
        exact_tokens: crate::worker::exact_tokens(&cfg),
        publisher,
        abort: abort.clone(),
        batching,
        cfg: cfg.clone(),
    });
    let ctx = Arc::new(CtxCell::new(ctx));
    let reload_stop = CancellationToken::new();
    let reload_task = reload.map(|r| {
        tokio::spawn(crate::worker::reload::run(
            ctx.clone(),
            r,
            reload_stop.clone(),
        ))
    });
    // `switchyard budget set` announces a change: read budgets again at once.
    let mut budget_news = client
        .subscribe(crate::budget::changed_subject(&cfg.nats.prefix))
        .await
        .context("subscribing to budget changes")?;
    let budget_watch = {
        let budgets = budgets.clone();
        let stop = limits_stop.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            loop {
                tokio::select! {
                    m = budget_news.next() => match m {
                        Some(_) => budgets.invalidate(),
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        })
    };
    let tracker = TaskTracker::new();
    let scheduler = Scheduler {
        source: match consumers {
            streams::Consumers::Priority(c) => Source::Priority(c),
            streams::Consumers::Tenant(stream) => {
                Source::Tenant(Arc::new(Tenants::new(client.clone(), *stream, &cfg)))
            }
        },
        weights: cfg.worker.priority_weights,
        slots: Arc::new(Semaphore::new(cfg.worker.max_in_flight)),
        ready: infra.ready(),
        gate: Arc::new(LimitGate {
            limiters,
            metrics: metrics.clone(),
            max: max_waiting_at_limits(&cfg),
        }),
        dispatch: Arc::new(JobDispatch {
            ctx: ctx.clone(),
            tracker: tracker.clone(),
        }),
    };
    tracing::info!(prefix = %cfg.nats.prefix, max_in_flight = cfg.worker.max_in_flight,
        priorities = ?Priority::ALL, "worker started");
    scheduler.run(shutdown.clone()).await;

    // Draining: nothing new is pulled; give in-flight jobs the grace period.
    tracker.close();
    let in_flight = tracker.len();
    tracing::info!(
        in_flight,
        grace_s = cfg.worker.shutdown_grace_s,
        "stopping: draining in-flight jobs"
    );
    let grace = Duration::from_secs(cfg.worker.shutdown_grace_s);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "grace period over: handing the rest back"
        );
        abort.cancel();
        tracker.wait().await;
    }
    // Shadow calls under way are cut short (their rows say so); none start after this.
    shadow.close().await;
    reload_stop.cancel();
    if let Some(t) = reload_task {
        let _ = t.await;
    }
    drop(ctx);
    // No more calls: give this worker's share of the limits back.
    limits_stop.cancel();
    let _ = limits_task.await;
    let _ = budget_watch.await;
    let _ = claim_loop.await;
    let _ = commit_loop.await;
    let _ = cache_loop.await;
    keeper_stop.cancel();
    let _ = lease_loop.await;
    infra_stop.cancel();
    let _ = infra_task.await;
    let _ = cache_sweep.await;
    let _ = batch_task.await;
    client.flush().await.context("flushing NATS")?;
    pool.close().await;
    metrics_stop.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}
