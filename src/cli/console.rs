//! `switchyard console [--listen ADDR]`: serve the operator web console (see
//! `crate::console`) until SIGTERM / Ctrl-C.

use crate::config::Config;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    /// Listen here instead of `[console] listen` (default 127.0.0.1:8089). Anything but a
    /// loopback address needs `[[console.tokens]]`.
    #[arg(long)]
    pub listen: Option<String>,
}

pub async fn run(mut cfg: Config, args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    if let Some(l) = args.listen {
        cfg.console.listen = l;
    }
    let addr = cfg.console.listen_addr()?;
    cfg.console.check_exposure(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("console: cannot listen on {addr}: {e}"))?;
    let stop = CancellationToken::new();
    tokio::spawn(super::shutdown_on_signal(stop.clone()));
    eprintln!("switchyard console on http://{}/", listener.local_addr()?);
    crate::console::serve(cfg, listener, stop).await?;
    Ok(ExitCode::SUCCESS)
}
