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
        [
            "-Crelocation-model=static",
            "-Ccode-model=kernel",
            // No SIMD at all: where guest code runs under KVM's instruction emulator
            // (nested hosts such as kvm-pvm), SSE instructions stop the guest. Rust
            // warns that disabling SSE2 changes the float ABI; the kernel has no floats,
            // and it formats numbers itself so that it never runs the prebuilt,
            // SSE-using integer formatting of `core` (see its kfmt module).
            "-Ctarget-feature=-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2,-avx,-avx2",
        ]
        .join("\x1f"),
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
    let mut image = std::fs::read(&elf)
        .unwrap_or_else(|e| panic!("cannot read the built kernel {}: {e}", elf.display()));
    patch_ro_checksum(&mut image);
    std::fs::write(&dest, &image)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
    println!(
        "cargo:rustc-env=AMBULANCE_TEST_KERNEL_ELF={}",
        dest.display()
    );
}

/// Computes the CRC32C of the kernel's read-only region `[__ro_start, __ro_end)` exactly
/// as it will lie in guest memory (the PT_LOAD segments' file bytes, zero elsewhere) and
/// stores it in the kernel's `RO_CRC32C` variable, so the kernel need not compute it at
/// boot.
fn patch_ro_checksum(image: &mut [u8]) {
    use goblin::elf::{program_header::PT_LOAD, Elf};

    let (start, end, var, loads) = {
        let elf = Elf::parse(image).expect("the built kernel is not a valid ELF file");
        let symbol = |name: &str| {
            elf.syms
                .iter()
                .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
                .map(|s| s.st_value)
                .unwrap_or_else(|| panic!("the built kernel has no symbol {name}"))
        };
        let loads: Vec<(u64, u64, u64)> = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| (p.p_vaddr, p.p_offset, p.p_filesz))
            .collect();
        (
            symbol("__ro_start"),
            symbol("__ro_end"),
            symbol("RO_CRC32C"),
            loads,
        )
    };
    let mut region = vec![0u8; (end - start) as usize];
    for &(vaddr, offset, filesz) in &loads {
        let lo = vaddr.max(start);
        let hi = (vaddr + filesz).min(end);
        if lo < hi {
            let from = (offset + lo - vaddr) as usize;
            region[(lo - start) as usize..(hi - start) as usize]
                .copy_from_slice(&image[from..from + (hi - lo) as usize]);
        }
    }
    let crc = ambulance_abi::crc32c::crc32c(&region) as u64;
    let &(vaddr, offset, _) = loads
        .iter()
        .find(|&&(vaddr, _, filesz)| var >= vaddr && var + 8 <= vaddr + filesz)
        .expect("RO_CRC32C is not in a loaded, file-backed segment");
    let at = (offset + var - vaddr) as usize;
    image[at..at + 8].copy_from_slice(&crc.to_le_bytes());
}
