//! Linux diagnosis figures on a real Debian 6.1 kernel's 512 MiB QEMU dump (panicked by
//! sysrq under TCG; see tests/linux_guest):
//! * a whole diagnosis — open the dump, kallsyms + BTF from guest memory, the task list
//!   walked and validated, stack-end magic, dmesg from the printk ring, the panic
//!   message — with nothing but the dump (target: <= 250 ms);
//! * the same with the `-dbg` vmlinux's DWARF, its debug info opened once (as the
//!   service keeps it) and opened for each diagnosis;
//! * the VMCOREINFO scan of guest RAM that live guests without a registration need;
//! * drgn (when `import drgn` works) answering the same three questions — dmesg, tasks,
//!   panic message — on the same dump with the same vmlinux, for the ratio.
//!
//! Run with `cargo bench --bench linux`. Needs qemu-system-x86_64 (installed by the
//! fixture script) but not KVM.

#[path = "../tests/linux_guest/mod.rs"]
mod linux_guest;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_diagnose::{diagnose, Options, Subject};
use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::memory::ElfCore;
use criterion::{criterion_group, criterion_main, Criterion};

/// One offline diagnosis of the dump, as `ambulance diagnose --core` does it.
fn diagnose_dump(core: &std::path::Path, options: &Options) -> ambulance_report::Report {
    let core = ElfCore::open(core).expect("the dump opens");
    let subject = Subject::from_core(&core);
    let report = diagnose(Arc::new(core), &subject, options, Vec::new()).expect("a report");
    let k = report.kernel.as_ref().expect("a Linux report");
    assert!(!k.tasks.is_empty() && !k.dmesg.is_empty() && k.panic_message.is_some());
    report
}

fn benches(c: &mut Criterion) {
    let fixture = linux_guest::fixture(true);
    let vmlinux = fixture.join("vmlinux");
    let t = Instant::now();
    let dump = linux_guest::panicked_dump(&fixture, 512);
    eprintln!(
        "boot to panic and dump of a 512 MiB guest: {:?}",
        t.elapsed()
    );

    let mut g = c.benchmark_group("linux");
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("diagnose/kallsyms+btf", |b| {
        b.iter(|| diagnose_dump(&dump.core, &Options::default()))
    });
    let debuginfo = Arc::new(DebugInfo::open(&vmlinux).expect("the -dbg vmlinux opens"));
    let warm = Options {
        debuginfo: Some(debuginfo),
        ..Options::default()
    };
    g.bench_function("diagnose/dwarf (debug info kept open)", |b| {
        b.iter(|| diagnose_dump(&dump.core, &warm))
    });
    g.sample_size(10);
    g.bench_function("diagnose/dwarf (debug info opened each time)", |b| {
        b.iter(|| {
            let options = Options {
                debuginfo: Some(Arc::new(DebugInfo::open(&vmlinux).unwrap())),
                ..Options::default()
            };
            diagnose_dump(&dump.core, &options)
        })
    });
    g.sample_size(20);
    let core = ElfCore::open(&dump.core).unwrap();
    g.bench_function("vmcoreinfo scan of 512 MiB", |b| {
        b.iter(|| ambulance_linux::scan_vmcoreinfo(&core).expect("found"))
    });
    g.finish();

    // Phases of one diagnosis each way, for the record.
    for (name, options) in [("kallsyms+btf", Options::default()), ("dwarf", warm)] {
        let r = diagnose_dump(&dump.core, &options);
        let phases: Vec<String> = r
            .timeline
            .iter()
            .map(|p| format!("{} {} µs", p.name, p.duration_us))
            .collect();
        eprintln!("phases ({name}): {}", phases.join(", "));
    }

    // drgn on the same dump, same questions, same vmlinux.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/drgn_answers.py");
    let has_drgn = Command::new("python3")
        .args(["-c", "import drgn"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_drgn {
        eprintln!("drgn: SKIPPED (python3 -c 'import drgn' fails; pip install drgn)");
        return;
    }
    for args in [
        vec![dump.core.clone(), vmlinux.clone()],
        vec![dump.core.clone()],
    ] {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let out = Command::new("python3")
                .arg(script)
                .args(&args)
                .output()
                .expect("python3 runs");
            runs.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        eprintln!(
            "drgn {}: {}",
            if args.len() == 2 {
                "with the vmlinux"
            } else {
                "with the dump alone"
            },
            runs.join("\n    ")
        );
    }
}

criterion_group!(linux, benches);
criterion_main!(linux);
