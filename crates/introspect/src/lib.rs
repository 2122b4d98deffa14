//! Reading a guest kernel from its physical memory.
//!
//! The pipeline, one module each:
//!
//! * [`memory`]: where guest-physical bytes come from — a live read-only mapping of a
//!   frozen guest's RAM, an ELF core file (QEMU `dump-guest-memory`, kdump, ours), or a
//!   raw image. All implement [`memory::PhysicalMemory`].
//! * [`translate`]: x86-64 virtual → physical translation through the guest's page
//!   tables (4- and 5-level, 2 MiB and 1 GiB pages), bounded and cached.
//! * [`symbols`], [`types`], [`vmcoreinfo`], [`debuginfo`]: names for addresses and
//!   layouts for bytes — ELF symbols (goblin), DWARF types (gimli, indexed lazily), and
//!   Linux's VMCOREINFO text when there is no debug info.
//! * [`program`] and [`object`]: a [`program::Program`] ties memory, translation, symbols
//!   and types together; an [`object::Object`] is a typed value at a guest address, in
//!   the spirit of drgn.
//! * [`walk`]: bounded walkers over lists, arrays, rings and trees — node limits, Brent
//!   cycle detection and a time budget — that report how they ended.
//! * [`synthetic`]: synthetic guests (RAM with real page tables) for tests and fuzzers.
//!
//! Nothing here knows about KVM or about any one kernel (Linux's own structures are read
//! by the `ambulance-linux` crate on top of this one): the same code reads a live guest, a
//! core file, and fuzzer input. Guest memory is hostile input: every read is
//! bounds-checked, every walk bounded.

pub mod debuginfo;
pub mod error;
pub mod memory;
pub mod object;
pub mod program;
pub mod symbols;
pub mod synthetic;
pub mod translate;
pub mod types;
pub mod vmcoreinfo;
pub mod walk;

pub use error::{Error, Result};
