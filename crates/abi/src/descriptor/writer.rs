//! The guest side: writing a descriptor into a caller-provided buffer, `no_std` and
//! without an allocator, and resealing one after its bytes were edited.

use super::wire::{checksum_of, put, u32_at, HINT_CHECKSUM, HINT_MAGIC, HINT_POINTER_RANGE};
use super::{
    layout, Hint, RootSpec, WriteError, HEADER_SIZE, HINT_ENTRY_SIZE, HINT_NULLABLE, MAGIC,
    MAX_BUILD_ID, MAX_HINTS, MAX_ROOTS, MAX_VMCOREINFO, NAME_LEN, ROOT_ENTRY_SIZE,
};

/// Writes a descriptor into a caller-provided buffer. `no_std`, no allocator: this is what
/// a guest kernel uses at boot.
///
/// The layout is fixed at creation: the header, room for `max_roots` root entries, room
/// for `max_hints` hint entries, then the VMCOREINFO text.
pub struct DescriptorWriter<'a> {
    buf: &'a mut [u8],
    max_roots: usize,
    max_hints: usize,
    roots: usize,
    hints: usize,
    vmcoreinfo_len: usize,
}

impl<'a> DescriptorWriter<'a> {
    /// Starts a descriptor in `buf` (zeroed here) with room for the given number of entries.
    pub fn new(buf: &'a mut [u8], max_roots: usize, max_hints: usize) -> Result<Self, WriteError> {
        if max_roots > MAX_ROOTS || max_hints > MAX_HINTS {
            return Err(WriteError::BufferTooSmall);
        }
        let fixed = HEADER_SIZE + max_roots * ROOT_ENTRY_SIZE + max_hints * HINT_ENTRY_SIZE;
        if buf.len() < fixed || buf.len() > u32::MAX as usize {
            return Err(WriteError::BufferTooSmall);
        }
        buf.fill(0);
        put(buf, layout::MAGIC, &MAGIC.to_le_bytes());
        put(buf, layout::VERSION, &crate::ABI_VERSION.to_le_bytes());
        put(
            buf,
            layout::HEADER_SIZE_FIELD,
            &(HEADER_SIZE as u16).to_le_bytes(),
        );
        Ok(DescriptorWriter {
            buf,
            max_roots,
            max_hints,
            roots: 0,
            hints: 0,
            vmcoreinfo_len: 0,
        })
    }

    fn roots_offset(&self) -> usize {
        HEADER_SIZE
    }
    fn hints_offset(&self) -> usize {
        HEADER_SIZE + self.max_roots * ROOT_ENTRY_SIZE
    }
    fn vmcoreinfo_offset(&self) -> usize {
        self.hints_offset() + self.max_hints * HINT_ENTRY_SIZE
    }

    /// Header flags ([`FLAG_LA57`](super::FLAG_LA57)).
    pub fn set_flags(&mut self, flags: u32) {
        put(self.buf, layout::FLAGS, &flags.to_le_bytes());
    }

    /// The kernel's build ID (the GNU build-id note's descriptor).
    pub fn set_build_id(&mut self, id: &[u8]) -> Result<(), WriteError> {
        if id.len() > MAX_BUILD_ID {
            return Err(WriteError::BuildIdTooLong);
        }
        self.buf[layout::BUILD_ID_LEN] = id.len() as u8;
        put(self.buf, layout::BUILD_ID, id);
        Ok(())
    }

    /// The kernel image's load offset (KASLR slide).
    pub fn set_load_offset(&mut self, offset: i64) {
        put(self.buf, layout::LOAD_OFFSET, &offset.to_le_bytes());
    }

    /// Guest-physical address of the top-level page table.
    pub fn set_page_table_root(&mut self, gpa: u64) {
        put(self.buf, layout::PAGE_TABLE_ROOT, &gpa.to_le_bytes());
    }

    /// Guest-physical address of the heartbeat counter.
    pub fn set_heartbeat_gpa(&mut self, gpa: u64) {
        put(self.buf, layout::HEARTBEAT_GPA, &gpa.to_le_bytes());
    }

    /// Adds a root with its hints.
    pub fn push_root(&mut self, root: &RootSpec<'_>, hints: &[Hint]) -> Result<(), WriteError> {
        if self.roots == self.max_roots {
            return Err(WriteError::Full("root"));
        }
        if self.hints + hints.len() > self.max_hints {
            return Err(WriteError::Full("hint"));
        }
        let at = self.roots_offset() + self.roots * ROOT_ENTRY_SIZE;
        write_name(self.buf, at + layout::root::NAME, root.name)?;
        write_name(self.buf, at + layout::root::TYPE_NAME, root.type_name)?;
        put(
            self.buf,
            at + layout::root::KIND,
            &(root.kind as u16).to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::FLAGS,
            &root.flags.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::ELEMENT_SIZE,
            &root.element_size.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::ADDRESS,
            &root.address.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::LINK_OFFSET,
            &root.link_offset.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::MAX_COUNT,
            &root.max_count.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::HINT_FIRST,
            &(self.hints as u32).to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::HINT_COUNT,
            &(hints.len() as u32).to_le_bytes(),
        );
        put(self.buf, at + layout::root::AUX, &root.aux.to_le_bytes());
        put(self.buf, at + layout::root::LOCK, &root.lock.to_le_bytes());
        for hint in hints {
            let h = self.hints_offset() + self.hints * HINT_ENTRY_SIZE;
            let (kind, flags, size, offset, a, b) = match *hint {
                Hint::Magic {
                    offset,
                    size,
                    value,
                } => (HINT_MAGIC, 0, size as u32, offset, value, 0),
                Hint::Checksum { start, len, crc32c } => {
                    (HINT_CHECKSUM, 0, len, 0, start, crc32c as u64)
                }
                Hint::PointerRange {
                    offset,
                    lo,
                    hi,
                    nullable,
                } => (
                    HINT_POINTER_RANGE,
                    if nullable { HINT_NULLABLE } else { 0 },
                    8,
                    offset,
                    lo,
                    hi,
                ),
            };
            put(self.buf, h + layout::hint::KIND, &kind.to_le_bytes());
            put(self.buf, h + layout::hint::FLAGS, &flags.to_le_bytes());
            put(self.buf, h + layout::hint::SIZE, &size.to_le_bytes());
            put(self.buf, h + layout::hint::OFFSET, &offset.to_le_bytes());
            put(self.buf, h + layout::hint::A, &a.to_le_bytes());
            put(self.buf, h + layout::hint::B, &b.to_le_bytes());
            self.hints += 1;
        }
        self.roots += 1;
        Ok(())
    }

    /// Appends VMCOREINFO text (`KEY=value` lines). Use it through `core::fmt::Write`.
    pub fn push_vmcoreinfo(&mut self, text: &str) -> Result<(), WriteError> {
        let at = self.vmcoreinfo_offset() + self.vmcoreinfo_len;
        if at + text.len() > self.buf.len() || self.vmcoreinfo_len + text.len() > MAX_VMCOREINFO {
            return Err(WriteError::Full("VMCOREINFO byte"));
        }
        put(self.buf, at, text.as_bytes());
        self.vmcoreinfo_len += text.len();
        Ok(())
    }

    /// Fills in the tables' positions and the checksum; returns the descriptor's size.
    pub fn finish(self) -> usize {
        let total = self.vmcoreinfo_offset() + self.vmcoreinfo_len;
        let (ro, ho, vo) = (
            self.roots_offset(),
            self.hints_offset(),
            self.vmcoreinfo_offset(),
        );
        let buf = self.buf;
        put(buf, layout::TOTAL_SIZE, &(total as u32).to_le_bytes());
        put(buf, layout::ROOTS_OFFSET, &(ro as u32).to_le_bytes());
        put(buf, layout::ROOT_COUNT, &(self.roots as u32).to_le_bytes());
        put(buf, layout::HINTS_OFFSET, &(ho as u32).to_le_bytes());
        put(buf, layout::HINT_COUNT, &(self.hints as u32).to_le_bytes());
        let (vo, vl) = if self.vmcoreinfo_len == 0 {
            (0, 0)
        } else {
            (vo as u32, self.vmcoreinfo_len as u32)
        };
        put(buf, layout::VMCOREINFO_OFFSET, &vo.to_le_bytes());
        put(buf, layout::VMCOREINFO_LEN, &vl.to_le_bytes());
        let crc = checksum_of(&buf[..total]);
        put(buf, layout::CHECKSUM, &crc.to_le_bytes());
        total
    }
}

impl core::fmt::Write for DescriptorWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push_vmcoreinfo(s).map_err(|_| core::fmt::Error)
    }
}

fn write_name(buf: &mut [u8], at: usize, name: &str) -> Result<(), WriteError> {
    if name.len() > NAME_LEN || name.as_bytes().contains(&0) {
        return Err(WriteError::BadName);
    }
    put(buf, at, name.as_bytes());
    Ok(())
}

/// Recomputes the checksum of a descriptor in place after its bytes were edited (with
/// `total_size` clamped to the buffer).
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_SIZE {
        return;
    }
    let total = (u32_at(bytes, layout::TOTAL_SIZE) as usize).clamp(HEADER_SIZE, bytes.len());
    let crc = checksum_of(&bytes[..total]);
    put(bytes, layout::CHECKSUM, &crc.to_le_bytes());
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::super::parse;
    use super::super::test_support::{descriptor, sample};
    use proptest::prelude::*;

    #[test]
    fn sample_round_trips() {
        let d = sample();
        let bytes = d.encode().unwrap();
        assert_eq!(parse(&bytes).unwrap(), d);
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(d in descriptor()) {
            let bytes = d.encode().unwrap();
            prop_assert_eq!(parse(&bytes).unwrap(), d);
        }
    }
}
