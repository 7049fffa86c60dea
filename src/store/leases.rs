//! Leases on running jobs, and the budget reservations they own.
//!
//! A claim ([`super::claims`]) takes a job's lease: a token and an expiry in its `jobs` row.
//! The [`LeaseKeeper`] renews every lease this worker holds in one statement every
//! `lease / 3`, releases the leases of job tasks that ended without a commit (a panic, the
//! end of the shutdown grace period), and sweeps budget reservations whose lease is gone
//! (their worker died). A lease ends normally in the commit that lands the job's final row
//! or hands it back ([`super::writer`]); [`Lease::finish`] then stops renewing it.

use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often reservations of dead leases are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Held {
    tenant: String,
    id: String,
    lost: Arc<AtomicBool>,
}

struct Inner {
    /// This process: tokens are `<worker>-<n>`.
    worker: String,
    next: AtomicU64,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
    abandoned: mpsc::UnboundedSender<String>,
}

/// Owns every lease this worker holds. Cheap to clone.
#[derive(Clone)]
pub struct LeaseKeeper {
    inner: Arc<Inner>,
}

/// One job's lease. Not `Clone`: exactly one task owns it. Dropped without
/// [`Lease::finish`], it is released (with its budget reservation) in the background.
#[must_use = "a lease must be finished after its commit, or it is released as abandoned"]
pub struct Lease {
    token: String,
    lost: Arc<AtomicBool>,
    keeper: LeaseKeeper,
    done: bool,
}

impl Lease {
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Another worker may have taken the job: the renewal found the lease gone.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The commit that ended this delivery released the lease in Postgres: stop renewing.
    pub fn finish(mut self) {
        self.done = true;
        self.keeper.forget(&self.token);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            self.keeper.forget(&self.token);
            let _ = self.keeper.inner.abandoned.send(self.token.clone());
        }
    }
}

impl LeaseKeeper {
    /// Start renewing, releasing and sweeping until `stop`; the returned task ends then
    /// (after releasing what was abandoned).
    pub fn start(
        pool: PgPool,
        ttl: Duration,
        stop: CancellationToken,
    ) -> (LeaseKeeper, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let keeper = LeaseKeeper {
            inner: Arc::new(Inner {
                worker,
                next: AtomicU64::new(1),
                ttl,
                held: Mutex::new(HashMap::new()),
                abandoned: tx,
            }),
        };
        let task = tokio::spawn(keep(pool, keeper.clone(), rx, stop));
        (keeper, task)
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// A token for the next claim; unique across the pool.
    pub fn new_token(&self) -> String {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.worker)
    }

    /// The claim with `token` succeeded: hold (and renew) the lease from now on.
    pub fn hold(&self, token: String, tenant: &str, id: &str) -> Lease {
        let lost = Arc::new(AtomicBool::new(false));
        if let Ok(mut held) = self.inner.held.lock() {
            held.insert(
                token.clone(),
                Held {
                    tenant: tenant.to_string(),
                    id: id.to_string(),
                    lost: lost.clone(),
                },
            );
        }
        Lease {
            token,
            lost,
            keeper: self.clone(),
            done: false,
        }
    }

    /// A claim that failed in a way that may have taken the lease anyway (its answer was
    /// lost): release whatever it took.
    pub fn release_token(&self, token: String) {
        let _ = self.inner.abandoned.send(token);
    }

    fn forget(&self, token: &str) {
        if let Ok(mut held) = self.inner.held.lock() {
            held.remove(token);
        }
    }

    pub fn held(&self) -> usize {
        self.inner.held.lock().map(|h| h.len()).unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<(String, String, String)> {
        self.inner
            .held
            .lock()
            .map(|h| {
                h.iter()
                    .map(|(tok, x)| (x.tenant.clone(), x.id.clone(), tok.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mark_lost(&self, token: &str) {
        if let Ok(held) = self.inner.held.lock() {
            if let Some(h) = held.get(token) {
                h.lost.store(true, Ordering::Release);
            }
        }
    }
}

async fn keep(
    pool: PgPool,
    keeper: LeaseKeeper,
    mut abandoned: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
) {
    let every = (keeper.ttl() / 3).max(Duration::from_millis(200));
    let mut renew = tokio::time::interval(every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = renew.tick() => renew_all(&pool, &keeper).await,
            _ = sweep.tick() => {
                if let Err(e) = super::budgets::sweep_reservations(&pool).await {
                    tracing::debug!(error = %e, "reservation sweep failed; trying again later");
                }
            }
            Some(tok) = abandoned.recv() => {
                pending.push(tok);
                while let Ok(t) = abandoned.try_recv() {
                    pending.push(t);
                }
                if release(&pool, &pending).await.is_ok() {
                    pending.clear();
                }
            }
        }
    }
    while let Ok(t) = abandoned.try_recv() {
        pending.push(t);
    }
    if !pending.is_empty() {
        if let Err(e) = release(&pool, &pending).await {
            tracing::warn!(error = %e, leases = pending.len(),
                "releasing abandoned leases failed; they expire on their own");
        }
    }
}

/// The rows are locked first, in (tenant, id) order, as every batch statement locks
/// them (claims and commits send theirs sorted): a renewal and a commit never deadlock.
const RENEW_SQL: &str = r#"
WITH held AS (
    SELECT j.tenant, j.id, x.token
      FROM jobs j
      JOIN unnest($1::text[], $2::text[], $3::text[]) AS x(tenant, id, token)
        ON j.tenant = x.tenant AND j.id = x.id AND j.lease_token = x.token
     ORDER BY j.tenant, j.id
       FOR UPDATE OF j
)
UPDATE jobs j SET lease_until = now() + make_interval(secs => $4)
  FROM held h
 WHERE j.tenant = h.tenant AND j.id = h.id AND j.lease_token = h.token
RETURNING j.lease_token
"#;

async fn renew_all(pool: &PgPool, keeper: &LeaseKeeper) {
    let held = keeper.snapshot();
    if held.is_empty() {
        return;
    }
    let mut tenants = Vec::with_capacity(held.len());
    let mut ids = Vec::with_capacity(held.len());
    let mut tokens = Vec::with_capacity(held.len());
    for (t, i, tok) in held {
        tenants.push(t);
        ids.push(i);
        tokens.push(tok);
    }
    let renewed: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(RENEW_SQL)
        .bind(&tenants)
        .bind(&ids)
        .bind(&tokens)
        .bind(keeper.ttl().as_secs_f64())
        .fetch_all(pool)
        .await;
    match renewed {
        Ok(renewed) => {
            let renewed: std::collections::HashSet<String> = renewed.into_iter().collect();
            for tok in tokens.iter().filter(|t| !renewed.contains(*t)) {
                // Either its commit landed a moment ago (it is finished next) or another
                // worker took the job over after the lease ran out.
                keeper.mark_lost(tok);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, leases = tokens.len(), "renewing leases failed");
        }
    }
}

/// Release leases (and the budget they hold) of job tasks that ended without a commit.
const RELEASE_SQL: &str = r#"
WITH rel AS (
    UPDATE jobs SET lease_token = NULL, lease_until = NULL
     WHERE lease_token = ANY($1::text[])
    RETURNING 1
)
SELECT count(*) FROM rel
"#;

async fn release(pool: &PgPool, tokens: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let _: i64 = sqlx::query_scalar(RELEASE_SQL)
        .bind(tokens)
        .fetch_one(&mut *tx)
        .await?;
    super::budgets::release_reservations(&mut tx, tokens).await?;
    tx.commit().await?;
    tracing::debug!(leases = tokens.len(), "released abandoned leases");
    Ok(())
}
