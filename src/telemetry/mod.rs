//! Telemetry: logs ([`init`]), Prometheus metrics and the finished-job log line
//! ([`metrics`]; provider batches' in [`batch`]), what is read at scrape time ([`live`])
//! and the poller of backlog and budget gauges ([`poll`]), which reads the JetStream
//! backlog through [`backlog`] (as the console does), and the metrics per priority and
//! tenant ([`tenants`]).
//!
//! Logs go to stderr, filtered by `SWITCHYARD_LOG` (or `RUST_LOG`), plain text or JSON
//! lines (`SWITCHYARD_LOG_FORMAT=json`, which also names each event's target, e.g.
//! `switchyard::job` for the line each finished job writes; [`json`] writes them). Spans
//! carry tenant, job id and priority. Colours only when stderr is a terminal.

pub mod backlog;
pub mod batch;
pub mod json;
pub mod live;
pub mod metrics;
pub mod poll;
pub mod tenants;

use tracing_subscriber::EnvFilter;

pub fn init(default_level: &str) {
    let filter = std::env::var("SWITCHYARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .fmt_fields(json::JsonFields)
            .event_format(json::JsonLines)
            .try_init()
    } else {
        use std::io::IsTerminal;
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
