//! The boot protocol: how the VMM starts a guest kernel.
//!
//! The VMM loads the kernel's ELF `PT_LOAD` segments at their physical addresses
//! (`p_paddr`) and starts **every** vCPU at the ELF entry point, already in 64-bit long
//! mode with paging:
//!
//! * `RDI` = guest-physical address of [`BootInfo`] ([`BOOT_INFO_GPA`]), `RSI` = the vCPU
//!   index (0 is the boot CPU), `RFLAGS` = 2 (interrupts off), `RSP` = 0: the kernel picks
//!   its own stack per CPU.
//! * `CR0` = PE|MP|ET|NE|WP|PG (no EM: SSE is usable), `CR4` = PAE|OSFXSR|OSXMMEXCPT,
//!   `EFER` = LME|LMA|NXE, `CS` = a flat 64-bit code segment (selector 8), data segments
//!   flat (selector 16), GDT at [`GDT_GPA`].
//! * `CR3` = [`BOOT_PML4_GPA`]: boot page tables that map the first GiB of RAM twice,
//!   identity and at [`KERNEL_VIRT_BASE`] (2 MiB pages, writable, executable). A kernel is
//!   expected to build its own tables and switch to them early.
//!
//! Guest RAM is zero-filled when the kernel starts, except for what the VMM placed
//! there (the kernel's segments, the GDT, the boot page tables, [`BootInfo`] and the
//! command line). Guest RAM starts at physical 0. Up to [`LOW_RAM_MAX`] it is contiguous; the rest sits
//! above the 32-bit MMIO hole at [`HIGH_RAM_START`]. [`BootInfo::regions`] lists the
//! ranges.

/// Guest-physical address of the GDT the VMM installs.
pub const GDT_GPA: u64 = 0x500;
/// Guest-physical address of [`BootInfo`].
pub const BOOT_INFO_GPA: u64 = 0x7000;
/// Guest-physical address of the kernel command line (NUL-terminated, also sized in
/// [`BootInfo::cmdline_len`]).
pub const CMDLINE_GPA: u64 = 0x8000;
/// Largest command line, including its NUL.
pub const CMDLINE_MAX: usize = 4096;
/// Guest-physical address of the boot PML4.
pub const BOOT_PML4_GPA: u64 = 0x9000;
/// Guest-physical address of the boot PDPT for the identity map.
pub const BOOT_PDPT_LOW_GPA: u64 = 0xa000;
/// Guest-physical address of the boot PDPT for the kernel map.
pub const BOOT_PDPT_HIGH_GPA: u64 = 0xb000;
/// Guest-physical address of the boot page directory (first GiB, 2 MiB pages).
pub const BOOT_PD_GPA: u64 = 0xc000;
/// Lowest physical address a kernel image may be loaded at.
pub const KERNEL_MIN_LOAD_GPA: u64 = 0x10_0000;
/// Size of the boot mappings (identity and kernel map).
pub const BOOT_MAP_SIZE: u64 = 1 << 30;

/// Where the kernel image is mapped: virtual = `KERNEL_VIRT_BASE + physical`
/// (Linux's `__START_KERNEL_map`).
pub const KERNEL_VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
/// Where a kernel conventionally maps all of RAM: virtual = `DIRECT_MAP_BASE + physical`
/// (Linux's `page_offset_base` without KASLR).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;
/// Start of the area a kernel conventionally uses for page-by-page mappings such as task
/// stacks (Linux's `vmalloc_base` without KASLR).
pub const VMALLOC_BASE: u64 = 0xffff_c900_0000_0000;

/// Largest contiguous low RAM range; RAM beyond it goes above the MMIO hole.
pub const LOW_RAM_MAX: u64 = 3 << 30;
/// Where RAM resumes above the 32-bit MMIO hole.
pub const HIGH_RAM_START: u64 = 4 << 30;

/// `BootInfo::magic`.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"AMBUBOOT");
/// Most RAM regions [`BootInfo`] can describe.
pub const MAX_REGIONS: usize = 4;
/// Most vCPUs a guest may have under this protocol.
pub const MAX_VCPUS: u32 = 16;

/// One range of guest RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MemRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
}

/// What the VMM tells the kernel at boot; at [`BOOT_INFO_GPA`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`crate::ABI_VERSION`].
    pub version: u32,
    /// Number of vCPUs started at the entry point.
    pub cpu_count: u32,
    /// TSC frequency in kHz, as KVM reports it for the guest.
    pub tsc_khz: u64,
    /// Total RAM in bytes (sum of the regions).
    pub ram_size: u64,
    /// Guest-physical address of the command line.
    pub cmdline_gpa: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: u32,
    /// Number of valid entries in `regions`.
    pub region_count: u32,
    /// RAM ranges, ascending.
    pub regions: [MemRegion; MAX_REGIONS],
}

impl BootInfo {
    /// Size in bytes, as written to guest memory.
    pub const SIZE: usize = core::mem::size_of::<BootInfo>();

    /// Serializes to the little-endian layout the guest reads.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&self.magic.to_le_bytes());
        put(&self.version.to_le_bytes());
        put(&self.cpu_count.to_le_bytes());
        put(&self.tsc_khz.to_le_bytes());
        put(&self.ram_size.to_le_bytes());
        put(&self.cmdline_gpa.to_le_bytes());
        put(&self.cmdline_len.to_le_bytes());
        put(&self.region_count.to_le_bytes());
        for r in &self.regions {
            put(&r.gpa.to_le_bytes());
            put(&r.size.to_le_bytes());
        }
        out
    }
}

/// The RAM layout for `ram_size` bytes of guest memory: one low range, and one above the
/// MMIO hole when the guest has more than [`LOW_RAM_MAX`].
pub fn ram_layout(ram_size: u64) -> ([MemRegion; MAX_REGIONS], u32) {
    let mut regions = [MemRegion::default(); MAX_REGIONS];
    let low = ram_size.min(LOW_RAM_MAX);
    regions[0] = MemRegion { gpa: 0, size: low };
    if ram_size > LOW_RAM_MAX {
        regions[1] = MemRegion {
            gpa: HIGH_RAM_START,
            size: ram_size - LOW_RAM_MAX,
        };
        (regions, 2)
    } else {
        (regions, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_around_the_mmio_hole() {
        let (r, n) = ram_layout(1 << 30);
        assert_eq!(n, 1);
        assert_eq!(
            r[0],
            MemRegion {
                gpa: 0,
                size: 1 << 30
            }
        );
        let (r, n) = ram_layout(4 << 30);
        assert_eq!(n, 2);
        assert_eq!(r[0].size + r[1].size, 4 << 30);
        assert_eq!(r[1].gpa, HIGH_RAM_START);
    }

    #[test]
    fn boot_info_bytes_match_repr_c() {
        let bi = BootInfo {
            magic: BOOT_MAGIC,
            version: 1,
            cpu_count: 2,
            tsc_khz: 3_000_000,
            ram_size: 1 << 28,
            cmdline_gpa: CMDLINE_GPA,
            cmdline_len: 5,
            region_count: 1,
            regions: ram_layout(1 << 28).0,
        };
        let b = bi.to_bytes();
        assert_eq!(&b[0..8], b"AMBUBOOT");
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(b[56..64].try_into().unwrap()), 1 << 28);
    }
}
