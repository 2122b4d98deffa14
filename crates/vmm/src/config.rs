//! What a guest is made of.

use std::sync::Arc;
use std::time::Duration;

use ambulance_abi::boot::{CMDLINE_MAX, MAX_VCPUS};
use ambulance_abi::PAGE_SIZE;

use crate::error::{Error, Result};

/// Smallest guest RAM accepted.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest RAM accepted.
pub const MAX_MEMORY: u64 = 512 << 30;
/// Shortest watchdog timeout accepted (the watchdog polls every 10 ms).
pub const MIN_WATCHDOG: Duration = Duration::from_millis(20);

/// How to build and run one guest. Cheap to clone (the kernel image is shared).
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// A name for logs and events; need not be unique.
    pub name: String,
    /// The kernel: an ELF64 x86-64 executable whose `PT_LOAD` segments are loaded at their
    /// `p_paddr` (at or above `abi::boot::KERNEL_MIN_LOAD_GPA`, inside the first GiB) and
    /// whose entry point (`e_entry`, usually `KERNEL_VIRT_BASE + phys`) every vCPU starts at.
    pub kernel: Arc<[u8]>,
    /// The kernel command line (no NUL bytes; at most `CMDLINE_MAX - 1` bytes).
    pub cmdline: String,
    /// Guest RAM in bytes: at least 16 MiB, a multiple of 4 KiB.
    pub memory_bytes: u64,
    /// Number of vCPUs, `1..=abi::boot::MAX_VCPUS`.
    pub vcpus: u32,
    /// Fail the guest with `watchdog_stall` when its registered heartbeat counter does not
    /// change for this long (checked only after a registration and while running).
    pub watchdog: Option<Duration>,
    /// Fail the guest with `degraded` when its heartbeat rate, measured over a sliding
    /// window of about one second, falls below this many increments per second.
    pub degraded_below_hz: Option<f64>,
}

impl GuestConfig {
    /// A configuration with one vCPU, 64 MiB of RAM, no watchdog and an empty command line.
    pub fn new(name: impl Into<String>, kernel: impl Into<Arc<[u8]>>) -> Self {
        GuestConfig {
            name: name.into(),
            kernel: kernel.into(),
            cmdline: String::new(),
            memory_bytes: 64 << 20,
            vcpus: 1,
            watchdog: None,
            degraded_below_hz: None,
        }
    }

    /// Checks everything that can be checked without KVM (the kernel image is checked when
    /// it is loaded).
    pub fn validate(&self) -> Result<()> {
        let bad = |problem: String| {
            Err(Error::InvalidConfig {
                guest: self.name.clone(),
                problem,
            })
        };
        if self.name.is_empty() {
            return bad("the name is empty".into());
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus is {}, must be 1..={MAX_VCPUS}", self.vcpus));
        }
        if self.memory_bytes < MIN_MEMORY {
            return bad(format!(
                "memory_bytes is {} ({} MiB), must be at least {} MiB",
                self.memory_bytes,
                self.memory_bytes >> 20,
                MIN_MEMORY >> 20
            ));
        }
        if self.memory_bytes > MAX_MEMORY {
            return bad(format!(
                "memory_bytes is {} ({} GiB), must be at most {} GiB",
                self.memory_bytes,
                self.memory_bytes >> 30,
                MAX_MEMORY >> 30
            ));
        }
        if !self.memory_bytes.is_multiple_of(PAGE_SIZE) {
            return bad(format!(
                "memory_bytes {} is not a multiple of the 4 KiB page size",
                self.memory_bytes
            ));
        }
        if self.cmdline.len() >= CMDLINE_MAX {
            return bad(format!(
                "the command line is {} bytes; at most {} fit (plus its NUL)",
                self.cmdline.len(),
                CMDLINE_MAX - 1
            ));
        }
        if self.cmdline.as_bytes().contains(&0) {
            return bad("the command line contains a NUL byte".into());
        }
        if let Some(w) = self.watchdog {
            if w < MIN_WATCHDOG {
                return bad(format!(
                    "watchdog is {w:?}; it must be at least {MIN_WATCHDOG:?}"
                ));
            }
        }
        if let Some(hz) = self.degraded_below_hz {
            if !hz.is_finite() || hz <= 0.0 {
                return bad(format!(
                    "degraded_below_hz is {hz}; it must be a positive, finite rate"
                ));
            }
        }
        if self.kernel.is_empty() {
            return bad("the kernel image is empty".into());
        }
        Ok(())
    }
}
