//! DWARF figures: the time (and resident memory) to open a kernel's DWARF and look up
//! its task type and every member's type, from a cold start each time.
//!
//! * The test kernel (always): `Task` and its member types.
//! * A Linux vmlinux with DWARF, when `AMBULANCE_VMLINUX` names one (e.g. Debian's
//!   `/usr/lib/debug/boot/vmlinux-*` from `linux-image-*-dbg`): `task_struct` and its
//!   member types, through a memory-mapped file.
//!
//! Before criterion runs, each case is run once and its wall time and memory growth are
//! printed: VmRSS (resident now) and VmHWM (peak) from /proc/self/status, before and
//! after. For the vmlinux this includes the pages of the mapped file that were touched.
//!
//! Run with `cargo bench --bench dwarf` (`AMBULANCE_VMLINUX=/path/vmlinux cargo bench
//! --bench dwarf` for the second case).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::types::dwarf::DwarfTypes;
use ambulance_introspect::types::TypeSource;
use criterion::{criterion_group, criterion_main, Criterion};

/// (VmRSS, VmHWM) in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Looks up `name` and converts it and every member's type; returns the member count.
fn lookup(types: &dyn TypeSource, name: &str) -> usize {
    let id = types.find(name).expect("type found");
    let t = types.get(id).expect("type converts");
    for m in &t.members {
        types.get(m.ty).expect("member type converts");
    }
    t.members.len()
}

/// Runs `case` once, printing its time and memory growth.
fn once(label: &str, case: impl FnOnce() -> String) {
    let (rss0, hwm0) = memory();
    let start = Instant::now();
    let what = case();
    let took = start.elapsed();
    let (rss1, hwm1) = memory();
    println!(
        "{label}: {what}: {:.3} ms, VmRSS +{} KiB, VmHWM +{} KiB",
        took.as_secs_f64() * 1e3,
        rss1.saturating_sub(rss0),
        hwm1.saturating_sub(hwm0),
    );
}

fn test_kernel(c: &mut Criterion) {
    let elf = ambulance_test_kernel::ELF;
    once("dwarf/test-kernel", || {
        let d = DwarfTypes::from_static(elf, "test-kernel").expect("DWARF");
        let n = lookup(&d, "Task");
        let (scanned, known) = d.index_progress();
        format!(
            "open + Task + {n} member types, {scanned} units indexed, {known} unit headers read"
        )
    });
    c.bench_function("dwarf/test-kernel/open+Task+members", |b| {
        b.iter(|| {
            let d = DwarfTypes::from_static(elf, "test-kernel").expect("DWARF");
            lookup(&d, "Task")
        })
    });
    let d = DwarfTypes::from_static(elf, "test-kernel").expect("DWARF");
    lookup(&d, "Task");
    c.bench_function("dwarf/test-kernel/cached Task+members", |b| {
        b.iter(|| lookup(&d, "Task"))
    });
    c.bench_function("dwarf/test-kernel/open+missing name (full index)", |b| {
        b.iter(|| {
            let d = DwarfTypes::from_static(elf, "test-kernel").expect("DWARF");
            d.find("NoSuchType").is_err()
        })
    });
}

fn vmlinux(c: &mut Criterion) {
    let Some(path) = std::env::var_os("AMBULANCE_VMLINUX") else {
        println!("dwarf/vmlinux: SKIPPED (set AMBULANCE_VMLINUX to a vmlinux with DWARF)");
        return;
    };
    let open = || {
        let info = DebugInfo::open(&path).expect("vmlinux opens");
        let types: Arc<dyn TypeSource> = info.types().expect("vmlinux has DWARF");
        (info, types)
    };
    once("dwarf/vmlinux", || {
        let (info, types) = open();
        let n = lookup(&*types, "task_struct");
        let (scanned, known) = info.dwarf().expect("DWARF").index_progress();
        format!(
            "open + task_struct + {n} member types, {scanned} units indexed, {known} unit \
             headers read, {} symbols",
            info.symbols().len()
        )
    });
    once("dwarf/vmlinux", || {
        let (info, types) = open();
        let missing = types.find("no_such_type_anywhere").is_err();
        let (scanned, known) = info.dwarf().expect("DWARF").index_progress();
        format!("open + a missing name (full index: {missing}), {scanned}/{known} units")
    });
    let mut group = c.benchmark_group("dwarf/vmlinux");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("open+task_struct+members", |b| {
        b.iter(|| {
            let (_info, types) = open();
            lookup(&*types, "task_struct")
        })
    });
    group.finish();
}

criterion_group!(benches, test_kernel, vmlinux);
criterion_main!(benches);
