//! QEMU's own per-CPU note: `dump-guest-memory` writes, after each CPU's `NT_PRSTATUS`,
//! a note named `QEMU` (type 0) holding that CPU's `QEMUCPUState` — the general-purpose
//! registers again, and what `elf_prstatus` has no room for: the segment and
//! descriptor-table registers with their bases and limits, the control registers
//! `cr0`..`cr4`, and (when `size` says it is there) `MSR_KERNEL_GS_BASE`.
//!
//! Layout (QEMU's `target/i386/arch_dump.c`, version 1, little-endian): `u32 version,
//! u32 size`, then 16 general-purpose registers, `rip`, `rflags` (`u64` each), ten
//! segments of `{u32 selector, u32 limit, u32 flags, u32 pad, u64 base}` (`cs ds es fs gs
//! ss ldt tr gdt idt`), `u64 cr[5]`, then optionally `u64 kernel_gs_base`. Fields are
//! only added at the end; `size` tells which are present.

use crate::CoreError;

/// The name of QEMU's per-CPU note.
pub const QEMU_NOTE_NAME: &str = "QEMU";
/// Its note type.
pub const NT_QEMU_CPU_STATE: u32 = 0;
/// The only version of the layout QEMU has written.
pub const QEMU_CPU_STATE_VERSION: u32 = 1;

/// Segment names in the note's order.
pub const SEGMENT_NAMES: [&str; 10] = [
    "cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt",
];

const HEADER: usize = 8;
const GPRS: usize = 18;
const SEGMENT_SIZE: usize = 24;
const SEGMENTS_AT: usize = HEADER + GPRS * 8;
const CR_AT: usize = SEGMENTS_AT + SEGMENT_NAMES.len() * SEGMENT_SIZE;
/// Size of version 1 without the optional fields.
const BASE_SIZE: usize = CR_AT + 5 * 8;
const KERNEL_GS_BASE_AT: usize = BASE_SIZE;

/// One segment register as QEMU keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QemuSegment {
    /// The selector.
    pub selector: u32,
    /// The limit.
    pub limit: u32,
    /// QEMU's descriptor flags.
    pub flags: u32,
    /// The base.
    pub base: u64,
}

/// One CPU's `QEMUCPUState`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuCpuState {
    /// `rax rbx rcx rdx rsi rdi rsp rbp r8`..`r15`, in that order.
    pub gprs: [u64; 16],
    /// `rip`.
    pub rip: u64,
    /// `rflags`.
    pub rflags: u64,
    /// `cs ds es fs gs ss ldt tr gdt idt`, in [`SEGMENT_NAMES`] order.
    pub segments: [QemuSegment; 10],
    /// `cr0`..`cr4` (`cr1` is always 0).
    pub cr: [u64; 5],
    /// `MSR_KERNEL_GS_BASE`, when the note is long enough to hold it.
    pub kernel_gs_base: Option<u64>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl QemuCpuState {
    /// Decodes a `QEMU` note's descriptor. Refuses other versions and notes shorter than
    /// version 1's fixed part, or than their own `size`.
    pub fn parse(desc: &[u8]) -> Result<QemuCpuState, CoreError> {
        let bad = |why: String| crate::error::malformed(format!("QEMU CPU-state note: {why}"));
        let version = u32_at(desc, 0).ok_or_else(|| bad(format!("{} bytes", desc.len())))?;
        if version != QEMU_CPU_STATE_VERSION {
            return Err(bad(format!(
                "version {version}, not {QEMU_CPU_STATE_VERSION}"
            )));
        }
        let size = u32_at(desc, 4).ok_or_else(|| bad("no size".into()))? as usize;
        if size < BASE_SIZE || size > desc.len() {
            return Err(bad(format!(
                "size {size} (the note holds {} bytes; version 1 needs {BASE_SIZE})",
                desc.len()
            )));
        }
        let desc = &desc[..size];
        let word = |i: usize| u64_at(desc, HEADER + i * 8).unwrap_or(0);
        let mut s = QemuCpuState::default();
        for (i, r) in s.gprs.iter_mut().enumerate() {
            *r = word(i);
        }
        s.rip = word(16);
        s.rflags = word(17);
        for (i, seg) in s.segments.iter_mut().enumerate() {
            let at = SEGMENTS_AT + i * SEGMENT_SIZE;
            *seg = QemuSegment {
                selector: u32_at(desc, at).unwrap_or(0),
                limit: u32_at(desc, at + 4).unwrap_or(0),
                flags: u32_at(desc, at + 8).unwrap_or(0),
                base: u64_at(desc, at + 16).unwrap_or(0),
            };
        }
        for (i, c) in s.cr.iter_mut().enumerate() {
            *c = u64_at(desc, CR_AT + i * 8).unwrap_or(0);
        }
        s.kernel_gs_base = u64_at(desc, KERNEL_GS_BASE_AT);
        Ok(s)
    }

    /// `rsp` (the 7th general-purpose register).
    pub fn rsp(&self) -> u64 {
        self.gprs[6]
    }

    /// The `gs` segment's base.
    pub fn gs_base(&self) -> u64 {
        self.segments[4].base
    }

    /// The `fs` segment's base.
    pub fn fs_base(&self) -> u64 {
        self.segments[3].base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A note as QEMU 7+ writes it (with `kernel_gs_base`).
    pub(crate) fn note(version: u32, size: u32, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..4].copy_from_slice(&version.to_le_bytes());
        b[4..8].copy_from_slice(&size.to_le_bytes());
        for i in 0..18 {
            let v = 0x1000 + i as u64;
            b[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        for i in 0..10 {
            let at = SEGMENTS_AT + i * 24;
            b[at..at + 4].copy_from_slice(&(0x10 + i as u32).to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&0xa09bu32.to_le_bytes());
            let base = 0xffff_8880_0000_0000u64 + i as u64;
            b[at + 16..at + 24].copy_from_slice(&base.to_le_bytes());
        }
        for i in 0..5 {
            let v = 0x8005_0033u64 + i as u64;
            b[CR_AT + i * 8..CR_AT + 8 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        if len >= KERNEL_GS_BASE_AT + 8 {
            b[KERNEL_GS_BASE_AT..KERNEL_GS_BASE_AT + 8]
                .copy_from_slice(&0x7f00_0000_0000u64.to_le_bytes());
        }
        b
    }

    #[test]
    fn decodes_version_1_with_and_without_kernel_gs_base() {
        let s = QemuCpuState::parse(&note(1, 440, 440)).unwrap();
        assert_eq!(s.gprs[0], 0x1000);
        assert_eq!(s.rsp(), 0x1006);
        assert_eq!(s.rip, 0x1010);
        assert_eq!(s.rflags, 0x1011);
        assert_eq!(s.segments[0].selector, 0x10);
        assert_eq!(s.segments[9].selector, 0x19);
        assert_eq!(s.segments[0].limit, 0xffff_ffff);
        assert_eq!(s.segments[0].flags, 0xa09b);
        assert_eq!(s.gs_base(), 0xffff_8880_0000_0004);
        assert_eq!(s.cr[3], 0x8005_0036);
        assert_eq!(s.kernel_gs_base, Some(0x7f00_0000_0000));
        let old = QemuCpuState::parse(&note(1, 432, 432)).unwrap();
        assert_eq!(old.kernel_gs_base, None);
        assert_eq!(old.cr[4], 0x8005_0037);
        // A size smaller than the buffer: what lies beyond it is not read.
        let s = QemuCpuState::parse(&note(1, 432, 440)).unwrap();
        assert_eq!(s.kernel_gs_base, None);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(QemuCpuState::parse(&[]).is_err());
        assert!(QemuCpuState::parse(&note(2, 440, 440)).is_err());
        assert!(QemuCpuState::parse(&note(1, 200, 440)).is_err());
        assert!(QemuCpuState::parse(&note(1, 440, 432)).is_err());
        assert!(QemuCpuState::parse(&note(1, u32::MAX, 440)).is_err());
    }
}
