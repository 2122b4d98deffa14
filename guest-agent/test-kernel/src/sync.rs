//! Spinlocks that record their owner CPU, and the per-CPU data that records what each CPU
//! is doing and waiting for. All locks live in one table ([`LOCKS`]) so that a host can
//! enumerate them and build the wait-for graph between CPUs.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::MAX_CPUS;

/// `Spinlock::magic`.
pub const LOCK_MAGIC: u32 = 0x10c4_10c4;
/// `Spinlock::owner_cpu` of a free lock.
pub const NO_OWNER: u32 = u32::MAX;

/// A test-and-set spinlock.
#[repr(C)]
pub struct Spinlock {
    pub magic: u32,
    /// 1 while held.
    pub locked: AtomicU32,
    /// The CPU holding it, or [`NO_OWNER`].
    pub owner_cpu: AtomicU32,
    /// Index in [`LOCKS`].
    pub id: u32,
    /// NUL-padded name.
    pub name: [u8; 16],
    /// Successful acquisitions.
    pub acquisitions: AtomicU64,
    /// Acquisitions that had to spin.
    pub contended: AtomicU64,
}

const fn name16(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && i < 16 {
        out[i] = b[i];
        i += 1;
    }
    out
}

impl Spinlock {
    const fn new(id: u32, name: &str) -> Self {
        Spinlock {
            magic: LOCK_MAGIC,
            locked: AtomicU32::new(0),
            owner_cpu: AtomicU32::new(NO_OWNER),
            id,
            name: name16(name),
            acquisitions: AtomicU64::new(0),
            contended: AtomicU64::new(0),
        }
    }

    /// Takes the lock on `cpu`, spinning. While spinning the CPU's `waiting_on` names the
    /// lock. If a panic is in progress the CPU stops here instead of taking it.
    pub fn lock(&'static self, cpu: u32) {
        if self
            .locked
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.contended.fetch_add(1, Ordering::Relaxed);
            let pc = percpu(cpu);
            pc.waiting_on
                .store(self as *const _ as u64, Ordering::Release);
            loop {
                crate::panic::stop_if_panicking(cpu);
                if self.locked.load(Ordering::Relaxed) == 0
                    && self
                        .locked
                        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    break;
                }
                core::hint::spin_loop();
            }
            pc.waiting_on.store(0, Ordering::Release);
        }
        self.owner_cpu.store(cpu, Ordering::Relaxed);
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        percpu(cpu).locks_held.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases the lock.
    pub fn unlock(&'static self, cpu: u32) {
        percpu(cpu).locks_held.fetch_sub(1, Ordering::Relaxed);
        self.owner_cpu.store(NO_OWNER, Ordering::Relaxed);
        self.locked.store(0, Ordering::Release);
    }

    /// Guest-virtual address.
    pub fn addr(&'static self) -> u64 {
        self as *const _ as u64
    }

    /// Guest-virtual address of the lock word (what a descriptor root's `lock` names).
    pub fn word_addr(&'static self) -> u64 {
        &self.locked as *const _ as u64
    }
}

/// Lock ids (indices into [`LOCKS`]).
pub mod lock_id {
    pub const RUN_QUEUE: usize = 0;
    pub const SLAB_KOBJECT: usize = 1;
    pub const SLAB_BUFFER: usize = 2;
    pub const OBJECT_TABLE: usize = 3;
    pub const LOG: usize = 4;
}

/// Every lock of the kernel.
pub static LOCKS: [Spinlock; 5] = [
    Spinlock::new(0, "run_queue"),
    Spinlock::new(1, "slab.kobject"),
    Spinlock::new(2, "slab.buffer"),
    Spinlock::new(3, "object_table"),
    Spinlock::new(4, "log"),
];

/// The lock with this id.
pub fn lock(id: usize) -> &'static Spinlock {
    &LOCKS[id]
}

/// `PerCpu::magic`.
pub const PERCPU_MAGIC: u64 = 0x7065_7263_7075_2121; // "!!upcrep"

/// What one CPU is doing.
#[repr(C)]
pub struct PerCpu {
    pub magic: u64,
    pub cpu: u32,
    /// 1 once the CPU entered its scheduler loop.
    pub online: AtomicU32,
    /// The task running on this CPU, or null in the scheduler loop.
    pub current: AtomicU64,
    /// The lock this CPU is spinning on, or null.
    pub waiting_on: AtomicU64,
    /// Saved RSP of the scheduler loop while a task runs.
    pub sched_rsp: u64,
    /// 1 once the CPU stopped for a panic elsewhere.
    pub stopped: AtomicU32,
    /// Locks currently held.
    pub locks_held: AtomicU32,
    /// Scheduler loop iterations.
    pub ticks: AtomicU64,
    /// Context switches into tasks.
    pub switches: AtomicU64,
    /// Time of the last switch, ns since boot.
    pub last_switch_ns: AtomicU64,
    /// This CPU's random state.
    pub rng: u64,
}

/// Per-CPU data of every possible CPU.
pub static mut PERCPU: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        magic: 0,
        cpu: 0,
        online: AtomicU32::new(0),
        current: AtomicU64::new(0),
        waiting_on: AtomicU64::new(0),
        sched_rsp: 0,
        stopped: AtomicU32::new(0),
        locks_held: AtomicU32::new(0),
        ticks: AtomicU64::new(0),
        switches: AtomicU64::new(0),
        last_switch_ns: AtomicU64::new(0),
        rng: 0,
    }
}; MAX_CPUS];

/// The per-CPU data of `cpu`. Fields other CPUs read are atomics; the plain fields are
/// only touched by their own CPU.
pub fn percpu(cpu: u32) -> &'static PerCpu {
    // SAFETY: `cpu` is below MAX_CPUS (checked at entry); shared fields are atomics.
    unsafe { &(*core::ptr::addr_of!(PERCPU))[cpu as usize] }
}

/// Where CPU `cpu`'s scheduler loop saves its stack pointer while a task runs. Only that
/// CPU writes it (through `switch_context`).
pub fn sched_rsp_slot(cpu: u32) -> *mut u64 {
    // SAFETY: only forms a pointer; `cpu` is below MAX_CPUS.
    unsafe { core::ptr::addr_of_mut!((*core::ptr::addr_of_mut!(PERCPU))[cpu as usize].sched_rsp) }
}

/// Initializes the per-CPU data of `cpu` (boot CPU, before the others start).
pub fn init_percpu(cpu: u32, seed: u64) {
    // SAFETY: single-CPU boot: nobody else touches the entry yet.
    let pc = unsafe { &mut (*core::ptr::addr_of_mut!(PERCPU))[cpu as usize] };
    pc.cpu = cpu;
    pc.rng = seed
        .wrapping_add(cpu as u64 + 1)
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        | 1;
    pc.magic = PERCPU_MAGIC;
}

/// A tiny xorshift generator.
pub fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}
