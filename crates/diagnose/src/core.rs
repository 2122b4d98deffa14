//! The ELF core Ambulance writes of a guest: which RAM, registers and notes go into it.

use std::path::Path;

use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::memory::{LiveMemory, PhysicalMemory};
use ambulance_report::core::{write_core, CoreInput, Note, RamRange, VirtualWindow, NOTE_NAME};
use ambulance_report::Report;

use crate::{NT_AMBULANCE_FAILURE, NT_AMBULANCE_GUEST};

/// Writes (and fsyncs) an ELF core of `memory` for `report` at `path`: one `PT_LOAD` per
/// RAM range, `NT_PRSTATUS` per vCPU, VMCOREINFO (the descriptor's, else `vmcoreinfo` —
/// a Linux guest's note text) and the descriptor from the host's copy, the failure and
/// guest as Ambulance notes, and the kernel image's segments as virtual windows when its
/// debug info is known.
pub fn write_core_file(
    path: &Path,
    memory: &LiveMemory,
    report: &Report,
    debuginfo: Option<&DebugInfo>,
    descriptor: Option<(u64, Vec<u8>)>,
    vmcoreinfo: Option<String>,
) -> Result<(), String> {
    let ram: Vec<RamRange<'_>> = memory
        .ranges()
        .iter()
        .filter_map(|r| {
            memory
                .slice(r.start, r.size as usize)
                .map(|bytes| RamRange {
                    gpa: r.start,
                    bytes,
                })
        })
        .collect();
    let windows = debuginfo
        .map(|d| kernel_windows(d.elf_bytes()))
        .unwrap_or_default();
    let vmcoreinfo = descriptor
        .as_ref()
        .and_then(|(_, bytes)| ambulance_abi::descriptor::parse(bytes).ok())
        .and_then(|d| d.vmcoreinfo)
        .or(vmcoreinfo);
    let direct_map_base = vmcoreinfo
        .as_deref()
        .and_then(|v| ambulance_introspect::vmcoreinfo::Vmcoreinfo::parse(v).ok())
        .and_then(|v| v.symbol("direct_map_base"));
    let json =
        |v: serde_json::Result<Vec<u8>>| v.map_err(|e| format!("cannot encode a core note: {e}"));
    let input = CoreInput {
        ram,
        vcpus: report.vcpus.clone(),
        vmcoreinfo,
        descriptor,
        extra_notes: vec![
            Note {
                name: NOTE_NAME.into(),
                n_type: NT_AMBULANCE_FAILURE,
                desc: json(serde_json::to_vec(&report.failure))?,
            },
            Note {
                name: NOTE_NAME.into(),
                n_type: NT_AMBULANCE_GUEST,
                desc: json(serde_json::to_vec(&report.guest))?,
            },
        ],
        direct_map_base,
        windows,
    };
    write_core(path, &input).map_err(|e| e.to_string())?;
    Ok(())
}

/// The kernel image's `PT_LOAD` segments as virtual windows (for gdb).
pub fn kernel_windows(elf: &[u8]) -> Vec<VirtualWindow> {
    use goblin::elf::{program_header::PT_LOAD, Elf};
    Elf::parse(elf)
        .map(|e| {
            e.program_headers
                .iter()
                .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
                .map(|p| VirtualWindow {
                    vaddr: p.p_vaddr,
                    paddr: p.p_paddr,
                    size: p.p_memsz,
                })
                .collect()
        })
        .unwrap_or_default()
}
