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

#[cfg(test)]
mod tests {
    #[test]
    fn a_present_resource_is_available() {
        assert!(super::available("the sky", true));
    }
}
