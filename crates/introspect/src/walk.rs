//! Bounded walkers over guest structures: intrusive linked lists, arrays and rings.
//!
//! Every walk has a node limit and a time budget, detects cycles (Brent's algorithm, in
//! constant extra memory while walking), and reports how it ended in a [`WalkEnd`]
//! rather than failing: a corrupt structure is a finding, never a hang or a panic.
//!
//! The list walker is the hot path of a diagnosis. It reads each next pointer through the
//! program's translation cache and zero-copy memory slices and does no allocation per
//! node beyond the amortized growth of the result vector.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::program::{PageWindow, Program};
use crate::Result;

/// How far a walk may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// Most nodes (elements) visited.
    pub max_nodes: u64,
    /// Most wall-clock time spent.
    pub time_budget: Duration,
}

impl WalkLimits {
    /// Limits of `max_nodes` nodes and `time_budget`.
    pub fn new(max_nodes: u64, time_budget: Duration) -> WalkLimits {
        WalkLimits {
            max_nodes,
            time_budget,
        }
    }
}

impl Default for WalkLimits {
    /// A million nodes, one second.
    fn default() -> WalkLimits {
        WalkLimits::new(1 << 20, Duration::from_secs(1))
    }
}

/// How a walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkEnd {
    /// It reached the end of the structure.
    Complete,
    /// A cycle that does not pass through the list head.
    Cycle {
        /// The node whose next pointer closes the cycle (the last node before the first
        /// repeated one).
        closing_node: u64,
        /// The first node visited twice (where the cycle starts).
        first_repeated: u64,
    },
    /// The node limit was reached with more nodes to go.
    LimitHit {
        /// The limit.
        limit: u64,
    },
    /// A pointer could not be followed.
    Unreadable {
        /// The node (or head, or slot) whose field held the bad pointer.
        at: u64,
        /// What went wrong.
        error: String,
    },
    /// The time budget ran out.
    TimedOut {
        /// Time spent.
        after: Duration,
    },
}

/// The result of a list walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListWalk {
    /// Addresses of the link fields visited, in order, without the head; each at most
    /// once (a cycle's nodes are listed once).
    pub links: Vec<u64>,
    /// How it ended.
    pub end: WalkEnd,
}

/// How often (in nodes) the clock is looked at.
const CLOCK_EVERY: usize = 1024;

/// Walks an intrusive linked list.
///
/// * Doubly linked (`singly == false`): `head` is a sentinel `{next, prev}` (Linux's
///   `list_head`); the walk follows `next` until it is back at `head`.
/// * Singly linked: `head` is a pointer variable holding the first link; a NULL next
///   pointer ends the list.
///
/// Link pointers point at the next element's link field, whose first word is its next
/// pointer. A NULL (doubly linked), non-canonical or unreadable next pointer ends the
/// walk as [`WalkEnd::Unreadable`] naming the node whose field held it. Checks run in
/// this order for each next pointer: end of list, NULL or non-canonical, already visited
/// (a cycle), node limit reached, then the node is read; so a list that is cut exactly
/// after `max_nodes` nodes ends as [`WalkEnd::LimitHit`], not `Unreadable`.
pub fn walk_list(prog: &Program, head: u64, singly: bool, limits: WalkLimits) -> ListWalk {
    let mut cursor = match ListCursor::start(prog, head, singly, limits) {
        Ok(c) => c,
        Err(done) => return done,
    };
    loop {
        if let Some(done) = cursor.step(prog) {
            return done;
        }
    }
}

/// Walks several lists at once, interleaved: one node of each list in turn, the next
/// node of every list prefetched while the others are read, so that as many cache misses
/// are in flight as there are lists instead of one. Each walk is exactly what
/// [`walk_list`] returns for its `(head, singly)`, with its own node limit; the time
/// budget runs from the start for all of them.
///
/// A lone pointer chase waits for one memory access per node; a diagnosis walks many
/// independent lists (every root's, every slab cache's free list), and the memory system
/// serves several misses at a time.
pub fn walk_lists(prog: &Program, heads: &[(u64, bool)], limits: WalkLimits) -> Vec<ListWalk> {
    let mut done: Vec<Option<ListWalk>> = vec![None; heads.len()];
    let mut active: Vec<(usize, ListCursor<'_>)> = Vec::with_capacity(heads.len());
    for (i, &(head, singly)) in heads.iter().enumerate() {
        match ListCursor::start(prog, head, singly, limits) {
            Ok(mut c) => {
                c.prefetch_next(prog);
                active.push((i, c));
            }
            Err(walk) => done[i] = Some(walk),
        }
    }
    while !active.is_empty() {
        let mut k = 0;
        while k < active.len() {
            match active[k].1.step(prog) {
                Some(walk) => {
                    let (i, _) = active.swap_remove(k);
                    done[i] = Some(walk);
                }
                None => {
                    active[k].1.prefetch_next(prog);
                    k += 1;
                }
            }
        }
    }
    done.into_iter()
        .map(|w| w.expect("every walk ended"))
        .collect()
}

/// Asks the CPU to start loading the cache line at `p`, without waiting for it.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults and reads nothing architecturally,
    // whatever the address; SSE (which provides it) is part of the x86-64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One list walk in progress: [`walk_list`] runs it to the end, [`walk_lists`] steps
/// several in turn.
struct ListCursor<'p> {
    limits: WalkLimits,
    started: Instant,
    links: Vec<u64>,
    /// The value that ends the list: the head (doubly linked) or NULL (singly).
    end_marker: u64,
    /// The node (or head) whose next pointer is `cand`.
    holder: u64,
    /// The next link to visit.
    cand: u64,
    /// Brent: `saved` is compared with every new node; it moves forward at powers of two.
    saved: u64,
    saved_idx: usize,
    power: u64,
    lam: u64,
    /// The page `cand` was last found in: nodes in one page need one translation.
    window: Option<PageWindow<'p>>,
}

impl<'p> ListCursor<'p> {
    /// Reads the head; a head that cannot be read is a finished walk.
    fn start(
        prog: &'p Program,
        head: u64,
        singly: bool,
        limits: WalkLimits,
    ) -> Result<ListCursor<'p>, ListWalk> {
        let links = Vec::with_capacity(limits.max_nodes.min(1024) as usize);
        let cand = match prog.read_u64(head) {
            Ok(v) => v,
            Err(e) => {
                return Err(ListWalk {
                    links,
                    end: WalkEnd::Unreadable {
                        at: head,
                        error: format!("cannot read the list head: {e}"),
                    },
                })
            }
        };
        Ok(ListCursor {
            limits,
            started: Instant::now(),
            links,
            end_marker: if singly { 0 } else { head },
            holder: head,
            cand,
            saved: 0,
            saved_idx: usize::MAX,
            power: 1,
            lam: 0,
            window: None,
        })
    }

    fn finish(&mut self, end: WalkEnd) -> Option<ListWalk> {
        Some(ListWalk {
            links: std::mem::take(&mut self.links),
            end,
        })
    }

    fn unreadable(&mut self, error: String) -> Option<ListWalk> {
        let at = self.holder;
        self.finish(WalkEnd::Unreadable { at, error })
    }

    /// Finds the page of `cand` and starts loading its line, so that the read in the next
    /// [`step`](Self::step) finds it in cache when other lists were stepped meanwhile
    /// (only [`walk_lists`] does this: a lone walk would gain nothing from it).
    #[inline]
    fn prefetch_next(&mut self, prog: &'p Program) {
        let cand = self.cand;
        if cand == self.end_marker || cand == 0 {
            return;
        }
        if self.window.and_then(|w| w.read_u64(cand)).is_none() {
            self.window = prog.page_window(cand);
        }
        if let Some(w) = self.window {
            if let Some(byte) = w.bytes.get(cand.wrapping_sub(w.base) as usize) {
                prefetch(byte);
            }
        }
    }

    /// Visits one node; the walk's result when that ends it.
    #[inline]
    fn step(&mut self, prog: &'p Program) -> Option<ListWalk> {
        let cand = self.cand;
        if cand == self.end_marker {
            return self.finish(WalkEnd::Complete);
        }
        if cand == 0 {
            return self.unreadable("next pointer is NULL".into());
        }
        if !prog.translator().paging().is_canonical(cand) {
            return self.unreadable(format!("next pointer {cand:#x} is not canonical"));
        }
        if cand == self.saved && self.saved_idx != usize::MAX {
            let lambda = self.links.len() - self.saved_idx;
            return Some(brent_cycle(
                std::mem::take(&mut self.links),
                cand,
                self.saved_idx,
                lambda,
            ));
        }
        if self.links.len() as u64 >= self.limits.max_nodes {
            return Some(exact_cycle_or_limit(
                std::mem::take(&mut self.links),
                cand,
                self.limits.max_nodes,
            ));
        }
        if self.links.len() % CLOCK_EVERY == CLOCK_EVERY - 1 {
            let after = self.started.elapsed();
            if after > self.limits.time_budget {
                return self.finish(WalkEnd::TimedOut { after });
            }
        }
        // The next pointer: from the current page window when the node lies in it (no
        // translation at all), else through a new window, else the checked slow path
        // (which also produces the error).
        let next = match self.window.and_then(|w| w.read_u64(cand)) {
            Some(v) => v,
            None => {
                self.window = prog.page_window(cand);
                match self.window.and_then(|w| w.read_u64(cand)) {
                    Some(v) => v,
                    None => match prog.read_u64(cand) {
                        Ok(v) => v,
                        Err(e) => {
                            return self.unreadable(format!(
                                "cannot read the next pointer at {cand:#x}: {e}"
                            ))
                        }
                    },
                }
            }
        };
        self.links.push(cand);
        self.lam += 1;
        if self.lam == self.power {
            self.saved = cand;
            self.saved_idx = self.links.len() - 1;
            self.power = self.power.saturating_mul(2);
            self.lam = 0;
        }
        self.holder = cand;
        self.cand = next;
        None
    }
}

/// Brent found `cand` (which would be at index `links.len()`) equal to the node at
/// `saved_idx`, `lambda` steps earlier: locate where the cycle starts.
fn brent_cycle(mut links: Vec<u64>, cand: u64, saved_idx: usize, lambda: usize) -> ListWalk {
    let seq = |j: usize| if j < links.len() { links[j] } else { cand };
    // The first repeated node is the first index mu with seq(mu) == seq(mu + lambda);
    // mu <= saved_idx because the saved node is inside the cycle.
    let mu = (0..=saved_idx)
        .find(|&i| seq(i) == seq(i + lambda))
        .unwrap_or(saved_idx);
    let end = WalkEnd::Cycle {
        closing_node: links[mu + lambda - 1],
        first_repeated: links[mu],
    };
    links.truncate(mu + lambda);
    ListWalk { links, end }
}

/// At the node limit: a cycle among the nodes seen (which Brent may not have caught yet)
/// is reported as such; otherwise the limit. Exact, with 4 bytes of scratch per node
/// (an index sort) rather than a hash set.
fn exact_cycle_or_limit(mut links: Vec<u64>, cand: u64, limit: u64) -> ListWalk {
    let seq = |j: usize| if j < links.len() { links[j] } else { cand };
    let n = links.len() + 1;
    // The first index j whose node appeared before: the minimum, over every group of equal
    // addresses, of the group's second-smallest index.
    let mut first_repeat: Option<usize> = None;
    if let Ok(n32) = u32::try_from(n) {
        let mut idx: Vec<u32> = (0..n32).collect();
        idx.sort_unstable_by_key(|&j| (seq(j as usize), j));
        for w in idx.windows(2) {
            if seq(w[0] as usize) == seq(w[1] as usize) {
                let j = w[1] as usize;
                first_repeat = Some(first_repeat.map_or(j, |f| f.min(j)));
            }
        }
    } else {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        first_repeat = (0..n).find(|&j| seen.insert(seq(j), j).is_some());
    }
    match first_repeat {
        Some(j) => {
            let first_repeated = seq(j);
            let end = WalkEnd::Cycle {
                closing_node: links[j - 1],
                first_repeated,
            };
            links.truncate(j);
            ListWalk { links, end }
        }
        None => ListWalk {
            links,
            end: WalkEnd::LimitHit { limit },
        },
    }
}

/// A node of a doubly linked list whose `prev` pointer does not point at the node before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevMismatch {
    /// The node (link field address; the head for the head).
    pub node: u64,
    /// The node before it in the walk.
    pub expected_prev: u64,
    /// Its `prev` pointer (0 when it cannot be read: see `prev_readable`).
    pub found_prev: u64,
    /// Whether the `prev` pointer could be read at all (it can only fail when the link
    /// field straddles a page boundary into unmapped memory).
    pub prev_readable: bool,
}

/// Checks the `prev` pointers (the word after `next`) of a doubly linked list walked
/// with [`walk_list`]: each node's must be the node before it, the first node's the head,
/// and — when the walk completed — the head's the last node.
pub fn check_prev(prog: &Program, head: u64, walk: &ListWalk) -> Vec<PrevMismatch> {
    let unbounded = WalkLimits::new(u64::MAX, Duration::MAX);
    check_prev_within(prog, head, walk, unbounded)
        .0
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// One element of an array walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayElement {
    /// Its index (slot) in the array.
    pub index: u64,
    /// Its address.
    pub addr: u64,
    /// Why it cannot be read, if it cannot (an unmapped element, a non-canonical pointer).
    pub problem: Option<String>,
}

/// The result of an array walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayWalk {
    /// The elements, in index order (for pointer arrays: the non-NULL slots only).
    pub elements: Vec<ArrayElement>,
    /// How it ended.
    pub end: WalkEnd,
}

/// Walks `count` elements of `element_size` bytes at `base`, or, with
/// `pointer_elements`, `count` pointer slots at `base` (NULL = empty) each to one element.
/// Elements that are not entirely mapped are kept with a problem; an unreadable pointer
/// slot ends the walk.
pub fn walk_array(
    prog: &Program,
    base: u64,
    element_size: u64,
    count: u64,
    pointer_elements: bool,
    limits: WalkLimits,
) -> ArrayWalk {
    let started = Instant::now();
    let paging = prog.translator().paging();
    let mut elements = Vec::with_capacity(count.min(limits.max_nodes).min(4096) as usize);
    let stride = if pointer_elements { 8 } else { element_size };
    let end = 'walk: {
        for i in 0..count {
            if i >= limits.max_nodes {
                break 'walk WalkEnd::LimitHit {
                    limit: limits.max_nodes,
                };
            }
            if i as usize % CLOCK_EVERY == CLOCK_EVERY - 1 {
                let after = started.elapsed();
                if after > limits.time_budget {
                    break 'walk WalkEnd::TimedOut { after };
                }
            }
            let Some(slot) = i.checked_mul(stride).and_then(|o| base.checked_add(o)) else {
                break 'walk WalkEnd::Unreadable {
                    at: base,
                    error: format!("element {i} lies beyond the end of the address space"),
                };
            };
            let addr = if pointer_elements {
                match prog.read_u64(slot) {
                    Ok(0) => continue,
                    Ok(p) => p,
                    Err(e) => {
                        break 'walk WalkEnd::Unreadable {
                            at: slot,
                            error: format!("cannot read pointer slot {i}: {e}"),
                        }
                    }
                }
            } else {
                slot
            };
            let problem = if !paging.is_canonical(addr) {
                Some(format!("{addr:#x} is not canonical"))
            } else {
                unmapped_in(prog, addr, element_size)
            };
            elements.push(ArrayElement {
                index: i,
                addr,
                problem,
            });
        }
        WalkEnd::Complete
    };
    ArrayWalk { elements, end }
}

/// Why `[addr, addr + len)` is not entirely readable, if it is not.
fn unmapped_in(prog: &Program, addr: u64, len: u64) -> Option<String> {
    let last = match addr.checked_add(len.max(1) - 1) {
        Some(l) => l,
        None => return Some(format!("{addr:#x}+{len:#x} runs off the address space")),
    };
    let mut va = addr;
    loop {
        match prog.translation(va) {
            Ok(t) => {
                if prog.memory().slice(t.pa, 1).is_none() && prog.read_phys(t.pa, &mut [0]).is_err()
                {
                    return Some(format!(
                        "{va:#x} maps to guest-physical {:#x} outside memory",
                        t.pa
                    ));
                }
                let next = (va | (t.page_size - 1)).checked_add(1)?;
                if next > last {
                    return None;
                }
                va = next;
            }
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// Most slots [`read_ring`] looks at.
pub const MAX_RING_SLOTS: u64 = 1 << 24;

/// The result of a ring read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingRead {
    /// `(seq, slot address)` of the records present, oldest first.
    pub records: Vec<(u64, u64)>,
    /// Slots whose sequence number could not be read: each costs its record, not the
    /// ring. `(seq, slot address)`, oldest first.
    pub unreadable: Vec<(u64, u64)>,
    /// How the read ended: complete, or cut by the node limit (the newest records are
    /// kept) or the time budget.
    pub end: WalkEnd,
}

/// Reads a ring of `capacity` slots of `slot_size` bytes at `slots_addr`, where record
/// `seq` lives in slot `seq % capacity` with its sequence number stored at `seq_offset`
/// in the slot, and the `u64` at `next_seq_addr` is the sequence number of the next
/// record to be written. Returns `(seq, slot address)` of the records present, oldest
/// first; slots whose stored sequence number differs (being written, or overwritten) are
/// skipped, and so are slots that cannot be read (see [`read_ring_within`] for which).
/// Fails only if the counter cannot be read. Bounded by [`WalkLimits::default`].
pub fn read_ring(
    prog: &Program,
    slots_addr: u64,
    slot_size: u64,
    capacity: u64,
    next_seq_addr: u64,
    seq_offset: u64,
) -> Result<Vec<(u64, u64)>> {
    read_ring_within(
        prog,
        slots_addr,
        slot_size,
        capacity,
        next_seq_addr,
        seq_offset,
        WalkLimits::default(),
    )
    .map(|r| r.records)
}

/// [`read_ring`] under `limits`: at most `limits.max_nodes` slots (the newest) and
/// `limits.time_budget`, saying which slots could not be read and how the read ended.
pub fn read_ring_within(
    prog: &Program,
    slots_addr: u64,
    slot_size: u64,
    capacity: u64,
    next_seq_addr: u64,
    seq_offset: u64,
    limits: WalkLimits,
) -> Result<RingRead> {
    let started = Instant::now();
    let capacity = capacity.min(MAX_RING_SLOTS);
    let mut ring = RingRead {
        records: Vec::new(),
        unreadable: Vec::new(),
        end: WalkEnd::Complete,
    };
    if capacity == 0 {
        return Ok(ring);
    }
    let next = prog.read_u64(next_seq_addr)?;
    let mut first = next.saturating_sub(capacity);
    if next - first > limits.max_nodes {
        first = next - limits.max_nodes;
        ring.end = WalkEnd::LimitHit {
            limit: limits.max_nodes,
        };
    }
    ring.records.reserve((next - first).min(4096) as usize);
    for (k, seq) in (first..next).enumerate() {
        if k % CLOCK_EVERY == CLOCK_EVERY - 1 {
            let after = started.elapsed();
            if after > limits.time_budget {
                ring.end = WalkEnd::TimedOut { after };
                break;
            }
        }
        let slot_addr = slots_addr.wrapping_add((seq % capacity).wrapping_mul(slot_size));
        match prog.read_u64(slot_addr.wrapping_add(seq_offset)) {
            Ok(stored) if stored == seq => ring.records.push((seq, slot_addr)),
            Ok(_) => {}
            Err(_) => ring.unreadable.push((seq, slot_addr)),
        }
    }
    Ok(ring)
}

/// [`check_prev`] under `limits` (nodes checked and time): the mismatches found, each
/// with the index of its node in `walk.links` (`None` for the head), and how the check
/// ended ([`WalkEnd::Complete`] when every node was checked).
pub fn check_prev_within(
    prog: &Program,
    head: u64,
    walk: &ListWalk,
    limits: WalkLimits,
) -> (Vec<(Option<usize>, PrevMismatch)>, WalkEnd) {
    let started = Instant::now();
    let mut out = Vec::new();
    let check = |out: &mut Vec<_>, index: Option<usize>, node: u64, expected_prev: u64| {
        let found = prog.read_u64(node.wrapping_add(8)).ok();
        if found != Some(expected_prev) {
            out.push((
                index,
                PrevMismatch {
                    node,
                    expected_prev,
                    found_prev: found.unwrap_or(0),
                    prev_readable: found.is_some(),
                },
            ));
        }
    };
    let mut expected = head;
    for (i, &n) in walk.links.iter().enumerate() {
        if i as u64 >= limits.max_nodes {
            return (
                out,
                WalkEnd::LimitHit {
                    limit: limits.max_nodes,
                },
            );
        }
        if i % CLOCK_EVERY == CLOCK_EVERY - 1 {
            let after = started.elapsed();
            if after > limits.time_budget {
                return (out, WalkEnd::TimedOut { after });
            }
        }
        check(&mut out, Some(i), n, expected);
        expected = n;
    }
    if walk.end == WalkEnd::Complete {
        check(&mut out, None, head, expected);
    }
    (out, WalkEnd::Complete)
}

/// The result of a tree walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeWalk {
    /// The nodes visited, depth first (left subtree first), each once.
    pub nodes: Vec<u64>,
    /// How it ended. A node reachable twice (a cycle, or two parents) ends it as
    /// [`WalkEnd::Cycle`] with `closing_node` the parent that links to it again and
    /// `first_repeated` the node.
    pub end: WalkEnd,
}

/// Walks a binary tree depth first. `root_ptr` is the address of a pointer variable
/// holding the root node (0 = empty); every node holds its left and right child pointers
/// (node addresses, 0 = none) at `link_offset` and `link_offset + 8`. Bounded by
/// `limits` (nodes and time); the pending stack never holds more than twice the node
/// limit. A child that cannot be followed (its pointer non-canonical, its links
/// unreadable) ends the walk as [`WalkEnd::Unreadable`] naming the node that points to it
/// (or `root_ptr`), as list walks do.
pub fn walk_tree(prog: &Program, root_ptr: u64, link_offset: u64, limits: WalkLimits) -> TreeWalk {
    let started = Instant::now();
    let paging = prog.translator().paging();
    let mut nodes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // (node, its parent)
    let mut stack: Vec<(u64, u64)> = match prog.read_u64(root_ptr) {
        Ok(0) => vec![],
        Ok(p) => vec![(p, root_ptr)],
        Err(e) => {
            return TreeWalk {
                nodes,
                end: WalkEnd::Unreadable {
                    at: root_ptr,
                    error: format!("cannot read the tree's root pointer: {e}"),
                },
            }
        }
    };
    while let Some((node, parent)) = stack.pop() {
        if !paging.is_canonical(node) {
            return TreeWalk {
                nodes,
                end: WalkEnd::Unreadable {
                    at: parent,
                    error: format!("child pointer {node:#x} is not canonical"),
                },
            };
        }
        if !seen.insert(node) {
            return TreeWalk {
                nodes,
                end: WalkEnd::Cycle {
                    closing_node: parent,
                    first_repeated: node,
                },
            };
        }
        if nodes.len() as u64 >= limits.max_nodes {
            return TreeWalk {
                nodes,
                end: WalkEnd::LimitHit {
                    limit: limits.max_nodes,
                },
            };
        }
        if nodes.len() % CLOCK_EVERY == CLOCK_EVERY - 1 {
            let after = started.elapsed();
            if after > limits.time_budget {
                return TreeWalk {
                    nodes,
                    end: WalkEnd::TimedOut { after },
                };
            }
        }
        let link = node.wrapping_add(link_offset);
        let children = prog
            .read_u64(link)
            .and_then(|l| Ok((l, prog.read_u64(link.wrapping_add(8))?)));
        let (left, right) = match children {
            Ok(c) => c,
            Err(e) => {
                return TreeWalk {
                    nodes,
                    end: WalkEnd::Unreadable {
                        at: parent,
                        error: format!("cannot read the child pointers of node {node:#x}: {e}"),
                    },
                }
            }
        };
        nodes.push(node);
        // Right first, so that the left subtree comes out first.
        for child in [right, left] {
            if child != 0 {
                stack.push((child, node));
            }
        }
    }
    TreeWalk {
        nodes,
        end: WalkEnd::Complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RawImage;
    use crate::translate::{PageTableBuilder, Paging};
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    const DIRECT: u64 = 0xffff_8880_0000_0000;
    const VMALLOC: u64 = 0xffff_c900_0000_0000;
    const RAM: usize = 4 << 20;
    /// Where test nodes live (physical).
    const NODES: u64 = 0x20_0000;
    const NODE_SIZE: u64 = 64;
    const LINK: u64 = 16;

    struct Guest {
        b: PageTableBuilder,
    }

    impl Guest {
        fn new() -> Guest {
            let mut b =
                PageTableBuilder::new(vec![0u8; RAM], 0x1000, 0x10_0000, Paging::Four).unwrap();
            b.map_range(DIRECT, 0, RAM as u64, 2 << 20, true, true)
                .unwrap();
            // One 4 KiB page in vmalloc space, then a hole.
            b.map(VMALLOC, 0x18_0000, 4096, true, true).unwrap();
            Guest { b }
        }
        fn put(&mut self, va: u64, v: u64) {
            let pa = (va - DIRECT) as usize;
            self.b.ram_mut()[pa..pa + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn link(i: u64) -> u64 {
            DIRECT + NODES + i * NODE_SIZE + LINK
        }
        fn program(self) -> Program {
            let root = self.b.root();
            Program::new(
                Arc::new(RawImage::from_bytes(self.b.into_ram(), 0)),
                root,
                Paging::Four,
            )
        }
    }

    const HEAD: u64 = DIRECT + 0x10_0000;

    /// A doubly linked list of `n` nodes in order `order`, head at HEAD.
    fn doubly(order: &[u64]) -> Guest {
        let mut g = Guest::new();
        let mut prev = HEAD;
        for &i in order {
            let l = Guest::link(i);
            g.put(prev, l);
            g.put(l + 8, prev);
            prev = l;
        }
        g.put(prev, HEAD);
        g.put(HEAD + 8, prev);
        g
    }

    fn limits(n: u64) -> WalkLimits {
        WalkLimits::new(n, Duration::from_secs(10))
    }

    #[test]
    fn doubly_linked_complete_and_empty() {
        let order: Vec<u64> = (0..100).rev().collect();
        let p = doubly(&order).program();
        let w = walk_list(&p, HEAD, false, limits(1000));
        assert_eq!(w.end, WalkEnd::Complete);
        assert_eq!(
            w.links,
            order.iter().map(|&i| Guest::link(i)).collect::<Vec<_>>()
        );
        assert!(check_prev(&p, HEAD, &w).is_empty());
        // Exactly at the limit is still complete; one less is a limit hit.
        assert_eq!(
            walk_list(&p, HEAD, false, limits(100)).end,
            WalkEnd::Complete
        );
        let w = walk_list(&p, HEAD, false, limits(99));
        assert_eq!(w.end, WalkEnd::LimitHit { limit: 99 });
        assert_eq!(w.links.len(), 99);
        let p = doubly(&[]).program();
        let w = walk_list(&p, HEAD, false, limits(10));
        assert_eq!(
            w,
            ListWalk {
                links: vec![],
                end: WalkEnd::Complete
            }
        );
        assert!(check_prev(&p, HEAD, &w).is_empty());
    }

    #[test]
    fn cycles_name_the_closing_node() {
        // head -> 0 -> 1 -> 2 -> 3 -> 4 -> 2 (cycle not through the head)
        let mut g = doubly(&[0, 1, 2, 3, 4]);
        g.put(Guest::link(4), Guest::link(2));
        let p = g.program();
        let w = walk_list(&p, HEAD, false, limits(1000));
        assert_eq!(
            w.end,
            WalkEnd::Cycle {
                closing_node: Guest::link(4),
                first_repeated: Guest::link(2)
            }
        );
        assert_eq!(w.links, (0..5).map(Guest::link).collect::<Vec<_>>());
        // A self-loop.
        let mut g = doubly(&[0, 1]);
        g.put(Guest::link(1), Guest::link(1));
        let w = walk_list(&g.program(), HEAD, false, limits(1000));
        assert_eq!(
            w.end,
            WalkEnd::Cycle {
                closing_node: Guest::link(1),
                first_repeated: Guest::link(1)
            }
        );
        // A cycle found at the limit, before Brent would have.
        let order: Vec<u64> = (0..50).collect();
        let mut g = doubly(&order);
        g.put(Guest::link(49), Guest::link(0));
        let p = g.program();
        for lim in [50, 51, 60, 1000] {
            let w = walk_list(&p, HEAD, false, limits(lim));
            assert_eq!(
                w.end,
                WalkEnd::Cycle {
                    closing_node: Guest::link(49),
                    first_repeated: Guest::link(0)
                },
                "limit {lim}"
            );
            assert_eq!(w.links.len(), 50);
        }
        assert_eq!(
            walk_list(&p, HEAD, false, limits(49)).end,
            WalkEnd::LimitHit { limit: 49 }
        );
    }

    #[test]
    fn bad_pointers_name_the_node_that_held_them() {
        let mut g = doubly(&[0, 1, 2]);
        g.put(Guest::link(1), 0x0000_8000_0000_0000);
        let w = walk_list(&g.program(), HEAD, false, limits(100));
        assert_eq!(w.links, vec![Guest::link(0), Guest::link(1)]);
        match &w.end {
            WalkEnd::Unreadable { at, error } => {
                assert_eq!(*at, Guest::link(1));
                assert!(error.contains("not canonical"), "{error}");
            }
            e => panic!("{e:?}"),
        }
        let mut g = doubly(&[0, 1, 2]);
        g.put(Guest::link(0), VMALLOC + 8192); // unmapped
        let w = walk_list(&g.program(), HEAD, false, limits(100));
        assert_eq!(w.links, vec![Guest::link(0)]);
        assert!(
            matches!(&w.end, WalkEnd::Unreadable { at, error } if *at == Guest::link(0) && error.contains("not mapped")),
            "{:?}",
            w.end
        );
        let mut g = doubly(&[0]);
        g.put(HEAD, 0);
        let w = walk_list(&g.program(), HEAD, false, limits(100));
        assert!(matches!(&w.end, WalkEnd::Unreadable { at, .. } if *at == HEAD));
        let w = walk_list(&doubly(&[]).program(), VMALLOC + 4096, false, limits(100));
        assert!(
            matches!(&w.end, WalkEnd::Unreadable { at, error } if *at == VMALLOC + 4096 && error.contains("list head"))
        );
    }

    #[test]
    fn prev_mismatches() {
        let mut g = doubly(&[0, 1, 2]);
        g.put(Guest::link(2) + 8, Guest::link(0));
        g.put(HEAD + 8, Guest::link(1));
        let p = g.program();
        let w = walk_list(&p, HEAD, false, limits(100));
        assert_eq!(
            check_prev(&p, HEAD, &w),
            vec![
                PrevMismatch {
                    node: Guest::link(2),
                    expected_prev: Guest::link(1),
                    found_prev: Guest::link(0),
                    prev_readable: true,
                },
                PrevMismatch {
                    node: HEAD,
                    expected_prev: Guest::link(2),
                    found_prev: Guest::link(1),
                    prev_readable: true,
                }
            ]
        );
    }

    #[test]
    fn unreadable_prev_is_reported_as_such() {
        // A link whose next word ends a mapped page and whose prev word is on the
        // unmapped page after it.
        let node = VMALLOC + 4088;
        let mut g = Guest::new();
        g.put(HEAD, node);
        g.put(HEAD + 8, node);
        g.put(DIRECT + 0x18_0000 + 4088, HEAD);
        let p = g.program();
        let w = walk_list(&p, HEAD, false, limits(10));
        assert_eq!(w.end, WalkEnd::Complete);
        assert_eq!(
            check_prev(&p, HEAD, &w),
            vec![PrevMismatch {
                node,
                expected_prev: HEAD,
                found_prev: 0,
                prev_readable: false,
            }]
        );
    }

    #[test]
    fn singly_linked() {
        let mut g = Guest::new();
        g.put(HEAD, Guest::link(3));
        g.put(Guest::link(3), Guest::link(1));
        g.put(Guest::link(1), Guest::link(2));
        g.put(Guest::link(2), 0);
        let p = g.program();
        let w = walk_list(&p, HEAD, true, limits(10));
        assert_eq!(w.end, WalkEnd::Complete);
        assert_eq!(
            w.links,
            vec![Guest::link(3), Guest::link(1), Guest::link(2)]
        );
        let mut g = Guest::new();
        g.put(HEAD, 0);
        let w = walk_list(&g.program(), HEAD, true, limits(10));
        assert_eq!(
            w,
            ListWalk {
                links: vec![],
                end: WalkEnd::Complete
            }
        );
    }

    #[test]
    fn time_budget() {
        let order: Vec<u64> = (0..20_000).collect();
        let p = doubly(&order).program();
        let w = walk_list(&p, HEAD, false, WalkLimits::new(1 << 30, Duration::ZERO));
        assert!(matches!(w.end, WalkEnd::TimedOut { .. }), "{:?}", w.end);
        assert!(w.links.len() < 20_000);
    }

    #[test]
    fn arrays() {
        let mut g = Guest::new();
        let table = DIRECT + 0x11_0000;
        g.put(table, Guest::link(0));
        g.put(table + 8, 0);
        g.put(table + 16, 0x1234_0000_0000_0000);
        g.put(table + 24, VMALLOC + 4000); // straddles into the unmapped page
        g.put(table + 32, VMALLOC);
        let p = g.program();
        let w = walk_array(&p, table, 200, 5, true, limits(100));
        assert_eq!(w.end, WalkEnd::Complete);
        let idx: Vec<u64> = w.elements.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![0, 2, 3, 4]);
        assert!(w.elements[0].problem.is_none());
        assert!(w.elements[1]
            .problem
            .as_ref()
            .unwrap()
            .contains("not canonical"));
        assert!(w.elements[2]
            .problem
            .as_ref()
            .unwrap()
            .contains("not mapped"));
        assert!(w.elements[3].problem.is_none());
        let w = walk_array(&p, VMALLOC + 4096 - 16, 8, 4, true, limits(100));
        assert_eq!(w.elements.len(), 0);
        assert!(matches!(w.end, WalkEnd::Unreadable { at, .. } if at == VMALLOC + 4096));
        let w = walk_array(&p, VMALLOC, 1024, 6, false, limits(100));
        assert_eq!(w.elements.len(), 6);
        assert_eq!(w.elements.iter().filter(|e| e.problem.is_some()).count(), 2);
        assert_eq!(
            walk_array(&p, VMALLOC, 1024, 6, false, limits(3)).end,
            WalkEnd::LimitHit { limit: 3 }
        );
        let w = walk_array(&p, u64::MAX - 8, 1024, 3, false, limits(100));
        assert!(matches!(w.end, WalkEnd::Unreadable { .. }));
    }

    #[test]
    fn ring() {
        let mut g = Guest::new();
        let slots = DIRECT + 0x12_0000;
        let next = DIRECT + 0x11_fff8;
        // capacity 4, slot size 32, seq at offset 0; next_seq = 10 → records 6..10.
        g.put(next, 10);
        for seq in 6..10u64 {
            g.put(slots + (seq % 4) * 32, seq);
        }
        g.put(slots, u64::MAX); // slot 0 holds record 8, being written
        let p = g.program();
        let r = read_ring(&p, slots, 32, 4, next, 0).unwrap();
        assert_eq!(
            r,
            vec![(6, slots + 2 * 32), (7, slots + 3 * 32), (9, slots + 32)]
        );
        assert!(read_ring(&p, slots, 32, 0, next, 0).unwrap().is_empty());
        assert!(read_ring(&p, slots, 32, 4, VMALLOC + 8192, 0).is_err());
        // A young ring: fewer records than slots.
        let mut g = Guest::new();
        g.put(next, 2);
        g.put(slots, 0);
        g.put(slots + 32, 1);
        let r = read_ring(&g.program(), slots, 32, 4, next, 0).unwrap();
        assert_eq!(r, vec![(0, slots), (1, slots + 32)]);
    }

    #[test]
    fn an_unreadable_ring_slot_costs_its_record_only() {
        // Four 32-byte slots, the last two on the unmapped page after VMALLOC's.
        let mut g = Guest::new();
        let slots = VMALLOC + 4096 - 64;
        let next = DIRECT + 0x11_fff8;
        g.put(next, 8);
        g.put(DIRECT + 0x18_0000 + 4096 - 64, 4);
        g.put(DIRECT + 0x18_0000 + 4096 - 32, 5);
        let p = g.program();
        let r = read_ring_within(&p, slots, 32, 4, next, 0, limits(100)).unwrap();
        assert_eq!(r.records, vec![(4, slots), (5, slots + 32)]);
        assert_eq!(r.unreadable, vec![(6, slots + 64), (7, slots + 96)]);
        assert_eq!(r.end, WalkEnd::Complete);
        assert_eq!(
            read_ring(&p, slots, 32, 4, next, 0).unwrap(),
            vec![(4, slots), (5, slots + 32)]
        );
        // The node limit keeps the newest; the counter unreadable is the only error.
        let r = read_ring_within(&p, slots, 32, 4, next, 0, limits(3)).unwrap();
        assert_eq!(r.records, vec![(5, slots + 32)]);
        assert_eq!(r.end, WalkEnd::LimitHit { limit: 3 });
        assert!(read_ring_within(&p, slots, 32, 4, VMALLOC + 8192, 0, limits(3)).is_err());
        // A huge ring under a zero time budget stops at the first look at the clock.
        let mut g = Guest::new();
        g.put(next, MAX_RING_SLOTS * 4);
        let p = g.program();
        let r = read_ring_within(
            &p,
            DIRECT,
            0,
            u64::MAX,
            next,
            0,
            WalkLimits::new(u64::MAX, Duration::ZERO),
        )
        .unwrap();
        assert!(matches!(r.end, WalkEnd::TimedOut { .. }), "{:?}", r.end);
    }

    #[test]
    fn prev_checks_are_bounded_and_indexed() {
        let order: Vec<u64> = (0..3000).collect();
        let mut g = doubly(&order);
        g.put(Guest::link(5) + 8, Guest::link(0));
        let p = g.program();
        let w = walk_list(&p, HEAD, false, limits(10_000));
        let (m, end) = check_prev_within(&p, HEAD, &w, limits(10_000));
        assert_eq!(end, WalkEnd::Complete);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, Some(5));
        assert_eq!(m[0].1.node, Guest::link(5));
        let (_, end) = check_prev_within(&p, HEAD, &w, limits(100));
        assert_eq!(end, WalkEnd::LimitHit { limit: 100 });
        let (m, end) = check_prev_within(&p, HEAD, &w, WalkLimits::new(u64::MAX, Duration::ZERO));
        assert!(matches!(end, WalkEnd::TimedOut { .. }), "{end:?}");
        assert_eq!(m.len(), 1, "the mismatch before the clock was looked at");
    }

    #[test]
    fn trees() {
        // Node i at link(i) - LINK; children at LINK and LINK + 8.
        let node = |i: u64| Guest::link(i) - LINK;
        let var = DIRECT + 0x11_0000;
        let tree = |extra: Option<u64>| {
            let mut g = Guest::new();
            g.put(var, node(0));
            g.put(node(0) + LINK, node(1));
            g.put(node(0) + LINK + 8, node(2));
            g.put(node(1) + LINK, node(3));
            if let Some(right_of_3) = extra {
                g.put(node(3) + LINK + 8, right_of_3);
            }
            g.program()
        };
        let p = tree(None);
        let t = walk_tree(&p, var, LINK, limits(100));
        assert_eq!(t.end, WalkEnd::Complete);
        assert_eq!(t.nodes, vec![node(0), node(1), node(3), node(2)]);
        assert_eq!(
            walk_tree(&p, var, LINK, limits(2)).end,
            WalkEnd::LimitHit { limit: 2 }
        );
        // A child that links back to its grandparent.
        let t = walk_tree(&tree(Some(node(0))), var, LINK, limits(100));
        assert_eq!(
            t.end,
            WalkEnd::Cycle {
                closing_node: node(3),
                first_repeated: node(0)
            }
        );
        // Garbage children: the node pointing to them is named.
        for garbage in [0x4141_4141_4141_4141, VMALLOC + 8192] {
            let t = walk_tree(&tree(Some(garbage)), var, LINK, limits(100));
            assert!(
                matches!(&t.end, WalkEnd::Unreadable { at, .. } if *at == node(3)),
                "{:?}",
                t.end
            );
            assert_eq!(t.nodes, vec![node(0), node(1), node(3)]);
        }
        // A deep tree (a left spine of 3000 nodes) under a zero time budget stops at the
        // first look at the clock.
        let mut g = Guest::new();
        g.put(var, node(0));
        for i in 0..3000 {
            g.put(node(i) + LINK, node(i + 1));
        }
        let p = g.program();
        assert_eq!(walk_tree(&p, var, LINK, limits(10_000)).nodes.len(), 3001);
        let t = walk_tree(&p, var, LINK, WalkLimits::new(u64::MAX, Duration::ZERO));
        assert!(matches!(t.end, WalkEnd::TimedOut { .. }), "{:?}", t.end);
        assert_eq!(t.nodes.len(), CLOCK_EVERY - 1);
    }

    /// The reference: a brute-force walk with a hash set.
    fn reference(
        next: &HashMap<u64, u64>,
        head: u64,
        singly: bool,
        max: u64,
    ) -> (Vec<u64>, WalkEnd) {
        let end_marker = if singly { 0 } else { head };
        let mut links = Vec::new();
        let mut seen = HashSet::new();
        let mut holder = head;
        let mut cand = next[&head];
        loop {
            if cand == end_marker {
                return (links, WalkEnd::Complete);
            }
            let unreadable = |links| {
                (
                    links,
                    WalkEnd::Unreadable {
                        at: holder,
                        error: String::new(),
                    },
                )
            };
            // A NULL pointer is refused before anything else; a pointer to memory that
            // cannot be read only when the walk goes on to read it (not at the limit).
            if cand == 0 {
                return unreadable(links);
            }
            if seen.contains(&cand) {
                return (
                    links,
                    WalkEnd::Cycle {
                        closing_node: holder,
                        first_repeated: cand,
                    },
                );
            }
            if links.len() as u64 >= max {
                return (links, WalkEnd::LimitHit { limit: max });
            }
            if !next.contains_key(&cand) {
                return unreadable(links);
            }
            seen.insert(cand);
            links.push(cand);
            holder = cand;
            cand = next[&cand];
        }
    }

    /// Where a random graph's link `t` (0..1000) points, among `n` nodes: mostly other
    /// nodes; sometimes the head, NULL, or unmapped memory.
    fn link_target(t: u32, n: u64) -> u64 {
        match t {
            0..=899 => Guest::link(t as u64 % n),
            900..=939 => HEAD,
            940..=969 => 0,
            _ => VMALLOC + 8192 + t as u64,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random link graphs (every node points at a random node, the head, NULL, or an
        /// unmapped address): the walk always ends and agrees with the brute-force reference.
        #[test]
        fn random_graphs_end_and_are_classified_correctly(
            targets in proptest::collection::vec(0u32..1000, 1..300),
            first in 0u32..1000,
            singly in any::<bool>(),
            max in 1u64..400,
        ) {
            let n = targets.len() as u64;
            let mut g = Guest::new();
            let mut next = HashMap::new();
            let decode = |t: u32| link_target(t, n);
            let head_target = decode(first);
            g.put(HEAD, head_target);
            next.insert(HEAD, head_target);
            for (i, &t) in targets.iter().enumerate() {
                let to = decode(t);
                g.put(Guest::link(i as u64), to);
                next.insert(Guest::link(i as u64), to);
            }
            let p = g.program();
            let w = walk_list(&p, HEAD, singly, limits(max));
            let (links, end) = reference(&next, HEAD, singly, max);
            prop_assert_eq!(&w.links, &links);
            match (&w.end, &end) {
                (WalkEnd::Unreadable { at: a, .. }, WalkEnd::Unreadable { at: b, .. }) => prop_assert_eq!(a, b),
                (x, y) => prop_assert_eq!(x, y),
            }
            let _ = check_prev(&p, HEAD, &w);
        }

        /// Long cycles, random entry points and limits: Brent and the limit check agree
        /// with the reference.
        #[test]
        fn long_cycles(mu in 0u64..200, lambda in 1u64..300, max in 1u64..600) {
            let mut g = Guest::new();
            let mut next = HashMap::new();
            let total = mu + lambda;
            let mut put = |from: u64, to: u64| {
                g.put(from, to);
                next.insert(from, to);
            };
            put(HEAD, Guest::link(0));
            for i in 0..total {
                let to = if i + 1 == total { Guest::link(mu) } else { Guest::link(i + 1) };
                put(Guest::link(i), to);
            }
            let p = g.program();
            let w = walk_list(&p, HEAD, false, limits(max));
            let (links, end) = reference(&next, HEAD, false, max);
            prop_assert_eq!(w.end, end);
            prop_assert_eq!(w.links, links);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Interleaved walks of many lists over one random link graph (heads at the list
        /// head, at nodes, at unmapped memory; singly and doubly linked, shared tails and
        /// cycles) are exactly the lone walks.
        #[test]
        fn interleaved_walks_equal_lone_walks(
            targets in proptest::collection::vec(0u32..1000, 1..200),
            heads in proptest::collection::vec((0u32..1000, any::<bool>()), 0..12),
            max in 1u64..300,
        ) {
            let n = targets.len() as u64;
            let decode = |t: u32| link_target(t, n);
            let mut g = Guest::new();
            g.put(HEAD, decode(targets[0]));
            for (i, &t) in targets.iter().enumerate() {
                g.put(Guest::link(i as u64), decode(t));
            }
            let p = g.program();
            let heads: Vec<(u64, bool)> = heads
                .iter()
                .map(|&(t, singly)| (if t == 0 { HEAD } else { decode(t) }, singly))
                .collect();
            let together = walk_lists(&p, &heads, limits(max));
            let alone: Vec<ListWalk> = heads
                .iter()
                .map(|&(h, singly)| walk_list(&p, h, singly, limits(max)))
                .collect();
            prop_assert_eq!(together, alone);
        }
    }
}
