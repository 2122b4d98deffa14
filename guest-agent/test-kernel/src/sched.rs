//! Tasks and the scheduler.
//!
//! Every task has its own 16 KiB stack in the vmalloc area (4 KiB pages, an unmapped
//! guard page below each), with `STACK_END_MAGIC` in its lowest word, as Linux has. Tasks
//! that are ready to run sit on one run queue, an intrusive doubly linked list protected
//! by the `run_queue` lock. Each CPU's scheduler loop takes the first task off the queue,
//! checks its stack, switches to it (a real stack switch), and puts it back at the tail
//! when the task yields; so tasks keep migrating between CPUs.
//!
//! A task's work step exercises its stack, allocates kernel objects into the shared
//! object table (freeing what they replace after checking its magic), uses scratch
//! buffers, and logs now and then.

use core::hint::black_box;
use core::ptr::{self, addr_of_mut};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ambulance_guest_agent::abi::boot::VMALLOC_BASE;
use ambulance_guest_agent::abi::ports::panic_reason;

use crate::kfmt::n;
use crate::list::{self, ListHead};
use crate::mem::{self, PageTables, PAGE, PTE_NX, PTE_WRITE};
use crate::panic::{kernel_panic, panic_begin, stop_if_panicking};
use crate::slab::{self, KObject, BUFFER, KOBJECT, KOBJECT_MAGIC};
use crate::sync::{lock, lock_id, percpu, sched_rsp_slot, xorshift};
use crate::{arch, klog};

/// `Task::magic`.
pub const TASK_MAGIC: u64 = 0x6b73_6174_7562_6d61; // "ambutask"
/// The word at the lowest address of every task stack (Linux's value).
pub const STACK_END_MAGIC: u64 = 0x57ac_6e9d;
/// Most tasks.
pub const MAX_TASKS: usize = 64;
/// Pages per task stack.
pub const STACK_PAGES: u64 = 4;
/// Bytes per task stack.
pub const STACK_SIZE: u64 = STACK_PAGES * PAGE;
/// Slots in the object table.
pub const OBJECT_SLOTS: usize = 64;

/// `Task::state` values.
pub const TASK_RUNNABLE: u32 = 0;
pub const TASK_RUNNING: u32 = 1;

/// A task.
#[repr(C)]
pub struct Task {
    pub magic: u64,
    pub pid: u32,
    pub state: u32,
    pub comm: [u8; 16],
    /// Link on the run queue (null while running).
    pub run_list: ListHead,
    /// Lowest address of the stack; holds `STACK_END_MAGIC`.
    pub stack_base: u64,
    pub stack_size: u64,
    /// Saved stack pointer while switched out.
    pub saved_rsp: u64,
    /// CPU it runs or last ran on.
    pub cpu: u32,
    pub prio: u32,
    pub switches: u64,
    pub work_steps: u64,
    pub rng: u64,
}

const EMPTY_TASK: Task = Task {
    magic: 0,
    pid: 0,
    state: 0,
    comm: [0; 16],
    run_list: ListHead::new(),
    stack_base: 0,
    stack_size: 0,
    saved_rsp: 0,
    cpu: 0,
    prio: 0,
    switches: 0,
    work_steps: 0,
    rng: 0,
};

/// The task table.
pub static mut TASKS: [Task; MAX_TASKS] = [EMPTY_TASK; MAX_TASKS];
/// The run queue's head.
pub static mut RUN_QUEUE: ListHead = ListHead::new();
/// Shared table of live kernel objects (pointers into the `kobject` slab, or null).
pub static mut OBJECT_TABLE: [u64; OBJECT_SLOTS] = [0; OBJECT_SLOTS];

static NR_TASKS: AtomicU32 = AtomicU32::new(0);
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Number of tasks.
pub fn nr_tasks() -> usize {
    NR_TASKS.load(Ordering::Relaxed) as usize
}

/// Task `i` of the table.
pub fn task_ptr(i: usize) -> *mut Task {
    // SAFETY: only forms a pointer.
    unsafe { addr_of_mut!(TASKS[i]) }
}

/// The run queue head.
pub fn run_queue() -> *mut ListHead {
    addr_of_mut!(RUN_QUEUE)
}

/// Slot `i` of the object table.
pub fn object_slot(i: usize) -> *mut u64 {
    // SAFETY: only forms a pointer.
    unsafe { addr_of_mut!(OBJECT_TABLE[i]) }
}

/// The task whose `run_list` is `node`.
pub fn task_of(node: *mut ListHead) -> *mut Task {
    (node as usize - core::mem::offset_of!(Task, run_list)) as *mut Task
}

/// Virtual address of task `i`'s stack base.
pub fn stack_base_va(i: usize) -> u64 {
    VMALLOC_BASE + i as u64 * (STACK_SIZE + PAGE) + PAGE
}

/// Maps `n` task stacks into the vmalloc area (boot CPU, before the switch to `pt`).
pub fn map_stacks(pt: &mut PageTables, n: usize) {
    for i in 0..n {
        let pa = mem::alloc_pages(STACK_PAGES);
        for p in 0..STACK_PAGES {
            pt.map_4k(
                stack_base_va(i) + p * PAGE,
                pa + p * PAGE,
                PTE_WRITE | PTE_NX,
            );
        }
    }
}

/// Creates `n` tasks on the run queue (boot CPU, after the switch).
pub fn init_tasks(count: usize, seed: u64) {
    // SAFETY: single-CPU boot; the head is ours.
    unsafe { list::init(run_queue()) };
    for i in 0..count {
        let t = task_ptr(i);
        let base = stack_base_va(i);
        // SAFETY: single-CPU boot; the task and its freshly mapped stack are ours.
        unsafe {
            (*t).pid = i as u32 + 1;
            let mut name = crate::log::FixedBuf::<16>::new();
            let _ = match i {
                0 => core::fmt::Write::write_str(&mut name, "init"),
                1 => core::fmt::Write::write_str(&mut name, "kthreadd"),
                _ => core::fmt::Write::write_fmt(&mut name, format_args!("worker/{}", n(i as u64))),
            };
            (*t).comm = name.buf;
            (*t).state = TASK_RUNNABLE;
            (*t).stack_base = base;
            (*t).stack_size = STACK_SIZE;
            (base as *mut u64).write_volatile(STACK_END_MAGIC);
            (*t).saved_rsp = arch::prepare_task_stack(base + STACK_SIZE, t as u64);
            (*t).prio = 120;
            (*t).rng = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i as u64 + 1)
                | 1;
            (*t).magic = TASK_MAGIC;
            if list::add_tail(addr_of_mut!((*t).run_list), run_queue()).is_err() {
                kernel_panic(
                    panic_reason::LIST_CORRUPTION,
                    format_args!("run queue corrupt at boot"),
                );
            }
        }
    }
    NR_TASKS.store(count as u32, Ordering::Release);
}

/// Checks `t`'s end-of-stack magic; a mismatch is the "Kernel stack is corrupted" panic.
fn check_stack_end(t: *mut Task) -> Result<(), u64> {
    // SAFETY: `t` is a task of the table; its stack base is mapped.
    let found = unsafe { ptr::read_volatile((*t).stack_base as *const u64) };
    if found == STACK_END_MAGIC {
        Ok(())
    } else {
        Err(found)
    }
}

/// Panics for a corrupted stack of `t`, releasing `held` (a lock id) first if given.
pub fn stack_corrupted(cpu: u32, t: *mut Task, found: u64, held: Option<usize>) -> ! {
    panic_begin(cpu);
    if let Some(id) = held {
        lock(id).unlock(cpu);
    }
    // SAFETY: `t` is a task of the table.
    let (pid, comm, base) = unsafe { ((*t).pid, (*t).comm, (*t).stack_base) };
    let (pid, base, found) = (n(pid), n(base), n(found));
    kernel_panic(
        panic_reason::STACK_CORRUPTED,
        format_args!(
            "Kernel stack is corrupted in: pid {pid} ({}): end-of-stack magic at {base:#x} is {found:#x}",
            comm_str(&comm)
        ),
    )
}

/// A task's name as text.
pub fn comm_str(comm: &[u8; 16]) -> &str {
    let n = comm.iter().position(|&b| b == 0).unwrap_or(16);
    core::str::from_utf8(&comm[..n]).unwrap_or("?")
}

/// Panics for a list integrity error while holding the run queue lock.
pub fn run_queue_corrupted(cpu: u32, err: list::ListError) -> ! {
    panic_begin(cpu);
    lock(lock_id::RUN_QUEUE).unlock(cpu);
    kernel_panic(
        panic_reason::LIST_CORRUPTION,
        format_args!("run_queue: {err}"),
    )
}

/// Takes the first runnable task off the run queue.
fn pick_next(cpu: u32) -> *mut Task {
    let l = lock(lock_id::RUN_QUEUE);
    l.lock(cpu);
    let head = run_queue();
    // SAFETY: the run queue lock is held.
    unsafe {
        if list::is_empty(head) {
            l.unlock(cpu);
            return ptr::null_mut();
        }
        let node = (*head).next;
        if let Err(e) = list::del(node) {
            run_queue_corrupted(cpu, e);
        }
        l.unlock(cpu);
        task_of(node)
    }
}

/// Puts `t` back at the tail of the run queue.
fn requeue(cpu: u32, t: *mut Task) {
    let l = lock(lock_id::RUN_QUEUE);
    l.lock(cpu);
    // SAFETY: the run queue lock is held; `t` is off the queue.
    unsafe {
        (*t).state = TASK_RUNNABLE;
        if let Err(e) = list::add_tail(addr_of_mut!((*t).run_list), run_queue()) {
            run_queue_corrupted(cpu, e);
        }
    }
    l.unlock(cpu);
}

/// Each CPU's scheduler loop.
pub fn scheduler_loop(cpu: u32) -> ! {
    let pc = percpu(cpu);
    pc.online.store(1, Ordering::Release);
    loop {
        stop_if_panicking(cpu);
        pc.ticks.fetch_add(1, Ordering::Relaxed);
        crate::faults::on_scheduler_tick(cpu);
        crate::work::on_scheduler_tick(cpu);
        let t = pick_next(cpu);
        if t.is_null() {
            core::hint::spin_loop();
            continue;
        }
        if let Err(found) = check_stack_end(t) {
            stack_corrupted(cpu, t, found, None);
        }
        // SAFETY: `t` is off the queue, so this CPU owns it until it is requeued; the
        // scheduler's saved RSP lives in this CPU's own per-CPU data.
        unsafe {
            (*t).state = TASK_RUNNING;
            (*t).cpu = cpu;
            (*t).switches += 1;
            pc.current.store(t as u64, Ordering::Release);
            pc.switches.fetch_add(1, Ordering::Relaxed);
            pc.last_switch_ns.store(arch::now_ns(), Ordering::Relaxed);
            arch::switch(sched_rsp_slot(cpu), (*t).saved_rsp);
        }
        pc.current.store(0, Ordering::Release);
        requeue(cpu, t);
    }
}

/// First code of every task (entered through `task_entry`).
pub extern "C" fn task_main(t: *mut Task) -> ! {
    loop {
        work_step(t);
        // SAFETY: `t` runs on CPU `(*t).cpu`, whose scheduler RSP was saved when it
        // switched to us.
        unsafe {
            let cpu = (*t).cpu;
            arch::switch(
                addr_of_mut!((*t).saved_rsp),
                sched_rsp_slot(cpu).read_volatile(),
            );
        }
    }
}

#[inline(never)]
fn stack_exercise(depth: u32, seed: u64) -> u64 {
    let mut frame = [0u64; 16];
    for (i, w) in frame.iter_mut().enumerate() {
        *w = seed.wrapping_mul(i as u64 + 1);
    }
    let frame = black_box(frame);
    let below = if depth > 0 {
        stack_exercise(depth - 1, seed ^ frame[3])
    } else {
        0
    };
    frame.iter().fold(below, |a, b| a ^ b)
}

/// Panics for a bad magic value.
pub fn bad_magic(cpu: u32, what: &str, addr: u64, found: u64, held: Option<usize>) -> ! {
    panic_begin(cpu);
    if let Some(id) = held {
        lock(id).unlock(cpu);
    }
    kernel_panic(
        panic_reason::BAD_MAGIC,
        format_args!("bad magic {:#x} in {what} at {:#x}", n(found), n(addr)),
    )
}

fn work_step(t: *mut Task) {
    // SAFETY: this task runs on exactly one CPU at a time; its fields are its own.
    let (cpu, pid, r) = unsafe { ((*t).cpu, (*t).pid, xorshift(&mut (*t).rng)) };
    stop_if_panicking(cpu);
    black_box(stack_exercise((r % 6) as u32 + 1, r));

    // Replace one entry of the object table with a fresh object.
    if let Some(p) = slab::alloc(KOBJECT, cpu) {
        let obj = p as *mut KObject;
        // SAFETY: a fresh object of the kobject cache, ours until published.
        unsafe {
            obj.write(KObject {
                header: 0,
                magic: KOBJECT_MAGIC,
                serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
                owner_pid: pid,
                refcount: 1,
                payload: [r, r >> 1, r >> 2, r >> 3],
            });
        }
        let slot = object_slot((r >> 8) as usize % OBJECT_SLOTS);
        let l = lock(lock_id::OBJECT_TABLE);
        l.lock(cpu);
        // SAFETY: the object table lock is held.
        let old = unsafe {
            let old = slot.read_volatile();
            slot.write_volatile(obj as u64);
            old
        };
        l.unlock(cpu);
        if old != 0 {
            // SAFETY: `old` was a published object; taking it out of the table made it ours.
            let magic = unsafe { ptr::read_volatile(&(*(old as *const KObject)).magic) };
            if magic != KOBJECT_MAGIC {
                bad_magic(cpu, "kobject", old, magic, None);
            }
            slab::free(KOBJECT, cpu, old as *mut u8);
        }
    }

    // Use a scratch buffer.
    if r & 3 == 0 {
        if let Some(p) = slab::alloc(BUFFER, cpu) {
            let b = p as *mut slab::Buffer;
            // SAFETY: a fresh buffer, ours until freed.
            unsafe {
                (*b).magic = slab::BUFFER_MAGIC;
                (*b).len = r % 232;
                for (i, byte) in (*b).data.iter_mut().enumerate() {
                    *byte = (r as u8).wrapping_add(i as u8);
                }
                if ptr::read_volatile(&(*b).magic) != slab::BUFFER_MAGIC {
                    bad_magic(cpu, "buffer", b as u64, (*b).magic, None);
                }
            }
            slab::free(BUFFER, cpu, p);
        }
    }

    // SAFETY: as above.
    let steps = unsafe {
        (*t).work_steps += 1;
        (*t).work_steps
    };
    if steps % 4096 == 0 {
        // SAFETY: as above.
        let comm = unsafe { (*t).comm };
        let (pid, cpu_n, steps) = (n(pid), n(cpu), n(steps));
        klog!(
            cpu,
            "pid {pid} ({}) on cpu {cpu_n}: {steps} steps",
            comm_str(&comm)
        );
    }
}
