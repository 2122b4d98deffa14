//! The crate's one error type: what could not be read of a Linux guest, naming the table,
//! field or address involved.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading Linux's own structures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory, a symbol or a type could not be read.
    #[error(transparent)]
    Introspect(#[from] ambulance_introspect::Error),
    /// What should be the kernel's VMCOREINFO ELF note is not one.
    #[error("VMCOREINFO note at guest-physical {pa:#x}: {reason}")]
    VmcoreinfoNote {
        /// Where the note was looked for.
        pa: u64,
        /// What is wrong.
        reason: String,
    },
    /// VMCOREINFO does not say where the kernel's page tables are.
    #[error("VMCOREINFO has no {missing}: the kernel's page tables cannot be found")]
    NoPageTables {
        /// The entry that is missing, e.g. `SYMBOL(swapper_pg_dir)`.
        missing: &'static str,
    },
    /// The kernel's kallsyms tables in guest memory cannot be decoded.
    #[error("kallsyms in guest memory: {reason}")]
    Kallsyms {
        /// What is wrong (names the table and address).
        reason: String,
    },
    /// The printk ring buffer in guest memory cannot be read.
    #[error("printk ring buffer: {reason}")]
    Printk {
        /// What is wrong (names the field and address).
        reason: String,
    },
    /// The types at hand do not describe `task_struct` well enough to read tasks.
    #[error("layout of task_struct unknown: {source}")]
    TaskLayout {
        /// Why (no such type, a missing member).
        #[source]
        source: ambulance_introspect::Error,
    },
    /// A per-CPU variable cannot be located.
    #[error("per-CPU data: {reason}")]
    PerCpu {
        /// What is wrong.
        reason: String,
    },
    /// The kernel's ORC unwind tables cannot be used.
    #[error("ORC unwind tables: {reason}")]
    Orc {
        /// What is wrong.
        reason: String,
    },
    /// The kernel's module list cannot be read.
    #[error("modules: {reason}")]
    Modules {
        /// What is wrong.
        reason: String,
    },
}
