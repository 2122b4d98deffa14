//! What the Linux benches share to report figures: the `result:` line each figure is
//! printed as (benches/RESULTS.md is generated from these lines), the statistics behind
//! them (medians and ratios are computed here, never by hand), and timing whole processes.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Prints one figure: `result: <section> | <figure> | <measured> | <goal> | <notes>`.
/// `goal` is `met`, `NOT met (<reason>)` or `–` (see [`goal`]). A `|` or a line break
/// inside a field would break the table it becomes, so they are replaced.
pub fn result(section: &str, figure: &str, measured: &str, goal: &str, notes: &str) {
    let field = |s: &str| s.replace('|', "/").replace(['\n', '\r'], " ");
    println!(
        "result: {} | {} | {} | {} | {}",
        field(section),
        field(figure),
        field(measured),
        field(goal),
        field(notes)
    );
}

/// `met`, or `NOT met (<reason>)`.
pub fn goal(met: bool, reason: impl FnOnce() -> String) -> String {
    if met {
        "met".to_string()
    } else {
        format!("NOT met ({})", reason())
    }
}

/// The median of `v` (the upper one of an even count); zero when empty.
pub fn median<T: Copy + PartialOrd + Default>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A duration as people read it: µs, ms or s with three significant digits.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// Bytes in MiB, one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// `a / b` as `N.NN×`.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".to_string()
    }
}

/// Runs the command `make` builds `runs` times as a whole process (start to exit, output
/// captured); each run's wall-clock time and the last run's output.
pub fn time_process(runs: usize, mut make: impl FnMut() -> Command) -> (Vec<Duration>, Output) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs.max(1) {
        let mut cmd = make();
        let t = Instant::now();
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
        times.push(t.elapsed());
        last = Some(out);
    }
    (times, last.expect("at least one run"))
}
