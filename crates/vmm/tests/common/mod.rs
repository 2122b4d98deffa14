//! Test helpers: a tiny x86-64 assembler for the handful of instructions the test guests
//! use, a minimal ELF64 writer, and event waiting.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_abi::boot::KERNEL_VIRT_BASE;
use ambulance_vmm::{EventKind, GuestConfig, Vmm, VmmEvent};
use crossbeam_channel::Receiver;

/// Physical address of the test kernels' code.
pub const TEXT: u64 = 0x20_0000;
/// Physical address the test kernels use for scratch data (not part of the image).
pub const SCRATCH: u64 = 0x30_0000;

/// The kernel-map (high-half) virtual address of physical `pa`.
pub const fn kva(pa: u64) -> u64 {
    KERNEL_VIRT_BASE + pa
}

/// A `Vmm`, or `None` (with a loud line on stderr) when this machine has no KVM.
pub fn vmm() -> Option<Vmm> {
    if !ambulance_testkit::kvm() {
        return None;
    }
    Some(Vmm::new().expect("/dev/kvm exists but the VMM cannot use it"))
}

/// x86-64 machine code, assembled by hand. Every encoding here was checked against GNU as.
#[derive(Default)]
pub struct Asm {
    pub code: Vec<u8>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }
    /// Offset of the next instruction.
    pub fn here(&self) -> usize {
        self.code.len()
    }
    /// Virtual address (kernel map) of offset `off` in a text segment at [`TEXT`].
    pub fn va(off: usize) -> u64 {
        kva(TEXT) + off as u64
    }
    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.code.extend_from_slice(b);
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.emit(b)
    }
    pub fn align(&mut self, n: usize) -> &mut Self {
        while !self.code.len().is_multiple_of(n) {
            self.code.push(0x90);
        }
        self
    }
    /// `mov edx, imm32`
    pub fn mov_edx(&mut self, v: u32) -> &mut Self {
        self.emit(&[0xba]).emit(&v.to_le_bytes())
    }
    /// `mov eax, imm32`
    pub fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.emit(&[0xb8]).emit(&v.to_le_bytes())
    }
    /// `mov ecx, imm32`
    pub fn mov_ecx(&mut self, v: u32) -> &mut Self {
        self.emit(&[0xb9]).emit(&v.to_le_bytes())
    }
    /// `movabs rax, imm64`
    pub fn mov_rax(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xb8]).emit(&v.to_le_bytes())
    }
    /// `movabs rbx, imm64`
    pub fn mov_rbx(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xbb]).emit(&v.to_le_bytes())
    }
    /// `movabs r8, imm64`
    pub fn mov_r8(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x49, 0xb8]).emit(&v.to_le_bytes())
    }
    /// `out dx, al`
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.emit(&[0xee])
    }
    /// `out dx, eax`
    pub fn out_dx_eax(&mut self) -> &mut Self {
        self.emit(&[0xef])
    }
    /// `in eax, dx`
    pub fn in_eax_dx(&mut self) -> &mut Self {
        self.emit(&[0xed])
    }
    /// `in al, dx`
    pub fn in_al_dx(&mut self) -> &mut Self {
        self.emit(&[0xec])
    }
    /// `out port, value` (32-bit).
    pub fn out32(&mut self, port: u16, value: u32) -> &mut Self {
        self.mov_edx(port as u32).mov_eax(value).out_dx_eax()
    }
    /// `out port, value` (8-bit).
    pub fn out8(&mut self, port: u16, value: u8) -> &mut Self {
        self.mov_edx(port as u32).mov_eax(value as u32).out_dx_al()
    }
    /// `eax = in port` (32-bit).
    pub fn in32(&mut self, port: u16) -> &mut Self {
        self.mov_edx(port as u32).in_eax_dx()
    }
    /// Writes `text` to the COM1 console, byte by byte.
    pub fn print(&mut self, text: &str) -> &mut Self {
        self.mov_edx(0x3f8);
        for b in text.bytes() {
            self.mov_eax(b as u32).out_dx_al();
        }
        self
    }
    /// `inc qword [rbx]`
    pub fn inc_qword_rbx(&mut self) -> &mut Self {
        self.emit(&[0x48, 0xff, 0x03])
    }
    /// `mov [rbx], eax`
    pub fn store_eax_rbx(&mut self) -> &mut Self {
        self.emit(&[0x89, 0x03])
    }
    /// `mov [rbx], rax`
    pub fn store_rax_rbx(&mut self) -> &mut Self {
        self.emit(&[0x48, 0x89, 0x03])
    }
    /// `mov eax, [rbx]`
    pub fn load_eax_rbx(&mut self) -> &mut Self {
        self.emit(&[0x8b, 0x03])
    }
    /// `mov [r8 + rsi*4], ebx`
    pub fn store_ebx_r8_rsi4(&mut self) -> &mut Self {
        self.emit(&[0x41, 0x89, 0x1c, 0xb0])
    }
    /// `mov [r8 + rsi*8], rdi`
    pub fn store_rdi_r8_rsi8(&mut self) -> &mut Self {
        self.emit(&[0x49, 0x89, 0x3c, 0xf0])
    }
    /// `lea rbx, [rbx + rsi*8]`
    pub fn lea_rbx_rbx_rsi8(&mut self) -> &mut Self {
        self.emit(&[0x48, 0x8d, 0x1c, 0xf3])
    }
    /// `cpuid`
    pub fn cpuid(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0xa2])
    }
    /// `shr ebx, n`
    pub fn shr_ebx(&mut self, n: u8) -> &mut Self {
        self.emit(&[0xc1, 0xeb, n])
    }
    /// `dec ecx`
    pub fn dec_ecx(&mut self) -> &mut Self {
        self.emit(&[0xff, 0xc9])
    }
    /// `jnz target` (rel8)
    pub fn jnz(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 2);
        let rel = i8::try_from(rel).expect("jnz target within rel8 range");
        self.emit(&[0x75, rel as u8])
    }
    /// `jmp target` (rel32)
    pub fn jmp(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 5);
        self.emit(&[0xe9]).emit(&(rel as i32).to_le_bytes())
    }
    /// `jmp $` — spin forever (interrupts are off).
    pub fn spin(&mut self) -> &mut Self {
        self.emit(&[0xeb, 0xfe])
    }
    /// `lidt [rip + disp]` pointing at code offset `target`.
    pub fn lidt_at(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 7);
        self.emit(&[0x0f, 0x01, 0x1d])
            .emit(&(rel as i32).to_le_bytes())
    }
    pub fn cli(&mut self) -> &mut Self {
        self.emit(&[0xfa])
    }
    pub fn hlt(&mut self) -> &mut Self {
        self.emit(&[0xf4])
    }
    pub fn ud2(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x0b])
    }
}

/// One loadable segment: physical address, bytes, and memory size (>= bytes; the rest
/// is zero).
pub struct Segment<'a> {
    pub paddr: u64,
    pub data: &'a [u8],
    pub memsz: u64,
}

/// A minimal ELF64 x86-64 executable: each segment is linked at `KERNEL_VIRT_BASE +
/// paddr` and loaded at `paddr`; the entry point is virtual.
pub fn elf(entry: u64, segments: &[Segment<'_>]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut out = vec![0u8; EHDR + PHDR * segments.len()];
    let mut offsets = Vec::new();
    for s in segments {
        while !out.len().is_multiple_of(4096) {
            out.push(0);
        }
        offsets.push(out.len() as u64);
        out.extend_from_slice(s.data);
    }
    let h = &mut out[..EHDR];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // little-endian
    h[6] = 1; // EV_CURRENT
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&entry.to_le_bytes());
    h[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    h[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    h[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    h[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    for (i, (s, off)) in segments.iter().zip(&offsets).enumerate() {
        let p = &mut out[EHDR + i * PHDR..][..PHDR];
        p[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        p[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&kva(s.paddr).to_le_bytes());
        p[24..32].copy_from_slice(&s.paddr.to_le_bytes());
        p[32..40].copy_from_slice(&(s.data.len() as u64).to_le_bytes());
        p[40..48].copy_from_slice(&s.memsz.max(s.data.len() as u64).to_le_bytes());
        p[48..56].copy_from_slice(&4096u64.to_le_bytes());
    }
    out
}

/// A kernel made of `code` at [`TEXT`] (entry at its start) and optional data segments.
pub fn kernel(code: &Asm, data: &[(u64, &[u8])]) -> Arc<[u8]> {
    let mut segs = vec![Segment {
        paddr: TEXT,
        data: &code.code,
        memsz: code.code.len() as u64,
    }];
    for (paddr, bytes) in data {
        segs.push(Segment {
            paddr: *paddr,
            data: bytes,
            memsz: bytes.len() as u64,
        });
    }
    elf(kva(TEXT), &segs).into()
}

pub fn config(name: &str, kernel: Arc<[u8]>) -> GuestConfig {
    let mut c = GuestConfig::new(name, kernel);
    c.memory_bytes = 32 << 20;
    c
}

/// Waits for the first event of `guest` that `pred` accepts; panics (listing what did
/// arrive) after `timeout`.
pub fn wait_for(
    rx: &Receiver<VmmEvent>,
    guest: u64,
    timeout: Duration,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> VmmEvent {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if e.guest == guest && pred(&e.kind) => return e,
            Ok(e) => seen.push(e),
            Err(_) => panic!("timed out after {timeout:?}; events seen: {seen:#?}"),
        }
    }
}

/// All events of `guest` that arrive within `window`.
pub fn collect(rx: &Receiver<VmmEvent>, guest: u64, window: Duration) -> Vec<VmmEvent> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(e) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if e.guest == guest {
            out.push(e);
        }
    }
    out
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn read_u64(g: &ambulance_vmm::Guest, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    g.read_phys(gpa, &mut b).unwrap();
    u64::from_le_bytes(b)
}

pub fn read_u32(g: &ambulance_vmm::Guest, gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    g.read_phys(gpa, &mut b).unwrap();
    u32::from_le_bytes(b)
}
