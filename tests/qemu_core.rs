//! A real Linux guest's ELF core, as QEMU's `dump-guest-memory` writes it: the core reader
//! finds the per-CPU NT_PRSTATUS notes and the VMCOREINFO note, and with nothing but
//! VMCOREINFO (no debug info) translation through `swapper_pg_dir` — KASLR and
//! `phys_base` applied — reads the kernel's own release string out of `init_uts_ns`.
//!
//! The guest is Debian's cloud kernel with a busybox initramfs (fixtures/linux/build.sh,
//! cached outside the repository), booted under QEMU with TCG, which panics it with
//! sysrq; QEMU reports GUEST_PANICKED through pvpanic and dumps it over QMP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_introspect::memory::{ElfCore, PhysicalMemory};
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use serde_json::{json, Value};

/// Builds (or finds in the cache) the Linux fixture; its directory.
fn fixture() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/linux/build.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "fixtures/linux/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path, deadline: Instant) -> Qmp {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot connect to QMP at {}: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        q.line(); // greeting
        q.execute("qmp_capabilities", json!({}));
        q
    }

    fn line(&mut self) -> Value {
        let mut s = String::new();
        self.reader.read_line(&mut s).expect("QMP answers");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad QMP line {s:?}: {e}"))
    }

    fn execute(&mut self, cmd: &str, args: Value) -> Value {
        writeln!(
            self.writer,
            "{}",
            json!({"execute": cmd, "arguments": args})
        )
        .unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_none() {
                assert!(v.get("error").is_none(), "QMP {cmd}: {v}");
                return v;
            }
        }
    }

    fn wait_event(&mut self, name: &str, deadline: Instant) -> Value {
        loop {
            assert!(Instant::now() < deadline, "no {name} event in time");
            let v = self.line();
            if v["event"] == name {
                return v;
            }
        }
    }
}

#[test]
fn qemu_dump_of_a_panicked_linux_guest_reads_back() {
    let dir = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let qmp_path = tmp.path().join("qmp.sock");
    let core_path = tmp.path().join("vmcore");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-action",
            "panic=pause",
            "-monitor",
            "none",
            "-display",
            "none",
        ])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=ram,size=256M,mem-path={},share=on",
            tmp.path().join("ram").display()
        ))
        .args(["-machine", "q35,memory-backend=ram"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initramfs.cpio.gz"))
        .args(["-append", "console=ttyS0 quiet ambulance.panic_after=1"])
        .args(["-device", "pvpanic", "-device", "vmcoreinfo"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .arg("-serial")
        .arg(format!("file:{}", tmp.path().join("console.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut qmp = Qmp::connect(&qmp_path, deadline);
    qmp.wait_event("GUEST_PANICKED", deadline);
    qmp.execute(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", core_path.display())}),
    );
    let _ = qmp.execute("quit", json!({}));
    let _ = qemu.wait();
    let console = std::fs::read_to_string(tmp.path().join("console.log")).unwrap_or_default();
    assert!(
        console.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{console}"
    );

    let core = ElfCore::open(&core_path).expect("QEMU's core parses");
    assert_eq!(core.prstatus().len(), 2, "one NT_PRSTATUS per vCPU");
    assert!(core.ranges().iter().map(|r| r.size).sum::<u64>() >= 255 << 20);
    let text = core
        .vmcoreinfo()
        .expect("the VMCOREINFO note (qemu_fw_cfg + -device vmcoreinfo)");
    let info = Vmcoreinfo::parse(text).unwrap();
    let release = info.osrelease().expect("OSRELEASE").to_string();
    let version = std::fs::read_to_string(dir.join("VERSION")).unwrap();
    assert!(version.contains(&release), "{release} vs {version}");

    // Translation with VMCOREINFO alone: swapper_pg_dir's physical address is its
    // kernel-image address minus __START_KERNEL_map plus phys_base.
    let pgd = info
        .symbol("swapper_pg_dir")
        .expect("SYMBOL(swapper_pg_dir)");
    let phys_base = info.number("phys_base").expect("NUMBER(phys_base)");
    let root = (pgd - 0xffff_ffff_8000_0000).wrapping_add(phys_base as u64);
    let paging = if info.number("pgtable_l5_enabled") == Some(1) {
        Paging::Five
    } else {
        Paging::Four
    };
    let program = Program::new(Arc::new(core), root, paging);
    let uts = info.symbol("init_uts_ns").expect("SYMBOL(init_uts_ns)")
        + info
            .offset("uts_namespace", "name")
            .expect("OFFSET(uts_namespace.name)");
    // struct new_utsname { char sysname[65], nodename[65], release[65], ... }
    let mut buf = [0u8; 65];
    program.read_virt(uts, &mut buf).unwrap();
    assert!(
        buf.starts_with(b"Linux\0"),
        "sysname: {:?}",
        String::from_utf8_lossy(&buf)
    );
    program.read_virt(uts + 130, &mut buf).unwrap();
    let n = buf.iter().position(|&b| b == 0).unwrap();
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), release);

    // Our diagnose command reads the same file: with no registration, it finds the page
    // tables through VMCOREINFO and reports the failure as an offline diagnosis.
    let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .args(["diagnose", "--core"])
        .arg(&core_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failure"]["cause"], "offline");
    assert_eq!(report["vcpus"].as_array().unwrap().len(), 2);
    assert!(report["registration"].is_null());
    let _ = program.memory().describe();
}
