//! The kernel's own BTF in guest memory.
//!
//! A kernel built with `CONFIG_DEBUG_INFO_BTF` loads its `.BTF` section with the rest of
//! the image, between the symbols `__start_BTF` and `__stop_BTF`; with kallsyms (or
//! VMCOREINFO) naming those, the types of every kernel structure are at hand without a
//! `-dbg` package. The format is parsed by [`ambulance_introspect::types::btf`].

use ambulance_introspect::program::Program;
use ambulance_introspect::types::btf::BtfTypes;

use crate::Result;

/// Reads the kernel's BTF from `__start_BTF` .. `__stop_BTF`, as the program's symbols
/// locate them.
pub fn kernel_btf(program: &Program) -> Result<BtfTypes> {
    let start = program.symbol("__start_BTF")?;
    let stop = program.symbol("__stop_BTF")?;
    Ok(BtfTypes::from_guest(program, start, stop)?)
}
