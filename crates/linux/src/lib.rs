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
//! * [`printk`]: the kernel's log from the printk ring buffer;
//! * [`crash`]: why the kernel died, from that log (panic, oops, lockups, stalls);
//! * [`tasks`]: the task list, and the root a registration would have declared for it;
//! * [`modules`]: the module list; [`runqueue`], [`slub`], [`vmap`]: checks of the CFS
//!   run queues, the SLUB freelists and the vmap areas ([`structures`]);
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
pub mod crash;
pub mod error;
pub mod kallsyms;
pub mod modules;
pub mod orc;
pub mod printk;
pub mod runqueue;
pub mod slub;
pub mod sources;
pub mod stack;
pub mod structures;
pub mod tasks;
pub mod vmap;
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

/// Whether `addr` is in the kernel's half of the address space: at or above
/// `0xff00_0000_0000_0000`, the lowest kernel address with 5-level paging (4-level
/// paging's is higher still).
pub fn is_kernel_address(addr: u64) -> bool {
    addr >= 0xff00_0000_0000_0000
}

/// The per-CPU area of `cpu`: `__per_cpu_offset[cpu]`. Checked to be a kernel address
/// (the direct map or vmalloc space, with 4- or 5-level paging), never 0.
pub fn per_cpu_offset(program: &Program, cpu: u32) -> Result<u64> {
    if cpu >= MAX_CPUS {
        return Err(Error::PerCpu {
            reason: format!("CPU {cpu} is beyond NR_CPUS ({MAX_CPUS})"),
        });
    }
    let table = program.symbol("__per_cpu_offset")?;
    let at = table
        .checked_add(u64::from(cpu) * 8)
        .ok_or_else(|| Error::PerCpu {
            reason: format!("__per_cpu_offset at {table:#x} overflows"),
        })?;
    let offset = program.read_u64(at)?;
    if !is_kernel_address(offset) {
        return Err(Error::PerCpu {
            reason: format!("__per_cpu_offset[{cpu}] is {offset:#x}, not a kernel address"),
        });
    }
    Ok(offset)
}

/// The address of per-CPU variable `name` on `cpu`. A per-CPU symbol is an offset into
/// the per-CPU section: its distance from `__per_cpu_start` when both are in the same
/// terms (an ELF symbol table, where the loader's offset moved both), else the symbol
/// itself when it is below the kernel image (kallsyms' absolute per-CPU symbols).
pub fn per_cpu_address(program: &Program, name: &str, cpu: u32) -> Result<u64> {
    let sym = program.symbol(name)?;
    let section = program
        .symbol("__per_cpu_start")
        .and_then(|s| Ok(s..program.symbol("__per_cpu_end")?));
    let offset = match section {
        Ok(r) if r.contains(&sym) => sym - r.start,
        _ if sym < START_KERNEL_MAP => sym,
        _ => {
            return Err(Error::PerCpu {
                reason: format!("{name} at {sym:#x} is not in the per-CPU section"),
            })
        }
    };
    per_cpu_offset(program, cpu)?
        .checked_add(offset)
        .ok_or_else(|| Error::PerCpu {
            reason: format!("{name} on CPU {cpu} overflows"),
        })
}

/// The task running on `cpu` (its `task_struct` address): the per-CPU `current_task`
/// (Linux < 6.2 and ≥ 6.15), else `pcpu_hot.current_task`.
pub fn current_task(program: &Program, cpu: u32) -> Result<u64> {
    let slot = match per_cpu_address(program, "current_task", cpu) {
        Ok(a) => a,
        Err(first) => {
            let hot = per_cpu_address(program, "pcpu_hot", cpu).map_err(|_| first)?;
            let member = program.offset_of("pcpu_hot", "current_task")?;
            hot.checked_add(member).ok_or_else(|| Error::PerCpu {
                reason: format!("pcpu_hot on CPU {cpu} overflows"),
            })?
        }
    };
    let task = program.read_u64(slot)?;
    if !is_kernel_address(task) {
        return Err(Error::PerCpu {
            reason: format!("current task of CPU {cpu} is {task:#x}, not a kernel address"),
        });
    }
    Ok(task)
}

/// How many CPUs the kernel has possible: `nr_cpu_ids`, bounded by [`MAX_CPUS`].
pub fn nr_cpu_ids(program: &Program) -> Option<u32> {
    program
        .symbol("nr_cpu_ids")
        .and_then(|a| program.read_u32(a))
        .ok()
        .filter(|&n| n > 0 && n <= MAX_CPUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_with_four_and_five_level_paging() {
        // 4-level: direct map, vmalloc, the image; 5-level: its direct map and vmalloc.
        for a in [
            0xffff_8880_0000_0000u64,
            0xffff_c900_0000_0000,
            0xffff_ffff_8100_0000,
            0xff11_0000_0000_0000,
            0xff27_8f32_4224_4200,
            0xffa0_0000_0000_0000,
        ] {
            assert!(is_kernel_address(a), "{a:#x}");
        }
        for a in [
            0,
            0x7fff_ffff_f000,
            0x0000_8000_0000_0000,
            0xfe00_0000_0000_0000,
        ] {
            assert!(!is_kernel_address(a), "{a:#x}");
        }
    }
}
