//! Makes the fuzz targets' seed inputs (`fuzz/seeds/<target>/`) from real inputs: the
//! test kernel (its descriptor and core, from `ambulance run`; its ELF and DWARF), the
//! repository's fixtures, and slices of a real Debian guest's dump (its VMCOREINFO note,
//! kallsyms tables, printk ring, BTF, page tables).
//!
//! Not part of the test suite: each test is `#[ignore]`d, and run by hand when a seed
//! should change (then the seeds are committed):
//!
//! ```sh
//! cargo test --test fuzz_seeds -- --ignored --nocapture
//! ```
//!
//! The Debian part boots the Linux fixture under QEMU (a minute or two with TCG); its
//! dump is kept in `~/.cache/ambulance/fuzz-seeds/vmcore` for the next run.

mod linux_guest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ambulance_abi::descriptor::{root_flags, Descriptor, Hint, Root, RootKind, FLAG_LA57};
use ambulance_elfcore::{write_core_to, CoreInput, ElfNote, RamRange};
use ambulance_fuzz_targets::image::GuestImage;
use ambulance_introspect::memory::{ElfCore, PhysicalMemory};
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::{PageTableBuilder, Paging};
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes one seed, and replays it through its target at once.
fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = repo().join("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    println!("fuzz/seeds/{target}/{name}: {} bytes", bytes.len());
    ambulance_fuzz_targets::target(target).unwrap()(bytes);
}

fn copy(target: &str, name: &str, from: &Path) {
    put(
        target,
        name,
        &std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())),
    );
}

// ---------------------------------------------------------------------------------------
// From the repository and the test kernel.

fn descriptors() -> Vec<(&'static str, Descriptor)> {
    let root = |name: &str, kind: RootKind, flags: u16, hints: Vec<Hint>| Root {
        name: name.to_string(),
        type_name: "Task".to_string(),
        kind,
        flags,
        address: 0xffff_ffff_8020_1000,
        element_size: 256,
        link_offset: 16,
        max_count: if kind == RootKind::Object { 1 } else { 64 },
        aux: if kind == RootKind::Ring {
            0xffff_ffff_8020_3000
        } else {
            0
        },
        lock: 0xffff_ffff_8020_2000,
        hints,
    };
    let every_hint = vec![
        Hint::Magic {
            offset: 0,
            size: 8,
            value: 0x7461_736b,
        },
        Hint::Checksum {
            start: 0xffff_ffff_8020_0000,
            len: 4096,
            crc32c: 0xdead_beef,
        },
        Hint::PointerRange {
            offset: 8,
            lo: 0xffff_8880_0000_0000,
            hi: 0xffff_8881_0000_0000,
            nullable: true,
        },
    ];
    vec![
        (
            "every-kind",
            Descriptor {
                flags: 0,
                build_id: vec![0xab; 20],
                load_offset: 0x1200_0000,
                page_table_root: 0x10_0000,
                heartbeat_gpa: 0x20_0008,
                vmcoreinfo: Some("OSRELEASE=test\nPAGESIZE=4096\nSYMBOL(init_task)=ffffffff82000000\nSIZE(Task)=256\nOFFSET(Task.link)=16\n".to_string()),
                roots: vec![
                    root("run_queue", RootKind::List, 0, every_hint.clone()),
                    root("singly", RootKind::List, root_flags::SINGLY_LINKED, vec![]),
                    root("table", RootKind::Array, 0, every_hint[..1].to_vec()),
                    root("slots", RootKind::Array, root_flags::POINTER_ELEMENTS, vec![]),
                    root("kernel_text", RootKind::Object, 0, every_hint[1..2].to_vec()),
                    root("log", RootKind::Ring, 0, vec![]),
                    root("tree", RootKind::Tree, 0, every_hint[2..].to_vec()),
                ],
            },
        ),
        (
            "la57-empty",
            Descriptor {
                flags: FLAG_LA57,
                build_id: vec![],
                load_offset: -0x1000,
                page_table_root: 0x7f_f000,
                heartbeat_gpa: 0x1000,
                vmcoreinfo: None,
                roots: vec![],
            },
        ),
    ]
}

/// The core `ambulance run` writes for a panicked test-kernel guest: a real core, and
/// the test kernel's own registration descriptor in its note.
fn test_kernel_core(dir: &Path) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .args(["run", "--kernel", "test", "--memory", "16M", "--vcpus", "1"])
        .args(["--fault", "list-corruption", "--fault-after-ms", "300"])
        .args(["--duration", "20", "--json", "--core", "--report-dir"])
        .arg(dir)
        .output()
        .expect("ambulance runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "core"))
        .expect("a core");
    std::fs::read(core).unwrap()
}

#[test]
#[ignore = "makes fuzz seeds; run by hand"]
fn seeds_from_the_repository_and_the_test_kernel() {
    // descriptor: synthetic ones of every kind, and the test kernel's own.
    for (name, d) in descriptors() {
        put("descriptor", name, &d.encode().unwrap());
    }
    let tmp = tempfile::tempdir().unwrap();
    let core = test_kernel_core(tmp.path());
    let layout = ambulance_elfcore::CoreLayout::parse(&core).unwrap();
    let desc = layout
        .note(
            &core,
            ambulance_elfcore::NOTE_NAME,
            ambulance_elfcore::NT_AMBULANCE_DESCRIPTOR,
        )
        .expect("the core holds the test kernel's descriptor");
    put("descriptor", "test-kernel", desc);
    let d = ambulance_abi::descriptor::parse(desc).unwrap();
    if let Some(v) = &d.vmcoreinfo {
        put("vmcoreinfo", "test-kernel", v.as_bytes());
    }
    // elf_core: the test kernel's core, when it is small (zero pages are left out).
    if core.len() <= 1 << 20 {
        put("elf_core", "test-kernel.core", &core);
    } else {
        println!("the test kernel's core is {} bytes: not a seed", core.len());
    }
    // A small core of ours: two CPUs, VMCOREINFO, a descriptor note, two RAM ranges.
    let page: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let mut small = Vec::new();
    write_core_to(
        &mut small,
        &CoreInput {
            ram: vec![
                RamRange {
                    gpa: 0,
                    bytes: &page,
                },
                RamRange {
                    gpa: 0x10_0000,
                    bytes: &page,
                },
            ],
            prstatus: vec![Default::default(), Default::default()],
            vmcoreinfo: Some("OSRELEASE=test\nPAGESIZE=4096\n".into()),
            notes: vec![ElfNote {
                name: ambulance_elfcore::NOTE_NAME.to_string(),
                n_type: ambulance_elfcore::NT_AMBULANCE_DESCRIPTOR,
                desc: descriptors()[0].1.encode().unwrap(),
            }],
            direct_map_base: Some(0xffff_8880_0000_0000),
            windows: vec![],
            zero: Vec::new(),
        },
    )
    .unwrap();
    put("elf_core", "small.core", &small);

    // page_walk: 4-level tables with 4 KiB, 2 MiB and 1 GiB pages and a circular list.
    for (name, paging) in [("four-level", Paging::Four), ("five-level", Paging::Five)] {
        let mut b = PageTableBuilder::new(vec![0u8; 64 << 10], 0x4000, 0xc000, paging).unwrap();
        let text = 0xffff_ffff_8000_0000u64;
        b.map(text, 0x1000, 4096, true, true).unwrap();
        b.map(text + 0x1000, 0x2000, 4096, false, false).unwrap();
        b.map(0xffff_c900_0020_0000, 0x20_0000, 2 << 20, true, true)
            .unwrap();
        b.map(0xffff_8880_0000_0000, 0, 1 << 30, true, true)
            .unwrap();
        // A three-node doubly linked list in the first mapped page.
        let ram = b.ram_mut();
        for (i, (next, prev)) in [(0x40u64, 0x80u64), (0x80, 0), (0, 0x40)]
            .iter()
            .enumerate()
        {
            let at = 0x1000 + i * 0x40;
            ram[at..at + 8].copy_from_slice(&(text + next).to_le_bytes());
            ram[at + 8..at + 16].copy_from_slice(&(text + prev).to_le_bytes());
        }
        // The first words double as addresses to translate.
        for (i, va) in [
            text,
            text + 0x1008,
            0xffff_c900_0020_1234,
            0xffff_8880_0000_2000,
        ]
        .iter()
        .enumerate()
        {
            ram[i * 8..i * 8 + 8].copy_from_slice(&va.to_le_bytes());
        }
        let mut input = b.root().to_le_bytes().to_vec();
        input.push(if paging == Paging::Five { 1 } else { 0 });
        input.extend_from_slice(&text.to_le_bytes());
        input.extend_from_slice(&b.into_ram());
        put("page_walk", name, &input);
    }

    // dwarf: the C fixtures (DWARF 2, 4, 5, zlib-compressed) and the test kernel.
    let testdata = repo().join("crates/introspect/testdata");
    for f in [
        "c-dwarf2.elf",
        "c-dwarf4.elf",
        "c-dwarf5.elf",
        "c-dwarf4-zlib.elf",
        "c-dwarf4-zlib-gnu.elf",
    ] {
        copy("dwarf", f, &testdata.join(f));
    }
    put("dwarf", "test-kernel.elf", ambulance_test_kernel::ELF);

    // qmp_registers: QEMU's own text, and one vCPU without a header.
    let regs = repo().join("fixtures/qemu/info-registers-a-2vcpu.txt");
    copy("qmp_registers", "info-registers-a-2vcpu.txt", &regs);
    let text = std::fs::read_to_string(&regs).unwrap();
    let one: String = text
        .lines()
        .skip_while(|l| !l.starts_with("CPU#0"))
        .skip(1)
        .take_while(|l| !l.starts_with("CPU#"))
        .map(|l| format!("{l}\n"))
        .collect();
    put("qmp_registers", "one-vcpu.txt", one.as_bytes());

    // rules: the README's example and the rule-file documentation's every check.
    put(
        "rules",
        "readme.toml",
        b"[[rule]]\nname = \"pid-range\"\nroot = \"tasks\"\nfield = \"pid\"\ncheck = \"range\"\nmin = 1\nmax = 64\nseverity = \"error\"\n",
    );
    put(
        "rules",
        "every-check.toml",
        br#"# every check
[[rule]]
name = "magic"
root = "tasks"
offset = 0
size = 8
check = "equals"
value = "0x6b736174756d6261"
severity = "critical"
message = "magic smashed"

[[rule]]
name = "state"
root = "tasks"
field = "state"
size = 4
check = "in"
values = [0, 1, 2]
severity = "warning"

[[rule]]
name = "next"
root = "tasks"
field = "next"
check = "points_into"
into_root = "tasks"
allow_null = true

[[rule]]
name = "stack"
root = "tasks"
field = "stack"
check = "points_into"
lo = "0xffff888000000000"
hi = "0xffff888100000000"

[[rule]]
name = "name"
root = "tasks"
field = "name"
check = "non_null"
severity = "info"
"#,
    );

    // report_json: the golden report.
    let golden = repo().join("crates/report/tests/golden/report-v1.json");
    copy("report_json", "report-v1.json", &golden);

    // worker_protocol: a request for the golden report's guest, and replies.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    let desc = descriptors()[0].1.encode().unwrap();
    let request = serde_json::json!({
        "subject": {
            "report_id": report["id"],
            "guest": report["guest"],
            "failure": report["failure"],
            "vcpus": report["vcpus"],
            "descriptor_gpa": 0x10_0000,
            "descriptor_bytes": desc,
            "vmcoreinfo": "OSRELEASE=6.1.0-test\nPAGESIZE=4096\n",
            "vmcoreinfo_origin": "registration",
            "vmcoreinfo_note": {"pa": 0x2000, "size": 4096},
        },
        "regions": [
            {"gpa": 0, "size": 0x8000, "file_offset": 0},
            {"gpa": 0x10_0000, "size": 0x8000, "file_offset": 0x8000},
        ],
        "debuginfo": "/nonexistent/vmlinux",
        "rules": null,
        "core_path": null,
        "timeline": report["timeline"],
    });
    put(
        "worker_protocol",
        "request.json",
        serde_json::to_string(&request).unwrap().as_bytes(),
    );
    put(
        "worker_protocol",
        "reply-report.json",
        serde_json::to_string(&serde_json::json!({ "report": report }))
            .unwrap()
            .as_bytes(),
    );
    put(
        "worker_protocol",
        "reply-error.json",
        br#"{"error":"cannot map guest RAM: too small"}"#,
    );
}

// ---------------------------------------------------------------------------------------
// From a Debian guest's dump.

/// The Debian guest's dump: from the cache, or made (boot, sysrq panic, dump-guest-memory).
fn debian_dump() -> PathBuf {
    let cache = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/ambulance/fuzz-seeds");
    let path = cache.join("vmcore");
    if !path.exists() {
        std::fs::create_dir_all(&cache).unwrap();
        let dump = linux_guest::panicked_dump(&linux_guest::fixture(false), 256);
        std::fs::copy(&dump.core, &path).unwrap();
    }
    path
}

fn read_virt(p: &Program, va: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    p.read_virt(va, &mut buf)
        .unwrap_or_else(|e| panic!("{len} bytes at {va:#x}: {e}"));
    buf
}

/// The kallsyms tables, cut after the first `_stext` + 200 symbols (the tables of a whole
/// kernel are megabytes): `(address, bytes)` regions, `kallsyms_num_syms` rewritten.
fn kallsyms_regions(p: &Program, v: &Vmcoreinfo) -> Vec<(u64, Vec<u8>)> {
    let sym = |n: &str| v.symbol(n).unwrap_or_else(|| panic!("no SYMBOL({n})"));
    let index = read_virt(p, sym("kallsyms_token_index"), 512);
    let offsets: Vec<u64> = index
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u64)
        .collect();
    let table_va = sym("kallsyms_token_table");
    let last = *offsets.iter().max().unwrap();
    let mut table = read_virt(p, table_va, last + 64);
    let end = last as usize + table[last as usize..].iter().position(|&b| b == 0).unwrap() + 1;
    table.truncate(end);
    let token = |b: u8| {
        let at = offsets[b as usize] as usize;
        let len = table[at..].iter().position(|&c| c == 0).unwrap();
        table[at..at + len].to_vec()
    };
    let num = p.read_u32(sym("kallsyms_num_syms")).unwrap() as u64;
    let names_va = sym("kallsyms_names");
    let names = read_virt(p, names_va, (num * 40).min(4 << 20));
    let (mut at, mut stext) = (0usize, None);
    let mut count = 0u64;
    while count < num {
        let (len, head) = if names[at] & 0x80 != 0 {
            (
                ((names[at] & 0x7f) as usize) | ((names[at + 1] as usize) << 7),
                2,
            )
        } else {
            (names[at] as usize, 1)
        };
        let text: Vec<u8> = names[at + head..at + head + len]
            .iter()
            .flat_map(|&b| token(b))
            .collect();
        at += head + len;
        count += 1;
        if stext.is_none() && text.len() > 1 && &text[1..] == b"_stext" {
            stext = Some(count);
        }
        if stext.is_some_and(|s| count >= s + 200) {
            break;
        }
    }
    let n = count;
    println!("kallsyms: {num} symbols, _stext is #{stext:?}; keeping {n}");
    let mut regions = vec![
        (sym("kallsyms_num_syms"), (n as u32).to_le_bytes().to_vec()),
        (names_va, names[..at].to_vec()),
        (table_va, table),
        (sym("kallsyms_token_index"), index),
    ];
    if let Some(offsets) = v.symbol("kallsyms_offsets") {
        regions.push((offsets, read_virt(p, offsets, n * 4)));
        let base = sym("kallsyms_relative_base");
        regions.push((base, read_virt(p, base, 8)));
    } else {
        let addresses = sym("kallsyms_addresses");
        regions.push((addresses, read_virt(p, addresses, n * 8)));
    }
    regions
}

/// The printk ring: the `prb` pointer, the ring, its descriptors, infos and data.
fn printk_regions(p: &Program, v: &Vmcoreinfo) -> Vec<(u64, Vec<u8>)> {
    let off = |t: &str, m: &str| v.offset(t, m).unwrap_or_else(|| panic!("OFFSET({t}.{m})"));
    let size = |t: &str| v.size(t).unwrap_or_else(|| panic!("SIZE({t})"));
    let prb_sym = v.symbol("prb").unwrap();
    let rb = p.read_u64(prb_sym).unwrap();
    let desc_ring = rb + off("printk_ringbuffer", "desc_ring");
    let data_ring = rb + off("printk_ringbuffer", "text_data_ring");
    let count_bits = p
        .read_u32(desc_ring + off("prb_desc_ring", "count_bits"))
        .unwrap();
    let descs = p
        .read_u64(desc_ring + off("prb_desc_ring", "descs"))
        .unwrap();
    let infos = p
        .read_u64(desc_ring + off("prb_desc_ring", "infos"))
        .unwrap();
    let size_bits = p
        .read_u32(data_ring + off("prb_data_ring", "size_bits"))
        .unwrap();
    let data = p
        .read_u64(data_ring + off("prb_data_ring", "data"))
        .unwrap();
    let count = 1u64 << count_bits;
    println!(
        "printk: {count} descriptors, {} bytes of text",
        1u64 << size_bits
    );
    vec![
        (prb_sym, read_virt(p, prb_sym, 8)),
        (rb, read_virt(p, rb, size("printk_ringbuffer"))),
        (descs, read_virt(p, descs, count * size("prb_desc"))),
        (infos, read_virt(p, infos, count * size("printk_info"))),
        (data, read_virt(p, data, 1 << size_bits)),
    ]
}

/// BTF's record kinds' extra bytes after the 12-byte header (`None`: unknown kind).
fn btf_extra(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 | 14 | 17 => 4,
        3 => 12,
        4 | 5 | 15 | 19 => 12 * vlen,
        6 | 13 => 8 * vlen,
        2 | 7..=12 | 16 | 18 => 0,
        _ => return None,
    })
}

/// The first `keep` types of a BTF blob, with a string section of just their names.
fn btf_subset(blob: &[u8], keep: usize) -> Vec<u8> {
    let w = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let hdr_len = w(blob, 4) as usize;
    let (type_off, type_len) = (w(blob, 8) as usize, w(blob, 12) as usize);
    let str_off = w(blob, 16) as usize;
    let types = &blob[hdr_len + type_off..hdr_len + type_off + type_len];
    let strings = &blob[hdr_len + str_off..];
    let mut new_strings = vec![0u8];
    let mut interned: BTreeMap<u32, u32> = BTreeMap::new();
    let mut name = |off: u32| -> u32 {
        if off == 0 {
            return 0;
        }
        *interned.entry(off).or_insert_with(|| {
            let s = &strings[off as usize..];
            let s = &s[..s.iter().position(|&b| b == 0).unwrap()];
            let at = new_strings.len() as u32;
            new_strings.extend_from_slice(s);
            new_strings.push(0);
            at
        })
    };
    let mut out_types = Vec::new();
    let mut at = 0;
    for _ in 0..keep {
        if at >= types.len() {
            break;
        }
        let info = w(types, at + 4);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let extra = btf_extra(kind, vlen).expect("a known BTF kind");
        let mut rec = types[at..at + 12 + extra].to_vec();
        let n = name(w(&rec, 0));
        rec[0..4].copy_from_slice(&n.to_le_bytes());
        // Members, enumerators and parameters start with a name.
        let step = match kind {
            4 | 5 | 19 => 12,
            6 | 13 => 8,
            _ => 0,
        };
        if step > 0 {
            for i in 0..vlen {
                let o = 12 + i * step;
                let n = name(w(&rec, o));
                rec[o..o + 4].copy_from_slice(&n.to_le_bytes());
            }
        }
        out_types.extend_from_slice(&rec);
        at += 12 + extra;
    }
    let mut out = blob[..hdr_len].to_vec();
    out[8..12].copy_from_slice(&0u32.to_le_bytes());
    out[12..16].copy_from_slice(&(out_types.len() as u32).to_le_bytes());
    out[16..20].copy_from_slice(&(out_types.len() as u32).to_le_bytes());
    out[20..24].copy_from_slice(&(new_strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&out_types);
    out.extend_from_slice(&new_strings);
    out
}

/// Page tables relocated into a small RAM: the tables (and 4 KiB leaf pages) met
/// translating `vas` from `cr3`, copied to consecutive pages after a first page that lists
/// `vas`, with the entries between them rewritten. Returns the page-walk target's input.
fn page_walk_input(
    mem: &dyn PhysicalMemory,
    cr3: u64,
    paging: Paging,
    vas: &[u64],
    head: u64,
) -> Vec<u8> {
    const MASK: u64 = 0x000f_ffff_ffff_f000;
    let mut pages: Vec<(u64, Vec<u8>)> = Vec::new(); // (old pa, bytes)
    let index_of = |pa: u64, pages: &mut Vec<(u64, Vec<u8>)>| -> usize {
        if let Some(i) = pages.iter().position(|p| p.0 == pa) {
            return i;
        }
        let mut buf = vec![0u8; 4096];
        mem.read(pa, &mut buf).unwrap();
        pages.push((pa, buf));
        pages.len() - 1
    };
    // (page index, entry offset, target page index)
    let mut links: Vec<(usize, usize, usize)> = Vec::new();
    for &va in vas {
        let mut table = index_of(cr3 & MASK, &mut pages);
        for level in (1..=paging.levels() as u32).rev() {
            let slot = ((va >> (12 + 9 * (level - 1))) & 511) as usize * 8;
            let e = u64::from_le_bytes(pages[table].1[slot..slot + 8].try_into().unwrap());
            if e & 1 == 0 || (level > 1 && level < 4 && e & 0x80 != 0) {
                break;
            }
            let next = index_of(e & MASK, &mut pages);
            links.push((table, slot, next));
            table = next;
        }
    }
    let new_pa = |i: usize| 0x1000 * (i as u64 + 1);
    for &(page, slot, target) in &links {
        let e = u64::from_le_bytes(pages[page].1[slot..slot + 8].try_into().unwrap());
        let e = (e & !MASK) | new_pa(target);
        pages[page].1[slot..slot + 8].copy_from_slice(&e.to_le_bytes());
    }
    let mut ram = vec![0u8; 4096];
    for (i, va) in vas.iter().enumerate().take(512) {
        ram[i * 8..i * 8 + 8].copy_from_slice(&va.to_le_bytes());
    }
    for (_, bytes) in &pages {
        ram.extend_from_slice(bytes);
    }
    println!(
        "page tables: {} pages for {} addresses",
        pages.len(),
        vas.len()
    );
    let mut input = new_pa(0).to_le_bytes().to_vec();
    input.push(if paging == Paging::Five { 1 } else { 0 });
    input.extend_from_slice(&head.to_le_bytes());
    input.extend_from_slice(&ram);
    input
}

#[test]
#[ignore = "makes fuzz seeds from a Debian guest's dump (boots it under QEMU); run by hand"]
fn seeds_from_a_debian_dump() {
    let path = debian_dump();
    let core = ElfCore::open(&path).unwrap();
    let text = core.vmcoreinfo().expect("a VMCOREINFO note").to_string();
    put("vmcoreinfo", "debian-6.1", text.as_bytes());
    let v = Vmcoreinfo::parse(&text).unwrap();
    let prstatus = core.prstatus().to_vec();
    let mem: Arc<dyn PhysicalMemory> = Arc::new(core);
    let p = ambulance_linux::vmcoreinfo::program(mem.clone(), &v).unwrap();

    let image = |regions| GuestImage {
        vmcoreinfo: text.clone().into_bytes(),
        regions,
    };
    put(
        "kallsyms",
        "debian-6.1",
        &image(kallsyms_regions(&p, &v)).encode(),
    );
    put(
        "printk",
        "debian-6.1",
        &image(printk_regions(&p, &v)).encode(),
    );
    // The cut tables and the ring must still read, from the synthetic guest alone.
    for target in ["kallsyms", "printk"] {
        let seed = repo().join("fuzz/seeds").join(target).join("debian-6.1");
        let image = GuestImage::decode(&std::fs::read(seed).unwrap()).unwrap();
        let (gp, gv) = (image.program(), Vmcoreinfo::parse(&image.text()).unwrap());
        if target == "kallsyms" {
            let k = ambulance_linux::kallsyms::Kallsyms::read(&gp, &gv, Default::default());
            println!("kallsyms seed: {} symbols", k.unwrap().len());
        } else {
            let log = ambulance_linux::printk::read_log(&gp, &gv, Default::default());
            println!("printk seed: {} records", log.unwrap().records.len());
        }
    }

    let k = ambulance_linux::kallsyms::Kallsyms::read(&p, &v, Default::default()).unwrap();
    let (start, stop) = (k.get("__start_BTF").unwrap(), k.get("__stop_BTF").unwrap());
    let blob = read_virt(&p, start, stop - start);
    println!("BTF: {} bytes", blob.len());
    put(
        "btf",
        "debian-6.1-first-3000-types",
        &btf_subset(&blob, 3000),
    );

    // Page tables: kernel text and data, the direct map, vmalloc (the printk data),
    // the fixmap, and addresses nothing maps.
    let sym = |n: &str| {
        v.symbol(n)
            .or_else(|| k.get(n))
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let init_task = sym("init_task");
    // The list head: init_task's `tasks` (its offset from the kernel's BTF).
    let btf = ambulance_introspect::types::btf::BtfTypes::parse(blob.clone(), "debian").unwrap();
    let program_with_btf =
        Program::new(mem.clone(), p.translator().root(), p.translator().paging())
            .with_types(Arc::new(btf));
    let tasks = init_task + program_with_btf.offset_of("task_struct", "tasks").unwrap();
    let mut vas = vec![
        sym("_stext"),
        init_task,
        tasks,
        sym("prb"),
        sym("swapper_pg_dir"),
    ];
    let regions = printk_regions(&p, &v);
    vas.extend(regions.iter().map(|r| r.0));
    vas.extend([
        0xffff_8880_0000_0000,
        0xffff_8880_0010_0000,
        0xffff_ffff_ff5f_f000,
        0x0000_7fff_ffff_f000,
        0xffff_ea00_0000_0000,
    ]);
    let walk = page_walk_input(
        &*mem,
        p.translator().root(),
        p.translator().paging(),
        &vas,
        tasks,
    );
    put("page_walk", "debian-6.1", &walk);

    // elf_core: the dump's notes with the relocated page tables as RAM.
    let mut small = Vec::new();
    write_core_to(
        &mut small,
        &CoreInput {
            ram: vec![RamRange {
                gpa: 0,
                bytes: &walk[17..],
            }],
            prstatus,
            vmcoreinfo: Some(text.clone()),
            notes: vec![],
            direct_map_base: Some(0xffff_8880_0000_0000),
            windows: vec![],
            zero: Vec::new(),
        },
    )
    .unwrap();
    put("elf_core", "debian-6.1-notes.core", &small);
}
