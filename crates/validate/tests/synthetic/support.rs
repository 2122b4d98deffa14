//! A small image builder for validator tests: a synthetic guest (RAM with real x86-64
//! page tables, [`SyntheticGuest`]), structures laid out in it the way the test kernel
//! lays out its own, a registration descriptor written with the ABI's writer (and placed
//! in guest RAM, as a guest registers it), and types from VMCOREINFO-style layouts in that
//! descriptor — what a validator sees of a real guest, without KVM.
//!
//! [`Guest`] builds; [`Built`] runs validators over the result.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use ambulance_abi::crc32c::crc32c;
use ambulance_abi::descriptor::{self, Descriptor, Root, RootKind};
use ambulance_introspect::program::Program;
use ambulance_introspect::synthetic::SyntheticGuest;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::WalkLimits;
use ambulance_report::{FailureInfo, Finding, FindingKind, Hex, Severity, VcpuRegisters};
use ambulance_validate::{Context, Registry, ValidationConfig, Validator};

/// Where structures are allocated (guest-virtual, like a kernel's data section).
pub const KDATA: u64 = 0xffff_ffff_8100_0000;
/// How much of it is mapped.
pub const KDATA_LEN: u64 = 2 << 20;
/// Where stacks live (4 KiB each, with an unmapped guard page below each).
pub const STACKS: u64 = 0xffff_c900_0000_0000;
/// A canonical address nothing maps.
pub const UNMAPPED: u64 = 0xffff_c880_0000_0000;
/// A non-canonical address.
pub const WILD: u64 = 0x00de_ad00_0000_0000;
/// The test kernel's end-of-stack magic (as exported in NUMBER(STACK_END_MAGIC)).
pub const STACK_END_MAGIC: u64 = 0x57ac_6e9d;
pub const TASK_MAGIC: u64 = 0x6b73_6174_756d_6261;
pub const PERCPU_MAGIC: u64 = 0x7570_6372_6570;
pub const LOCK_MAGIC: u32 = 0x10c4_10c4;
pub const FREE_POISON: u64 = 0x6b6b_6b6b_6b6b_6b6b;

/// `struct Task` (64 bytes): magic, pid, state, comm, run_list {next, prev}, stack_base,
/// cpu.
pub mod task {
    pub const SIZE: u64 = 64;
    pub const MAGIC: u64 = 0;
    pub const PID: u64 = 8;
    pub const STATE: u64 = 12;
    pub const COMM: u64 = 16;
    pub const RUN_LIST: u64 = 32;
    pub const STACK_BASE: u64 = 48;
    pub const CPU: u64 = 56;
}

/// `struct Spinlock` (48 bytes): magic, locked, owner_cpu, id, name[16].
pub mod spinlock {
    pub const SIZE: u64 = 48;
    pub const MAGIC: u64 = 0;
    pub const LOCKED: u64 = 4;
    pub const OWNER_CPU: u64 = 8;
    pub const NAME: u64 = 16;
}

/// `struct PerCpu` (48 bytes): magic, cpu, online, current, waiting_on, last_switch_ns.
pub mod percpu {
    pub const SIZE: u64 = 48;
    pub const MAGIC: u64 = 0;
    pub const CPU: u64 = 8;
    pub const ONLINE: u64 = 12;
    pub const CURRENT: u64 = 16;
    pub const WAITING_ON: u64 = 24;
    pub const LAST_SWITCH_NS: u64 = 32;
}

/// `struct FreeObject` (64 bytes): next, poison.
pub mod free_object {
    pub const SIZE: u64 = 64;
    pub const NEXT: u64 = 0;
    pub const POISON: u64 = 8;
}

/// `struct LogRecord` (128 bytes): seq, timestamp_ns, cpu, len, text[104].
pub mod log_record {
    pub const SIZE: u64 = 128;
    pub const SEQ: u64 = 0;
    pub const TIMESTAMP_NS: u64 = 8;
    pub const CPU: u64 = 16;
    pub const LEN: u64 = 20;
    pub const TEXT: u64 = 24;
}

/// A guest being built.
pub struct Guest {
    pub mem: SyntheticGuest,
    pub roots: Vec<Root>,
    vmcoreinfo: String,
    next: u64,
    next_stack: u64,
    pub heartbeat_gpa: u64,
    pub load_offset: i64,
    pub failure: FailureInfo,
    pub vcpus: Vec<VcpuRegisters>,
    pub kernel_elf: Option<Vec<u8>>,
}

impl Default for Guest {
    fn default() -> Self {
        Guest::new()
    }
}

impl Guest {
    /// 16 MiB of RAM, [`KDATA`] mapped, the test kernel's layouts declared.
    pub fn new() -> Guest {
        let mut mem = SyntheticGuest::new(16 << 20);
        mem.map(KDATA, KDATA_LEN);
        let mut g = Guest {
            mem,
            roots: Vec::new(),
            vmcoreinfo: String::new(),
            next: KDATA,
            next_stack: STACKS,
            heartbeat_gpa: 0,
            load_offset: 0,
            failure: failure("operator", None),
            vcpus: Vec::new(),
            kernel_elf: None,
        };
        let heartbeat = g.alloc(8);
        g.heartbeat_gpa = g.mem.phys(heartbeat);
        g.vmcoreinfo
            .push_str("OSRELEASE=synthetic\nPAGESIZE=4096\n");
        g.vmcoreinfo
            .push_str(&format!("NUMBER(STACK_END_MAGIC)={STACK_END_MAGIC}\n"));
        use task as t;
        g.layout(
            "Task",
            t::SIZE,
            &[
                ("magic", t::MAGIC),
                ("pid", t::PID),
                ("state", t::STATE),
                ("comm", t::COMM),
                ("run_list", t::RUN_LIST),
                ("stack_base", t::STACK_BASE),
                ("cpu", t::CPU),
            ],
        );
        use spinlock as s;
        g.layout(
            "Spinlock",
            s::SIZE,
            &[
                ("magic", s::MAGIC),
                ("locked", s::LOCKED),
                ("owner_cpu", s::OWNER_CPU),
                ("name", s::NAME),
            ],
        );
        use percpu as p;
        g.layout(
            "PerCpu",
            p::SIZE,
            &[
                ("magic", p::MAGIC),
                ("cpu", p::CPU),
                ("online", p::ONLINE),
                ("current", p::CURRENT),
                ("waiting_on", p::WAITING_ON),
                ("last_switch_ns", p::LAST_SWITCH_NS),
            ],
        );
        use free_object as f;
        g.layout(
            "FreeObject",
            f::SIZE,
            &[("next", f::NEXT), ("poison", f::POISON)],
        );
        use log_record as l;
        g.layout(
            "LogRecord",
            l::SIZE,
            &[
                ("seq", l::SEQ),
                ("timestamp_ns", l::TIMESTAMP_NS),
                ("cpu", l::CPU),
                ("len", l::LEN),
                ("text", l::TEXT),
            ],
        );
        g
    }

    /// Declares a type's layout (`SIZE()` and `OFFSET()` lines in the descriptor's
    /// VMCOREINFO).
    pub fn layout(&mut self, ty: &str, size: u64, members: &[(&str, u64)]) {
        self.vmcoreinfo.push_str(&format!("SIZE({ty})={size}\n"));
        for (m, o) in members {
            self.vmcoreinfo.push_str(&format!("OFFSET({ty}.{m})={o}\n"));
        }
    }

    /// `len` zeroed bytes of KDATA, 64-byte aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let va = self.next;
        self.next = (self.next + len.max(1)).next_multiple_of(64);
        assert!(self.next <= KDATA + KDATA_LEN, "KDATA is full");
        va
    }

    pub fn put_u64(&mut self, va: u64, v: u64) {
        self.mem.write_u64(va, v);
    }

    pub fn put_u32(&mut self, va: u64, v: u32) {
        self.mem.write_u32(va, v);
    }

    pub fn put(&mut self, va: u64, bytes: &[u8]) {
        self.mem.write(va, bytes);
    }

    /// Adds a root.
    pub fn root(&mut self, r: Root) -> &mut Root {
        self.roots.push(r);
        self.roots.last_mut().unwrap()
    }

    /// A spinlock named `name`, held by `owner` if given; returns its address (the
    /// lock word is at `+ spinlock::LOCKED`).
    pub fn spinlock(&mut self, name: &str, owner: Option<u32>) -> u64 {
        let l = self.alloc(spinlock::SIZE);
        self.put_u32(l + spinlock::MAGIC, LOCK_MAGIC);
        self.set_lock(l, owner);
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        self.put(l + spinlock::NAME, &n);
        l
    }

    /// Takes (`Some(cpu)`) or releases the spinlock at `l`.
    pub fn set_lock(&mut self, l: u64, owner: Option<u32>) {
        self.put_u32(l + spinlock::LOCKED, owner.is_some() as u32);
        self.put_u32(l + spinlock::OWNER_CPU, owner.unwrap_or(u32::MAX));
    }

    /// `n` tasks in a table (pids 1..=n, each with a stack whose end magic is intact);
    /// returns the table's address.
    pub fn tasks(&mut self, n: u64) -> u64 {
        let table = self.alloc(n * task::SIZE);
        for i in 0..n {
            let t = table + i * task::SIZE;
            self.put_u64(t + task::MAGIC, TASK_MAGIC);
            self.put_u32(t + task::PID, i as u32 + 1);
            self.put(t + task::COMM, format!("task{i}").as_bytes());
            let stack = self.stack();
            self.put_u64(t + task::STACK_BASE, stack);
        }
        table
    }

    /// A 4 KiB stack with the end magic at its lowest address, and an unmapped page
    /// below it.
    pub fn stack(&mut self) -> u64 {
        self.next_stack += 0x2000;
        let base = self.next_stack;
        self.mem.map(base, 0x1000);
        self.put_u64(base, STACK_END_MAGIC);
        base
    }

    /// A `list_head` at a fresh address linking the `Task`s at `tasks` (in order)
    /// through `run_list`; returns the head.
    pub fn task_list(&mut self, tasks: &[u64]) -> u64 {
        let head = self.alloc(16);
        let links: Vec<u64> = tasks.iter().map(|t| t + task::RUN_LIST).collect();
        self.link_doubly(head, &links);
        head
    }

    /// Links a doubly linked list: head, then `links` (link-field addresses).
    pub fn link_doubly(&mut self, head: u64, links: &[u64]) {
        let mut prev = head;
        for &l in links {
            self.put_u64(prev, l);
            self.put_u64(l + 8, prev);
            prev = l;
        }
        self.put_u64(prev, head);
        self.put_u64(head + 8, prev);
    }

    /// A root over a doubly linked list of Tasks.
    pub fn run_queue_root(&mut self, name: &str, head: u64, lock: u64) -> &mut Root {
        self.root(Root {
            name: name.into(),
            type_name: "Task".into(),
            kind: RootKind::List,
            flags: 0,
            address: head,
            element_size: task::SIZE as u32,
            link_offset: task::RUN_LIST as u32,
            max_count: 64,
            aux: 0,
            lock,
            hints: vec![],
        })
    }

    /// A root over an array of `n` Tasks at `table`.
    pub fn tasks_root(&mut self, table: u64, n: u32) -> &mut Root {
        self.root(Root {
            name: "tasks".into(),
            type_name: "Task".into(),
            kind: RootKind::Array,
            flags: 0,
            address: table,
            element_size: task::SIZE as u32,
            link_offset: 0,
            max_count: n,
            aux: 0,
            lock: 0,
            hints: vec![],
        })
    }

    /// `n` online CPUs' per-CPU data, CPU i last switching at `switches[i]` ns; and
    /// their root. Returns the array's address.
    pub fn percpu(&mut self, switches: &[u64]) -> u64 {
        let n = switches.len() as u64;
        let a = self.alloc(n * percpu::SIZE);
        for (i, &ts) in switches.iter().enumerate() {
            let p = a + i as u64 * percpu::SIZE;
            self.put_u64(p + percpu::MAGIC, PERCPU_MAGIC);
            self.put_u32(p + percpu::CPU, i as u32);
            self.put_u32(p + percpu::ONLINE, 1);
            self.put_u64(p + percpu::LAST_SWITCH_NS, ts);
        }
        self.root(Root {
            name: "percpu".into(),
            type_name: "PerCpu".into(),
            kind: RootKind::Array,
            flags: 0,
            address: a,
            element_size: percpu::SIZE as u32,
            link_offset: 0,
            max_count: n as u32,
            aux: 0,
            lock: 0,
            hints: vec![],
        });
        a
    }

    /// A vCPU's registers.
    pub fn vcpu(&mut self, vcpu: u32, activity: &str, rflags: u64, rip: u64) {
        self.vcpus.push(VcpuRegisters {
            vcpu,
            activity: activity.into(),
            rip: Hex(rip),
            rsp: Hex(STACKS),
            rflags: Hex(rflags),
            ..Default::default()
        });
    }

    /// Finishes: the descriptor encoded with the ABI's writer and placed in guest RAM
    /// (page-aligned, as a guest registers it), then the program over the RAM.
    pub fn build(mut self) -> Built {
        let descriptor = Descriptor {
            flags: 0,
            build_id: vec![0x5e; 20],
            load_offset: self.load_offset,
            page_table_root: self.mem.page_table_root(),
            heartbeat_gpa: self.heartbeat_gpa,
            vmcoreinfo: Some(self.vmcoreinfo.clone()),
            roots: self.roots.clone(),
        };
        let bytes = descriptor.encode().expect("the descriptor encodes");
        let gpa = self.mem.alloc_phys(bytes.len() as u64, 4096);
        self.mem.write_phys(gpa, &bytes);
        let parsed = descriptor::parse(&bytes).expect("the descriptor parses");
        assert_eq!(parsed, descriptor);
        let vmcoreinfo = Vmcoreinfo::parse(&self.vmcoreinfo).unwrap();
        let program = self.mem.program().with_vmcoreinfo(vmcoreinfo.clone());
        Built {
            program,
            descriptor: parsed,
            bytes,
            gpa,
            vmcoreinfo,
            failure: self.failure,
            vcpus: self.vcpus,
            kernel_elf: self.kernel_elf,
        }
    }
}

/// A failure of `cause`, on `vcpu`.
pub fn failure(cause: &str, vcpu: Option<u32>) -> FailureInfo {
    FailureInfo {
        cause: cause.into(),
        detail: format!("synthetic {cause}"),
        time: ambulance_report::now(),
        vcpu,
        data: Default::default(),
    }
}

/// CRC32C of bytes (for checksum hints).
pub fn crc(bytes: &[u8]) -> u32 {
    crc32c(bytes)
}

/// A built guest, ready for validators.
pub struct Built {
    pub program: Program,
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
    pub gpa: u64,
    pub vmcoreinfo: Vmcoreinfo,
    pub failure: FailureInfo,
    pub vcpus: Vec<VcpuRegisters>,
    pub kernel_elf: Option<Vec<u8>>,
}

/// Generous limits: nothing in a healthy synthetic guest comes near them.
pub fn limits() -> WalkLimits {
    WalkLimits::new(1 << 20, Duration::from_secs(30))
}

impl Built {
    /// A context as a diagnosis makes one.
    pub fn context(&self, limits: WalkLimits) -> Context<'_> {
        let mut ctx = Context::new(&self.program, &self.failure, &self.vcpus, limits);
        ctx.descriptor = Some(&self.descriptor);
        ctx.descriptor_bytes = Some(&self.bytes);
        ctx.descriptor_gpa = Some(self.gpa);
        ctx.vmcoreinfo = Some(&self.vmcoreinfo);
        ctx.kernel_elf = self.kernel_elf.as_deref();
        ctx
    }

    /// Runs one validator (if applicable) with generous limits.
    pub fn run(&self, v: &dyn Validator) -> Vec<Finding> {
        let ctx = self.context(limits());
        let mut out = Vec::new();
        if v.applicable(&ctx) {
            v.run(&ctx, &mut out);
        }
        out
    }

    /// Runs one validator after every root was enumerated and the deadline passed: what
    /// it does when its budget runs out as it starts.
    pub fn run_out_of_time(&self, v: &dyn Validator) -> Vec<Finding> {
        let mut ctx = self.context(limits());
        for r in &self.descriptor.roots {
            ctx.elements(r);
        }
        ctx.deadline = Some(Instant::now());
        let mut out = Vec::new();
        v.run(&ctx, &mut out);
        out
    }

    /// Runs every built-in validator through the registry under `config`.
    pub fn run_all(&self, config: &ValidationConfig) -> (Vec<Finding>, Context<'_>) {
        let limits = WalkLimits::new(
            config.max_nodes,
            Duration::from_millis(config.walk_budget_ms),
        );
        let ctx = self.context(limits);
        let (findings, _) = Registry::builtin().run(&ctx, config);
        (findings, ctx)
    }
}

/// Asserts there is exactly one finding matching, at `virt`, and returns it.
pub fn the_one(findings: &[Finding], virt: u64) -> &Finding {
    let at: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.address.virt == Some(Hex(virt)))
        .collect();
    assert_eq!(at.len(), 1, "one finding at {virt:#x}: {findings:#?}");
    at[0]
}

/// Asserts `f` is corruption (not excused) of at least `Error`.
pub fn corruption(f: &Finding) {
    assert!(
        f.severity >= Severity::Error && f.kind == FindingKind::Analysis,
        "expected corruption: {f:#?}"
    );
}

/// Asserts `f` is a mid-update naming `lock` and `owner`.
pub fn mid_update(f: &Finding, lock: &str, owner: Option<u32>) {
    assert_eq!(f.kind, FindingKind::MidUpdate, "{f:#?}");
    assert_eq!(f.severity, Severity::Info, "{f:#?}");
    let held = match owner {
        Some(c) => format!("lock {lock} was held by CPU {c}"),
        None => format!("lock {lock} was held (its owner is not recorded)"),
    };
    assert!(f.message.starts_with("mid-update: "), "{}", f.message);
    assert!(f.message.contains(&held), "{held}: {}", f.message);
}

/// The findings of kind diagnosis that say a validator stopped early.
pub fn budget_notes<'f>(findings: &'f [Finding], validator: &str) -> Vec<&'f Finding> {
    findings
        .iter()
        .filter(|f| {
            f.validator == validator
                && f.kind == FindingKind::Diagnosis
                && f.message.contains("stopped early")
        })
        .collect()
}
