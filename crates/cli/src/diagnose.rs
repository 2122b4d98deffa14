//! `ambulance diagnose --core FILE`: the same diagnosis as on a live guest, offline, on an
//! ELF core (ours, QEMU's `dump-guest-memory`, kdump's); the report goes to stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ambulance_diagnose::{diagnose, Subject};
use ambulance_introspect::memory::ElfCore;
use ambulance_report::Phase;
use clap::{Args, ValueEnum};

use crate::CliError;

/// Report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The versioned JSON report.
    Json,
    /// The text rendering.
    Text,
}

/// Options of `ambulance diagnose`.
#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The ELF core file to diagnose.
    #[arg(long, value_name = "FILE")]
    pub core: PathBuf,
    /// The kernel's ELF with symbols and DWARF (its build ID must match the guest's).
    #[arg(long, value_name = "ELF", conflicts_with = "debuginfo_dir")]
    pub debuginfo: Option<PathBuf>,
    /// A debuginfod-style directory to find the kernel's debug info in by build ID
    /// (`DIR/.build-id/xx/rest.debug`).
    #[arg(long, value_name = "DIR")]
    pub debuginfo_dir: Option<PathBuf>,
    /// Declarative validation rules (TOML).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

/// Runs `ambulance diagnose`.
pub fn run(args: DiagnoseArgs) -> Result<(), CliError> {
    let t = Instant::now();
    let core = ElfCore::open(&args.core).map_err(|e| CliError::Failed(e.to_string()))?;
    let subject = Subject::from_core(&core);
    let map = Phase {
        name: "map".into(),
        duration_us: t.elapsed().as_micros() as u64,
    };
    let guest_build_id = subject
        .descriptor_bytes
        .as_deref()
        .and_then(|b| ambulance_abi::descriptor::parse(b).ok())
        .map(|d| d.build_id)
        .filter(|b| !b.is_empty());
    let options = crate::diagnose_options(
        None,
        args.debuginfo
            .as_deref()
            .map(|p| (p, guest_build_id.as_deref())),
        args.debuginfo_dir
            .as_deref()
            .map(|d| (d, guest_build_id.as_deref())),
        args.rules.as_deref(),
    )?;
    let report = diagnose(Arc::new(core), &subject, &options, vec![map])
        .map_err(|e| CliError::Failed(format!("cannot diagnose {}: {e}", args.core.display())))?;
    match args.format {
        Format::Json => println!("{}", report.to_json()),
        Format::Text => print!("{}", ambulance_report::text::render(&report)),
    }
    Ok(())
}
