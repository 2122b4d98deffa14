//! The built-in validators, one module each.

mod checksum;
mod cpu;
mod descriptor;
mod freelist;
mod heartbeat;
mod kernel;
mod lists;
mod locks;
mod magic;
mod pointers;
mod stacks;

use ambulance_abi::descriptor::{root_flags, Hint, Root, RootKind};

use crate::Validator;

pub use checksum::Checksums;
pub use cpu::CpuState;
pub use descriptor::DescriptorIntegrity;
pub use freelist::FreeLists;
pub use heartbeat::Heartbeat;
pub use kernel::KernelStructures;
pub use lists::ListIntegrity;
pub use locks::Locks;
pub use magic::Magic;
pub use pointers::PointerRanges;
pub use stacks::StackEnd;

/// Every built-in validator, in the order they run.
pub fn all() -> Vec<Box<dyn Validator>> {
    vec![
        Box::new(DescriptorIntegrity),
        Box::new(ListIntegrity),
        Box::new(FreeLists),
        Box::new(Magic),
        Box::new(PointerRanges),
        Box::new(StackEnd),
        Box::new(Checksums),
        Box::new(Locks),
        Box::new(CpuState),
        Box::new(Heartbeat),
        Box::new(KernelStructures::runqueues()),
        Box::new(KernelStructures::modules()),
        Box::new(KernelStructures::slub()),
        Box::new(KernelStructures::vmap()),
    ]
}

/// An allocator free list: a singly linked list whose link field carries a pointer-range
/// hint (the slab it must stay in). These belong to [`FreeLists`].
pub(crate) fn is_free_list(root: &Root) -> bool {
    root.kind == RootKind::List
        && root.has_flag(root_flags::SINGLY_LINKED)
        && root
            .hints
            .iter()
            .any(|h| matches!(h, Hint::PointerRange { offset, .. } if *offset == root.link_offset))
}

/// `0x…`.
pub(crate) fn hex(v: u64) -> String {
    format!("{v:#x}")
}
