//! heartbeat: the event said again, at the counter.

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_report::{FindingKind, Hex, Severity};
use ambulance_validate::builtins::Heartbeat;

use crate::support::*;

fn guest(cause: &str) -> (Guest, u64) {
    let mut g = Guest::new();
    let hb = g.alloc(8);
    g.heartbeat_gpa = g.mem.phys(hb);
    g.put_u64(hb, 4242);
    g.root(Root {
        name: "heartbeat".into(),
        type_name: "Heartbeat".into(),
        kind: RootKind::Object,
        flags: 0,
        address: hb,
        element_size: 8,
        link_offset: 0,
        max_count: 1,
        aux: 0,
        lock: 0,
        hints: vec![],
    });
    g.failure = failure(cause, None);
    (g, hb)
}

#[test]
fn nothing_to_say_when_the_heartbeat_was_not_the_failure() {
    let (g, _) = guest("panic");
    assert!(g.build().run(&Heartbeat).is_empty());
}

#[test]
fn a_stalled_heartbeat_is_the_event_at_the_counter() {
    let (mut g, hb) = guest("watchdog_stall");
    g.failure
        .data
        .insert("stalled_for_ms".into(), serde_json::json!(1200));
    let pa = g.heartbeat_gpa;
    let found = g.build().run(&Heartbeat);
    let f = the_one(&found, hb);
    assert_eq!(f.kind, FindingKind::Event);
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.address.phys, Some(Hex(pa)));
    assert_eq!(f.structure.root, "heartbeat");
    assert_eq!(f.found, "stuck at 4242 for 1200 ms");
}

#[test]
fn a_slow_heartbeat_says_how_slow() {
    let (mut g, hb) = guest("degraded");
    g.failure
        .data
        .insert("measured_hz".into(), serde_json::json!(120.0));
    g.failure
        .data
        .insert("threshold_hz".into(), serde_json::json!(500.0));
    let found = g.build().run(&Heartbeat);
    let f = the_one(&found, hb);
    assert_eq!(f.kind, FindingKind::Event);
    assert_eq!(f.found, "120.0 beats/s");
}
