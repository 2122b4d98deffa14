//! Builds the freestanding test kernel (guest-agent/test-kernel) with a nested cargo
//! invocation, for the host target, with its own flags and its own target directory, and
//! hands its path to the library. The kernel keeps its DWARF debug info.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let kernel_dir = root.join("guest-agent/test-kernel");
    for watched in [
        "guest-agent/test-kernel/src",
        "guest-agent/test-kernel/Cargo.toml",
        "guest-agent/test-kernel/Cargo.lock",
        "guest-agent/test-kernel/build.rs",
        "guest-agent/test-kernel/linker.ld",
        "guest-agent/src",
        "guest-agent/Cargo.toml",
        "crates/abi/src",
        "crates/abi/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("kernel-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&kernel_dir)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // The kernel is built with its own flags, whatever the outer build uses (coverage,
    // sanitizers, other targets): drop everything the outer cargo passes down.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let inherited = key.starts_with("CARGO_")
            && !matches!(
                key.as_ref(),
                "CARGO_HOME" | "CARGO_MAKEFLAGS" | "CARGO_NET_OFFLINE"
            );
        if inherited
            || matches!(
                key.as_ref(),
                "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WORKSPACE_WRAPPER"
            )
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-Crelocation-model=static", "-Ccode-model=kernel"].join("\x1f"),
    );
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the test kernel: {e}"));
    if !status.success() {
        panic!(
            "building the test kernel in {} failed ({status})",
            kernel_dir.display()
        );
    }
    let elf = target_dir.join(TARGET).join("release/test-kernel");
    let dest = out.join("test-kernel.elf");
    std::fs::copy(&elf, &dest)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", elf.display(), dest.display()));
    println!(
        "cargo:rustc-env=AMBULANCE_TEST_KERNEL_ELF={}",
        dest.display()
    );
}
