//! A real Linux guest for the end-to-end tests and benchmarks: Debian's cloud kernel with
//! a busybox initramfs (fixtures/linux/build.sh, cached outside the repository), booted
//! under QEMU with TCG (KVM cannot boot Linux on these hosts) with its RAM in a shared
//! file, pvpanic, the vmcoreinfo device and a QMP socket; and a small QMP client to wait
//! for GUEST_PANICKED and dump the guest.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Builds (or finds in the cache) the Linux fixture; its directory. With `dbg`, the
/// matching `-dbg` vmlinux (DWARF) is fetched too, as `vmlinux` in that directory.
pub fn fixture(dbg: bool) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/linux/build.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    if dbg {
        cmd.arg("--dbg");
    }
    let out = cmd.output().expect("bash runs");
    assert!(
        out.status.success(),
        "fixtures/linux/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("build.sh prints the fixture directory")
            .trim(),
    )
}

/// A QMP connection (synchronous; enough for tests).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (retrying until `deadline` while QEMU starts) and leaves capabilities
    /// negotiation.
    pub fn connect(path: &Path, deadline: Instant) -> Qmp {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
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

    /// Runs a command; its reply (events seen meanwhile are dropped).
    pub fn execute(&mut self, cmd: &str, args: Value) -> Value {
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

    /// Waits for event `name`.
    pub fn wait_event(&mut self, name: &str, deadline: Instant) -> Value {
        loop {
            assert!(Instant::now() < deadline, "no {name} event in time");
            let v = self.line();
            if v["event"] == name {
                return v;
            }
        }
    }
}

/// How to boot the guest.
#[derive(Clone, Debug)]
pub struct Boot {
    /// RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Seconds after init's process listing before it panics the kernel with sysrq
    /// (`None`: it does not).
    pub panic_after: Option<u32>,
    /// Extra kernel command-line words.
    pub cmdline: String,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
}

impl Default for Boot {
    fn default() -> Boot {
        Boot {
            memory_mib: 256,
            cpus: 2,
            panic_after: Some(1),
            cmdline: String::new(),
            qemu_args: Vec::new(),
        }
    }
}

/// A running QEMU guest; killed on drop.
pub struct Guest {
    child: Child,
    /// Where its files are.
    pub dir: tempfile::TempDir,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// The RAM file (`memory-backend-file`, shared).
    pub ram: PathBuf,
    /// The serial console's log.
    pub console: PathBuf,
}

impl Guest {
    /// Boots the fixture in `fixture_dir` as `boot` says.
    pub fn boot(fixture_dir: &Path, boot: &Boot) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let qmp = dir.path().join("qmp.sock");
        let ram = dir.path().join("ram");
        let console = dir.path().join("console.log");
        let mut cmdline = "console=ttyS0".to_string();
        if let Some(s) = boot.panic_after {
            cmdline += &format!(" ambulance.panic_after={s}");
        }
        if !boot.cmdline.is_empty() {
            cmdline += " ";
            cmdline += &boot.cmdline;
        }
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-nographic", "-no-reboot"])
            .args(["-m", &format!("{}M", boot.memory_mib)])
            .args(["-smp", &boot.cpus.to_string()])
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
                "memory-backend-file,id=ram,size={}M,mem-path={},share=on",
                boot.memory_mib,
                ram.display()
            ))
            .args(["-machine", "q35,memory-backend=ram"])
            .arg("-kernel")
            .arg(fixture_dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(fixture_dir.join("initramfs.cpio.gz"))
            .args(["-append", &cmdline])
            .args(["-device", "pvpanic", "-device", "vmcoreinfo"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(&boot.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        Guest {
            child,
            dir,
            qmp,
            ram,
            console,
        }
    }

    /// The console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Stops QEMU.
    pub fn quit(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A panicked guest's QEMU `dump-guest-memory` ELF core and its console.
pub struct Dump {
    /// Keeps the files.
    pub dir: tempfile::TempDir,
    /// The core.
    pub core: PathBuf,
    /// The serial console up to the panic.
    pub console: String,
}

/// Boots the fixture, waits for its sysrq panic (GUEST_PANICKED through pvpanic),
/// dumps it with `dump-guest-memory` and stops QEMU.
pub fn panicked_dump(fixture_dir: &Path, memory_mib: u64) -> Dump {
    let guest = Guest::boot(
        fixture_dir,
        &Boot {
            memory_mib,
            ..Boot::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut qmp = Qmp::connect(&guest.qmp, deadline);
    qmp.wait_event("GUEST_PANICKED", deadline);
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("vmcore");
    qmp.execute(
        "dump-guest-memory",
        json!({"paging": false, "protocol": format!("file:{}", core.display())}),
    );
    let console = guest.console_text();
    guest.quit();
    Dump { dir, core, console }
}

/// The kernel's printk lines on a console log, as `(seconds.micros, text)`. A stamp may
/// follow other output on the same line (the firmware's, before the kernel's first).
pub fn console_printk_lines(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            l.match_indices('[').find_map(|(i, _)| {
                let (stamp, text) = l[i + 1..].split_once("] ")?;
                let stamp = stamp.trim_start();
                let (s, us) = stamp.split_once('.')?;
                (!s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && us.len() == 6
                    && us.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (stamp.to_string(), text.to_string()))
            })
        })
        .collect()
}

/// The PIDs and commands init printed (`ps -o pid,comm` between its markers).
pub fn console_processes(console: &str) -> Vec<(i32, String)> {
    let Some(start) = console.find("AMBULANCE-PS-BEGIN") else {
        return Vec::new();
    };
    let Some(len) = console[start..].find("AMBULANCE-PS-END") else {
        return Vec::new();
    };
    console[start..start + len]
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let pid = words.next()?.parse().ok()?;
            Some((pid, words.next()?.to_string()))
        })
        .collect()
}
