//! A real Linux guest for the end-to-end tests and benchmarks: Debian's cloud kernel with
//! a busybox initramfs (fixtures/linux/build.sh, cached outside the repository), booted
//! under QEMU with TCG (KVM cannot boot Linux on these hosts) with its RAM in a shared
//! file, pvpanic, the vmcoreinfo device, a QMP socket and optionally the Linux agent's
//! registration port; QMP through the product's client (`ambulance_qemu`).
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ambulance_introspect::memory::ElfCore;
use ambulance_introspect::program::Program;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;

use ambulance_qemu::{ConnectOptions, Qmp, QmpEvents};
use serde_json::{json, Value};

/// Builds (or finds in the cache) the Linux fixture; its directory. With `dbg`, the
/// matching `-dbg` vmlinux (DWARF) is fetched too, as `vmlinux` in that directory.
pub fn fixture(dbg: bool) -> PathBuf {
    ambulance_testkit::linux_fixture(dbg)
}

/// The Python with drgn (the pinned release, `fixtures/ensure-drgn.sh`), or `None` after a
/// loud skip when it cannot be had (see [`ambulance_testkit::available`]).
pub fn drgn_python() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ensure-drgn.sh"))
        .output()
        .expect("bash runs");
    if !out.status.success() {
        eprintln!(
            "fixtures/ensure-drgn.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ambulance_testkit::available("drgn (fixtures/ensure-drgn.sh)", out.status.success())
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs `tests/tools/<script>` with drgn's Python on `core` and `vmlinux`; its standard
/// output (the test fails with drgn's error when it cannot read the dump).
pub fn drgn_tool(python: &Path, script: &str, core: &Path, vmlinux: &Path) -> Vec<u8> {
    let out = Command::new(python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/tools")
                .join(script),
        )
        .arg(core)
        .arg(vmlinux)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "drgn ({script}) could not read {}:\n{}",
        core.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every process init listed on `console` (`ps`, see [`console_processes`]) is among the
/// report's `kernel.tasks` with its command — except `ps` itself (sometimes listed as
/// `exe`: busybox runs the applet through /proc/self/exe), which has exited, the commands
/// in `gone`, and at most one `sleep` (init's 1-second loop may have replaced it). ps
/// names a kernel worker with its current work after the name ("kworker/0:0-events").
pub fn check_listed_processes(report: &Value, console: &str, gone: &[&str]) {
    let tasks = report["kernel"]["tasks"].as_array().expect("kernel.tasks");
    let listed = console_processes(console);
    assert!(listed.len() > 40, "{listed:?}");
    let mut missing = Vec::new();
    for (pid, comm) in &listed {
        let found = tasks.iter().any(|t| {
            let c = t["comm"].as_str().unwrap();
            t["pid"] == *pid && (c == comm || (c.starts_with("kworker/") && comm.starts_with(c)))
        });
        if !found {
            missing.push((*pid, comm.clone()));
        }
    }
    missing.retain(|(_, c)| c != "ps" && c != "exe" && !gone.contains(&c.as_str()));
    assert!(
        missing.len() <= 1 && missing.iter().all(|(_, c)| c == "sleep"),
        "processes printed by init but not in the report: {missing:?}"
    );
}

/// A runtime for the async QMP client ([`ambulance_qemu::Qmp`]) in synchronous tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Connects to a guest's QMP socket (waiting up to a minute for QEMU to listen).
pub async fn connect(qmp: &Path) -> (Qmp, QmpEvents) {
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(60),
        command_timeout: Duration::from_secs(120),
    };
    Qmp::connect(qmp, options)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until QEMU says the guest panicked (`GUEST_PANICKED`, or a `guest-panicked`
/// run state when the event came before this connection): `true`; or `false` when the
/// guest's boot stalled before init ran (see [`Guest::stalled_at_boot`]).
#[must_use]
pub async fn wait_for_panic(
    qmp: &Qmp,
    events: &mut QmpEvents,
    guest: &Guest,
    timeout: Duration,
) -> bool {
    if qmp.query_status().await.unwrap().status == "guest-panicked" {
        return true;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(5));
        match events.wait_for(&["GUEST_PANICKED"], slice).await {
            Ok(_) => return true,
            Err(ambulance_qemu::Error::Timeout { .. }) if guest.stalled_at_boot() => return false,
            Err(ambulance_qemu::Error::Timeout { .. }) if Instant::now() < deadline => {}
            Err(e) => panic!("{e}; the console says:\n{}", guest.console_text()),
        }
    }
}

/// Boots the fixture as `boot` says and waits for its panic; a boot that stalls under
/// TCG before init runs ([`Guest::stalled_at_boot`]) is booted once more, loudly.
pub fn boot_until_panicked(fixture_dir: &Path, boot: &Boot) -> Guest {
    for attempt in 1..=BOOT_ATTEMPTS {
        let guest = Guest::boot(fixture_dir, boot);
        let panicked = runtime().block_on(async {
            let (qmp, mut events) = connect(&guest.qmp).await;
            wait_for_panic(&qmp, &mut events, &guest, Duration::from_secs(180)).await
        });
        if panicked {
            return guest;
        }
        guest.report_stall(attempt);
    }
    unreachable!("report_stall panics on the last attempt")
}

/// How long a booting kernel's console may stay silent, before it has started init, for
/// its boot to count as stalled ([`Guest::stalled_at_boot`]), unless [`Boot::boot_stall`]
/// says otherwise; a healthy TCG boot here prints every second or so and reaches init in
/// 5–15 s.
pub const BOOT_STALL: Duration = Duration::from_secs(60);

/// How many times the helpers boot a guest whose boot stalls.
pub const BOOT_ATTEMPTS: u32 = 2;

/// The end of the line the kernel prints as it starts init ("Run /init as init process"):
/// its boot is over.
pub const INIT_STARTED: &str = " as init process";

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
    /// Connect a second serial port (the guest's ttyS1) to this Unix socket and have
    /// init run the Linux agent on it (`ambulance.register=ttyS1`).
    pub registration: Option<PathBuf>,
    /// Extra kernel command-line words.
    pub cmdline: String,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// `-no-reboot`: QEMU exits when the guest (or QMP's `system_reset`) resets it.
    pub no_reboot: bool,
    /// The fixture's initramfs to boot (`initramfs.cpio.gz`; `initramfs-kdump.img` also
    /// holds a crash kernel).
    pub initrd: &'static str,
    /// How long the console may stay silent before init for the boot to count as stalled.
    pub boot_stall: Duration,
}

impl Default for Boot {
    fn default() -> Boot {
        Boot {
            memory_mib: 256,
            cpus: 2,
            panic_after: Some(1),
            registration: None,
            cmdline: String::new(),
            qemu_args: Vec::new(),
            no_reboot: true,
            initrd: "initramfs.cpio.gz",
            boot_stall: BOOT_STALL,
        }
    }
}

/// Where a guest's files go: a fresh temporary directory with the QMP socket, the RAM
/// file and the console log (known before QEMU starts, so that a test can start
/// `ambulance attach` or a daemon first).
pub struct GuestPaths {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// The RAM file (`memory-backend-file`, shared) — on tmpfs (`/dev/shm`) where the
    /// host has one, as hosts run guests, so that reading a hole would allocate it.
    pub ram: PathBuf,
    /// The serial console's log.
    pub console: PathBuf,
    /// The RAM file's directory when it is not `dir` (removed on drop).
    pub ram_dir: Option<tempfile::TempDir>,
}

impl GuestPaths {
    /// A fresh directory and the paths in it.
    pub fn new() -> GuestPaths {
        let dir = tempfile::Builder::new()
            .prefix("amb-qemu")
            .tempdir()
            .unwrap();
        let ram_dir = tempfile::Builder::new()
            .prefix("amb-qemu-ram")
            .tempdir_in("/dev/shm")
            .ok();
        GuestPaths {
            qmp: dir.path().join("qmp.sock"),
            ram: ram_dir.as_ref().unwrap_or(&dir).path().join("ram"),
            console: dir.path().join("console.log"),
            ram_dir,
            dir,
        }
    }
}

/// A running QEMU guest; killed on drop.
pub struct Guest {
    child: Child,
    /// Where its files are.
    pub paths: GuestPaths,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// The RAM file (`memory-backend-file`, shared).
    pub ram: PathBuf,
    /// The serial console's log.
    pub console: PathBuf,
    /// See [`Boot::boot_stall`].
    boot_stall: Duration,
}

impl Guest {
    /// Boots the fixture in `fixture_dir` as `boot` says, in a fresh directory.
    pub fn boot(fixture_dir: &Path, boot: &Boot) -> Guest {
        Guest::boot_at(GuestPaths::new(), fixture_dir, boot)
    }

    /// Boots the fixture with its files at `paths`: q35 with its RAM in a shared file,
    /// pvpanic (`-action panic=pause`), the vmcoreinfo device, QMP on a Unix socket, the
    /// console on ttyS0 into a file, and with `boot.registration` the Linux agent's port
    /// on ttyS1.
    pub fn boot_at(paths: GuestPaths, fixture_dir: &Path, boot: &Boot) -> Guest {
        let mut cmdline = "console=ttyS0".to_string();
        if let Some(s) = boot.panic_after {
            cmdline += &format!(" ambulance.panic_after={s}");
        }
        if boot.registration.is_some() {
            cmdline += " ambulance.register=ttyS1";
        }
        if !boot.cmdline.is_empty() {
            cmdline += " ";
            cmdline += &boot.cmdline;
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-nographic"])
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
                paths.ram.display()
            ))
            .args(["-machine", "q35,memory-backend=ram"])
            .arg("-kernel")
            .arg(fixture_dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(fixture_dir.join(boot.initrd))
            .args(["-append", &cmdline])
            .args(["-device", "pvpanic", "-device", "vmcoreinfo"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", paths.qmp.display()))
            .arg("-serial")
            .arg(format!("file:{}", paths.console.display()));
        if boot.no_reboot {
            cmd.arg("-no-reboot");
        }
        if let Some(sock) = &boot.registration {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id=ambulance,path={},reconnect=1",
                    sock.display()
                ))
                .args(["-device", "isa-serial,chardev=ambulance"]);
        }
        let child = cmd
            .args(&boot.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        Guest {
            child,
            qmp: paths.qmp.clone(),
            ram: paths.ram.clone(),
            console: paths.console.clone(),
            boot_stall: boot.boot_stall,
            paths,
        }
    }

    /// The console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the console shows `marker`, at most `timeout` (then fails with the
    /// console, saying what was awaited: `what`).
    pub fn wait_for_console(&self, marker: &str, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.console_text().contains(marker) {
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}; the console says:\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the guest kernel's boot stalled: it has not started init (the console lacks
    /// [`INIT_STARTED`]) and the console has been silent for [`Boot::boot_stall`]. On
    /// this loaded 2-core machine, QEMU's TCG once stopped a guest's kernel for good early
    /// in its boot (right after "Switched to clocksource hpet"), before init ran and
    /// before anything of ours touched the guest; that is QEMU's failure, not a test's,
    /// and the helpers boot such a guest again (once, loudly). Anything that stops after
    /// init started (the agent's registration, a failure being injected) is not a stall,
    /// and fails the test as before.
    pub fn stalled_at_boot(&self) -> bool {
        let Ok(meta) = std::fs::metadata(&self.console) else {
            return false;
        };
        let silent = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|quiet| quiet >= self.boot_stall);
        silent && !self.console_text().contains(INIT_STARTED)
    }

    /// Says loudly that this guest's boot stalled (attempt `attempt` of
    /// [`BOOT_ATTEMPTS`]); panics with its console when that was the last attempt.
    pub fn report_stall(&self, attempt: u32) {
        let console = self.console_text();
        let lines: Vec<&str> = console.lines().collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        assert!(
            attempt < BOOT_ATTEMPTS,
            "the guest's boot stalled under TCG before init ran, {attempt} times; console:\n{console}"
        );
        eprintln!(
            "RETRY: the guest's boot stalled under TCG before init ran (console silent for {:?}; \
             attempt {attempt} of {BOOT_ATTEMPTS}); booting it again. Its console ended with:\n{}",
            self.boot_stall,
            tail.join("\n")
        );
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
    panicked_dump_of(
        fixture_dir,
        &Boot {
            memory_mib,
            ..Boot::default()
        },
    )
}

/// [`panicked_dump`] of a guest booted as `boot` says.
pub fn panicked_dump_of(fixture_dir: &Path, boot: &Boot) -> Dump {
    panicked_dump_in(fixture_dir, boot, tempfile::tempdir().unwrap())
}

/// The panicked dump that every test of one test binary shares, made on its first use.
///
/// A dump in a `static` is never dropped, so its `TempDir` would leave the ~270 MB core
/// behind at every run. This one lives in `target/tmp/shared-dumps/<pid>-…/` instead, and
/// each run first removes the directories of runs whose process has ended.
pub fn shared_panicked_dump(cell: &'static OnceLock<Dump>, fixture_dir: &Path) -> &'static Dump {
    cell.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-dumps");
        std::fs::create_dir_all(&root).unwrap();
        remove_dumps_of_ended_runs(&root);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(&root)
            .unwrap();
        panicked_dump_in(fixture_dir, &Boot::default(), dir)
    })
}

/// Removes the directories under `root` whose name starts with the PID of a process that
/// no longer runs (a PID reused since only postpones the removal to a later run).
fn remove_dumps_of_ended_runs(root: &Path) {
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Boots the fixture as `boot` says until it panics, and dumps it into `dir`.
fn panicked_dump_in(fixture_dir: &Path, boot: &Boot, dir: tempfile::TempDir) -> Dump {
    let guest = boot_until_panicked(fixture_dir, boot);
    let core = dir.path().join("vmcore");
    runtime().block_on(async {
        let (qmp, _events) = connect(&guest.qmp).await;
        qmp.execute_with_timeout(
            "dump-guest-memory",
            json!({"paging": false, "protocol": format!("file:{}", core.display())}),
            Duration::from_secs(300),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    });
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
                let (stamp, text) = printk_stamp(&l[i..])?;
                Some((stamp.to_string(), text.to_string()))
            })
        })
        .collect()
}

/// Bytes of `path` the file system has allocated (`st_blocks` × 512): how much of a sparse
/// RAM file is no longer a hole.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The PIDs and commands init printed (`ps -o pid,comm` between its markers), read past
/// the kernel's messages the serial port put among them (see [`without_kernel_messages`]).
pub fn console_processes(console: &str) -> Vec<(i32, String)> {
    let Some(start) = console.find("AMBULANCE-PS-BEGIN") else {
        return Vec::new();
    };
    let Some(len) = console[start..].find("AMBULANCE-PS-END") else {
        return Vec::new();
    };
    without_kernel_messages(&console[start..start + len])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let pid = words.next()?.parse().ok()?;
            Some((pid, words.next()?.to_string()))
        })
        .collect()
}

/// `console` without the kernel's own messages. Each is a whole line that begins with
/// printk's time stamp (`[   12.345678] `), but the kernel writes it to the serial port
/// whenever it is logged, so it may land in the middle of a line a process was writing
/// (`    2 kthreadd[    3.141592] random: crng init done`). Taking it out, up to and with
/// its line end, joins the process's line up again.
fn without_kernel_messages(console: &str) -> String {
    let mut out = String::with_capacity(console.len());
    let mut rest = console;
    while let Some(at) = rest.find('[') {
        out.push_str(&rest[..at]);
        let from = &rest[at..];
        rest = if printk_stamp(from).is_some() {
            from.find('\n').map_or("", |end| &from[end + 1..])
        } else {
            out.push('[');
            &from[1..]
        };
    }
    out.push_str(rest);
    out
}

/// printk's time stamp at the start of `text` (`[   12.345678] `: seconds, right-aligned
/// in brackets, and six digits of microseconds): the stamp (`12.345678`) and the text
/// after it; `None` when `text` does not begin with one.
fn printk_stamp(text: &str) -> Option<(&str, &str)> {
    let (stamp, after) = text.strip_prefix('[')?.split_once("] ")?;
    let stamp = stamp.trim_start();
    let (secs, micros) = stamp.split_once('.')?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (!secs.is_empty() && digits(secs) && micros.len() == 6 && digits(micros))
        .then_some((stamp, after))
}

/// Everything a report of this fixture's sysrq panic must say in its `kernel` section,
/// checked against what the guest printed on its console — whatever the type source, live
/// or offline.
pub fn check_against_console(report: &Value, console: &str) {
    let k = &report["kernel"];
    let version = std::fs::read_to_string(fixture(false).join("VERSION")).unwrap();
    let release = k["release"].as_str().expect("kernel.release");
    assert!(
        version.starts_with(&format!("linux-image-{release} ")),
        "{release} vs {version}"
    );
    assert_eq!(
        k["kaslr_offset"].as_str().map(|s| s.starts_with("0x")),
        Some(true)
    );

    // The panic message is the console's panic line.
    let panic_line = console
        .lines()
        .find_map(|l| l.split_once("Kernel panic - not syncing: ").map(|x| x.1))
        .expect("the console shows the panic")
        .trim_end();
    assert_eq!(k["panic_message"], panic_line);
    assert_eq!(panic_line, "sysrq triggered crash");
    assert_eq!(
        k["panic_cpu"].as_u64().map(|c| c < 2),
        Some(true),
        "{}",
        k["panic_cpu"]
    );

    // dmesg: every printk line the console printed is a record line, in order, with the
    // same timestamp and text. The console prints levels below 7 (the default
    // loglevel); records logged after the panic notifier paused the guest may be in the
    // ring without having reached the console.
    let on_console = console_printk_lines(console);
    let mut from_report = Vec::new();
    for r in k["dmesg"].as_array().expect("kernel.dmesg") {
        if r["level"].as_u64().unwrap() >= 7 {
            continue;
        }
        let ns = r["timestamp_ns"].as_u64().unwrap();
        let stamp = format!("{:5}.{:06}", ns / 1_000_000_000, ns / 1000 % 1_000_000);
        for line in r["text"].as_str().unwrap().lines() {
            from_report.push((stamp.trim_start().to_string(), line.to_string()));
        }
    }
    assert!(on_console.len() > 100, "{} console lines", on_console.len());
    assert!(
        from_report.len() >= on_console.len(),
        "{} record lines for {} console lines",
        from_report.len(),
        on_console.len()
    );
    for (i, (c, r)) in on_console.iter().zip(&from_report).enumerate() {
        assert_eq!(c, r, "console printk line {i} differs from dmesg");
    }
    let seqs: Vec<u64> = k["dmesg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "records in order");
    assert_eq!(k["dmesg_dropped"], 0);

    check_listed_processes(report, console, &[]);
    let tasks = k["tasks"].as_array().expect("kernel.tasks");
    let init = tasks.iter().find(|t| t["pid"] == 1).expect("pid 1");
    assert_eq!(init["comm"], "init");
    assert!(tasks.iter().all(|t| {
        ["R", "S", "D", "T", "t", "X", "Z", "P", "I"].contains(&t["state"].as_str().unwrap())
    }));

    // Healthy until sysrq: the task list walks completely, no list or stack findings.
    let walk = report["structures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["structure"] == "init_task.tasks")
        .expect("the task list is walked");
    assert_eq!(walk["end"]["kind"], "complete");
    assert_eq!(walk["count"].as_u64().unwrap() as usize, tasks.len());
    let bad: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["validator"] == "list-integrity" || f["validator"] == "stack-end")
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The fixture's two vCPUs as a report shows them: in long mode with paging, running or
/// halted. `in_kernel` (after a panic every vCPU is; an operator's diagnosis may catch one
/// in user space): a kernel `rip` and the kernel's per-CPU GS base.
pub fn check_vcpus(report: &Value, in_kernel: bool) {
    let vcpus = report["vcpus"].as_array().expect("vcpus");
    assert_eq!(vcpus.len(), 2, "{vcpus:#?}");
    let hex =
        |v: &Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    for (i, v) in vcpus.iter().enumerate() {
        assert_eq!(v["vcpu"], i as u64);
        assert_ne!(hex(&v["cr3"]), 0, "vCPU {i} has paging");
        assert_ne!(hex(&v["cr0"]) & (1 << 31), 0, "vCPU {i} CR0.PG");
        assert_ne!(hex(&v["efer"]) & (1 << 10), 0, "vCPU {i} EFER.LMA");
        assert!(
            ["halted", "running"].contains(&v["activity"].as_str().unwrap()),
            "{v}"
        );
        if in_kernel {
            let rip = hex(&v["rip"]);
            assert!(
                rip >= 0xffff_ffff_8000_0000,
                "vCPU {i} rip {rip:#x} is not a kernel address"
            );
            assert!(
                hex(&v["gs_base"]) >= 0xffff_8000_0000_0000,
                "vCPU {i} GS base is per-CPU data"
            );
        }
    }
}

/// What one `ambulance attach` run produced.
pub struct Attached {
    /// The report it printed (JSON).
    pub report: Value,
    /// What it said on standard error.
    pub stderr: String,
    /// The guest's serial console.
    pub console: String,
    /// Where it wrote the report.
    pub report_dir: tempfile::TempDir,
    /// The guest RAM file's allocated bytes once attach was done, and its size.
    pub ram_allocated: u64,
    pub ram_size: u64,
}

impl Attached {
    /// The report file for the printed report's id.
    pub fn report_file(&self, ext: &str) -> PathBuf {
        let id = self.report["id"].as_str().expect("a report id");
        self.report_dir.path().join(format!("{id}.{ext}"))
    }
}

/// Starts `ambulance attach --json --report-dir DIR --core` on a guest that is not up
/// yet, boots the fixture in `fixture` as `boot` says (with the Linux agent when
/// `register`), and returns what attach printed once the guest failed.
pub fn attach(fixture: &Path, boot: Boot, register: bool) -> Attached {
    for attempt in 1..=BOOT_ATTEMPTS {
        if let Some(attached) = attach_once(fixture, &boot, register, attempt) {
            return attached;
        }
    }
    unreachable!("report_stall panics on the last attempt")
}

/// One attempt of [`attach`]: `None` when the guest's boot stalled (attach is stopped).
fn attach_once(fixture: &Path, boot: &Boot, register: bool, attempt: u32) -> Option<Attached> {
    let paths = GuestPaths::new();
    let report_dir = tempfile::tempdir().unwrap();
    let registration = paths.dir.path().join("reg.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambulance"));
    cmd.arg("attach")
        .arg("--qmp")
        .arg(&paths.qmp)
        .arg("--memory")
        .arg(&paths.ram)
        .arg("--json")
        .arg("--report-dir")
        .arg(report_dir.path())
        .arg("--core")
        .args(["--connect-timeout", "60", "--name", "debian"]);
    if register {
        cmd.arg("--registration").arg(&registration);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ambulance attach starts");
    if register {
        // QEMU connects the agent's port to the socket attach listens on (it would
        // retry every second, but then the agent's first attempt could go unheard).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !registration.exists() {
            assert!(
                Instant::now() < deadline,
                "attach did not listen on {}",
                registration.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let guest = Guest::boot_at(
        paths,
        fixture,
        &Boot {
            registration: register.then(|| registration.clone()),
            ..boot.clone()
        },
    );
    let Some((stdout, stderr)) = wait_with_output(&mut child, Duration::from_secs(240), &guest)
    else {
        guest.report_stall(attempt);
        return None;
    };
    let console = guest.console_text();
    let status = child.wait().unwrap();
    let ram_allocated = allocated(&guest.paths.ram);
    let ram_size = std::fs::metadata(&guest.paths.ram).unwrap().len();
    assert!(
        status.success(),
        "ambulance attach failed ({status}):\n{stderr}\nconsole:\n{console}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not a JSON report ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    Some(Attached {
        report,
        stderr,
        console,
        report_dir,
        ram_allocated,
        ram_size,
    })
}

/// Reads the child's output until it exits, at most `timeout` (then kills it and fails
/// with what it and the guest said); `None` (the child killed) when the guest's boot
/// stalled ([`Guest::stalled_at_boot`]).
pub fn wait_with_output(
    child: &mut std::process::Child,
    timeout: Duration,
    guest: &Guest,
) -> Option<(String, String)> {
    fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    }
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if guest.stalled_at_boot() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ambulance attach did not finish within {timeout:?}; stderr:\n{}\nconsole:\n{}",
                err.join().unwrap(),
                guest.console_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((out.join().unwrap(), err.join().unwrap()))
}

/// Runs the `ambulance` binary.
pub fn ambulance(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .args(args)
        .output()
        .expect("ambulance runs")
}

/// `ambulance diagnose --core CORE EXTRA…`'s JSON report.
pub fn diagnose_core(core: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["diagnose", "--core", core.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = ambulance(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// A copy of the dump to corrupt, edited by guest-virtual address: the guest is read
/// through the same Linux program the diagnosis builds (kallsyms, BTF), and each edit
/// lands at the file offset that holds the translated byte.
pub struct Patched {
    core: Arc<ElfCore>,
    /// The guest as the diagnosis reads it (kallsyms, BTF).
    pub program: Program,
    bytes: Vec<u8>,
    path: PathBuf,
}

impl Patched {
    /// A copy of `d`'s core named `name`.
    pub fn new(d: &Dump, name: &str) -> Patched {
        let core = Arc::new(ElfCore::open(&d.core).unwrap());
        let info = Vmcoreinfo::parse(core.vmcoreinfo().unwrap()).unwrap();
        // Generous limits: a debug build on a loaded machine can take longer than a
        // diagnosis's default second to decode kallsyms, and this reader must see it all.
        let mut sources = ambulance_report::KernelSources::default();
        let program = ambulance_diagnose::linux::load(
            ambulance_linux::program(core.clone(), &info).unwrap(),
            &info,
            None,
            ambulance_introspect::walk::WalkLimits::new(1 << 24, Duration::from_secs(120)),
            &mut sources,
            &mut Vec::new(),
        );
        assert_eq!(
            sources.missing,
            Vec::<String>::new(),
            "the dump's symbols and types"
        );
        Patched {
            core,
            program,
            bytes: std::fs::read(&d.core).unwrap(),
            path: d.dir.path().join(name),
        }
    }

    /// Overwrites the guest's bytes at `va` in the copy.
    pub fn write(&mut self, va: u64, value: &[u8]) {
        let pa = self.program.translate(va).unwrap();
        let at = self.core.file_offset(pa).expect("the dump holds the byte") as usize;
        self.bytes[at..at + value.len()].copy_from_slice(value);
    }

    /// The report on the copy as it stands.
    pub fn diagnose(&self) -> Value {
        std::fs::write(&self.path, &self.bytes).unwrap();
        diagnose_core(&self.path, &[])
    }
}

impl Drop for Patched {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The report's "structures walked" entry for `name`.
pub fn walked<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["structures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["structure"] == name)
        .unwrap_or_else(|| panic!("{name} is not among {:#}", report["structures"]))
}

/// A report's findings from one validator.
pub fn findings<'a>(report: &'a Value, validator: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["validator"] == validator)
        .collect()
}
