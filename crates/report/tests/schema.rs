//! The published JSON Schema matches the report types, and reports validate against it.

use std::collections::BTreeMap;

use ambulance_report::*;

const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/report.schema.json");

pub fn sample() -> Report {
    Report {
        schema_version: SCHEMA_VERSION,
        id: "20261122T062315Z-bravo-3f2a".parse().unwrap(),
        tool: ToolInfo {
            sandbox: Some(SandboxInfo {
                applied: vec!["no_new_privs".into(), "seccomp".into()],
                refused: vec!["user_namespace: Operation not permitted".into()],
            }),
            cost: Some(DiagnosisCost {
                peak_rss_bytes: 12 << 20,
                user_cpu_us: 1500,
                system_cpu_us: 2500,
                wall_us: 7000,
            }),
            ..ToolInfo::current()
        },
        guest: GuestInfo {
            name: "bravo".into(),
            id: 2,
            generation: 0,
            memory_bytes: 64 << 20,
            vcpus: 2,
        },
        failure: FailureInfo {
            cause: "panic".into(),
            detail: "vCPU 0 rang the panic doorbell with reason 0x2 (list corruption)".into(),
            time: "2026-11-22T06:23:15.139Z".parse().unwrap(),
            vcpu: Some(0),
            data: BTreeMap::from([("panic_code".to_string(), serde_json::json!(2))]),
        },
        timeline: vec![
            Phase {
                name: "freeze".into(),
                duration_us: 120,
            },
            Phase {
                name: "validator:list-integrity".into(),
                duration_us: 40,
            },
        ],
        vcpus: vec![VcpuRegisters {
            vcpu: 0,
            activity: "failed".into(),
            rip: Hex(0xffff_ffff_8020_7977),
            ..Default::default()
        }],
        registration: Some(RegistrationSummary {
            descriptor_gpa: Hex(0x261000),
            build_id: "4ddd125b".into(),
            load_offset: 0,
            page_table_root: Hex(0x274000),
            vmcoreinfo: true,
            roots: vec![RootSummary {
                name: "run_queue".into(),
                kind: "list".into(),
                address: Hex(0xffff_ffff_8027_1000),
                type_name: "Task".into(),
                element_size: 96,
                max_count: 64,
            }],
        }),
        structures: vec![StructureWalk {
            structure: "run_queue".into(),
            kind: "list".into(),
            count: 14,
            end: WalkOutcome {
                kind: "complete".into(),
                at: None,
                detail: String::new(),
            },
        }],
        findings: vec![Finding {
            validator: "list-integrity".into(),
            severity: Severity::Critical,
            kind: FindingKind::Analysis,
            structure: StructureRef {
                root: "run_queue".into(),
                index: Some(5),
                path: Some("run_list.prev".into()),
            },
            address: Address {
                virt: Some(Hex(0xffff_ffff_8027_1fe8)),
                phys: Some(Hex(0x271fe8)),
            },
            expected: "0xffffffff80271e00".into(),
            found: "0xffffffff80271ac0".into(),
            message: "prev pointer does not point back at the previous node".into(),
        }],
        log: vec![LogRecord {
            seq: 7,
            timestamp_ns: 2_192_000_000,
            cpu: 0,
            text: "Kernel panic - not syncing: run_queue: list corruption".into(),
        }],
        artifacts: BTreeMap::new(),
        kernel: Some(KernelInfo {
            release: Some("6.1.0-56-cloud-amd64".into()),
            build_id: Some("3b43fad5034874490492495d552c0af6a5fab235".into()),
            kaslr_offset: Some(Hex(0x30e0_0000)),
            panic_message: Some("sysrq triggered crash".into()),
            panic_cpu: Some(0),
            dmesg: vec![DmesgRecord {
                seq: 412,
                timestamp_ns: 3_449_482_000,
                level: 0,
                text: "Kernel panic - not syncing: sysrq triggered crash".into(),
            }],
            dmesg_dropped: 0,
            tasks: vec![TaskInfo {
                pid: 1,
                tgid: 1,
                comm: "init".into(),
                state: "S".into(),
                address: Hex(0xffff_8a3c_0110_0000),
                stack: Some(StackTrace {
                    frames: vec![
                        StackFrame {
                            pc: Hex(0xffff_ffff_8109_2a3c),
                            sp: Hex(0xffff_c900_0001_3e60),
                            via: "orc".into(),
                            function: Some("context_switch".into()),
                            file: Some("kernel/sched/core.c".into()),
                            line: Some(5238),
                            column: Some(2),
                            inlined: true,
                            ..Default::default()
                        },
                        StackFrame {
                            pc: Hex(0xffff_ffff_8109_2a3c),
                            sp: Hex(0xffff_c900_0001_3e60),
                            symbol: Some("__schedule+0x33c/0x9a0".into()),
                            via: "orc".into(),
                            function: Some("__schedule".into()),
                            file: Some("kernel/sched/core.c".into()),
                            line: Some(6557),
                            ..Default::default()
                        },
                    ],
                    complete: false,
                    end: "a test".into(),
                }),
            }],
            cpus: vec![CpuInfo {
                cpu: 0,
                vcpu: Some(0),
                task: Some(Hex(0xffff_8a3c_0110_0000)),
                pid: Some(1),
                comm: Some("init".into()),
                stack: None,
                notes: vec![],
            }],
            sources: KernelSources {
                vmcoreinfo: Some("core-note".into()),
                symbols: vec!["kallsyms".into(), "vmcoreinfo".into()],
                types: vec!["btf".into(), "vmcoreinfo".into()],
                missing: vec![],
            },
            crash: Some(KernelCrash {
                kind: "panic".into(),
                message: "sysrq triggered crash".into(),
                panic_message: Some("sysrq triggered crash".into()),
                seq: 412,
                cpu: Some(0),
                pid: Some(1),
                comm: Some("init".into()),
                ..Default::default()
            }),
        }),
    }
}

#[test]
fn published_schema_is_current() {
    let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("AMBULANCE_UPDATE_SCHEMA").is_some() {
        std::fs::write(SCHEMA_FILE, &generated).unwrap();
    }
    let published = std::fs::read_to_string(SCHEMA_FILE).unwrap_or_default();
    assert!(
        published == generated,
        "crates/report/report.schema.json is out of date with the report types; \
         regenerate it with AMBULANCE_UPDATE_SCHEMA=1 cargo test -p ambulance-report"
    );
}

#[test]
fn sample_report_validates_and_round_trips() {
    let report = sample();
    let json = report.to_json();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let validator = jsonschema::validator_for(&json_schema()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        value["findings"][0]["address"]["virt"],
        "0xffffffff80271fe8"
    );
    assert_eq!(Report::from_json(&json).unwrap(), report);
}

#[test]
fn other_versions_and_bad_hex_are_refused() {
    let mut value: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
    value["schema_version"] = serde_json::json!(2);
    let err = Report::from_json(&value.to_string()).unwrap_err();
    assert!(err.to_string().contains("schema_version 2"), "{err}");
    value["schema_version"] = serde_json::json!(1);
    value["vcpus"][0]["rip"] = serde_json::json!(12345);
    assert!(Report::from_json(&value.to_string()).is_err());
    value["vcpus"][0]["rip"] = serde_json::json!("12345");
    let err = Report::from_json(&value.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("0x-prefixed"), "{err}");
}

#[test]
fn text_puts_the_worst_findings_first_and_ends_with_the_log() {
    let mut report = sample();
    report.findings.insert(
        0,
        Finding {
            validator: "locks".into(),
            severity: Severity::Info,
            kind: FindingKind::Analysis,
            structure: StructureRef {
                root: "locks".into(),
                index: Some(0),
                path: None,
            },
            address: Address::default(),
            expected: String::new(),
            found: String::new(),
            message: "lock run_queue held by CPU 1".into(),
        },
    );
    report.findings.push(Finding {
        validator: "cpu".into(),
        severity: Severity::Critical,
        kind: FindingKind::Event,
        structure: StructureRef {
            root: "percpu".into(),
            index: Some(0),
            path: None,
        },
        address: Address::default(),
        expected: String::new(),
        found: String::new(),
        message: "CPU 0 failed (panic)".into(),
    });
    let text = text::render(&report);
    // Findings that restate the failure say so; memory analysis goes untagged.
    assert!(
        text.contains("cpu              percpu[0] [event]\n"),
        "{text}"
    );
    assert!(text.contains("; 1 restating the failure)"), "{text}");
    assert!(
        text.contains(
            "list-integrity   run_queue[5].run_list.prev at 0xffffffff80271fe8 (phys 0x271fe8)\n"
        ),
        "{text}"
    );
    let critical = text.find("CRITICAL").unwrap();
    let info = text.find("INFO     locks").unwrap();
    assert!(critical < info, "{text}");
    // A Linux guest's identity and panic come right under the failure, its tasks and
    // dmesg before the log.
    assert!(
        text.contains("Linux 6.1.0-56-cloud-amd64, KASLR offset 0x30e00000\n  Kernel panic on CPU 0, task 1 (init): sysrq triggered crash"),
        "{text}"
    );
    assert!(
        text.contains("      1       1 S  init             0xffff8a3c01100000"),
        "{text}"
    );
    // A frame with debug info shows its source line; an inlined one is marked.
    assert!(
        text.contains(
            "#0  context_switch (inlined)  kernel/sched/core.c:5238\n    \
             #1  __schedule+0x33c/0x9a0 (0xffffffff81092a3c)  kernel/sched/core.c:6557\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("<0>[    3.449482] Kernel panic - not syncing: sysrq triggered crash"),
        "{text}"
    );
    assert!(
        text.contains("at 0xffffffff80271fe8 (phys 0x271fe8)"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with("Kernel panic - not syncing: run_queue: list corruption"),
        "{text}"
    );
}

/// A report written by hand, as a consumer of the format would: it validates against the
/// published schema file (not the one generated from the code), parses into the types,
/// and serializes back to the same document — so neither the schema nor the code can
/// drift from what the format promises without this test saying so.
#[test]
fn the_hand_written_golden_report_matches_schema_and_code() {
    let golden: serde_json::Value = serde_json::from_str(include_str!("golden/report-v1.json"))
        .expect("the golden report is JSON");
    let published: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(SCHEMA_FILE).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&published)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&golden)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let report = Report::from_json(&golden.to_string()).expect("the code reads it");
    assert_eq!(report.id.as_str(), "20261122T062315Z-web-0a1b2c3d");
    assert_eq!(report.failure.time.to_string(), "2026-11-22T06:23:15.139Z");
    let sandbox = report
        .tool
        .sandbox
        .as_ref()
        .expect("a worker's report says its jail");
    assert_eq!(sandbox.applied.last().map(String::as_str), Some("seccomp"));
    let back: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        back, golden,
        "the code writes the golden document back unchanged"
    );
    let kinds: Vec<FindingKind> = report.findings.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FindingKind::Analysis,
            FindingKind::Event,
            FindingKind::MidUpdate
        ]
    );
    // A report written before findings had a kind reads as memory analysis.
    let mut old = golden.clone();
    for f in old["findings"].as_array_mut().unwrap() {
        f.as_object_mut().unwrap().remove("kind");
    }
    assert!(
        validator.is_valid(&old),
        "the schema refuses a report without kinds"
    );
    let report = Report::from_json(&old.to_string()).expect("the code reads it");
    assert!(report
        .findings
        .iter()
        .all(|f| f.kind == FindingKind::Analysis));
    // And the schema refuses what the format forbids.
    for (pointer, bad) in [
        ("/id", serde_json::json!("../../etc/passwd")),
        ("/failure/time", serde_json::json!("yesterday")),
        ("/vcpus/0/rip", serde_json::json!("0XFFFF")),
        ("/findings/1/kind", serde_json::json!("rumour")),
    ] {
        let mut doc = golden.clone();
        *doc.pointer_mut(pointer).unwrap() = bad;
        assert!(
            !validator.is_valid(&doc),
            "the schema accepts a bad {pointer}"
        );
        assert!(Report::from_json(&doc.to_string()).is_err(), "{pointer}");
    }
}
