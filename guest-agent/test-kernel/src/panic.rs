//! The panic path: stop the other CPUs at safe points, log the message, ring the panic
//! doorbell. Also the CPU exception handler (an "oops" is fatal here) and Rust's panic
//! handler.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use ambulance_guest_agent::abi::ports::panic_reason;
use ambulance_guest_agent::{panic_doorbell, Console};

use crate::arch::{self, ExceptionFrame};
use crate::kfmt::n;
use crate::log::{self, FixedBuf, LOG_TEXT};
use crate::sync::percpu;

static PANIC_STOP: AtomicBool = AtomicBool::new(false);
static PANIC_CPU: AtomicU32 = AtomicU32::new(u32::MAX);

/// The calling CPU's index (its APIC ID, which the VMM sets to the vCPU index).
pub fn this_cpu() -> u32 {
    let r = core::arch::x86_64::__cpuid(1);
    (r.ebx >> 24) % crate::MAX_CPUS as u32
}

/// Called at safe points (no lock held) and while spinning on a lock: if another CPU
/// is panicking, stop here for good.
pub fn stop_if_panicking(cpu: u32) {
    if PANIC_STOP.load(Ordering::Acquire) && PANIC_CPU.load(Ordering::Acquire) != cpu {
        park(cpu);
    }
}

fn park(cpu: u32) -> ! {
    percpu(cpu).stopped.store(1, Ordering::Release);
    loop {
        core::hint::spin_loop();
    }
}

/// Starts a panic on `cpu` and returns once the other CPUs have stopped at their next
/// safe point (a wait of at most half a second). A CPU that loses the race to another
/// panicking CPU stops instead.
///
/// A caller that found a structure corrupt while holding its lock calls this before it
/// releases the lock: a CPU spinning on that lock stops in its spin, so none can enter
/// the structure between the release and its stop and change what the panic is about
/// (take the smashed object out of its table, say) before the diagnosis reads it.
pub fn panic_begin(cpu: u32) {
    match PANIC_CPU.compare_exchange(u32::MAX, cpu, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => PANIC_STOP.store(true, Ordering::Release),
        Err(owner) if owner == cpu => {}
        Err(_) => park(cpu),
    }
    let deadline = arch::now_ns() + 500_000_000;
    for other in 0..crate::cpu_count() {
        if other == cpu {
            continue;
        }
        let pc = percpu(other);
        while pc.online.load(Ordering::Acquire) == 1
            && pc.stopped.load(Ordering::Acquire) == 0
            && arch::now_ns() < deadline
        {
            core::hint::spin_loop();
        }
    }
}

/// Panics the kernel: stops the other CPUs ([`panic_begin`]), logs
/// `Kernel panic - not syncing: <message>` to the console and the log ring, and rings the
/// panic doorbell with `reason`.
pub fn kernel_panic(reason: u32, args: fmt::Arguments<'_>) -> ! {
    let cpu = this_cpu();
    panic_begin(cpu);
    let mut text = FixedBuf::<LOG_TEXT>::new();
    let _ = write!(text, "Kernel panic - not syncing: {args}");
    let _ = Console.write_fmt(format_args!("Kernel panic - not syncing: {args}\n"));
    log::write_record(cpu, text.as_bytes());
    panic_doorbell(reason)
}

/// Entered from the exception stubs with interrupts off, on the faulting stack.
pub extern "C" fn exception_handler(frame: &ExceptionFrame) -> ! {
    let vector = frame.vector as u32;
    let cpu = this_cpu();
    if PANIC_CPU.load(Ordering::Acquire) == cpu {
        // A fault inside our own panic path: do not recurse.
        panic_doorbell(panic_reason::EXCEPTION_BASE + vector);
    }
    let cr2 = arch::read_cr2();
    kernel_panic(
        panic_reason::EXCEPTION_BASE + vector,
        format_args!(
            "Oops: {} (vector {}, error {:#x}) at RIP {:#x}, RSP {:#x}, CR2 {:#x} on CPU {}",
            panic_reason::name(panic_reason::EXCEPTION_BASE + vector),
            n(vector),
            n(frame.error),
            n(frame.rip),
            n(frame.rsp),
            n(cr2),
            n(cpu),
        ),
    )
}

#[panic_handler]
fn rust_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    kernel_panic(panic_reason::RUST_PANIC, format_args!("{info}"))
}
