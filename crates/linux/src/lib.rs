//! What the host knows of Linux: reading an unmodified Linux guest that registered nothing
//! but, at most, where its VMCOREINFO note is.
//!
//! Built on [`ambulance_introspect`] (memory, translation, symbols, types, [`Object`]s,
//! walkers), which knows nothing of Linux:
//!
//! * VMCOREINFO, interpreted ([`vmcoreinfo`], re-exported here): finding the kernel's note
//!   in guest RAM, at a registered address or by scanning; the page-table root from
//!   `swapper_pg_dir` and `phys_base`, the paging levels, the KASLR slide; a [`Program`]
//!   from VMCOREINFO alone;
//! * [`sources`]: the program's symbols and types, best source first — the `-dbg`
//!   vmlinux's DWARF, else [`kallsyms`] and [`btf`] read out of guest memory;
//! * [`printk`]: the kernel's log from the printk ring buffer, and the panic message;
//! * [`tasks`]: the task list, and the root a registration would have declared for it;
//! * [`panic_cpu`]: which CPU panicked.
//!
//! Results are this crate's own types; turning them into a report is the caller's
//! business. Guest memory is hostile input: every table and ring is read with bounded
//! reads and checked before it is trusted, and what cannot be read is an [`Error`] that
//! names the table, field or address.
//!
//! [`Object`]: ambulance_introspect::object::Object
//! [`Program`]: ambulance_introspect::program::Program

#![forbid(unsafe_code)]

pub mod btf;
pub mod error;
pub mod kallsyms;
pub mod printk;
pub mod sources;
pub mod tasks;
pub mod vmcoreinfo;

pub use error::{Error, Result};
pub use vmcoreinfo::{
    kaslr_offset, page_table_root, paging, program, scan_vmcoreinfo, vmcoreinfo_note_at,
    START_KERNEL_MAP, VMCOREINFO_NOTE_MAX,
};

use ambulance_introspect::program::Program;

/// Linux's largest `NR_CPUS` on x86-64; a `panic_cpu` beyond it is garbage.
pub const MAX_CPUS: u32 = 8192;

/// The CPU that panicked: `atomic_t panic_cpu`, which is `PANIC_CPU_INVALID` (-1) until
/// some CPU panics. `None` when it is unreadable or not a CPU number.
pub fn panic_cpu(program: &Program) -> Option<u32> {
    program
        .symbol("panic_cpu")
        .and_then(|a| program.read_u32(a))
        .ok()
        .filter(|&c| c < MAX_CPUS)
}
