//! Capturing a frozen guest of this process's VMM for diagnosis: the report's view of the
//! failure and the registers, and — for `ambulance run` and the tests — an in-process
//! diagnosis that writes the JSON report, its text rendering and, on request, an ELF core.
//! The daemon diagnoses in a worker process instead (see [`crate::worker`]) but uses the
//! same pieces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ambulance_diagnose::{diagnose, Options, Subject, NT_AMBULANCE_FAILURE, NT_AMBULANCE_GUEST};
use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::memory::{LiveMemory, PhysicalMemory};
use ambulance_report::core::{write_core, CoreInput, Note, RamRange, VirtualWindow, NOTE_NAME};
use ambulance_report::{FailureInfo, GuestInfo, Hex, Phase, Report, VcpuRegisters};
use ambulance_vmm::{FailureCause, FrozenSummary, Guest, VcpuActivity};

use serde_json::json;

use crate::error::{Result, ServiceError};

/// What the VMM said about a failure.
pub struct Failure<'a> {
    /// The cause.
    pub cause: &'a FailureCause,
    /// The failing vCPU.
    pub vcpu: Option<u32>,
    /// Details.
    pub detail: &'a str,
    /// The frozen registers.
    pub frozen: &'a FrozenSummary,
    /// When it happened.
    pub time: std::time::SystemTime,
}

/// Where the outputs went.
pub struct Written {
    /// The report.
    pub report: Report,
    /// `<dir>/<id>.json`.
    pub json: PathBuf,
    /// `<dir>/<id>.txt`.
    pub text: PathBuf,
    /// `<dir>/<id>.core`, when asked for.
    pub core: Option<PathBuf>,
}

/// The report's view of a failure.
pub fn failure_info(f: &Failure<'_>) -> FailureInfo {
    let mut data = BTreeMap::new();
    match f.cause {
        FailureCause::Panic { code, reason } => {
            data.insert("panic_code".into(), json!(code));
            data.insert("panic_reason".into(), json!(reason));
        }
        FailureCause::InternalError {
            suberror,
            hardware_entry_failure_reason,
        } => {
            data.insert("suberror".into(), json!(suberror));
            data.insert(
                "hardware_entry_failure_reason".into(),
                json!(hardware_entry_failure_reason),
            );
        }
        FailureCause::WatchdogStall {
            stalled_for_ms,
            heartbeat,
        } => {
            data.insert("stalled_for_ms".into(), json!(stalled_for_ms));
            data.insert("heartbeat".into(), json!(heartbeat));
        }
        FailureCause::Degraded {
            measured_hz,
            threshold_hz,
            window_ms,
        } => {
            data.insert("measured_hz".into(), json!(measured_hz));
            data.insert("threshold_hz".into(), json!(threshold_hz));
            data.insert("window_ms".into(), json!(window_ms));
        }
        FailureCause::TripleFault | FailureCause::Reset | FailureCause::Operator => {}
    }
    FailureInfo {
        cause: f.cause.name().into(),
        detail: f.detail.into(),
        time: ambulance_diagnose::rfc3339(f.time),
        vcpu: f.vcpu,
        data,
    }
}

/// The report's view of the frozen registers.
pub fn vcpu_registers(frozen: &FrozenSummary) -> Vec<VcpuRegisters> {
    frozen
        .vcpus
        .iter()
        .map(|r| VcpuRegisters {
            vcpu: r.index,
            activity: match r.activity {
                VcpuActivity::Running => "running",
                VcpuActivity::Halted => "halted",
                VcpuActivity::Failed => "failed",
            }
            .into(),
            rip: Hex(r.rip),
            rsp: Hex(r.rsp),
            rbp: Hex(r.rbp),
            rflags: Hex(r.rflags),
            rax: Hex(r.rax),
            rbx: Hex(r.rbx),
            rcx: Hex(r.rcx),
            rdx: Hex(r.rdx),
            rsi: Hex(r.rsi),
            rdi: Hex(r.rdi),
            r8: Hex(r.r8),
            r9: Hex(r.r9),
            r10: Hex(r.r10),
            r11: Hex(r.r11),
            r12: Hex(r.r12),
            r13: Hex(r.r13),
            r14: Hex(r.r14),
            r15: Hex(r.r15),
            cr0: Hex(r.cr0),
            cr2: Hex(r.cr2),
            cr3: Hex(r.cr3),
            cr4: Hex(r.cr4),
            efer: Hex(r.efer),
            fs_base: Hex(r.fs_base),
            gs_base: Hex(r.gs_base),
        })
        .collect()
}

/// The debug info for a `--kernel` argument: the test kernel's own ELF, or the file.
pub fn debuginfo_for(kernel: &str) -> Result<Arc<DebugInfo>> {
    let path = if kernel == "test" {
        ambulance_test_kernel::ELF_PATH
    } else {
        kernel
    };
    DebugInfo::open(path)
        .map(Arc::new)
        .map_err(|e| ServiceError::Diagnosis(format!("cannot read the kernel's debug info: {e}")))
}

/// The diagnosis subject of a frozen `guest`: who it is, why it failed, its registers and
/// the host's copy of its registration descriptor.
pub fn subject_for(guest: &Guest, failure: &Failure<'_>) -> Subject {
    let registration = guest.registration();
    let cfg = guest.config();
    Subject {
        guest: GuestInfo {
            name: guest.name().into(),
            id: guest.id(),
            generation: guest.generation(),
            memory_bytes: cfg.memory_bytes,
            vcpus: cfg.vcpus,
        },
        failure: failure_info(failure),
        vcpus: vcpu_registers(failure.frozen),
        descriptor_gpa: registration.as_ref().map(|r| r.gpa),
        descriptor_bytes: registration.as_ref().map(|r| r.bytes.clone()),
        vmcoreinfo: None,
        vmcoreinfo_origin: None,
    }
}

/// An operator-requested diagnosis in this process: freezes `guest` (it stays frozen; the
/// caller resumes or releases it), diagnoses it with cause `operator`, and writes the
/// outputs as [`diagnose_and_write`] does.
pub fn freeze_and_diagnose(
    guest: &Guest,
    detail: &str,
    options: &Options,
    dir: &Path,
    want_core: bool,
) -> Result<Written> {
    let frozen = guest.freeze()?;
    let summary = frozen.summary();
    let failure = Failure {
        cause: &FailureCause::Operator,
        vcpu: None,
        detail,
        frozen: &summary,
        time: std::time::SystemTime::now(),
    };
    diagnose_and_write(guest, &failure, options, dir, want_core)
}

/// Diagnoses the frozen `guest` in this process and writes `<dir>/<id>.json` and `.txt`
/// (and `.core`), each atomically.
pub fn diagnose_and_write(
    guest: &Guest,
    failure: &Failure<'_>,
    options: &Options,
    dir: &Path,
    want_core: bool,
) -> Result<Written> {
    let t = Instant::now();
    let export = guest.memory_export()?;
    let regions: Vec<(u64, u64, u64)> = export
        .regions
        .iter()
        .map(|r| (r.gpa, r.size, r.file_offset))
        .collect();
    let memory =
        Arc::new(LiveMemory::map(&export.file, &regions).map_err(|e| {
            ServiceError::Diagnosis(format!("cannot map guest RAM read-only: {e}"))
        })?);
    let timeline = vec![
        Phase {
            name: "freeze".into(),
            duration_us: failure.frozen.freeze_latency_us,
        },
        Phase {
            name: "map".into(),
            duration_us: t.elapsed().as_micros() as u64,
        },
    ];
    let subject = subject_for(guest, failure);
    let report = diagnose(memory.clone(), &subject, options, timeline)
        .map_err(|e| ServiceError::Diagnosis(e.to_string()))?;
    write_outputs(
        dir,
        report,
        memory.as_ref(),
        options.debuginfo.as_deref(),
        subject.descriptor_gpa.zip(subject.descriptor_bytes.clone()),
        subject.vmcoreinfo.clone(),
        want_core,
    )
}

/// Writes `report` into `dir` as `<id>.json` and `<id>.txt` and, with `want_core`, the
/// guest's `memory` as `<id>.core` (see [`write_core_file`]) — each atomically — and makes
/// the directory entries durable. The report records the core among its artifacts and
/// the time writing took.
pub fn write_outputs(
    dir: &Path,
    mut report: Report,
    memory: &LiveMemory,
    debuginfo: Option<&DebugInfo>,
    descriptor: Option<(u64, Vec<u8>)>,
    vmcoreinfo: Option<String>,
    want_core: bool,
) -> Result<Written> {
    std::fs::create_dir_all(dir).map_err(|e| ServiceError::io("cannot create", dir, e))?;
    let t = Instant::now();
    let base = dir.join(&report.id);
    let core = if want_core {
        let path = base.with_extension("core");
        write_core_file(&path, memory, &report, debuginfo, descriptor, vmcoreinfo)?;
        report
            .artifacts
            .insert("core".into(), path.display().to_string());
        Some(path)
    } else {
        None
    };
    let text_path = base.with_extension("txt");
    let json_path = base.with_extension("json");
    report.timeline.push(Phase {
        name: "write".into(),
        duration_us: t.elapsed().as_micros() as u64,
    });
    write_atomically(
        &text_path,
        ambulance_report::text::render(&report).as_bytes(),
    )?;
    write_atomically(&json_path, report.to_json().as_bytes())?;
    sync_dir(dir)?;
    Ok(Written {
        report,
        json: json_path,
        text: text_path,
        core,
    })
}

/// Writes (and fsyncs) an ELF core of `memory` for `report` at `path`: one `PT_LOAD` per
/// RAM range, `NT_PRSTATUS` per vCPU, VMCOREINFO (the descriptor's, else `vmcoreinfo` —
/// a Linux guest's note text) and the descriptor from the host's copy, the failure and
/// guest as Ambulance notes, and the kernel image's segments as virtual windows when its
/// debug info is known.
pub fn write_core_file(
    path: &Path,
    memory: &LiveMemory,
    report: &Report,
    debuginfo: Option<&DebugInfo>,
    descriptor: Option<(u64, Vec<u8>)>,
    vmcoreinfo: Option<String>,
) -> Result<()> {
    let ram: Vec<RamRange<'_>> = memory
        .ranges()
        .iter()
        .filter_map(|r| {
            memory
                .slice(r.start, r.size as usize)
                .map(|bytes| RamRange {
                    gpa: r.start,
                    bytes,
                })
        })
        .collect();
    let windows = debuginfo
        .map(|d| kernel_windows(d.elf_bytes()))
        .unwrap_or_default();
    let vmcoreinfo = descriptor
        .as_ref()
        .and_then(|(_, bytes)| ambulance_abi::descriptor::parse(bytes).ok())
        .and_then(|d| d.vmcoreinfo)
        .or(vmcoreinfo);
    let direct_map_base = vmcoreinfo
        .as_deref()
        .and_then(|v| ambulance_introspect::vmcoreinfo::Vmcoreinfo::parse(v).ok())
        .and_then(|v| v.symbol("direct_map_base"));
    let json = |v: serde_json::Result<Vec<u8>>| {
        v.map_err(|e| ServiceError::Diagnosis(format!("cannot encode a core note: {e}")))
    };
    let input = CoreInput {
        ram,
        vcpus: report.vcpus.clone(),
        vmcoreinfo,
        descriptor,
        extra_notes: vec![
            Note {
                name: NOTE_NAME.into(),
                n_type: NT_AMBULANCE_FAILURE,
                desc: json(serde_json::to_vec(&report.failure))?,
            },
            Note {
                name: NOTE_NAME.into(),
                n_type: NT_AMBULANCE_GUEST,
                desc: json(serde_json::to_vec(&report.guest))?,
            },
        ],
        direct_map_base,
        windows,
    };
    write_core(path, &input).map_err(|e| ServiceError::Diagnosis(e.to_string()))?;
    Ok(())
}

/// The kernel image's `PT_LOAD` segments as virtual windows (for gdb).
pub fn kernel_windows(elf: &[u8]) -> Vec<VirtualWindow> {
    use goblin::elf::{program_header::PT_LOAD, Elf};
    Elf::parse(elf)
        .map(|e| {
            e.program_headers
                .iter()
                .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
                .map(|p| VirtualWindow {
                    vaddr: p.p_vaddr,
                    paddr: p.p_paddr,
                    size: p.p_memsz,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The temporary name [`write_atomically`] writes `path` under first.
pub fn temp_path(path: &Path) -> PathBuf {
    path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ))
}

/// Writes a file so that it is either complete or absent: temp file, fsync, rename. Call
/// [`sync_dir`] on its directory afterwards to make the rename itself durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = temp_path(path);
    let err = |e: std::io::Error| ServiceError::io("cannot write", path, e);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ServiceError::io("cannot sync directory", dir, e))
}
