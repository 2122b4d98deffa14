//! Diagnosis of every fault of the catalogue on real KVM: the report holds a finding from
//! the validator that should catch the fault, at the address the kernel's ground-truth
//! line names, on the structure it names; live and offline diagnosis agree; a healthy
//! guest frozen at arbitrary moments yields nothing of severity warning or above.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ambulance_report::{Report, Severity};
use ambulance_vmm::{EventKind, Guest, Vmm};
use common::{diagnose_failure, freeze_and_diagnose, test_guest, vmm, wait_for_failure, Written};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Truth {
    structure: String,
    address: u64,
}

fn truth(line: &str) -> Truth {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .to_string()
    };
    Truth {
        structure: field("structure="),
        address: u64::from_str_radix(field("address=0x").as_str(), 16).unwrap(),
    }
}

fn options() -> ambulance_diagnose::Options {
    ambulance_cli::diagnose_options(Some("test"), None, None, None).unwrap()
}

/// Boots a guest with `fault`, waits for its failure, diagnoses it live (with a core).
fn diagnose_fault(
    vmm: &Vmm,
    fault: &str,
    seed: u64,
    dir: &std::path::Path,
) -> (Guest, Written, Truth) {
    let events = vmm.events();
    let cmdline = format!("fault={fault} fault_after_ms=300 seed={seed}");
    let guest = vmm.start(test_guest(fault, &cmdline)).unwrap();
    let seen = wait_for_failure(&events, &guest, TIMEOUT);
    let line = seen.ground_truth().expect("ground truth").to_string();
    let e = seen.events.last().unwrap();
    let written = diagnose_failure(&guest, e, &options(), dir, true);
    (guest, written, truth(&line))
}

fn assert_caught(report: &Report, validator: &str, t: &Truth, fault: &str) {
    let hit = report.findings.iter().any(|f| {
        f.validator == validator
            && f.structure.root == t.structure
            && f.address.virt.map(|a| a.0) == Some(t.address)
            && f.severity >= Severity::Error
    });
    assert!(
        hit,
        "{fault}: no {validator} finding on {} at {:#x}; findings:\n{}",
        t.structure,
        t.address,
        ambulance_report::text::render(report)
    );
}

/// Validates a report against the published schema file.
fn assert_valid(json: &str) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crates/report/report.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "report does not follow report.schema.json: {errors:#?}"
    );
}

fn check(fault: &str, validator: &str, seeds: &[u64]) {
    let Some(vmm) = vmm() else { return };
    let dir = tempfile::tempdir().unwrap();
    for &seed in seeds {
        let (guest, w, t) = diagnose_fault(&vmm, fault, seed, dir.path());
        assert_caught(&w.report, validator, &t, &format!("{fault}/{seed}"));
        // The files are there, the JSON is the report, and it follows the published schema.
        let json = std::fs::read_to_string(&w.json).unwrap();
        assert_eq!(Report::from_json(&json).unwrap(), w.report);
        assert_valid(&json);
        assert!(std::fs::read_to_string(&w.text)
            .unwrap()
            .contains(validator));
        guest.destroy();
    }
}

#[test]
fn panic_is_attributed_to_its_cpu() {
    check("panic", "cpu", &[1, 2]);
}

#[test]
fn list_corruption() {
    check("list-corruption", "list-integrity", &[1, 2, 3]);
}

#[test]
fn list_cycle() {
    check("list-cycle", "list-integrity", &[1, 2, 3]);
}

#[test]
fn stack_overflow() {
    check("stack-overflow", "stack-end", &[1, 2, 3]);
}

#[test]
fn magic_smash() {
    check("magic-smash", "magic", &[1, 2, 3, 4]);
}

#[test]
fn text_corruption() {
    check("text-corruption", "checksum", &[1, 2, 3]);
}

#[test]
fn freelist_cycle() {
    check("freelist-cycle", "freelist", &[1, 2, 3]);
}

#[test]
fn wild_pointer() {
    check("wild-pointer", "pointer-range", &[1, 2, 3]);
}

#[test]
fn deadlock() {
    check("deadlock", "locks", &[1, 2]);
}

#[test]
fn hang() {
    check("hang", "cpu", &[1, 2]);
}

#[test]
fn slow() {
    check("slow", "heartbeat", &[1, 2]);
}

#[test]
fn triple_fault() {
    check("triple-fault", "cpu", &[1, 2]);
}

/// Findings compared without ids and timings.
fn finding_set(r: &Report) -> BTreeSet<String> {
    r.findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {}[{:?}].{:?} {:?} {} {}",
                f.validator,
                f.severity,
                f.structure.root,
                f.structure.index,
                f.structure.path,
                f.address.virt,
                f.expected,
                f.found
            )
        })
        .collect()
}

#[test]
fn live_and_offline_diagnosis_agree() {
    let Some(vmm) = vmm() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (fault, seed) in [
        ("list-corruption", 5),
        ("freelist-cycle", 2),
        ("text-corruption", 4),
    ] {
        let (guest, w, _) = diagnose_fault(&vmm, fault, seed, dir.path());
        let core = w.core.as_ref().expect("a core was written");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ambulance"))
            .args(["diagnose", "--core"])
            .arg(core)
            .arg("--debuginfo")
            .arg(ambulance_test_kernel::ELF_PATH)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let offline_json = String::from_utf8_lossy(&out.stdout);
        assert_valid(&offline_json);
        let offline = Report::from_json(&offline_json).unwrap();
        assert_eq!(
            finding_set(&offline),
            finding_set(&w.report),
            "{fault}: live and offline differ"
        );
        assert_eq!(offline.failure.cause, w.report.failure.cause);
        assert_eq!(offline.log, w.report.log);
        guest.destroy();
    }
}

#[test]
fn healthy_guest_frozen_at_arbitrary_moments_has_no_findings() {
    let Some(vmm) = vmm() else { return };
    let events = vmm.events();
    let guest = vmm
        .start(test_guest("healthy", "fault=none tasks=24 seed=9"))
        .unwrap();
    common::poll_registered(&guest, TIMEOUT);
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    let mut samples = 0;
    let mut pause = 7u64;
    let start = Instant::now();
    while samples < 25 {
        pause = (pause * 7919 + 13) % 97;
        std::thread::sleep(Duration::from_millis(pause));
        let w = freeze_and_diagnose(&guest, "sampled by a test", &options, dir.path(), false);
        let bad: Vec<_> = w
            .report
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Warning)
            .collect();
        assert!(bad.is_empty(), "sample {samples}: {bad:#?}");
        assert!(w
            .report
            .structures
            .iter()
            .any(|s| s.structure == "run_queue" && s.end.kind == "complete"));
        assert!(!w.report.log.is_empty());
        guest.resume().unwrap();
        samples += 1;
    }
    assert!(events
        .try_iter()
        .all(|e| !matches!(e.kind, EventKind::Failure { .. })));
    assert!(start.elapsed() < Duration::from_secs(120));
}

#[test]
fn bad_core_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let elf = ambulance_test_kernel::ELF;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", elf[..100].to_vec()),
        (
            "foreign",
            b"\x89PNG\r\n\x1a\n0000000000000000000000000000000000000000000000000000000000".to_vec(),
        ),
        ("not a core", elf.to_vec()),
        (
            "garbage",
            (0..10_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{}.core", name.replace(' ', "-")));
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ambulance"))
            .args(["diagnose", "--core"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}: accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("ambulance: error:"), "{name}: {err}");
        assert!(
            err.contains(&*path.display().to_string()),
            "{name}: error should name the file: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let _ = Guest::id; // the type is used by the other tests
}
