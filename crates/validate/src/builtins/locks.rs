//! Lock state: which locks are held and by which CPU, which CPUs are spinning on which
//! lock, and wait-for cycles between CPUs (a deadlock).
//!
//! Lock roots are roots whose element type has `locked` and `owner_cpu` members; per-CPU
//! roots are those whose element type has a `waiting_on` member (a pointer to the lock
//! the CPU spins on). Layouts come from DWARF or VMCOREINFO; members are found once per
//! root and read in each element as [`Object`](ambulance_introspect::object::Object)s.

use std::collections::BTreeMap;

use ambulance_report::{Finding, Severity};

use super::hex;
use crate::{Context, Validator};

/// See the module documentation.
pub struct Locks;

const NAME: &str = "locks";
/// Longest lock name read (the test kernel's `name: [u8; 16]`).
const NAME_LEN: usize = 16;

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
            for e in ctx.elements(root).elements.iter() {
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
                out.push(ctx.finding(
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
        }

        // Who spins on what.
        let mut waits: BTreeMap<u32, u64> = BTreeMap::new();
        for root in ctx.roots() {
            let Some(m_wait) = ctx.member(&root.type_name, "waiting_on") else {
                continue;
            };
            let m_cpu = ctx.member(&root.type_name, "cpu");
            for e in ctx.elements(root).elements.iter() {
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
                out.push(ctx.finding(
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

        // Wait-for cycles: CPU -> lock it waits on -> that lock's owner -> ...
        let mut reported = Vec::new();
        for &start in waits.keys() {
            let mut chain = vec![start];
            let mut cpu = start;
            let cycle = loop {
                let Some(owner) = waits
                    .get(&cpu)
                    .and_then(|l| held.get(l))
                    .and_then(|h| h.owner)
                else {
                    break None;
                };
                if owner == start {
                    break Some(chain.clone());
                }
                if chain.contains(&owner) || chain.len() > waits.len() {
                    break None;
                }
                chain.push(owner);
                cpu = owner;
            };
            let Some(cycle) = cycle else { continue };
            let mut key = cycle.clone();
            key.sort_unstable();
            if reported.contains(&key) {
                continue;
            }
            reported.push(key);
            let story: Vec<String> = cycle
                .iter()
                .map(|c| {
                    let l = waits[c];
                    let h = &held[&l];
                    format!(
                        "CPU {c} waits for {} held by CPU {}",
                        h.name,
                        h.owner.map(|o| o.to_string()).unwrap_or("?".into())
                    )
                })
                .collect();
            for c in &cycle {
                let lock = waits[c];
                let h = &held[&lock];
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
