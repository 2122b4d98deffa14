//! Our ELF core against QEMU's `dump-guest-memory`, paired on the same live Linux guest:
//! Debian's cloud kernel under QEMU (TCG, 2 vCPUs) at 1 GiB and at 4 GiB, its RAM in a
//! sparse shared file on tmpfs (/dev/shm, as hosts run guests), running (no panic). Each
//! round runs `ambulance attach --now --core` (the release binary: connect to QMP,
//! pause, diagnose, write the core, resume) and then QMP `dump-guest-memory` with
//! `paging: false` (the core crash and drgn expect), and measures for each: the time, the
//! core file's apparent and allocated size, and the RAM file's allocated bytes
//! (`st_blocks` × 512) before and after — reading a tmpfs hole through a mapping
//! allocates it, so a tool that reads the holes costs the host the guest's whole RAM.
//!
//! Ours goes first in every round: once QEMU has read every page, no hole is left, so the
//! first round shows each tool on a guest as it runs (RAM file sparse), and the later
//! rounds ours on a RAM file QEMU has filled. Medians and ratios are printed as `result:`
//! lines (benches/figures).
//!
//! Run with `cargo bench --bench linux_core`. Needs qemu-system-x86_64 (installed by the
//! fixture script) but not KVM.

#[path = "../tests/linux_guest/mod.rs"]
mod linux_guest;

mod figures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use figures::{goal, human, median, mib, ratio, result};
use linux_guest::{allocated, connect, runtime, Boot, Guest};
use serde_json::json;

/// Paired rounds per guest (odd: the median is a round's own figure).
const ROUNDS: usize = 3;
/// How much the RAM file may grow around our core and still count as "holes stayed
/// holes": the guest runs meanwhile and may touch a few pages of its own.
const SLACK: u64 = 16 << 20;
const SECTION: &str = "Linux core: ours vs QEMU's dump-guest-memory";

/// One tool's run in one round.
struct Run {
    time: Duration,
    /// Ours: the report timeline's phases (name, µs), the core's among them.
    phases: Vec<(String, u64)>,
    core_apparent: u64,
    core_allocated: u64,
    ram_before: u64,
    ram_after: u64,
}

/// Waits until init has listed its processes (the system is up).
fn wait_up(guest: &Guest) {
    guest.wait_for_console(
        "AMBULANCE-PS-END",
        "the guest did not come up",
        Duration::from_secs(240),
    );
}

/// Measures `core` and removes it (a 4 GiB core per round would fill the disk).
fn measure_core(core: &Path) -> (u64, u64) {
    let sizes = (
        std::fs::metadata(core).expect("the core exists").len(),
        allocated(core),
    );
    std::fs::remove_file(core).unwrap();
    sizes
}

/// `ambulance attach --now --core` on the running guest, as a process.
fn ours(guest: &Guest, reports: &Path) -> Run {
    let ram_before = allocated(&guest.ram);
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .arg("attach")
        .arg("--qmp")
        .arg(&guest.qmp)
        .arg("--memory")
        .arg(&guest.ram)
        .arg("--report-dir")
        .arg(reports)
        .args(["--core", "--now", "--json", "--name", "debian"])
        .output()
        .expect("ambulance attach starts");
    let time = t.elapsed();
    let ram_after = allocated(&guest.ram);
    assert!(
        out.status.success(),
        "attach failed:\n{}\nconsole:\n{}",
        String::from_utf8_lossy(&out.stderr),
        guest.console_text()
    );
    let core: PathBuf = std::fs::read_dir(reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "core"))
        .expect("attach --core wrote a core");
    let (core_apparent, core_allocated) = measure_core(&core);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("attach --json prints the report");
    let phases = report["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("?").to_string();
            (name, p["duration_us"].as_u64().unwrap_or(0))
        })
        .collect();
    Run {
        time,
        phases,
        core_apparent,
        core_allocated,
        ram_before,
        ram_after,
    }
}

/// QMP `dump-guest-memory` (paging=false) on the running guest: connect and the
/// synchronous command.
fn qemus(guest: &Guest, rt: &tokio::runtime::Runtime, core: &Path) -> Run {
    let ram_before = allocated(&guest.ram);
    let t = Instant::now();
    rt.block_on(async {
        let (qmp, _events) = connect(&guest.qmp).await;
        qmp.execute_with_timeout(
            "dump-guest-memory",
            json!({"paging": false, "protocol": format!("file:{}", core.display())}),
            Duration::from_secs(600),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    });
    let time = t.elapsed();
    let ram_after = allocated(&guest.ram);
    let (core_apparent, core_allocated) = measure_core(core);
    Run {
        time,
        phases: Vec::new(),
        core_apparent,
        core_allocated,
        ram_before,
        ram_after,
    }
}

fn paired(fixture: &Path, memory_mib: u64, rt: &tokio::runtime::Runtime) {
    let size = format!("{} GiB guest", memory_mib / 1024);
    let guest = Guest::boot(
        fixture,
        &Boot {
            memory_mib,
            panic_after: None,
            ..Boot::default()
        },
    );
    wait_up(&guest);
    let on_tmpfs = guest.ram.starts_with("/dev/shm");
    let dir = tempfile::tempdir().unwrap();
    let (mut our_runs, mut their_runs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let o = ours(&guest, &dir.path().join(format!("reports-{round}")));
        let q = qemus(&guest, rt, &dir.path().join(format!("qemu-{round}.vmcore")));
        eprintln!(
            "{size}, round {round}: ours {} (RAM file {} -> {}), QEMU's {} (RAM file {} -> {})",
            human(o.time),
            mib(o.ram_before),
            mib(o.ram_after),
            human(q.time),
            mib(q.ram_before),
            mib(q.ram_after)
        );
        our_runs.push(o);
        their_runs.push(q);
    }
    let ram_size = std::fs::metadata(&guest.ram).unwrap().len();
    guest.quit();

    let times = |runs: &[Run]| median(&runs.iter().map(|r| r.time).collect::<Vec<_>>());
    let (o, q) = (&our_runs[0], &their_runs[0]);
    let (ot, qt) = (times(&our_runs), times(&their_runs));
    let later: Vec<String> = our_runs[1..].iter().map(|r| human(r.time)).collect();
    result(
        SECTION,
        &format!("{size}: ambulance attach --now --core"),
        &human(ot),
        "–",
        &format!(
            "median of {ROUNDS} rounds; round 1 (RAM file sparse) {}, later rounds (RAM file \
             filled by QEMU's dump) {}; a whole process: QMP, pause, diagnosis, core, resume",
            human(o.time),
            later.join(", ")
        ),
    );
    let core_phase = |r: &Run| {
        let us = r.phases.iter().find(|p| p.0 == "core").map_or(0, |p| p.1);
        Duration::from_micros(us)
    };
    let core_only = median(&our_runs.iter().map(core_phase).collect::<Vec<_>>());
    let phases: Vec<String> = o
        .phases
        .iter()
        .map(|(n, us)| format!("{n} {}", human(Duration::from_micros(*us))))
        .collect();
    result(
        SECTION,
        &format!("{size}: our core alone (the report's `core` phase)"),
        &human(core_only),
        "–",
        &format!(
            "median of {ROUNDS} rounds; round 1 {}; round 1's phases: {}",
            human(core_phase(o)),
            phases.join(", ")
        ),
    );
    result(
        SECTION,
        &format!("{size}: QMP dump-guest-memory (paging=false)"),
        &human(qt),
        "–",
        &format!("median of {ROUNDS} rounds; QMP connect and the synchronous command"),
    );
    result(
        SECTION,
        &format!("{size}: time, ours / QEMU's"),
        &ratio(ot.as_secs_f64(), qt.as_secs_f64()),
        "–",
        &format!(
            "medians; round 1 alone: {}; our core phase alone / QEMU's: {}",
            ratio(o.time.as_secs_f64(), q.time.as_secs_f64()),
            ratio(core_only.as_secs_f64(), qt.as_secs_f64())
        ),
    );
    for (who, r) in [("ours", o), ("QEMU's", q)] {
        result(
            SECTION,
            &format!("{size}: core file, {who}"),
            &format!(
                "{} apparent, {} allocated",
                mib(r.core_apparent),
                mib(r.core_allocated)
            ),
            "–",
            "round 1",
        );
    }
    result(
        SECTION,
        &format!("{size}: core file allocated, ours / QEMU's"),
        &ratio(o.core_allocated as f64, q.core_allocated as f64),
        "–",
        &format!(
            "apparent: {}",
            ratio(o.core_apparent as f64, q.core_apparent as f64)
        ),
    );
    let fs = if on_tmpfs {
        "the RAM file on /dev/shm (tmpfs)"
    } else {
        "the RAM file NOT on tmpfs (no /dev/shm): reading holes allocates nothing there"
    };
    let grown = o.ram_after.saturating_sub(o.ram_before);
    result(
        SECTION,
        &format!("{size}: RAM file allocated around our core"),
        &format!(
            "{} → {} (+{}) of {}",
            mib(o.ram_before),
            mib(o.ram_after),
            mib(grown),
            mib(ram_size)
        ),
        &goal(grown <= SLACK, || format!("holes read: +{}", mib(grown))),
        &format!("round 1, st_blocks × 512; {fs}; goal: holes stay holes (growth ≤ {} while the guest runs)", mib(SLACK)),
    );
    result(
        SECTION,
        &format!("{size}: RAM file allocated around QEMU's dump"),
        &format!(
            "{} → {} (+{}) of {}",
            mib(q.ram_before),
            mib(q.ram_after),
            mib(q.ram_after.saturating_sub(q.ram_before)),
            mib(ram_size)
        ),
        "–",
        &format!("round 1; {fs}; host memory the dump leaves allocated until the guest stops"),
    );
}

fn main() {
    // `cargo bench` passes criterion's flags; this bench has none of its own.
    let fixture = linux_guest::fixture(false);
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ambulance_testkit::available("qemu-system-x86_64", qemu) {
        return;
    }
    let rt = runtime();
    for memory_mib in [1024, 4096] {
        paired(&fixture, memory_mib, &rt);
    }
}
