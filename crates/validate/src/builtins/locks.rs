//! Lock state: which locks are held and by which CPU, which CPUs are spinning on which
//! lock, and wait-for cycles between CPUs (a deadlock).
//!
//! Lock roots are roots whose element type has `locked` and `owner_cpu` members; per-CPU
//! roots are those whose element type has a `waiting_on` member (a pointer to the lock
//! the CPU spins on). Layouts come from DWARF or VMCOREINFO; members are found once per
//! root and read in each element as [`Object`](ambulance_introspect::object::Object)s.
//! The wait-for graph has one edge per CPU at most (the lock it spins on, to that lock's
//! owner), so its cycles are found in one pass over it, however many CPUs a guest
//! declares.

use std::collections::{BTreeMap, HashMap};

use ambulance_report::{Finding, Severity};

use super::hex;
use crate::context::RootFindings;
use crate::{Context, Validator};

/// See the module documentation.
pub struct Locks;

const NAME: &str = "locks";
/// Longest lock name read (the test kernel's `name: [u8; 16]`).
const NAME_LEN: usize = 16;
/// Most steps of a deadlock told in its findings.
const MAX_STORY: usize = 16;

struct Held {
    owner: Option<u32>,
    name: String,
    root: String,
    index: u64,
}

impl Validator for Locks {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "lock tables and per-CPU data with waiting_on"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots().iter().any(|r| {
            ctx.member_offset(&r.type_name, "locked").is_some()
                && ctx.member_offset(&r.type_name, "owner_cpu").is_some()
        })
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let mut held: BTreeMap<u64, Held> = BTreeMap::new();
        for root in ctx.roots() {
            let (Some(m_locked), Some(m_owner)) = (
                ctx.member(&root.type_name, "locked"),
                ctx.member(&root.type_name, "owner_cpu"),
            ) else {
                continue;
            };
            let m_name = ctx.member(&root.type_name, "name");
            let elements = ctx.elements(root);
            let mut found = RootFindings::new(out);
            let mut pace = ctx.pace();
            for e in elements.elements.iter() {
                if pace.stop() {
                    found.push(ctx.budget_note(
                        NAME,
                        &root.name,
                        &format!("locks {} and after", e.index),
                    ));
                    break;
                }
                let Ok(locked) = m_locked.object(ctx.program, e.addr).read_u32() else {
                    continue;
                };
                if locked == 0 {
                    continue;
                }
                let owner = m_owner
                    .object(ctx.program, e.addr)
                    .read_u32()
                    .ok()
                    .filter(|&c| c != u32::MAX);
                let name = m_name
                    .as_ref()
                    .and_then(|m| m.object(ctx.program, e.addr).read_cstr(NAME_LEN).ok())
                    .unwrap_or_else(|| format!("{}[{}]", root.name, e.index));
                found.push(ctx.finding(
                    NAME,
                    Severity::Info,
                    &root.name,
                    Some(e.index),
                    Some("locked"),
                    Some(e.addr),
                    String::new(),
                    format!(
                        "held by CPU {}",
                        owner.map(|c| c.to_string()).unwrap_or("?".into())
                    ),
                    format!(
                        "lock {name} was held{} when the guest was frozen",
                        owner.map(|c| format!(" by CPU {c}")).unwrap_or_default()
                    ),
                ));
                held.insert(
                    e.addr,
                    Held {
                        owner,
                        name,
                        root: root.name.clone(),
                        index: e.index,
                    },
                );
            }
            found.finish(ctx, NAME, &root.name);
        }

        // Who spins on what.
        let mut waits: BTreeMap<u32, u64> = BTreeMap::new();
        for root in ctx.roots() {
            let Some(m_wait) = ctx.member(&root.type_name, "waiting_on") else {
                continue;
            };
            let m_cpu = ctx.member(&root.type_name, "cpu");
            let elements = ctx.elements(root);
            let mut found = RootFindings::new(out);
            let mut pace = ctx.pace();
            for e in elements.elements.iter() {
                if pace.stop() {
                    found.push(ctx.budget_note(
                        NAME,
                        &root.name,
                        &format!("what CPUs {} and after wait for", e.index),
                    ));
                    break;
                }
                let Ok(lock) = m_wait.object(ctx.program, e.addr).read_u64() else {
                    continue;
                };
                if lock == 0 {
                    continue;
                }
                let cpu = m_cpu
                    .as_ref()
                    .and_then(|m| m.object(ctx.program, e.addr).read_u32().ok())
                    .unwrap_or(e.index as u32);
                waits.insert(cpu, lock);
                let what = held.get(&lock);
                found.push(ctx.finding(
                    NAME,
                    Severity::Info,
                    &root.name,
                    Some(e.index),
                    Some("waiting_on"),
                    Some(e.addr),
                    String::new(),
                    hex(lock),
                    format!(
                        "CPU {cpu} was spinning on lock {}{}",
                        what.map(|h| h.name.clone()).unwrap_or_else(|| hex(lock)),
                        what.and_then(|h| h.owner)
                            .map(|o| format!(" held by CPU {o}"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }

        // Wait-for cycles: CPU -> lock it waits on -> that lock's owner -> ... Each CPU has
        // at most one edge, so following every CPU's chain once, marking where each
        // chain went, finds every cycle in time linear in the CPUs.
        let next = |cpu: u32| {
            waits
                .get(&cpu)
                .and_then(|l| held.get(l))
                .and_then(|h| h.owner)
        };
        // The chain (walk number) each CPU was first reached by.
        let mut reached: HashMap<u32, usize> = HashMap::new();
        let mut cycles: Vec<Vec<u32>> = Vec::new();
        let mut pace = ctx.pace();
        for (walk, &start) in waits.keys().enumerate() {
            if pace.stop() {
                out.push(ctx.budget_note(NAME, "locks", "the wait-for graph (deadlocks)"));
                break;
            }
            if reached.contains_key(&start) {
                continue;
            }
            let mut chain = Vec::new();
            let mut cpu = start;
            loop {
                match reached.get(&cpu) {
                    // Back on this walk's own chain: a cycle from there on.
                    Some(&w) if w == walk => {
                        let from = chain.iter().position(|&c| c == cpu).unwrap_or(0);
                        cycles.push(chain[from..].to_vec());
                        break;
                    }
                    // Into an earlier walk's chain: nothing new.
                    Some(_) => break,
                    None => {}
                }
                reached.insert(cpu, walk);
                chain.push(cpu);
                match next(cpu) {
                    Some(owner) => cpu = owner,
                    None => break,
                }
            }
        }
        let mut reported = 0usize;
        for cycle in cycles {
            // Every CPU of a cycle waits on a held lock with an owner: looked up above.
            let mut story: Vec<String> = cycle
                .iter()
                .take(MAX_STORY)
                .filter_map(|c| {
                    let h = held.get(waits.get(c)?)?;
                    Some(format!(
                        "CPU {c} waits for {} held by CPU {}",
                        h.name,
                        h.owner.map(|o| o.to_string()).unwrap_or("?".into())
                    ))
                })
                .collect();
            if cycle.len() > MAX_STORY {
                story.push(format!("and {} more CPUs", cycle.len() - MAX_STORY));
            }
            for c in &cycle {
                let Some((&lock, h)) = waits.get(c).and_then(|l| held.get_key_value(l)) else {
                    continue;
                };
                if reported == crate::context::MAX_FINDINGS_PER_ROOT {
                    break;
                }
                reported += 1;
                out.push(ctx.finding(
                    NAME,
                    Severity::Critical,
                    &h.root,
                    Some(h.index),
                    None,
                    Some(lock),
                    "no cycle in the wait-for graph".into(),
                    format!("CPU {c} waits for it while holding what its owner waits for"),
                    format!("deadlock: {}", story.join("; ")),
                ));
            }
        }
    }
}
