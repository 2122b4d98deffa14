//! Memory: the C memory primitives, a physical page allocator and the page tables.
//!
//! The boot CPU builds the kernel's page tables once, while still on the VMM's boot
//! tables (which identity-map the first GiB): the kernel image with 4 KiB pages and
//! proper permissions, all RAM in the direct map at `DIRECT_MAP_BASE` (2 MiB pages where
//! possible), and task stacks in the vmalloc area with unmapped guard pages between them.
//! Nothing else is mapped: low addresses fault, like in Linux.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ambulance_guest_agent::abi::boot::{MemRegion, DIRECT_MAP_BASE, KERNEL_VIRT_BASE};

// ---- C memory primitives (compiler-generated code calls these) ----

#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and do not overlap.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dst is below src or past its end.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: copy backwards with the direction flag set, restored afterwards.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dst.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack),
            );
        }
        dst
    }
}

#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") value as u8, options(nostack, preserves_flags));
    }
    dst
}

#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

// ---- physical memory ----

static DIRECT_MAP_READY: AtomicBool = AtomicBool::new(false);
static NEXT_FREE: AtomicU64 = AtomicU64::new(0);
static FREE_END: AtomicU64 = AtomicU64::new(0);

pub const PAGE: u64 = 4096;

/// A pointer through which physical address `pa` can be accessed right now: the boot
/// identity map before the switch, the direct map after.
pub fn phys_ptr<T>(pa: u64) -> *mut T {
    if DIRECT_MAP_READY.load(Ordering::Acquire) {
        (DIRECT_MAP_BASE + pa) as *mut T
    } else {
        pa as *mut T
    }
}

/// Direct-map virtual address of physical `pa`.
pub fn phys_to_virt(pa: u64) -> u64 {
    DIRECT_MAP_BASE + pa
}

/// Physical address of a kernel-image virtual address.
pub fn image_to_phys(va: u64) -> u64 {
    va - KERNEL_VIRT_BASE
}

/// Sets up the page allocator over `[start, end)` (boot CPU, before any allocation).
pub fn init_allocator(start: u64, end: u64) {
    NEXT_FREE.store(start.next_multiple_of(PAGE), Ordering::Relaxed);
    FREE_END.store(end, Ordering::Relaxed);
}

/// Allocates `n` contiguous physical pages. They are zero: the boot protocol hands over
/// zeroed RAM and pages are never freed. Used by the boot CPU during initialization
/// only. Running out of memory at boot is fatal.
pub fn alloc_pages(n: u64) -> u64 {
    let pa = NEXT_FREE.fetch_add(n * PAGE, Ordering::Relaxed);
    if pa + n * PAGE > FREE_END.load(Ordering::Relaxed) {
        crate::panic::kernel_panic(
            ambulance_guest_agent::abi::ports::panic_reason::GENERIC,
            format_args!(
                "out of memory at boot allocating {} pages",
                crate::kfmt::n(n)
            ),
        );
    }
    pa
}

// ---- page tables ----

pub const PTE_PRESENT: u64 = 1;
pub const PTE_WRITE: u64 = 1 << 1;
pub const PTE_HUGE: u64 = 1 << 7;
pub const PTE_GLOBAL: u64 = 1 << 8;
pub const PTE_NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The kernel's page tables.
pub struct PageTables {
    pub pml4: u64,
}

impl PageTables {
    /// Empty tables.
    pub fn new() -> Self {
        PageTables {
            pml4: alloc_pages(1),
        }
    }

    /// The entry for `va` at `level` (4 = PML4 … 1 = PT), creating tables on the way.
    fn entry(&mut self, va: u64, level: u32) -> *mut u64 {
        let mut table = self.pml4;
        let mut l = 4;
        loop {
            let index = (va >> (12 + 9 * (l - 1))) & 511;
            let e = phys_ptr::<u64>(table + index * 8);
            if l == level {
                return e;
            }
            // SAFETY: `e` points into a page table page owned by these tables.
            let cur = unsafe { e.read_volatile() };
            table = if cur & PTE_PRESENT != 0 {
                cur & ADDR_MASK
            } else {
                let t = alloc_pages(1);
                // SAFETY: as above.
                unsafe { e.write_volatile(t | PTE_PRESENT | PTE_WRITE) };
                t
            };
            l -= 1;
        }
    }

    /// Maps one 4 KiB page.
    pub fn map_4k(&mut self, va: u64, pa: u64, flags: u64) {
        let e = self.entry(va, 1);
        // SAFETY: `e` is a PT entry of these tables.
        unsafe { e.write_volatile(pa | flags | PTE_PRESENT) };
    }

    /// Maps one 2 MiB page.
    pub fn map_2m(&mut self, va: u64, pa: u64, flags: u64) {
        let e = self.entry(va, 2);
        // SAFETY: `e` is a PD entry of these tables.
        unsafe { e.write_volatile(pa | flags | PTE_PRESENT | PTE_HUGE) };
    }

    /// Maps `[pa, pa + len)` at `va`, with 2 MiB pages where both are aligned.
    pub fn map_range(&mut self, va: u64, pa: u64, len: u64, flags: u64) {
        let mut off = 0;
        while off < len {
            let (v, p) = (va + off, pa + off);
            if v % (2 << 20) == 0 && p % (2 << 20) == 0 && len - off >= 2 << 20 {
                self.map_2m(v, p, flags);
                off += 2 << 20;
            } else {
                self.map_4k(v, p, flags);
                off += PAGE;
            }
        }
    }

    /// Maps all RAM regions into the direct map.
    pub fn map_direct(&mut self, regions: &[MemRegion]) {
        for r in regions {
            let size = r.size & !(PAGE - 1);
            self.map_range(
                DIRECT_MAP_BASE + r.gpa,
                r.gpa,
                size,
                PTE_WRITE | PTE_NX | PTE_GLOBAL,
            );
        }
    }

    /// Switches this CPU to these tables and from then on reaches physical memory
    /// through the direct map.
    ///
    /// # Safety
    /// The tables must map the kernel image, the stacks and the direct map.
    pub unsafe fn activate(&self) {
        // SAFETY: forwarded.
        unsafe { crate::arch::write_cr3(self.pml4) };
        DIRECT_MAP_READY.store(true, Ordering::Release);
    }
}

/// Loads the kernel's tables on a secondary CPU.
///
/// # Safety
/// `pml4` must be the tables the boot CPU activated.
pub unsafe fn activate_on_secondary(pml4: u64) {
    // SAFETY: forwarded.
    unsafe { crate::arch::write_cr3(pml4) };
}
