//! `ambulance serve [--config FILE]`: the daemon (see `ambulance_service`), and the hidden
//! `ambulance worker` it re-executes for each diagnosis.

use std::path::PathBuf;

use ambulance_service::ServiceConfig;
use clap::Args;

use crate::CliError;

/// Options of `ambulance serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The TOML configuration (data directory, listeners, alerts, guests). Without it the
    /// embedded defaults apply: a data directory under the user's state directory, the
    /// Unix socket API, no guests.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

/// Options of the hidden `ambulance worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// RLIMIT_AS in bytes.
    #[arg(long)]
    pub address_space: u64,
    /// RLIMIT_CPU in seconds.
    #[arg(long)]
    pub cpu_seconds: u64,
    /// The diagnosis's time budget, from the worker's start.
    #[arg(long)]
    pub budget_ms: Option<u64>,
}

/// Runs `ambulance serve`.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let config = match &args.config {
        Some(path) => ServiceConfig::load(path, &crate::kernels::builtin()?)?,
        None => ServiceConfig::defaults(),
    };
    if args.check {
        println!(
            "{}: valid; data directory {}, socket {}, {} guest(s){}",
            config.source,
            config.data_dir.display(),
            config.api.socket.display(),
            config.guests.len(),
            match &config.fleet {
                Some(f) => format!(
                    "; fleet host {} of {} via {}",
                    f.host_id,
                    f.subscriber,
                    f.nats.join(", ")
                ),
                None => String::new(),
            }
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ambulance")
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(ambulance_service::serve_with(config, |svc| {
        ambulance_fleet::agent::companion(svc)
            .map_err(|e| ambulance_service::ServiceError::Invalid(format!("fleet: {e}")))
    }))?;
    Ok(())
}
