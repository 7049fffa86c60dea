//! How the workers find each other and share the limits, over core NATS (no JetStream
//! feature, so any 2.9 server does): every worker publishes a [`Report`] on
//! `<prefix>.ctl.heartbeat` every `ratelimit.heartbeat_ms` and listens to everyone's
//! (its own included: hearing itself is how it knows the others can hear it). A 429's
//! cool-down goes out on `<prefix>.ctl.cooldown`. Nothing is stored: a worker that
//! stops being heard is gone after `ratelimit.member_timeout_ms`.
//!
//! The heartbeat also carries the worker's breakers that are not plainly closed
//! ([`ReportBreaker`], read from [`crate::health`] on the tick, not on a call's path),
//! for the console's overview; workers ignore them.

use super::window::PeerLog;
use super::{split, Amount, Limiters, Peer, PeerLimit};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One worker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub id: String,
    /// The worker is stopping: its share is free now (its log still counts).
    #[serde(default)]
    pub leaving: bool,
    /// Per rate-limited provider.
    pub limits: BTreeMap<String, ReportLimit>,
    /// Where the worker runs: `<hostname> pid <pid>` (for the console; absent from a
    /// worker that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The worker's breakers that are open, half-open or cooling down (absent from a
    /// worker that does not report them; empty: all closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakers: Option<Vec<ReportBreaker>>,
}

/// One provider+model breaker that is not plainly closed. Times are Unix ms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportBreaker {
    pub provider: String,
    pub model: String,
    /// `open`, `half_open`, or `closed` (then cooling down after a 429).
    pub state: String,
    /// When it entered that state.
    pub since_ms: i64,
    /// Server-side failures in a row so far.
    #[serde(default)]
    pub failures: u32,
    /// Open: when it may be probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until_ms: Option<i64>,
    /// Cooling down after a 429: until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cool_until_ms: Option<i64>,
    /// Why it last changed state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Where a worker's heartbeat reads its breakers from.
pub type BreakerFeed = Box<dyn Fn() -> Vec<ReportBreaker> + Send + Sync>;

/// `health`'s breakers that are not plainly closed, as a heartbeat carries them.
pub fn breaker_report(health: &crate::health::Health) -> Vec<ReportBreaker> {
    let (now, wall) = (Instant::now(), chrono::Utc::now().timestamp_millis());
    let unix = |t: Instant| {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if t >= now {
            wall.saturating_add(ms(t - now))
        } else {
            wall.saturating_sub(ms(now - t))
        }
    };
    health
        .unwell(now)
        .into_iter()
        .map(|(provider, model, look)| ReportBreaker {
            provider: provider.to_string(),
            model: model.to_string(),
            state: look.state.as_str().to_string(),
            since_ms: unix(look.since),
            failures: look.failures,
            open_until_ms: look.open_until.map(unix),
            cool_until_ms: look.cool_until.map(unix),
            reason: look.reason,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportLimit {
    /// The share the worker may use: requests and tokens per window.
    pub requests: u64,
    pub tokens: u64,
    /// Its window: `[age of the newest entry in ms, requests, tokens]` per second.
    pub log: Vec<[u64; 3]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cooldown {
    provider: String,
    model: String,
    /// Unix time in ms until which the provider+model is held.
    until_ms: i64,
}

/// Where cool-downs are announced.
pub(super) struct Link {
    client: async_nats::Client,
    cooldown_subject: String,
}

impl Link {
    pub(super) async fn announce_cooldown(&self, provider: &str, model: &str, d: Duration) {
        let until_ms = chrono::Utc::now().timestamp_millis() + d.as_millis() as i64;
        let msg = Cooldown {
            provider: provider.to_string(),
            model: model.to_string(),
            until_ms,
        };
        let Ok(body) = serde_json::to_vec(&msg) else {
            return;
        };
        if let Err(e) = self
            .client
            .publish(self.cooldown_subject.clone(), body.into())
            .await
        {
            tracing::warn!(error = %e, "could not announce a cool-down");
        }
    }
}

/// `<hostname> pid <pid>`: where this worker runs, as the console lists it.
fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "?".into());
    format!("{host} pid {}", std::process::id())
}

pub fn heartbeat_subject(prefix: &str) -> String {
    format!("{prefix}.ctl.heartbeat")
}

pub fn cooldown_subject(prefix: &str) -> String {
    format!("{prefix}.ctl.cooldown")
}

impl Limiters {
    /// Share the limits with the other workers of `prefix` until `stop` is cancelled,
    /// then announce that this worker leaves. Cancel `stop` only once this worker makes
    /// no more calls. Each heartbeat carries what `breakers` reads, when given.
    pub async fn join(
        &self,
        client: async_nats::Client,
        prefix: &str,
        stop: CancellationToken,
        breakers: Option<BreakerFeed>,
    ) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
        let heartbeats = heartbeat_subject(prefix);
        let mut hb = client.subscribe(heartbeats.clone()).await?;
        let mut cd = client.subscribe(cooldown_subject(prefix)).await?;
        let id = format!("{:08x}{:08x}", std::process::id(), rand::random::<u32>());
        self.enter_cluster(id.clone());
        let _ = self.inner.link.set(Link {
            client: client.clone(),
            cooldown_subject: cooldown_subject(prefix),
        });
        let me = self.clone();
        let host = Some(host_name());
        let period = self.inner.timing.heartbeat;
        tracing::info!(worker = %id, "sharing rate limits with the other workers");
        Ok(tokio::spawn(async move {
            // Listen for one period before the first announcement, to know the others.
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let mut report = me.tick(Instant::now());
                        report.host.clone_from(&host);
                        report.breakers = breakers.as_ref().map(|read| read());
                        publish(&client, &heartbeats, &report).await;
                    }
                    m = hb.next() => match m {
                        Some(m) => match serde_json::from_slice::<Report>(&m.payload) {
                            Ok(r) => me.receive(r, Instant::now()),
                            Err(e) => tracing::debug!(error = %e, "unreadable heartbeat"),
                        },
                        None => break,
                    },
                    m = cd.next() => match m {
                        Some(m) => match serde_json::from_slice::<Cooldown>(&m.payload) {
                            Ok(c) => me.cooled(&c),
                            Err(e) => tracing::debug!(error = %e, "unreadable cool-down"),
                        },
                        None => break,
                    },
                }
            }
            let mut report = me.leave(Instant::now());
            report.host = host;
            report.breakers = breakers.as_ref().map(|read| read());
            publish(&client, &heartbeats, &report).await;
            let _ = client.flush().await;
        }))
    }

    /// Clustered from now on: admit nothing until the share is announced.
    pub(super) fn enter_cluster(&self, id: String) {
        let mut st = self.inner.lock();
        st.me.id = id;
        st.me.clustered = true;
        st.me.echo = Instant::now();
        for p in st.providers.values_mut() {
            p.share = Amount::default();
            p.announced = Amount::default();
        }
    }

    /// One heartbeat: work out the members and this worker's shares, shrink at once, grow
    /// what the last heartbeat announced, and return this heartbeat's report.
    pub(super) fn tick(&self, now: Instant) -> Report {
        let t = self.inner.timing;
        let report = {
            let mut st = self.inner.lock();
            let st = &mut *st;
            st.peers.retain(|_, p| {
                p.live(now, t.member_timeout)
                    || p.limits.values().any(|l| !l.log.is_empty_at(now, t.window))
            });
            let mut ids: Vec<&str> = st
                .peers
                .iter()
                .filter(|(_, p)| p.live(now, t.member_timeout))
                .map(|(id, _)| id.as_str())
                .chain(std::iter::once(st.me.id.as_str()))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let members = ids.len();
            let rank = ids.iter().position(|i| *i == st.me.id).unwrap_or(0);
            st.me.members = members;
            let unheard = now.saturating_duration_since(st.me.echo) > t.self_hold();
            if unheard {
                tracing::warn!("this worker's heartbeats are not coming back; holding its calls");
            }
            let mut limits = BTreeMap::new();
            for (name, p) in st.providers.iter_mut().filter(|(_, p)| p.limited()) {
                let target = if unheard {
                    Amount::default()
                } else {
                    Amount {
                        requests: p.rpm.map_or(0, |l| split(l, members, rank)),
                        tokens: p.tpm.map_or(0, |l| split(l, members, rank)),
                    }
                };
                p.share = p.share.min(target);
                if p.announced.covers(target) {
                    p.share = target;
                }
                p.announced = target;
                p.log.prune(now, t.window);
                limits.insert(
                    name.clone(),
                    ReportLimit {
                        requests: target.requests,
                        tokens: target.tokens,
                        log: p.log.buckets(now),
                    },
                );
            }
            Report {
                id: st.me.id.clone(),
                leaving: false,
                limits,
                host: None,
                breakers: None,
            }
        };
        self.inner.changed();
        report
    }

    /// The last report: shares given up, the window as it stands.
    pub(super) fn leave(&self, now: Instant) -> Report {
        let mut report = self.tick(now);
        report.leaving = true;
        for l in report.limits.values_mut() {
            l.requests = 0;
            l.tokens = 0;
        }
        let mut st = self.inner.lock();
        for p in st.providers.values_mut() {
            p.share = Amount::default();
            p.announced = Amount::default();
        }
        report
    }

    /// A heartbeat heard (this worker's own one included).
    pub(super) fn receive(&self, r: Report, now: Instant) {
        {
            let mut st = self.inner.lock();
            if r.id == st.me.id {
                // Heard again: calls held back while it was unheard may go.
                let was_unheard =
                    now.saturating_duration_since(st.me.echo) > self.inner.timing.self_hold();
                st.me.echo = now;
                drop(st);
                if was_unheard {
                    self.inner.changed();
                }
                return;
            }
            let limits: foldhash::HashMap<String, PeerLimit> = r
                .limits
                .into_iter()
                .map(|(name, l)| {
                    let pl = PeerLimit {
                        share: Amount {
                            requests: l.requests,
                            tokens: l.tokens,
                        },
                        log: PeerLog::from_buckets(now, &l.log),
                    };
                    (name, pl)
                })
                .collect();
            st.peers.insert(
                r.id,
                Peer {
                    heard: now,
                    leaving: r.leaving,
                    limits,
                },
            );
        }
        self.inner.changed();
    }

    fn cooled(&self, c: &Cooldown) {
        let left_ms = c.until_ms - chrono::Utc::now().timestamp_millis();
        if left_ms <= 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(left_ms as u64);
        self.inner.lock().hold(&c.provider, &c.model, until);
    }
}

async fn publish(client: &async_nats::Client, subject: &str, report: &Report) {
    let Ok(body) = serde_json::to_vec(report) else {
        return;
    };
    if let Err(e) = client.publish(subject.to_string(), body.into()).await {
        tracing::warn!(error = %e, "could not publish the heartbeat");
    }
}
