//! The fault catalogue, and CPU 0's timer duties (heartbeat, periodic self-checks).
//!
//! A fault is chosen on the command line (`fault=NAME fault_after_ms=N seed=S`). When its
//! time comes, CPU 0 picks the structure to hit from the seed, writes one ground-truth
//! line to the console and the log ring:
//!
//! ```text
//! AMBULANCE-FAULT name=<fault> structure=<root name> address=0x<guest virtual address>
//! ```
//!
//! and then corrupts it. The kernel's own integrity checks (list debugging, stack-end
//! check, magic checks, slab checks, text checksum) then detect the damage and panic, as
//! a real kernel with debugging options would; the damage is left in place for the host
//! to find.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ambulance_guest_agent::abi::boot::DIRECT_MAP_BASE;
use ambulance_guest_agent::abi::crc32c::crc32c;
use ambulance_guest_agent::abi::ports::panic_reason;

use crate::kfmt::n;
use crate::list::{self, ListHead};
use crate::panic::{kernel_panic, panic_begin};
use crate::sched::{self, Task, MAX_TASKS, OBJECT_SLOTS, STACK_END_MAGIC, TASK_MAGIC};
use crate::slab::{self, FreeObject, KObject, KOBJECT_MAGIC};
use crate::sync::{lock, lock_id, percpu, xorshift, PERCPU};
use crate::{arch, kprint, HEARTBEAT};

/// The faults the kernel can inject.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
// `TripleFault` is the failure's name, not a repeat of the enum's.
#[allow(clippy::enum_variant_names)]
pub enum Fault {
    None,
    Panic,
    ListCorruption,
    ListCycle,
    StackOverflow,
    MagicSmash,
    TextCorruption,
    FreelistCycle,
    WildPointer,
    Deadlock,
    Hang,
    Slow,
    TripleFault,
}

impl Fault {
    /// Every fault, with its command-line name.
    pub const ALL: [(Fault, &'static str); 13] = [
        (Fault::None, "none"),
        (Fault::Panic, "panic"),
        (Fault::ListCorruption, "list-corruption"),
        (Fault::ListCycle, "list-cycle"),
        (Fault::StackOverflow, "stack-overflow"),
        (Fault::MagicSmash, "magic-smash"),
        (Fault::TextCorruption, "text-corruption"),
        (Fault::FreelistCycle, "freelist-cycle"),
        (Fault::WildPointer, "wild-pointer"),
        (Fault::Deadlock, "deadlock"),
        (Fault::Hang, "hang"),
        (Fault::Slow, "slow"),
        (Fault::TripleFault, "triple-fault"),
    ];

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Fault> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

/// What the command line asked for.
#[derive(Clone, Copy)]
pub struct FaultPlan {
    pub fault: Fault,
    pub after_ms: u64,
    pub seed: u64,
}

static mut PLAN: FaultPlan = FaultPlan {
    fault: Fault::None,
    after_ms: 0,
    seed: 1,
};
static ARMED_AT_MS: AtomicU64 = AtomicU64::new(u64::MAX);
static FIRED: AtomicBool = AtomicBool::new(false);
static SLOW_SINCE_MS: AtomicU64 = AtomicU64::new(u64::MAX);
static SLOW_BASE: AtomicU64 = AtomicU64::new(0);
static DEADLOCK_STAGE: AtomicU32 = AtomicU32::new(0);

/// `RO_CRC32C` before the build patched it.
const RO_CRC_UNSET: u64 = u64::MAX;

/// CRC32C of the read-only region, computed when the kernel was built and patched into
/// the ELF file by `crates/test-kernel/build.rs`: computing it at boot would take most of
/// a second where guest code runs under an instruction emulator. If the file was not
/// patched, the kernel computes it at boot.
#[no_mangle]
pub static RO_CRC32C: AtomicU64 = AtomicU64::new(RO_CRC_UNSET);

/// The read-only region's expected checksum (computing it if the build did not).
pub fn ro_crc() -> u32 {
    let v = RO_CRC32C.load(Ordering::Relaxed);
    if v != RO_CRC_UNSET {
        return v as u32;
    }
    let crc = crc32c(ro_region());
    RO_CRC32C.store(crc as u64, Ordering::Relaxed);
    crc
}

/// Arms the plan; the fault fires `after_ms` from now (boot CPU, after registration).
pub fn arm(plan: FaultPlan) {
    // SAFETY: single-CPU boot.
    unsafe { PLAN = plan };
    ARMED_AT_MS.store(arch::now_ms(), Ordering::Release);
}

fn plan() -> FaultPlan {
    // SAFETY: written once at boot before ARMED_AT_MS is published.
    unsafe { PLAN }
}

/// The read-only region `[__ro_start, __ro_end)`.
pub fn ro_region() -> &'static [u8] {
    extern "C" {
        static __ro_start: u8;
        static __ro_end: u8;
    }
    // SAFETY: linker-provided bounds of the mapped read-only image.
    unsafe {
        let start = core::ptr::addr_of!(__ro_start);
        let end = core::ptr::addr_of!(__ro_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Called by every CPU at the top of its scheduler loop, holding no lock.
pub fn on_scheduler_tick(cpu: u32) {
    if cpu == 0 {
        cpu0_timer();
    } else if cpu == 1 && DEADLOCK_STAGE.load(Ordering::Acquire) == 1 {
        // The other half of the deadlock: take B, let CPU 0 take A, then want A.
        lock(LOCK_B).lock(cpu);
        DEADLOCK_STAGE.store(2, Ordering::Release);
        while DEADLOCK_STAGE.load(Ordering::Acquire) != 3 {
            core::hint::spin_loop();
        }
        lock(LOCK_A).lock(cpu);
    }
}

/// Advances the heartbeat to the current time (CPU 0's timer duty; long loops on CPU 0
/// call it too, as Linux's touch_softlockup_watchdog()).
fn beat() {
    let now = arch::now_ms();
    let since = SLOW_SINCE_MS.load(Ordering::Relaxed);
    let beat = if now >= since {
        SLOW_BASE.load(Ordering::Relaxed) + (now - since) / 10
    } else {
        now
    };
    HEARTBEAT.advance_to(beat);
}

fn cpu0_timer() {
    let now = arch::now_ms();
    beat();

    let armed = ARMED_AT_MS.load(Ordering::Acquire);
    let p = plan();
    if armed != u64::MAX
        && p.fault != Fault::None
        && now >= armed + p.after_ms
        && !FIRED.swap(true, Ordering::AcqRel)
    {
        inject(p);
    }
}

/// Recomputes the read-only region's checksum; a change is a panic. Runs on CPU 0 and
/// keeps the heartbeat going while it works (it takes most of a second under emulation).
pub fn check_text(cpu: u32) {
    let expected = ro_crc();
    let mut c = ambulance_guest_agent::abi::crc32c::Crc32c::new();
    for chunk in ro_region().chunks(2048) {
        c.update(chunk);
        beat();
    }
    let found = c.finish();
    if found != expected {
        let (found, expected) = (n(found), n(expected));
        panic_begin(cpu);
        kernel_panic(
            panic_reason::TEXT_CHECKSUM,
            format_args!(
                "read-only kernel memory modified: checksum {found:#010x}, expected {expected:#010x}"
            ),
        );
    }
}

fn ground_truth(fault: Fault, structure: &str, address: u64) {
    kprint!(
        0,
        "AMBULANCE-FAULT name={} structure={structure} address={:#x}",
        fault.name(),
        n(address)
    );
}

const LOCK_A: usize = lock_id::OBJECT_TABLE;
const LOCK_B: usize = lock_id::SLAB_KOBJECT;

/// A deliberately unused function whose bytes `text-corruption` damages.
#[link_section = ".text.sacrificial"]
#[inline(never)]
pub extern "C" fn sacrificial(x: u64) -> u64 {
    let mut acc = x;
    for i in 0..64u64 {
        acc = acc.rotate_left(7) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        acc = core::hint::black_box(acc);
    }
    acc
}

/// Keeps `sacrificial` in the image.
#[used]
static KEEP_SACRIFICIAL: extern "C" fn(u64) -> u64 = sacrificial;

/// The run queue's nodes in order (run queue lock held).
fn run_queue_nodes(out: &mut [*mut ListHead; MAX_TASKS]) -> usize {
    let head = sched::run_queue();
    let mut n = 0;
    // SAFETY: the caller holds the run queue lock.
    let mut node = unsafe { (*head).next };
    while node != head && n < MAX_TASKS {
        out[n] = node;
        n += 1;
        // SAFETY: as above.
        node = unsafe { (*node).next };
    }
    n
}

fn inject(p: FaultPlan) {
    let cpu = 0;
    let mut rng = p.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let r1 = xorshift(&mut rng);
    let r2 = xorshift(&mut rng);
    let percpu0 = percpu(0) as *const _ as u64;
    match p.fault {
        Fault::None => {}
        Fault::Panic => {
            ground_truth(p.fault, "percpu", percpu0);
            kernel_panic(
                panic_reason::GENERIC,
                format_args!("ambulance test fault: explicit panic (seed {})", n(p.seed)),
            );
        }
        Fault::TripleFault => {
            ground_truth(p.fault, "percpu", percpu0);
            arch::triple_fault();
        }
        Fault::Hang => {
            ground_truth(p.fault, "percpu", percpu0);
            arch::hang();
        }
        Fault::Slow => {
            ground_truth(p.fault, "heartbeat", &HEARTBEAT as *const _ as u64);
            SLOW_BASE.store(HEARTBEAT.get(), Ordering::Relaxed);
            SLOW_SINCE_MS.store(arch::now_ms(), Ordering::Relaxed);
        }
        Fault::ListCorruption | Fault::ListCycle | Fault::StackOverflow => {
            let l = lock(lock_id::RUN_QUEUE);
            l.lock(cpu);
            let mut nodes = [core::ptr::null_mut(); MAX_TASKS];
            let count = run_queue_nodes(&mut nodes);
            if count < 2 {
                l.unlock(cpu);
                kprint!(
                    cpu,
                    "fault {}: run queue too short ({} tasks)",
                    p.fault.name(),
                    n(count as u64)
                );
                return;
            }
            let head = sched::run_queue();
            match p.fault {
                Fault::ListCorruption => {
                    let k = (r1 % count as u64) as usize;
                    let x = nodes[k];
                    // SAFETY: run queue lock held; all nodes are tasks of the table.
                    unsafe {
                        let true_prev = (*x).prev;
                        let wrong = [nodes[(k + 1) % count], head, nodes[(k + 2) % count]]
                            .into_iter()
                            .find(|&c| c != true_prev && c != x)
                            .unwrap_or(head);
                        ground_truth(p.fault, "run_queue", sched::task_of(x) as u64);
                        (*x).prev = wrong;
                        if let Err(e) = list::check_node(x) {
                            sched::run_queue_corrupted(cpu, e);
                        }
                    }
                }
                Fault::ListCycle => {
                    let k = 1 + (r1 % (count as u64 - 1)) as usize;
                    let j = (r2 % k as u64) as usize;
                    let x = nodes[k];
                    ground_truth(p.fault, "run_queue", sched::task_of(x) as u64);
                    // SAFETY: run queue lock held.
                    unsafe { (*x).next = nodes[j] };
                    // The kernel's walk notices it never gets back to the head.
                    let mut node = head;
                    for _ in 0..=MAX_TASKS {
                        // SAFETY: as above.
                        node = unsafe { (*node).next };
                        if node == head {
                            break;
                        }
                    }
                    if node != head {
                        sched::run_queue_corrupted(
                            cpu,
                            list::ListError::TooLong { limit: MAX_TASKS },
                        );
                    }
                }
                _ => {
                    let t = sched::task_of(nodes[(r1 % count as u64) as usize]);
                    // SAFETY: run queue lock held; a queued task's stack is not in use.
                    unsafe {
                        let base = (*t).stack_base;
                        ground_truth(p.fault, "tasks", base);
                        core::ptr::write_bytes(base as *mut u8, 0x41, 64);
                        let found = (base as *const u64).read_volatile();
                        if found != STACK_END_MAGIC {
                            sched::stack_corrupted(cpu, t, found, Some(lock_id::RUN_QUEUE));
                        }
                    }
                }
            }
            l.unlock(cpu);
        }
        Fault::MagicSmash => smash_magic(p.fault, r1, r2),
        Fault::TextCorruption => {
            extern "C" {
                static __sacrificial_start: u8;
                static __sacrificial_end: u8;
            }
            let (start, end) = (
                core::ptr::addr_of!(__sacrificial_start) as u64,
                core::ptr::addr_of!(__sacrificial_end) as u64,
            );
            let addr = start + r1 % (end - start).max(1);
            ground_truth(p.fault, "kernel_text", addr);
            // Text is mapped read-only; write through the direct-map alias, as a stray
            // write through a physical mapping would.
            let alias = (DIRECT_MAP_BASE + crate::mem::image_to_phys(addr)) as *mut u8;
            // SAFETY: the alias maps the same RAM; `sacrificial` is never executed.
            unsafe { alias.write_volatile(alias.read_volatile() ^ 0xff) };
            check_text(cpu);
        }
        Fault::FreelistCycle => {
            let idx = (r1 % slab::NR_CACHES as u64) as usize;
            let l = slab::cache_lock(idx);
            l.lock(cpu);
            // SAFETY: the cache lock is held.
            let c = unsafe { slab::cache(idx) };
            let mut nodes = [core::ptr::null_mut::<FreeObject>(); 8];
            let mut m = 0;
            let mut f = c.free_list;
            while !f.is_null() && m < nodes.len() {
                nodes[m] = f;
                m += 1;
                // SAFETY: cache lock held; entries are free objects of the slab.
                f = unsafe { (*f).next };
            }
            if m < 2 {
                l.unlock(cpu);
                kprint!(cpu, "fault freelist-cycle: free list too short");
                return;
            }
            let k = 1 + (r2 % (m as u64 - 1)) as usize;
            let j = (r1 >> 7) as usize % k;
            ground_truth(p.fault, slab::FREELIST_ROOTS[idx], nodes[k] as u64);
            // SAFETY: as above.
            unsafe { (*nodes[k]).next = nodes[j] };
            if let Err(e) = c.check_free_list() {
                panic_begin(cpu);
                l.unlock(cpu);
                kernel_panic(
                    panic_reason::SLAB_CORRUPTION,
                    format_args!("slab {}: {e}", slab::FREELIST_ROOTS[idx]),
                );
            }
            l.unlock(cpu);
        }
        Fault::WildPointer => {
            let l = lock(lock_id::OBJECT_TABLE);
            l.lock(cpu);
            let k = (r1 % OBJECT_SLOTS as u64) as usize;
            let slot = sched::object_slot(k);
            let wild = if r2 & 1 == 0 {
                0x00de_ad00_0000_0000 | ((k as u64) << 12) // non-canonical
            } else {
                0xffff_c880_0000_0000 + ((k as u64) << 12) // canonical, never mapped
            };
            ground_truth(p.fault, "object_table", slot as u64);
            // SAFETY: object table lock held. The dereference below faults on purpose:
            // the oops handler takes over.
            unsafe {
                slot.write_volatile(wild);
                let obj = slot.read_volatile() as *const KObject;
                let magic = core::ptr::read_volatile(&(*obj).magic);
                core::hint::black_box(magic);
            }
            l.unlock(cpu);
        }
        Fault::Deadlock => {
            ground_truth(p.fault, "locks", lock(LOCK_A).addr());
            if crate::cpu_count() >= 2 {
                // CPU 1 takes B (at its next scheduling point), CPU 0 takes A, then each
                // wants the other's: the classic ABBA deadlock.
                DEADLOCK_STAGE.store(1, Ordering::Release);
                while DEADLOCK_STAGE.load(Ordering::Acquire) != 2 {
                    core::hint::spin_loop();
                }
                lock(LOCK_A).lock(cpu);
                DEADLOCK_STAGE.store(3, Ordering::Release);
                lock(LOCK_B).lock(cpu);
            } else {
                // Only one CPU: it deadlocks against itself.
                lock(LOCK_A).lock(cpu);
                lock(LOCK_A).lock(cpu);
            }
        }
    }
}

fn smash_magic(fault: Fault, r1: u64, r2: u64) {
    let cpu = 0;
    match r1 % 3 {
        0 => {
            // A task on the run queue.
            let l = lock(lock_id::RUN_QUEUE);
            l.lock(cpu);
            let mut nodes = [core::ptr::null_mut(); MAX_TASKS];
            let count = run_queue_nodes(&mut nodes);
            if count == 0 {
                l.unlock(cpu);
                return;
            }
            let t: *mut Task = sched::task_of(nodes[(r2 % count as u64) as usize]);
            ground_truth(fault, "tasks", t as u64);
            // SAFETY: run queue lock held; a queued task is not running.
            unsafe {
                core::ptr::write_volatile(&mut (*t).magic, 0x4141_4141_4141_4141);
                let found = core::ptr::read_volatile(&(*t).magic);
                if found != TASK_MAGIC {
                    sched::bad_magic(cpu, "task", t as u64, found, Some(lock_id::RUN_QUEUE));
                }
            }
            l.unlock(cpu);
        }
        1 => {
            // A live kernel object.
            let l = lock(lock_id::OBJECT_TABLE);
            l.lock(cpu);
            let start = (r2 % OBJECT_SLOTS as u64) as usize;
            let found_slot = (0..OBJECT_SLOTS)
                .map(|i| sched::object_slot((start + i) % OBJECT_SLOTS))
                // SAFETY: object table lock held.
                .find(|s| unsafe { s.read_volatile() } != 0);
            let Some(slot) = found_slot else {
                l.unlock(cpu);
                return;
            };
            // SAFETY: object table lock held; published objects are valid.
            unsafe {
                let obj = slot.read_volatile() as *mut KObject;
                ground_truth(fault, "objects", obj as u64);
                core::ptr::write_volatile(&mut (*obj).magic, 0x4242_4242_4242_4242);
                let found = core::ptr::read_volatile(&(*obj).magic);
                if found != KOBJECT_MAGIC {
                    sched::bad_magic(
                        cpu,
                        "kobject",
                        obj as u64,
                        found,
                        Some(lock_id::OBJECT_TABLE),
                    );
                }
            }
            l.unlock(cpu);
        }
        _ => {
            // Another CPU's per-CPU data (or our own with one CPU).
            let target = (1 + r2 % (crate::cpu_count() as u64).max(1)) as usize
                % crate::cpu_count() as usize;
            // SAFETY: only forms a pointer; the write below is a deliberate corruption of
            // a field nobody but the checker reads.
            let pc = unsafe { core::ptr::addr_of_mut!(PERCPU[target]) };
            ground_truth(fault, "percpu", pc as u64);
            // SAFETY: as above.
            unsafe {
                core::ptr::write_volatile(&mut (*pc).magic, 0x4343_4343_4343_4343);
                let found = core::ptr::read_volatile(&(*pc).magic);
                if found != crate::sync::PERCPU_MAGIC {
                    sched::bad_magic(cpu, "percpu", pc as u64, found, None);
                }
            }
        }
    }
}
