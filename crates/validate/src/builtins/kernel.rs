//! Linux's own structures, for Linux guests that registered nothing: every CPU's CFS
//! run queue, the loaded modules, SLUB's free lists and the vmap areas, checked by
//! [`ambulance_linux`] ([`ambulance_linux::structures`]) with layouts from the kernel's
//! types. Each problem is a finding at the guest-virtual address of the bad field; what
//! was walked is in the report's "structures walked"; a structure this kernel does not
//! have is said there (`unsupported`), not found wrong.

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_linux::modules::{check_module, CheckLayout, MODULES_ROOT};
use ambulance_linux::structures::{Budget, Checked};
use ambulance_linux::{runqueue, slub, vmap};
use ambulance_report::{Finding, FindingKind, Hex, Severity, StructureWalk, WalkOutcome};

use crate::context::RootFindings;
use crate::{Context, Validator};

/// One check of Linux structures, as a validator.
pub struct KernelStructures {
    name: &'static str,
    applies_to: &'static str,
    check: fn(&Context<'_>, &mut Budget) -> Vec<Checked>,
}

impl KernelStructures {
    /// `linux-runqueues`: every CPU's CFS run-queue tree ([`runqueue`]).
    pub fn runqueues() -> KernelStructures {
        KernelStructures {
            name: "linux-runqueues",
            applies_to: "Linux: every CPU's CFS run-queue red-black tree",
            check: |ctx, budget| runqueue::check(ctx.program, budget),
        }
    }

    /// `linux-modules`: each module on the module list (whose links `list-integrity`
    /// checks) has a module state and a printable name.
    pub fn modules() -> KernelStructures {
        KernelStructures {
            name: "linux-modules",
            applies_to: "Linux: the loaded modules' states and names",
            check: check_modules,
        }
    }

    /// `linux-slub`: SLUB's free lists ([`slub`]).
    pub fn slub() -> KernelStructures {
        KernelStructures {
            name: "linux-slub",
            applies_to: "Linux: SLUB free lists (hardened pointers decoded)",
            check: |ctx, budget| vec![slub::check(ctx.program, budget)],
        }
    }

    /// `linux-vmap`: the vmap-area tree ([`vmap`]).
    pub fn vmap() -> KernelStructures {
        KernelStructures {
            name: "linux-vmap",
            applies_to: "Linux: the vmap-area red-black tree",
            check: |ctx, budget| vmap::check(ctx.program, budget),
        }
    }
}

fn check_modules(ctx: &Context<'_>, budget: &mut Budget) -> Vec<Checked> {
    let mut c = Checked::new(format!("{MODULES_ROOT} (state, name)"), "list");
    let Some(root) = ctx.root(MODULES_ROOT) else {
        return vec![Checked::unsupported(
            c.structure,
            "list",
            "the module list is unknown (no `modules` symbol or `struct module` layout)".into(),
        )];
    };
    let layout = match CheckLayout::of(ctx.program) {
        Ok(l) => l,
        Err(e) => return vec![Checked::unsupported(c.structure, "list", e.to_string())],
    };
    c.lock = Some(root.lock).filter(|&l| l != 0);
    for e in &ctx.elements(root).elements {
        if let Err(why) = budget.take() {
            c.stop(why);
            break;
        }
        check_module(ctx.program, &layout, e.addr, &mut c);
    }
    vec![c]
}

/// Whether the guest is Linux that registered nothing (as the diagnosis decides).
fn is_linux(ctx: &Context<'_>) -> bool {
    ctx.descriptor.is_none() && ctx.vmcoreinfo.is_some()
}

impl Validator for KernelStructures {
    fn name(&self) -> &str {
        self.name
    }

    fn applies_to(&self) -> &str {
        self.applies_to
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        is_linux(ctx) && ctx.program.symbols().is_some()
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let mut budget = Budget::new(ctx.walk_limits());
        for c in (self.check)(ctx, &mut budget) {
            report(ctx, self.name, c, out);
        }
    }
}

/// One structure's check as findings and a "structures walked" entry.
fn report(ctx: &Context<'_>, name: &str, c: Checked, out: &mut Vec<Finding>) {
    let end = match (&c.unsupported, &c.incomplete, c.problems.first()) {
        (Some(why), _, _) => ("unsupported", None, why.clone()),
        (None, Some(why), _) => ("limit", None, why.clone()),
        (None, None, Some(p)) => (
            "complete",
            Some(Hex(p.address)),
            format!(
                "{} problem(s), the first at {:#x}",
                c.problems.len(),
                p.address
            ),
        ),
        (None, None, None) => ("complete", None, String::new()),
    };
    ctx.record_walk(StructureWalk {
        structure: c.structure.clone(),
        kind: c.kind.to_string(),
        count: c.count,
        end: WalkOutcome {
            kind: end.0.into(),
            at: end.1,
            detail: end.2,
        },
    });
    // The structure as a root only says which lock its writers hold, for
    // [`Context::structural`].
    let locked = c.lock.map(|lock| Root {
        name: c.structure.clone(),
        type_name: String::new(),
        kind: RootKind::Object,
        flags: 0,
        address: 0,
        element_size: 0,
        link_offset: 0,
        max_count: 0,
        aux: 0,
        lock,
        hints: Vec::new(),
    });
    let mut found = RootFindings::new(out);
    for p in c.problems {
        let f = ctx.finding(
            name,
            Severity::Critical,
            &c.structure,
            None,
            Some(&p.field),
            Some(p.address),
            p.expected,
            p.found,
            format!("{}: {}", c.structure, p.message),
        );
        found.push(match &locked {
            Some(root) => ctx.structural(&[root], f, p.garbage),
            None => f,
        });
    }
    if let Some(why) = &c.incomplete {
        found.push(ctx.budget_note_because(name, &c.structure, "the rest", why));
    }
    if let Some(why) = c.unsupported {
        found.push(
            ctx.note(
                name,
                Severity::Info,
                &c.structure,
                format!("{}: {why}", c.structure),
            )
            .with_kind(FindingKind::Diagnosis),
        );
    }
    found.finish(ctx, name, &c.structure);
}
