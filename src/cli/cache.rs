//! `switchyard cache forget --tenant T --job ID`: drop the response-cache entry (exact and
//! semantic: one row holds both) that answered job ID, or that was stored from its answer.

use crate::config::Config;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Drop the entry that answered a job (a cache hit) or was stored from its answer, so
    /// a bad answer is no longer served. Exit 3 when the job is unknown and stored nothing.
    Forget(ForgetArgs),
}

#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    /// The job's tenant (entries are per tenant).
    #[arg(long)]
    pub tenant: String,
    /// The job's id.
    #[arg(long)]
    pub job: String,
}

pub async fn run(cfg: Config, cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    let CacheCommand::Forget(args) = cmd;
    let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
    match crate::store::semantic::forget(&pool, &args.tenant, &args.job).await? {
        Some(f) => {
            let from = if f.source == args.job {
                String::new()
            } else {
                format!(" (it was answered with job {:?}'s answer)", f.source)
            };
            println!(
                "{} cache entr{} of job {:?} dropped{from}",
                f.entries,
                if f.entries == 1 { "y" } else { "ies" },
                f.source
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "no job {:?} for tenant {:?} and no cache entry stored from it",
                args.job, args.tenant
            );
            Ok(ExitCode::from(3))
        }
    }
}
