//! Why the kernel died, read from its own log: the kind of failure (panic, oops, `BUG()`,
//! general protection fault, NULL dereference, soft or hard lockup, hung task, RCU stall,
//! "Attempted to kill init!"), its message as the kernel wrote it, the CPU and task that
//! printed it, and the registers the kernel dumped for an oops.
//!
//! The kernel prints all of this through printk before it stops; the records are the
//! only place some of it is kept (the registers of an oops that was not followed by a
//! kdump). The formats this reads, and how they changed between the kernels supported:
//!
//! * `Kernel panic - not syncing: MSG` opens a panic; `---[ end Kernel panic - not
//!   syncing: MSG ]---` closes it and is never taken for the message;
//! * an oops starts with what the fault handler says (`BUG: kernel NULL pointer
//!   dereference, address: …`, `BUG: unable to handle page fault for address: …`,
//!   `kernel BUG at FILE:LINE!`) and then the die header `STR: ERR [#N] FLAGS` — which
//!   Linux ≥ 6.9 prefixes with `Oops: ` (`Oops: general protection fault, …`,
//!   `Oops: invalid opcode: 0000 [#1] …`, `Oops: Oops: 0002 [#1] …`);
//! * the CPU and task follow as `CPU: 1 PID: 57 Comm: sh Not tainted …` (6.1) or
//!   `CPU: 1 UID: 0 PID: 57 Comm: sh Not tainted …` (≥ 6.10);
//! * an oops's registers as `RIP: 0010:func+0x16/0x20`, `RSP: 0018:… EFLAGS: …`,
//!   `RAX: … RBX: … RCX: …` and so on, each line its own record, up to `Call Trace:`;
//! * soft lockups (`watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [comm:pid]`), hard
//!   lockups (`Watchdog detected hard LOCKUP on cpu N`), hung tasks (`INFO: task
//!   comm:pid blocked for more than N seconds.`) and RCU stalls (`rcu: INFO: rcu_sched
//!   detected stalls on CPUs/tasks:`, `… self-detected stall on CPU`).
//!
//! Records are text the guest wrote: every search here is bounded by the records given,
//! and anything that does not parse is left out, never guessed.

use std::collections::BTreeMap;

use crate::printk::PrintkRecord;

/// What precedes the message of a panic.
const PANIC_MARKER: &str = "Kernel panic - not syncing: ";
/// What precedes the message of a panic's closing trailer.
const PANIC_END_MARKER: &str = "---[ end Kernel panic - not syncing: ";
/// Records after an event's start searched for its CPU line and registers.
const EVENT_WINDOW: usize = 64;

/// What killed (or is killing) the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashKind {
    /// `panic()` with no oops or detector before it (sysrq, a driver, an assertion).
    Panic,
    /// "Attempted to kill init!": PID 1 exited.
    InitKilled,
    /// A page fault in the kernel at address 0 (or close to it).
    NullDereference,
    /// A general protection fault (a non-canonical address, a bad segment).
    GeneralProtectionFault,
    /// `BUG()` / `BUG_ON()`: `kernel BUG at FILE:LINE!`.
    Bug,
    /// Any other oops: a page fault elsewhere, an invalid opcode, a double fault, ….
    Oops,
    /// The soft-lockup detector: a CPU stuck in the kernel without scheduling.
    SoftLockup,
    /// The hard-lockup detector: a CPU stuck with interrupts off.
    HardLockup,
    /// The hung-task detector: a task blocked uninterruptibly too long.
    HungTask,
    /// RCU's stall detector.
    RcuStall,
}

impl CrashKind {
    /// The name used in reports (`panic`, `init_killed`, `null_dereference`,
    /// `general_protection_fault`, `bug`, `oops`, `soft_lockup`, `hard_lockup`,
    /// `hung_task`, `rcu_stall`).
    pub fn name(self) -> &'static str {
        match self {
            CrashKind::Panic => "panic",
            CrashKind::InitKilled => "init_killed",
            CrashKind::NullDereference => "null_dereference",
            CrashKind::GeneralProtectionFault => "general_protection_fault",
            CrashKind::Bug => "bug",
            CrashKind::Oops => "oops",
            CrashKind::SoftLockup => "soft_lockup",
            CrashKind::HardLockup => "hard_lockup",
            CrashKind::HungTask => "hung_task",
            CrashKind::RcuStall => "rcu_stall",
        }
    }

    /// Whether this is an oops (the kernel's `die()`), with registers of its own.
    pub fn is_oops(self) -> bool {
        matches!(
            self,
            CrashKind::NullDereference
                | CrashKind::GeneralProtectionFault
                | CrashKind::Bug
                | CrashKind::Oops
        )
    }
}

impl std::fmt::Display for CrashKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The failure the kernel's log describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crash {
    /// What it was.
    pub kind: CrashKind,
    /// The line that says so, as the kernel wrote it (`kernel BUG at mm/slub.c:435!`,
    /// `BUG: kernel NULL pointer dereference, address: 0000000000000000`; for a bare
    /// panic, the panic's message).
    pub message: String,
    /// The text after `Kernel panic - not syncing: `, when the kernel panicked (it may
    /// not have: an oops kills only its task unless `panic_on_oops`).
    pub panic_message: Option<String>,
    /// Sequence number of the record that starts the event.
    pub seq: u64,
    /// The CPU the kernel named (`CPU: N …` after the event).
    pub cpu: Option<u32>,
    /// The task the kernel named: PID.
    pub pid: Option<i32>,
    /// The task the kernel named: command.
    pub comm: Option<String>,
    /// The registers the kernel printed for the event, by the kernel's names in lower
    /// case (`rip` absent: the kernel prints it only as a symbol), when it printed a
    /// kernel-mode register dump.
    pub registers: BTreeMap<String, u64>,
    /// Where the kernel said the instruction pointer was (`func+0x16/0x20`).
    pub rip_symbol: Option<String>,
}

/// An event's start: its kind and the line saying so.
struct Event {
    index: usize,
    kind: CrashKind,
    message: String,
}

/// The text of a panic record's message, if `text` opens a panic (the closing trailer
/// does not).
fn panic_line(text: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(at) = text[from..].find(PANIC_MARKER) {
        let at = from + at;
        let is_trailer = text[..at].ends_with("---[ end ");
        if !is_trailer {
            let rest = &text[at + PANIC_MARKER.len()..];
            return Some(rest.lines().next().unwrap_or("").trim_end());
        }
        from = at + PANIC_MARKER.len();
    }
    None
}

/// The message of a panic's closing trailer (`---[ end Kernel panic - not syncing: MSG
/// ]---`), for a log that lost the panic line itself.
fn panic_trailer(text: &str) -> Option<&str> {
    let at = text.find(PANIC_END_MARKER)?;
    let rest = text[at + PANIC_END_MARKER.len()..].lines().next()?;
    Some(rest.trim_end().strip_suffix("]---")?.trim_end())
}

/// The message of the last panic in `records`: the text after `Kernel panic - not
/// syncing: ` up to the end of its line. The `---[ end Kernel panic … ]---` trailer is
/// only used when no panic line is left.
pub fn panic_message(records: &[PrintkRecord]) -> Option<String> {
    panic_index(records).map(|(_, m)| m).or_else(|| {
        records
            .iter()
            .rev()
            .find_map(|r| panic_trailer(&r.text).map(str::to_string))
    })
}

/// The last panic record and its message.
fn panic_index(records: &[PrintkRecord]) -> Option<(usize, String)> {
    records
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, r)| panic_line(&r.text).map(|m| (i, m.to_string())))
}

/// The die header of an oops (`STR: 0000 [#1] …`), with the `Oops: ` prefix of Linux ≥
/// 6.9 removed: `STR`.
fn die_header(text: &str) -> Option<&str> {
    let line = text.lines().next()?.trim_end();
    let open = line.find(" [#")?;
    let number_end = line[open + 3..].find(']')?;
    let number = &line[open + 3..open + 3 + number_end];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Before " [#": "STR: ERR" with ERR four hex digits.
    let head = &line[..open];
    let (what, err) = head.rsplit_once(": ")?;
    if err.len() != 4 || !err.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(what.strip_prefix("Oops: ").unwrap_or(what))
}

/// An event that starts at record `i` (not an oops's die header: see [`oops_at`]).
fn detector_event(text: &str) -> Option<(CrashKind, String)> {
    let line = text.lines().next()?.trim_end();
    if line.contains("BUG: soft lockup - CPU#") {
        return Some((CrashKind::SoftLockup, line.to_string()));
    }
    if line.contains("Watchdog detected hard LOCKUP on cpu") {
        return Some((CrashKind::HardLockup, line.to_string()));
    }
    if line.starts_with("INFO: task ") && line.contains(" blocked for more than ") {
        return Some((CrashKind::HungTask, line.to_string()));
    }
    if (line.contains("detected stalls on CPUs/tasks") || line.contains("self-detected stall on"))
        && line.contains("INFO: ")
    {
        return Some((CrashKind::RcuStall, line.to_string()));
    }
    None
}

/// Lines a fault handler prints before the die header, and the kind each makes of it.
fn fault_line(text: &str) -> Option<(CrashKind, &str)> {
    let line = text.lines().next()?.trim_end();
    if line.starts_with("BUG: kernel NULL pointer dereference") {
        return Some((CrashKind::NullDereference, line));
    }
    if line.starts_with("kernel BUG at ") {
        return Some((CrashKind::Bug, line));
    }
    if line.starts_with("BUG: unable to handle ") {
        return Some((CrashKind::Oops, line));
    }
    None
}

/// The oops whose die header is record `i`: the fault line a few records before it
/// (`BUG: …`, `kernel BUG at …`) names its kind and message; else the header does.
fn oops_at(records: &[PrintkRecord], i: usize, what: &str) -> Event {
    // The page-fault handler prints up to six lines (#PF:, the page-table walk) between
    // its BUG: line and the die header.
    let lo = i.saturating_sub(8);
    for j in (lo..i).rev() {
        if die_header(&records[j].text).is_some() {
            break;
        }
        if let Some((kind, line)) = fault_line(&records[j].text) {
            return Event {
                index: j,
                kind,
                message: line.to_string(),
            };
        }
    }
    let kind = if what.starts_with("general protection fault") {
        CrashKind::GeneralProtectionFault
    } else {
        CrashKind::Oops
    };
    let header = records[i].text.lines().next().unwrap_or("").trim_end();
    Event {
        index: i,
        kind,
        message: header.to_string(),
    }
}

/// The last event at or before record `end`.
fn last_event(records: &[PrintkRecord], end: usize) -> Option<Event> {
    for i in (0..=end.min(records.len().checked_sub(1)?)).rev() {
        let text = &records[i].text;
        if let Some(what) = die_header(text) {
            return Some(oops_at(records, i, what));
        }
        if let Some((kind, message)) = detector_event(text) {
            return Some(Event {
                index: i,
                kind,
                message,
            });
        }
    }
    None
}

/// Which event a panic's message points at, if it names one.
fn panic_kind(message: &str) -> Option<CrashKind> {
    if message.starts_with("Attempted to kill init!") {
        return Some(CrashKind::InitKilled);
    }
    if message.starts_with("softlockup") {
        return Some(CrashKind::SoftLockup);
    }
    if message.starts_with("Hard LOCKUP") {
        return Some(CrashKind::HardLockup);
    }
    if message.starts_with("hung_task") {
        return Some(CrashKind::HungTask);
    }
    if message.starts_with("RCU Stall") {
        return Some(CrashKind::RcuStall);
    }
    None
}

/// Whether a panic message says an oops caused it (`Fatal exception`, `Fatal exception
/// in interrupt`, `Oops - …`).
fn panic_after_oops(message: &str) -> bool {
    message.starts_with("Fatal exception") || message.starts_with("Oops")
}

/// `CPU: N [UID: U ]PID: P Comm: C Not tainted|Tainted: …`: CPU, PID, command.
pub fn cpu_line(text: &str) -> Option<(u32, i32, String)> {
    let line = text.lines().next()?.trim_end();
    let rest = line.strip_prefix("CPU: ")?;
    let (cpu, rest) = rest.split_once(' ')?;
    let cpu = cpu.parse().ok()?;
    let rest = match rest.strip_prefix("UID: ") {
        Some(r) => r.split_once(' ')?.1,
        None => rest,
    };
    let rest = rest.strip_prefix("PID: ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let pid = pid.parse().ok()?;
    let rest = rest.strip_prefix("Comm: ")?;
    // The command is up to 15 bytes and may hold spaces: it ends before the taint.
    let end = [" Not tainted", " Tainted: "]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or_else(|| rest.find(' ').unwrap_or(rest.len()));
    Some((cpu, pid, rest[..end].to_string()))
}

/// Registers named on one line of a register dump (`RAX: 0000… RBX: …`, `RSP:
/// 0018:ffffc9… EFLAGS: 00010246`, `FS:  0000… GS:ffff… knlGS:0000…`), in lower case.
fn register_pairs(line: &str, out: &mut BTreeMap<String, u64>) {
    let mut rest = line.trim();
    while let Some(colon) = rest.find(':') {
        let name = rest[..colon].trim();
        let after = rest[colon + 1..].trim_start();
        let value_end = after.find(' ').unwrap_or(after.len());
        let mut value = &after[..value_end];
        // `RSP: 0018:ffff…`: the stack segment, then the pointer.
        if let Some((seg, v)) = value.split_once(':') {
            if seg.len() == 4 {
                if let Ok(s) = u64::from_str_radix(seg, 16) {
                    out.insert(format!("{}_sel", name.to_ascii_lowercase()), s);
                    value = v;
                }
            }
        }
        // `FS:  00007f…(0000)`: the base, then the selector in parentheses.
        if let Some(open) = value.find('(') {
            value = &value[..open];
        }
        let good_name = !name.is_empty()
            && name.len() <= 8
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if good_name && !value.is_empty() && value.len() <= 16 {
            if let Ok(v) = u64::from_str_radix(value, 16) {
                out.insert(name.to_ascii_lowercase(), v);
            }
        }
        rest = after[value_end..].trim_start();
    }
}

/// The CPU line and the kernel-mode register dump that follow an event at `start`.
fn details(records: &[PrintkRecord], start: usize, crash: &mut Crash, want_registers: bool) {
    let end = records.len().min(start.saturating_add(EVENT_WINDOW));
    let mut in_regs = false;
    let mut seen_header = false;
    for (offset, r) in records[start..end].iter().enumerate() {
        let line = r.text.lines().next().unwrap_or("").trim_end();
        // The event's own die header (after its fault line, if any) belongs to it; the
        // next one, or another detector's report, is another event.
        if die_header(line).is_some() {
            if seen_header {
                break;
            }
            seen_header = true;
        } else if offset > 0 && detector_event(line).is_some() {
            break;
        }
        if crash.cpu.is_none() {
            if let Some((cpu, pid, comm)) = cpu_line(line) {
                crash.cpu = Some(cpu);
                crash.pid = Some(pid);
                crash.comm = Some(comm);
                continue;
            }
        }
        if !want_registers {
            continue;
        }
        if let Some(rip) = line.strip_prefix("RIP: ") {
            if in_regs || !crash.registers.is_empty() {
                break;
            }
            // Kernel mode: `0010:func+0x16/0x20`; user mode (`0033:0x47b7a0`) is the
            // syscall's entry frame, not the event's.
            let Some((cs, at)) = rip.split_once(':') else {
                continue;
            };
            let Ok(cs) = u64::from_str_radix(cs, 16) else {
                continue;
            };
            if cs & 3 != 0 {
                break;
            }
            in_regs = true;
            crash.registers.insert("cs".into(), cs);
            match at.strip_prefix("0x").map(|h| u64::from_str_radix(h, 16)) {
                Some(Ok(v)) => {
                    crash.registers.insert("rip".into(), v);
                }
                _ => crash.rip_symbol = Some(at.trim().to_string()),
            }
            continue;
        }
        if in_regs {
            if line.starts_with("Call Trace:") || line.starts_with("<TASK>") {
                break;
            }
            if line.starts_with("Code: ") {
                continue;
            }
            register_pairs(line, &mut crash.registers);
        }
    }
}

/// The failure `records` (dmesg, oldest first) describe, if they describe one: the last
/// panic and the event that led to it, or without a panic the last oops or detector
/// report.
pub fn crash(records: &[PrintkRecord]) -> Option<Crash> {
    let panic = panic_index(records);
    let trailer = || {
        records
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, r)| panic_trailer(&r.text).map(|m| (i, m.to_string())))
    };
    let panic = panic.or_else(trailer);
    let event = match &panic {
        Some((at, message)) => {
            let wanted = panic_kind(message);
            let before = at.checked_sub(1).and_then(|e| last_event(records, e));
            match (wanted, before) {
                (Some(CrashKind::InitKilled), _) => None,
                // The detector the panic names, or the oops a `Fatal exception` follows.
                (Some(kind), Some(e)) if e.kind == kind => Some(e),
                (None, Some(e)) if e.kind.is_oops() && panic_after_oops(message) => Some(e),
                _ => None,
            }
        }
        None => last_event(records, records.len().saturating_sub(1)),
    };
    let mut crash = match (event, &panic) {
        (Some(e), _) => Crash {
            kind: e.kind,
            message: e.message,
            panic_message: panic.as_ref().map(|(_, m)| m.clone()),
            seq: records[e.index].seq,
            cpu: None,
            pid: None,
            comm: None,
            registers: BTreeMap::new(),
            rip_symbol: None,
        },
        (None, Some((at, message))) => Crash {
            kind: panic_kind(message).unwrap_or(CrashKind::Panic),
            message: message.clone(),
            panic_message: Some(message.clone()),
            seq: records[*at].seq,
            cpu: None,
            pid: None,
            comm: None,
            registers: BTreeMap::new(),
            rip_symbol: None,
        },
        (None, None) => return None,
    };
    let start = records.iter().position(|r| r.seq == crash.seq)?;
    let oops = crash.kind.is_oops();
    details(records, start, &mut crash, oops);
    Some(crash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<PrintkRecord> {
        lines
            .iter()
            .enumerate()
            .map(|(i, t)| PrintkRecord {
                seq: 100 + i as u64,
                timestamp_ns: 0,
                level: 0,
                facility: 0,
                caller_id: 0,
                text: t.to_string(),
            })
            .collect()
    }

    #[test]
    fn panic_messages_never_take_the_trailer() {
        assert_eq!(panic_message(&[]), None);
        assert_eq!(panic_message(&log(&["all is well"])), None);
        let records = log(&[
            "Kernel panic - not syncing: first",
            "Kernel panic - not syncing: Fatal exception in interrupt  \nsecond line",
            "---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---",
        ]);
        assert_eq!(
            panic_message(&records).as_deref(),
            Some("Fatal exception in interrupt")
        );
        // Only the trailer left (the panic line overwritten): its message, unwrapped.
        let only_trailer =
            log(&["---[ end Kernel panic - not syncing: sysrq triggered crash ]---"]);
        assert_eq!(
            panic_message(&only_trailer).as_deref(),
            Some("sysrq triggered crash")
        );
        assert_eq!(
            panic_message(&log(&["Kernel panic - not syncing: "])).as_deref(),
            Some("")
        );
    }

    /// Linux 6.1's sysrq crash, as the fixture prints it.
    #[test]
    fn sysrq_panic_6_1() {
        let records = log(&[
            "sysrq: Trigger a crash",
            "Kernel panic - not syncing: sysrq triggered crash",
            "CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3",
            "Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014",
            "Call Trace:",
            " <TASK>",
            " dump_stack_lvl+0x44/0x5c",
            " </TASK>",
            "RIP: 0033:0x47b7a0",
            "RSP: 002b:00007fff8f6c0c28 EFLAGS: 00000202 ORIG_RAX: 0000000000000001",
            "RAX: ffffffffffffffda RBX: 0000000000000001 RCX: 000000000047b7a0",
            "Kernel Offset: 0x3a00000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)",
            "---[ end Kernel panic - not syncing: sysrq triggered crash ]---",
        ]);
        let c = crash(&records).unwrap();
        assert_eq!(c.kind, CrashKind::Panic);
        assert_eq!(c.message, "sysrq triggered crash");
        assert_eq!(c.panic_message.as_deref(), Some("sysrq triggered crash"));
        assert_eq!(
            (c.cpu, c.pid, c.comm.as_deref()),
            (Some(0), Some(1), Some("init"))
        );
        assert_eq!(c.seq, 101);
        // The user-mode frame of the syscall is not the event's registers.
        assert!(c.registers.is_empty(), "{:?}", c.registers);
    }

    /// Linux 6.12's "Attempted to kill init!" on CPU 3, with its UID field.
    #[test]
    fn init_killed_6_12() {
        let records = log(&[
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000",
            "CPU: 3 UID: 0 PID: 1 Comm: init Not tainted 6.12.57+deb13-amd64 #1  Debian 6.12.57-1~bpo12+1",
            "Call Trace:",
            "---[ end Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000 ]---",
        ]);
        let c = crash(&records).unwrap();
        assert_eq!(c.kind, CrashKind::InitKilled);
        assert_eq!(c.message, "Attempted to kill init! exitcode=0x00000000");
        assert_eq!(
            (c.cpu, c.pid, c.comm.as_deref()),
            (Some(3), Some(1), Some("init"))
        );
    }

    fn null_oops(header: &str, cpu: &str) -> Vec<PrintkRecord> {
        log(&[
            "sysrq: Trigger a crash",
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "#PF: supervisor write access in kernel mode",
            "#PF: error_code(0x0002) - not-present page",
            "PGD 0 P4D 0 ",
            header,
            cpu,
            "Hardware name: QEMU Standard PC (Q35 + ICH9, 2009)",
            "RIP: 0010:sysrq_handle_crash+0x16/0x20",
            "Code: 00 00 00 cc cc <c6> 04 25 00 00 00 00 01 c3",
            "RSP: 0018:ffffc90000013e60 EFLAGS: 00010246",
            "RAX: 0000000000000000 RBX: 0000000000000063 RCX: 0000000000000000",
            "RDX: 0000000000000000 RSI: ffffffff81d3b6e1 RDI: 0000000000000063",
            "RBP: ffff888003ae5000 R08: 0000000000000000 R09: ffffc90000013d08",
            "R10: 0000000000000003 R11: ffffffff8233e268 R12: 0000000000000000",
            "R13: 0000000000000000 R14: 0000000000000000 R15: 0000000000000000",
            "FS:  00007f2f1c1b8740(0000) GS:ffff88807dc00000(0000) knlGS:0000000000000000",
            "CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033",
            "CR2: 0000000000000000 CR3: 0000000003a5c000 CR4: 00000000000006f0",
            "Call Trace:",
            " <TASK>",
            " __handle_sysrq+0x89/0x170",
            " </TASK>",
            "Modules linked in:",
            "CR2: 0000000000000000",
            "---[ end trace 0000000000000000 ]---",
            "RIP: 0010:sysrq_handle_crash+0x16/0x20",
            "Kernel panic - not syncing: Fatal exception",
            "---[ end Kernel panic - not syncing: Fatal exception ]---",
        ])
    }

    #[test]
    fn null_dereference_in_both_formats() {
        for (header, cpu) in [
            (
                "Oops: 0002 [#1] PREEMPT SMP NOPTI",
                "CPU: 1 PID: 321 Comm: bash Not tainted 6.1.0-57-cloud-amd64 #1",
            ),
            (
                "Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI",
                "CPU: 1 UID: 0 PID: 321 Comm: bash Not tainted 6.12.57+deb13-amd64 #1",
            ),
        ] {
            let c = crash(&null_oops(header, cpu)).unwrap();
            assert_eq!(c.kind, CrashKind::NullDereference, "{header}");
            assert_eq!(
                c.message,
                "BUG: kernel NULL pointer dereference, address: 0000000000000000"
            );
            assert_eq!(c.panic_message.as_deref(), Some("Fatal exception"));
            assert_eq!(
                (c.cpu, c.pid, c.comm.as_deref()),
                (Some(1), Some(321), Some("bash"))
            );
            assert_eq!(
                c.rip_symbol.as_deref(),
                Some("sysrq_handle_crash+0x16/0x20")
            );
            let r = &c.registers;
            assert_eq!(r["rsp"], 0xffff_c900_0001_3e60);
            assert_eq!(r["rsp_sel"], 0x18);
            assert_eq!(r["eflags"], 0x10246);
            assert_eq!(r["rbx"], 0x63);
            assert_eq!(r["rbp"], 0xffff_8880_03ae_5000);
            assert_eq!(r["r15"], 0);
            assert_eq!(r["cr3"], 0x3a5_c000);
            assert_eq!(r["cr0"], 0x8005_0033);
            assert_eq!(r["cs"], 0x10);
            assert!(!r.contains_key("rip"));
        }
    }

    #[test]
    fn gpf_and_bug_in_both_formats() {
        for prefix in ["", "Oops: "] {
            let gpf = format!(
                "{prefix}general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#1] PREEMPT SMP NOPTI"
            );
            let records = log(&[
                &gpf,
                "CPU: 0 PID: 7 Comm: kworker/0:1 Tainted: G        W          6.1.0 #1",
                "RIP: 0010:list_del+0x5/0x20",
                "RSP: 0018:ffffc90000013e60 EFLAGS: 00010246",
                "Call Trace:",
                "Kernel panic - not syncing: Fatal exception in interrupt",
            ]);
            let c = crash(&records).unwrap();
            assert_eq!(c.kind, CrashKind::GeneralProtectionFault);
            assert_eq!(c.message, gpf);
            assert_eq!(c.comm.as_deref(), Some("kworker/0:1"));
            assert_eq!(c.registers["rsp"], 0xffff_c900_0001_3e60);

            let header = format!("{prefix}invalid opcode: 0000 [#1] PREEMPT SMP NOPTI");
            let records = log(&[
                "------------[ cut here ]------------",
                "kernel BUG at mm/slub.c:435!",
                &header,
                "CPU: 2 PID: 99 Comm: my task Not tainted 6.1.0 #1",
                "RIP: 0010:kfree+0x5/0x20",
            ]);
            // No panic (no panic_on_oops): the oops is the failure.
            let c = crash(&records).unwrap();
            assert_eq!(c.kind, CrashKind::Bug);
            assert_eq!(c.message, "kernel BUG at mm/slub.c:435!");
            assert_eq!(c.panic_message, None);
            assert_eq!(c.comm.as_deref(), Some("my task"));
            assert_eq!(c.cpu, Some(2));
        }
    }

    #[test]
    fn detectors() {
        let records = log(&[
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [spin:77]",
            "Modules linked in:",
            "CPU: 1 PID: 77 Comm: spin Not tainted 6.1.0 #1",
            "RIP: 0010:spin_loop+0x5/0x20",
            "Kernel panic - not syncing: softlockup: hung tasks",
        ]);
        let c = crash(&records).unwrap();
        assert_eq!(c.kind, CrashKind::SoftLockup);
        assert_eq!(
            c.message,
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [spin:77]"
        );
        assert_eq!(c.panic_message.as_deref(), Some("softlockup: hung tasks"));
        assert_eq!(c.pid, Some(77));
        assert!(
            c.registers.is_empty(),
            "only an oops has registers of its own"
        );

        let records = log(&[
            "INFO: task sync:88 blocked for more than 120 seconds.",
            "      Not tainted 6.1.0 #1",
            "Kernel panic - not syncing: hung_task: blocked tasks",
            "CPU: 0 PID: 30 Comm: khungtaskd Not tainted 6.1.0 #1",
        ]);
        let c = crash(&records).unwrap();
        assert_eq!(c.kind, CrashKind::HungTask);
        assert_eq!(
            c.message,
            "INFO: task sync:88 blocked for more than 120 seconds."
        );
        assert_eq!(c.comm.as_deref(), Some("khungtaskd"));

        let records = log(&[
            "rcu: INFO: rcu_preempt self-detected stall on CPU",
            "rcu: \t0-....: (21000 ticks this GP)",
        ]);
        let c = crash(&records).unwrap();
        assert_eq!(c.kind, CrashKind::RcuStall);
        assert_eq!(c.panic_message, None);

        // A panic that names no event is a panic, even after an unrelated stall.
        let mut records = records;
        records.extend(log(&[
            "Kernel panic - not syncing: VFS: Unable to mount root fs",
        ]));
        records.last_mut().unwrap().seq = 200;
        let c = crash(&records).unwrap();
        assert_eq!(c.kind, CrashKind::Panic);
        assert_eq!(c.message, "VFS: Unable to mount root fs");
        assert_eq!(c.seq, 200);
    }

    #[test]
    fn nothing_is_no_crash() {
        assert_eq!(crash(&[]), None);
        assert_eq!(
            crash(&log(&["Linux version 6.1", "RIP: 0010:x", "CPU: 0 PID: 1"])),
            None
        );
    }

    #[test]
    fn cpu_lines() {
        assert_eq!(
            cpu_line("CPU: 12 UID: 1000 PID: 4242 Comm: a b Tainted: G D 6.12 #1"),
            Some((12, 4242, "a b".into()))
        );
        assert_eq!(cpu_line("CPU: x PID: 1 Comm: a"), None);
        assert_eq!(
            cpu_line("CPU: 1 PID: 1 Comm: init"),
            Some((1, 1, "init".into()))
        );
    }
}
