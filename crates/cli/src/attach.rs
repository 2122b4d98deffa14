//! `ambulance attach --qmp SOCKET`: live diagnosis of one guest QEMU runs — typically an
//! unmodified Linux — without the daemon.
//!
//! It connects to QEMU's QMP socket (waiting up to `--connect-timeout` for QEMU to come
//! up), asks QEMU where the guest's RAM is (its `memory-backend-file`, checked against
//! `--memory` when given) and, with `--registration`, listens for the Linux agent's
//! registration. On `GUEST_PANICKED` (or at once with `--now`, or when the guest had
//! already panicked) it pauses the guest (with `-action panic=pause` QEMU already has),
//! takes every vCPU's registers, maps the RAM file read-only, diagnoses, writes the
//! report to `--report-dir` (JSON and text, and with `--core` an ELF core), prints it and
//! exits. A panicked guest is left paused for forensics; after `--now` it runs again.
//!
//! Progress and the agent's registrations go to standard error; standard output carries
//! only the report (text, or JSON with `--json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_diagnose::{diagnose, Subject};
use ambulance_qemu::{ConnectOptions, Listener, Qmp, RamFile};
use ambulance_report::{FailureInfo, GuestInfo, Phase};
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

/// What attaching found out about the guest.
struct Attached {
    qmp: Qmp,
    events: ambulance_qemu::Events,
    ram: RamFile,
    guest: GuestInfo,
}

/// A frozen guest, ready to diagnose.
struct Captured {
    subject: Subject,
    timeline: Vec<Phase>,
    /// Whether the guest ran before it was paused (then it runs again after `--now`).
    was_running: bool,
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
    let listener = args
        .registration
        .as_deref()
        .map(|p| rt.block_on(async { Listener::bind(p) }))
        .transpose()
        .map_err(failed)?;
    if let Some(l) = &listener {
        eprintln!(
            "ambulance: listening for the guest's registration on {}",
            l.path().display()
        );
        let mut watch = l.subscribe();
        rt.spawn(async move {
            while watch.changed().await.is_ok() {
                if let Some(r) = watch.borrow_and_update().clone() {
                    eprintln!("ambulance: guest registered: {r}");
                }
            }
        });
    }
    let mut attached = rt.block_on(attach(&args))?;
    let captured = rt.block_on(wait_and_capture(&args, &mut attached, listener.as_ref()))?;
    let Captured {
        subject,
        mut timeline,
        was_running,
    } = captured;

    let t = Instant::now();
    let memory = Arc::new(attached.ram.map().map_err(failed)?);
    timeline.push(Phase {
        name: "map".into(),
        duration_us: t.elapsed().as_micros() as u64,
    });
    let mut subject = subject;
    if let Some(r) = listener.as_ref().and_then(Listener::latest) {
        match ambulance_qemu::registration::vmcoreinfo_text(memory.as_ref(), &r) {
            Ok(text) => {
                subject.vmcoreinfo = Some(text);
                subject.vmcoreinfo_origin = Some("registration".into());
            }
            Err(e) => eprintln!(
                "ambulance: warning: the registered VMCOREINFO is unusable ({e}); scanning guest RAM for it"
            ),
        }
    } else if listener.is_some() {
        eprintln!("ambulance: the guest did not register; scanning guest RAM for its VMCOREINFO");
    }
    let options = options(&args, &subject, memory.as_ref())?;
    let report = diagnose(memory.clone(), &subject, &options, timeline).map_err(|e| {
        CliError::Failed(format!("cannot diagnose guest {}: {e}", subject.guest.name))
    })?;
    let report = match &args.report_dir {
        Some(dir) => {
            let w = ambulance_service::capture::write_outputs(
                dir,
                report,
                memory.as_ref(),
                options.debuginfo.as_deref(),
                None,
                subject.vmcoreinfo.clone(),
                args.core,
            )?;
            eprintln!("ambulance: report written to {}", w.json.display());
            if let Some(core) = &w.core {
                eprintln!("ambulance: core written to {}", core.display());
            }
            w.report
        }
        None => report,
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", ambulance_report::text::render(&report));
    }
    if args.now && was_running {
        rt.block_on(attached.qmp.cont()).map_err(failed)?;
        eprintln!("ambulance: guest {} runs again", subject.guest.name);
    } else if subject.failure.cause == "panic" {
        eprintln!(
            "ambulance: guest {} stays paused for forensics (QMP `system_reset` then `cont` runs it again)",
            subject.guest.name
        );
    }
    Ok(())
}

/// Connects to QEMU and learns the guest: RAM file and layout, vCPUs, name.
async fn attach(args: &AttachArgs) -> Result<Attached, CliError> {
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        command_timeout: Duration::from_secs(30),
    };
    let (qmp, events) = Qmp::connect(&args.qmp, options).await.map_err(failed)?;
    let ram = RamFile::discover(&qmp, args.memory.as_deref())
        .await
        .map_err(failed)?;
    let vcpus = qmp.query_cpus().await.map_err(failed)?.len() as u32;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => qmp
            .query_name()
            .await
            .map_err(failed)?
            .unwrap_or_else(|| socket_name(&args.qmp)),
    };
    eprintln!(
        "ambulance: attached to guest {name} (QEMU {}, pid {}): {vcpus} vCPUs, {} MiB of RAM in {} ({})",
        qmp.version(),
        qmp.peer_pid().map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        ram.layout.size >> 20,
        ram.path.display(),
        ram.machine_type.as_deref().unwrap_or("?"),
    );
    Ok(Attached {
        guest: GuestInfo {
            name,
            id: u64::from(qmp.peer_pid().unwrap_or(0)),
            generation: 0,
            memory_bytes: ram.layout.size,
            vcpus,
        },
        qmp,
        events,
        ram,
    })
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

/// Waits for the failure (or not, with `--now`), then freezes the guest and takes its
/// registers.
async fn wait_and_capture(
    args: &AttachArgs,
    a: &mut Attached,
    listener: Option<&Listener>,
) -> Result<Captured, CliError> {
    let status = a.qmp.query_status().await.map_err(failed)?;
    let failure = if args.now {
        failure(
            "operator",
            "operator request (ambulance attach --now)".into(),
            BTreeMap::new(),
            std::time::SystemTime::now(),
        )
    } else if status.status == "guest-panicked" {
        failure(
            "panic",
            "the guest had already panicked when ambulance attached".into(),
            BTreeMap::new(),
            std::time::SystemTime::now(),
        )
    } else {
        eprintln!(
            "ambulance: guest {} is {}; waiting for it to panic (GUEST_PANICKED)",
            a.guest.name, status.status
        );
        loop {
            let Some(e) = a.events.next().await else {
                return Err(CliError::Failed(format!(
                    "QEMU closed the QMP connection ({}) before guest {} failed",
                    a.qmp.socket().display(),
                    a.guest.name
                )));
            };
            match e.name.as_str() {
                "GUEST_PANICKED" => {
                    let data: BTreeMap<String, serde_json::Value> = e
                        .data
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default();
                    let action = data
                        .get("action")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_string();
                    eprintln!(
                        "ambulance: guest {} panicked (action {action})",
                        a.guest.name
                    );
                    break failure(
                        "panic",
                        format!("QEMU reported GUEST_PANICKED (action {action})"),
                        data,
                        e.time,
                    );
                }
                "RESET" => {
                    if let Some(l) = listener {
                        l.forget();
                    }
                }
                "SHUTDOWN" => eprintln!("ambulance: guest {} shut down ({})", a.guest.name, e.data),
                _ => {}
            }
        }
    };
    let t = Instant::now();
    let status = a.qmp.query_status().await.map_err(failed)?;
    if status.running {
        a.qmp.stop().await.map_err(failed)?;
    }
    let vcpus = a.qmp.registers().await.map_err(failed)?;
    let freeze = Phase {
        name: "freeze".into(),
        duration_us: t.elapsed().as_micros() as u64,
    };
    Ok(Captured {
        subject: Subject {
            guest: a.guest.clone(),
            failure,
            vcpus,
            descriptor_gpa: None,
            descriptor_bytes: None,
            vmcoreinfo: None,
            vmcoreinfo_origin: None,
        },
        timeline: vec![freeze],
        was_running: status.running,
    })
}

fn failure(
    cause: &str,
    detail: String,
    data: BTreeMap<String, serde_json::Value>,
    time: std::time::SystemTime,
) -> FailureInfo {
    FailureInfo {
        cause: cause.into(),
        detail,
        time: ambulance_diagnose::rfc3339(time),
        vcpu: None,
        data,
    }
}

/// Diagnosis options: `--debuginfo` checked against the guest kernel's build ID (from
/// its VMCOREINFO: the registered note, else the one a RAM scan finds) and `--rules`.
fn options(
    args: &AttachArgs,
    subject: &Subject,
    memory: &dyn ambulance_introspect::memory::PhysicalMemory,
) -> Result<ambulance_diagnose::Options, CliError> {
    let build_id = args.debuginfo.as_ref().and_then(|_| {
        let text = match &subject.vmcoreinfo {
            Some(t) => t.clone(),
            None => ambulance_linux::scan_vmcoreinfo(memory)?.1,
        };
        let info = ambulance_introspect::vmcoreinfo::Vmcoreinfo::parse(&text).ok()?;
        info.build_id().map(<[u8]>::to_vec)
    });
    crate::diagnose_options(
        None,
        args.debuginfo.as_deref().map(|p| (p, build_id.as_deref())),
        None,
        args.rules.as_deref(),
    )
}
