//! The Ambulance test kernel.
//!
//! A small freestanding x86-64 kernel that behaves like a real one where it matters for
//! diagnosis: it runs on every vCPU, builds its own page tables (kernel image, direct
//! map, vmalloc'd task stacks with guard pages), schedules tasks between CPUs on a real
//! intrusive run queue with real stack switches, allocates from slab caches with free
//! lists, takes spinlocks that record their owner, logs into a ring buffer, checksums its
//! own read-only memory, keeps a heartbeat, and registers all of it with the host through
//! the Ambulance ABI. A fault catalogue (see [`faults`]) breaks one thing on purpose.
//!
//! Command line: `fault=NAME fault_after_ms=N seed=S tasks=N register=MODE mode=MODE
//! work=0|1`.

#![no_std]
#![no_main]

mod arch;
mod faults;
mod kfmt;
mod list;
mod log;
mod mem;
mod panic;
mod registration;
mod sched;
mod slab;
mod sync;
mod work;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ambulance_guest_agent::abi::boot::{BootInfo, BOOT_MAGIC, CMDLINE_MAX, MAX_REGIONS};
use ambulance_guest_agent::abi::crc32c::crc32c;
use ambulance_guest_agent::abi::ports::panic_reason;
use ambulance_guest_agent::{panic_doorbell, Heartbeat};

use crate::faults::{Fault, FaultPlan};
use crate::mem::{PageTables, PTE_GLOBAL, PTE_NX, PTE_WRITE};

/// Most CPUs this kernel runs on (the ABI's limit).
pub const MAX_CPUS: usize = 16;
/// log2 of the boot stack size per CPU.
pub const STACK_SHIFT: usize = 14;

/// The heartbeat the host watches: milliseconds of healthy uptime, advanced by CPU 0.
#[no_mangle]
pub static HEARTBEAT: Heartbeat = Heartbeat::new();

static CPU_COUNT: AtomicU32 = AtomicU32::new(1);
static BOOT_DONE: AtomicBool = AtomicBool::new(false);
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);

/// Number of CPUs started.
pub fn cpu_count() -> u32 {
    CPU_COUNT.load(Ordering::Relaxed)
}

/// What the command line asked for.
struct Config {
    plan: FaultPlan,
    tasks: usize,
    register: registration::Mode,
    maintenance: bool,
    work: bool,
}

static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];

fn parse_cmdline(text: &str) -> Config {
    let mut cfg = Config {
        plan: FaultPlan {
            fault: Fault::None,
            after_ms: 500,
            seed: 1,
        },
        tasks: 16,
        register: registration::Mode::Good,
        maintenance: false,
        work: false,
    };
    for word in text.split_ascii_whitespace() {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let ok = match key {
            "fault" => Fault::parse(value).map(|f| cfg.plan.fault = f).is_some(),
            "fault_after_ms" => value.parse().map(|v| cfg.plan.after_ms = v).is_ok(),
            "seed" => value.parse().map(|v| cfg.plan.seed = v).is_ok(),
            "tasks" => value
                .parse::<usize>()
                .ok()
                .filter(|n| (2..=sched::MAX_TASKS).contains(n))
                .map(|n| cfg.tasks = n)
                .is_some(),
            "register" => registration::Mode::parse(value)
                .map(|m| cfg.register = m)
                .is_some(),
            "work" => match value {
                "1" => {
                    cfg.work = true;
                    true
                }
                "0" => true,
                _ => false,
            },
            "mode" => match value {
                "maintenance" => {
                    cfg.maintenance = true;
                    true
                }
                "normal" => true,
                _ => false,
            },
            _ => false,
        };
        if !ok {
            log::console(format_args!("cmdline: ignoring invalid option '{word}'\n"));
        }
    }
    cfg
}

/// Referenced by the precompiled `core` for unwinding, which `panic = "abort"` never does.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// Entry from `_start` on every CPU.
#[no_mangle]
pub extern "C" fn kmain(boot_info_gpa: u64, cpu: u64) -> ! {
    if cpu == 0 {
        boot(boot_info_gpa)
    }
    while !BOOT_DONE.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    // SAFETY: the boot CPU activated these tables before publishing BOOT_DONE.
    unsafe { mem::activate_on_secondary(KERNEL_PML4.load(Ordering::Acquire)) };
    arch::load_tables();
    sched::scheduler_loop(cpu as u32)
}

fn boot(boot_info_gpa: u64) -> ! {
    // SAFETY: the VMM placed BootInfo there; the boot tables identity-map it.
    let bi: BootInfo = unsafe { core::ptr::read_unaligned(boot_info_gpa as *const BootInfo) };
    if bi.magic != BOOT_MAGIC {
        log::console(format_args!(
            "boot: bad BootInfo magic {:#x}\n",
            kfmt::n(bi.magic)
        ));
        panic_doorbell(panic_reason::GENERIC);
    }
    CPU_COUNT.store(bi.cpu_count.clamp(1, MAX_CPUS as u32), Ordering::Relaxed);
    arch::init_clock(bi.tsc_khz);

    let len = (bi.cmdline_len as usize).min(CMDLINE_MAX - 1);
    // SAFETY: the command line is identity-mapped; CMDLINE is only written here.
    let cmdline: &str = unsafe {
        let dst = &mut *core::ptr::addr_of_mut!(CMDLINE);
        core::ptr::copy_nonoverlapping(bi.cmdline_gpa as *const u8, dst.as_mut_ptr(), len);
        core::str::from_utf8(&dst[..len]).unwrap_or("")
    };
    let cfg = parse_cmdline(cmdline);
    let regions = &bi.regions[..(bi.region_count as usize).min(MAX_REGIONS)];
    let ram_end = regions.iter().map(|r| r.gpa + r.size).max().unwrap_or(0);
    log::console(format_args!(
        "ambulance test kernel {}: {} cpus, {} MiB, tsc {} kHz, cmdline '{cmdline}'\n",
        env!("CARGO_PKG_VERSION"),
        kfmt::n(cpu_count()),
        kfmt::n(bi.ram_size >> 20),
        kfmt::n(bi.tsc_khz)
    ));

    // Page tables: the image with proper permissions, the direct map, task stacks.
    extern "C" {
        static __kernel_start: u8;
        static __text_end: u8;
        static __ro_end: u8;
        static __kernel_end: u8;
    }
    let (kstart, text_end, ro_end, kend) = (
        core::ptr::addr_of!(__kernel_start) as u64,
        core::ptr::addr_of!(__text_end) as u64,
        core::ptr::addr_of!(__ro_end) as u64,
        core::ptr::addr_of!(__kernel_end) as u64,
    );
    let low = regions[0];
    mem::init_allocator(
        mem::image_to_phys(kend),
        (low.gpa + low.size).min(ambulance_guest_agent::abi::boot::BOOT_MAP_SIZE),
    );
    let mut pt = PageTables::new();
    let text_pages_end = text_end.next_multiple_of(mem::PAGE);
    let mut va = kstart;
    while va < kend {
        let flags = if va < text_pages_end {
            PTE_GLOBAL
        } else if va < ro_end {
            PTE_GLOBAL | PTE_NX
        } else {
            PTE_GLOBAL | PTE_NX | PTE_WRITE
        };
        pt.map_4k(va, mem::image_to_phys(va), flags);
        va += mem::PAGE;
    }
    pt.map_direct(regions);
    sched::map_stacks(&mut pt, cfg.tasks);
    // SAFETY: the tables map the image (code, stacks in .bss), the direct map and the
    // task stacks; the identity map is not needed any more.
    unsafe { pt.activate() };
    KERNEL_PML4.store(pt.pml4, Ordering::Release);
    arch::init_idt();
    arch::load_tables();

    for cpu in 0..cpu_count() {
        sync::init_percpu(cpu, cfg.plan.seed);
    }
    slab::init_cache(
        slab::KOBJECT,
        "kobject",
        core::mem::size_of::<slab::KObject>() as u32,
        512,
    );
    slab::init_cache(
        slab::BUFFER,
        "buffer",
        core::mem::size_of::<slab::Buffer>() as u32,
        128,
    );
    sched::init_tasks(cfg.tasks, cfg.plan.seed);

    let text_crc = faults::ro_crc();
    registration::register(cfg.register, pt.pml4, text_crc, ram_end);
    kprint!(
        0,
        "boot: {} tasks, fault={} after {} ms, seed {}",
        kfmt::n(cfg.tasks as u64),
        cfg.plan.fault.name(),
        kfmt::n(cfg.plan.after_ms),
        kfmt::n(cfg.plan.seed)
    );
    BOOT_DONE.store(true, Ordering::Release);
    if cfg.maintenance {
        maintenance();
    }
    if cfg.work {
        work::enable();
    }
    faults::arm(cfg.plan);
    sched::scheduler_loop(0)
}

/// Maintenance mode: check every structure once, report on the console, and ring the
/// maintenance-complete doorbell with the number of problems found.
fn maintenance() {
    let cpu = 0;
    let mut problems = 0u32;
    let l = sync::lock(sync::lock_id::RUN_QUEUE);
    l.lock(cpu);
    // SAFETY: the run queue lock is held.
    if let Err(e) = unsafe { list::check_list(sched::run_queue(), sched::MAX_TASKS) } {
        kprint!(cpu, "maintenance: run_queue: {e}");
        problems += 1;
    }
    l.unlock(cpu);
    for idx in 0..slab::NR_CACHES {
        let l = slab::cache_lock(idx);
        l.lock(cpu);
        // SAFETY: the cache lock is held.
        if let Err(e) = unsafe { slab::cache(idx) }.check_free_list() {
            kprint!(cpu, "maintenance: {}: {e}", slab::FREELIST_ROOTS[idx]);
            problems += 1;
        }
        l.unlock(cpu);
    }
    for i in 0..sched::nr_tasks() {
        let t = sched::task_ptr(i);
        // SAFETY: tasks of the table; their stacks are mapped.
        let (magic, end) = unsafe { ((*t).magic, ((*t).stack_base as *const u64).read_volatile()) };
        if magic != sched::TASK_MAGIC || end != sched::STACK_END_MAGIC {
            let (i, magic, end) = (kfmt::n(i as u64), kfmt::n(magic), kfmt::n(end));
            kprint!(
                cpu,
                "maintenance: task {i}: magic {magic:#x}, stack end {end:#x}"
            );
            problems += 1;
        }
    }
    if crc32c(faults::ro_region()) != faults::ro_crc() {
        kprint!(cpu, "maintenance: read-only memory checksum changed");
        problems += 1;
    }
    kprint!(
        cpu,
        "maintenance: structures checked, {} problem(s)",
        kfmt::n(problems)
    );
    ambulance_guest_agent::maintenance_complete(problems);
}
