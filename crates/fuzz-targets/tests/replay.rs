//! Replays every committed fuzz input through its target: the seeds
//! (`fuzz/seeds/<target>/`) and the inputs that once crashed a target
//! (`fuzz/regressions/<target>/`). Runs on stable in `cargo test --workspace`, so the
//! targets keep compiling and a fixed crash stays fixed.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs `name`'s target over its seeds (at least one must exist) and regressions.
fn replay(name: &str) {
    let run = ambulance_fuzz_targets::target(name).expect("a target of that name");
    let seeds = inputs(&fuzz_dir().join("seeds").join(name));
    assert!(
        !seeds.is_empty(),
        "no seed for {name} in fuzz/seeds/{name}: every target needs at least one"
    );
    let regressions = inputs(&fuzz_dir().join("regressions").join(name));
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let t = Instant::now();
        // A panic names the input: the test harness prints this line's output with it.
        println!("{name}: {} ({} bytes)", path.display(), data.len());
        run(&data);
        println!("  {} ms", t.elapsed().as_millis());
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_replayed() {
            let mut replayed = vec![$(stringify!($name)),*];
            replayed.sort();
            let mut all: Vec<&str> = ambulance_fuzz_targets::TARGETS.iter().map(|t| t.0).collect();
            all.sort();
            assert_eq!(replayed, all);
        }
    };
}

replay_tests!(
    descriptor,
    vmcoreinfo,
    elf_core,
    page_walk,
    dwarf,
    btf,
    kallsyms,
    printk,
    kernel_log,
    orc_unwind,
    qmp_registers,
    worker_protocol,
    rules,
    report_json,
);
