//! Unmodified Linux, offline: Debian's cloud kernel panicked by sysrq under QEMU (TCG),
//! dumped with `dump-guest-memory`, and diagnosed by `ambulance diagnose --core` — with
//! nothing but the dump (kallsyms and BTF from guest memory) and with the `-dbg`
//! vmlinux (DWARF). The report must agree with what the guest itself printed on its
//! serial console: the panic line, every printk line, every process.

mod linux_guest;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use ambulance_diagnose::{diagnose, Options, Subject};
use ambulance_introspect::memory::ElfCore;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use linux_guest::{
    ambulance, check_against_console, diagnose_core, findings, fixture, panicked_dump,
    panicked_dump_of, Boot, Dump, Patched,
};
use serde_json::Value;

/// One panicked guest's dump, shared by the tests of this file.
fn dump() -> &'static Dump {
    static DUMP: OnceLock<Dump> = OnceLock::new();
    DUMP.get_or_init(|| panicked_dump(&fixture(false), 256))
}

/// A `kernel.tasks[]` entry's `task_struct` address.
fn task_address(task: &Value) -> u64 {
    u64::from_str_radix(&task["address"].as_str().unwrap()[2..], 16).unwrap()
}

#[test]
fn offline_from_guest_memory_alone() {
    let d = dump();
    let report = diagnose_core(&d.core, &[]);
    check_against_console(&report, &d.console);
    let sources = &report["kernel"]["sources"];
    assert_eq!(sources["vmcoreinfo"], "core-note");
    assert_eq!(sources["symbols"][0], "kallsyms");
    assert_eq!(sources["types"][0], "btf");
    assert_eq!(sources["missing"], serde_json::json!([]), "{sources}");
    // Two vCPUs from the dump's NT_PRSTATUS notes.
    assert_eq!(report["vcpus"].as_array().unwrap().len(), 2);

    // The text rendering says the same.
    let out = ambulance(&[
        "diagnose",
        "--core",
        d.core.to_str().unwrap(),
        "--format",
        "text",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Kernel panic on CPU "), "{text}");
    assert!(text.contains(": sysrq triggered crash"), "{text}");
    assert!(
        text.contains("symbols from kallsyms, vmcoreinfo, types from btf, vmcoreinfo"),
        "{text}"
    );
}

#[test]
fn offline_with_the_debug_info_package() {
    let d = dump();
    let vmlinux = fixture(true).join("vmlinux");
    let with = diagnose_core(&d.core, &["--debuginfo", vmlinux.to_str().unwrap()]);
    check_against_console(&with, &d.console);
    let sources = &with["kernel"]["sources"];
    assert_eq!(sources["symbols"][0], "dwarf");
    assert_eq!(sources["types"][0], "dwarf");
    // The same answers as without it.
    let without = diagnose_core(&d.core, &[]);
    for key in ["release", "panic_message", "panic_cpu", "dmesg", "tasks"] {
        assert_eq!(with["kernel"][key], without["kernel"][key], "kernel.{key}");
    }
    // Found by the build ID VMCOREINFO gives, in a debuginfod-style directory.
    let build_id = with["kernel"]["build_id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let link = dir
        .path()
        .join(".build-id")
        .join(&build_id[..2])
        .join(format!("{}.debug", &build_id[2..]));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&vmlinux, &link).unwrap();
    let found = diagnose_core(&d.core, &["--debuginfo-dir", dir.path().to_str().unwrap()]);
    assert_eq!(found["kernel"]["sources"], with["kernel"]["sources"]);
    assert_eq!(found["kernel"]["tasks"], with["kernel"]["tasks"]);
}

#[test]
fn a_corrupted_tasks_prev_is_reported_at_its_task() {
    let d = dump();
    let report = diagnose_core(&d.core, &[]);
    let tasks = report["kernel"]["tasks"].as_array().unwrap();
    let victim = task_address(&tasks[10]);

    // The victim's tasks.prev points at the previous task's link; make it point at
    // another task's.
    let mut copy = Patched::new(d, "vmcore.corrupt");
    let link = copy.program.offset_of("task_struct", "tasks").unwrap();
    let prev_va = victim + copy.program.offset_of("task_struct", "tasks.prev").unwrap();
    assert_eq!(
        copy.program.read_u64(prev_va).unwrap(),
        task_address(&tasks[9]) + link,
        "prev points at the previous task's link"
    );
    let wrong = task_address(&tasks[20]) + link;
    copy.write(prev_va, &wrong.to_le_bytes());

    let report = copy.diagnose();
    let f = findings(&report, "list-integrity");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0]["severity"], "critical");
    assert_eq!(f[0]["structure"]["root"], "init_task.tasks");
    assert_eq!(f[0]["structure"]["path"], "prev");
    assert_eq!(f[0]["address"]["virt"], format!("{victim:#x}"));
    assert_eq!(f[0]["found"], format!("{wrong:#x}"));

    // Frozen while a writer held tasklist_lock, the list may be mid-update: the same
    // finding, as information. Readers (counted above the lock's low byte) excuse nothing.
    let lock = copy.program.symbol("tasklist_lock").unwrap();
    let mut severity_with_lock = |cnts: u32| {
        copy.write(lock, &cnts.to_le_bytes());
        let report = copy.diagnose();
        let f = findings(&report, "list-integrity")
            .first()
            .map(|f| (*f).clone())
            .expect("the finding");
        (
            f["severity"].clone(),
            f["message"].as_str().unwrap().to_string(),
        )
    };
    let (severity, message) = severity_with_lock(0xff);
    assert_eq!(severity, "info");
    assert!(message.contains("mid-update"), "{message}");
    let (severity, _) = severity_with_lock(3 << 9);
    assert_eq!(severity, "critical");
}

#[test]
fn a_smashed_end_of_stack_magic_is_reported_at_its_task() {
    let d = dump();
    let report = diagnose_core(&d.core, &[]);
    let task = report["kernel"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["comm"] == "kthreadd")
        .expect("kthreadd");
    let addr = task_address(task);

    // The lowest word of kthreadd's (vmalloc'd) stack.
    let mut copy = Patched::new(d, "vmcore.stack");
    let stack = copy
        .program
        .read_u64(addr + copy.program.offset_of("task_struct", "stack").unwrap())
        .unwrap();
    assert_eq!(
        copy.program.read_u64(stack).unwrap(),
        0x57ac_6e9d,
        "STACK_END_MAGIC"
    );
    copy.write(stack, &0xdead_beefu64.to_le_bytes());

    let report = copy.diagnose();
    let f = findings(&report, "stack-end");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0]["severity"], "critical");
    assert_eq!(f[0]["address"]["virt"], format!("{stack:#x}"));
    assert_eq!(f[0]["found"], "0xdeadbeef");
    let message = f[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("task 2 (kthreadd) at {addr:#x}")),
        "{message}"
    );
}

#[test]
fn missing_btf_degrades_the_report_and_says_so() {
    let d = dump();
    let mut copy = Patched::new(d, "vmcore.nobtf");
    let start = copy.program.symbol("__start_BTF").unwrap();
    copy.write(start, b"junk");

    let report = copy.diagnose();
    let k = &report["kernel"];
    let missing = k["sources"]["missing"].as_array().unwrap();
    assert!(
        missing
            .iter()
            .any(|m| m.as_str().unwrap().starts_with("BTF: ")),
        "{missing:?}"
    );
    assert!(
        missing
            .iter()
            .any(|m| m.as_str().unwrap().contains("task_struct")),
        "{missing:?}"
    );
    assert_eq!(k["sources"]["types"], serde_json::json!(["vmcoreinfo"]));
    // What VMCOREINFO alone describes is still there: dmesg and the panic message.
    assert_eq!(k["panic_message"], "sysrq triggered crash");
    assert!(k["dmesg"].as_array().unwrap().len() > 100);
    assert_eq!(k["tasks"], serde_json::json!([]));
}

#[test]
fn garbage_vmcoreinfo_falls_back_to_the_note_in_ram() {
    let d = dump();
    let core = Arc::new(ElfCore::open(&d.core).unwrap());
    let mut subject = Subject::from_core(&core);
    subject.vmcoreinfo = Some("\u{1}\u{2}garbage=\nSYMBOL(x)=zz\n".repeat(50));
    let report = diagnose(core, &subject, &Options::default(), Vec::new()).unwrap();
    let k = report.kernel.expect("still a Linux report");
    assert_eq!(k.sources.vmcoreinfo.as_deref(), Some("memory-scan"));
    assert_eq!(k.panic_message.as_deref(), Some("sysrq triggered crash"));
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("VMCOREINFO from core-note")),
        "{:#?}",
        report.findings
    );
}

#[test]
fn debug_info_of_another_build_is_refused_naming_both_ids() {
    let d = dump();
    let out = ambulance(&[
        "diagnose",
        "--core",
        d.core.to_str().unwrap(),
        "--debuginfo",
        ambulance_test_kernel::ELF_PATH,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let core = ElfCore::open(&d.core).unwrap();
    let info = Vmcoreinfo::parse(core.vmcoreinfo().unwrap()).unwrap();
    let guest = ambulance_introspect::debuginfo::hex(info.build_id().unwrap());
    assert!(err.contains(&guest) && err.contains("build ID"), "{err}");
    assert!(err.contains(ambulance_test_kernel::ELF_PATH), "{err}");

    // Handed to the pipeline anyway (attach, the daemon), it is left out and the report
    // says why, from guest memory alone.
    let debuginfo =
        ambulance_introspect::debuginfo::DebugInfo::open(ambulance_test_kernel::ELF_PATH);
    let options = Options {
        debuginfo: Some(Arc::new(debuginfo.unwrap())),
        ..Options::default()
    };
    let core = Arc::new(core);
    let report = diagnose(
        core.clone(),
        &Subject::from_core(&core),
        &options,
        Vec::new(),
    )
    .unwrap();
    let k = report.kernel.expect("a Linux report");
    assert_eq!(k.sources.types.first().map(String::as_str), Some("btf"));
    assert!(
        k.sources
            .missing
            .iter()
            .any(|m| m.contains(&guest) && m.ends_with("it was not used")),
        "{:?}",
        k.sources.missing
    );
}

/// The console's `CPU: N PID: P Comm: C …` line after the panic, and the reliable entries
/// of the `Call Trace` the kernel printed under it (those without `? `), in order.
fn console_panic_context(console: &str) -> ((u64, i64, String), Vec<String>) {
    let lines: Vec<&str> = console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .skip_while(|l| !l.contains("Kernel panic - not syncing: "))
        .map(|l| l.split_once("] ").map_or(l, |x| x.1))
        .collect();
    let (cpu, pid, comm) = lines
        .iter()
        .find_map(|l| ambulance_linux::crash::cpu_line(l))
        .expect("the console shows the panicking CPU and task");
    let trace = lines
        .iter()
        .skip_while(|l| !l.starts_with("Call Trace:"))
        .skip(1)
        .map(|l| l.trim())
        .take_while(|l| !l.starts_with("RIP:") && *l != "</TASK>")
        .filter(|l| !l.starts_with('<') && !l.starts_with("? "))
        .map(str::to_string)
        .collect();
    ((u64::from(cpu), i64::from(pid), comm), trace)
}

/// A stack's symbols, innermost first.
fn symbols(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn the_failure_is_the_kernels_own_with_its_cpu_task_and_vcpu() {
    let d = dump();
    let report = diagnose_core(&d.core, &[]);
    let ((cpu, pid, comm), _) = console_panic_context(&d.console);
    // Not "offline": the dump shows the kernel's panic.
    let failure = &report["failure"];
    assert_eq!(failure["cause"], "panic");
    assert_eq!(failure["detail"], "sysrq triggered crash");
    let crash = &report["kernel"]["crash"];
    assert_eq!(crash["kind"], "panic");
    assert_eq!(crash["message"], "sysrq triggered crash");
    assert_eq!(crash["panic_message"], "sysrq triggered crash");
    assert_eq!(crash["cpu"], cpu);
    assert_eq!(crash["cpu"], report["kernel"]["panic_cpu"]);
    assert_eq!(crash["pid"], pid);
    assert_eq!(crash["comm"], comm.as_str());
    // The task is the one on the task list with that PID.
    let task = report["kernel"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == pid)
        .expect("the panicking task is listed");
    assert_eq!(crash["task"], task["address"]);
    // The vCPU that ran that CPU failed; every vCPU has its control and segment
    // registers from QEMU's note.
    let vcpu = crash["vcpu"].as_u64().expect("the panicking vCPU is known");
    assert_eq!(failure["vcpu"], vcpu);
    for v in report["vcpus"].as_array().unwrap() {
        assert_ne!(v["cr3"], "0x0", "{v}");
        assert_ne!(v["cr0"], "0x0", "{v}");
        let segments = v["segments"].as_array().expect("segment registers");
        assert_eq!(segments.len(), 10);
        assert_eq!(segments[0]["name"], "cs");
        let expected = if v["vcpu"] == vcpu {
            "failed"
        } else {
            "unknown"
        };
        assert_eq!(v["activity"], expected, "{v}");
    }
    // QEMU's note and NT_PRSTATUS agree: no finding about the core's notes.
    assert!(findings(&report, "diagnosis")
        .iter()
        .all(|f| f["structure"]["root"] != "core"));
}

#[test]
fn the_panicking_tasks_trace_matches_the_kernels_call_trace() {
    check_traces(dump(), true);
}

/// A guest whose init is kept off CPU 0 (`isolcpus=0`) panics on CPU 1: the failure,
/// the vCPU and the trace are that CPU's.
#[test]
fn a_panic_on_another_cpu_is_that_cpus() {
    let d = panicked_dump_of(
        &fixture(false),
        &Boot {
            cpus: 2,
            cmdline: "isolcpus=0".into(),
            ..Boot::default()
        },
    );
    let ((cpu, _, _), _) = console_panic_context(&d.console);
    assert_eq!(cpu, 1, "the kernel kept init off CPU 0");
    let report = diagnose_core(&d.core, &[]);
    assert_eq!(report["kernel"]["crash"]["cpu"], 1);
    assert_eq!(report["kernel"]["panic_cpu"], 1);
    // QEMU numbers vCPUs as Linux numbers CPUs here; the match is by per-CPU base.
    assert_eq!(report["kernel"]["crash"]["vcpu"], 1);
    assert_eq!(report["failure"]["vcpu"], 1);
    check_traces(&d, false);
}

/// The panicking CPU's trace against the kernel's own `Call Trace`, and every other
/// stack complete — from the dump alone and (with `dbg`) with the -dbg vmlinux.
fn check_traces(d: &Dump, dbg: bool) {
    let vmlinux = fixture(dbg).join("vmlinux");
    let with_dbg = ["--debuginfo", vmlinux.to_str().unwrap()];
    let runs: &[&[&str]] = if dbg { &[&[], &with_dbg] } else { &[&[]] };
    for extra in runs {
        let report = diagnose_core(&d.core, extra);
        let k = &report["kernel"];
        let ((cpu, pid, _), kernel_trace) = console_panic_context(&d.console);
        let on_cpu = k["cpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cpu"] == cpu)
            .expect("the panicking CPU");
        assert_eq!(on_cpu["pid"], pid);
        let stack = &on_cpu["stack"];
        assert_eq!(stack["complete"], true, "{stack}");
        let ours = symbols(stack);
        // The kernel printed its trace from dump_stack() inside panic(); ours starts
        // where the CPU stopped (the panic notifier) and goes through panic() too. From
        // the caller of panic() on, every reliable entry is the same, in order, to the
        // system call's entry.
        let theirs_at = kernel_trace
            .iter()
            .position(|s| s.starts_with("panic+"))
            .expect("panic() in the kernel's trace");
        let ours_at = ours
            .iter()
            .position(|s| s.starts_with("panic+"))
            .unwrap_or_else(|| panic!("panic() in our trace: {ours:?}"));
        assert!(
            kernel_trace.len() - theirs_at > 3,
            "a real trace: {kernel_trace:?}"
        );
        assert_eq!(
            ours[ours_at + 1..],
            kernel_trace[theirs_at + 1..],
            "ours: {ours:?}\nthe kernel's: {kernel_trace:?}"
        );
        // The task list gives the running task its CPU's stack.
        let task = k["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["pid"] == pid)
            .unwrap();
        assert_eq!(task["stack"], *stack);
        // Every other CPU's stack and every sleeping task's reaches the bottom of its
        // stack, symbolized all the way.
        for c in k["cpus"].as_array().unwrap() {
            assert_eq!(c["stack"]["complete"], true, "{c}");
        }
        let running: Vec<&Value> = k["cpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["task"])
            .collect();
        for t in k["tasks"].as_array().unwrap() {
            let s = &t["stack"];
            assert_eq!(s["complete"], true, "{t}");
            let syms = symbols(s);
            assert!(
                !syms.is_empty() && syms.iter().all(|s| s.contains("+0x")),
                "{t}"
            );
            // A task that was not running was switched out in __schedule().
            if !running.contains(&&t["address"]) {
                assert!(syms[0].starts_with("__schedule+"), "{t}");
            }
        }
    }
}

#[test]
fn the_text_report_shows_the_crashed_tasks_trace_first() {
    let d = dump();
    let out = ambulance(&[
        "diagnose",
        "--core",
        d.core.to_str().unwrap(),
        "--format",
        "text",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let ((_, pid, comm), _) = console_panic_context(&d.console);
    let head = format!(", task {pid} ({comm}): sysrq triggered crash");
    let at = text.find(&head).unwrap_or_else(|| panic!("{text}"));
    let stack = text[at..]
        .find("  Stack:")
        .expect("a stack under the crash");
    let trace = &text[at + stack..];
    let first_task = text.find("Tasks (").expect("the task list");
    assert!(at + stack < first_task, "{text}");
    assert!(trace.contains(" panic+0x"), "{text}");
    assert!(trace.contains("entry_SYSCALL_64_after_hwframe+"), "{text}");
}

/// Debian's 6.12 kernel (`fixtures/linux/build-other-kernel.sh 6.12`: the same init, the
/// newest 6.12 cloud kernel apt knows); `None` after a loud skip where apt knows none.
fn fixture_6_12() -> Option<PathBuf> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/linux/build-other-kernel.sh"
    );
    let out = Command::new("bash")
        .args([script, "6.12"])
        .output()
        .expect("bash runs");
    let dir = out
        .status
        .success()
        .then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .map(|l| PathBuf::from(l.trim()))
        })
        .flatten();
    if !ambulance_testkit::available(
        &format!(
            "Debian 6.12 kernel fixture ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        dir.is_some(),
    ) {
        return None;
    }
    dir
}

/// Linux 6.12 — its `CPU: N UID: U PID: …` line, `pcpu_hot`, ORC's third format,
/// `module.mem[]` — under 5-level paging (QEMU's `-cpu max` has LA57), panicking on CPU 1:
/// the same answers as 6.1 gives, from the dump alone.
#[test]
fn linux_6_12_with_five_level_paging_panicking_on_cpu_1() {
    let Some(fx) = fixture_6_12() else { return };
    let d = panicked_dump_of(
        &fx,
        &Boot {
            cpus: 2,
            cmdline: "isolcpus=0".into(),
            qemu_args: vec!["-cpu".into(), "max".into()],
            ..Boot::default()
        },
    );
    assert!(
        d.console.contains(" UID: "),
        "6.12's CPU line:\n{}",
        d.console
    );
    let ((cpu, pid, comm), _) = console_panic_context(&d.console);
    assert_eq!(cpu, 1, "the kernel kept init off CPU 0");
    let report = diagnose_core(&d.core, &[]);
    let k = &report["kernel"];
    assert!(
        k["release"]
            .as_str()
            .is_some_and(|r| r.starts_with("6.12.")),
        "{}",
        k["release"]
    );
    // 5-level paging: CR4.LA57 on the vCPUs, from QEMU's note.
    for v in report["vcpus"].as_array().unwrap() {
        let cr4 = u64::from_str_radix(&v["cr4"].as_str().unwrap()[2..], 16).unwrap();
        assert_ne!(cr4 & (1 << 12), 0, "LA57: {v}");
    }
    assert_eq!(
        k["sources"]["missing"],
        serde_json::json!([]),
        "{}",
        k["sources"]
    );
    assert_eq!(report["failure"]["cause"], "panic");
    assert_eq!(report["failure"]["detail"], "sysrq triggered crash");
    let crash = &k["crash"];
    assert_eq!(crash["cpu"], 1);
    assert_eq!(crash["vcpu"], 1);
    assert_eq!(crash["pid"], pid);
    assert_eq!(crash["comm"], comm.as_str());
    // Linux's own structures: healthy, except that 6.12 keeps its vmap areas per node,
    // which is said, not found wrong.
    for v in ["linux-runqueues", "linux-modules", "linux-slub"] {
        assert!(
            findings(&report, v).is_empty(),
            "{v}: {:#?}",
            findings(&report, v)
        );
    }
    let vmap = findings(&report, "linux-vmap");
    assert_eq!(vmap.len(), 1, "{vmap:#?}");
    assert_eq!(
        (vmap[0]["kind"].as_str(), vmap[0]["severity"].as_str()),
        (Some("diagnosis"), Some("info"))
    );
    assert!(
        vmap[0]["message"]
            .as_str()
            .unwrap()
            .contains("not supported on this kernel"),
        "{vmap:#?}"
    );
    check_traces(&d, false);
}
