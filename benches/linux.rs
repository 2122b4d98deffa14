//! Linux diagnosis figures on a real Debian 6.1 kernel's QEMU dumps of a 512 MiB and a
//! 2 GiB guest (2 vCPUs, panicked by sysrq under TCG, dumped with `dump-guest-memory`;
//! see tests/linux_guest), side by side with drgn:
//! * the whole diagnosis — open the dump, kallsyms + BTF from guest memory, the task list
//!   walked and validated, stack-end magic, dmesg, the panic message, and the stack
//!   trace of every task and CPU (ORC) — with nothing but the dump (goal: < 50 ms), and
//!   with the `-dbg` vmlinux's DWARF (kept open as the service keeps it, or opened each
//!   time); in process (criterion, and a median of our own for the `result:` line) and as
//!   a whole process (`ambulance diagnose --core`, start-up and JSON output included);
//! * the VMCOREINFO scan of guest RAM that live guests without a registration need;
//! * drgn 0.3.0 (fixtures/ensure-drgn.sh) as a whole process on the same dumps
//!   (benches/drgn_answers.py): the same questions (dmesg, tasks, panic message), and
//!   with `--traces` the stack trace of every task too, with and without the vmlinux;
//!   Python's start-up (`python -c pass`, `python -c 'import drgn'`) measured apart.
//!
//! Every figure is printed as a `result:` line (benches/figures), ratios included.
//! Run with `cargo bench --bench linux`. Needs qemu-system-x86_64 (installed by the
//! fixture script) but not KVM.

#[path = "../tests/linux_guest/mod.rs"]
mod linux_guest;

mod figures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_diagnose::{diagnose, Options, Subject};
use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::memory::ElfCore;
use ambulance_report::Report;
use criterion::{criterion_group, criterion_main, Criterion};
use figures::{goal, human, median, ratio, result, time_process};

/// Whole-process runs per figure (their median is reported).
const PROCESS_RUNS: usize = 7;
/// In-process runs behind each `result:` line's median.
const IN_PROCESS_RUNS: usize = 21;
/// The goal for the whole diagnosis, traces included, from the dump alone.
const GOAL: Duration = Duration::from_millis(50);

/// One offline diagnosis of the dump, as `ambulance diagnose --core` does it.
fn diagnose_dump(core: &Path, options: &Options) -> Report {
    let core = ElfCore::open(core).expect("the dump opens");
    let subject = Subject::from_core(&core);
    let report = diagnose(Arc::new(core), &subject, options, Vec::new()).expect("a report");
    let k = report.kernel.as_ref().expect("a Linux report");
    assert!(!k.tasks.is_empty() && !k.dmesg.is_empty() && k.panic_message.is_some());
    report
}

/// What a report traced: tasks, tasks with a non-empty stack, frames over all tasks.
#[derive(Debug, PartialEq)]
struct Traced {
    tasks: usize,
    traced: usize,
    frames: usize,
}

fn traced(r: &Report) -> Traced {
    let k = r.kernel.as_ref().expect("a Linux report");
    let stacks = k.tasks.iter().filter_map(|t| t.stack.as_ref());
    Traced {
        tasks: k.tasks.len(),
        traced: stacks.clone().filter(|s| !s.frames.is_empty()).count(),
        // The unwound frames: with DWARF, the functions inlined at a frame's address come
        // as frames of their own, which the unwind did not add.
        frames: stacks
            .map(|s| s.frames.iter().filter(|f| !f.inlined).count())
            .sum(),
    }
}

/// The median of `IN_PROCESS_RUNS` in-process diagnoses.
fn in_process(core: &Path, options: &Options) -> Duration {
    let times: Vec<Duration> = (0..IN_PROCESS_RUNS)
        .map(|_| {
            let t = Instant::now();
            diagnose_dump(core, options);
            t.elapsed()
        })
        .collect();
    median(&times)
}

/// `ambulance diagnose --core` as a process, `PROCESS_RUNS` times: the median, and the
/// report it printed.
fn as_process(core: &Path, vmlinux: Option<&Path>) -> (Duration, Report) {
    let (times, out) = time_process(PROCESS_RUNS, || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambulance"));
        cmd.args(["diagnose", "--core"]).arg(core);
        if let Some(v) = vmlinux {
            cmd.arg("--debuginfo").arg(v);
        }
        cmd
    });
    assert!(
        out.status.success(),
        "ambulance diagnose failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = Report::from_json(&String::from_utf8_lossy(&out.stdout)).expect("a report");
    (median(&times), report)
}

/// drgn (benches/drgn_answers.py) as a process: the median time and the JSON it printed,
/// or what it said when it failed.
fn drgn(
    python: &Path,
    args: &[&std::ffi::OsStr],
    runs: usize,
) -> (Duration, Result<serde_json::Value, String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/drgn_answers.py");
    let (times, out) = time_process(runs, || {
        let mut cmd = Command::new(python);
        cmd.arg(script).args(args);
        cmd
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = serde_json::from_str::<serde_json::Value>(stdout.trim())
        .map_err(|e| format!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)))
        .and_then(|v| match v.get("error").and_then(|e| e.as_str()) {
            Some(e) => Err(e.to_string()),
            None => Ok(v),
        });
    (median(&times), answer)
}

/// The figures of one dump; `mib` names its size.
fn dump_figures(
    c: &mut Criterion,
    mib: u64,
    core: &Path,
    vmlinux: &Path,
    python: Option<&Path>,
    python_import: Option<Duration>,
) {
    let section = "Linux diagnosis and traces";
    let size = if mib >= 1024 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    };
    let debuginfo = Arc::new(DebugInfo::open(vmlinux).expect("the -dbg vmlinux opens"));
    let warm = Options {
        debuginfo: Some(debuginfo),
        ..Options::default()
    };

    let mut g = c.benchmark_group(format!("linux/{size}"));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);
    g.bench_function("diagnose+traces/kallsyms+btf", |b| {
        b.iter(|| diagnose_dump(core, &Options::default()))
    });
    g.bench_function("diagnose+traces/dwarf (debug info kept open)", |b| {
        b.iter(|| diagnose_dump(core, &warm))
    });
    if mib == 512 {
        g.sample_size(10);
        g.bench_function("diagnose+traces/dwarf (debug info opened each time)", |b| {
            b.iter(|| {
                let options = Options {
                    debuginfo: Some(Arc::new(DebugInfo::open(vmlinux).unwrap())),
                    ..Options::default()
                };
                diagnose_dump(core, &options)
            })
        });
        g.sample_size(20);
        let elf = ElfCore::open(core).unwrap();
        g.bench_function("vmcoreinfo scan", |b| {
            b.iter(|| ambulance_linux::scan_vmcoreinfo(&elf).expect("found"))
        });
    }
    g.finish();

    // What the diagnosis traced, from its report, the same each way.
    let alone = diagnose_dump(core, &Options::default());
    let t = traced(&alone);
    let with_dwarf = traced(&diagnose_dump(core, &warm));
    assert_eq!(t, with_dwarf, "the same traces with DWARF");
    let phases: Vec<String> = alone
        .timeline
        .iter()
        .map(|p| format!("{} {} µs", p.name, p.duration_us))
        .collect();
    result(
        section,
        &format!("{size} dump: tasks traced, frames"),
        &format!("{} of {} tasks, {} frames", t.traced, t.tasks, t.frames),
        "–",
        &format!(
            "from the report (kernel.tasks[].stack); phases of one run from the dump alone: {}",
            phases.join(", ")
        ),
    );

    let ours_alone = in_process(core, &Options::default());
    result(
        section,
        &format!("{size} dump: whole diagnosis with traces, dump alone, in process"),
        &human(ours_alone),
        &goal(ours_alone < GOAL, || {
            format!("{} ≥ 50 ms", human(ours_alone))
        }),
        &format!("median of {IN_PROCESS_RUNS}; goal < 50 ms"),
    );
    let ours_warm = in_process(core, &warm);
    result(
        section,
        &format!("{size} dump: whole diagnosis with traces, DWARF kept open, in process"),
        &human(ours_warm),
        "–",
        &format!(
            "median of {IN_PROCESS_RUNS}; the -dbg vmlinux opened once, as the service keeps it"
        ),
    );
    let (proc_alone, report) = as_process(core, None);
    assert_eq!(
        traced(&report),
        t,
        "the process traced what the library did"
    );
    result(
        section,
        &format!("{size} dump: ambulance diagnose --core (process), dump alone"),
        &human(proc_alone),
        &goal(proc_alone < GOAL, || format!("{} ≥ 50 ms", human(proc_alone))),
        &format!("median of {PROCESS_RUNS} whole processes: start-up, diagnosis with traces, JSON on stdout"),
    );
    let (proc_dwarf, _) = as_process(core, Some(vmlinux));
    result(
        section,
        &format!("{size} dump: ambulance diagnose --core --debuginfo vmlinux (process)"),
        &human(proc_dwarf),
        "–",
        &format!("median of {PROCESS_RUNS}; the -dbg vmlinux opened by each process"),
    );

    let Some(python) = python else { return };
    let section = "Linux: drgn side by side";
    let (core_arg, vmlinux_arg) = (core.as_os_str(), vmlinux.as_os_str());
    let import = python_import.unwrap_or_default();
    // The same questions, with the vmlinux.
    let (answers, a) = drgn(python, &[core_arg, vmlinux_arg], PROCESS_RUNS);
    match a {
        Ok(a) => {
            result(
                section,
                &format!("{size} dump: drgn, dmesg + tasks + panic message, with the vmlinux"),
                &human(answers),
                "–",
                &format!(
                    "median of {PROCESS_RUNS} processes; answered {} records, {} tasks, panic {}; \
                     without Python's start-up and import drgn: {}",
                    a["records"],
                    a["tasks"],
                    a["panic"],
                    human(answers.saturating_sub(import))
                ),
            );
            result(
                section,
                &format!(
                    "{size} dump: drgn with the vmlinux / ambulance with the vmlinux (processes)"
                ),
                &ratio(answers.as_secs_f64(), proc_dwarf.as_secs_f64()),
                &goal(answers > proc_dwarf, || "drgn is not slower".into()),
                &format!(
                    "{} / {}; without drgn's start-up and import: {}",
                    human(answers),
                    human(proc_dwarf),
                    ratio(
                        answers.saturating_sub(import).as_secs_f64(),
                        proc_dwarf.as_secs_f64()
                    )
                ),
            );
            result(
                section,
                &format!("{size} dump: drgn with the vmlinux / ambulance from the dump alone (processes)"),
                &ratio(answers.as_secs_f64(), proc_alone.as_secs_f64()),
                &goal(answers > proc_alone, || "drgn is not slower".into()),
                &format!("{} / {}", human(answers), human(proc_alone)),
            );
        }
        Err(e) => result(
            section,
            &format!("{size} dump: drgn, dmesg + tasks + panic message, with the vmlinux"),
            "fails",
            "–",
            &e,
        ),
    }
    // Without the vmlinux.
    let (t_alone, a) = drgn(python, &[core_arg], 1);
    result(
        section,
        &format!("{size} dump: drgn with the dump alone (no vmlinux)"),
        &match &a {
            Ok(_) => human(t_alone),
            Err(_) => "fails".to_string(),
        },
        "–",
        &match a {
            Ok(a) => format!("answered {a}"),
            Err(e) => format!("as drgn printed it, after {}: {e}", human(t_alone)),
        },
    );
    // Every task's trace too.
    let traces_arg = std::ffi::OsStr::new("--traces");
    let (traces, a) = drgn(python, &[traces_arg, core_arg, vmlinux_arg], PROCESS_RUNS);
    match a {
        Ok(a) => {
            result(
                section,
                &format!("{size} dump: drgn, the same answers + stack_trace() of every task, with the vmlinux"),
                &human(traces),
                "–",
                &format!(
                    "median of {PROCESS_RUNS} processes; {} of {} tasks traced, {} frames; \
                     without Python's start-up and import drgn: {}",
                    a["traced"], a["tasks"], a["frames"], human(traces.saturating_sub(import))
                ),
            );
            result(
                section,
                &format!("{size} dump: drgn traces with the vmlinux / ambulance traces from the dump alone (processes)"),
                &ratio(traces.as_secs_f64(), proc_alone.as_secs_f64()),
                &goal(traces > proc_alone, || "drgn is not slower".into()),
                &format!("{} / {}", human(traces), human(proc_alone)),
            );
            result(
                section,
                &format!("{size} dump: drgn traces / ambulance traces, both with the vmlinux (processes)"),
                &ratio(traces.as_secs_f64(), proc_dwarf.as_secs_f64()),
                &goal(traces > proc_dwarf, || "drgn is not slower".into()),
                &format!(
                    "{} / {}; without drgn's start-up and import: {}",
                    human(traces),
                    human(proc_dwarf),
                    ratio(traces.saturating_sub(import).as_secs_f64(), proc_dwarf.as_secs_f64())
                ),
            );
        }
        Err(e) => result(
            section,
            &format!("{size} dump: drgn, stack_trace() of every task, with the vmlinux"),
            "fails",
            "–",
            &e,
        ),
    }
    let (traces_alone, a) = drgn(python, &[traces_arg, core_arg], 1);
    if let Err(e) = a {
        result(
            section,
            &format!("{size} dump: drgn traces with the dump alone (no vmlinux)"),
            "fails",
            "–",
            &format!("as drgn printed it, after {}: {e}", human(traces_alone)),
        );
    }
}

/// Python's start-up, bare and with `import drgn`, as processes; the latter's median.
fn python_startup(python: &Path) -> Duration {
    let section = "Linux: drgn side by side";
    let mut import = Duration::ZERO;
    for (what, code) in [
        ("python -c pass", "pass"),
        ("python -c 'import drgn'", "import drgn"),
    ] {
        let (times, out) = time_process(PROCESS_RUNS, || {
            let mut cmd = Command::new(python);
            cmd.args(["-c", code]);
            cmd
        });
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = median(&times);
        result(
            section,
            &format!("Python start-up: {what}"),
            &human(m),
            "–",
            &format!("median of {PROCESS_RUNS} processes, the drgn venv's Python"),
        );
        import = m;
    }
    import
}

fn benches(c: &mut Criterion) {
    let fixture = linux_guest::fixture(true);
    let vmlinux: PathBuf = fixture.join("vmlinux");
    let python = linux_guest::drgn_python();
    let import = python.as_deref().map(python_startup);
    for mib in [512, 2048] {
        let t = Instant::now();
        let dump = linux_guest::panicked_dump(&fixture, mib);
        eprintln!(
            "boot to panic and dump of a {mib} MiB guest: {:?}",
            t.elapsed()
        );
        dump_figures(c, mib, &dump.core, &vmlinux, python.as_deref(), import);
    }
}

criterion_group!(linux, benches);
criterion_main!(linux);
