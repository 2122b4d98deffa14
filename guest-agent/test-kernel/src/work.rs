//! A CPU-bound workload whose progress the host can read (`work=1`): every CPU runs one
//! unit per scheduler tick and counts it in [`WORK`], registered as the object root
//! `work`. Units, not time: a guest that gets less CPU completes fewer of them, whatever
//! its clock says (the heartbeat follows the clock).

use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// xorshift rounds per unit: a few thousand instructions, so that a unit stays short
/// where guest code runs under an instruction emulator (about a million per second).
const ROUNDS: u32 = 256;

/// Units completed, all CPUs together.
#[no_mangle]
pub static WORK: AtomicU64 = AtomicU64::new(0);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the workload on (boot CPU, from the command line).
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// Runs one unit if the workload is on (every CPU, at each scheduler tick).
pub fn on_scheduler_tick(cpu: u32) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut x = (u64::from(cpu) << 32) | WORK.load(Ordering::Relaxed) | 1;
    let mut sum = 0u64;
    for _ in 0..ROUNDS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(black_box(x));
    }
    black_box(sum);
    WORK.fetch_add(1, Ordering::Release);
}
