//! What validators see: the guest, its registration, the failure, and shared walks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use ambulance_abi::descriptor::{root_flags, Descriptor, Root, RootKind};
use ambulance_introspect::object::MemberLayout;
use ambulance_introspect::program::Program;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::{self, ListWalk, WalkEnd, WalkLimits};
use ambulance_report::{
    Address, FailureInfo, Finding, FindingKind, Hex, Severity, StructureRef, StructureWalk,
    VcpuRegisters,
};

/// One element of a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Element {
    /// Position in the root (array index, list position, ring slot).
    pub index: u64,
    /// Guest-virtual address of the element.
    pub addr: u64,
}

/// A root's elements, found once and shared by all validators.
#[derive(Debug)]
pub struct RootElements {
    /// The elements, in order.
    pub elements: Vec<Element>,
    /// For lists: the raw walk (link addresses), for validators that check links.
    pub list: Option<ListWalk>,
    /// How the enumeration ended.
    pub end: ambulance_report::WalkOutcome,
}

/// Everything a validator may look at.
pub struct Context<'a> {
    /// The guest: memory, translation, symbols, types.
    pub program: &'a Program,
    /// The host's boot-time copy of the registration descriptor.
    pub descriptor: Option<&'a Descriptor>,
    /// Its bytes as the host copied them.
    pub descriptor_bytes: Option<&'a [u8]>,
    /// Where the guest keeps it (guest-physical).
    pub descriptor_gpa: Option<u64>,
    /// Roots the host derived from what it knows of the guest's kernel (Linux's task
    /// list), for guests that registered no descriptor. Validators see them as they see
    /// registered roots.
    pub kernel_roots: &'a [Root],
    /// VMCOREINFO (from the descriptor, a core note or a memory scan).
    pub vmcoreinfo: Option<&'a Vmcoreinfo>,
    /// The kernel's ELF image (debug info), to compare read-only memory with.
    pub kernel_elf: Option<&'a [u8]>,
    /// Why the guest is being diagnosed.
    pub failure: &'a FailureInfo,
    /// Every vCPU's registers.
    pub vcpus: &'a [VcpuRegisters],
    /// Budget of each walk.
    pub limits: WalkLimits,
    cache: RefCell<BTreeMap<String, Rc<RootElements>>>,
}

impl<'a> Context<'a> {
    /// A context over `program` for a failure.
    pub fn new(
        program: &'a Program,
        failure: &'a FailureInfo,
        vcpus: &'a [VcpuRegisters],
        limits: WalkLimits,
    ) -> Self {
        Context {
            program,
            descriptor: None,
            descriptor_bytes: None,
            descriptor_gpa: None,
            kernel_roots: &[],
            vmcoreinfo: None,
            kernel_elf: None,
            failure,
            vcpus,
            limits,
            cache: RefCell::new(BTreeMap::new()),
        }
    }

    /// The roots to validate: those the guest registered, or, without a registration,
    /// those derived from its kernel.
    pub fn roots(&self) -> &'a [Root] {
        self.descriptor
            .map(|d| d.roots.as_slice())
            .unwrap_or(self.kernel_roots)
    }

    /// The root with this name.
    pub fn root(&self, name: &str) -> Option<&'a Root> {
        self.roots().iter().find(|r| r.name == name)
    }

    /// The elements of `root`, enumerated (and walked, for lists) once.
    pub fn elements(&self, root: &Root) -> Rc<RootElements> {
        if let Some(e) = self.cache.borrow().get(&root.name) {
            return e.clone();
        }
        let e = Rc::new(self.enumerate(root));
        self.cache.borrow_mut().insert(root.name.clone(), e.clone());
        e
    }

    /// Every root enumerated so far, as the report's "structures walked".
    pub fn structures(&self) -> Vec<StructureWalk> {
        let cache = self.cache.borrow();
        self.roots()
            .iter()
            .filter_map(|r| {
                cache.get(&r.name).map(|e| StructureWalk {
                    structure: r.name.clone(),
                    kind: r.kind.name().to_string(),
                    count: e.elements.len() as u64,
                    end: e.end.clone(),
                })
            })
            .collect()
    }

    fn enumerate(&self, root: &Root) -> RootElements {
        let complete = || ambulance_report::WalkOutcome {
            kind: "complete".into(),
            at: None,
            detail: String::new(),
        };
        let size = root.element_size as u64;
        match root.kind {
            RootKind::Object => RootElements {
                elements: vec![Element {
                    index: 0,
                    addr: root.address,
                }],
                list: None,
                end: complete(),
            },
            RootKind::Array if root.has_flag(root_flags::POINTER_ELEMENTS) => {
                let mut elements = Vec::new();
                let mut end = complete();
                for i in 0..root.max_count as u64 {
                    let slot = root.address.wrapping_add(8 * i);
                    match self.program.read_u64(slot) {
                        Ok(0) => {}
                        Ok(p) => elements.push(Element { index: i, addr: p }),
                        Err(e) => {
                            end = unreadable(slot, &e.to_string());
                            break;
                        }
                    }
                }
                RootElements {
                    elements,
                    list: None,
                    end,
                }
            }
            RootKind::Array | RootKind::Ring => RootElements {
                elements: (0..root.max_count as u64)
                    .map(|i| Element {
                        index: i,
                        addr: root.address.wrapping_add(i * size),
                    })
                    .collect(),
                list: None,
                end: complete(),
            },
            RootKind::List => {
                let singly = root.has_flag(root_flags::SINGLY_LINKED);
                let w = walk::walk_list(self.program, root.address, singly, self.limits);
                let elements = w
                    .links
                    .iter()
                    .enumerate()
                    .map(|(i, &link)| Element {
                        index: i as u64,
                        addr: link.wrapping_sub(root.link_offset as u64),
                    })
                    .collect();
                let end = report_end(&w.end, root);
                RootElements {
                    elements,
                    list: Some(w),
                    end,
                }
            }
            RootKind::Tree => self.walk_tree(root),
        }
    }

    /// Depth-first over a binary tree, bounded by the walk limits and `max_count`.
    fn walk_tree(&self, root: &Root) -> RootElements {
        let mut elements = Vec::new();
        let mut end = ambulance_report::WalkOutcome {
            kind: "complete".into(),
            at: None,
            detail: String::new(),
        };
        let limit = self.limits.max_nodes.min(root.max_count as u64);
        let mut seen = std::collections::HashSet::new();
        let mut stack = match self.program.read_u64(root.address) {
            Ok(0) => vec![],
            Ok(p) => vec![p],
            Err(e) => {
                return RootElements {
                    elements,
                    list: None,
                    end: unreadable(root.address, &e.to_string()),
                }
            }
        };
        while let Some(node) = stack.pop() {
            if !seen.insert(node) {
                end = ambulance_report::WalkOutcome {
                    kind: "cycle".into(),
                    at: Some(Hex(node)),
                    detail: "a tree node is reachable twice".into(),
                };
                break;
            }
            if elements.len() as u64 >= limit {
                end = ambulance_report::WalkOutcome {
                    kind: "limit".into(),
                    at: Some(Hex(node)),
                    detail: format!("stopped after {limit} nodes"),
                };
                break;
            }
            elements.push(Element {
                index: elements.len() as u64,
                addr: node,
            });
            for child in [root.link_offset as u64, root.link_offset as u64 + 8] {
                match self.program.read_u64(node.wrapping_add(child)) {
                    Ok(0) => {}
                    Ok(c) => stack.push(c),
                    Err(e) => {
                        end = unreadable(node, &e.to_string());
                        stack.clear();
                        break;
                    }
                }
            }
        }
        RootElements {
            elements,
            list: None,
            end,
        }
    }

    /// Whether the lock protecting `root` was held when the guest was frozen, and by
    /// which CPU when the lock's layout is known.
    pub fn lock_held(&self, root: &Root) -> Option<Option<u32>> {
        if root.lock == 0 {
            return None;
        }
        let word = if root.has_flag(root_flags::LOCK_BYTE) {
            self.program.read_u8(root.lock).ok()? as u32
        } else {
            self.program.read_u32(root.lock).ok()?
        };
        if word == 0 {
            return None;
        }
        let owner = self.lock_owner(root.lock);
        Some(owner)
    }

    /// The owner CPU recorded in the lock whose lock word is at `word`, when the layout is
    /// known (`OFFSET(Spinlock.locked)`, `OFFSET(Spinlock.owner_cpu)`).
    pub fn lock_owner(&self, word: u64) -> Option<u32> {
        let locked = self.member("Spinlock", "locked")?;
        let owner = self.member("Spinlock", "owner_cpu")?;
        let lock = word.wrapping_sub(locked.offset());
        owner
            .object(self.program, lock)
            .read_u32()
            .ok()
            .filter(|&c| c != u32::MAX)
    }

    /// Where `member` (a path: `a.b`) is in `type_name`, found once to read it in every
    /// element with [`MemberLayout::object`]: from the program's type sources — DWARF or
    /// BTF first, then the layouts VMCOREINFO gives (a registration's inline layouts).
    pub fn member(&self, type_name: &str, member: &str) -> Option<MemberLayout> {
        self.program.member_layout(type_name, member).ok()
    }

    /// Offset of `member` in `type_name` (see [`member`](Self::member)).
    pub fn member_offset(&self, type_name: &str, member: &str) -> Option<u64> {
        self.member(type_name, member).map(|m| m.offset())
    }

    /// A finding with the physical address filled in when `virt` translates.
    #[allow(clippy::too_many_arguments)]
    pub fn finding(
        &self,
        validator: &str,
        severity: Severity,
        root: &str,
        index: Option<u64>,
        path: Option<&str>,
        virt: Option<u64>,
        expected: String,
        found: String,
        message: String,
    ) -> Finding {
        Finding {
            validator: validator.to_string(),
            severity,
            kind: FindingKind::Analysis,
            structure: StructureRef {
                root: root.to_string(),
                index,
                path: path.map(str::to_string),
            },
            address: Address {
                virt: virt.map(Hex),
                phys: virt.and_then(|v| self.program.translate(v).ok()).map(Hex),
            },
            expected,
            found,
            message,
        }
    }

    /// A finding that is only a message.
    pub fn note(
        &self,
        validator: &str,
        severity: Severity,
        root: &str,
        message: String,
    ) -> Finding {
        self.finding(
            validator,
            severity,
            root,
            None,
            None,
            None,
            String::new(),
            String::new(),
            message,
        )
    }
}

fn unreadable(at: u64, error: &str) -> ambulance_report::WalkOutcome {
    ambulance_report::WalkOutcome {
        kind: "unreadable".into(),
        at: Some(Hex(at)),
        detail: error.to_string(),
    }
}

/// A list walk's end as the report says it.
pub fn report_end(end: &WalkEnd, root: &Root) -> ambulance_report::WalkOutcome {
    let (kind, at, detail) = match end {
        WalkEnd::Complete => ("complete", None, String::new()),
        WalkEnd::Cycle {
            closing_node,
            first_repeated,
        } => (
            "cycle",
            Some(closing_node.wrapping_sub(root.link_offset as u64)),
            format!(
                "element {:#x} links back to element {:#x}",
                closing_node.wrapping_sub(root.link_offset as u64),
                first_repeated.wrapping_sub(root.link_offset as u64)
            ),
        ),
        WalkEnd::LimitHit { limit } => ("limit", None, format!("stopped after {limit} elements")),
        WalkEnd::Unreadable { at, error } => (
            "unreadable",
            Some(at.wrapping_sub(root.link_offset as u64)),
            error.clone(),
        ),
        WalkEnd::TimedOut { after } => ("timed_out", None, format!("stopped after {after:?}")),
    };
    ambulance_report::WalkOutcome {
        kind: kind.into(),
        at: at.map(Hex),
        detail,
    }
}

/// Severity for a structural inconsistency in a structure whose lock was held at freeze
/// time: the guest may simply have been in the middle of an update.
pub fn excused(held: Option<Option<u32>>, severity: Severity) -> (Severity, String) {
    match held {
        Some(owner) => (
            Severity::Info,
            format!(
                " (its lock was held{} when the guest was frozen: it may have been mid-update)",
                owner.map(|c| format!(" by CPU {c}")).unwrap_or_default()
            ),
        ),
        None => (severity, String::new()),
    }
}
