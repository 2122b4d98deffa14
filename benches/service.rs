//! Service figures on real test-kernel guests:
//! * freeze → report stored, through the service (worker process, fd passing, report
//!   files, index) vs in-process (freeze → report written, JSON + text) for a 1 GiB guest:
//!   the service's own share should be ≤ 10 ms median;
//! * interference: three busy guests' heartbeat rates while a fourth is diagnosed over and
//!   over (a diagnosis storm) vs without the storm: target ≤ 1 % slowdown;
//! * cost: one diagnosis's peak RSS and CPU time (the worker's, from `wait4`, as each
//!   stored report's `tool.cost` says) for 1, 4 and 16 GiB guests: goal ≤ 64 MiB and
//!   independent of guest RAM.
//!
//! Run with `cargo bench --bench service`. Needs /dev/kvm.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_capture::vmm::freeze_and_capture;
use ambulance_report::ReportDir;
use ambulance_service::{Service, ServiceConfig};
use ambulance_vmm::Guest;
use criterion::Criterion;

fn config(dir: &Path, guests: &[(&str, &str)]) -> ServiceConfig {
    let mut toml = String::new();
    for (name, memory) in guests {
        toml += &format!(
            "[[guest]]\nname = \"{name}\"\nmemory = \"{memory}\"\nvcpus = 1\ncmdline = \"fault=none\"\n\
             watchdog_ms = 0\npolicy = \"hold\"\n\n"
        );
    }
    let kernels = ambulance_cli::kernels::builtin().expect("built-in kernels");
    let mut cfg = ServiceConfig::parse(&toml, "<bench>", &kernels).expect("bench config");
    cfg.data_dir = dir.to_path_buf();
    cfg.api.socket = dir.join("api.sock");
    cfg.worker.executable = Some(env!("CARGO_BIN_EXE_ambulance").into());
    cfg
}

fn wait_registered(svc: &Service, name: &str) -> Guest {
    let t = Instant::now();
    loop {
        if let Some(g) = svc.vm(name).filter(|g| g.registration().is_some()) {
            std::thread::sleep(Duration::from_millis(300));
            return g;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{name} did not register"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn overhead(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let _enter = rt.enter();
    let svc = Service::new(config(dir.path(), &[("big", "1G")])).expect("service");
    svc.run().expect("service runs");
    let g = wait_registered(&svc, "big");
    let options = ambulance_cli::diagnose_options(Some("test"), None, None, None).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let scratch_dir = ReportDir::open(scratch.path()).unwrap();

    let mut group = c.benchmark_group("crash_to_report_1GiB");
    group.sample_size(30);
    group.bench_function("in_process", |b| {
        b.iter(|| {
            let capture = freeze_and_capture(&g, "benchmark").expect("freeze");
            let (_, w) = capture
                .diagnose_here(&options, Some(&scratch_dir), false)
                .expect("diagnosis");
            let w = w.expect("written");
            let _ = std::fs::remove_file(&w.json);
            let _ = std::fs::remove_file(&w.text);
            g.resume().expect("resume");
        })
    });
    group.bench_function("through_service", |b| {
        b.iter(|| {
            let e = rt.block_on(svc.diagnose_now("big")).expect("diagnosis");
            assert_eq!(e.status, ambulance_service::store::Status::Ok, "{e:?}");
        })
    });
    group.finish();

    // Where the service's time goes, from the stored reports' timelines.
    let mut phases: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for e in svc.store().list(&Default::default()).unwrap() {
        let text = std::fs::read_to_string(e.json.unwrap()).unwrap();
        let r = ambulance_report::Report::from_json(&text).unwrap();
        for p in r.timeline {
            phases.entry(p.name).or_default().push(p.duration_us);
        }
    }
    println!(
        "service report phases (median µs over {} reports):",
        phases.get("map").map_or(0, Vec::len)
    );
    for (name, mut v) in phases {
        v.sort_unstable();
        println!("  {name:<28} {:>8}", v[v.len() / 2]);
    }
    svc.shutdown();
}

fn rate(guests: &[Guest], window: Duration) -> Vec<f64> {
    let before: Vec<u64> = guests.iter().map(|g| g.heartbeat().unwrap_or(0)).collect();
    let t = Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    guests
        .iter()
        .zip(before)
        .map(|(g, b)| (g.heartbeat().unwrap_or(0) - b) as f64 / secs)
        .collect()
}

fn interference(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let _enter = rt.enter();
    let names = ["busy1", "busy2", "busy3", "target"];
    let specs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "256M")).collect();
    let svc = Service::new(config(dir.path(), &specs)).expect("service");
    svc.run().expect("service runs");
    let busy: Vec<Guest> = names[..3]
        .iter()
        .map(|n| wait_registered(&svc, n))
        .collect();
    wait_registered(&svc, "target");
    let window = Duration::from_secs(3);
    let (mut quiet, mut storm) = (Vec::new(), Vec::new());
    let mut diagnoses = 0u64;
    for _ in 0..3 {
        quiet.push(rate(&busy, window).iter().sum::<f64>());
        let stop = Arc::new(AtomicBool::new(false));
        let (svc2, stop2) = (svc.clone(), stop.clone());
        let storm_task = rt.spawn(async move {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                svc2.diagnose_now("target").await.expect("diagnosis");
                n += 1;
            }
            n
        });
        std::thread::sleep(Duration::from_millis(200));
        storm.push(rate(&busy, window).iter().sum::<f64>());
        stop.store(true, Ordering::Relaxed);
        diagnoses += rt.block_on(storm_task).expect("storm");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (q, s) = (median(&mut quiet), median(&mut storm));
    println!(
        "interference: 3 busy guests' heartbeats {q:.0}/s without a storm, {s:.0}/s during one \
         ({diagnoses} diagnoses of a 4th guest in {:.0} s): slowdown {:.2} %",
        3.0 * window.as_secs_f64(),
        (q - s) / q * 100.0
    );
    svc.shutdown();
}

/// Peak RSS and CPU time of a diagnosis, by guest RAM size, from the stored reports.
fn cost(rt: &tokio::runtime::Runtime) {
    const RUNS: usize = 10;
    let _enter = rt.enter();
    let mut peaks = Vec::new();
    for memory in ["1G", "4G", "16G"] {
        let dir = tempfile::tempdir().unwrap();
        let svc = Service::new(config(dir.path(), &[("guest", memory)])).expect("service");
        svc.run().expect("service runs");
        wait_registered(&svc, "guest");
        let mut costs = Vec::new();
        for _ in 0..RUNS {
            let e = rt.block_on(svc.diagnose_now("guest")).expect("diagnosis");
            assert_eq!(e.status, ambulance_service::store::Status::Ok, "{e:?}");
            let text = std::fs::read_to_string(e.json.expect("a report")).unwrap();
            let r = ambulance_report::Report::from_json(&text).unwrap();
            costs.push(r.tool.cost.expect("the daemon measured the worker"));
        }
        svc.shutdown();
        let median = |mut v: Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let peak = median(costs.iter().map(|c| c.peak_rss_bytes).collect());
        let max_peak = costs.iter().map(|c| c.peak_rss_bytes).max().unwrap_or(0);
        let cpu = median(
            costs
                .iter()
                .map(|c| c.user_cpu_us + c.system_cpu_us)
                .collect(),
        );
        let wall = median(costs.iter().map(|c| c.wall_us).collect());
        println!(
            "cost, {memory} guest ({RUNS} diagnoses): peak RSS median {:.1} MiB (max {:.1}), \
             CPU {:.2} ms (user + system) in {:.2} ms of wall clock",
            peak as f64 / 1048576.0,
            max_peak as f64 / 1048576.0,
            cpu as f64 / 1000.0,
            wall as f64 / 1000.0
        );
        peaks.push((memory, max_peak));
    }
    let worst = peaks.iter().map(|p| p.1).max().unwrap_or(0);
    let spread = worst - peaks.iter().map(|p| p.1).min().unwrap_or(0);
    println!(
        "cost: worst peak RSS {:.1} MiB (goal <= 64 MiB: {}); spread across 1-16 GiB guests \
         {:.1} MiB",
        worst as f64 / 1048576.0,
        if worst <= 64 << 20 { "met" } else { "NOT met" },
        spread as f64 / 1048576.0
    );
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED (no /dev/kvm)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    overhead(&mut c, &rt);
    interference(&rt);
    cost(&rt);
    c.final_summary();
}
