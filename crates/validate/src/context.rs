//! What validators see: the guest, its registration, the failure, and shared walks —
//! and the budget they all spend.
//!
//! # Budgets
//!
//! Every enumeration of a root — list, array, ring, pointer array, tree — is a bounded
//! walk ([`ambulance_introspect::walk`]) under the same limits: at most
//! [`WalkLimits::max_nodes`] elements and [`WalkLimits::time_budget`] of time, cut
//! shorter when the validation budget or the diagnosis deadline comes first. How each
//! ended is the root's entry in the report's `structures` ([`Context::structures`]):
//! `complete`, `cycle`, `limit`, `unreadable` or `timed_out`, with where and why.
//!
//! Validators that loop (over elements, hints, bytes) look at the clock as they go
//! ([`Context::pace`]) and stop when the validation budget ([`ValidationConfig`]'s
//! `total_budget_ms`) or the diagnosis deadline ([`Context::deadline`]) has passed. What
//! they did not check is then said in a finding of kind
//! [`FindingKind::Diagnosis`] (severity warning) naming the validator, the root and
//! what was left ([`Context::budget_note`]); the findings they made before stopping
//! stand. One validator reports at most [`MAX_FINDINGS_PER_ROOT`] findings per root (a
//! hostile guest can make every element wrong); the rest are counted in one more
//! finding of kind diagnosis ([`RootFindings`]).
//!
//! # Locks
//!
//! A structural inconsistency in a root whose lock was held when the guest was frozen —
//! a cycle, a bad magic, a `prev` that does not point back, a free-list entry out of its
//! slab, a pointer out of its range — is what a snapshot of an update in progress looks
//! like. [`Context::structural`] reports it as [`FindingKind::MidUpdate`] at severity
//! info, naming the lock and its owner, instead of as corruption — unless the data is
//! garbage no update could have written (memory that cannot be read, a non-canonical or
//! unmapped pointer, a misaligned link), which stays corruption whatever the lock says.
//!
//! [`ValidationConfig`]: crate::ValidationConfig

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ambulance_abi::descriptor::{root_flags, Descriptor, Root, RootKind};
use ambulance_introspect::object::MemberLayout;
use ambulance_introspect::program::Program;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::{self, ListWalk, WalkEnd, WalkLimits};
use ambulance_report::{
    Address, FailureInfo, Finding, FindingKind, Hex, Severity, StructureRef, StructureWalk,
    VcpuRegisters, WalkOutcome,
};

/// Most findings one validator reports on one root; the rest are counted.
pub const MAX_FINDINGS_PER_ROOT: usize = 64;

/// Calls to [`Pace::stop`] between looks at the clock.
const PACE_EVERY: u64 = 256;

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

impl RootElements {
    /// "elements FIRST to LAST": what a validator that stops at element `first` leaves
    /// unchecked, for its [`Context::budget_note`].
    pub fn rest_from(&self, first: u64) -> String {
        let last = self.elements.last().map_or(first, |l| l.index);
        format!("elements {first} to {last}")
    }
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
    /// When the whole diagnosis must be done: walks and validators stop at it.
    pub deadline: Option<Instant>,
    /// The validation budget's end and its length in milliseconds, while
    /// [`Registry::run`](crate::Registry::run) runs.
    budget: Cell<Option<(Instant, u64)>>,
    cache: RefCell<BTreeMap<String, Rc<RootElements>>>,
    /// Walks validators made of structures that are not roots (Linux's run queues, …).
    walks: RefCell<Vec<StructureWalk>>,
    locks: RefCell<BTreeMap<u64, Option<HeldLock>>>,
}

/// A lock that was held when the guest was frozen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    /// Address of its lock word.
    pub word: u64,
    /// Its name: its own (`Spinlock.name`), its symbol, or its address.
    pub name: String,
    /// The CPU that held it, when the lock records one.
    pub owner: Option<u32>,
}

impl HeldLock {
    /// "lock run_queue was held by CPU 1" (or "... was held (its owner is not recorded)").
    pub fn held(&self) -> String {
        format!(
            "lock {} was held {}",
            self.name,
            match self.owner {
                Some(c) => format!("by CPU {c}"),
                None => "(its owner is not recorded)".into(),
            }
        )
    }
}

/// Paces a validator's loop: [`stop`](Pace::stop) looks at the clock on its first call
/// and every 256th after, and says when the validation budget or the deadline has
/// passed.
pub struct Pace<'c, 'a> {
    ctx: &'c Context<'a>,
    calls: u64,
    stopped: bool,
}

impl Pace<'_, '_> {
    /// Whether to stop now. Once it said so, it keeps saying so.
    pub fn stop(&mut self) -> bool {
        if !self.stopped && self.calls.is_multiple_of(PACE_EVERY) {
            self.stopped = self.ctx.out_of_time();
        }
        self.calls += 1;
        self.stopped
    }
}

/// One validator's findings on one root, at most [`MAX_FINDINGS_PER_ROOT`] of them;
/// [`finish`](RootFindings::finish) adds one finding counting the rest.
pub struct RootFindings<'o> {
    out: &'o mut Vec<Finding>,
    kept: usize,
    dropped: u64,
}

impl<'o> RootFindings<'o> {
    /// Collects into `out`.
    pub fn new(out: &'o mut Vec<Finding>) -> Self {
        RootFindings {
            out,
            kept: 0,
            dropped: 0,
        }
    }

    /// Adds a finding, or counts it past the cap.
    pub fn push(&mut self, f: Finding) {
        if self.kept < MAX_FINDINGS_PER_ROOT {
            self.out.push(f);
            self.kept += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// Says how many were not listed, if any.
    pub fn finish(self, ctx: &Context<'_>, validator: &str, root: &str) {
        if self.dropped > 0 {
            self.out.push(
                ctx.note(
                    validator,
                    Severity::Warning,
                    root,
                    format!(
                        "{} more findings of {validator} on {root} are not listed (at most \
                         {MAX_FINDINGS_PER_ROOT} per root)",
                        self.dropped
                    ),
                )
                .with_kind(FindingKind::Diagnosis),
            );
        }
    }
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
            deadline: None,
            budget: Cell::new(None),
            cache: RefCell::new(BTreeMap::new()),
            walks: RefCell::new(Vec::new()),
            locks: RefCell::new(BTreeMap::new()),
        }
    }

    /// Starts the validation budget: `budget_ms` from now (see [`out_of_time`]).
    ///
    /// [`out_of_time`]: Self::out_of_time
    pub fn start_budget(&self, budget_ms: u64) {
        // A budget too long to represent is no budget.
        let end = Instant::now().checked_add(Duration::from_millis(budget_ms));
        self.budget.set(end.map(|end| (end, budget_ms)));
    }

    /// Ends the validation budget (the deadline still holds).
    pub fn end_budget(&self) {
        self.budget.set(None);
    }

    /// Whether validators must stop: the validation budget is spent or the diagnosis
    /// deadline has passed.
    pub fn out_of_time(&self) -> bool {
        self.stop_reason().is_some()
    }

    /// Why validators must stop, if they must: "the validation budget of 5000 ms ran
    /// out", "the diagnosis deadline passed".
    pub fn stop_reason(&self) -> Option<String> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return Some("the diagnosis deadline passed".into());
        }
        match self.budget.get() {
            Some((end, ms)) if now >= end => {
                Some(format!("the validation budget of {ms} ms ran out"))
            }
            _ => None,
        }
    }

    /// A pacer for a validator's loop (see [`Pace`]).
    pub fn pace(&self) -> Pace<'_, 'a> {
        Pace {
            ctx: self,
            calls: 0,
            stopped: false,
        }
    }

    /// The finding a validator adds when it stopped early on `root`: what was not
    /// checked (`left`, e.g. "elements 512 to 1023"), and why.
    pub fn budget_note(&self, validator: &str, root: &str, left: &str) -> Finding {
        let why = self
            .stop_reason()
            .unwrap_or_else(|| "its budget ran out".into());
        self.budget_note_because(validator, root, left, &why)
    }

    /// [`budget_note`](Self::budget_note) for a validator's own limit, `why`.
    pub fn budget_note_because(
        &self,
        validator: &str,
        root: &str,
        left: &str,
        why: &str,
    ) -> Finding {
        self.note(
            validator,
            Severity::Warning,
            root,
            format!("{validator} stopped early on {root} ({why}): {left} not checked"),
        )
        .with_kind(FindingKind::Diagnosis)
    }

    /// The limits of a walk started now: the configured ones, cut to what is left before
    /// the validation budget's end or the deadline.
    pub fn walk_limits(&self) -> WalkLimits {
        let now = Instant::now();
        let mut limits = self.limits;
        for end in [self.deadline, self.budget.get().map(|b| b.0)]
            .into_iter()
            .flatten()
        {
            limits.time_budget = limits.time_budget.min(end.saturating_duration_since(now));
        }
        limits
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

    /// The elements of `root`, enumerated (and walked, for lists) once. The first list
    /// asked for has every list root walked with it, interleaved ([`walk::walk_lists`]:
    /// several cache misses in flight rather than one), since validators go through them
    /// all.
    pub fn elements(&self, root: &Root) -> Rc<RootElements> {
        if let Some(e) = self.cache.borrow().get(&root.name) {
            return e.clone();
        }
        if root.kind == RootKind::List {
            self.walk_lists();
            if let Some(e) = self.cache.borrow().get(&root.name) {
                return e.clone();
            }
        }
        let e = Rc::new(self.enumerate(root));
        self.cache.borrow_mut().insert(root.name.clone(), e.clone());
        e
    }

    /// Says that a validator walked a structure that is not a root, for the report's
    /// "structures walked".
    pub fn record_walk(&self, walk: StructureWalk) {
        self.walks.borrow_mut().push(walk);
    }

    /// Every root enumerated so far, and every other structure a validator walked
    /// ([`record_walk`](Self::record_walk)), as the report's "structures walked".
    pub fn structures(&self) -> Vec<StructureWalk> {
        let cache = self.cache.borrow();
        let walks = self.walks.borrow();
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
            .chain(walks.iter().cloned())
            .collect()
    }

    fn enumerate(&self, root: &Root) -> RootElements {
        if let Some(why) = self.stop_reason() {
            return RootElements {
                elements: Vec::new(),
                list: None,
                end: outcome("timed_out", None, format!("not enumerated: {why}")),
            };
        }
        let limits = self.walk_limits();
        let mut e = match root.kind {
            RootKind::Object => RootElements {
                elements: vec![Element {
                    index: 0,
                    addr: root.address,
                }],
                list: None,
                end: outcome("complete", None, String::new()),
            },
            RootKind::Array | RootKind::Ring => {
                let pointers =
                    root.kind == RootKind::Array && root.has_flag(root_flags::POINTER_ELEMENTS);
                let w = walk::walk_array(
                    self.program,
                    root.address,
                    root.element_size as u64,
                    root.max_count as u64,
                    pointers,
                    limits,
                );
                RootElements {
                    elements: w
                        .elements
                        .iter()
                        .map(|e| Element {
                            index: e.index,
                            addr: e.addr,
                        })
                        .collect(),
                    list: None,
                    end: walk_outcome(&w.end, 0),
                }
            }
            RootKind::List => {
                let singly = root.has_flag(root_flags::SINGLY_LINKED);
                list_elements(
                    root,
                    walk::walk_list(self.program, root.address, singly, limits),
                )
            }
            RootKind::Tree => {
                let limits = WalkLimits {
                    max_nodes: limits.max_nodes.min(root.max_count as u64),
                    ..limits
                };
                let w =
                    walk::walk_tree(self.program, root.address, root.link_offset as u64, limits);
                RootElements {
                    elements: w
                        .nodes
                        .iter()
                        .enumerate()
                        .map(|(i, &addr)| Element {
                            index: i as u64,
                            addr,
                        })
                        .collect(),
                    list: None,
                    end: walk_outcome(&w.end, 0),
                }
            }
        };
        self.say_why_cut(&mut e);
        e
    }

    /// Walks every list root not walked yet, together, into the cache.
    fn walk_lists(&self) {
        if self.stop_reason().is_some() {
            return; // `enumerate` says so, root by root.
        }
        let lists: Vec<&Root> = {
            let cache = self.cache.borrow();
            self.roots()
                .iter()
                .filter(|r| r.kind == RootKind::List && !cache.contains_key(&r.name))
                .collect()
        };
        let heads: Vec<(u64, bool)> = lists
            .iter()
            .map(|r| (r.address, r.has_flag(root_flags::SINGLY_LINKED)))
            .collect();
        let walks = walk::walk_lists(self.program, &heads, self.walk_limits());
        for (root, w) in lists.into_iter().zip(walks) {
            let mut e = list_elements(root, w);
            self.say_why_cut(&mut e);
            self.cache
                .borrow_mut()
                .insert(root.name.clone(), Rc::new(e));
        }
    }

    /// Says which budget cut a walk short.
    fn say_why_cut(&self, e: &mut RootElements) {
        if e.end.kind == "timed_out" {
            let why = self.stop_reason().unwrap_or_else(|| {
                format!(
                    "the walk budget of {} ms ran out",
                    self.limits.time_budget.as_millis()
                )
            });
            e.end.detail = format!("{}: {why}", e.end.detail);
        }
    }

    /// The lock protecting `root`, if it was held when the guest was frozen (read once
    /// per lock). With [`root_flags::LOCK_BYTE`] only the low byte of the lock word says
    /// so (a reader-writer lock write-held; readers count above it).
    pub fn lock_held(&self, root: &Root) -> Option<HeldLock> {
        if root.lock == 0 {
            return None;
        }
        let byte = root.has_flag(root_flags::LOCK_BYTE);
        let key = root.lock ^ u64::from(byte) << 63;
        if let Some(l) = self.locks.borrow().get(&key) {
            return l.clone();
        }
        let word = if byte {
            self.program.read_u8(root.lock).ok().map(u32::from)
        } else {
            self.program.read_u32(root.lock).ok()
        };
        // A byte lock is a reader-writer lock, not a spinlock that records its owner.
        let held = word.filter(|&w| w != 0).map(|_| HeldLock {
            word: root.lock,
            name: self.lock_name(root.lock, !byte),
            owner: if byte {
                None
            } else {
                self.lock_owner(root.lock)
            },
        });
        self.locks.borrow_mut().insert(key, held.clone());
        held
    }

    /// The name of the lock whose lock word is at `word`: `Spinlock.name` when it is a
    /// `spinlock` whose layout is known, else the symbol there, else the address.
    fn lock_name(&self, word: u64, spinlock: bool) -> String {
        let own = spinlock.then(|| {
            let locked = self.member("Spinlock", "locked")?;
            let name = self.member("Spinlock", "name")?;
            name.object(self.program, word.wrapping_sub(locked.offset()))
                .read_cstr(16)
                .ok()
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic()))
        });
        own.flatten()
            .or_else(|| {
                let (sym, off) = self.program.symbols()?.lookup_addr(word)?;
                Some(if off == 0 {
                    sym.to_string()
                } else {
                    format!("{sym}+{off:#x}")
                })
            })
            .unwrap_or_else(|| format!("{word:#x}"))
    }

    /// A structural finding about `roots` as it is reported: unchanged when none of
    /// their locks was held or the data is `garbage` (unreadable, or a value no update
    /// could have written); otherwise a [`FindingKind::MidUpdate`] at severity info that
    /// names the held lock and its owner (see the module documentation).
    pub fn structural(&self, roots: &[&Root], f: Finding, garbage: bool) -> Finding {
        if garbage {
            return f;
        }
        let Some(lock) = roots.iter().find_map(|r| self.lock_held(r)) else {
            return f;
        };
        Finding {
            severity: Severity::Info,
            kind: FindingKind::MidUpdate,
            message: format!(
                "mid-update: {}; {} when the guest was frozen, so it was most likely being \
                 changed, not corrupted",
                f.message,
                lock.held()
            ),
            ..f
        }
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

/// A list root's elements from its walk.
fn list_elements(root: &Root, w: ListWalk) -> RootElements {
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

fn outcome(kind: &str, at: Option<u64>, detail: String) -> WalkOutcome {
    WalkOutcome {
        kind: kind.into(),
        at: at.map(Hex),
        detail,
    }
}

/// A walk's end as the report says it, with addresses of link fields turned into
/// addresses of elements (`link_offset` before them; 0 for walks of element addresses).
pub fn walk_outcome(end: &WalkEnd, link_offset: u64) -> WalkOutcome {
    match end {
        WalkEnd::Complete => outcome("complete", None, String::new()),
        WalkEnd::Cycle {
            closing_node,
            first_repeated,
        } => outcome(
            "cycle",
            Some(closing_node.wrapping_sub(link_offset)),
            format!(
                "element {:#x} links back to element {:#x}",
                closing_node.wrapping_sub(link_offset),
                first_repeated.wrapping_sub(link_offset)
            ),
        ),
        WalkEnd::LimitHit { limit } => {
            outcome("limit", None, format!("stopped after {limit} elements"))
        }
        WalkEnd::Unreadable { at, error } => outcome(
            "unreadable",
            Some(at.wrapping_sub(link_offset)),
            error.clone(),
        ),
        WalkEnd::TimedOut { after } => {
            outcome("timed_out", None, format!("stopped after {after:?}"))
        }
    }
}

/// A list walk's end as the report says it.
pub fn report_end(end: &WalkEnd, root: &Root) -> WalkOutcome {
    walk_outcome(end, root.link_offset as u64)
}
