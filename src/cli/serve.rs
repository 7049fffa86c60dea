//! `switchyard serve`: the OpenAI-compatible HTTP front door (see `crate::frontdoor`).
//! `switchyard serve --hash-key` reads an API key on standard input and prints the
//! SHA-256 that `[[serve.keys]] sha256` takes (the key itself is never stored).

use crate::config::Config;
use anyhow::Context as _;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Listen here instead of `serve.listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Print the SHA-256 of the API key read from standard input, for `[[serve.keys]]`.
    #[arg(long)]
    pub hash_key: bool,
}

pub async fn run(cfg: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.hash_key {
        let key = std::io::read_to_string(std::io::stdin()).context("reading the key")?;
        let key = key.trim();
        if key.is_empty() {
            anyhow::bail!("no key on standard input");
        }
        println!("{}", crate::frontdoor::hash_key(key));
        return Ok(ExitCode::SUCCESS);
    }
    if cfg.serve.keys.is_empty() {
        anyhow::bail!("serve.keys is empty: no request could authenticate (see `switchyard serve --hash-key`)");
    }
    let addr = args.listen.unwrap_or_else(|| cfg.serve.listen.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    eprintln!(
        "switchyard serve: listening on http://{}",
        listener.local_addr()?
    );
    let stop = CancellationToken::new();
    tokio::spawn(super::shutdown_on_signal(stop.clone()));
    crate::frontdoor::run(cfg, listener, stop).await?;
    Ok(ExitCode::SUCCESS)
}
