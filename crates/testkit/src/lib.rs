//! What Ambulance's tests share.
//!
//! Tests that need a resource this machine may lack (`/dev/kvm`, QEMU, a server) ask
//! [`available`] first. On a developer's machine without it they print a loud
//! `SKIPPED (…)` line — written straight to the process's standard error, so the test
//! harness's output capture cannot hide it — and pass. When [`REQUIRE_ENV`] is set (as
//! `.ci/run` sets it), a missing resource fails the test instead: CI can never pass on
//! tests that did not run.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set (to anything but `0`) to turn every skip into a failure.
pub const REQUIRE_ENV: &str = "AMBULANCE_REQUIRE_ALL";

/// Whether missing resources fail tests rather than skip them.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether `resource` is `present`; when it is not, skips loudly or — with
/// [`REQUIRE_ENV`] set — panics naming it.
pub fn available(resource: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if required() {
        panic!("{resource} is missing, and {REQUIRE_ENV} says every test must run");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED (no {resource})");
    false
}

/// Whether this machine has KVM (see [`available`]).
pub fn kvm() -> bool {
    available("/dev/kvm", Path::new("/dev/kvm").exists())
}

/// The Debian Linux guest fixture's directory (`vmlinuz`, `initramfs.cpio.gz`, and with
/// `dbg` the `-dbg` package's `vmlinux`), built once per machine by
/// `fixtures/linux/build.sh` into the user's cache. Panics with the script's output when
/// it cannot be built.
pub fn linux_fixture(dbg: bool) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/linux/build.sh");
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

/// The fixture for another Debian kernel than [`linux_fixture`]'s — `series` (`6.1`,
/// `6.12`) and `flavour` (`cloud-amd64`, `amd64`, `rt-amd64`) — built once per machine
/// by `fixtures/linux/build-other-kernel.sh` (the same init, that kernel's modules; with
/// `dbg` also `vmlinux`, from the kernel's `-dbg` package); or `None` after a loud skip
/// (see [`available`]) when apt knows no such kernel (or, with `dbg`, no such `-dbg`
/// package). The directory is the same with and without `dbg`: a dump of a guest booted
/// from it is diagnosed both ways. Panics with the script's output when it fails
/// otherwise.
pub fn other_linux_fixture(series: &str, flavour: &str, dbg: bool) -> Option<PathBuf> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/linux/build-other-kernel.sh"
    );
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    if dbg {
        cmd.arg("--dbg");
    }
    let out = cmd.args([series, flavour]).output().expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = if dbg { " -dbg" } else { "" };
    if out.status.code() == Some(2) {
        available(
            &format!("Debian {series} {flavour}{what} kernel ({})", stderr.trim()),
            false,
        );
        return None;
    }
    assert!(
        out.status.success(),
        "fixtures/linux/build-other-kernel.sh{} {series} {flavour} failed:\n{stderr}",
        if dbg { " --dbg" } else { "" }
    );
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .expect("build-other-kernel.sh prints the fixture directory");
    Some(dir)
}

/// The NATS server binary (2.10 or newer) from `fixtures/ensure-nats.sh` — which
/// installs the pinned, hash-checked build once per machine, or answers
/// `AMBULANCE_NATS_SERVER` — or `None` after a loud skip (see [`available`]) when it cannot
/// be had.
pub fn nats_server() -> Option<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/ensure-nats.sh");
    let out = Command::new("bash").arg(script).output();
    let path = match &out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim())),
        _ => None,
    };
    if path.is_none() {
        let why = match &out {
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(std::io::stderr(), "fixtures/ensure-nats.sh failed: {why}");
    }
    available("nats-server (fixtures/ensure-nats.sh)", path.is_some())
        .then(|| path.expect("checked"))
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `nats-server -c CONFIG`, killed when dropped (also when a test panics).
pub struct NatsProcess {
    child: std::process::Child,
    /// The binary.
    pub binary: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its client port on 127.0.0.1.
    pub port: u16,
}

impl NatsProcess {
    /// Starts `binary -c config` and waits (up to 20 s) until it accepts connections on
    /// 127.0.0.1:`port`. Its log goes to `log` (appended).
    pub fn start(binary: &Path, config: &Path, port: u16, log: &Path) -> NatsProcess {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the NATS log file");
        let child = Command::new(binary)
            .arg("-c")
            .arg(config)
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("nats-server starts");
        let p = NatsProcess {
            child,
            binary: binary.to_path_buf(),
            config: config.to_path_buf(),
            port,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on 127.0.0.1:{port}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        p
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it (SIGKILL: no orderly shutdown) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_present_resource_is_available() {
        assert!(super::available("the sky", true));
    }
}
