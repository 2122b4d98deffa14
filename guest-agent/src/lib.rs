//! The guest side of the Ambulance ABI, for freestanding x86-64 kernels (`no_std`, no
//! allocator).
//!
//! A kernel uses it to talk to the host through the port-I/O doorbells defined in
//! [`ambulance_abi::ports`]: register its descriptor, report a panic, signal that a
//! maintenance run finished, and write console output. The descriptor itself is built
//! with [`ambulance_abi::descriptor::DescriptorWriter`], re-exported here as [`abi`].
//!
//! Every function here executes `in`/`out` instructions, which only make sense in ring 0
//! of a guest started by an Ambulance VMM; on other machines they fault.

#![no_std]

pub use ambulance_abi as abi;

use abi::ports;
use core::sync::atomic::{AtomicU64, Ordering};

/// Raw port I/O.
pub mod io {
    use core::arch::asm;

    /// Writes a byte to an I/O port.
    #[inline]
    pub fn outb(port: u16, value: u8) {
        // SAFETY: `out` has no memory effects visible to Rust; in an Ambulance guest the
        // port is handled by the VMM (ring 0 is assumed, as documented on the crate).
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        }
    }

    /// Writes a 32-bit value to an I/O port.
    #[inline]
    pub fn outl(port: u16, value: u32) {
        // SAFETY: as for `outb`.
        unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
        }
    }

    /// Reads a byte from an I/O port.
    #[inline]
    pub fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: as for `outb`; `in` only writes the named register.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
        }
        v
    }

    /// Reads a 32-bit value from an I/O port.
    #[inline]
    pub fn inl(port: u16) -> u32 {
        let v: u32;
        // SAFETY: as for `inb`.
        unsafe {
            asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
        }
        v
    }
}

/// Registers the descriptor at guest-physical `gpa` (page-aligned) and returns what the
/// host answered. The host has copied and checked the descriptor when this returns.
pub fn register(gpa: u64) -> ports::RegistrationStatus {
    io::outl(ports::REGISTER_LO, gpa as u32);
    io::outl(ports::REGISTER_HI, (gpa >> 32) as u32);
    ports::RegistrationStatus::from_u32(io::inl(ports::REGISTER_HI))
}

/// Rings the panic doorbell with a reason code from [`ports::panic_reason`]. The host
/// freezes the guest; this vCPU never resumes (if it does, it spins here).
pub fn panic_doorbell(reason: u32) -> ! {
    io::outl(ports::PANIC, reason);
    loop {
        core::hint::spin_loop();
    }
}

/// Tells the host that a maintenance image finished (0 = healthy, else an error count).
pub fn maintenance_complete(status: u32) {
    io::outl(ports::MAINTENANCE_COMPLETE, status);
}

/// Asks for a system reset through the i8042 controller, as a PC kernel's reboot does.
pub fn request_reset() {
    io::outb(ports::I8042_COMMAND, ports::I8042_RESET);
}

/// The console: bytes written to COM1. Implements [`core::fmt::Write`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Console;

impl Console {
    /// Writes raw bytes.
    pub fn write_bytes(&self, bytes: &[u8]) {
        for &b in bytes {
            io::outb(ports::CONSOLE, b);
        }
    }
}

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// The heartbeat counter the host watches. Place it in RAM and give its guest-physical
/// address in the descriptor; advance it from the kernel's timer path.
#[repr(C, align(8))]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    /// A counter at zero.
    pub const fn new() -> Self {
        Heartbeat(AtomicU64::new(0))
    }

    /// Advances the counter to `value` if that is ahead of it (it never goes back).
    pub fn advance_to(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Release);
    }

    /// Adds one.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}
