//! The Ambulance boot protocol (`ambulance_abi::boot`): kernel loading, boot structures in
//! guest RAM, and the initial vCPU state.

use std::io::Cursor;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ambulance_abi::boot::{
    BootInfo, BOOT_INFO_GPA, BOOT_MAGIC, BOOT_MAP_SIZE, BOOT_PDPT_HIGH_GPA, BOOT_PDPT_LOW_GPA,
    BOOT_PD_GPA, BOOT_PML4_GPA, CMDLINE_GPA, GDT_GPA, KERNEL_MIN_LOAD_GPA, KERNEL_VIRT_BASE,
    MAX_REGIONS,
};
use ambulance_abi::ABI_VERSION;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::GuestAddress;

use crate::memory::Ram;

// Control register and EFER bits.
const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// `CR0` at entry.
pub(crate) const BOOT_CR0: u64 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
/// `CR4` at entry.
pub(crate) const BOOT_CR4: u64 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
/// `EFER` at entry.
pub(crate) const BOOT_EFER: u64 = EFER_LME | EFER_LMA | EFER_NXE;

/// Selector of the flat 64-bit code segment.
pub(crate) const CODE_SELECTOR: u16 = 8;
/// Selector of the flat data segment.
pub(crate) const DATA_SELECTOR: u16 = 16;

/// The GDT: null, 64-bit code (selector 8), flat data (selector 16).
const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_LARGE: u64 = 1 << 7;

/// A kernel image checked against the boot protocol.
#[derive(Debug)]
pub(crate) struct KernelImage {
    /// The ELF entry point (virtual), where every vCPU starts.
    pub(crate) entry: u64,
}

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the ELF headers against the boot protocol, so that a bad image gets a precise
/// message (linux-loader checks less and says less). `ram_low` is the size of the RAM
/// region at physical 0.
pub(crate) fn check_kernel(elf: &[u8], ram_low: u64) -> Result<KernelImage, String> {
    if elf.len() < EHDR_SIZE || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a little-endian ELF64 file".into());
    }
    let e_type = u16_at(elf, 16);
    let machine = u16_at(elf, 18);
    if machine != EM_X86_64 {
        return Err(format!("ELF machine is {machine}, not x86-64 (62)"));
    }
    if e_type != ET_EXEC {
        return Err(format!(
            "ELF type is {e_type}, not an executable (2); link the kernel with a fixed address"
        ));
    }
    let entry = u64_at(elf, 24);
    let phoff = u64_at(elf, 32);
    let phentsize = u16_at(elf, 54) as usize;
    let phnum = u16_at(elf, 56) as usize;
    if phentsize != PHDR_SIZE {
        return Err(format!(
            "program header size is {phentsize}, not {PHDR_SIZE}"
        ));
    }
    let ph_end = phoff.checked_add((phnum * PHDR_SIZE) as u64);
    if phoff < EHDR_SIZE as u64 || ph_end.is_none_or(|end| end > elf.len() as u64) {
        return Err("program headers lie outside the file".into());
    }
    let limit = ram_low.min(BOOT_MAP_SIZE);
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = &elf[phoff as usize + i * PHDR_SIZE..][..PHDR_SIZE];
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(format!(
                "segment {i}: file size {filesz:#x} exceeds memory size {memsz:#x}"
            ));
        }
        if offset
            .checked_add(filesz)
            .is_none_or(|e| e > elf.len() as u64)
        {
            return Err(format!("segment {i}: its bytes lie outside the file"));
        }
        let end = paddr.checked_add(memsz);
        if paddr < KERNEL_MIN_LOAD_GPA || end.is_none_or(|e| e > limit) {
            return Err(format!(
                "segment {i} at physical {paddr:#x}..+{memsz:#x} must lie in \
                 {KERNEL_MIN_LOAD_GPA:#x}..{limit:#x} (above 1 MiB, inside RAM and the \
                 first GiB the boot page tables map)"
            ));
        }
        loads.push((paddr, memsz));
    }
    if loads.iter().all(|&(_, memsz)| memsz == 0) {
        return Err("no loadable (PT_LOAD) segment".into());
    }
    let entry_phys = if entry >= KERNEL_VIRT_BASE {
        entry - KERNEL_VIRT_BASE
    } else {
        entry
    };
    if !loads
        .iter()
        .any(|&(p, m)| entry_phys >= p && entry_phys - p < m)
    {
        return Err(format!(
            "entry point {entry:#x} (physical {entry_phys:#x}) is not inside a loaded segment; \
             kernels are linked at KERNEL_VIRT_BASE + physical"
        ));
    }
    Ok(KernelImage { entry })
}

/// Loads the kernel's segments at their physical addresses with linux-loader and returns
/// the entry point.
pub(crate) fn load_kernel(ram: &Ram, elf: &[u8]) -> Result<KernelImage, String> {
    let image = check_kernel(elf, ram.regions[0].size)?;
    let mut cursor = Cursor::new(elf);
    let loaded = Elf::load(
        &ram.mem,
        None,
        &mut cursor,
        Some(GuestAddress(KERNEL_MIN_LOAD_GPA)),
    )
    .map_err(|e| format!("loading ELF segments: {e}"))?;
    // linux-loader reports e_entry unchanged (a virtual address for our kernels).
    if loaded.kernel_load.0 != image.entry {
        return Err(format!(
            "the loader reports entry {:#x}, the ELF header says {:#x}",
            loaded.kernel_load.0, image.entry
        ));
    }
    Ok(image)
}

/// Writes the GDT, the boot page tables, the command line and [`BootInfo`].
pub(crate) fn write_boot_structures(
    ram: &Ram,
    cmdline: &str,
    cpu_count: u32,
    tsc_khz: u64,
) -> Result<(), String> {
    let put = |gpa: u64, bytes: &[u8], what: &str| {
        ram.write(gpa, bytes)
            .ok_or_else(|| format!("cannot write the {what} at {gpa:#x}"))
    };
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    put(GDT_GPA, &gdt, "GDT")?;

    let entry = |v: u64| v.to_le_bytes();
    let mut pml4 = [0u8; 4096];
    pml4[0..8].copy_from_slice(&entry(BOOT_PDPT_LOW_GPA | PTE_PRESENT | PTE_WRITABLE));
    let high_pml4 = ((KERNEL_VIRT_BASE >> 39) & 511) as usize;
    pml4[high_pml4 * 8..][..8]
        .copy_from_slice(&entry(BOOT_PDPT_HIGH_GPA | PTE_PRESENT | PTE_WRITABLE));
    put(BOOT_PML4_GPA, &pml4, "boot PML4")?;

    let mut pdpt_low = [0u8; 4096];
    pdpt_low[0..8].copy_from_slice(&entry(BOOT_PD_GPA | PTE_PRESENT | PTE_WRITABLE));
    put(BOOT_PDPT_LOW_GPA, &pdpt_low, "boot PDPT (identity)")?;

    let mut pdpt_high = [0u8; 4096];
    let high_pdpt = ((KERNEL_VIRT_BASE >> 30) & 511) as usize;
    pdpt_high[high_pdpt * 8..][..8]
        .copy_from_slice(&entry(BOOT_PD_GPA | PTE_PRESENT | PTE_WRITABLE));
    put(BOOT_PDPT_HIGH_GPA, &pdpt_high, "boot PDPT (kernel)")?;

    let mut pd = [0u8; 4096];
    for i in 0..512u64 {
        pd[i as usize * 8..][..8]
            .copy_from_slice(&entry((i << 21) | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE));
    }
    put(BOOT_PD_GPA, &pd, "boot page directory")?;

    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    put(CMDLINE_GPA, &cmd, "command line")?;

    let mut regions = [ambulance_abi::boot::MemRegion::default(); MAX_REGIONS];
    for (slot, r) in regions.iter_mut().zip(&ram.regions) {
        slot.gpa = r.gpa;
        slot.size = r.size;
    }
    let info = BootInfo {
        magic: BOOT_MAGIC,
        version: ABI_VERSION as u32,
        cpu_count,
        tsc_khz,
        ram_size: ram.size(),
        cmdline_gpa: CMDLINE_GPA,
        cmdline_len: cmdline.len() as u32,
        region_count: ram.regions.len() as u32,
        regions,
    };
    put(BOOT_INFO_GPA, &info.to_bytes(), "boot information")?;
    Ok(())
}

/// The supported CPUID with this vCPU's APIC ID filled in.
pub(crate) fn vcpu_cpuid(supported: &CpuId, index: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24),
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
    cpuid
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The special registers at entry, starting from what KVM reports for a fresh vCPU.
pub(crate) fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = segment(CODE_SELECTOR, 0xb, true);
    let data = segment(DATA_SELECTOR, 0x3, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // VM entry in IA-32e mode wants a usable busy 64-bit TSS in TR; the hidden state is
    // all that matters until the kernel loads its own.
    sregs.tr.type_ = 0xb;
    sregs.tr.present = 1;
    sregs.tr.s = 0;
    sregs.tr.unusable = 0;
    sregs.cr0 = BOOT_CR0;
    sregs.cr3 = BOOT_PML4_GPA;
    sregs.cr4 = BOOT_CR4;
    sregs.efer = BOOT_EFER;
    sregs
}

/// The general registers at entry.
pub(crate) fn boot_regs(entry: u64, index: u32) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rdi: BOOT_INFO_GPA,
        rsi: index as u64,
        rsp: 0,
        rflags: 2,
        ..Default::default()
    }
}

/// The FPU state at entry (x87 and SSE defaults).
pub(crate) fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The TSC frequency in kHz: KVM's value for the vCPU, or the host TSC measured once.
pub(crate) fn tsc_khz(vcpu: &VcpuFd) -> u64 {
    match vcpu.get_tsc_khz() {
        Ok(khz) if khz > 0 => khz as u64,
        other => {
            static MEASURED: OnceLock<u64> = OnceLock::new();
            *MEASURED.get_or_init(|| {
                let khz = calibrate_tsc_khz();
                tracing::info!(
                    ?other,
                    khz,
                    "KVM_GET_TSC_KHZ unavailable; using the calibrated host TSC frequency"
                );
                khz
            })
        }
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86-64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn calibrate_tsc_khz() -> u64 {
    let start = Instant::now();
    let t0 = rdtsc();
    std::thread::sleep(Duration::from_millis(20));
    let t1 = rdtsc();
    let ns = start.elapsed().as_nanos().max(1) as u64;
    (t1.wrapping_sub(t0) as u128 * 1_000_000 / ns as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_descriptors_are_flat() {
        // Code: present, DPL 0, code execute/read accessed, L=1, G=1.
        assert_eq!((GDT[1] >> 40) & 0xff, 0x9b);
        assert_eq!((GDT[1] >> 53) & 1, 1);
        // Data: present, read/write accessed, D/B=1, G=1.
        assert_eq!((GDT[2] >> 40) & 0xff, 0x93);
        assert_eq!(BOOT_CR0, 0x8001_0033);
        assert_eq!(BOOT_CR4, 0x620);
        assert_eq!(BOOT_EFER, 0xd00);
    }

    #[test]
    fn kernel_checks_reject_garbage() {
        assert!(check_kernel(b"nope", 1 << 30).is_err());
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1;
        assert!(check_kernel(&elf, 1 << 30).unwrap_err().contains("ELF64"));
    }
}
