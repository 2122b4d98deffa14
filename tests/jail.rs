//! The diagnosis worker as a jail: real `ambulance worker` processes, given a real frozen
//! KVM guest's RAM the way the daemon gives it, try every escape the jail must stop
//! (`ambulance_service::jail::ESCAPES`, the worker's test mode) — each must fail, most by
//! the seccomp filter killing the worker with SIGSYS — and the guest's RAM hashes the same
//! before and after. A jailed worker still diagnoses, with debug info, rules and a core,
//! and says in the report how it was confined.

mod common;

use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ambulance_capture::{vmm as capture_vmm, Capture};
use ambulance_ram::GuestRam;
use ambulance_report::ReportId;
use ambulance_service::jail::{ESCAPES, ESCAPE_ENV};
use ambulance_service::worker::{self, Limits, Request, DELAY_ENV};
use ambulance_vmm::{EventKind, Guest, Vmm};
use common::{test_guest, vmm, wait_for_failure};

fn limits() -> Limits {
    Limits {
        address_space_bytes: 2 << 30,
        cpu_seconds: 60,
        timeout: Duration::from_secs(60),
    }
}

/// A test-kernel guest that corrupted its run queue and failed, frozen, and its capture.
fn frozen(vmm: &Vmm, name: &str) -> (Guest, Capture) {
    let events = vmm.events();
    let guest = vmm
        .start(test_guest(
            name,
            "fault=list-corruption fault_after_ms=300 seed=2",
        ))
        .unwrap();
    let seen = wait_for_failure(&events, &guest, Duration::from_secs(30));
    let e = seen.events.last().unwrap();
    let EventKind::Failure {
        cause,
        vcpu,
        detail,
        frozen,
    } = &e.kind
    else {
        panic!("not a failure: {e:?}")
    };
    let failure = capture_vmm::failure_info(cause, *vcpu, detail, e.time);
    let capture = capture_vmm::capture(&guest, failure, capture_vmm::frozen_from(frozen, true))
        .expect("capture");
    (guest, capture)
}

fn request(
    capture: &Capture,
    debuginfo: Option<PathBuf>,
    rules: Option<PathBuf>,
    core: Option<PathBuf>,
) -> Request {
    Request {
        subject: capture.subject(ReportId::mint(&capture.guest.name, capture.failure.time)),
        regions: capture.ram.regions().to_vec(),
        debuginfo,
        rules,
        core_path: core,
        timeline: capture.timeline(),
    }
}

/// A hash of every byte of guest RAM, read through the exported descriptor.
fn hash(ram: &GuestRam) -> u64 {
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for r in ram.regions() {
        let mut done = 0u64;
        while done < r.size {
            let n = (r.size - done).min(buf.len() as u64) as usize;
            ram.file()
                .read_exact_at(&mut buf[..n], r.file_offset + done)
                .unwrap();
            h.write(&buf[..n]);
            done += n as u64;
        }
    }
    h.finish()
}

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ambulance"))
}

#[test]
fn every_escape_fails_and_guest_ram_is_untouched() {
    // The worker's escape mode is compiled into debug builds only.
    if !ambulance_testkit::available("a debug build", cfg!(debug_assertions)) {
        return;
    }
    let Some(vmm) = vmm() else { return };
    let (_guest, capture) = frozen(&vmm, "prisoner");
    let before = hash(&capture.ram);
    let me = std::process::id();
    let mut outcomes = Vec::new();
    for &(name, kills) in ESCAPES {
        let spec = format!("{name}:{me}");
        let result = worker::run_with_env(
            program(),
            &limits(),
            &request(&capture, None, None, None),
            &capture.ram,
            &[(ESCAPE_ENV, &spec)],
            |_| {},
        );
        let why = match result {
            Ok(report) => panic!("{name}: the worker diagnosed instead: {:?}", report.id),
            Err(why) => why,
        };
        eprintln!("{name}: {why}");
        assert!(
            !why.contains("SUCCEEDED"),
            "{name}: the jail let it through: {why}"
        );
        if kills {
            assert!(
                why.contains("killed by signal SIGSYS") && why.contains("seccomp"),
                "{name}: expected the filter to kill the worker, got: {why}"
            );
        } else {
            assert!(
                why.starts_with(&format!("escape {name}: ")) && !why.contains("no such escape"),
                "{name}: expected an allowed, harmless attempt, got: {why}"
            );
        }
        outcomes.push((name, why));
    }
    assert_eq!(outcomes.len(), ESCAPES.len());
    assert_eq!(
        hash(&capture.ram),
        before,
        "guest RAM changed while the escapes ran"
    );
}

#[test]
fn a_jailed_worker_diagnoses_with_debuginfo_rules_and_a_core() {
    let Some(vmm) = vmm() else { return };
    let (_guest, capture) = frozen(&vmm, "inmate");
    let before = hash(&capture.ram);
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel.elf");
    std::fs::write(&kernel, ambulance_test_kernel::ELF).unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"pid-range\"\nroot = \"tasks\"\nfield = \"pid\"\ncheck = \"range\"\n\
         min = 0\nmax = 1000000\nseverity = \"error\"\n",
    )
    .unwrap();
    let core = dir.path().join("guest.core.tmp");
    let report = worker::run(
        program(),
        &limits(),
        &request(&capture, Some(kernel), Some(rules), Some(core.clone())),
        &capture.ram,
        |_| {},
    )
    .expect("a jailed worker diagnoses");

    let sandbox = report
        .tool
        .sandbox
        .clone()
        .expect("the report says how it was confined");
    eprintln!("sandbox: {sandbox:?}");
    for must in ["no_new_privs", "seccomp", "undumpable"] {
        assert!(sandbox.applied.iter().any(|a| a == must), "{sandbox:?}");
    }
    for r in &sandbox.refused {
        assert!(r.contains(": "), "a refusal says why: {r}");
    }
    // The daemon measured what the worker cost (wait4), including its PID-1 child.
    let cost = report
        .tool
        .cost
        .expect("the daemon says what the diagnosis cost");
    assert!(
        cost.peak_rss_bytes > 1 << 20 && cost.user_cpu_us + cost.system_cpu_us > 0,
        "{cost:?}"
    );
    assert!(cost.wall_us >= cost.user_cpu_us / 2, "{cost:?}");
    let phases: Vec<_> = report.timeline.iter().map(|p| p.name.as_str()).collect();
    assert!(
        phases.contains(&"jail") && phases.contains(&"core"),
        "{phases:?}"
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.validator == "list-integrity"),
        "the run-queue corruption is found under the filter:\n{}",
        ambulance_report::text::render(&report)
    );
    assert!(!report.structures.is_empty(), "structures were walked");
    let core_len = std::fs::metadata(&core).unwrap().len();
    assert!(core_len > 4096, "the core was written: {core_len} bytes");
    let offline = ambulance_introspect::memory::ElfCore::open(&core).expect("the core opens");
    drop(offline);
    assert_eq!(hash(&capture.ram), before);
}

/// The process that runs under the filter: `worker` itself, or (with a PID namespace) its
/// child — once its filter is installed (`Seccomp: 2` in its status).
fn jailed_process(worker: u32) -> Option<u32> {
    let filtered = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| s.lines().any(|l| l == "Seccomp:\t2"))
    };
    if filtered(worker) {
        return Some(worker);
    }
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid …: the comm may hold spaces, the last ')' ends it.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == worker && filtered(pid)).then_some(pid)
    })
}

/// A signal that ends the diagnosing process reaches the daemon as it was sent — even
/// when that process is PID 1 of its namespace, which the kernel shields from signals it
/// has no handler for (the CPU-time limit's SIGXCPU among them).
#[test]
fn a_signal_that_ends_the_jailed_worker_reaches_the_daemon() {
    let Some(vmm) = vmm() else { return };
    let (_guest, capture) = frozen(&vmm, "signalled");
    let (tx, rx) = std::sync::mpsc::channel();
    let killer = std::thread::spawn(move || {
        let worker: u32 = rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let target = loop {
            if let Some(pid) = jailed_process(worker) {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the worker never installed its filter"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target as i32),
            nix::sys::signal::Signal::SIGXCPU,
        )
        .unwrap();
        target != worker
    });
    let result = worker::run_with_env(
        program(),
        &limits(),
        &request(&capture, None, None, None),
        &capture.ram,
        &[(DELAY_ENV, "30000")],
        |pid| tx.send(pid).unwrap(),
    );
    let in_pid_namespace = killer.join().unwrap();
    let why = result.expect_err("the worker was signalled before it diagnosed");
    assert!(
        why.contains("killed by signal SIGXCPU (CPU-time limit reached)"),
        "{why} (the jailed process was {}the worker's child)",
        if in_pid_namespace { "" } else { "not " }
    );
}

/// A diagnosis that runs out of the daemon's time still ends in a report: the worker's
/// budget ends before the daemon's timeout, every phase after it is skipped, and the
/// report says which.
#[test]
fn a_worker_out_of_time_answers_with_a_partial_report() {
    let Some(vmm) = vmm() else { return };
    let (_guest, capture) = frozen(&vmm, "late");
    let timeout = Duration::from_secs(3);
    let limits = Limits {
        timeout,
        ..limits()
    };
    // Asleep past its budget (2.7 s) but not past the daemon's timeout.
    let delay = worker::budget(timeout) + Duration::from_millis(100);
    assert!(delay < timeout);
    let report = worker::run_with_env(
        program(),
        &limits,
        &request(&capture, None, None, None),
        &capture.ram,
        &[(DELAY_ENV, &delay.as_millis().to_string())],
        |_| {},
    )
    .expect("a partial report, not a killed worker");
    let deadline = report
        .findings
        .iter()
        .find(|f| f.message.contains("deadline"))
        .unwrap_or_else(|| {
            panic!(
                "no finding says the deadline ran out: {:#?}",
                report.findings
            )
        });
    assert!(
        deadline.message.contains("the validators (not started)"),
        "{}",
        deadline.message
    );
}

/// The peak memory a report says is the worker's own: not the daemon's, which a worker
/// started by `posix_spawn` inherits as its `ru_maxrss` at `execve` (and which grows with
/// the RAM of the guests the daemon runs).
#[test]
fn the_peak_memory_a_report_says_is_the_workers_not_the_daemons() {
    const DAEMON: usize = 384 << 20;
    let Some(vmm) = vmm() else { return };
    let (_guest, capture) = frozen(&vmm, "heavy-daemon");
    // This process plays the daemon: make its resident peak far larger than a worker's.
    let ballast = vec![0x5au8; DAEMON];
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel.elf");
    std::fs::write(&kernel, ambulance_test_kernel::ELF).unwrap();
    let report = worker::run(
        program(),
        &limits(),
        &request(&capture, Some(kernel), None, None),
        &capture.ram,
        |_| {},
    )
    .expect("a jailed worker diagnoses");
    std::hint::black_box(&ballast);
    let cost = report.tool.cost.expect("the daemon measured the worker");
    assert!(
        cost.peak_rss_bytes > 1 << 20 && cost.peak_rss_bytes < (DAEMON / 2) as u64,
        "peak {} MiB with a {} MiB daemon: {cost:?}",
        cost.peak_rss_bytes >> 20,
        DAEMON >> 20
    );
}
