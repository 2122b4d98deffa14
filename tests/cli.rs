//! The `ambulance` binary as operators use it: `run --json` prints one JSON object per
//! line, `demo` works on embedded defaults, and bad arguments get clear errors.

use std::process::Command;

use serde_json::Value;

fn ambulance() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ambulance"))
}

fn have_kvm() -> bool {
    ambulance_testkit::kvm()
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}"))
        })
        .collect()
}

#[test]
fn run_json_reports_registration_and_failure() {
    if !have_kvm() {
        return;
    }
    let out = ambulance()
        .args([
            "run",
            "--fault",
            "list-cycle",
            "--fault-after-ms",
            "200",
            "--seed",
            "4",
            "--json",
            // The guest's own panic is what this test is about: on a loaded machine the
            // heartbeat watchdog could see the stall first. The duration bounds the wait.
            "--watchdog-ms",
            "0",
            "--duration",
            "120",
        ])
        .output()
        .expect("ambulance runs");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    for l in &lines {
        assert!(l["event"].is_string(), "every line has an event field: {l}");
    }
    let console: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "console")
        .map(|l| l["text"].as_str().expect("console lines carry text"))
        .collect();
    assert!(console
        .iter()
        .any(|t| t.starts_with("AMBULANCE-FAULT name=list-cycle")));
    let registered = lines
        .iter()
        .find(|l| l["event"] == "registered")
        .expect("registered");
    assert!(registered["roots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "run_queue"));
    assert!(registered["gpa"].as_str().unwrap().starts_with("0x"));
    let failure = lines
        .iter()
        .find(|l| l["event"] == "failure")
        .expect("failure event");
    assert_eq!(failure["cause"], "panic");
    assert_eq!(failure["panic_reason"], "list corruption");
    let vcpus = failure["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 2);
    assert!(
        vcpus[0]["rip"].as_str().unwrap().starts_with("0xffffffff8"),
        "{}",
        vcpus[0]
    );
    let end = lines.last().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["reason"], "failure");
    assert_eq!(end["cause"], "panic");
}

#[test]
fn run_healthy_guest_stops_after_duration() {
    if !have_kvm() {
        return;
    }
    // Long enough that a loaded machine still boots the guest and sees it beat: the
    // duration runs from the start, registration can take seconds under load.
    let out = ambulance()
        .args(["run", "--duration", "6", "--json", "--vcpus", "1"])
        .output()
        .expect("ambulance runs");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert!(lines.iter().all(|l| l["event"] != "failure"));
    let end = lines.last().unwrap();
    assert_eq!(end["reason"], "duration");
    let beat = end["heartbeat"].as_u64();
    assert!(beat.is_some_and(|b| b > 500), "{end}");
}

#[test]
fn demo_runs_on_embedded_defaults() {
    if !have_kvm() {
        return;
    }
    let out = ambulance().arg("demo").output().expect("ambulance runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bravo FAILURE panic"), "{stdout}");
    assert!(stdout.contains("alpha    heartbeat"), "{stdout}");
    assert!(
        stdout.contains("done: failure captured, other guests unaffected"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_get_clear_errors() {
    let out = ambulance()
        .args(["run", "--fault", "meltdown"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown fault \"meltdown\"") && err.contains("list-corruption"),
        "{err}"
    );

    let out = ambulance()
        .args(["run", "--memory", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size \"lots\""));

    let out = ambulance()
        .args(["run", "--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read kernel image /nonexistent/vmlinux"));

    if have_kvm() {
        let out = ambulance().args(["run", "--vcpus", "99"]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("vcpus is 99, must be 1..=16"), "{err}");
    }
}
