//! Service figures on real test-kernel guests:
//! * freeze → report stored, through the service (worker process, fd passing, report
//!   files, index) vs in-process (freeze → report written, JSON + text) for a 1 GiB guest:
//!   the service's own share should be ≤ 10 ms median;
//! * crash → report listed by the API, from the guest's own fault (`fault=panic`: the
//!   panic doorbell; `fault=triple-fault`: a shutdown exit) under policy `restart`, a
//!   1 GiB and a 16 GiB guest side by side: from the failure time the VMM recorded to
//!   the first `GET /v1/reports` on the daemon's Unix socket that lists the report
//!   (polled every 2 ms). Goal: ≤ 20 ms median, and the same for 16 GiB as for 1 GiB;
//! * interference, as work: three guests running the test kernel's CPU-bound workload
//!   (`work=1`, units completed, not time) alone and while a fourth is diagnosed over and
//!   over (a diagnosis storm), in alternating quiet and storm windows of one run: goal
//!   ≤ 1 % loss (median over the pairs); and the host CPU time one diagnosis costs (the
//!   daemon's threads other than the vCPUs', plus the workers');
//! * cost: one diagnosis's peak RSS (the worker's `VmHWM`) and CPU time (from `wait4`), as
//!   each stored report's `tool.cost` says, for 1, 4 and 16 GiB guests: goal ≤ 64 MiB and
//!   independent of guest RAM.
//!
//! Every figure is printed as a `result: section | figure | measured | goal | notes` line.
//! Run with `cargo bench --bench service`. Needs /dev/kvm.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_capture::vmm::freeze_and_capture;
use ambulance_report::{ReportDir, Timestamp};
use ambulance_service::client::{request, Endpoint};
use ambulance_service::listen::Listeners;
use ambulance_service::{Service, ServiceConfig};
use ambulance_vmm::Guest;
use criterion::Criterion;
use serde_json::Value;

/// One bench result line (see benches/RESULTS.md).
fn result(section: &str, figure: &str, measured: &str, goal: &str, notes: &str) {
    println!("result: {section} | {figure} | {measured} | {goal} | {notes}");
}

/// `met`, or `NOT met (<why>)`.
fn goal(met: bool, why: impl FnOnce() -> String) -> String {
    if met {
        "met".into()
    } else {
        format!("NOT met ({})", why())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-quantile (nearest rank) of sorted `v`.
fn quantile<T: Copy>(v: &[T], p: f64) -> T {
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn median_f64(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

/// A service running `guests` (name, memory), all with `cmdline` and `policy`.
fn config(dir: &Path, guests: &[(&str, &str)], cmdline: &str, policy: &str) -> ServiceConfig {
    let mut toml = String::new();
    for (name, memory) in guests {
        toml += &format!(
            "[[guest]]\nname = \"{name}\"\nmemory = \"{memory}\"\nvcpus = 1\ncmdline = \"{cmdline}\"\n\
             watchdog_ms = 0\npolicy = \"{policy}\"\n\n"
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
    let svc =
        Service::new(config(dir.path(), &[("big", "1G")], "fault=none", "hold")).expect("service");
    svc.run().expect("service runs");
    let g = wait_registered(&svc, "big");
    let options = ambulance_cli::diagnose_options(Some("test"), None, None, None).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let scratch_dir = ReportDir::open(scratch.path()).unwrap();

    let (mut here, mut there) = (Vec::new(), Vec::new());
    let mut group = c.benchmark_group("crash_to_report_1GiB");
    group.sample_size(30);
    group.bench_function("in_process", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let capture = freeze_and_capture(&g, "benchmark").expect("freeze");
                let (_, w) = capture
                    .diagnose_here(&options, Some(&scratch_dir), false)
                    .expect("diagnosis");
                let w = w.expect("written");
                let took = t.elapsed();
                let _ = std::fs::remove_file(&w.json);
                let _ = std::fs::remove_file(&w.text);
                g.resume().expect("resume");
                here.push(took);
                total += took;
            }
            total
        })
    });
    group.bench_function("through_service", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let e = rt.block_on(svc.diagnose_now("big")).expect("diagnosis");
                let took = t.elapsed();
                assert_eq!(e.status, ambulance_service::store::Status::Ok, "{e:?}");
                there.push(took);
                total += took;
            }
            total
        })
    });
    group.finish();
    here.sort();
    there.sort();
    let (h, s) = (quantile(&here, 0.5), quantile(&there, 0.5));
    let share = ms(s) - ms(h);
    const SECTION: &str = "Service overhead (test kernel, 1 GiB)";
    result(
        SECTION,
        "freeze to report written, in process: median",
        &format!("{:.1} ms", ms(h)),
        "–",
        &format!("{} diagnoses", here.len()),
    );
    result(
        SECTION,
        "freeze to report stored, through the service: median",
        &format!("{:.1} ms", ms(s)),
        "–",
        &format!(
            "{} diagnoses; worker process, fd passing, store, index",
            there.len()
        ),
    );
    result(
        SECTION,
        "the service's own share (difference of the medians)",
        &format!("{share:.1} ms"),
        &goal(share <= 10.0, || "goal ≤ 10 ms".into()),
        "",
    );

    // Where the service's time goes, from the stored reports' timelines.
    let mut phases: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for e in svc.store().list(&Default::default()).unwrap() {
        let text = std::fs::read_to_string(e.json.unwrap()).unwrap();
        let r = ambulance_report::Report::from_json(&text).unwrap();
        for p in r.timeline {
            phases.entry(p.name).or_default().push(p.duration_us);
        }
    }
    for (name, mut v) in phases {
        v.sort_unstable();
        result(
            SECTION,
            &format!("phase {name}: median"),
            &format!("{} µs", quantile(&v, 0.5)),
            "–",
            &format!("over {} stored reports' timelines", v.len()),
        );
    }
    svc.shutdown();
}

/// Serves the service's API on its Unix socket (as `ambulance serve` does) until aborted.
fn serve_api(rt: &tokio::runtime::Runtime, svc: &Arc<Service>) -> tokio::task::JoinHandle<()> {
    let api = svc.config().api.clone();
    let listeners = rt
        .block_on(Listeners::bind(&api, "bench"))
        .expect("the API socket");
    let app = ambulance_service::api::router(svc.clone());
    rt.spawn(async move {
        let _ = listeners
            .serve_until_signal(app, std::future::pending())
            .await;
    })
}

/// `GET /v1/reports` through the Unix socket.
fn listed(rt: &tokio::runtime::Runtime, socket: &Endpoint) -> Vec<Value> {
    let r = rt
        .block_on(request(
            socket,
            "GET",
            "/v1/reports",
            None,
            "application/json",
            Duration::from_secs(10),
        ))
        .expect("GET /v1/reports");
    assert_eq!(r.status, 200, "GET /v1/reports: {}", r.text());
    serde_json::from_slice::<Value>(&r.body)
        .expect("a JSON list")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Latencies of the crashes of each of `guests`, until each has `crashes`: the time of the
/// first listing (`GET /v1/reports`, polled every 2 ms) that has a report minus the
/// failure time the VMM recorded (which reports keep to the millisecond: a figure is up
/// to 1 ms high). A report listed together with another of the same guest is left out
/// (we were not looking closely enough); their number is returned too.
fn crash_latencies(
    rt: &tokio::runtime::Runtime,
    socket: &Endpoint,
    guests: &[&str],
    crashes: usize,
) -> Vec<(Vec<Duration>, usize)> {
    let mut out = vec![(Vec::new(), 0); guests.len()];
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while out.iter().any(|(l, _)| l.len() < crashes) {
        let list = listed(rt, socket);
        let now = Timestamp::now();
        let fresh: Vec<&Value> = list
            .iter()
            .filter(|e| !seen.contains(e["id"].as_str().unwrap()))
            .collect();
        for (i, guest) in guests.iter().enumerate() {
            let mine: Vec<&&Value> = fresh.iter().filter(|e| e["guest"] == *guest).collect();
            for e in &mine {
                assert_eq!(e["status"], "ok", "the diagnosis failed: {e}");
            }
            match mine.as_slice() {
                [] => {}
                [e] => {
                    let t: Timestamp = e["time"].as_str().unwrap().parse().unwrap();
                    let us = now.as_microsecond() - t.as_microsecond();
                    out[i].0.push(Duration::from_micros(us.max(0) as u64));
                }
                more => out[i].1 += more.len(),
            }
        }
        for e in fresh {
            seen.insert(e["id"].as_str().unwrap().to_string());
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {crashes} crashes of each of {guests:?} in 600 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

/// Crash → report listed through the API, from the guest's own fault: per fault, a 1 GiB
/// and a 16 GiB guest crashing after every boot, side by side in one service.
fn crash_to_listed(rt: &tokio::runtime::Runtime) {
    const CRASHES: usize = 30;
    const SECTION: &str = "Crash to report listed (test kernel, guest's own fault)";
    let _enter = rt.enter();
    let sizes = [("small", "1G", "1 GiB"), ("large", "16G", "16 GiB")];
    for fault in ["panic", "triple-fault"] {
        let dir = tempfile::tempdir().unwrap();
        let guests: Vec<(&str, &str)> = sizes.iter().map(|(n, m, _)| (*n, *m)).collect();
        let cmdline = format!("fault={fault} fault_after_ms=100");
        let svc = Service::new(config(dir.path(), &guests, &cmdline, "restart")).expect("service");
        let server = serve_api(rt, &svc);
        svc.run().expect("service runs");
        let socket = Endpoint::Unix(svc.config().api.socket.clone());
        let names: Vec<&str> = sizes.iter().map(|(n, _, _)| *n).collect();
        let latencies = crash_latencies(rt, &socket, &names, CRASHES);
        server.abort();
        svc.shutdown();
        let mut medians = Vec::new();
        for ((_, _, size), (mut all, skipped)) in sizes.iter().zip(latencies) {
            all.sort();
            let (median, p99) = (quantile(&all, 0.5), quantile(&all, 0.99));
            let notes = format!(
                "{} crashes, policy restart, a 1 GiB and a 16 GiB guest crashing side by side; \
                 min {:.1} ms, max {:.1} ms{}",
                all.len(),
                ms(all[0]),
                ms(all[all.len() - 1]),
                if skipped > 0 {
                    format!("; {skipped} left out (listed together with another)")
                } else {
                    String::new()
                }
            );
            result(
                SECTION,
                &format!("fault={fault}, {size}: median"),
                &format!("{:.1} ms", ms(median)),
                &goal(ms(median) <= 20.0, || "goal ≤ 20 ms".into()),
                &notes,
            );
            result(
                SECTION,
                &format!("fault={fault}, {size}: p99"),
                &format!("{:.1} ms", ms(p99)),
                "–",
                &notes,
            );
            medians.push(ms(median));
        }
        let ratio = medians[1] / medians[0];
        result(
            SECTION,
            &format!("fault={fault}: 16 GiB median / 1 GiB median"),
            &format!("{ratio:.2}"),
            &goal(ratio <= 1.2, || "goal: the same, within 20 %".into()),
            "from the two medians above",
        );
    }
}

/// CPU time, in µs, of this process's threads other than the vCPUs' (named `g<id>v<n>`):
/// the daemon's own (API, supervisor, capture, store), and of its reaped children (the
/// workers).
fn host_cpu_us() -> (u64, u64) {
    let usage = |who| {
        let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `u` is valid for writes of a rusage; all-zero is a valid rusage too.
        let u = unsafe {
            libc::getrusage(who, u.as_mut_ptr());
            u.assume_init()
        };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(u.ru_utime) + us(u.ru_stime)
    };
    let mut vcpus_ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let is_vcpu = comm
            .trim()
            .strip_prefix('g')
            .and_then(|r| r.split_once('v'))
            .is_some_and(|(id, n)| {
                !id.is_empty()
                    && !n.is_empty()
                    && id.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit())
            });
        if is_vcpu {
            // schedstat: time on CPU (ns), time waiting, timeslices.
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            vcpus_ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    // After the vCPUs' (which keep running): the difference errs high, by microseconds.
    (
        usage(libc::RUSAGE_SELF).saturating_sub(vcpus_ns / 1000),
        usage(libc::RUSAGE_CHILDREN),
    )
}

/// Work units per second of each of `guests` over `window`.
fn work_rate(guests: &[Guest], window: Duration) -> Vec<f64> {
    let units = |g: &Guest| g.work_units().expect("a work counter");
    let before: Vec<u64> = guests.iter().map(units).collect();
    let t = Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    guests
        .iter()
        .zip(before)
        .map(|(g, b)| (units(g) - b) as f64 / secs)
        .collect()
}

fn interference(rt: &tokio::runtime::Runtime) {
    const PAIRS: usize = 5;
    const WINDOW: Duration = Duration::from_secs(2);
    const SECTION: &str = "Interference (test kernel, work units)";
    let dir = tempfile::tempdir().unwrap();
    let _enter = rt.enter();
    let names = ["busy1", "busy2", "busy3", "target"];
    let specs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "256M")).collect();
    let svc =
        Service::new(config(dir.path(), &specs, "fault=none work=1", "hold")).expect("service");
    svc.run().expect("service runs");
    let busy: Vec<Guest> = names[..3]
        .iter()
        .map(|n| wait_registered(&svc, n))
        .collect();
    wait_registered(&svc, "target");

    let (mut losses, mut quiets, mut diagnoses) = (Vec::new(), Vec::new(), 0u64);
    let (mut storm_daemon_us, mut storm_workers_us, mut storm_secs) = (0u64, 0u64, 0.0);
    let (mut quiet_daemon_us, mut quiet_secs) = (0u64, 0.0);
    for pair in 1..=PAIRS {
        let (d0, _) = host_cpu_us();
        let t = Instant::now();
        let quiet: f64 = work_rate(&busy, WINDOW).iter().sum();
        quiet_secs += t.elapsed().as_secs_f64();
        quiet_daemon_us += host_cpu_us().0.saturating_sub(d0);

        let (d0, w0) = host_cpu_us();
        let t = Instant::now();
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
        let storm: f64 = work_rate(&busy, WINDOW).iter().sum();
        stop.store(true, Ordering::Relaxed);
        let n = rt.block_on(storm_task).expect("storm");
        storm_secs += t.elapsed().as_secs_f64();
        let (d1, w1) = host_cpu_us();
        storm_daemon_us += d1.saturating_sub(d0);
        storm_workers_us += w1.saturating_sub(w0);
        diagnoses += n;

        let loss = (quiet - storm) / quiet * 100.0;
        losses.push(loss);
        quiets.push(quiet);
        result(
            SECTION,
            &format!("pair {pair}: 3 guests' work, quiet / storm"),
            &format!("{quiet:.0} / {storm:.0} units/s"),
            "–",
            &format!(
                "loss {loss:.2} %; {n} diagnoses of a 4th guest during the storm; {} s windows",
                WINDOW.as_secs()
            ),
        );
    }
    let median = median_f64(&losses);
    // A 1 % loss can only be told from the machine's own noise when the quiet windows
    // agree with each other to better than that.
    let q = median_f64(&quiets);
    let noise = quiets.iter().map(|x| (x - q).abs()).fold(0.0, f64::max) / q * 100.0;
    let verdict = if noise > 1.0 {
        format!(
            "inconclusive (the quiet windows alone differ from their median by up to \
             {noise:.1} %: the machine's noise hides a 1 % loss)"
        )
    } else {
        goal(median <= 1.0, || "goal ≤ 1 %".into())
    };
    result(
        SECTION,
        "work lost during a diagnosis storm: median over the pairs",
        &format!("{median:.2} %"),
        &verdict,
        &format!(
            "{PAIRS} quiet/storm pairs in one run; 3 busy 256 MiB guests, 1 vCPU each, on {} host CPUs",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
    );
    // The daemon's CPU beyond what it uses when idle, plus the workers', per diagnosis.
    let idle_rate = quiet_daemon_us as f64 / quiet_secs;
    let daemon = (storm_daemon_us as f64 - idle_rate * storm_secs).max(0.0);
    let per = |us: f64| us / diagnoses.max(1) as f64 / 1000.0;
    result(
        SECTION,
        "host CPU time per diagnosis (daemon + worker)",
        &format!("{:.1} ms", per(daemon + storm_workers_us as f64)),
        "–",
        &format!(
            "daemon {:.1} ms (its threads but the vCPUs', less its idle rate), worker {:.1} ms \
             (RUSAGE_CHILDREN), over {diagnoses} diagnoses of a 256 MiB guest",
            per(daemon),
            per(storm_workers_us as f64)
        ),
    );
    svc.shutdown();
}

/// Peak RSS and CPU time of a diagnosis, by guest RAM size, from the stored reports.
fn cost(rt: &tokio::runtime::Runtime) {
    const RUNS: usize = 10;
    const SECTION: &str = "Diagnosis cost (test kernel)";
    let _enter = rt.enter();
    let mut peaks = Vec::new();
    for (memory, size) in [("1G", "1 GiB"), ("4G", "4 GiB"), ("16G", "16 GiB")] {
        let dir = tempfile::tempdir().unwrap();
        let svc = Service::new(config(
            dir.path(),
            &[("guest", memory)],
            "fault=none",
            "hold",
        ))
        .expect("service");
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
            quantile(&v, 0.5)
        };
        let mib = |b: u64| b as f64 / 1048576.0;
        let peak = median(costs.iter().map(|c| c.peak_rss_bytes).collect());
        let max_peak = costs.iter().map(|c| c.peak_rss_bytes).max().unwrap_or(0);
        let cpu = median(
            costs
                .iter()
                .map(|c| c.user_cpu_us + c.system_cpu_us)
                .collect(),
        );
        let wall = median(costs.iter().map(|c| c.wall_us).collect());
        result(
            SECTION,
            &format!("{size} guest: worker peak RSS, max"),
            &format!("{:.1} MiB", mib(max_peak)),
            &goal(max_peak <= 64 << 20, || "goal ≤ 64 MiB".into()),
            &format!(
                "median {:.1} MiB over {RUNS} diagnoses (VmHWM of the worker and its PID-1 child)",
                mib(peak)
            ),
        );
        result(
            SECTION,
            &format!("{size} guest: worker CPU time, median"),
            &format!("{:.2} ms", cpu as f64 / 1000.0),
            "–",
            &format!(
                "user + system, in {:.2} ms of wall clock (median)",
                wall as f64 / 1000.0
            ),
        );
        peaks.push(max_peak);
    }
    let worst = peaks.iter().copied().max().unwrap_or(0);
    let spread = worst - peaks.iter().copied().min().unwrap_or(0);
    result(
        SECTION,
        "worker peak RSS spread across 1, 4 and 16 GiB guests",
        &format!("{:.1} MiB", spread as f64 / 1048576.0),
        &goal(spread <= 4 << 20, || {
            "goal: independent of guest RAM, within 4 MiB".into()
        }),
        "max minus min of the per-size maxima",
    );
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        println!("SKIPPED (no /dev/kvm)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    cost(&rt);
    interference(&rt);
    overhead(&mut c, &rt);
    crash_to_listed(&rt);
    c.final_summary();
}
