//! How events are shown: one JSON object per line (`--json`), or one line for people.
//!
//! Every JSON line has an `"event"` field: `console` (with `text`), `registered`,
//! `registration_refused`, `failure` (with `cause`: `panic`, `triple_fault`,
//! `internal_error`, `watchdog_stall`, `degraded`, `reset`, `operator`),
//! `maintenance_complete`, and a final `end`. 64-bit values (addresses, registers) are hex
//! strings: they do not fit a JSON number.

use std::time::SystemTime;

use ambulance_vmm::{EventKind, FailureCause, FrozenRegisters, VmmEvent};
use serde_json::{json, Map, Value};

/// `0x…` for a 64-bit value.
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// The registers of one vCPU as JSON, 64-bit values as hex strings.
pub fn registers_json(r: &FrozenRegisters) -> Value {
    json!({
        "vcpu": r.index,
        "activity": r.activity,
        "rip": hex(r.rip), "rsp": hex(r.rsp), "rbp": hex(r.rbp), "rflags": hex(r.rflags),
        "rax": hex(r.rax), "rbx": hex(r.rbx), "rcx": hex(r.rcx), "rdx": hex(r.rdx),
        "rsi": hex(r.rsi), "rdi": hex(r.rdi), "r8": hex(r.r8), "r9": hex(r.r9),
        "r10": hex(r.r10), "r11": hex(r.r11), "r12": hex(r.r12), "r13": hex(r.r13),
        "r14": hex(r.r14), "r15": hex(r.r15),
        "cr0": hex(r.cr0), "cr2": hex(r.cr2), "cr3": hex(r.cr3), "cr4": hex(r.cr4),
        "efer": hex(r.efer),
    })
}

/// Cause-specific fields of a failure.
fn cause_fields(cause: &FailureCause, out: &mut Map<String, Value>) {
    match cause {
        FailureCause::Panic { code, reason } => {
            out.insert("panic_code".into(), json!(code));
            out.insert("panic_reason".into(), json!(reason));
        }
        FailureCause::InternalError {
            suberror,
            hardware_entry_failure_reason,
        } => {
            out.insert("suberror".into(), json!(suberror));
            out.insert(
                "hardware_entry_failure_reason".into(),
                json!(hardware_entry_failure_reason.map(hex)),
            );
        }
        FailureCause::WatchdogStall {
            stalled_for_ms,
            heartbeat,
        } => {
            out.insert("stalled_for_ms".into(), json!(stalled_for_ms));
            out.insert("heartbeat".into(), json!(heartbeat));
        }
        FailureCause::Degraded {
            measured_hz,
            threshold_hz,
            window_ms,
        } => {
            out.insert("measured_hz".into(), json!(measured_hz));
            out.insert("threshold_hz".into(), json!(threshold_hz));
            out.insert("window_ms".into(), json!(window_ms));
        }
        FailureCause::TripleFault | FailureCause::Reset | FailureCause::Operator => {}
    }
}

/// The `event` name of an event kind.
pub fn event_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Console { .. } => "console",
        EventKind::Registered { .. } => "registered",
        EventKind::RegistrationRefused { .. } => "registration_refused",
        EventKind::Failure { .. } => "failure",
        EventKind::MaintenanceComplete { .. } => "maintenance_complete",
    }
}

/// One event as a JSON object; `t_ms` counts from `start`.
pub fn event_json(e: &VmmEvent, start: SystemTime) -> Value {
    let mut m = Map::new();
    m.insert("event".into(), json!(event_name(&e.kind)));
    m.insert("guest".into(), json!(e.guest_name));
    m.insert("guest_id".into(), json!(e.guest));
    m.insert("generation".into(), json!(e.generation));
    m.insert(
        "time".into(),
        json!(humantime::format_rfc3339_millis(e.time).to_string()),
    );
    m.insert("t_ms".into(), json!(millis_since(start, e.time)));
    match &e.kind {
        EventKind::Console { text } => {
            m.insert("text".into(), json!(text));
        }
        EventKind::Registered {
            gpa,
            build_id,
            roots,
            vmcoreinfo,
        } => {
            m.insert("gpa".into(), json!(hex(*gpa)));
            m.insert("build_id".into(), json!(build_id));
            m.insert("roots".into(), json!(roots));
            m.insert("vmcoreinfo".into(), json!(vmcoreinfo));
        }
        EventKind::RegistrationRefused { gpa, reason } => {
            m.insert("gpa".into(), json!(hex(*gpa)));
            m.insert("reason".into(), json!(reason));
        }
        EventKind::Failure {
            cause,
            vcpu,
            detail,
            frozen,
        } => {
            m.insert("cause".into(), json!(cause.name()));
            cause_fields(cause, &mut m);
            m.insert("vcpu".into(), json!(vcpu));
            m.insert("detail".into(), json!(detail));
            m.insert("freeze_latency_us".into(), json!(frozen.freeze_latency_us));
            m.insert(
                "vcpus".into(),
                Value::Array(frozen.vcpus.iter().map(registers_json).collect()),
            );
        }
        EventKind::MaintenanceComplete { status } => {
            m.insert("status".into(), json!(status));
        }
    }
    Value::Object(m)
}

/// One event as a line for people.
pub fn event_human(e: &VmmEvent, start: SystemTime) -> String {
    let t = millis_since(start, e.time) as f64 / 1000.0;
    let who = &e.guest_name;
    match &e.kind {
        EventKind::Console { text } => format!("[{t:8.3}] {who} | {text}"),
        EventKind::Registered {
            gpa,
            build_id,
            roots,
            vmcoreinfo,
        } => format!(
            "[{t:8.3}] {who} registered: descriptor at {gpa:#x}, build ID {build_id}, {} roots ({}){}",
            roots.len(),
            roots.join(", "),
            if *vmcoreinfo { ", VMCOREINFO" } else { "" }
        ),
        EventKind::RegistrationRefused { gpa, reason } => {
            format!("[{t:8.3}] {who} registration REFUSED (descriptor at {gpa:#x}): {reason}")
        }
        EventKind::Failure {
            cause,
            vcpu,
            detail,
            frozen,
        } => {
            let mut s = format!(
                "[{t:8.3}] {who} FAILURE {}{}: {detail} (frozen in {} µs)",
                cause.name(),
                vcpu.map(|v| format!(" on vCPU {v}")).unwrap_or_default(),
                frozen.freeze_latency_us
            );
            for r in &frozen.vcpus {
                s.push_str(&format!(
                    "\n           vCPU {} ({:?}): rip {:#018x} rsp {:#018x} cr3 {:#x}",
                    r.index, r.activity, r.rip, r.rsp, r.cr3
                ));
            }
            s
        }
        EventKind::MaintenanceComplete { status } => {
            format!("[{t:8.3}] {who} maintenance complete, status {status}")
        }
    }
}

/// Milliseconds from `start` to `t` (0 if `t` is earlier).
pub fn millis_since(start: SystemTime, t: SystemTime) -> u64 {
    t.duration_since(start)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
