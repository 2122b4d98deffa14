//! The x86-64 ELF64 core format of whole machines, in one place: what QEMU's
//! `dump-guest-memory` and kdump's `/proc/vmcore` write, and what Ambulance writes for
//! crash, gdb and drgn.
//!
//! A core is an `ET_CORE` file for `EM_X86_64` with `PT_NOTE` segments (an
//! `NT_PRSTATUS` per CPU, the `VMCOREINFO` note, and Ambulance's own notes such as the
//! registration descriptor) and `PT_LOAD` segments whose `p_paddr` is the guest-physical
//! address; where `p_filesz < p_memsz` the rest of a segment reads as zeros.
//!
//! * [`note`]: note encoding and decoding, the note names and every note type number,
//!   Ambulance's own ([`NOTE_NAME`], `NT_AMBULANCE_*`) included.
//! * [`prstatus`]: the `elf_prstatus` layout and its registers, [`UserRegs`] (one struct
//!   for reader and writer).
//! * [`qemu`]: QEMU's per-CPU `QEMU` note (control and segment registers).
//! * [`CoreLayout`]: the reader. Hand-written and bounded: every offset, size and count
//!   is checked against the file before use, and anything malformed is
//!   [`CoreError::Malformed`] naming what is wrong. It works on bytes the caller holds
//!   (a mapping, a buffer) and records where the segments and notes are. A core whose
//!   file was cut short is read as far as it goes, with the rest
//!   [`missing`](CoreLayout::missing) and [`warnings`](CoreLayout::warnings) saying so.
//! * [`write_core`] / [`write_core_into`] / [`write_core_to`]: the writer, sparse: all-zero pages are left out.
//!
//! Nothing here knows about guests, reports or diagnoses: what goes into a core is the
//! caller's business.

#![forbid(unsafe_code)]

pub mod elf;
mod error;
pub mod note;
pub mod prstatus;
pub mod qemu;
mod reader;
mod writer;

pub use error::CoreError;
pub use note::{
    CoreNote, ElfNote, CORE_NOTE_NAME, NOTE_NAME, NT_AMBULANCE_DESCRIPTOR,
    NT_AMBULANCE_DESCRIPTOR_GPA, NT_AMBULANCE_FAILURE, NT_AMBULANCE_GUEST, NT_PRSTATUS,
    NT_VMCOREINFO, VMCOREINFO_NOTE_NAME,
};
pub use prstatus::{PrStatus, UserRegs, PRSTATUS_SIZE, PR_PID_OFFSET, PR_REG_OFFSET, USER_REGS};
pub use qemu::{QemuCpuState, QemuSegment, NT_QEMU_CPU_STATE, QEMU_NOTE_NAME};
pub use reader::{CoreLayout, LoadSegment, MissingRange};
pub use writer::{
    write_core, write_core_into, write_core_to, CoreInput, CoreStats, RamRange, VirtualWindow,
    MIN_HOLE_PAGES, PAGE,
};
