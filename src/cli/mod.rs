//! The command line: `switchyard <command>`. Every command takes `--config FILE` (or
//! `SWITCHYARD_CONFIG`); `NATS_URL` and `DATABASE_URL` override the file.

mod budget;
mod cache;
mod console;
pub(crate) mod dlq;
mod estimate;
mod queue;
pub(crate) mod report;
mod serve;
mod simulate;
mod status;
mod submit;
mod submit_openai;

use crate::config::{Config, FileConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "Event-driven queue worker for batch and async LLM completion jobs",
    long_about = "Event-driven queue worker for batch and async LLM completion jobs.\n\n\
Producers publish jobs to NATS JetStream (<prefix>.jobs.<high|normal|low>.<tenant>); workers \
route each to a provider (OpenAI, Anthropic, Gemini, OpenAI-compatible), commit the result and \
one cost row per provider call to Postgres, and publish the result to the job's reply_to and \
<prefix>.results.<tenant>.<id>.\n\nStart here: `switchyard simulate` (a fake provider), \
`switchyard worker`, then `switchyard submit examples/ingest.jsonl --wait`."
)]
pub struct Cli {
    /// TOML configuration file (see config/). Environment variables override its keys.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a worker: pull jobs, call providers, commit and publish results (many may run at once).
    Worker,
    /// Publish jobs from a JSONL file (one job per line), with a progress bar.
    Submit(submit::SubmitArgs),
    /// Show a job's state and result.
    Status(status::StatusArgs),
    /// The backlog per priority and tenant: jobs waiting, oldest age, share of the pool.
    Queue(queue::QueueArgs),
    /// Dead letters: list, show, replay, purge (one by one or by filter).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Reports from Postgres: costs, savings against a baseline model, budgets.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Spend limits: set and show.
    #[command(subcommand)]
    Budget(budget::BudgetCommand),
    /// The response cache: forget a bad answer.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Apply the Postgres migrations.
    Migrate,
    /// Run the provider simulator (OpenAI, Anthropic and Gemini wire formats).
    Simulate(simulate::SimulateArgs),
    /// Serve an OpenAI-compatible HTTP front door (chat completions, files, batches).
    Serve(serve::ServeArgs),
    /// Serve the operator web console: backlog, jobs, dead letters (replay, purge), spend.
    Console(console::ConsoleArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        Command::Worker | Command::Simulate(_) | Command::Serve(_) | Command::Console(_) => "info",
        _ => "warn",
    };
    crate::telemetry::init(level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(FileConfig::load(path.as_deref())?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Worker => {
            let cfg = load_config(&cli.config)?;
            let providers = crate::providers::Providers::from_config(&cfg)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(shutdown_on_signal(shutdown.clone()));
            let path = cli.config.clone();
            let reloader = crate::worker::reload::Reloader {
                watch: path.clone().filter(|_| cfg.worker.watch_config),
                load: std::sync::Arc::new(move || load_config(&path)),
                trigger: std::sync::Arc::new(tokio::sync::Notify::new()),
                report: None,
            };
            tokio::spawn(reload_on_hangup(reloader.trigger.clone()));
            crate::app::run_worker(cfg, providers, shutdown, Some(reloader)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => submit::run(load_config(&cli.config)?, args).await,
        Command::Status(args) => status::run(load_config(&cli.config)?, args).await,
        Command::Queue(args) => queue::run(load_config(&cli.config)?, args).await,
        Command::Migrate => {
            let cfg = load_config(&cli.config)?;
            let pool = crate::connect::postgres(&cfg.postgres, 2).await?;
            crate::store::migrate(&pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => simulate::run(args).await,
        Command::Serve(args) => serve::run(load_config(&cli.config)?, args).await,
        Command::Budget(cmd) => budget::run(load_config(&cli.config)?, cmd).await,
        Command::Dlq(cmd) => dlq::run(load_config(&cli.config)?, cmd).await,
        Command::Report(cmd) => report::run(load_config(&cli.config)?, cmd).await,
        Command::Cache(cmd) => cache::run(load_config(&cli.config)?, cmd).await,
        Command::Console(args) => console::run(load_config(&cli.config)?, args).await,
    }
}

/// Cancel `token` on SIGTERM or Ctrl-C.
/// SIGHUP: read the config again (see [`crate::worker::reload`]).
async fn reload_on_hangup(trigger: std::sync::Arc<tokio::sync::Notify>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: config reload by signal is off");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            trigger.notify_one();
        }
    }
    #[cfg(not(unix))]
    {
        let _ = trigger;
    }
}

pub async fn shutdown_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}
