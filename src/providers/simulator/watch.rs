//! Reloading the fault profile from a JSON file while the simulator runs.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{FaultProfile, Simulator};

/// How often the file's modification time is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What identifies one version of the file: modification time and length (the length
/// catches a rewrite within the file system's timestamp granularity).
type Signature = Option<(Option<SystemTime>, u64)>;

async fn signature(path: &Path) -> Signature {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok(), meta.len()))
}

impl Simulator {
    /// Watch a JSON profile file (the body `POST /_sim/profile` takes) and apply it
    /// whenever it changes, until `shutdown` is cancelled.
    ///
    /// Every 500 ms the file's modification time (and length) is compared with the last
    /// seen; on a change the file is read and parsed, and a valid profile replaces the
    /// current one through [`Simulator::set_profile`] (so `fail_first` counts and outage
    /// windows start again from the reload). A file that does not parse, is missing or
    /// cannot be read is logged with `tracing::warn!` and the current profile is kept;
    /// the next change is tried again.
    ///
    /// The file as it is when the watcher starts counts as already applied: load it
    /// first (e.g. with [`FaultProfile::load`]) and pass it to [`Simulator::new`]. A file
    /// that does not exist yet is applied when it appears.
    ///
    /// The returned future owns what it needs: spawn it or await it.
    /// ```ignore
    /// let sim = Simulator::new(FaultProfile::load(&path)?);
    /// tokio::spawn(sim.watch_profile_file(path, shutdown.clone()));
    /// sim.serve(listener, shutdown).await?;
    /// ```
    pub fn watch_profile_file(
        &self,
        path: impl Into<PathBuf>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        watch(self.clone(), path.into(), shutdown, POLL_INTERVAL)
    }
}

pub(crate) async fn watch(
    sim: Simulator,
    path: PathBuf,
    shutdown: CancellationToken,
    every: Duration,
) {
    let mut seen = signature(&path).await;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = signature(&path).await;
        if now == seen {
            continue;
        }
        seen = now;
        if seen.is_none() {
            tracing::warn!(path = %path.display(), "fault profile file is gone; keeping the current profile");
            continue;
        }
        let loaded = match tokio::fs::read(&path).await {
            Ok(bytes) => FaultProfile::parse_file(&path, &bytes),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        };
        match loaded {
            Ok(profile) => {
                sim.set_profile(profile);
                tracing::info!(path = %path.display(), "fault profile reloaded");
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "fault profile not reloaded; keeping the current profile"
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn wait_for(sim: &Simulator, what: impl Fn(&FaultProfile) -> bool) -> bool {
        for _ in 0..300 {
            if what(&sim.profile()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn applies_changes_keeps_profile_on_bad_json_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(&path, r#"{"latency_ms": 1}"#).unwrap();
        let sim = Simulator::new(FaultProfile::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(
            sim.clone(),
            path.clone(),
            shutdown.clone(),
            Duration::from_millis(20),
        ));
        // The file as found at start counts as applied.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(sim.profile().latency_ms, 0);

        std::fs::write(&path, r#"{"latency_ms": 7, "error_rate": 0.5}"#).unwrap();
        assert!(
            wait_for(&sim, |p| p.latency_ms == 7).await,
            "change applied"
        );
        assert_eq!(sim.profile().error_rate, 0.5);

        std::fs::write(&path, r#"{"latency_ms": 8, "#).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(sim.profile().latency_ms, 7, "a broken file is not applied");
        std::fs::write(&path, r#"{"latency_dist": "gaussian"}"#).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            sim.profile().latency_ms,
            7,
            "an invalid profile is not applied"
        );

        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            sim.profile().latency_ms,
            7,
            "a missing file keeps the profile"
        );

        std::fs::write(
            &path,
            r#"{"latency_ms": 9, "outages": [{"start_s": 5, "duration_s": 1}]}"#,
        )
        .unwrap();
        assert!(wait_for(&sim, |p| p.latency_ms == 9).await, "recovered");
        assert_eq!(sim.profile().outages[0].status, 503);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("watcher stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn public_watcher_polls_twice_a_second_and_applies_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.json");
        let sim = Simulator::new(FaultProfile::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sim.watch_profile_file(&path, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&path, r#"{"first_byte_ms": 12}"#).unwrap();
        let t = std::time::Instant::now();
        assert!(wait_for(&sim, |p| p.first_byte_ms == 12).await);
        assert!(t.elapsed() <= Duration::from_millis(1500));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("watcher stops on shutdown")
            .unwrap();
    }

    #[test]
    fn load_reads_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"truncate_rate": 0.25, "log_capacity": 5}"#).unwrap();
        let p = FaultProfile::load(&path).unwrap();
        assert_eq!((p.truncate_rate, p.log_capacity), (0.25, Some(5)));
        std::fs::write(&path, "42").unwrap();
        let e = format!("{:#}", FaultProfile::load(&path).unwrap_err());
        assert!(e.contains("not a fault profile"), "{e}");
        assert!(FaultProfile::load(dir.path().join("nope.json")).is_err());
    }
}
