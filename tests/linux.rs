//! Unmodified Linux, offline: Debian's cloud kernel panicked by sysrq under QEMU (TCG),
//! dumped with `dump-guest-memory`, and diagnosed by `ambulance diagnose --core` — with
//! nothing but the dump (kallsyms and BTF from guest memory) and with the `-dbg`
//! vmlinux (DWARF). The report must agree with what the guest itself printed on its
//! serial console: the panic line, every printk line, every process.

mod linux_guest;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use ambulance_diagnose::{diagnose, Options, Subject};
use ambulance_introspect::memory::ElfCore;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use linux_guest::{
    ambulance, check_against_console, diagnose_core, findings, fixture, panicked_dump_of,
    shared_panicked_dump, walked, Boot, Dump, Patched,
};
use serde_json::Value;

/// One panicked guest's dump, shared by the tests of this file.
fn dump() -> &'static Dump {
    static DUMP: OnceLock<Dump> = OnceLock::new();
    shared_panicked_dump(&DUMP, &fixture(false))
}

/// A `kernel.tasks[]` entry's `task_struct` address.
fn task_address(task: &Value) -> u64 {
    u64::from_str_radix(&task["address"].as_str().unwrap()[2..], 16).unwrap()
}

/// The processes init printed are read whole when the kernel logged a message in the
/// middle of `ps`'s output: the serial port interleaves the two byte by byte (a run of
/// the 6.1 RT guest printed `    2 kthreadd[    9.81...] ...`).
#[test]
fn processes_on_the_console_survive_kernel_messages_among_them() {
    let console = "AMBULANCE-PS-BEGIN\r\n\
                   PID   COMMAND\r\n\
                   \x20   1 init\r\n\
                   \x20   2 kthreadd[    9.812345] random: crng init done\r\n\
                   \r\n\
                   \x20   3 rcu_gp\r\n\
                   [   10.000001] watchdog: a line of its own\r\n\
                   \x20  14 kwor[  123.456789] cut mid-word\r\nker/0:1-events\r\n\
                   \x20  99 [x]\r\n\
                   AMBULANCE-PS-END\r\n";
    let listed = linux_guest::console_processes(console);
    let expected: Vec<(i32, String)> = [
        (1, "init"),
        (2, "kthreadd"),
        (3, "rcu_gp"),
        (14, "kworker/0:1-events"),
        (99, "[x]"),
    ]
    .map(|(pid, comm)| (pid, comm.to_string()))
    .into();
    assert_eq!(listed, expected);
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
    let with = check_with_debug_info(d, &vmlinux, &diagnose_core(&d.core, &[]));
    check_against_console(&with, &d.console);
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

/// `diagnose --core` arguments that read `vmlinux` too. A debug build under the suite's
/// load can take longer than the default budget to read the source lines of 60-90
/// tasks' stacks (a release build takes a tenth of it): the budget is raised.
fn with_vmlinux(vmlinux: &Path) -> [&str; 4] {
    [
        "--debuginfo",
        vmlinux.to_str().unwrap(),
        "--load-budget-ms",
        "60000",
    ]
}

/// `d` diagnosed with `vmlinux` (its kernel's `-dbg` vmlinux) against `without`, `d`'s
/// report from the dump alone: symbols and types from the vmlinux (its ELF symbols and
/// DWARF), nothing missing, and the same answers — the release, the failure, the crash
/// (kind, CPU, task, message), the log, every task — the stacks only gaining source lines
/// and the functions inlined into their frames. The report with it.
fn check_with_debug_info(d: &Dump, vmlinux: &Path, without: &Value) -> Value {
    let with = diagnose_core(&d.core, &with_vmlinux(vmlinux));
    let sources = &with["kernel"]["sources"];
    assert_eq!(sources["symbols"][0], "dwarf", "{sources}");
    assert_eq!(sources["types"][0], "dwarf", "{sources}");
    assert_eq!(sources["missing"], serde_json::json!([]), "{sources}");
    // The failure is the same but for when it was diagnosed.
    let failure = |r: &Value| {
        let mut f = r["failure"].clone();
        f.as_object_mut().unwrap().remove("time");
        f
    };
    assert_eq!(failure(&with), failure(without));
    for key in ["release", "panic_message", "panic_cpu", "dmesg", "crash"] {
        assert_eq!(with["kernel"][key], without["kernel"][key], "kernel.{key}");
    }
    // Without the inlined frames and the debug info's names and lines, the same stacks.
    let plain = |stacks: &Value| {
        let mut stacks = stacks.clone();
        for x in stacks.as_array_mut().unwrap() {
            let frames = x["stack"]["frames"].as_array_mut().unwrap();
            frames.retain(|f| f["inlined"] != true);
            for f in frames {
                let f = f.as_object_mut().unwrap();
                for key in ["function", "file", "line", "column"] {
                    f.remove(key);
                }
            }
        }
        stacks
    };
    for key in ["tasks", "cpus"] {
        assert_eq!(
            plain(&with["kernel"][key]),
            without["kernel"][key],
            "kernel.{key}"
        );
    }
    with
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
        // Only the trace's own entries (`function+0xoff/0xsize`): a line user space
        // wrote to the same serial port can land in the middle of the kernel's.
        .filter(|l| !l.starts_with('<') && !l.starts_with("? "))
        .filter(|l| {
            l.split_once("+0x")
                .is_some_and(|(f, rest)| !f.contains(' ') && rest.contains("/0x"))
        })
        .map(str::to_string)
        .collect();
    ((u64::from(cpu), i64::from(pid), comm), trace)
}

/// A stack's symbols, innermost first: its real frames, not the functions the debug
/// info says were inlined into them.
fn symbols(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["inlined"] != true)
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
    check_traces(dump(), Some(&fixture(true).join("vmlinux")));
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
    check_traces(&d, None);
}

/// The panicking CPU's trace against the kernel's own `Call Trace`, and every other
/// stack complete — from the dump alone and (given `vmlinux`, the dumped kernel's -dbg
/// vmlinux) with it.
fn check_traces(d: &Dump, vmlinux: Option<&Path>) {
    let mut runs = vec![vec![]];
    if let Some(v) = vmlinux {
        runs.push(with_vmlinux(v).to_vec());
    }
    for extra in &runs {
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
        // With the debug info, frames have source lines and the functions inlined into
        // them; without it, neither.
        let frames: Vec<&Value> = k["cpus"]
            .as_array()
            .unwrap()
            .iter()
            .chain(k["tasks"].as_array().unwrap())
            .flat_map(|x| x["stack"]["frames"].as_array().unwrap())
            .collect();
        let with_lines = frames.iter().filter(|f| f["line"].is_u64()).count();
        let inlined = frames.iter().filter(|f| f["inlined"] == true).count();
        if extra.is_empty() {
            assert_eq!((with_lines, inlined), (0, 0));
        } else {
            assert!(
                with_lines * 10 > frames.len() * 9,
                "{with_lines} of {}",
                frames.len()
            );
            assert!(inlined > 0);
        }
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

/// drgn's traces of `core` read with `vmlinux` (tests/tools/drgn_traces.py), with
/// drgn's Python.
fn drgn_traces(python: &Path, core: &Path, vmlinux: &Path) -> Value {
    serde_json::from_slice(&linux_guest::drgn_tool(
        python,
        "drgn_traces.py",
        core,
        vmlinux,
    ))
    .expect("JSON from drgn_traces.py")
}

/// A frame's function as drgn names it: the debug info's name, else the symbol's.
fn frame_name(f: &Value) -> String {
    if let Some(name) = f["function"].as_str().or(f["name"].as_str()) {
        return name.to_string();
    }
    let symbol = f["symbol"].as_str().unwrap_or("?");
    symbol.split('+').next().unwrap_or(symbol).to_string()
}

/// Whether our frame `o` names the function drgn's frame `t` does. Where neither has
/// the debug info's name, the two may name the code differently, and both are right:
/// drgn has no symbols for modules (it names their code by address), and drgn takes the
/// sized ELF symbol holding the address (`entry_SYSCALL_64`) where we, like the
/// kernel's own traces, take the nearest label before it
/// (`entry_SYSCALL_64_after_hwframe`).
fn same_function(o: &Value, t: &Value) -> bool {
    let name = frame_name(t);
    if frame_name(o) == name {
        return true;
    }
    if o["function"].is_string() || o["inlined"] == true {
        return false;
    }
    let pc = t["pc"].as_u64().unwrap();
    if name == format!("{pc:#x}") {
        return true;
    }
    // Our symbol's start: the pc less the offset shown (`name+0xoff/0xsize`).
    let ours = o["symbol"].as_str().unwrap_or("?");
    let Some(off) = ours
        .split_once("+0x")
        .and_then(|(_, rest)| u64::from_str_radix(rest.split('/').next()?, 16).ok())
    else {
        return false;
    };
    let start = pc - off;
    let (Some(at), Some(size)) = (
        t["symbol"]["address"].as_u64(),
        t["symbol"]["size"].as_u64(),
    ) else {
        return false;
    };
    (at..at + size).contains(&start)
}

/// Our trace (`stack`, a report's) against drgn's frames (`theirs`): the same functions
/// in the same order, inlined where drgn says so, and the same line (and file) wherever
/// drgn has one. Where ours ends at the user-mode registers the system call saved, drgn
/// goes on into the user program's stack (the instruction pointer saved there, then
/// what its frame pointers give): from its first frame in the lower half of the address
/// space on, drgn's frames are left out. The number of frames whose line was compared.
fn same_trace(what: &str, stack: &Value, theirs: &Value) -> usize {
    let ours = stack["frames"].as_array().unwrap();
    let mut theirs: Vec<&Value> = theirs.as_array().unwrap().iter().collect();
    if stack["end"].as_str().unwrap().contains("user mode") {
        if let Some(user) = theirs
            .iter()
            .position(|f| f["pc"].as_u64().unwrap() >> 63 == 0)
        {
            theirs.truncate(user);
        }
    }
    let show = |frames: &mut dyn Iterator<Item = &Value>| -> Vec<String> {
        frames
            .map(|f| {
                let inline = f["inlined"] == true || f["inline"] == true;
                format!(
                    "{}{}",
                    frame_name(f),
                    if inline { " (inlined)" } else { "" }
                )
            })
            .collect()
    };
    let differ = format!(
        "{what}:\n ours: {:?}\ndrgn: {:?}",
        show(&mut ours.iter()),
        show(&mut theirs.iter().copied())
    );
    assert_eq!(ours.len(), theirs.len(), "{differ}");
    let mut lines = 0;
    for (o, t) in ours.iter().zip(theirs) {
        assert!(same_function(o, t), "{differ}");
        assert_eq!(o["inlined"] == true, t["inline"] == true, "{differ}");
        let (Some(file), Some(line)) = (t["file"].as_str(), t["line"].as_u64()) else {
            continue;
        };
        let at = format!("{what}: {} at {file}:{line}, ours {o}", frame_name(t));
        assert_eq!(o["line"].as_u64(), Some(line), "{at}");
        let ours_file = o["file"].as_str().unwrap_or_else(|| panic!("{at}"));
        let plain = |p: &str| p.trim_start_matches("./").to_string();
        assert!(
            plain(file).ends_with(&plain(ours_file)) || plain(ours_file).ends_with(&plain(file)),
            "{at}"
        );
        lines += 1;
    }
    lines
}

/// With the -dbg vmlinux, the crashed thread's trace and every sleeping task's are
/// drgn's: functions, inlined frames, files and lines.
#[test]
fn traces_match_drgns_with_the_debug_info() {
    traces_match_drgns(dump(), &fixture(true).join("vmlinux"));
}

/// `d` diagnosed with `vmlinux`, its kernel's -dbg vmlinux, against drgn reading the
/// same: the crashed thread's trace and every sleeping task's are drgn's (see
/// [`same_trace`]). Skipped (loudly) where drgn cannot be had.
fn traces_match_drgns(d: &Dump, vmlinux: &Path) {
    let Some(python) = linux_guest::drgn_python() else {
        return;
    };
    let report = diagnose_core(&d.core, &with_vmlinux(vmlinux));
    let theirs = drgn_traces(&python, &d.core, vmlinux);
    let k = &report["kernel"];
    let cpu = &k["crash"]["cpu"];
    let on_cpu = k["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cpu"] == *cpu)
        .expect("the crashed CPU");
    let crashed = &on_cpu["stack"];
    let lines = same_trace("the crashed thread", crashed, &theirs["crashed"]);
    assert!(lines > 5, "only {lines} lines compared: {crashed}");
    let running: Vec<&Value> = k["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["task"])
        .collect();
    let (mut tasks, mut frames, mut lines) = (0, 0, 0);
    for t in k["tasks"].as_array().unwrap() {
        if running.contains(&&t["address"]) {
            continue;
        }
        let address = t["address"].as_str().unwrap();
        let drgn = &theirs["tasks"][address];
        assert_eq!(drgn["pid"], t["pid"], "{address}: {drgn}");
        assert_eq!(drgn["on_cpu"], false, "{t}");
        let what = format!("task {} ({})", t["pid"], t["comm"]);
        lines += same_trace(&what, &t["stack"], &drgn["frames"]);
        frames += t["stack"]["frames"].as_array().unwrap().len();
        tasks += 1;
    }
    eprintln!("compared with drgn: {tasks} sleeping tasks, {frames} frames, {lines} lines");
    // What the source lines cost: the `kernel` phase (stacks included) with and without.
    let kernel_us = |r: &Value| {
        r["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "kernel")
            .unwrap()["duration_us"]
            .clone()
    };
    eprintln!(
        "kernel phase: {} us with the source lines, {} us from the dump alone",
        kernel_us(&report),
        kernel_us(&diagnose_core(&d.core, &[]))
    );
    assert!(
        tasks > 10 && frames > 5 * tasks && lines > 0,
        "{tasks} {frames} {lines}"
    );
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
    assert!(!trace.contains("(inlined)"), "{text}");

    // With the debug info, frames show their source line, and inlined functions are
    // frames of their own, marked.
    let vmlinux = fixture(true).join("vmlinux");
    let out = ambulance(&[
        "diagnose",
        "--core",
        d.core.to_str().unwrap(),
        "--debuginfo",
        vmlinux.to_str().unwrap(),
        "--format",
        "text",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find(&head).unwrap_or_else(|| panic!("{text}"));
    let trace = &text[at..text.find("Tasks (").expect("the task list")];
    let panic_line = trace
        .lines()
        .find(|l| l.contains(" panic+0x"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(panic_line.contains("kernel/panic.c:"), "{panic_line}");
    assert!(
        trace
            .lines()
            .any(|l| l.contains(" do_syscall_x64 (inlined)  ")
                && l.contains("arch/x86/entry/common.c:")),
        "{text}"
    );
}

/// Linux 6.12 — its `CPU: N UID: U PID: …` line, `pcpu_hot`, ORC's third format,
/// `module.mem[]` — under 5-level paging (QEMU's `-cpu max` has LA57), panicking on CPU 1:
/// the same answers as 6.1 gives, from the dump alone and with its -dbg vmlinux.
#[test]
fn linux_6_12_with_five_level_paging_panicking_on_cpu_1() {
    let Some(fx) = ambulance_testkit::other_linux_fixture("6.12", "cloud-amd64", false) else {
        return;
    };
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
    // Linux's own structures: healthy — the vmap areas too, which 6.12 keeps per node
    // (`vmap_nodes[N].busy`: a tree and a list each, both walked, the same areas).
    for v in [
        "linux-runqueues",
        "linux-modules",
        "linux-slub",
        "linux-vmap",
    ] {
        assert!(
            findings(&report, v).is_empty(),
            "{v}: {:#?}",
            findings(&report, v)
        );
    }
    let areas = walked(&report, "vmap_nodes[0].busy")["count"]
        .as_u64()
        .unwrap();
    assert!(areas > 10, "{areas} vmap areas on node 0");
    assert_eq!(walked(&report, "vmap_nodes[0].busy.head")["count"], areas);
    vmap_area_corrupted_on_a_node(&d);
    with_its_debug_info(&d, "6.12", "cloud-amd64", &report);
}

/// In a copy of `d` (Linux 6.9 or later), the first vmap area of node 0's busy tree made
/// to end before it starts: the finding names the address written.
fn vmap_area_corrupted_on_a_node(d: &Dump) {
    let mut copy = Patched::new(d, "vmcore-vmap-node");
    let p = &copy.program;
    let off = |t: &str, m: &str| p.offset_of(t, m).unwrap_or_else(|e| panic!("{t}.{m}: {e}"));
    let nodes = p.read_u64(p.symbol("vmap_nodes").unwrap()).unwrap();
    let tree = nodes + off("vmap_node", "busy") + off("rb_list", "root");
    let node = p.read_u64(tree + off("rb_root", "rb_node")).unwrap();
    let va = node - off("vmap_area", "rb_node");
    let start_at = va + off("vmap_area", "va_start");
    let end = p.read_u64(va + off("vmap_area", "va_end")).unwrap();
    copy.write(start_at, &(end + 0x1000).to_le_bytes());
    let report = copy.diagnose();
    let found: Vec<&Value> = findings(&report, "linux-vmap")
        .into_iter()
        .filter(|f| {
            f["address"]["virt"]
                .as_str()
                .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
                == Some(start_at)
        })
        .collect();
    assert!(!found.is_empty(), "{:#?}", findings(&report, "linux-vmap"));
    assert!(found
        .iter()
        .all(|f| f["structure"]["path"] == "vmap_area.va_start"));
    assert!(
        found[0]["message"]
            .as_str()
            .unwrap()
            .contains("not below its end"),
        "{found:#?}"
    );
}

/// `d`, a dump of Debian's `series` `flavour` kernel, diagnosed again with that kernel's
/// -dbg vmlinux (fetched once per machine, `build-other-kernel.sh --dbg`; a loud skip
/// where apt has none): the same answers as `without`, the report from the dump alone
/// (see [`check_with_debug_info`]); the crashed thread's trace the kernel's own, every
/// stack complete, source lines on the frames (see [`check_traces`]); and the traces
/// drgn's (see [`traces_match_drgns`]).
fn with_its_debug_info(d: &Dump, series: &str, flavour: &str, without: &Value) {
    let Some(fx) = ambulance_testkit::other_linux_fixture(series, flavour, true) else {
        return;
    };
    let vmlinux = fx.join("vmlinux");
    check_with_debug_info(d, &vmlinux, without);
    check_traces(d, Some(&vmlinux));
    traces_match_drgns(d, &vmlinux);
}

/// Another Debian kernel's dump, diagnosed from the dump alone: its release, nothing
/// missing among the sources, and the crash — kind, message as the console printed it,
/// CPU, task — as the kernel itself told it on the console; every CPU's and task's stack
/// unwound to its bottom.
fn check_other_kernel(d: &Dump, series: &str, kind: &str) -> Value {
    let report = diagnose_core(&d.core, &[]);
    let k = &report["kernel"];
    let release = k["release"].as_str().unwrap_or_default();
    assert!(
        release.starts_with(&format!("{series}.")),
        "{release} is not a {series} kernel"
    );
    assert_eq!(
        k["sources"]["missing"],
        serde_json::json!([]),
        "{}",
        k["sources"]
    );
    let ((cpu, pid, comm), _) = console_panic_context(&d.console);
    let message = d
        .console
        .lines()
        .find_map(|l| l.split_once("Kernel panic - not syncing: ").map(|x| x.1))
        .expect("the console shows the panic")
        .trim_end_matches('\r');
    let crash = &k["crash"];
    assert_eq!(crash["kind"], kind, "{crash}");
    assert_eq!(k["panic_message"], message, "{crash}");
    assert_eq!(crash["cpu"], cpu, "{crash}");
    assert_eq!(crash["pid"], pid, "{crash}");
    assert_eq!(crash["comm"], comm.as_str(), "{crash}");
    // The failure is what the kernel's own account says it was.
    assert_eq!(report["failure"]["cause"], kind, "{}", report["failure"]);
    // The processes init listed are the report's tasks.
    linux_guest::check_listed_processes(&report, &d.console, &[]);
    for c in k["cpus"].as_array().unwrap() {
        assert_eq!(c["stack"]["complete"], true, "{c}");
    }
    for t in k["tasks"].as_array().unwrap() {
        assert_eq!(t["stack"]["complete"], true, "{t}");
    }
    report
}

/// Debian's generic 6.1 kernel (`linux-image-amd64`: another configuration than the
/// cloud kernel's), panicked by sysrq, from its dump alone and with its -dbg vmlinux.
#[test]
fn linux_6_1_generic() {
    let Some(fx) = ambulance_testkit::other_linux_fixture("6.1", "amd64", false) else {
        return;
    };
    let d = panicked_dump_of(&fx, &Boot::default());
    let report = check_other_kernel(&d, "6.1", "panic");
    with_its_debug_info(&d, "6.1", "amd64", &report);
}

/// Debian's PREEMPT_RT 6.1 kernel with four CPUs, where PID 1 exits: "Attempted to kill
/// init!", from its dump alone and with its -dbg vmlinux.
#[test]
fn linux_6_1_rt_with_four_cpus_where_init_exits() {
    let Some(fx) = ambulance_testkit::other_linux_fixture("6.1", "rt-amd64", false) else {
        return;
    };
    let d = panicked_dump_of(
        &fx,
        &Boot {
            cpus: 4,
            panic_after: None,
            cmdline: "ambulance.fail=exit ambulance.fail_after=1".into(),
            ..Boot::default()
        },
    );
    assert!(d.console.contains("PREEMPT_RT"), "{}", d.console);
    let report = check_other_kernel(&d, "6.1", "init_killed");
    assert_eq!(report["kernel"]["cpus"].as_array().unwrap().len(), 4);
    assert!(report["kernel"]["panic_message"]
        .as_str()
        .unwrap()
        .starts_with("Attempted to kill init! exitcode=0x00000000"));
    with_its_debug_info(&d, "6.1", "rt-amd64", &report);
}

/// Debian's generic 6.12 kernel (bookworm-backports), from its dump alone and with its
/// -dbg vmlinux.
#[test]
fn linux_6_12_generic() {
    let Some(fx) = ambulance_testkit::other_linux_fixture("6.12", "amd64", false) else {
        return;
    };
    let d = panicked_dump_of(&fx, &Boot::default());
    let report = check_other_kernel(&d, "6.12", "panic");
    with_its_debug_info(&d, "6.12", "amd64", &report);
}
