//! SLUB's free lists: for every cache on `slab_caches`, each CPU's lockless free list
//! (`cpu_slab->freelist`), and the free list (`slab->freelist`) of its CPU slab, of
//! its per-CPU partial slabs (`cpu_slab->partial`, chained by `slab->next`) and of its
//! nodes' partial slabs (`node[n]->partial`, linked by `slab->slab_list`).
//!
//! A free object holds the next one's address at `s->offset`; with
//! `CONFIG_SLAB_FREELIST_HARDENED` (the cache has `random`) it is stored encoded, and
//! decoded as the kernel's `freelist_ptr` does: `ptr ^ s->random ^ swab(ptr_addr)`,
//! `ptr_addr` being where the pointer is stored (`object + s->offset`). Every pointer on
//! a free list must be an object of its slab: inside the slab's pages
//! (`PAGE_SIZE << order`, from `s->oo`) and `s->size`-aligned from its first object;
//! and no list may reach an object twice. A problem is reported at the address of the
//! bad pointer. Bounded per cache ([`MAX_OBJECTS_PER_CACHE`]) and in total by the
//! [`Budget`].

use std::collections::HashSet;

use ambulance_introspect::program::Program;
use ambulance_introspect::walk::{walk_list, WalkEnd, WalkLimits};

use crate::structures::{Budget, Checked};
use crate::{nr_cpu_ids, per_cpu_offset, Result};

/// The name of the check in findings and "structures walked".
pub const SLAB_CACHES: &str = "slab_caches";
/// Most caches checked.
pub const MAX_CACHES: u64 = 4096;
/// Most free objects followed in one cache.
pub const MAX_OBJECTS_PER_CACHE: u64 = 1 << 16;
/// Most partial slabs followed per CPU or node of one cache.
const MAX_PARTIAL: u64 = 1024;
/// Most CPUs and nodes looked at.
const MAX_CPUS: u32 = 1024;
const MAX_NODES: u64 = 1024;
const PAGE_SIZE: u64 = 4096;

/// Where SLUB's fields are.
struct Layout {
    list: u64,
    cpu_slab: u64,
    offset: u64,
    size: u64,
    oo: u64,
    random: Option<u64>,
    red_left_pad: Option<u64>,
    name: u64,
    node: Option<u64>,
    cpu_freelist: u64,
    cpu_slab_slab: u64,
    cpu_partial: Option<u64>,
    slab_freelist: u64,
    slab_next: Option<u64>,
    slab_list: Option<u64>,
    node_partial: Option<u64>,
    page_size: u64,
    vmemmap: u64,
    page_offset: u64,
}

impl Layout {
    fn of(program: &Program) -> Result<Layout> {
        let kc = |m: &str| program.offset_of("kmem_cache", m);
        let (types, page) = program.find_type("page")?;
        let page_size = types.get(page)?.size.unwrap_or(64);
        Ok(Layout {
            list: kc("list")?,
            cpu_slab: kc("cpu_slab")?,
            offset: kc("offset")?,
            size: kc("size")?,
            oo: kc("oo")?,
            random: kc("random").ok(),
            red_left_pad: kc("red_left_pad").ok(),
            name: kc("name")?,
            node: kc("node").ok(),
            cpu_freelist: program.offset_of("kmem_cache_cpu", "freelist")?,
            cpu_slab_slab: program.offset_of("kmem_cache_cpu", "slab")?,
            cpu_partial: program.offset_of("kmem_cache_cpu", "partial").ok(),
            slab_freelist: program.offset_of("slab", "freelist")?,
            slab_next: program.offset_of("slab", "next").ok(),
            slab_list: program.offset_of("slab", "slab_list").ok(),
            node_partial: program.offset_of("kmem_cache_node", "partial").ok(),
            page_size,
            vmemmap: program.read_u64(program.symbol("vmemmap_base")?)?,
            page_offset: program.read_u64(program.symbol("page_offset_base")?)?,
        })
    }
}

/// One cache, as its free lists need it.
struct Cache {
    name: String,
    offset: u64,
    size: u64,
    /// `s->random`, when the kernel encodes free pointers (`CONFIG_SLAB_FREELIST_HARDENED`).
    random: Option<u64>,
    red_left_pad: u64,
    slab_bytes: u64,
}

/// Checks every cache's free lists.
pub fn check(program: &Program, budget: &mut Budget) -> Checked {
    let l = match Layout::of(program) {
        Ok(l) => l,
        Err(e) => return Checked::unsupported(SLAB_CACHES, "freelists", e.to_string()),
    };
    let mut c = Checked::new(SLAB_CACHES, "freelists");
    let head = match program.symbol(SLAB_CACHES) {
        Ok(h) => h,
        Err(e) => return Checked::unsupported(SLAB_CACHES, "freelists", e.to_string()),
    };
    let limits = WalkLimits {
        max_nodes: MAX_CACHES,
        ..WalkLimits::default()
    };
    let caches = walk_list(program, head, false, limits);
    match &caches.end {
        WalkEnd::Complete => {}
        end => c.stop(format!("the slab_caches list did not end well: {end:?}")),
    }
    let cpus = nr_cpu_ids(program).unwrap_or(1).min(MAX_CPUS);
    let nodes = program
        .symbol("nr_node_ids")
        .and_then(|a| program.read_u32(a))
        .map_or(1, u64::from)
        .clamp(1, MAX_NODES);
    for &link in &caches.links {
        let s = link.wrapping_sub(l.list);
        let Some(cache) = read_cache(program, &l, s) else {
            c.problem(
                s,
                "kmem_cache",
                "a readable cache".into(),
                "unreadable".into(),
                format!("the cache at {s:#x} cannot be read"),
            );
            continue;
        };
        let mut per_cache = MAX_OBJECTS_PER_CACHE;
        let mut walk = |c: &mut Checked, budget: &mut Budget, slab: u64, holder: u64| {
            freelist(program, &l, &cache, slab, holder, &mut per_cache, budget, c)
        };
        let Ok(cpu_slab) = program.read_u64(s.wrapping_add(l.cpu_slab)) else {
            continue;
        };
        for cpu in 0..cpus {
            let Ok(area) = per_cpu_offset(program, cpu) else {
                continue;
            };
            let kcc = area.wrapping_add(cpu_slab);
            let Ok(slab) = program.read_u64(kcc.wrapping_add(l.cpu_slab_slab)) else {
                continue;
            };
            if !walk(&mut c, budget, slab, kcc.wrapping_add(l.cpu_freelist)) {
                return c;
            }
            if slab != 0 && !walk(&mut c, budget, slab, slab.wrapping_add(l.slab_freelist)) {
                return c;
            }
            let (Some(partial), Some(next)) = (l.cpu_partial, l.slab_next) else {
                continue;
            };
            let mut slab = program.read_u64(kcc.wrapping_add(partial)).unwrap_or(0);
            let mut seen = HashSet::new();
            while slab != 0 && seen.len() < MAX_PARTIAL as usize && seen.insert(slab) {
                if !walk(&mut c, budget, slab, slab.wrapping_add(l.slab_freelist)) {
                    return c;
                }
                slab = program.read_u64(slab.wrapping_add(next)).unwrap_or(0);
            }
        }
        let (Some(node), Some(partial), Some(slab_list)) = (l.node, l.node_partial, l.slab_list)
        else {
            continue;
        };
        for n in 0..nodes {
            let Ok(kn) = program.read_u64(s.wrapping_add(node).wrapping_add(n * 8)) else {
                continue;
            };
            if kn == 0 {
                continue;
            }
            let limits = WalkLimits {
                max_nodes: MAX_PARTIAL,
                ..WalkLimits::default()
            };
            let slabs = walk_list(program, kn.wrapping_add(partial), false, limits);
            for &link in &slabs.links {
                let slab = link.wrapping_sub(slab_list);
                if !walk(&mut c, budget, slab, slab.wrapping_add(l.slab_freelist)) {
                    return c;
                }
            }
        }
    }
    c
}

fn read_cache(program: &Program, l: &Layout, s: u64) -> Option<Cache> {
    let u32_at = |off: u64| program.read_u32(s.wrapping_add(off)).ok().map(u64::from);
    let oo = u32_at(l.oo)?;
    let name = program
        .read_u64(s.wrapping_add(l.name))
        .ok()
        .and_then(|p| {
            let mut b = [0u8; 32];
            program.read_virt(p, &mut b).ok()?;
            let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            Some(String::from_utf8_lossy(&b[..n]).into_owned())
        })
        .unwrap_or_else(|| format!("{s:#x}"));
    Some(Cache {
        name,
        offset: u32_at(l.offset)?,
        size: u32_at(l.size)?,
        random: match l.random {
            Some(r) => Some(program.read_u64(s.wrapping_add(r)).ok()?),
            None => None,
        },
        red_left_pad: match l.red_left_pad {
            Some(r) => u32_at(r)?,
            None => 0,
        },
        slab_bytes: PAGE_SIZE << (oo >> 16).min(20),
    })
}

/// Follows the free list of `slab` whose first object's address is stored at `holder`
/// (raw, as `freelist` pointers are). False when the budget is spent (said in `c`).
#[allow(clippy::too_many_arguments)]
fn freelist(
    program: &Program,
    l: &Layout,
    cache: &Cache,
    slab: u64,
    holder: u64,
    per_cache: &mut u64,
    budget: &mut Budget,
    c: &mut Checked,
) -> bool {
    let Ok(mut p) = program.read_u64(holder) else {
        return true;
    };
    let base = l
        .page_offset
        .wrapping_add(slab.wrapping_sub(l.vmemmap) / l.page_size.max(1) * PAGE_SIZE);
    let first = base.wrapping_add(cache.red_left_pad);
    let end = base.wrapping_add(cache.slab_bytes);
    let mut seen = HashSet::new();
    let mut at = holder;
    let mut encoded = None;
    while p != 0 {
        if *per_cache == 0 {
            c.stop(format!(
                "cache {}: more than {MAX_OBJECTS_PER_CACHE} free objects",
                cache.name
            ));
            return true;
        }
        *per_cache -= 1;
        if let Err(why) = budget.take() {
            c.stop(why);
            return false;
        }
        let found = match encoded {
            Some(e) => format!("{p:#x} (stored as {e:#x})"),
            None => format!("{p:#x}"),
        };
        if slab == 0 || p < first || p >= end || !(p - first).is_multiple_of(cache.size.max(1)) {
            c.problem(
                at,
                "freelist pointer",
                format!(
                    "an object of the slab at {first:#x}..{end:#x} ({} bytes apart)",
                    cache.size
                ),
                found,
                format!(
                    "cache {}: the free-list pointer at {at:#x} decodes to {p:#x}, which is not \
                     an object of its slab (at {base:#x})",
                    cache.name
                ),
            );
            return true;
        }
        if !seen.insert(p) {
            c.problem(
                at,
                "freelist pointer",
                "an object not already on the free list".into(),
                found,
                format!(
                    "cache {}: the free list loops: the pointer at {at:#x} leads back to object \
                     {p:#x}",
                    cache.name
                ),
            );
            return true;
        }
        c.count += 1;
        at = p.wrapping_add(cache.offset);
        let Ok(stored) = program.read_u64(at) else {
            c.problem(
                at,
                "freelist pointer",
                "readable".into(),
                "unreadable".into(),
                format!(
                    "cache {}: the free object {p:#x} cannot be read",
                    cache.name
                ),
            );
            return true;
        };
        encoded = Some(stored);
        p = match cache.random {
            Some(random) => stored ^ random ^ at.swap_bytes(),
            None => stored,
        };
    }
    true
}
