//! One diagnosis, start to end.
//!
//! [`diagnose`] takes a frozen guest's physical memory and what the host knows about it
//! (its registration, its vCPUs, why it failed) and runs the pipeline in order:
//! memory view → address translation → symbols and types → walkers → validators →
//! [`Report`]. The same function serves a live guest (a read-only mapping of its RAM), an
//! ELF core file ([`Subject::from_core`]) and tests.
//!
//! A core written by Ambulance ([`core::write_core_file`]) carries the registration
//! descriptor and the failure as notes, so an offline diagnosis of it finds what the live
//! one found.
//!
//! # Partial reports
//!
//! A diagnosis always ends in a report, of what could be done:
//!
//! * with a deadline ([`Options::with_deadline`]), every phase — loading the kernel's
//!   tables, the walks, the validators, the log, the kernel section — stops at it, and one
//!   finding of kind diagnosis says which phases were cut short or not done;
//! * a dump cut short (its file ends before its segments do) is read as far as it goes:
//!   a finding of kind diagnosis names the guest-physical ranges that are missing, and
//!   reads there are unreadable, never zeros;
//! * walks and validators that ran out of budget say so in `structures` and in findings
//!   of kind diagnosis ([`ambulance_validate::context`]).

#![forbid(unsafe_code)]

pub mod core;
pub mod linux;

use std::sync::Arc;
use std::time::Instant;

use ambulance_abi::descriptor::{self, Descriptor, FLAG_LA57};
use ambulance_elfcore::{
    NOTE_NAME, NT_AMBULANCE_DESCRIPTOR, NT_AMBULANCE_DESCRIPTOR_GPA, NT_AMBULANCE_FAILURE,
    NT_AMBULANCE_GUEST,
};
use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::memory::{ElfCore, LiveMemory, PhysicalMemory};
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::WalkLimits;
use ambulance_ram::GuestRam;
use ambulance_report::{
    FailureInfo, FindingKind, GuestInfo, Hex, Phase, RegistrationSummary, Report, ReportId,
    RootSummary, Severity, ToolInfo, VcpuRegisters, SCHEMA_VERSION,
};
use ambulance_validate::rules::RuleSet;
use ambulance_validate::{Context, Registry, ValidationConfig};
use serde::{Deserialize, Serialize};

/// Why a diagnosis could not be made at all (anything less becomes a finding).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the guest or its debug info failed.
    #[error(transparent)]
    Introspect(#[from] ambulance_introspect::Error),
    /// The core file could not be written.
    #[error("cannot write the core {}: {reason}", path.display())]
    Core {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// Nothing tells where the guest's page tables are.
    #[error("cannot translate guest addresses: no registration descriptor, no swapper_pg_dir in VMCOREINFO, and no vCPU with paging enabled")]
    NoPageTables,
}

/// What is being diagnosed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subject {
    /// The id the report gets (minted when the failure was accepted).
    pub report_id: ReportId,
    /// The guest.
    pub guest: GuestInfo,
    /// Why.
    pub failure: FailureInfo,
    /// Every vCPU's registers as frozen.
    pub vcpus: Vec<VcpuRegisters>,
    /// Guest-physical address of the registration descriptor.
    pub descriptor_gpa: Option<u64>,
    /// The host's copy of the descriptor (taken at registration).
    pub descriptor_bytes: Option<Vec<u8>>,
    /// VMCOREINFO from elsewhere than the descriptor (a core note, a registration).
    /// Without it or a descriptor, the diagnosis scans guest RAM for the kernel's note.
    pub vmcoreinfo: Option<String>,
    /// Where `vmcoreinfo` came from (`core-note`, `registration`), for the report.
    pub vmcoreinfo_origin: Option<String>,
    /// Where a Linux agent said the kernel's VMCOREINFO note is (read at diagnosis, in
    /// the worker: the daemon never parses guest memory). Used when `vmcoreinfo` is not
    /// given.
    #[serde(default)]
    pub vmcoreinfo_note: Option<NoteAddress>,
    /// What could not be used of a core file's notes (said in findings of kind
    /// diagnosis).
    #[serde(default)]
    pub core_problems: Vec<String>,
}

/// The guest-physical address of an ELF note and the size of its buffer, as
/// `/sys/kernel/vmcoreinfo` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteAddress {
    /// Guest-physical address of the note.
    pub pa: u64,
    /// Size of its buffer.
    pub size: u64,
}

impl Subject {
    /// What an ELF core says about its guest: registers from `NT_PRSTATUS`, VMCOREINFO,
    /// and — in cores Ambulance wrote — the descriptor, the failure and the guest.
    pub fn from_core(core: &ElfCore) -> Subject {
        let note = |n_type: u32| core.note(NOTE_NAME, n_type).map(<[u8]>::to_vec);
        let failure = note(NT_AMBULANCE_FAILURE)
            .and_then(|d| serde_json::from_slice::<FailureInfo>(&d).ok())
            .unwrap_or_else(|| FailureInfo {
                cause: "offline".into(),
                detail: "diagnosed from a core file".into(),
                time: ambulance_report::now(),
                vcpu: None,
                data: Default::default(),
            });
        let guest = note(NT_AMBULANCE_GUEST)
            .and_then(|d| serde_json::from_slice::<GuestInfo>(&d).ok())
            .unwrap_or_else(|| GuestInfo {
                name: "core".into(),
                id: 0,
                generation: 0,
                memory_bytes: core.ranges().iter().map(|r| r.size).sum(),
                vcpus: core.prstatus().len() as u32,
            });
        let descriptor_bytes = note(NT_AMBULANCE_DESCRIPTOR);
        let descriptor_gpa = note(NT_AMBULANCE_DESCRIPTOR_GPA).and_then(|d| {
            d.get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        });
        let mut core_problems = Vec::new();
        let vcpus = crate::core::core_vcpus(core.prstatus(), core.notes(), &mut core_problems);
        Subject {
            report_id: ReportId::mint(&guest.name, ambulance_report::now()),
            guest,
            failure,
            vcpus,
            descriptor_gpa,
            descriptor_bytes,
            vmcoreinfo: core.vmcoreinfo().map(str::to_string),
            vmcoreinfo_origin: core.vmcoreinfo().map(|_| "core-note".to_string()),
            vmcoreinfo_note: None,
            core_problems,
        }
    }
}

/// How to diagnose.
#[derive(Default)]
pub struct Options {
    /// The kernel's debug info (symbols, DWARF, and its image for comparisons).
    pub debuginfo: Option<Arc<DebugInfo>>,
    /// Declarative rules.
    pub rules: Option<RuleSet>,
    /// Which validators run, and budgets — the diagnosis deadline among them
    /// ([`Options::with_deadline`]).
    pub config: ValidationConfig,
}

impl Options {
    /// The same options with a deadline: the diagnosis stops every phase at `deadline`
    /// and still returns a report, saying in a finding of kind diagnosis what was not
    /// done. A process killed at a wall-clock limit should set it a margin before that
    /// limit, enough to write the core (if any) and hand the report over.
    pub fn with_deadline(mut self, deadline: Instant) -> Options {
        self.config.deadline = Some(deadline);
        self
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.config.deadline
    }
}

/// The diagnosis deadline, and the phases it cut short or left undone.
struct Deadline {
    at: Option<Instant>,
    missed: Vec<String>,
}

impl Deadline {
    fn passed(&self) -> bool {
        self.at.is_some_and(|d| Instant::now() >= d)
    }

    /// `limits` cut to the time left.
    fn limit(&self, limits: WalkLimits) -> WalkLimits {
        match self.at {
            Some(d) => WalkLimits {
                time_budget: limits
                    .time_budget
                    .min(d.saturating_duration_since(Instant::now())),
                ..limits
            },
            None => limits,
        }
    }

    /// Whether the phase `what` may start; if not, it is recorded as not done.
    fn start(&mut self, what: &str) -> bool {
        if self.passed() {
            self.missed.push(format!("{what} (not started)"));
            return false;
        }
        true
    }

    /// Records that `what` ran into the deadline, if it did.
    fn check(&mut self, what: &str) {
        if self.passed() {
            self.missed.push(format!("{what} (cut short)"));
        }
    }
}

/// Diagnoses a frozen guest from its RAM: maps `ram` read-only, runs [`diagnose`], and,
/// given `core`, writes the guest's ELF core there (see [`core::write_core_file`]).
/// `timeline` holds the phases that happened before (freeze, …).
pub fn diagnose_ram(
    ram: &GuestRam,
    subject: &Subject,
    options: &Options,
    mut timeline: Vec<Phase>,
    core: Option<core::CoreOutput<'_>>,
) -> Result<Report, Error> {
    let t = Instant::now();
    let memory = Arc::new(LiveMemory::map(ram)?);
    timeline.push(Phase {
        name: "map".into(),
        duration_us: t.elapsed().as_micros() as u64,
    });
    let mut report = diagnose(memory.clone(), subject, options, timeline)?;
    if let Some(out) = core {
        let t = Instant::now();
        let path = out.path().to_path_buf();
        core::write_core_file(
            out,
            &memory,
            &report,
            options.debuginfo.as_deref(),
            subject.descriptor_gpa.zip(subject.descriptor_bytes.clone()),
            core_vmcoreinfo(memory.as_ref(), subject, &report),
        )
        .map_err(|reason| Error::Core { path, reason })?;
        report.timeline.push(Phase {
            name: "core".into(),
            duration_us: t.elapsed().as_micros() as u64,
        });
    }
    Ok(report)
}

/// The VMCOREINFO text a core of this guest carries (drgn and crash need it to read a
/// kernel core): the one given or registered, else the one the diagnosis found by
/// scanning RAM.
fn core_vmcoreinfo(
    memory: &dyn PhysicalMemory,
    subject: &Subject,
    report: &Report,
) -> Option<String> {
    if let Some(text) = &subject.vmcoreinfo {
        return Some(text.clone());
    }
    if let Some(at) = subject.vmcoreinfo_note {
        if let Ok(text) = ambulance_linux::vmcoreinfo_note_at(memory, at.pa, at.size) {
            return Some(text);
        }
    }
    let scanned = report
        .kernel
        .as_ref()
        .and_then(|k| k.sources.vmcoreinfo.as_deref())
        == Some("memory-scan");
    scanned
        .then(|| ambulance_linux::scan_vmcoreinfo(memory).map(|(_, text)| text))
        .flatten()
}

/// Runs one diagnosis. `timeline` holds the phases that happened before (freeze, map);
/// the pipeline appends its own.
pub fn diagnose(
    memory: Arc<dyn PhysicalMemory>,
    subject: &Subject,
    options: &Options,
    mut timeline: Vec<Phase>,
) -> Result<Report, Error> {
    let t = Instant::now();
    let mut deadline = Deadline {
        at: options.deadline(),
        missed: Vec::new(),
    };
    let descriptor: Option<Descriptor> = subject
        .descriptor_bytes
        .as_deref()
        .and_then(|b| descriptor::parse(b).ok());
    let mut notes = Vec::new();
    let (vmcoreinfo, vmcoreinfo_origin) =
        find_vmcoreinfo(memory.as_ref(), descriptor.as_ref(), subject, &mut notes);
    let la57 = descriptor
        .as_ref()
        .is_some_and(|d| d.flags & FLAG_LA57 != 0)
        || vmcoreinfo
            .as_ref()
            .is_some_and(|v| ambulance_linux::paging(v) == Paging::Five)
        || subject
            .vcpus
            .first()
            .is_some_and(|v| v.cr4.0 & (1 << 12) != 0);
    // The page-table root: the registered one; else Linux's swapper_pg_dir from
    // VMCOREINFO (its kernel-image address minus __START_KERNEL_map plus phys_base);
    // else a vCPU's CR3.
    let root = descriptor
        .as_ref()
        .map(|d| d.page_table_root)
        .or_else(|| {
            vmcoreinfo
                .as_ref()
                .and_then(ambulance_linux::page_table_root)
        })
        .or_else(|| {
            subject
                .vcpus
                .iter()
                .map(|v| v.cr3.0 & 0x000f_ffff_ffff_f000)
                .find(|&c| c != 0)
        })
        .ok_or(Error::NoPageTables)?;
    let limits = WalkLimits {
        max_nodes: options.config.max_nodes,
        time_budget: std::time::Duration::from_millis(options.config.walk_budget_ms),
    };
    // Decoding a kernel's own tables (kallsyms, BTF, the printk ring) is a one-time load,
    // bounded on its own: a walk's budget is far too small for it on a busy host.
    let load_limits = WalkLimits {
        time_budget: std::time::Duration::from_millis(options.config.load_budget_ms),
        ..limits
    };
    let mut program = Program::new(memory, root, if la57 { Paging::Five } else { Paging::Four });
    if let Some(v) = &vmcoreinfo {
        program = program.with_vmcoreinfo(v.clone());
    }
    // A guest that registered no descriptor but has VMCOREINFO is Linux: the host's
    // knowledge of Linux supplies symbols, types and roots.
    let linux = vmcoreinfo.as_ref().filter(|_| descriptor.is_none());
    let mut sources = ambulance_report::KernelSources {
        vmcoreinfo: vmcoreinfo_origin,
        ..Default::default()
    };
    let mut kernel_roots = Vec::new();
    if let Some(v) = linux {
        timeline.push(Phase {
            name: "translate".into(),
            duration_us: t.elapsed().as_micros() as u64,
        });
        let d = options.debuginfo.as_deref();
        if deadline.start("loading the kernel's symbols and types") {
            let load = deadline.limit(load_limits);
            program = linux::load(program, v, d, load, &mut sources, &mut timeline);
            deadline.check("loading the kernel's symbols and types");
        }
        kernel_roots = linux::roots(&program, limits, &mut sources);
    } else if let Some(d) = &options.debuginfo {
        let load_offset = descriptor.as_ref().map_or(0, |d| d.load_offset);
        match d.symbols_at(load_offset) {
            Ok(s) => program = program.with_symbols(s),
            Err(e) => notes.push(format!("kernel symbols unusable: {e}")),
        }
        match d.types() {
            Ok(t) => program = program.with_types(t),
            Err(e) => notes.push(format!("kernel types unusable: {e}")),
        }
    }
    if linux.is_none() {
        timeline.push(Phase {
            name: "translate+types".into(),
            duration_us: t.elapsed().as_micros() as u64,
        });
    }

    let mut ctx = Context::new(&program, &subject.failure, &subject.vcpus, limits);
    ctx.deadline = deadline.at;
    ctx.kernel_roots = &kernel_roots;
    ctx.descriptor = descriptor.as_ref();
    ctx.descriptor_bytes = subject.descriptor_bytes.as_deref();
    ctx.descriptor_gpa = subject.descriptor_gpa;
    ctx.vmcoreinfo = vmcoreinfo.as_ref();
    ctx.kernel_elf = options.debuginfo.as_ref().map(|d| d.elf_bytes());
    let mut registry = Registry::builtin();
    if let Some(rules) = &options.rules {
        registry.add(Box::new(rules.clone()));
    }
    let (mut findings, phases) = if deadline.start("the validators") {
        let run = registry.run(&ctx, &options.config);
        deadline.check("the validators");
        run
    } else {
        (Vec::new(), Vec::new())
    };
    timeline.extend(phases);
    // What the diagnosis could not use or do is about the diagnosis, not the guest.
    let about = |root: &str, severity, message: String| {
        ctx.note("diagnosis", severity, root, message)
            .with_kind(FindingKind::Diagnosis)
    };
    for n in notes {
        findings.push(about("vmcoreinfo", Severity::Warning, n));
    }
    if subject.descriptor_bytes.is_some() && descriptor.is_none() {
        findings.push(about(
            "descriptor",
            Severity::Error,
            "the host's copy of the registration descriptor does not parse; roots were not walked"
                .into(),
        ));
    }
    findings.extend(incomplete_memory(program.memory().as_ref(), &about));
    for p in &subject.core_problems {
        findings.push(about("core", Severity::Warning, p.clone()));
    }
    let t = Instant::now();
    let mut log = Vec::new();
    if deadline.start("reading the log") {
        let read = ambulance_validate::log::read(&ctx);
        deadline.check("reading the log");
        if read.unreadable > 0 {
            findings.push(about(
                "log",
                Severity::Warning,
                format!(
                    "{} log record(s) could not be read (the first slot at {:#x}) and are \
                     missing from the log; the others are there",
                    read.unreadable,
                    read.first_unreadable.unwrap_or(0)
                ),
            ));
        }
        for p in read.problems {
            findings.push(about("log", Severity::Warning, p));
        }
        log = read.records;
    }
    timeline.push(Phase {
        name: "log".into(),
        duration_us: t.elapsed().as_micros() as u64,
    });
    let kernel = linux.map(|v| {
        let t = Instant::now();
        let mut sources = sources;
        let k = if deadline.start("reading the kernel's dmesg and tasks") {
            let lines = options.debuginfo.as_deref().and_then(|d| {
                let slide = ambulance_linux::sources::usable_debuginfo(d, v).ok()?;
                Some(linux::SourceLines::new(d, slide))
            });
            let limits = deadline.limit(load_limits);
            let k = linux::kernel_info(&ctx, v, sources, limits, lines.as_ref());
            deadline.check("reading the kernel's dmesg and tasks");
            k
        } else {
            sources
                .missing
                .push("dmesg and tasks: not read, the diagnosis deadline had passed".into());
            linux::kernel_identity(v, &program, sources)
        };
        timeline.push(Phase {
            name: "kernel".into(),
            duration_us: t.elapsed().as_micros() as u64,
        });
        k
    });
    if !deadline.missed.is_empty() {
        findings.push(about(
            "deadline",
            Severity::Warning,
            format!(
                "the diagnosis deadline passed: this report is partial; not done: {}",
                deadline.missed.join(", ")
            ),
        ));
    }
    let structures = ctx.structures();
    let registration = descriptor.as_ref().map(|d| RegistrationSummary {
        descriptor_gpa: Hex(subject.descriptor_gpa.unwrap_or(0)),
        build_id: d.build_id.iter().map(|b| format!("{b:02x}")).collect(),
        load_offset: d.load_offset,
        page_table_root: Hex(d.page_table_root),
        vmcoreinfo: d.vmcoreinfo.is_some(),
        roots: d
            .roots
            .iter()
            .map(|r| RootSummary {
                name: r.name.clone(),
                kind: r.kind.name().into(),
                address: Hex(r.address),
                type_name: r.type_name.clone(),
                element_size: r.element_size,
                max_count: r.max_count,
            })
            .collect(),
    });
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let mut failure = subject.failure.clone();
    let mut vcpus = subject.vcpus.clone();
    if let Some(c) = kernel.as_ref().and_then(|k| k.crash.as_ref()) {
        what_the_kernel_says(&mut failure, &mut vcpus, c);
    }
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        id: subject.report_id.clone(),
        tool: ToolInfo::current(),
        guest: subject.guest.clone(),
        failure,
        timeline,
        vcpus,
        registration,
        structures,
        findings,
        log,
        artifacts: Default::default(),
        kernel,
    })
}

/// What a Linux kernel's own account of its failure adds to the host's: a dump diagnosed
/// after the fact (`offline`) takes the kernel's cause, message, CPU and task; any
/// failure gains them in `data`; the failed CPU's vCPU is `failed`.
fn what_the_kernel_says(
    failure: &mut ambulance_report::FailureInfo,
    vcpus: &mut [ambulance_report::VcpuRegisters],
    c: &ambulance_report::KernelCrash,
) {
    if failure.cause == "offline" {
        failure.cause = c.kind.clone();
        failure.detail = c.message.clone();
        failure.vcpu = c.vcpu;
    }
    let data = &mut failure.data;
    data.insert("kernel_cause".into(), c.kind.clone().into());
    data.insert("kernel_message".into(), c.message.clone().into());
    if let Some(m) = &c.panic_message {
        data.insert("panic_message".into(), m.clone().into());
    }
    if let Some(cpu) = c.cpu {
        data.insert("cpu".into(), cpu.into());
    }
    if let Some(pid) = c.pid {
        data.insert("pid".into(), pid.into());
    }
    if let Some(comm) = &c.comm {
        data.insert("comm".into(), comm.clone().into());
    }
    if let Some(v) = c.vcpu.and_then(|i| vcpus.iter_mut().find(|v| v.vcpu == i)) {
        if v.activity == "unknown" {
            v.activity = "failed".into();
        }
    }
}

/// Most missing ranges a finding lists.
const MAX_MISSING_LISTED: usize = 16;

/// What a partly unreadable source lacks, as findings of kind diagnosis.
fn incomplete_memory(
    memory: &dyn PhysicalMemory,
    about: &dyn Fn(&str, Severity, String) -> ambulance_report::Finding,
) -> Vec<ambulance_report::Finding> {
    let missing = memory.missing();
    let mut out = Vec::new();
    if !missing.is_empty() {
        let bytes: u64 = missing.iter().map(|r| r.size).fold(0, u64::saturating_add);
        let mut ranges: Vec<String> = missing
            .iter()
            .take(MAX_MISSING_LISTED)
            .map(|r| format!("{:#x}..{:#x}", r.start, r.end()))
            .collect();
        if missing.len() > MAX_MISSING_LISTED {
            ranges.push(format!("and {} more", missing.len() - MAX_MISSING_LISTED));
        }
        out.push(about(
            "memory",
            Severity::Warning,
            format!(
                "{} is incomplete: {bytes} bytes of guest-physical memory are missing ({}); \
                 this report is of what is there, and whatever lay in the missing ranges \
                 reads as unreadable",
                memory.describe(),
                ranges.join(", ")
            ),
        ));
    }
    for w in memory.warnings() {
        out.push(about("memory", Severity::Warning, w));
    }
    out
}

/// VMCOREINFO and where it came from: registered in the descriptor, handed over (core
/// note, the Linux agent's registration), or — for a guest that registered no descriptor
/// — found by scanning RAM for the kernel's note, also when what was handed over is
/// unusable (garbage, or without the translation entries).
fn find_vmcoreinfo(
    memory: &dyn PhysicalMemory,
    descriptor: Option<&Descriptor>,
    subject: &Subject,
    notes: &mut Vec<String>,
) -> (Option<Vmcoreinfo>, Option<String>) {
    let given = match descriptor {
        Some(d) => d.vmcoreinfo.clone().map(|t| (t, "descriptor".to_string())),
        None => match (&subject.vmcoreinfo, subject.vmcoreinfo_note) {
            (Some(t), _) => {
                let origin = subject.vmcoreinfo_origin.clone();
                Some((t.clone(), origin.unwrap_or_else(|| "provided".into())))
            }
            (None, Some(at)) => match ambulance_linux::vmcoreinfo_note_at(memory, at.pa, at.size) {
                Ok(t) => Some((t, "registration".to_string())),
                Err(e) => {
                    notes.push(format!(
                        "the registered VMCOREINFO is unusable ({e}); scanning guest RAM for it"
                    ));
                    None
                }
            },
            (None, None) => None,
        },
    };
    if let Some((text, origin)) = given {
        match Vmcoreinfo::parse(&text) {
            Ok(v) if descriptor.is_some() || v.symbol("swapper_pg_dir").is_some() => {
                return (Some(v), Some(origin))
            }
            Ok(_) => notes.push(format!(
                "VMCOREINFO from {origin} has no SYMBOL(swapper_pg_dir); not used"
            )),
            Err(e) => notes.push(format!("VMCOREINFO from {origin} unusable: {e}")),
        }
    }
    if descriptor.is_some() {
        return (None, None);
    }
    match ambulance_linux::scan_vmcoreinfo(memory).map(|(pa, text)| (pa, Vmcoreinfo::parse(&text)))
    {
        Some((_, Ok(v))) => (Some(v), Some("memory-scan".into())),
        Some((pa, Err(e))) => {
            notes.push(format!(
                "VMCOREINFO note found in RAM at {pa:#x} is unusable: {e}"
            ));
            (None, None)
        }
        None => (None, None),
    }
}
