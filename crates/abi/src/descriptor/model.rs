//! The host side's owned model of a descriptor (with the `alloc` feature): what
//! [`parse`](super::parse) returns and [`Descriptor::encode`] writes back.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{
    DescriptorWriter, Hint, RootKind, RootSpec, WriteError, HEADER_SIZE, HINT_ENTRY_SIZE,
    ROOT_ENTRY_SIZE,
};

/// A parsed, validated descriptor (host side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Header flags ([`FLAG_LA57`](super::FLAG_LA57)).
    pub flags: u32,
    /// The kernel's build ID.
    pub build_id: Vec<u8>,
    /// KASLR slide of the kernel image.
    pub load_offset: i64,
    /// Guest-physical address of the top-level page table.
    pub page_table_root: u64,
    /// Guest-physical address of the heartbeat counter.
    pub heartbeat_gpa: u64,
    /// VMCOREINFO text, when the guest provided one.
    pub vmcoreinfo: Option<String>,
    /// The roots, in table order.
    pub roots: Vec<Root>,
}

/// A parsed root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// Unique name.
    pub name: String,
    /// Element type name.
    pub type_name: String,
    /// What it is.
    pub kind: RootKind,
    /// [`root_flags`](super::root_flags).
    pub flags: u16,
    /// Guest-virtual address.
    pub address: u64,
    /// Size of one element.
    pub element_size: u32,
    /// Offset of the link field.
    pub link_offset: u32,
    /// Walk limit.
    pub max_count: u32,
    /// Kind-specific extra address.
    pub aux: u64,
    /// Address of the protecting lock, or 0.
    pub lock: u64,
    /// Validation hints.
    pub hints: Vec<Hint>,
}

impl Root {
    /// The borrowed form a [`DescriptorWriter`] takes.
    pub fn spec(&self) -> RootSpec<'_> {
        RootSpec {
            name: &self.name,
            type_name: &self.type_name,
            kind: self.kind,
            flags: self.flags,
            address: self.address,
            element_size: self.element_size,
            link_offset: self.link_offset,
            max_count: self.max_count,
            aux: self.aux,
            lock: self.lock,
        }
    }

    /// Whether the flag is set.
    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

impl Descriptor {
    /// The root with this name.
    pub fn root(&self, name: &str) -> Option<&Root> {
        self.roots.iter().find(|r| r.name == name)
    }

    /// Encodes to the wire format (the inverse of [`parse`](super::parse)).
    pub fn encode(&self) -> Result<Vec<u8>, WriteError> {
        let hints: usize = self.roots.iter().map(|r| r.hints.len()).sum();
        let vmcoreinfo = self.vmcoreinfo.as_deref().unwrap_or("");
        let size = HEADER_SIZE
            + self.roots.len() * ROOT_ENTRY_SIZE
            + hints * HINT_ENTRY_SIZE
            + vmcoreinfo.len();
        let mut buf = vec![0u8; size];
        let mut w = DescriptorWriter::new(&mut buf, self.roots.len(), hints)?;
        w.set_flags(self.flags);
        w.set_build_id(&self.build_id)?;
        w.set_load_offset(self.load_offset);
        w.set_page_table_root(self.page_table_root);
        w.set_heartbeat_gpa(self.heartbeat_gpa);
        for r in &self.roots {
            w.push_root(&r.spec(), &r.hints)?;
        }
        w.push_vmcoreinfo(vmcoreinfo)?;
        let total = w.finish();
        buf.truncate(total);
        Ok(buf)
    }
}
