//! `ambulance diagnose --core FILE`: the same diagnosis as on a live guest, offline, on an
//! ELF core (ours, QEMU's `dump-guest-memory`, kdump's); `ambulance diagnose --guest ID`:
//! ask the daemon to diagnose one of its running guests. The report goes to stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ambulance_diagnose::{diagnose, Subject};
use ambulance_introspect::memory::ElfCore;
use ambulance_report::Phase;
use clap::{ArgGroup, Args, ValueEnum};

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
#[command(group(ArgGroup::new("subject").required(true).args(["core", "guest"])))]
pub struct DiagnoseArgs {
    /// The ELF core file to diagnose.
    #[arg(long, value_name = "FILE")]
    pub core: Option<PathBuf>,
    /// A running guest of the daemon to diagnose (frozen briefly, then resumed).
    #[arg(long, value_name = "ID", conflicts_with_all = ["debuginfo", "debuginfo_dir", "rules"])]
    pub guest: Option<String>,
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
    /// Time budget, in milliseconds, of reading what the kernel keeps about itself and
    /// of its dmesg, tasks and stacks (default 5000): past it the report says what was
    /// not read. A slow machine or a huge dump may need more.
    #[arg(long, value_name = "MS", conflicts_with = "guest")]
    pub load_budget_ms: Option<u64>,
    /// With --guest: where the daemon is.
    #[command(flatten)]
    pub client: crate::client::ClientArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

/// Runs `ambulance diagnose`.
pub fn run(args: DiagnoseArgs) -> Result<(), CliError> {
    let path = match (&args.core, &args.guest) {
        (Some(core), None) => core.clone(),
        (None, Some(guest)) => {
            return crate::client::diagnose_guest(&args.client, guest, args.format)
        }
        _ => {
            return Err(CliError::Usage(
                "give either --core FILE or --guest ID".into(),
            ))
        }
    };
    if args.client.socket.is_some() || args.client.url.is_some() {
        return Err(CliError::Usage(
            "--socket and --url go with --guest; --core is diagnosed here".into(),
        ));
    }
    let t = Instant::now();
    let core = ElfCore::open(&path).map_err(|e| CliError::Failed(e.to_string()))?;
    let subject = Subject::from_core(&core);
    let map = Phase {
        name: "map".into(),
        duration_us: t.elapsed().as_micros() as u64,
    };
    // The guest kernel's build ID: registered in its descriptor, or (Linux) in VMCOREINFO.
    let guest_build_id = subject
        .descriptor_bytes
        .as_deref()
        .and_then(|b| ambulance_abi::descriptor::parse(b).ok())
        .map(|d| d.build_id)
        .filter(|b| !b.is_empty())
        .or_else(|| {
            let text = subject.vmcoreinfo.as_deref()?;
            let info = ambulance_introspect::vmcoreinfo::Vmcoreinfo::parse(text).ok()?;
            info.build_id().map(<[u8]>::to_vec)
        });
    let mut options = crate::diagnose_options(
        None,
        args.debuginfo
            .as_deref()
            .map(|p| (p, guest_build_id.as_deref())),
        args.debuginfo_dir
            .as_deref()
            .map(|d| (d, guest_build_id.as_deref())),
        args.rules.as_deref(),
    )?;
    if let Some(ms) = args.load_budget_ms {
        options.config.load_budget_ms = ms;
    }
    let report = diagnose(Arc::new(core), &subject, &options, vec![map])
        .map_err(|e| CliError::Failed(format!("cannot diagnose {}: {e}", path.display())))?;
    match args.format {
        Format::Json => println!("{}", report.to_json()),
        Format::Text => print!("{}", ambulance_report::text::render(&report)),
    }
    // The process ends here: the debug info's tables (a vmlinux's symbols, type index and
    // line tables, hundreds of thousands of allocations) go back with it, faster than
    // freed one by one.
    std::mem::forget(options);
    Ok(())
}
