//! Where a Linux guest's symbols and types come from, best source first.
//!
//! [`load`] gives a [`Program`] the `-dbg` vmlinux's ELF symbols and DWARF when one was
//! given and belongs to this kernel (its build ID matches VMCOREINFO's, its symbols slid
//! by KASLR); else kallsyms and BTF read out of guest memory. VMCOREINFO's own symbols and
//! layouts always back them up. What could not be used is recorded, not fatal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::program::Program;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::WalkLimits;

use crate::btf::kernel_btf;
use crate::kallsyms::Kallsyms;
use crate::vmcoreinfo::kaslr_offset;

/// A provider of symbols or types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `-dbg` vmlinux: ELF symbols and DWARF.
    Dwarf,
    /// The kernel's kallsyms table in guest memory.
    Kallsyms,
    /// The kernel's BTF in guest memory.
    Btf,
    /// VMCOREINFO's `SYMBOL()`s and `OFFSET()`/`SIZE()` layouts.
    Vmcoreinfo,
}

impl Source {
    /// Its name in reports: `dwarf`, `kallsyms`, `btf`, `vmcoreinfo`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Dwarf => "dwarf",
            Source::Kallsyms => "kallsyms",
            Source::Btf => "btf",
            Source::Vmcoreinfo => "vmcoreinfo",
        }
    }
}

/// What [`load`] gave a program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// Where symbols come from, in lookup order.
    pub symbols: Vec<Source>,
    /// Where types come from, in lookup order.
    pub types: Vec<Source>,
    /// What could not be used, and why.
    pub missing: Vec<String>,
    /// How long each step took: `debuginfo`, `kallsyms`, `btf`.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Gives `program` the kernel's symbols and types (see the module documentation); says
/// where they came from and what was missing. `limits` bound the kallsyms decoding.
pub fn load(
    mut program: Program,
    vmcoreinfo: &Vmcoreinfo,
    debuginfo: Option<&DebugInfo>,
    limits: WalkLimits,
) -> (Program, Sources) {
    let mut sources = Sources::default();
    let mut have_types = false;
    let mut have_symbols = false;
    let t = Instant::now();
    if let Some(d) = debuginfo {
        match usable_debuginfo(d, vmcoreinfo) {
            Err(why) => sources.missing.push(why),
            Ok(slide) => {
                match d.symbols_at(slide) {
                    Ok(s) => {
                        program = program.with_symbols(s);
                        sources.symbols.push(Source::Dwarf);
                        have_symbols = true;
                    }
                    Err(e) => sources.missing.push(format!("debug-info symbols: {e}")),
                }
                match d.types() {
                    Ok(t) => {
                        program = program.with_types(t);
                        sources.types.push(Source::Dwarf);
                        have_types = true;
                    }
                    Err(e) => sources.missing.push(format!("DWARF: {e}")),
                }
            }
        }
    }
    if have_symbols {
        sources.phases.push(("debuginfo", t.elapsed()));
    }
    if !have_symbols {
        let t = Instant::now();
        match Kallsyms::read(&program, vmcoreinfo, limits) {
            Ok(k) => {
                program = program.with_symbols(k.into_symbols());
                sources.symbols.push(Source::Kallsyms);
            }
            Err(e) => sources.missing.push(e.to_string()),
        }
        sources.phases.push(("kallsyms", t.elapsed()));
    }
    if !have_types {
        let t = Instant::now();
        match kernel_btf(&program) {
            Ok(btf) => {
                program = program.with_types(Arc::new(btf));
                sources.types.push(Source::Btf);
            }
            Err(e) => sources.missing.push(format!("BTF: {e}")),
        }
        sources.phases.push(("btf", t.elapsed()));
    }
    sources.symbols.push(Source::Vmcoreinfo);
    sources.types.push(Source::Vmcoreinfo);
    (program, sources)
}

/// The KASLR slide to apply to the debug info's addresses, when it belongs to this
/// kernel; else why it cannot be used.
pub fn usable_debuginfo(d: &DebugInfo, vmcoreinfo: &Vmcoreinfo) -> Result<i64, String> {
    // Only when both say which build they are; a file without the note is taken on trust.
    if let (Some(guest), Some(_)) = (vmcoreinfo.build_id(), d.build_id()) {
        d.check_build_id(guest)
            .map_err(|e| format!("{e}; it was not used"))?;
    }
    Ok(kaslr_offset(vmcoreinfo) as i64)
}
