//! The report for people: what failed, the most severe findings first with their
//! addresses, what was walked, the vCPUs, the timeline, then the tail of the guest's log;
//! for Linux guests also the release and panic, the task list and the tail of dmesg.

use std::fmt::Write;

use crate::{FindingKind, KernelInfo, Report, Severity};

/// How many log records the text shows (the JSON has all of them).
pub const LOG_TAIL: usize = 30;

/// How many dmesg records the text shows (the JSON has all of them).
pub const DMESG_TAIL: usize = 40;

/// Renders `report` as text.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let g = &report.guest;
    let f = &report.failure;
    let _ = writeln!(s, "Ambulance report {}", report.id);
    let _ = writeln!(
        s,
        "guest {} (id {}, generation {}, {} vCPUs, {} MiB): {}{} at {}",
        g.name,
        g.id,
        g.generation,
        g.vcpus,
        g.memory_bytes >> 20,
        f.cause,
        f.vcpu.map(|v| format!(" on vCPU {v}")).unwrap_or_default(),
        f.time
    );
    if !f.detail.is_empty() {
        let _ = writeln!(s, "  {}", f.detail);
    }
    if let Some(k) = &report.kernel {
        kernel_summary(&mut s, k);
    }

    let count = |sev: Severity| report.findings.iter().filter(|x| x.severity == sev).count();
    let of_kind = |k: FindingKind| report.findings.iter().filter(|x| x.kind == k).count();
    let mut kinds = String::new();
    for (k, what) in [
        (FindingKind::Event, "restating the failure"),
        (FindingKind::MidUpdate, "mid-update"),
        (FindingKind::Diagnosis, "about the diagnosis"),
    ] {
        let n = of_kind(k);
        if n > 0 {
            let _ = write!(kinds, "; {n} {what}");
        }
    }
    let _ = writeln!(
        s,
        "\nFindings: {} ({} critical, {} error, {} warning, {} info{kinds})",
        report.findings.len(),
        count(Severity::Critical),
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    let mut findings: Vec<_> = report.findings.iter().collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for x in findings {
        let mut place = x.structure.root.clone();
        if let Some(i) = x.structure.index {
            let _ = write!(place, "[{i}]");
        }
        if let Some(p) = &x.structure.path {
            let _ = write!(place, ".{p}");
        }
        let addr = match (x.address.virt, x.address.phys) {
            (Some(v), Some(p)) => format!(" at {v} (phys {p})"),
            (Some(v), None) => format!(" at {v}"),
            (None, Some(p)) => format!(" at phys {p}"),
            (None, None) => String::new(),
        };
        // Memory analysis is the common case and goes untagged; the rest say what they are.
        let kind = match x.kind {
            FindingKind::Analysis => String::new(),
            k => format!(" [{}]", k.name().replace('_', "-")),
        };
        let _ = writeln!(
            s,
            "  {:<8} {:<16} {place}{addr}{kind}",
            x.severity.to_string().to_uppercase(),
            x.validator
        );
        let _ = writeln!(s, "           {}", x.message);
        if !x.expected.is_empty() || !x.found.is_empty() {
            let _ = writeln!(s, "           expected {}, found {}", x.expected, x.found);
        }
    }

    if !report.structures.is_empty() {
        let _ = writeln!(s, "\nStructures walked:");
        for w in &report.structures {
            let at = w.end.at.map(|a| format!(" at {a}")).unwrap_or_default();
            let _ = writeln!(
                s,
                "  {:<20} {:<6} {:>6} elements  {}{at}{}",
                w.structure,
                w.kind,
                w.count,
                w.end.kind,
                if w.end.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", w.end.detail)
                }
            );
        }
    }

    if !report.vcpus.is_empty() {
        let _ = writeln!(s, "\nvCPUs:");
        for v in &report.vcpus {
            let _ = writeln!(
                s,
                "  {} {:<8} rip {} rsp {} rbp {} cr3 {} cr2 {}",
                v.vcpu, v.activity, v.rip, v.rsp, v.rbp, v.cr3, v.cr2
            );
        }
    }

    if let Some(r) = &report.registration {
        let _ = writeln!(
            s,
            "\nRegistered at boot: descriptor at {}, build ID {}, {} roots{}",
            r.descriptor_gpa,
            if r.build_id.is_empty() {
                "-"
            } else {
                &r.build_id
            },
            r.roots.len(),
            if r.vmcoreinfo { ", VMCOREINFO" } else { "" }
        );
    } else {
        let _ = writeln!(s, "\nThe guest never registered a descriptor.");
    }

    if !report.timeline.is_empty() {
        let total: u64 = report.timeline.iter().map(|p| p.duration_us).sum();
        let phases: Vec<String> = report
            .timeline
            .iter()
            .map(|p| format!("{} {}", p.name, micros(p.duration_us)))
            .collect();
        let _ = writeln!(
            s,
            "\nTimeline ({} in all): {}",
            micros(total),
            phases.join(", ")
        );
    }

    if let Some(k) = &report.kernel {
        kernel_details(&mut s, k);
    }

    let _ = writeln!(
        s,
        "\nLog ({} records{}):",
        report.log.len(),
        if report.log.len() > LOG_TAIL {
            format!(", last {LOG_TAIL}")
        } else {
            String::new()
        }
    );
    for r in report
        .log
        .iter()
        .skip(report.log.len().saturating_sub(LOG_TAIL))
    {
        let _ = writeln!(
            s,
            "  [{:>5}.{:06}] cpu{} {}",
            r.timestamp_ns / 1_000_000_000,
            (r.timestamp_ns / 1_000) % 1_000_000,
            r.cpu,
            r.text
        );
    }
    for (kind, path) in &report.artifacts {
        let _ = writeln!(s, "\n{kind}: {path}");
    }
    s
}

/// The Linux kernel's identity and panic, under the failure line.
fn kernel_summary(s: &mut String, k: &KernelInfo) {
    let _ = writeln!(
        s,
        "Linux {}{}",
        k.release.as_deref().unwrap_or("(release unknown)"),
        k.kaslr_offset
            .map(|o| format!(", KASLR offset {o}"))
            .unwrap_or_default()
    );
    if let Some(c) = &k.crash {
        let cpu = c.cpu.map(|c| format!(" on CPU {c}")).unwrap_or_default();
        let task = match (c.pid, &c.comm) {
            (Some(pid), Some(comm)) => format!(", task {pid} ({comm})"),
            (Some(pid), None) => format!(", task {pid}"),
            _ => String::new(),
        };
        let what = match c.kind.as_str() {
            "panic" => "Kernel panic",
            other => other,
        };
        let _ = writeln!(s, "  {what}{cpu}{task}: {}", c.message);
        if let Some(m) = c.panic_message.as_ref().filter(|m| **m != c.message) {
            let _ = writeln!(s, "  Kernel panic: {m}");
        }
        if let Some(rip) = &c.rip_symbol {
            let _ = writeln!(s, "  RIP: {rip}");
        }
        if !c.registers.is_empty() {
            let regs: Vec<String> = c
                .registers
                .iter()
                .map(|(name, v)| format!("{name} {v}"))
                .collect();
            for chunk in regs.chunks(4) {
                let _ = writeln!(s, "    {}", chunk.join("  "));
            }
        }
        for n in &c.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        // The crashed task's trace first, as `crash`'s `bt` shows it: from its CPU when
        // it was running there, else its own.
        let on_cpu = c
            .cpu
            .and_then(|cpu| k.cpus.iter().find(|x| x.cpu == cpu))
            .and_then(|x| x.stack.as_ref());
        let own = c
            .task
            .and_then(|a| k.tasks.iter().find(|t| t.address == a))
            .and_then(|t| t.stack.as_ref());
        if let Some(st) = on_cpu.or(own) {
            let _ = writeln!(s, "  Stack:");
            stack_lines(s, st, "    ");
        }
    } else if let Some(m) = &k.panic_message {
        let cpu = k
            .panic_cpu
            .map(|c| format!(" on CPU {c}"))
            .unwrap_or_default();
        let _ = writeln!(s, "  Kernel panic{cpu}: {m}");
    }
    let src = &k.sources;
    let _ = writeln!(
        s,
        "  read with VMCOREINFO from {}, symbols from {}, types from {}",
        src.vmcoreinfo.as_deref().unwrap_or("nowhere"),
        list_or_none(&src.symbols),
        list_or_none(&src.types)
    );
    for m in &src.missing {
        let _ = writeln!(s, "  missing: {m}");
    }
}

/// A stack trace, one frame a line, and how it ended.
fn stack_lines(s: &mut String, st: &crate::StackTrace, indent: &str) {
    for (i, f) in st.frames.iter().enumerate() {
        // Where in the source, with the debug info: `  file:line`.
        let at = match (&f.file, f.line) {
            (Some(file), Some(line)) => format!("  {file}:{line}"),
            (Some(file), None) => format!("  {file}"),
            _ => String::new(),
        };
        if f.inlined {
            let name = f.function.as_deref().unwrap_or("?");
            let _ = writeln!(s, "{indent}#{i:<2} {name} (inlined){at}");
            continue;
        }
        let sym = f.symbol.as_deref().or(f.function.as_deref()).unwrap_or("?");
        let via = match f.via.as_str() {
            "pt_regs" => " [exception frame]",
            "frame_pointer" => " [frame pointer]",
            _ => "",
        };
        let _ = writeln!(s, "{indent}#{i:<2} {sym} ({}){via}{at}", f.pc);
    }
    if !st.complete {
        let _ = writeln!(s, "{indent}({})", st.end);
    }
}

/// CPUs, tasks (with their stacks) and the tail of dmesg.
fn kernel_details(s: &mut String, k: &KernelInfo) {
    if !k.cpus.is_empty() {
        let _ = writeln!(s, "\nCPUs ({}):", k.cpus.len());
        for c in &k.cpus {
            let vcpu = c.vcpu.map(|v| format!(" (vCPU {v})")).unwrap_or_default();
            let task = match (c.pid, &c.comm) {
                (Some(p), Some(comm)) => format!("{p} ({comm})"),
                _ => "unknown".into(),
            };
            let _ = writeln!(s, "  CPU {}{vcpu}: task {task}", c.cpu);
            if let Some(st) = &c.stack {
                stack_lines(s, st, "    ");
            }
            for n in &c.notes {
                let _ = writeln!(s, "    note: {n}");
            }
        }
    }
    if !k.tasks.is_empty() {
        let _ = writeln!(s, "\nTasks ({}):", k.tasks.len());
        let _ = writeln!(
            s,
            "  {:>7} {:>7} {:<2} {:<16} TASK",
            "PID", "TGID", "ST", "COMM"
        );
        for t in &k.tasks {
            let _ = writeln!(
                s,
                "  {:>7} {:>7} {:<2} {:<16} {}",
                t.pid, t.tgid, t.state, t.comm, t.address
            );
        }
        if k.tasks.iter().any(|t| t.stack.is_some()) {
            let _ = writeln!(s, "\nTask stacks:");
            for t in &k.tasks {
                if let Some(st) = &t.stack {
                    let _ = writeln!(s, "  PID {} ({}):", t.pid, t.comm);
                    stack_lines(s, st, "    ");
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "\ndmesg ({} records{}{}):",
        k.dmesg.len(),
        if k.dmesg_dropped > 0 {
            format!(", {} unreadable", k.dmesg_dropped)
        } else {
            String::new()
        },
        if k.dmesg.len() > DMESG_TAIL {
            format!(", last {DMESG_TAIL}")
        } else {
            String::new()
        }
    );
    for r in k
        .dmesg
        .iter()
        .skip(k.dmesg.len().saturating_sub(DMESG_TAIL))
    {
        for line in r.text.lines() {
            let _ = writeln!(
                s,
                "  <{}>[{:>5}.{:06}] {line}",
                r.level,
                r.timestamp_ns / 1_000_000_000,
                (r.timestamp_ns / 1_000) % 1_000_000
            );
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "nowhere".into()
    } else {
        v.join(", ")
    }
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}
