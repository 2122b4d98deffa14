//! Diagnosis figures on real test-kernel guests:
//! * latency from freeze request to report written (JSON + text), all built-in
//!   validators, 1 GiB guest (target: <= 20 ms median);
//! * the same for 256 MiB, 1 GiB and 4 GiB guests with the same structures (cost should
//!   follow what is walked, not RAM);
//! * ELF core write throughput and file size per RAM size.
//!
//! Run with `cargo bench --bench diagnosis`. Needs /dev/kvm.

use std::path::Path;
use std::time::{Duration, Instant};

use ambulance_capture::vmm::freeze_and_capture;
use ambulance_report::ReportDir;
use ambulance_vmm::{Guest, GuestConfig, Vmm};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn guest(vmm: &Vmm, mem: u64) -> Guest {
    let mut cfg = GuestConfig::new(format!("bench-{}m", mem >> 20), ambulance_test_kernel::ELF);
    cfg.vcpus = 2;
    cfg.memory_bytes = mem;
    cfg.cmdline = "fault=none".into();
    let g = vmm.start(cfg).expect("guest starts");
    let t = Instant::now();
    while g.registration().is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "no registration");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    g
}

/// One operator diagnosis: freeze, diagnose, write, resume; returns freeze->written.
fn one(
    g: &Guest,
    options: &ambulance_diagnose::Options,
    dir: &Path,
    core: bool,
) -> (Duration, u64) {
    let dir = ReportDir::open(dir).expect("report directory");
    let start = Instant::now();
    let capture = freeze_and_capture(g, "benchmark").expect("freeze");
    let (_, w) = capture
        .diagnose_here(options, Some(&dir), core)
        .expect("diagnosis");
    let w = w.expect("written");
    let elapsed = start.elapsed();
    let size = w
        .core
        .as_ref()
        .map_or(0, |c| std::fs::metadata(c).unwrap().len());
    for p in [Some(&w.json), Some(&w.text), w.core.as_ref()]
        .into_iter()
        .flatten()
    {
        let _ = std::fs::remove_file(p);
    }
    g.resume().expect("resume");
    (elapsed, size)
}

fn benches(c: &mut Criterion) {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED (no /dev/kvm)");
        return;
    }
    let vmm = Vmm::new().expect("KVM");
    let options = ambulance_cli::diagnose_options(Some("test"), None, None, None).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut group = c.benchmark_group("diagnosis_freeze_to_report");
    for mem in [256u64 << 20, 1 << 30, 4 << 30] {
        let g = guest(&vmm, mem);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{}MiB", mem >> 20)),
            &g,
            |b, g| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| one(g, &options, dir.path(), false).0)
                        .sum()
                })
            },
        );
        g.destroy();
    }
    group.finish();

    let mut group = c.benchmark_group("core_write");
    for mem in [256u64 << 20, 1 << 30] {
        let g = guest(&vmm, mem);
        let (_, size) = one(&g, &options, dir.path(), true);
        eprintln!(
            "core file for a {} MiB guest: {:.1} MiB",
            mem >> 20,
            size as f64 / (1 << 20) as f64
        );
        group.throughput(Throughput::Bytes(mem));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{}MiB", mem >> 20)),
            &g,
            |b, g| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| one(g, &options, dir.path(), true).0)
                        .sum()
                })
            },
        );
        g.destroy();
    }
    group.finish();
}

criterion_group! {
    name = diagnosis;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(8));
    targets = benches
}
criterion_main!(diagnosis);
