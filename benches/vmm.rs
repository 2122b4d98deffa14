//! Guest runner figures: boot-to-registration time of the test kernel, and freeze latency
//! (freeze request -> every vCPU stopped) of a busy 2-vCPU guest.
//!
//! Run with `cargo bench --bench vmm`. Needs /dev/kvm.

use std::path::Path;
use std::time::{Duration, Instant};

use ambulance_vmm::{GuestConfig, Vmm};
use criterion::{criterion_group, criterion_main, Criterion};

fn config(name: &str) -> GuestConfig {
    let mut cfg = GuestConfig::new(name, ambulance_test_kernel::ELF);
    cfg.vcpus = 2;
    cfg.memory_bytes = 64 << 20;
    cfg.cmdline = "fault=none".into();
    cfg
}

fn boot_to_registration(c: &mut Criterion) {
    let vmm = Vmm::new().expect("KVM");
    c.bench_function("boot_to_registration", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let guest = vmm.start(config("bench-boot")).expect("guest starts");
                while guest.registration().is_none() {
                    std::hint::spin_loop();
                    assert!(start.elapsed() < Duration::from_secs(30), "no registration");
                }
                total += start.elapsed();
                guest.destroy();
            }
            total
        })
    });
}

fn freeze_latency(c: &mut Criterion) {
    let vmm = Vmm::new().expect("KVM");
    let guest = vmm.start(config("bench-freeze")).expect("guest starts");
    while guest.registration().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    c.bench_function("freeze_latency", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let frozen = guest.freeze().expect("freeze");
                total += frozen
                    .stopped_at
                    .saturating_duration_since(frozen.requested_at);
                guest.resume().expect("resume");
                std::thread::sleep(Duration::from_millis(2));
            }
            total
        })
    });
    guest.destroy();
}

fn benches(c: &mut Criterion) {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED (no /dev/kvm)");
        return;
    }
    boot_to_registration(c);
    freeze_latency(c);
}

criterion_group! {
    name = vmm;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = benches
}
criterion_main!(vmm);
