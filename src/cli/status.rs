//! `switchyard status --tenant T ID`: a job's row and result.

use crate::config::Config;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The job's tenant (job ids are per tenant).
    #[arg(long)]
    pub tenant: String,
    /// The job id.
    pub id: String,
}

pub async fn run(cfg: Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
    match crate::store::job_row(&pool, &args.tenant, &args.id).await? {
        Some(row) => {
            println!("{}", serde_json::to_string_pretty(&row)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no job {:?} for tenant {:?}", args.id, args.tenant);
            Ok(ExitCode::from(3))
        }
    }
}
