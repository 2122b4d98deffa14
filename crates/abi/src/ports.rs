//! Port-I/O doorbells.
//!
//! A guest rings a doorbell with an `out` instruction; the vCPU exits to the VMM, which
//! handles the write synchronously before the vCPU resumes. All Ambulance doorbells sit in
//! the otherwise unused range `0x510..0x520`; the console and the reset request use the
//! legacy PC ports so that an ordinary kernel needs no special driver for them.
//!
//! | port | width | direction | meaning |
//! |---|---|---|---|
//! | [`REGISTER_LO`] `0x510` | 32 | out | low half of the descriptor's guest-physical address (latched per vCPU) |
//! | [`REGISTER_HI`] `0x514` | 32 | out | high half; the write *commits* the registration of `hi << 32 \| lo` |
//! | [`REGISTER_HI`] `0x514` | 32 | in  | the registration status: [`RegistrationStatus`] |
//! | [`PANIC`] `0x518` | 32 | out | the guest panicked; the value is a reason code ([`panic_reason`]). The vCPU does not resume |
//! | [`MAINTENANCE_COMPLETE`] `0x51c` | 32 | out | a maintenance image finished its work; the value is 0 for success or an error count |
//! | [`CONSOLE`] `0x3f8` | 8 | out | one byte of console output (COM1 transmit register) |
//! | [`CONSOLE_LSR`] `0x3fd` | 8 | in  | COM1 line status: always "transmitter empty" |
//! | [`I8042_COMMAND`] `0x64` | 8 | out | value [`I8042_RESET`] (`0xfe`) requests a system reset |
//!
//! The registration is complete when the `REGISTER_HI` write returns: the host has copied
//! and validated the descriptor by then, and an `in` from `REGISTER_HI` tells the guest
//! whether it was accepted.

/// Low 32 bits of the descriptor's guest-physical address. Latched per vCPU.
pub const REGISTER_LO: u16 = 0x510;
/// High 32 bits of the descriptor's guest-physical address; writing it registers.
/// Reading it returns the last [`RegistrationStatus`] as a `u32`.
pub const REGISTER_HI: u16 = 0x514;
/// Panic doorbell: a 32-bit reason code.
pub const PANIC: u16 = 0x518;
/// Maintenance-complete doorbell: a 32-bit status (0 = structures checked and healthy).
pub const MAINTENANCE_COMPLETE: u16 = 0x51c;
/// Console output: COM1's transmit holding register.
pub const CONSOLE: u16 = 0x3f8;
/// COM1's line status register.
pub const CONSOLE_LSR: u16 = 0x3fd;
/// Value of the line status register: transmitter holding register and transmitter empty.
pub const CONSOLE_LSR_IDLE: u8 = 0x60;
/// The i8042 keyboard controller's command port.
pub const I8042_COMMAND: u16 = 0x64;
/// The i8042 command that pulses the CPU reset line.
pub const I8042_RESET: u8 = 0xfe;

/// Result of the last registration, as read back from [`REGISTER_HI`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RegistrationStatus {
    /// No registration was attempted yet.
    None = 0,
    /// The descriptor was accepted; the host holds its copy.
    Accepted = 1,
    /// The descriptor was refused; the host logged why.
    Refused = 2,
}

impl RegistrationStatus {
    /// Decodes the value read from the port.
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => RegistrationStatus::Accepted,
            2 => RegistrationStatus::Refused,
            _ => RegistrationStatus::None,
        }
    }
}

/// Reason codes for the [`PANIC`] doorbell.
///
/// Values below `0x100` name a kernel-detected condition; `EXCEPTION_BASE + vector` is an
/// unhandled CPU exception.
pub mod panic_reason {
    /// Explicit panic with no more specific reason.
    pub const GENERIC: u32 = 1;
    /// A doubly linked list failed its integrity check (list debugging).
    pub const LIST_CORRUPTION: u32 = 2;
    /// A task's end-of-stack magic was overwritten.
    pub const STACK_CORRUPTED: u32 = 3;
    /// An object's magic field did not hold its magic value.
    pub const BAD_MAGIC: u32 = 4;
    /// The checksum of read-only kernel memory changed.
    pub const TEXT_CHECKSUM: u32 = 5;
    /// The slab allocator found its free list corrupt.
    pub const SLAB_CORRUPTION: u32 = 6;
    /// A Rust panic inside the guest kernel.
    pub const RUST_PANIC: u32 = 7;
    /// Base of CPU exception reasons: `EXCEPTION_BASE + vector`.
    pub const EXCEPTION_BASE: u32 = 0x100;

    /// A short name for a reason code.
    pub fn name(code: u32) -> &'static str {
        match code {
            GENERIC => "panic",
            LIST_CORRUPTION => "list corruption",
            STACK_CORRUPTED => "stack end corrupted",
            BAD_MAGIC => "bad magic",
            TEXT_CHECKSUM => "read-only memory checksum mismatch",
            SLAB_CORRUPTION => "slab corruption",
            RUST_PANIC => "kernel panic",
            c if (EXCEPTION_BASE..EXCEPTION_BASE + 32).contains(&c) => match c - EXCEPTION_BASE {
                0 => "divide error",
                6 => "invalid opcode",
                8 => "double fault",
                13 => "general protection fault",
                14 => "page fault",
                _ => "cpu exception",
            },
            _ => "unknown",
        }
    }
}
