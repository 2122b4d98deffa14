//! Every CPU's CFS run queue: `runqueues.cfs.tasks_timeline`, the red-black tree of
//! runnable `sched_entity`s (`run_node`), checked as a red-black tree
//! ([`check_rbtree`]) and for its order: `vruntime` non-decreasing in order (before
//! Linux 6.6; `deadline` since EEVDF, which orders the tree by it), compared as the
//! kernel compares them (`(s64)(a - b)`).

use ambulance_introspect::program::Program;

use crate::structures::{check_rbtree, Budget, Checked, RbLayout};
use crate::{nr_cpu_ids, per_cpu_address, Result};

/// Most CPUs whose run queues are checked.
pub const MAX_RUNQUEUE_CPUS: u32 = 1024;

/// Where the run queue's tree and its entities' keys are.
struct Layout {
    rb: RbLayout,
    root: u64,
    leftmost: u64,
    run_node: u64,
    key: u64,
    key_name: &'static str,
    /// `rq.__lock` (Linux ≥ 5.14) or `rq.lock`.
    lock: Option<u64>,
}

impl Layout {
    fn of(program: &Program) -> Result<Layout> {
        let timeline = program.offset_of("rq", "cfs.tasks_timeline")?;
        let at = |path: &str| -> Result<u64> {
            Ok(timeline.wrapping_add(program.offset_of("rb_root_cached", path)?))
        };
        let (key, key_name) = match program.offset_of("sched_entity", "deadline") {
            Ok(k) => (k, "deadline"),
            Err(_) => (program.offset_of("sched_entity", "vruntime")?, "vruntime"),
        };
        Ok(Layout {
            rb: RbLayout::of(program)?,
            root: at("rb_root.rb_node")?,
            leftmost: at("rb_leftmost")?,
            run_node: program.offset_of("sched_entity", "run_node")?,
            key,
            key_name,
            lock: program
                .offset_of("rq", "__lock")
                .or_else(|_| program.offset_of("rq", "lock"))
                .ok(),
        })
    }
}

/// Checks every possible CPU's CFS run-queue tree, one [`Checked`] per CPU.
pub fn check(program: &Program, budget: &mut Budget) -> Vec<Checked> {
    const NAME: &str = "runqueues.cfs.tasks_timeline";
    let layout = match Layout::of(program) {
        Ok(l) => l,
        Err(e) => return vec![Checked::unsupported(NAME, "tree", e.to_string())],
    };
    if let Err(e) = program.symbol("runqueues") {
        return vec![Checked::unsupported(NAME, "tree", e.to_string())];
    }
    let cpus = nr_cpu_ids(program).unwrap_or(1).min(MAX_RUNQUEUE_CPUS);
    let mut all = Vec::new();
    for cpu in 0..cpus {
        let mut c = Checked::new(format!("runqueues[{cpu}].cfs.tasks_timeline"), "tree");
        let rq = match per_cpu_address(program, "runqueues", cpu) {
            Ok(rq) => rq,
            Err(e) => {
                c.stop(format!("CPU {cpu}'s run queue: {e}"));
                all.push(c);
                continue;
            }
        };
        c.lock = layout.lock.map(|l| rq.wrapping_add(l));
        let tree = check_rbtree(
            program,
            &layout.rb,
            rq.wrapping_add(layout.root),
            Some(rq.wrapping_add(layout.leftmost)),
            budget,
            &mut c,
        );
        if c.incomplete.is_none() {
            let mut before: Option<(u64, u64)> = None;
            for &node in &tree.in_order {
                let at = node.wrapping_sub(layout.run_node).wrapping_add(layout.key);
                let Ok(key) = program.read_u64(at) else {
                    c.unreadable(
                        at,
                        "sched_entity key",
                        format!(
                            "the {} of the entity at node {node:#x} cannot be read",
                            layout.key_name
                        ),
                    );
                    continue;
                };
                if let Some((prev, prev_key)) = before {
                    if (key.wrapping_sub(prev_key) as i64) < 0 {
                        c.problem(
                            at,
                            &format!("sched_entity.{}", layout.key_name),
                            format!("at least {prev_key} (the previous entity's)"),
                            key.to_string(),
                            format!(
                                "CPU {cpu}'s run queue is out of order: the entity at node \
                                 {node:#x} has {} {key}, before that of the entity before it \
                                 in the tree (node {prev:#x}, {prev_key})",
                                layout.key_name
                            ),
                        );
                    }
                }
                before = Some((node, key));
            }
        }
        all.push(c);
    }
    all
}
