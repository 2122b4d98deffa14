//! What one diagnosis of a live Linux guest costs the host, as production runs it: a
//! `Service` with a `kind = "qemu"` guest (QMP socket, RAM file, the Linux agent's
//! registration), Debian's cloud kernel under QEMU (TCG, 2 vCPUs) at 1, 4 and 16 GiB,
//! running; `diagnose_now` pauses it, a worker process diagnoses it (kallsyms, BTF, tasks,
//! dmesg, every task's stack), the guest resumes. The worker's peak RSS and CPU time come
//! from `wait4`, as each stored report's `tool.cost` says. Goal: ≤ 64 MiB, independent of
//! guest RAM.
//!
//! Run with `cargo bench --bench linux_cost`. Needs qemu-system-x86_64 (installed by the
//! fixture script) but not KVM.

#[path = "../tests/linux_guest/mod.rs"]
mod linux_guest;

mod figures;

use std::path::Path;
use std::time::{Duration, Instant};

use ambulance_service::{Service, ServiceConfig};
use figures::{goal, human, median, mib, result};
use linux_guest::{Boot, Guest, GuestPaths};

/// Diagnoses per guest size.
const RUNS: usize = 5;
/// The goal for one diagnosis's peak RSS.
const GOAL: u64 = 64 << 20;
const SECTION: &str = "Linux: cost of one diagnosis";

fn config(dir: &Path, paths: &GuestPaths, registration: &Path) -> ServiceConfig {
    let toml = format!(
        "[[guest]]\nname = \"debian\"\nkind = \"qemu\"\nqmp = \"{}\"\nmemory_file = \"{}\"\n\
         registration = \"{}\"\npolicy = \"hold\"\n",
        paths.qmp.display(),
        paths.ram.display(),
        registration.display()
    );
    let kernels = ambulance_cli::kernels::builtin().expect("built-in kernels");
    let mut cfg = ServiceConfig::parse(&toml, "<bench>", &kernels).expect("bench config");
    cfg.data_dir = dir.join("data");
    cfg.api.socket = dir.join("api.sock");
    cfg.worker.executable = Some(env!("CARGO_BIN_EXE_ambulance").into());
    cfg
}

/// Peak RSS of `RUNS` diagnoses of a `memory_mib` guest; the worst.
fn cost(fixture: &Path, memory_mib: u64, rt: &tokio::runtime::Runtime) -> u64 {
    let size = format!("{} GiB guest", memory_mib / 1024);
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let paths = GuestPaths::new();
    let registration = paths.dir.path().join("reg.sock");
    let svc = Service::new(config(dir.path(), &paths, &registration)).expect("service");
    svc.run().expect("service runs");
    let guest = Guest::boot_at(
        paths,
        fixture,
        &Boot {
            memory_mib,
            panic_after: None,
            registration: Some(registration.clone()),
            ..Boot::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    while !svc.guest("debian").is_some_and(|g| g.registered) {
        assert!(
            Instant::now() < deadline,
            "the guest did not register; console:\n{}",
            guest.console_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut costs = Vec::new();
    for _ in 0..RUNS {
        let e = rt.block_on(svc.diagnose_now("debian")).expect("diagnosis");
        assert_eq!(e.status, ambulance_service::store::Status::Ok, "{e:?}");
        let text = std::fs::read_to_string(e.json.expect("a report")).unwrap();
        let r = ambulance_report::Report::from_json(&text).unwrap();
        let k = r.kernel.as_ref().expect("a Linux report");
        assert!(!k.tasks.is_empty(), "the diagnosis read the tasks");
        costs.push(r.tool.cost.expect("the service measured the worker"));
    }
    svc.shutdown();
    guest.quit();

    let peaks: Vec<u64> = costs.iter().map(|c| c.peak_rss_bytes).collect();
    let worst = peaks.iter().copied().max().unwrap_or(0);
    let cpu = median(
        &costs
            .iter()
            .map(|c| c.user_cpu_us + c.system_cpu_us)
            .collect::<Vec<_>>(),
    );
    let wall = median(&costs.iter().map(|c| c.wall_us).collect::<Vec<_>>());
    result(
        SECTION,
        &format!("{size}: worker peak RSS"),
        &format!("{} median, {} max", mib(median(&peaks)), mib(worst)),
        &goal(worst <= GOAL, || format!("{} > 64 MiB", mib(worst))),
        &format!(
            "{RUNS} diagnoses through the service (report.tool.cost, wait4); CPU {} (user + \
             system) in {} of wall clock, medians",
            human(Duration::from_micros(cpu)),
            human(Duration::from_micros(wall))
        ),
    );
    worst
}

fn main() {
    let fixture = linux_guest::fixture(false);
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ambulance_testkit::available("qemu-system-x86_64", qemu) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let worst: Vec<u64> = [1024, 4096, 16384]
        .into_iter()
        .map(|m| cost(&fixture, m, &rt))
        .collect();
    let max = worst.iter().copied().max().unwrap_or(0);
    let spread = max - worst.iter().copied().min().unwrap_or(0);
    result(
        SECTION,
        "worst peak RSS over 1, 4 and 16 GiB guests; spread",
        &format!("{}; spread {}", mib(max), mib(spread)),
        &goal(max <= GOAL && spread <= 8 << 20, || {
            format!(
                "worst {}, spread {} (goal ≤ 64 MiB and independent of RAM: spread ≤ 8 MiB)",
                mib(max),
                mib(spread)
            )
        }),
        "independent of guest RAM taken as a spread of at most 8 MiB",
    );
}
