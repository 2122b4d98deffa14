//! The diagnosis report: what forensic engineers and programs receive.
//!
//! One [`Report`] per diagnosis, serialized as versioned JSON ([`SCHEMA_VERSION`]; the
//! JSON Schema is published as `crates/report/report.schema.json` and generated from these
//! types by [`json_schema`]). Guest addresses and other 64-bit values are [`Hex`] strings
//! (`"0xffff888003a1c000"`): they do not fit a JSON number. [`text::render`] renders a
//! report for people. A report is identified by a [`ReportId`], minted when the failure is
//! accepted, and its files are written by [`dir::ReportDir`]; times are [`Timestamp`]s
//! until serialized. (The ELF core written alongside a report is `ambulance_elfcore`'s
//! format, assembled by `ambulance_diagnose::core`.)

pub mod dir;
mod id;
pub mod text;

pub use dir::{Artifact, ReportDir, ReportFiles};
pub use id::{now, timestamp, ReportId, Timestamp};

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the report format. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// This crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A report id is not one Ambulance could have minted.
    #[error("{id:?} is not a valid report id: {why}")]
    BadId {
        /// The id (shortened).
        id: String,
        /// What is wrong.
        why: String,
    },
    /// A report file could not be written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A report could not be parsed.
    #[error("not an Ambulance report: {0}")]
    Parse(#[from] serde_json::Error),
    /// A report of a version this build does not read.
    #[error("report schema_version {found} is not supported (this build reads version {SCHEMA_VERSION})")]
    Version {
        /// The version in the document.
        found: u32,
    },
}

impl Error {
    fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A 64-bit value written as a `0x…` hex string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hex(pub u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix("0x").ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not a 0x-prefixed hex value"))
        })?;
        u64::from_str_radix(digits, 16)
            .map(Hex)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl JsonSchema for Hex {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Hex".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^0x[0-9a-f]{1,16}$",
            "description": "A 64-bit value (address, register) as a lower-case 0x-prefixed hex string."
        })
    }
}

impl From<u64> for Hex {
    fn from(v: u64) -> Self {
        Hex(v)
    }
}

/// One diagnosis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique id of this report (time, guest, a random part).
    pub id: ReportId,
    /// The tool that wrote it.
    pub tool: ToolInfo,
    /// The guest diagnosed.
    pub guest: GuestInfo,
    /// Why it was diagnosed.
    pub failure: FailureInfo,
    /// How long each phase took.
    pub timeline: Vec<Phase>,
    /// Every vCPU's registers as frozen.
    pub vcpus: Vec<VcpuRegisters>,
    /// What the guest registered at boot (the host's copy), if it registered.
    pub registration: Option<RegistrationSummary>,
    /// The structures walked and how each walk ended.
    pub structures: Vec<StructureWalk>,
    /// What the validators found, most severe first.
    pub findings: Vec<Finding>,
    /// The guest's log ring, oldest first.
    pub log: Vec<LogRecord>,
    /// Files written alongside (core dump), by kind.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
    /// What was read out of a Linux kernel (release, dmesg, panic, tasks), for guests
    /// that run Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelInfo>,
}

/// A Linux guest kernel as read from its memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// `uname -r` (VMCOREINFO `OSRELEASE`).
    pub release: Option<String>,
    /// The kernel's GNU build ID (hex), from VMCOREINFO.
    pub build_id: Option<String>,
    /// The KASLR slide of the kernel image (VMCOREINFO `KERNELOFFSET`).
    pub kaslr_offset: Option<Hex>,
    /// The text after `Kernel panic - not syncing: `, when the kernel panicked (never
    /// the `---[ end Kernel panic … ]---` trailer).
    pub panic_message: Option<String>,
    /// The CPU that panicked (the kernel's `panic_cpu`), when it did.
    pub panic_cpu: Option<u32>,
    /// The printk ring buffer, oldest record first.
    pub dmesg: Vec<DmesgRecord>,
    /// Records the ring held but that could not be read (reserved, overwritten, garbage).
    pub dmesg_dropped: u64,
    /// Every task on `init_task.tasks`, in list order (the walk's result is also in
    /// `structures`).
    pub tasks: Vec<TaskInfo>,
    /// Where symbols, types and VMCOREINFO came from, and what was missing.
    pub sources: KernelSources,
    /// Every CPU: its current task and its stack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<CpuInfo>,
    /// Why the kernel died, as its log and memory say, when they say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<KernelCrash>,
}

/// The failure a Linux kernel's own log and memory describe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelCrash {
    /// `panic`, `init_killed`, `null_dereference`, `general_protection_fault`, `bug`,
    /// `oops`, `soft_lockup`, `hard_lockup`, `hung_task` or `rcu_stall`.
    pub kind: String,
    /// The line that says what happened, as the kernel wrote it (for a bare panic, the
    /// panic's message).
    pub message: String,
    /// The panic's message, when the kernel panicked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_message: Option<String>,
    /// Sequence number of the dmesg record where the event starts.
    pub seq: u64,
    /// The CPU that failed: the kernel's `panic_cpu`, else the CPU its log names.
    pub cpu: Option<u32>,
    /// The vCPU that CPU ran on (matched by its per-CPU base), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
    /// The task that failed: PID.
    pub pid: Option<i32>,
    /// The task that failed: command.
    pub comm: Option<String>,
    /// The task that failed: its `task_struct` (the CPU's current task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Hex>,
    /// The registers the kernel saved for an oops (by the kernel's names, lower case:
    /// `rsp`, `eflags`, `rax` … `r15`, `cr2`, …): as it printed them, else read from the
    /// exception frame (`pt_regs`) on the failed CPU's stack.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registers: BTreeMap<String, Hex>,
    /// Where the oops happened as the kernel printed it (`func+0x16/0x20`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rip_symbol: Option<String>,
    /// Where the facts disagree or could not be read (the log's CPU against
    /// `panic_cpu`, a current task that could not be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One printk record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DmesgRecord {
    /// The kernel's sequence number.
    pub seq: u64,
    /// Nanoseconds since boot (local clock).
    pub timestamp_ns: u64,
    /// Log level, 0 (emerg) .. 7 (debug).
    pub level: u8,
    /// The message (may span lines).
    pub text: String,
}

/// One task (thread) of a Linux guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskInfo {
    /// Thread id (`task_struct.pid`).
    pub pid: i32,
    /// Thread-group id (`task_struct.tgid`).
    pub tgid: i32,
    /// Command name (`task_struct.comm`).
    pub comm: String,
    /// State as `ps` shows it: `R`, `S`, `D`, `T`, `t`, `X`, `Z`, `P`, `I`.
    pub state: String,
    /// Address of the `task_struct`.
    pub address: Hex,
    /// Its kernel stack, innermost frame first: unwound from its CPU's registers when it
    /// was running, else from its saved `thread.sp`; absent when not unwound (a dead
    /// task, no unwind information).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackTrace>,
}

/// One CPU of a Linux guest as the diagnosis found it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuInfo {
    /// The kernel's CPU number.
    pub cpu: u32,
    /// The vCPU that ran it (matched by its per-CPU base), when known.
    pub vcpu: Option<u32>,
    /// Its current task's `task_struct`.
    pub task: Option<Hex>,
    /// Its current task's PID (0 for the idle task).
    pub pid: Option<i32>,
    /// Its current task's command.
    pub comm: Option<String>,
    /// Its kernel stack from its registers, innermost frame first.
    pub stack: Option<StackTrace>,
    /// Why something is missing (no vCPU for this CPU, an unreadable current task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A kernel stack trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackTrace {
    /// Innermost first.
    pub frames: Vec<StackFrame>,
    /// Whether the unwind reached the bottom of the stack (user mode, or the first
    /// frame of a kernel thread).
    pub complete: bool,
    /// How the unwind ended, for people.
    pub end: String,
}

/// One frame of a [`StackTrace`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackFrame {
    /// Instruction address (a return address, except for the first frame and frames
    /// reached through an exception frame).
    pub pc: Hex,
    /// Stack pointer in the frame.
    pub sp: Hex,
    /// `function+0xoff/0xsize`, as the kernel prints it; absent outside known symbols.
    pub symbol: Option<String>,
    /// How it was found: `registers` (where the unwind started), `orc`, `pt_regs` (an
    /// interrupt or exception frame), `frame_pointer`.
    pub via: String,
    /// The `struct pt_regs` the frame's registers were read from, for a frame reached
    /// through an exception or interrupt frame that saved them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regs: Option<Hex>,
    /// The function's name from the debug info (DWARF): the subprogram's, or for an
    /// `inlined` frame the inlined function's. Absent without debug info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The source file, from the debug info's line program (for a frame that called an
    /// inlined function, the file of the call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line in `file` (of the instruction, or of the call for a return address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The column in `line`, when the compiler recorded one (0 is the left edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// A function the compiler inlined into the next frame's at this address (from
    /// DWARF's inlined subroutines): `pc` and `sp` are the next frame's, `symbol` is
    /// absent. Such frames come before the frame they were inlined into, innermost
    /// first, as gdb and drgn show them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

/// Where the facts of a [`KernelInfo`] came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelSources {
    /// Where VMCOREINFO came from: `core-note`, `registration`, `memory-scan`,
    /// `descriptor`; `None` without one.
    pub vmcoreinfo: Option<String>,
    /// Symbol sources used, best first: `dwarf` (debug-info ELF symbols), `kallsyms`,
    /// `vmcoreinfo`.
    pub symbols: Vec<String>,
    /// Type sources used, best first: `dwarf`, `btf`, `vmcoreinfo`.
    pub types: Vec<String>,
    /// What could not be used and why (e.g. "BTF: …", "debug info: build ID …").
    pub missing: Vec<String>,
}

/// The tool that wrote a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    /// "ambulance".
    pub name: String,
    /// Its version.
    pub version: String,
    /// How the process that read the guest's memory was confined, when it was a
    /// sandboxed worker (the daemon's); absent for a diagnosis in the tool's own process
    /// (`ambulance run`, `attach`, `diagnose --core`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxInfo>,
    /// What the diagnosis cost the host, measured by the daemon when its worker process
    /// ended (`wait4`'s resource usage); absent for an in-process diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<DiagnosisCost>,
}

impl ToolInfo {
    /// This build.
    pub fn current() -> Self {
        ToolInfo {
            name: "ambulance".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            sandbox: None,
            cost: None,
        }
    }
}

/// The host resources one diagnosis worker used, from its start to its exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiagnosisCost {
    /// Peak resident memory (bytes). Pages of the guest's RAM mapping count when the
    /// worker touched them; they are the guest's own, shared, not a copy.
    pub peak_rss_bytes: u64,
    /// CPU time in user mode (µs).
    pub user_cpu_us: u64,
    /// CPU time in the kernel on its behalf (µs).
    pub system_cpu_us: u64,
    /// Wall-clock time from spawning the worker to reaping it (µs).
    pub wall_us: u64,
}

/// The confinements a diagnosis worker put itself under before it read a byte of guest
/// memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxInfo {
    /// What was applied, in the order applied: `user_namespace`, `mount_namespace` (with
    /// an empty root), `network_namespace`, `pid_namespace`, `undumpable`,
    /// `no_new_privs`, `seccomp`.
    pub applied: Vec<String>,
    /// What the host refused, each as `name: why` (a host that forbids unprivileged
    /// user namespaces, say).
    pub refused: Vec<String>,
}

/// The guest diagnosed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestInfo {
    /// Its name.
    pub name: String,
    /// Its id on the host (0 for offline diagnosis).
    pub id: u64,
    /// Its generation (restarts).
    pub generation: u32,
    /// RAM in bytes.
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
}

/// Why the guest was diagnosed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureInfo {
    /// `panic`, `triple_fault`, `internal_error`, `watchdog_stall`, `degraded`, `reset`,
    /// `shutdown` (a guest that powered itself off), `operator`; for a core file diagnosed after the fact, the Linux kernel's own cause
    /// when the dump shows one (see [`KernelCrash::kind`]), else `offline`.
    pub cause: String,
    /// Details for people.
    pub detail: String,
    /// When the failure was detected (RFC 3339, UTC).
    pub time: Timestamp,
    /// The vCPU that failed, if one did.
    pub vcpu: Option<u32>,
    /// Cause-specific values (panic code and reason, heartbeat figures, …).
    #[serde(default)]
    pub data: BTreeMap<String, serde_json::Value>,
}

/// One phase of the diagnosis and its duration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// `freeze`, `map`, `translate`, `types`, `validator:<name>`, `write`, ….
    pub name: String,
    /// Microseconds.
    pub duration_us: u64,
}

/// One vCPU's registers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct VcpuRegisters {
    /// vCPU index.
    pub vcpu: u32,
    /// What it was doing: `running`, `halted`, `failed`.
    pub activity: String,
    pub rip: Hex,
    pub rsp: Hex,
    pub rbp: Hex,
    pub rflags: Hex,
    pub rax: Hex,
    pub rbx: Hex,
    pub rcx: Hex,
    pub rdx: Hex,
    pub rsi: Hex,
    pub rdi: Hex,
    pub r8: Hex,
    pub r9: Hex,
    pub r10: Hex,
    pub r11: Hex,
    pub r12: Hex,
    pub r13: Hex,
    pub r14: Hex,
    pub r15: Hex,
    pub cr0: Hex,
    pub cr2: Hex,
    pub cr3: Hex,
    pub cr4: Hex,
    pub efer: Hex,
    pub fs_base: Hex,
    pub gs_base: Hex,
    /// `MSR_KERNEL_GS_BASE` (the `swapgs` partner of `gs_base`), when the source gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_gs_base: Option<Hex>,
    /// Segment and descriptor-table registers (`cs`, `ds`, `es`, `fs`, `gs`, `ss`,
    /// `ldt`, `tr`, `gdt`, `idt`), when the source gave them (QEMU's per-CPU note).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentRegister>,
}

/// One segment or descriptor-table register as the CPU holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentRegister {
    /// `cs`, `ds`, `es`, `fs`, `gs`, `ss`, `ldt`, `tr`, `gdt` or `idt`.
    pub name: String,
    /// The selector (0 for `gdt` and `idt`).
    pub selector: u32,
    /// The base address.
    pub base: Hex,
    /// The limit.
    pub limit: u32,
    /// The descriptor's attribute bits, as QEMU keeps them.
    pub flags: u32,
}

/// What the guest registered at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSummary {
    /// Guest-physical address of the descriptor.
    pub descriptor_gpa: Hex,
    /// Kernel build ID, hex.
    pub build_id: String,
    /// KASLR slide.
    pub load_offset: i64,
    /// Page-table root.
    pub page_table_root: Hex,
    /// Whether it carried VMCOREINFO.
    pub vmcoreinfo: bool,
    /// The declared roots.
    pub roots: Vec<RootSummary>,
}

/// One declared root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RootSummary {
    /// Its name.
    pub name: String,
    /// list, array, object, ring, tree, or `freelists` (a Linux guest's SLUB free lists).
    pub kind: String,
    /// Its address.
    pub address: Hex,
    /// Element type name.
    pub type_name: String,
    /// Element size.
    pub element_size: u32,
    /// Declared walk limit.
    pub max_count: u32,
}

/// How a structure walk went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StructureWalk {
    /// Root name (or a Linux structure such as `init_task.tasks`).
    pub structure: String,
    /// list, array, object, ring, tree, or `freelists` (a Linux guest's SLUB free lists).
    pub kind: String,
    /// Elements visited.
    pub count: u64,
    /// How the walk ended.
    pub end: WalkOutcome,
}

/// How a walk ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WalkOutcome {
    /// `complete`, `cycle`, `limit`, `unreadable`, `timed_out`, or `unsupported` (a Linux
    /// structure this kernel does not have in the form the check knows; `detail` says
    /// why).
    pub kind: String,
    /// The address involved (cycle-closing node, unreadable node), if any.
    pub at: Option<Hex>,
    /// Details for people.
    pub detail: String,
}

/// How bad a finding is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// Suspicious.
    Warning,
    /// Broken.
    Error,
    /// Broken in a way that explains the failure.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        })
    }
}

/// Which structure a finding is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StructureRef {
    /// Root name.
    pub root: String,
    /// Element index within the root, when it has one.
    pub index: Option<u64>,
    /// Member path within the element (e.g. `run_list.prev`).
    pub path: Option<String>,
}

/// Where a finding is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Guest-virtual address.
    pub virt: Option<Hex>,
    /// Guest-physical address, when it translates.
    pub phys: Option<Hex>,
}

/// What a finding is: what analysing the guest's memory found, a restatement of the
/// failure event the host observed, or a note about the diagnosis itself. Consumers that
/// want "what is broken in memory" keep `analysis`; `event` findings say again what the
/// failure already said (with what memory adds to it), `mid_update` ones are
/// inconsistencies a held lock explains, and `diagnosis` ones say what was not checked.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Found by analysing the guest's memory and registers: corruption, inconsistencies,
    /// lock states, stuck CPUs. The default: reports written before findings had a kind
    /// read as this.
    #[default]
    Analysis,
    /// A structural inconsistency (a cycle, a bad magic, a `prev` that does not point
    /// back, a pointer out of its range) in a structure whose lock was held when the
    /// guest was frozen: most likely an update in progress, not corruption. Reported
    /// at severity info; the message names the lock and, when recorded, its owner.
    MidUpdate,
    /// Restates the failure event the host observed (the CPU that panicked, the
    /// heartbeat that stopped) at the place in memory it concerns.
    Event,
    /// About the diagnosis rather than the guest: a budget or the deadline ran out, a
    /// validator or phase was skipped, the dump lacks some memory. It says what was not
    /// checked.
    Diagnosis,
}

impl FindingKind {
    /// The name used in JSON and text (`analysis`, `mid_update`, `event`, `diagnosis`).
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::Analysis => "analysis",
            FindingKind::MidUpdate => "mid_update",
            FindingKind::Event => "event",
            FindingKind::Diagnosis => "diagnosis",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something a validator found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// The validator that found it.
    pub validator: String,
    /// How bad it is.
    pub severity: Severity,
    /// What it is: memory analysis (the default, also for reports written before kinds
    /// existed), a mid-update inconsistency, a restatement of the failure event, or a
    /// note about the diagnosis.
    #[serde(default)]
    pub kind: FindingKind,
    /// The structure.
    pub structure: StructureRef,
    /// Where.
    pub address: Address,
    /// What should have been there.
    pub expected: String,
    /// What was there.
    pub found: String,
    /// What it means, for a person to act on.
    pub message: String,
}

/// One record of the guest's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogRecord {
    /// Sequence number.
    pub seq: u64,
    /// Guest timestamp, ns since boot.
    pub timestamp_ns: u64,
    /// CPU that logged it.
    pub cpu: u32,
    /// The text.
    pub text: String,
}

impl Finding {
    /// The same finding, of kind `kind`.
    pub fn with_kind(mut self, kind: FindingKind) -> Finding {
        self.kind = kind;
        self
    }
}

impl Report {
    /// Sorts findings most severe first (stable within a severity).
    pub fn sort_findings(&mut self) {
        self.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// Parses a report, checking its version.
    pub fn from_json(text: &str) -> Result<Report, Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let found = value
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if found != SCHEMA_VERSION {
            return Err(Error::Version { found });
        }
        Ok(serde_json::from_value(value)?)
    }

    /// The most severe finding's severity.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// The JSON Schema of [`Report`] (what `report.schema.json` holds).
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Report);
    serde_json::to_value(schema).expect("a schema always serializes")
}
