//! x86-64 glue: entry point, descriptor tables, exceptions, context switch, TSC.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::{MAX_CPUS, STACK_SHIFT};

/// Boot stacks, one per CPU, used by the scheduler loop of each CPU.
#[repr(C, align(16))]
pub struct BootStacks(pub [[u8; 1 << STACK_SHIFT]; MAX_CPUS]);

#[no_mangle]
pub static mut BOOT_STACKS: BootStacks = BootStacks([[0; 1 << STACK_SHIFT]; MAX_CPUS]);

// Every vCPU enters here in long mode with RDI = BootInfo GPA and RSI = CPU index.
global_asm!(
    ".section .text.boot,\"ax\"",
    ".global _start",
    "_start:",
    "    cmp rsi, {max_cpus}",
    "    jae 2f",
    "    lea rsp, [rip + {stacks}]",
    "    mov rax, rsi",
    "    add rax, 1",
    "    shl rax, {shift}",
    "    add rsp, rax",
    "    xor ebp, ebp",
    "    call {kmain}",
    "2:  cli",
    "    hlt",
    "    jmp 2b",
    max_cpus = const MAX_CPUS,
    shift = const STACK_SHIFT,
    stacks = sym BOOT_STACKS,
    kmain = sym crate::kmain,
);

// Cooperative context switch: saves the callee-saved registers on the current stack,
// stores RSP through RDI, loads RSI as the new RSP and pops the same set from it.
// A new task's stack is prepared so that the `ret` lands in `task_entry` with the task
// pointer in r12.
global_asm!(
    ".section .text",
    ".global switch_context",
    "switch_context:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rdi], rsp",
    "    mov rsp, rsi",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".global task_entry",
    "task_entry:",
    "    mov rdi, r12",
    "    xor ebp, ebp",
    "    call {task_main}",
    "    ud2",
    task_main = sym crate::sched::task_main,
);

extern "C" {
    fn switch_context(save_rsp: *mut u64, new_rsp: u64);
    fn task_entry();
    static EXCEPTION_STUBS: [u64; 32];
}

/// Switches stacks: saves the current context through `save_rsp` and resumes `new_rsp`.
///
/// # Safety
/// `new_rsp` must be a stack saved by `switch_context` or prepared by
/// [`prepare_task_stack`], and `save_rsp` must stay valid until resumed.
pub unsafe fn switch(save_rsp: *mut u64, new_rsp: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { switch_context(save_rsp, new_rsp) }
}

/// Builds the first frame of a task on the stack whose top is `top` (16-byte aligned)
/// and returns the RSP to switch to.
///
/// # Safety
/// `top - 56 .. top` must be mapped, writable stack memory nobody else uses.
pub unsafe fn prepare_task_stack(top: u64, task: u64) -> u64 {
    let frame = (top - 56) as *mut u64;
    let words = [0, 0, 0, task, 0, 0, task_entry as *const () as u64]; // r15 r14 r13 r12 rbx rbp ret
    for (i, w) in words.iter().enumerate() {
        // SAFETY: within the caller-guaranteed range.
        unsafe { frame.add(i).write(*w) };
    }
    frame as u64
}

/// The frame the exception stubs build: vector and error code, then what the CPU pushed.
#[repr(C)]
pub struct ExceptionFrame {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    ".section .text",
    ".macro EXC_NOERR n",
    "exc_stub_\\n:",
    "    push 0",
    "    push \\n",
    "    jmp exception_common",
    ".endm",
    ".macro EXC_ERR n",
    "exc_stub_\\n:",
    "    push \\n",
    "    jmp exception_common",
    ".endm",
    "EXC_NOERR 0", "EXC_NOERR 1", "EXC_NOERR 2", "EXC_NOERR 3", "EXC_NOERR 4",
    "EXC_NOERR 5", "EXC_NOERR 6", "EXC_NOERR 7", "EXC_ERR 8", "EXC_NOERR 9",
    "EXC_ERR 10", "EXC_ERR 11", "EXC_ERR 12", "EXC_ERR 13", "EXC_ERR 14",
    "EXC_NOERR 15", "EXC_NOERR 16", "EXC_ERR 17", "EXC_NOERR 18", "EXC_NOERR 19",
    "EXC_NOERR 20", "EXC_ERR 21", "EXC_NOERR 22", "EXC_NOERR 23", "EXC_NOERR 24",
    "EXC_NOERR 25", "EXC_NOERR 26", "EXC_NOERR 27", "EXC_NOERR 28", "EXC_ERR 29",
    "EXC_ERR 30", "EXC_NOERR 31",
    "exception_common:",
    "    mov rdi, rsp",
    "    and rsp, -16",
    "    call {handler}",
    "    ud2",
    ".section .rodata",
    ".balign 8",
    ".global EXCEPTION_STUBS",
    "EXCEPTION_STUBS:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad exc_stub_\\n",
    ".endr",
    handler = sym crate::panic::exception_handler,
);

#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

#[repr(C, align(16))]
struct Gdt([u64; 3]);

/// Null, 64-bit code (selector 8), data (selector 16).
static GDT: Gdt = Gdt([0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]);

#[derive(Clone, Copy)]
#[repr(C)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    zero: u32,
}

#[repr(C, align(16))]
struct Idt([IdtEntry; 32]);

static mut IDT: Idt = Idt([IdtEntry {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    zero: 0,
}; 32]);

/// Fills the IDT with the exception stubs (boot CPU, once).
pub fn init_idt() {
    // SAFETY: the stub table is immutable data emitted above.
    let stubs = unsafe { EXCEPTION_STUBS };
    for (v, handler) in stubs.into_iter().enumerate() {
        let e = IdtEntry {
            offset_low: handler as u16,
            selector: 8,
            ist: 0,
            type_attr: 0x8e, // present, ring 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            zero: 0,
        };
        // SAFETY: only the boot CPU writes the IDT, before the other CPUs load it.
        unsafe { (*core::ptr::addr_of_mut!(IDT)).0[v] = e };
    }
}

/// Loads the kernel's own GDT (in its image) and IDT on this CPU and reloads segments.
pub fn load_tables() {
    let gdt = TablePointer {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: core::ptr::addr_of!(GDT) as u64,
    };
    let idt = TablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: both tables are valid for the lifetime of the kernel; the far return
    // reloads CS with the same flat code segment, the data segments are flat.
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "push 8",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, 16",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "lidt [{idt}]",
            gdt = in(reg) &gdt,
            idt = in(reg) &idt,
            tmp = out(reg) _,
        );
    }
}

/// Loads an empty IDT and executes an invalid opcode: the #UD cannot be delivered, nor
/// the #DF that follows, and the CPU shuts down (a triple fault).
pub fn triple_fault() -> ! {
    let idt = TablePointer { limit: 0, base: 0 };
    // SAFETY: deliberately fatal; nothing runs after it.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) &idt, options(noreturn)) }
}

/// Switches to the page tables rooted at `pml4` (physical).
///
/// # Safety
/// The tables must map the running code, its stack and everything used afterwards.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Disables interrupts and spins forever.
pub fn hang() -> ! {
    // SAFETY: `cli` only masks interrupts, which this kernel never enables anyway.
    unsafe { asm!("cli", options(nomem, nostack)) };
    loop {
        core::hint::spin_loop();
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` only writes the named registers.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_KHZ: AtomicU64 = AtomicU64::new(1_000_000);

/// Starts the clock (boot CPU).
pub fn init_clock(tsc_khz: u64) {
    TSC_KHZ.store(tsc_khz.max(1), Ordering::Relaxed);
    BOOT_TSC.store(rdtsc(), Ordering::Release);
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    let delta = rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Acquire));
    (delta as u128 * 1_000_000 / TSC_KHZ.load(Ordering::Relaxed) as u128) as u64
}

/// Milliseconds since boot.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}
