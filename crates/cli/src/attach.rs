//! `ambulance attach --qmp SOCKET`: live diagnosis of one guest QEMU runs — typically an
//! unmodified Linux — without the daemon.
//!
//! It connects to QEMU's QMP socket (waiting up to `--connect-timeout` for QEMU to come
//! up), asks QEMU where the guest's RAM is (its `memory-backend-file`, checked against
//! `--memory` when given) and, with `--registration`, listens for the Linux agent's
//! registration. On a failure QMP reports (`GUEST_PANICKED` and the others
//! `ambulance_capture::qemu::failure_of` names; or at once with `--now`, or when the guest had
//! already panicked) it pauses the guest (with `-action panic=pause` QEMU already has),
//! takes every vCPU's registers, maps the RAM file read-only, diagnoses, writes the
//! report to `--report-dir` (JSON and text, and with `--core` an ELF core), prints it and
//! exits. A panicked guest is left paused for forensics; after `--now` it runs again.
//!
//! Progress and the agent's registrations go to standard error; standard output carries
//! only the report (text, or JSON with `--json`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambulance_capture::qemu::{failure, failure_of, QemuGuest};
use ambulance_capture::{operator_failure, Backend};
use ambulance_qemu::{AgentListener, ConnectOptions};
use ambulance_report::{FailureInfo, ReportDir};
use clap::Args;

use crate::CliError;

/// Options of `ambulance attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// QEMU's QMP socket (`-qmp unix:SOCKET,server=on,wait=off`).
    #[arg(long, value_name = "SOCKET")]
    pub qmp: PathBuf,
    /// The guest's RAM file (its `memory-backend-file` with `share=on`); default: the
    /// `mem-path` QEMU reports.
    #[arg(long, value_name = "FILE")]
    pub memory: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Listen here for the Linux agent's registration (QEMU connects a serial port:
    /// `-chardev socket,id=amb,path=SOCKET,reconnect=1 -device isa-serial,chardev=amb`).
    #[arg(long, value_name = "SOCKET")]
    pub registration: Option<PathBuf>,
    /// Write DIR/<report id>.json and .txt (and .core with --core).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// The guest's name in the report (default: QEMU's `-name`, else the socket's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The guest kernel's ELF with symbols and DWARF (e.g. Debian's -dbg vmlinux); its
    /// build ID must match the guest's.
    #[arg(long, value_name = "ELF")]
    pub debuginfo: Option<PathBuf>,
    /// Declarative validation rules (TOML).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// With --report-dir, also write the guest's memory as an ELF core (DIR/<id>.core).
    #[arg(long, requires = "report_dir")]
    pub core: bool,
    /// Diagnose now (an operator's request) instead of waiting for a panic; the guest is
    /// paused meanwhile and runs again afterwards.
    #[arg(long)]
    pub now: bool,
    /// How long to wait for QEMU's QMP socket to accept, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub connect_timeout: f64,
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Runs `ambulance attach`.
pub fn run(args: AttachArgs) -> Result<(), CliError> {
    if !(args.connect_timeout.is_finite() && args.connect_timeout >= 0.0) {
        return Err(CliError::Usage(format!(
            "--connect-timeout must be a number of seconds, not {}",
            args.connect_timeout
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ambulance-attach")
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(attach(args))
}

async fn attach(args: AttachArgs) -> Result<(), CliError> {
    let listener = args
        .registration
        .as_deref()
        .map(AgentListener::bind)
        .transpose()
        .map_err(failed)?;
    if let Some(l) = &listener {
        eprintln!(
            "ambulance: listening for the guest's registration on {}",
            l.path().display()
        );
        let mut watch = l.subscribe();
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                if let Some(r) = watch.borrow_and_update().clone() {
                    eprintln!("ambulance: guest registered: {r}");
                }
            }
        });
    }
    let guest = Arc::new(QemuGuest::new(
        args.name.clone().unwrap_or_else(|| socket_name(&args.qmp)),
        &args.qmp,
        args.memory.clone(),
        listener,
        ConnectOptions {
            connect_timeout: Duration::from_secs_f64(args.connect_timeout),
            command_timeout: Duration::from_secs(30),
        },
    ));
    let connected = guest.connect().await?;
    if args.name.is_none() {
        if let Some(n) = guest.qmp()?.query_name().await.map_err(failed)? {
            guest.rename(n);
        }
    }
    let name = guest.name();
    eprintln!(
        "ambulance: attached to guest {name} ({})",
        guest.describe().unwrap_or_default()
    );
    let failure = if args.now {
        operator_failure("operator request (ambulance attach --now)")
    } else if connected.status.status == "guest-panicked" {
        failure(
            "panic",
            "the guest had already panicked when ambulance attached".into(),
            Default::default(),
            std::time::SystemTime::now(),
        )
    } else {
        eprintln!(
            "ambulance: guest {name} is {}; waiting for it to panic or otherwise fail (GUEST_PANICKED, GUEST_CRASHLOADED, WATCHDOG, a shutdown it causes)",
            connected.status.status
        );
        wait_for_failure(&guest, connected.events).await?
    };
    let backend = Backend::Qemu(guest.clone());
    let frozen = backend.freeze().await?;
    let capture = backend.capture(failure, frozen)?;
    if capture.registered.is_none() && guest.listener().is_some() {
        eprintln!("ambulance: the guest did not register; scanning guest RAM for its VMCOREINFO");
    }
    let options = options(&args, &capture)?;
    let dir = args
        .report_dir
        .as_ref()
        .map(ReportDir::open)
        .transpose()
        .map_err(failed)?;
    let (report, files) =
        tokio::task::block_in_place(|| capture.diagnose_here(&options, dir.as_ref(), args.core))
            .map_err(|e| CliError::Failed(format!("cannot diagnose guest {name}: {e}")))?;
    if let Some(files) = &files {
        eprintln!("ambulance: report written to {}", files.json.display());
        if let Some(core) = &files.core {
            eprintln!("ambulance: core written to {}", core.display());
        }
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", ambulance_report::text::render(&report));
    }
    if args.now && capture.was_running {
        backend.resume().await?;
        eprintln!("ambulance: guest {name} runs again");
    } else if report.failure.cause == "panic" {
        eprintln!(
            "ambulance: guest {name} stays paused for forensics (QMP `system_reset` then `cont` runs it again)"
        );
    }
    Ok(())
}

/// Waits for the guest's failure on its QMP events.
async fn wait_for_failure(
    guest: &QemuGuest,
    mut events: ambulance_qemu::QmpEvents,
) -> Result<FailureInfo, CliError> {
    let name = guest.name();
    loop {
        let Some(e) = events.next().await else {
            return Err(CliError::Failed(format!(
                "QEMU closed the QMP connection ({}) before guest {name} failed",
                guest.qmp_socket().display(),
            )));
        };
        guest.observe(&e);
        if let Some(f) = failure_of(&e) {
            eprintln!("ambulance: guest {name} failed: {}", f.detail);
            return Ok(f);
        }
        if e.name == "SHUTDOWN" {
            eprintln!("ambulance: guest {name} shut down ({})", e.data);
        }
    }
}

/// The guest's name from its QMP socket's file name (`web.qmp` → `web`).
fn socket_name(socket: &Path) -> String {
    socket
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("qemu")
        .to_string()
}

/// Diagnosis options: `--debuginfo` checked against the guest kernel's build ID (from
/// its VMCOREINFO: the registered note, else the one a RAM scan finds) and `--rules`.
fn options(
    args: &AttachArgs,
    capture: &ambulance_capture::Capture,
) -> Result<ambulance_diagnose::Options, CliError> {
    let build_id = match &args.debuginfo {
        Some(_) => {
            let memory =
                ambulance_introspect::memory::LiveMemory::map(&capture.ram).map_err(failed)?;
            let registered = match &capture.registered {
                Some(ambulance_capture::Registered::LinuxAgent { note, .. }) => {
                    ambulance_linux::vmcoreinfo_note_at(&memory, note.pa, note.size).ok()
                }
                _ => None,
            };
            registered
                .or_else(|| ambulance_linux::scan_vmcoreinfo(&memory).map(|(_, t)| t))
                .and_then(|text| {
                    let info = ambulance_introspect::vmcoreinfo::Vmcoreinfo::parse(&text).ok()?;
                    info.build_id().map(<[u8]>::to_vec)
                })
        }
        None => None,
    };
    crate::diagnose_options(
        None,
        args.debuginfo.as_deref().map(|p| (p, build_id.as_deref())),
        None,
        args.rules.as_deref(),
    )
}
