//! A diagnosis always ends in a report of what could be done: past its deadline, and on a
//! dump cut short. Synthetic guests (RAM with real page tables and a registration
//! descriptor), no KVM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_abi::descriptor::{Descriptor, Root, RootKind};
use ambulance_diagnose::{diagnose, Options, Subject};
use ambulance_elfcore::{
    write_core_to, CoreInput, ElfNote, RamRange, NT_AMBULANCE_DESCRIPTOR,
    NT_AMBULANCE_DESCRIPTOR_GPA,
};
use ambulance_introspect::memory::{ElfCore, PhysicalMemory};
use ambulance_introspect::synthetic::SyntheticGuest;
use ambulance_report::{FailureInfo, FindingKind, GuestInfo, Hex, Report, ReportId, Severity};

const KDATA: u64 = 0xffff_ffff_8100_0000;
/// A page of guest RAM far above everything else, with something in it.
const HIGH_PA: u64 = 0xc0_0000;

/// A guest with a four-element list whose element 2 has a wrong prev pointer, its
/// descriptor in RAM; the RAM and the subject.
fn guest() -> (Vec<u8>, Subject, u64) {
    let mut g = SyntheticGuest::new(16 << 20);
    g.map(KDATA, 0x10000);
    let head = KDATA;
    let node = |i: u64| KDATA + 0x100 + i * 0x40;
    let mut prev = head;
    for i in 0..4 {
        g.write_u64(prev, node(i));
        g.write_u64(node(i) + 8, prev);
        prev = node(i);
    }
    g.write_u64(prev, head);
    g.write_u64(head + 8, prev);
    g.write_u64(node(2) + 8, head);
    let lock = KDATA + 0x80;
    let heartbeat = g.phys(KDATA + 0x90);
    g.write_phys(HIGH_PA, &[0xa5; 4096]);
    let d = Descriptor {
        flags: 0,
        build_id: vec![1; 20],
        load_offset: 0,
        page_table_root: g.page_table_root(),
        heartbeat_gpa: heartbeat,
        vmcoreinfo: Some("OSRELEASE=synthetic\nSIZE(Node)=64\nOFFSET(Node.link)=0\n".into()),
        roots: vec![Root {
            name: "queue".into(),
            type_name: "Node".into(),
            kind: RootKind::List,
            flags: 0,
            address: head,
            element_size: 64,
            link_offset: 0,
            max_count: 16,
            aux: 0,
            lock,
            hints: vec![],
        }],
    };
    let bytes = d.encode().unwrap();
    let gpa = g.alloc_phys(bytes.len() as u64, 4096);
    g.write_phys(gpa, &bytes);
    let subject = Subject {
        report_id: ReportId::mint("synthetic", ambulance_report::now()),
        guest: GuestInfo {
            name: "synthetic".into(),
            id: 0,
            generation: 0,
            memory_bytes: 16 << 20,
            vcpus: 1,
        },
        failure: FailureInfo {
            cause: "operator".into(),
            detail: "a test".into(),
            time: ambulance_report::now(),
            vcpu: None,
            data: Default::default(),
        },
        vcpus: vec![],
        descriptor_gpa: Some(gpa),
        descriptor_bytes: Some(bytes),
        vmcoreinfo: None,
        vmcoreinfo_origin: None,
        vmcoreinfo_note: None,
        core_problems: Vec::new(),
    };
    (g.ram().to_vec(), subject, node(2))
}

fn run(memory: Arc<dyn PhysicalMemory>, subject: &Subject, options: &Options) -> Report {
    diagnose(memory, subject, options, Vec::new()).expect("a report")
}

fn ram(bytes: Vec<u8>) -> Arc<dyn PhysicalMemory> {
    Arc::new(ambulance_introspect::memory::RawImage::from_bytes(bytes, 0))
}

#[test]
fn in_time_the_corruption_is_found() {
    let (bytes, subject, bad) = guest();
    let r = run(ram(bytes), &subject, &Options::default());
    assert!(r
        .findings
        .iter()
        .any(|f| f.validator == "list-integrity" && f.address.virt == Some(Hex(bad))));
    assert!(
        r.findings.iter().all(|f| f.kind != FindingKind::Diagnosis),
        "{:#?}",
        r.findings
    );
    assert_eq!(r.structures[0].end.kind, "complete");
}

/// Past its deadline a diagnosis still returns a report: what it could not do is said.
#[test]
fn past_the_deadline_the_report_is_partial_and_says_so() {
    let (bytes, subject, _) = guest();
    let options = Options::default().with_deadline(Instant::now());
    assert!(options.deadline().is_some());
    let r = run(ram(bytes), &subject, &options);
    let partial: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.structure.root == "deadline")
        .collect();
    assert_eq!(partial.len(), 1, "{:#?}", r.findings);
    let p = partial[0];
    assert_eq!(
        (p.kind, p.severity),
        (FindingKind::Diagnosis, Severity::Warning)
    );
    assert_eq!(
        p.message,
        "the diagnosis deadline passed: this report is partial; not done: the validators \
         (not started), reading the log (not started)"
    );
    assert!(r.findings.iter().all(|f| f.kind == FindingKind::Diagnosis));
    assert!(r.structures.is_empty());
    // It renders and serializes like any report.
    assert!(ambulance_report::text::render(&r).contains("[diagnosis]"));
    assert_eq!(Report::from_json(&r.to_json()).unwrap(), r);
}

/// A deadline that passes while validators run: they stop where they are.
#[test]
fn a_deadline_during_validation_cuts_it_short() {
    let (bytes, subject, _) = guest();
    let mut options = Options::default().with_deadline(Instant::now() + Duration::from_secs(3600));
    // The validation budget stands in for a deadline that arrives mid-way.
    options.config.total_budget_ms = 0;
    let r = run(ram(bytes), &subject, &options);
    assert!(r.findings.iter().any(|f| f
        .message
        .contains("skipped: the validation budget of 0 ms ran out")));
    assert!(r.findings.iter().all(|f| f.structure.root != "deadline"));
}

/// A core cut short (a disk that filled while dumping) gives a report on what is there,
/// naming the guest-physical range that is missing.
#[test]
fn a_truncated_core_is_diagnosed_with_what_is_missing() {
    let (bytes, subject, bad) = guest();
    let input = CoreInput {
        ram: vec![RamRange {
            gpa: 0,
            bytes: &bytes,
        }],
        prstatus: vec![],
        vmcoreinfo: None,
        notes: vec![
            ElfNote::ambulance(
                NT_AMBULANCE_DESCRIPTOR,
                subject.descriptor_bytes.clone().unwrap(),
            ),
            ElfNote::ambulance(
                NT_AMBULANCE_DESCRIPTOR_GPA,
                subject.descriptor_gpa.unwrap().to_le_bytes().to_vec(),
            ),
        ],
        direct_map_base: None,
        windows: vec![],
        zero: Vec::new(),
    };
    let mut core = Vec::new();
    write_core_to(&mut core, &input).unwrap();
    let whole = ElfCore::parse(&core).unwrap();
    let cut = whole.file_offset(HIGH_PA).unwrap() as usize + 0x100;
    let core = Arc::new(ElfCore::parse(&core[..cut]).unwrap());
    let subject = Subject {
        report_id: subject.report_id.clone(),
        ..Subject::from_core(&core)
    };
    let r = run(core, &subject, &Options::default());
    assert!(
        r.findings
            .iter()
            .any(|f| f.validator == "list-integrity" && f.address.virt == Some(Hex(bad))),
        "what is there is still diagnosed: {:#?}",
        r.findings
    );
    let missing: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.structure.root == "memory" && f.kind == FindingKind::Diagnosis)
        .collect();
    assert!(!missing.is_empty(), "{:#?}", r.findings);
    // The high page's file bytes past the cut; the zero pages around it were never in
    // the file (the writer is sparse), so they are not missing.
    assert!(
        missing[0].message.contains(&format!(
            "3840 bytes of guest-physical memory are missing ({:#x}..{:#x})",
            HIGH_PA + 0x100,
            HIGH_PA + 0x1000
        )),
        "{}",
        missing[0].message
    );
}
