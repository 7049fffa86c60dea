//! `switchyard simulate`: the provider simulator on one port.

use crate::providers::simulator::{
    FaultProfile, ServeOptions, Simulator, TlsIdentity, DEFAULT_H2_MAX_STREAMS,
};
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090", env = "SWITCHYARD_SIM_ADDR")]
    pub addr: String,
    /// Base latency of every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra uniform random latency, 0..N milliseconds.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Probability (0..1) of an injected error.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Status of injected errors (429, 500, 503, 529 …).
    #[arg(long, default_value_t = 500)]
    pub error_status: u16,
    /// A fault profile as JSON (the body `POST /_sim/profile` takes); overrides the flags.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// With --profile: apply the file again whenever it changes.
    #[arg(long, requires = "profile")]
    pub watch: bool,
    /// Calls one HTTP/2 connection may carry at once (SETTINGS_MAX_CONCURRENT_STREAMS;
    /// real providers allow ~100-256). HTTP/2 is spoken to clients that open with its
    /// preface (h2c) or, with TLS, that choose it through ALPN.
    #[arg(long, default_value_t = DEFAULT_H2_MAX_STREAMS)]
    pub h2_max_streams: u32,
    /// Serve TLS with this PEM certificate chain (ALPN h2 and http/1.1).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let profile = match &args.profile {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a fault profile", p.display()))?
        }
        None => FaultProfile {
            latency_ms: args.latency_ms,
            jitter_ms: args.jitter_ms,
            error_rate: args.error_rate,
            error_status: args.error_status,
            ..FaultProfile::default()
        },
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_pem_files(cert, key)?),
        _ => None,
    };
    let opts = ServeOptions {
        h2_max_streams: args.h2_max_streams.max(1),
        tls,
    };
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(super::shutdown_on_signal(shutdown.clone()));
    tracing::info!(addr = %listener.local_addr()?, "simulator listening (OpenAI /v1/chat/completions, Anthropic /v1/messages, Gemini /v1beta/models/*:generateContent; admin /_sim/stats, /_sim/profile, /_sim/reset)");
    let sim = Simulator::new(profile);
    if let (true, Some(path)) = (args.watch, args.profile.clone()) {
        tokio::spawn(sim.watch_profile_file(path, shutdown.clone()));
    }
    sim.serve_with(listener, shutdown, opts).await?;
    Ok(ExitCode::SUCCESS)
}
