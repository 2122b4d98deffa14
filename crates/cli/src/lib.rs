//! The `ambulance` command line.
//!
//! Each subcommand lives in its own module: [`run`] boots one guest and prints its events,
//! [`demo`] shows the whole flow on three guests with embedded defaults.

pub mod demo;
pub mod diagnose;
pub mod live;
pub mod output;
pub mod run;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// Everything that can make a subcommand fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The VMM could not do what was asked.
    #[error(transparent)]
    Vmm(#[from] ambulance_vmm::Error),
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
    /// Boot three test guests, crash one, diagnose it, and show that the others keep running.
    Demo(demo::DemoArgs),
    /// Diagnose a guest offline from an ELF core; the report goes to stdout.
    Diagnose(diagnose::DiagnoseArgs),
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo::demo(args),
        Command::Diagnose(args) => diagnose::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambulance: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The kernel image named by `--kernel`: `test` for the embedded test kernel, else a path.
pub fn load_kernel(spec: &str) -> Result<Arc<[u8]>, CliError> {
    if spec == "test" {
        return Ok(Arc::from(ambulance_test_kernel::ELF));
    }
    std::fs::read(spec)
        .map(Arc::from)
        .map_err(|source| CliError::KernelFile {
            path: spec.to_string(),
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
        Some(live::debuginfo_for(kernel)?)
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

/// Checks a fault name against the test kernel's catalogue.
pub fn check_fault(name: &str) -> Result<(), CliError> {
    if ambulance_test_kernel::FAULTS.contains(&name) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "unknown fault {name:?}; the test kernel knows: {}",
            ambulance_test_kernel::FAULTS.join(", ")
        )))
    }
}

/// Parses a memory size: a number of bytes with an optional K, M, G suffix (powers of
/// 1024; "MiB" and "MB" are read the same).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number such as 64M or 1G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
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

    #[test]
    fn faults_are_checked() {
        assert!(check_fault("list-cycle").is_ok());
        let e = check_fault("meltdown").unwrap_err().to_string();
        assert!(e.contains("meltdown") && e.contains("triple-fault"), "{e}");
    }
}
