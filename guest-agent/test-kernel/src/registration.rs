//! The registration descriptor: every structure the host should walk, declared as a root
//! with its layout and validation hints, plus VMCOREINFO lines with the offsets a
//! debugger needs when it has no debug info.

use core::fmt::Write;
use core::mem::{offset_of, size_of};
use core::ptr::addr_of;

use ambulance_guest_agent::abi::boot::{DIRECT_MAP_BASE, VMALLOC_BASE};
use ambulance_guest_agent::abi::descriptor::{
    self, root_flags, DescriptorWriter, Hint, RootKind, RootSpec,
};
use ambulance_guest_agent::abi::ports::RegistrationStatus;

use crate::kfmt::n;
use crate::log::{LogRecord, LOG, LOG_CAPACITY};
use crate::mem::image_to_phys;
use crate::sched::{self, Task, MAX_TASKS, OBJECT_SLOTS, STACK_END_MAGIC, TASK_MAGIC};
use crate::slab::{self, FreeObject, KObject, SlabCache, FREE_POISON, KOBJECT_MAGIC, SLAB_MAGIC};
use crate::sync::{lock, lock_id, PerCpu, Spinlock, LOCKS, LOCK_MAGIC, PERCPU, PERCPU_MAGIC};
use crate::work::WORK;
use crate::{kprint, HEARTBEAT};

const DESCRIPTOR_BYTES: usize = 64 * 1024;

#[repr(C, align(4096))]
struct DescriptorPage([u8; DESCRIPTOR_BYTES]);

static mut DESCRIPTOR: DescriptorPage = DescriptorPage([0; DESCRIPTOR_BYTES]);

/// How to register (the `register=` command-line option). `BadChecksum`, `Oversize` and
/// `NonCanonical` first register a deliberately broken descriptor, then a good one;
/// `Never` boots and runs without ever registering (a guest the host must give up on).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Good,
    Never,
    BadChecksum,
    Oversize,
    NonCanonical,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "good" => Mode::Good,
            "never" => Mode::Never,
            "bad-checksum" => Mode::BadChecksum,
            "oversize" => Mode::Oversize,
            "noncanonical" => Mode::NonCanonical,
            _ => return None,
        })
    }
}

fn build_id() -> &'static [u8] {
    extern "C" {
        static __build_id_start: u8;
        static __build_id_end: u8;
    }
    // SAFETY: linker-provided bounds of the GNU build-id note in the read-only image.
    let note = unsafe {
        let s = addr_of!(__build_id_start);
        core::slice::from_raw_parts(s, addr_of!(__build_id_end) as usize - s as usize)
    };
    if note.len() < 16 {
        return &[];
    }
    let namesz = u32::from_le_bytes([note[0], note[1], note[2], note[3]]) as usize;
    let descsz = u32::from_le_bytes([note[4], note[5], note[6], note[7]]) as usize;
    let desc = 12 + namesz.next_multiple_of(4);
    note.get(desc..desc + descsz).unwrap_or(&[])
}

fn write(
    w: &mut DescriptorWriter<'_>,
    pml4: u64,
    text_crc: u32,
    ram_end: u64,
) -> Result<(), descriptor::WriteError> {
    let task0 = sched::task_ptr(0) as u64;
    let tasks_end = task0 + (MAX_TASKS * size_of::<Task>()) as u64;
    let stacks_end = sched::stack_base_va(MAX_TASKS);
    let locks = addr_of!(LOCKS) as u64;
    let locks_end = locks + size_of::<[Spinlock; 5]>() as u64;
    let run_lock = lock(lock_id::RUN_QUEUE).word_addr();
    let percpu = addr_of!(PERCPU) as u64;
    let ro = crate::faults::ro_region();
    let direct_end = DIRECT_MAP_BASE + ram_end;

    w.set_build_id(build_id())?;
    w.set_load_offset(0);
    w.set_page_table_root(pml4);
    w.set_heartbeat_gpa(image_to_phys(&HEARTBEAT as *const _ as u64));

    let task_magic = Hint::Magic {
        offset: offset_of!(Task, magic) as u32,
        size: 8,
        value: TASK_MAGIC,
    };
    w.push_root(
        &RootSpec {
            name: "tasks",
            type_name: "Task",
            kind: RootKind::Array,
            flags: 0,
            address: task0,
            element_size: size_of::<Task>() as u32,
            link_offset: 0,
            max_count: sched::nr_tasks() as u32,
            aux: 0,
            lock: 0,
        },
        &[
            task_magic,
            Hint::PointerRange {
                offset: offset_of!(Task, stack_base) as u32,
                lo: VMALLOC_BASE,
                hi: stacks_end,
                nullable: false,
            },
        ],
    )?;
    w.push_root(
        &RootSpec {
            name: "run_queue",
            type_name: "Task",
            kind: RootKind::List,
            flags: 0,
            address: sched::run_queue() as u64,
            element_size: size_of::<Task>() as u32,
            link_offset: offset_of!(Task, run_list) as u32,
            max_count: MAX_TASKS as u32,
            aux: 0,
            lock: run_lock,
        },
        &[task_magic],
    )?;
    w.push_root(
        &RootSpec {
            name: "percpu",
            type_name: "PerCpu",
            kind: RootKind::Array,
            flags: 0,
            address: percpu,
            element_size: size_of::<PerCpu>() as u32,
            link_offset: 0,
            max_count: crate::cpu_count(),
            aux: 0,
            lock: 0,
        },
        &[
            Hint::Magic {
                offset: offset_of!(PerCpu, magic) as u32,
                size: 8,
                value: PERCPU_MAGIC,
            },
            Hint::PointerRange {
                offset: offset_of!(PerCpu, current) as u32,
                lo: task0,
                hi: tasks_end,
                nullable: true,
            },
            Hint::PointerRange {
                offset: offset_of!(PerCpu, waiting_on) as u32,
                lo: locks,
                hi: locks_end,
                nullable: true,
            },
        ],
    )?;
    w.push_root(
        &RootSpec {
            name: "locks",
            type_name: "Spinlock",
            kind: RootKind::Array,
            flags: 0,
            address: locks,
            element_size: size_of::<Spinlock>() as u32,
            link_offset: 0,
            max_count: LOCKS.len() as u32,
            aux: 0,
            lock: 0,
        },
        &[Hint::Magic {
            offset: offset_of!(Spinlock, magic) as u32,
            size: 4,
            value: LOCK_MAGIC as u64,
        }],
    )?;
    let caches = addr_of!(slab::SLAB_CACHES) as u64;
    w.push_root(
        &RootSpec {
            name: "slab_caches",
            type_name: "SlabCache",
            kind: RootKind::Array,
            flags: 0,
            address: caches,
            element_size: size_of::<SlabCache>() as u32,
            link_offset: 0,
            max_count: slab::NR_CACHES as u32,
            aux: 0,
            lock: 0,
        },
        &[Hint::Magic {
            offset: offset_of!(SlabCache, magic) as u32,
            size: 8,
            value: SLAB_MAGIC,
        }],
    )?;
    for idx in 0..slab::NR_CACHES {
        // SAFETY: boot is over for the caches' layout; base/end/capacity never change.
        let c = unsafe { slab::cache(idx) };
        w.push_root(
            &RootSpec {
                name: slab::FREELIST_ROOTS[idx],
                type_name: "FreeObject",
                kind: RootKind::List,
                flags: root_flags::SINGLY_LINKED,
                address: addr_of!(c.free_list) as u64,
                element_size: c.object_size,
                link_offset: offset_of!(FreeObject, next) as u32,
                max_count: c.capacity,
                aux: 0,
                lock: slab::cache_lock(idx).word_addr(),
            },
            &[
                Hint::Magic {
                    offset: offset_of!(FreeObject, poison) as u32,
                    size: 8,
                    value: FREE_POISON,
                },
                Hint::PointerRange {
                    offset: offset_of!(FreeObject, next) as u32,
                    lo: c.base,
                    hi: c.end,
                    nullable: true,
                },
            ],
        )?;
    }
    // SAFETY: boot is over for the cache layout.
    let kobjects = unsafe { slab::cache(slab::KOBJECT) };
    let table = sched::object_slot(0) as u64;
    w.push_root(
        &RootSpec {
            name: "object_table",
            type_name: "u64",
            kind: RootKind::Array,
            flags: 0,
            address: table,
            element_size: 8,
            link_offset: 0,
            max_count: OBJECT_SLOTS as u32,
            aux: 0,
            lock: lock(lock_id::OBJECT_TABLE).word_addr(),
        },
        &[Hint::PointerRange {
            offset: 0,
            lo: kobjects.base,
            hi: kobjects.end,
            nullable: true,
        }],
    )?;
    w.push_root(
        &RootSpec {
            name: "objects",
            type_name: "KObject",
            kind: RootKind::Array,
            flags: root_flags::POINTER_ELEMENTS,
            address: table,
            element_size: size_of::<KObject>() as u32,
            link_offset: 0,
            max_count: OBJECT_SLOTS as u32,
            aux: 0,
            lock: lock(lock_id::OBJECT_TABLE).word_addr(),
        },
        &[Hint::Magic {
            offset: offset_of!(KObject, magic) as u32,
            size: 8,
            value: KOBJECT_MAGIC,
        }],
    )?;
    // SAFETY: only addresses are taken.
    let (records, next_seq) =
        unsafe { (addr_of!(LOG.records) as u64, addr_of!(LOG.next_seq) as u64) };
    w.push_root(
        &RootSpec {
            name: "log",
            type_name: "LogRecord",
            kind: RootKind::Ring,
            flags: 0,
            address: records,
            element_size: size_of::<LogRecord>() as u32,
            link_offset: 0,
            max_count: LOG_CAPACITY as u32,
            aux: next_seq,
            lock: lock(lock_id::LOG).word_addr(),
        },
        &[],
    )?;
    w.push_root(
        &RootSpec {
            name: "kernel_text",
            type_name: "u8",
            kind: RootKind::Object,
            flags: 0,
            address: ro.as_ptr() as u64,
            element_size: ro.len() as u32,
            link_offset: 0,
            max_count: 1,
            aux: 0,
            lock: 0,
        },
        &[Hint::Checksum {
            start: ro.as_ptr() as u64,
            len: ro.len() as u32,
            crc32c: text_crc,
        }],
    )?;
    w.push_root(
        &RootSpec {
            name: "heartbeat",
            type_name: "Heartbeat",
            kind: RootKind::Object,
            flags: 0,
            address: &HEARTBEAT as *const _ as u64,
            element_size: 8,
            link_offset: 0,
            max_count: 1,
            aux: 0,
            lock: 0,
        },
        &[],
    )?;
    w.push_root(
        &RootSpec {
            name: "work",
            type_name: "AtomicU64",
            kind: RootKind::Object,
            flags: 0,
            address: &WORK as *const _ as u64,
            element_size: 8,
            link_offset: 0,
            max_count: 1,
            aux: 0,
            lock: 0,
        },
        &[],
    )?;

    // VMCOREINFO, in Linux's format, for tools without debug info.
    let vmcoreinfo = |w: &mut DescriptorWriter<'_>| -> core::fmt::Result {
        writeln!(
            w,
            "OSRELEASE=ambulance-test-kernel-{}",
            env!("CARGO_PKG_VERSION")
        )?;
        writeln!(w, "PAGESIZE=4096")?;
        writeln!(w, "KERNELOFFSET=0")?;
        writeln!(w, "SYMBOL(tasks)={:x}", n(task0))?;
        writeln!(w, "SYMBOL(run_queue)={:x}", n(sched::run_queue() as u64))?;
        writeln!(w, "SYMBOL(percpu)={:x}", n(percpu))?;
        writeln!(w, "SYMBOL(locks)={:x}", n(locks))?;
        writeln!(w, "SYMBOL(log)={:x}", n(records))?;
        writeln!(w, "SYMBOL(log_next_seq)={:x}", n(next_seq))?;
        writeln!(w, "SYMBOL(direct_map_base)={:x}", n(DIRECT_MAP_BASE))?;
        layout!(w, Task: magic, pid, state, comm, run_list, stack_base, stack_size, cpu);
        layout!(w, PerCpu: magic, cpu, online, current, waiting_on, last_switch_ns, ticks, stopped);
        layout!(w, Spinlock: magic, locked, owner_cpu, name);
        layout!(w, SlabCache: magic, name, object_size, capacity, base, end, free_list, nr_free);
        layout!(w, FreeObject: next, poison);
        layout!(w, KObject: magic, serial, owner_pid);
        layout!(w, LogRecord: seq, timestamp_ns, cpu, len, text);
        writeln!(w, "LENGTH(log)={}", n(LOG_CAPACITY as u64))?;
        writeln!(w, "NUMBER(STACK_END_MAGIC)={}", n(STACK_END_MAGIC))?;
        writeln!(w, "NUMBER(TASK_MAGIC)={}", n(TASK_MAGIC))?;
        writeln!(w, "NUMBER(nr_cpus)={}", n(crate::cpu_count()))?;
        writeln!(w, "NUMBER(nr_tasks)={}", n(sched::nr_tasks() as u64))?;
        writeln!(w, "NUMBER(direct_map_end)={}", n(direct_end))
    };
    vmcoreinfo(w).map_err(|_| descriptor::WriteError::Full("VMCOREINFO byte"))?;
    Ok(())
}

/// Writes `SIZE(Type)` and `OFFSET(Type.field)` VMCOREINFO lines.
macro_rules! layout {
    ($w:expr, $ty:ident: $($field:ident),*) => {
        writeln!($w, "SIZE({})={}", stringify!($ty), n(size_of::<$ty>() as u64))?;
        $(
            writeln!(
                $w,
                "OFFSET({}.{})={}",
                stringify!($ty),
                stringify!($field),
                n(offset_of!($ty, $field) as u64)
            )?;
        )*
    };
}
use layout;

/// Builds the descriptor (in its page-aligned static buffer) and returns its size.
fn build(pml4: u64, text_crc: u32, ram_end: u64) -> usize {
    // SAFETY: the boot CPU alone builds the descriptor; the host only reads it.
    let buf = unsafe { &mut (*core::ptr::addr_of_mut!(DESCRIPTOR)).0 };
    let mut w = match DescriptorWriter::new(buf, 32, 64) {
        Ok(w) => w,
        Err(e) => {
            kprint!(0, "registration: cannot build descriptor: {e}");
            return 0;
        }
    };
    if let Err(e) = write(&mut w, pml4, text_crc, ram_end) {
        kprint!(0, "registration: cannot build descriptor: {e}");
    }
    w.finish()
}

/// Breaks the descriptor on purpose, as `mode` says.
fn break_descriptor(mode: Mode) {
    // SAFETY: as in `build`.
    let buf = unsafe { &mut (*core::ptr::addr_of_mut!(DESCRIPTOR)).0 };
    match mode {
        Mode::Good | Mode::Never => {}
        Mode::BadChecksum => buf[descriptor::layout::HEADER_SIZE + 1] ^= 0x5a,
        Mode::Oversize => {
            descriptor::layout::set_u32(buf, descriptor::layout::ROOT_COUNT, 100_000);
            descriptor::reseal(buf);
        }
        Mode::NonCanonical => {
            let at = descriptor::layout::HEADER_SIZE + descriptor::layout::root::ADDRESS;
            descriptor::layout::set_u64(buf, at, 0x0000_8000_0000_1000);
            descriptor::reseal(buf);
        }
    }
}

/// Builds and registers the descriptor.
pub fn register(mode: Mode, pml4: u64, text_crc: u32, ram_end: u64) {
    if mode == Mode::Never {
        kprint!(0, "registration: none (register=never)");
        return;
    }
    let gpa = image_to_phys(addr_of!(DESCRIPTOR) as u64);
    let size = build(pml4, text_crc, ram_end);
    if mode != Mode::Good {
        break_descriptor(mode);
        let status = ambulance_guest_agent::register(gpa);
        kprint!(
            0,
            "registration: deliberately broken descriptor at {:#x}: {}",
            n(gpa),
            status_name(status)
        );
        build(pml4, text_crc, ram_end);
    }
    let status = ambulance_guest_agent::register(gpa);
    kprint!(
        0,
        "registration: descriptor at {:#x} ({} bytes): {}",
        n(gpa),
        n(size as u64),
        status_name(status)
    );
}

fn status_name(s: RegistrationStatus) -> &'static str {
    match s {
        RegistrationStatus::Accepted => "accepted",
        RegistrationStatus::Refused => "refused",
        RegistrationStatus::None => "no answer",
    }
}
