//! Linux's own structures, validated on a real dump: Debian's cloud kernel panicked by
//! sysrq under QEMU (TCG) and dumped with `dump-guest-memory`. The healthy dump gives no
//! finding from the validators of the CFS run queues, the modules, SLUB's free lists and
//! the vmap areas, from guest memory alone (BTF) and with the `-dbg` vmlinux (DWARF);
//! then, for each structure, one real node of the dump is corrupted in a copy of the
//! file, and the finding must name exactly the address that was changed.

mod linux_guest;

use std::sync::OnceLock;

use ambulance_introspect::program::Program;
use linux_guest::{diagnose_core, findings, fixture, shared_panicked_dump, walked, Dump, Patched};
use serde_json::Value;

/// One panicked guest's dump, shared by the tests of this file.
fn dump() -> &'static Dump {
    static DUMP: OnceLock<Dump> = OnceLock::new();
    shared_panicked_dump(&DUMP, &fixture(false))
}

const VALIDATORS: [&str; 4] = [
    "linux-runqueues",
    "linux-modules",
    "linux-slub",
    "linux-vmap",
];

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Findings of `validator` at guest-virtual `va`.
fn at<'a>(report: &'a Value, validator: &str, va: u64) -> Vec<&'a Value> {
    findings(report, validator)
        .into_iter()
        .filter(|f| {
            f["address"]["virt"]
                .as_str()
                .map(|_| hex(&f["address"]["virt"]))
                == Some(va)
        })
        .collect()
}

fn off(p: &Program, ty: &str, member: &str) -> u64 {
    p.offset_of(ty, member)
        .unwrap_or_else(|e| panic!("{ty}.{member}: {e}"))
}

/// A healthy kernel: every structure walked to its end, nothing found.
fn check_healthy(report: &Value) {
    for v in VALIDATORS {
        assert!(
            findings(report, v).is_empty(),
            "{v}: {:#?}",
            findings(report, v)
        );
    }
    let lists: Vec<&Value> = findings(report, "list-integrity");
    assert!(lists.is_empty(), "{lists:#?}");
    for name in [
        "runqueues[0].cfs.tasks_timeline",
        "runqueues[1].cfs.tasks_timeline",
        "modules (state, name)",
        "slab_caches",
        "vmap_area_root",
        "modules",
        "vmap_area_list",
    ] {
        let w = walked(report, name);
        assert_eq!(w["end"]["kind"], "complete", "{w:#}");
    }
    // The fixture's init loads qemu_fw_cfg, pvpanic (and with it pvpanic_mmio) and the
    // watchdog core (the cloud kernel has no i6300esb for it).
    assert_eq!(walked(report, "modules")["count"], 4);
    assert_eq!(walked(report, "modules (state, name)")["count"], 4);
    assert!(walked(report, "slab_caches")["count"].as_u64().unwrap() > 100);
    // What the checks cost, for people reading the test's output.
    for phase in report["timeline"].as_array().unwrap() {
        if VALIDATORS
            .iter()
            .any(|v| phase["name"] == format!("validator:{v}"))
        {
            eprintln!("{}: {} us", phase["name"], phase["duration_us"]);
        }
    }
    let areas = walked(report, "vmap_area_root")["count"].as_u64().unwrap();
    assert!(areas > 10, "{areas} vmap areas");
    assert_eq!(walked(report, "vmap_area_list")["count"], areas);
}

#[test]
fn a_healthy_dump_has_no_finding_with_btf_or_dwarf() {
    let d = dump();
    check_healthy(&diagnose_core(&d.core, &[]));
    let vmlinux = fixture(true).join("vmlinux");
    check_healthy(&diagnose_core(
        &d.core,
        &["--debuginfo", vmlinux.to_str().unwrap()],
    ));
}

#[test]
fn a_run_queue_node_with_a_bad_parent_and_colour_and_a_bad_leftmost_cache() {
    let d = dump();
    let mut copy = Patched::new(d, "vmcore-runqueue");
    let p = &copy.program;
    let timeline = off(p, "rq", "cfs.tasks_timeline");
    let root_at = timeline + off(p, "rb_root_cached", "rb_root.rb_node");
    let leftmost_at = timeline + off(p, "rb_root_cached", "rb_leftmost");
    let pc_off = off(p, "rb_node", "__rb_parent_color");
    let rqs: Vec<u64> = (0..2)
        .map(|cpu| ambulance_linux::per_cpu_address(p, "runqueues", cpu).unwrap())
        .collect();
    // A CPU whose tree holds an entity; at the panic both may be empty (each CPU runs
    // its one runnable task), and then init's own entity, asleep, is made CPU 0's only
    // runnable one: a valid one-node tree, which must be found healthy first.
    let busy = rqs
        .iter()
        .copied()
        .find(|rq| p.read_u64(rq + root_at).unwrap() != 0);
    let (rq, root) = match busy {
        Some(rq) => (rq, p.read_u64(rq + root_at).unwrap()),
        None => {
            let (tasks, _) = ambulance_linux::tasks::tasks(p, Default::default()).unwrap();
            let init = tasks.iter().find(|t| t.pid == 1).expect("init");
            let node = init.address + off(p, "task_struct", "se.run_node");
            let rq = rqs[0];
            copy.write(rq + root_at, &node.to_le_bytes());
            copy.write(rq + leftmost_at, &node.to_le_bytes());
            copy.write(node + pc_off, &1u64.to_le_bytes());
            copy.write(node + off(&copy.program, "rb_node", "rb_left"), &[0; 8]);
            copy.write(node + off(&copy.program, "rb_node", "rb_right"), &[0; 8]);
            let report = copy.diagnose();
            let f = findings(&report, "linux-runqueues");
            assert!(f.is_empty(), "{f:#?}");
            assert_eq!(
                walked(&report, "runqueues[0].cfs.tasks_timeline")["count"],
                1
            );
            (rq, node)
        }
    };
    let p = &copy.program;
    let leftmost = p.read_u64(rq + leftmost_at).unwrap();
    // The cached leftmost node: 8 bytes past the real one.
    let bogus = if busy.is_some() {
        leftmost + 8
    } else {
        root + 8
    };
    copy.write(rq + leftmost_at, &bogus.to_le_bytes());
    // The root: red, and a parent it does not have.
    copy.write(root + pc_off, &(rq + 0x40).to_le_bytes());
    let report = copy.diagnose();
    for (va, field, what) in [
        (rq + leftmost_at, "rb_root_cached.rb_leftmost", "leftmost"),
        (
            root + pc_off,
            "rb_node.__rb_parent_color",
            "parent pointer says",
        ),
        (root + pc_off, "rb_node.__rb_parent_color", "is red"),
    ] {
        let f = at(&report, "linux-runqueues", va);
        let f: Vec<&&Value> = f
            .iter()
            .filter(|f| f["message"].as_str().unwrap().contains(what))
            .collect();
        assert_eq!(
            f.len(),
            1,
            "{what} at {va:#x}: {:#?}",
            findings(&report, "linux-runqueues")
        );
        assert_eq!(f[0]["structure"]["path"], field);
        assert_eq!(f[0]["severity"], "critical");
    }
}

#[test]
fn a_modules_broken_link_and_bad_state_are_reported_at_the_module() {
    let d = dump();
    let mut copy = Patched::new(d, "vmcore-modules");
    let (modules, problems) = ambulance_linux::modules::modules(&copy.program).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["watchdog", "pvpanic_mmio", "pvpanic", "qemu_fw_cfg"]
    );
    let (first, second) = (modules[0].address, modules[1].address);
    let list = off(&copy.program, "module", "list");
    let state = off(&copy.program, "module", "state");
    // The first module's next: LIST_POISON1, as list_del leaves it.
    copy.write(first + list, &0xdead_0000_0000_0100u64.to_le_bytes());
    copy.write(second + state, &9u32.to_le_bytes());
    let report = copy.diagnose();
    let broken: Vec<&Value> = findings(&report, "list-integrity")
        .into_iter()
        .filter(|f| f["structure"]["root"] == "modules")
        .collect();
    assert_eq!(broken.len(), 1, "{broken:#?}");
    assert_eq!(hex(&broken[0]["address"]["virt"]), first, "{broken:#?}");
    assert_eq!(broken[0]["found"], "0xdead000000000100");
    // The broken list ends at the first module: the others are not reached.
    assert!(findings(&report, "linux-modules").is_empty());

    let mut copy = Patched::new(d, "vmcore-modules-state");
    copy.write(second + state, &9u32.to_le_bytes());
    let report = copy.diagnose();
    let f = at(&report, "linux-modules", second + state);
    assert_eq!(f.len(), 1, "{:#?}", findings(&report, "linux-modules"));
    assert_eq!(
        (f[0]["structure"]["path"].as_str(), f[0]["found"].as_str()),
        (Some("module.state"), Some("9"))
    );
}

#[test]
fn a_freelist_pointer_out_of_its_slab_is_reported_where_it_is_stored() {
    let d = dump();
    let mut copy = Patched::new(d, "vmcore-slub");
    let p = &copy.program;
    let head = p.symbol("slab_caches").unwrap();
    let kc = |m: &str| off(p, "kmem_cache", m);
    let freelist = off(p, "kmem_cache_cpu", "freelist");
    let area = ambulance_linux::per_cpu_offset(p, 0).unwrap();
    // The first cache with a free object on CPU 0's lockless free list.
    let mut link = p.read_u64(head).unwrap();
    let mut target = None;
    while link != head && target.is_none() {
        let s = link - kc("list");
        let cpu_slab = p.read_u64(s + kc("cpu_slab")).unwrap();
        let object = p.read_u64(area + cpu_slab + freelist).unwrap();
        if object != 0 {
            let offset = u64::from(p.read_u32(s + kc("offset")).unwrap());
            target = Some(object + offset);
        }
        link = p.read_u64(link).unwrap();
    }
    let holder = target.expect("some cache has a free object on CPU 0");
    let stored = p.read_u64(holder).unwrap();
    copy.write(holder, &(stored ^ 0x0000_4000_0000_0000).to_le_bytes());
    let report = copy.diagnose();
    let f = at(&report, "linux-slub", holder);
    assert_eq!(f.len(), 1, "{:#?}", findings(&report, "linux-slub"));
    assert_eq!(f[0]["structure"]["path"], "freelist pointer");
    assert!(
        f[0]["found"]
            .as_str()
            .unwrap()
            .contains(&format!("stored as {:#x}", stored ^ 0x0000_4000_0000_0000)),
        "{f:#?}"
    );
    assert_eq!(findings(&report, "linux-slub").len(), 1);
}

#[test]
fn a_vmap_area_that_ends_before_it_starts_is_reported_at_its_start() {
    let d = dump();
    let mut copy = Patched::new(d, "vmcore-vmap");
    let p = &copy.program;
    let root = p.read_u64(p.symbol("vmap_area_root").unwrap()).unwrap();
    let va = root - off(p, "vmap_area", "rb_node");
    let start_at = va + off(p, "vmap_area", "va_start");
    let end = p.read_u64(va + off(p, "vmap_area", "va_end")).unwrap();
    copy.write(start_at, &(end + 0x1000).to_le_bytes());
    let report = copy.diagnose();
    let f = at(&report, "linux-vmap", start_at);
    assert!(!f.is_empty(), "{:#?}", findings(&report, "linux-vmap"));
    assert!(f
        .iter()
        .all(|f| f["structure"]["path"] == "vmap_area.va_start"));
    assert!(
        f[0]["message"]
            .as_str()
            .unwrap()
            .contains("not below its end"),
        "{f:#?}"
    );
}
