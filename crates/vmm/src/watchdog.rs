//! The heartbeat watchdog of one guest generation.
//!
//! Once the guest has registered, the watchdog polls its heartbeat counter every
//! [`POLL`]. It reports `watchdog_stall` when the counter has not changed for the
//! configured time, and `degraded` when the rate over the last [`WINDOW`] falls below the
//! configured threshold while the counter still moves (a counter that stopped is a stall). It measures only while the guest runs; registrations and resumes
//! restart the measurements.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::FailureCause;
use crate::guest::Instance;

/// Polling interval.
pub(crate) const POLL: Duration = Duration::from_millis(10);
/// Window of the rate measurement.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

struct Measure {
    /// Which registration and run epoch this measurement belongs to.
    key: (u64, u64),
    last_value: u64,
    last_change: Instant,
    samples: VecDeque<(Instant, u64)>,
}

impl Measure {
    fn new(key: (u64, u64), value: u64, now: Instant) -> Measure {
        let mut samples = VecDeque::new();
        samples.push_back((now, value));
        Measure {
            key,
            last_value: value,
            last_change: now,
            samples,
        }
    }
}

/// The watchdog thread's body.
pub(crate) fn run(inst: Arc<Instance>) {
    let cfg = &inst.ctx.config;
    let stall_after = cfg.watchdog;
    let threshold = cfg.degraded_below_hz;
    let mut measure: Option<Measure> = None;
    loop {
        std::thread::sleep(POLL);
        let (active, epoch, stopping) = inst.watch_status();
        if stopping {
            return;
        }
        if !active {
            measure = None;
            continue;
        }
        let (gpa, seq) = {
            let reg = inst.reg.lock();
            match &reg.latest {
                Some(r) => (r.descriptor.heartbeat_gpa, reg.seq),
                None => {
                    measure = None;
                    continue;
                }
            }
        };
        let Some(value) = inst.ram.load_u64(gpa) else {
            continue;
        };
        let now = Instant::now();
        let key = (seq, epoch);
        let m = match &mut measure {
            Some(m) if m.key == key => m,
            _ => {
                measure = Some(Measure::new(key, value, now));
                continue;
            }
        };
        if value != m.last_value {
            m.last_value = value;
            m.last_change = now;
        }
        if let Some(limit) = stall_after {
            let stalled = now - m.last_change;
            if stalled >= limit {
                inst.fail(
                    FailureCause::WatchdogStall {
                        stalled_for_ms: stalled.as_millis() as u64,
                        heartbeat: value,
                    },
                    None,
                    format!(
                        "heartbeat at guest-physical {gpa:#x} stuck at {value} for {stalled:?} \
                         (watchdog {limit:?})"
                    ),
                );
                measure = None;
                continue;
            }
        }
        if let Some(threshold_hz) = threshold {
            m.samples.push_back((now, value));
            while m.samples.len() > 2 && now - m.samples[1].0 >= WINDOW {
                m.samples.pop_front();
            }
            let (t0, v0) = m.samples[0];
            let span = now - t0;
            if span >= WINDOW {
                let measured_hz = value.wrapping_sub(v0) as f64 / span.as_secs_f64();
                // A heartbeat that stopped altogether is a stall, not a slowdown: leave it
                // to the stall watchdog when there is one. At the threshold rate the
                // counter changes every 1/threshold s; twice that without a change (and
                // at least a few polls) means it has stopped.
                let quiet_limit = Duration::from_secs_f64(2.0 / threshold_hz).max(5 * POLL);
                let beating = now - m.last_change < quiet_limit || stall_after.is_none();
                if beating && measured_hz < threshold_hz {
                    inst.fail(
                        FailureCause::Degraded {
                            measured_hz,
                            threshold_hz,
                            window_ms: span.as_millis() as u64,
                        },
                        None,
                        format!(
                            "heartbeat rate {measured_hz:.1}/s over {span:?} is below the \
                             threshold of {threshold_hz}/s"
                        ),
                    );
                    measure = None;
                }
            }
        }
    }
}
