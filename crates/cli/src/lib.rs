//! The `ambulance` command line.
//!
//! Each subcommand lives in its own module: [`run`] boots one guest and prints its events,
//! [`attach`] diagnoses a guest QEMU runs (live, through QMP and its RAM file),
//! [`demo`] shows the whole flow on three guests with the service's embedded defaults,
//! [`serve`] runs the daemon, [`client`] holds the commands that talk to it (`status`,
//! `reports`, `report`, `diagnose --guest`, `release`), [`diagnose`] diagnoses an ELF
//! core offline, and [`fleet`] runs the fleet controller and talks to it.

#![forbid(unsafe_code)]

pub mod attach;
pub mod client;
pub mod demo;
pub mod diagnose;
pub mod fleet;
pub mod kernels;
pub mod output;
pub mod run;
pub mod serve;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// Everything that can make a subcommand fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The VMM could not do what was asked.
    #[error(transparent)]
    Vmm(#[from] ambulance_vmm::Error),
    /// The service (or the daemon it talks to) failed.
    #[error(transparent)]
    Service(#[from] ambulance_service::ServiceError),
    /// A guest could not be frozen, captured or diagnosed.
    #[error(transparent)]
    Capture(#[from] ambulance_capture::CaptureError),
    /// A kernel image could not be read.
    #[error("cannot read kernel image {path}: {source}")]
    KernelFile {
        /// The path given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// Something that should have happened did not.
    #[error("{0}")]
    Failed(String),
}

/// `ambulance`: crash diagnosis for virtual machines.
#[derive(Debug, Parser)]
#[command(name = "ambulance", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot one guest and print its events until it fails or the duration ends.
    Run(run::RunArgs),
    /// Attach to a guest QEMU runs (QMP and its RAM file), wait for it to panic (or
    /// --now), diagnose it and print the report.
    Attach(attach::AttachArgs),
    /// Boot three test guests, crash one, diagnose it, and show that the others keep running.
    Demo(demo::DemoArgs),
    /// Diagnose a guest offline from an ELF core (--core), or ask the daemon to diagnose a
    /// running guest (--guest); the report goes to stdout.
    Diagnose(diagnose::DiagnoseArgs),
    /// Run the daemon: supervise the configured guests, diagnose failures, serve the API.
    Serve(serve::ServeArgs),
    /// Show the daemon's guests.
    Status(client::StatusArgs),
    /// List the daemon's reports.
    Reports(client::ReportsArgs),
    /// Show one report.
    Report(client::ReportArgs),
    /// Release a guest the daemon holds frozen (restart it, or destroy it).
    Release(client::ReleaseArgs),
    /// Many hosts as one fleet: the controller, enrolment, reports and commands over NATS.
    Fleet(fleet::FleetArgs),
    /// The diagnosis worker the daemon starts (not for people).
    #[command(hide = true)]
    Worker(serve::WorkerArgs),
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        Command::Fleet(ref f) if f.serves() => "info",
        // The demo tells its own story; only errors from the service belong in it.
        Command::Demo(_) => "error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Attach(args) => attach::run(args),
        Command::Demo(args) => demo::demo(args),
        Command::Diagnose(args) => diagnose::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Status(args) => client::status(args),
        Command::Reports(args) => client::reports(args),
        Command::Report(args) => client::report(args),
        Command::Release(args) => client::release(args),
        Command::Fleet(args) => fleet::run(args),
        Command::Worker(args) => {
            return ambulance_service::worker::main(
                args.address_space,
                args.cpu_seconds,
                args.budget_ms,
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambulance: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The kernel image named by `--kernel`: a built-in kernel's name (`test`) or a path.
pub fn load_kernel(spec: &str) -> Result<Arc<[u8]>, CliError> {
    let path = kernels::resolve(spec)?;
    std::fs::read(&path)
        .map(Arc::from)
        .map_err(|source| CliError::KernelFile {
            path: path.display().to_string(),
            source,
        })
}

/// Diagnosis options: debug info from `--kernel` (`test` or a path), from an explicit
/// file or from a build-ID directory (each checked against the guest's build ID when it
/// is known), and rules from a file.
pub fn diagnose_options(
    kernel: Option<&str>,
    debuginfo: Option<(&std::path::Path, Option<&[u8]>)>,
    debuginfo_dir: Option<(&std::path::Path, Option<&[u8]>)>,
    rules: Option<&std::path::Path>,
) -> Result<ambulance_diagnose::Options, CliError> {
    use ambulance_introspect::debuginfo::DebugInfo;
    let fail = |e: ambulance_introspect::Error| CliError::Failed(e.to_string());
    let debuginfo = if let Some((path, guest)) = debuginfo {
        let d = DebugInfo::open(path).map_err(fail)?;
        if let Some(id) = guest {
            d.check_build_id(id).map_err(fail)?;
        }
        Some(Arc::new(d))
    } else if let Some((dir, guest)) = debuginfo_dir {
        let id = guest.ok_or_else(|| {
            CliError::Usage(format!(
                "--debuginfo-dir {}: the core does not say the guest's build ID; use --debuginfo",
                dir.display()
            ))
        })?;
        Some(Arc::new(DebugInfo::find(dir, id).map_err(fail)?))
    } else if let Some(kernel) = kernel {
        let path = kernels::resolve(kernel)?;
        Some(Arc::new(DebugInfo::open(&path).map_err(|e| {
            CliError::Failed(format!("cannot read the kernel's debug info: {e}"))
        })?))
    } else {
        None
    };
    let rules = rules
        .map(ambulance_validate::rules::RuleSet::load)
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(ambulance_diagnose::Options {
        debuginfo,
        rules,
        config: Default::default(),
    })
}

/// Parses a memory size: a number of bytes with an optional K, M, G suffix (powers of
/// 1024; "MiB" and "MB" are read the same).
pub fn parse_size(text: &str) -> Result<u64, String> {
    ambulance_service::config::parse_size(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3T").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[cfg(feature = "test-kernel")]
    #[test]
    fn faults_are_checked() {
        use kernels::check_fault;
        assert!(check_fault("list-cycle").is_ok());
        let e = check_fault("meltdown").unwrap_err().to_string();
        assert!(e.contains("meltdown") && e.contains("triple-fault"), "{e}");
    }
}
