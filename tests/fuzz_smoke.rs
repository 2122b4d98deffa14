//! CI's smoke run of the fuzz targets (`fuzz/smoke.sh`), so that none can rot: every
//! libFuzzer target builds (nightly, debug assertions) and survives its seeds, its
//! regression inputs and a few thousand mutations. The script installs the pinned
//! cargo-fuzz on first use (`fuzz/setup.sh`).
//!
//! Building fourteen fuzzers takes minutes, so on a developer's machine this runs
//! only when asked (`AMBULANCE_FUZZ_SMOKE=1`) and otherwise says loudly that it was
//! skipped; CI (`AMBULANCE_REQUIRE_ALL`, set by `.ci/run`) always runs it. The seeds and
//! regression inputs themselves are replayed on stable by `cargo test -p
//! ambulance-fuzz-targets` on every run.

use std::io::Write;
use std::path::Path;
use std::process::Command;

#[test]
fn every_fuzz_target_builds_and_survives_a_short_run() {
    let asked = std::env::var_os("AMBULANCE_FUZZ_SMOKE").is_some_and(|v| v != "0");
    if !asked && !ambulance_testkit::required() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (the fuzz smoke run: set AMBULANCE_FUZZ_SMOKE=1, or AMBULANCE_REQUIRE_ALL=1 as CI does)"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("fuzz/smoke.sh"))
        .current_dir(root)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The interesting part of a build error or a libFuzzer crash report is at the end.
    let tail: Vec<&str> = stderr.lines().rev().take(80).collect();
    assert!(
        out.status.success(),
        "fuzz/smoke.sh failed ({}):\n{stdout}\n…\n{}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    eprintln!("{stdout}");
}
