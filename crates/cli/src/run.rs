//! `ambulance run`: boot one guest and print its events as they happen, until its first
//! failure has been captured or, for a healthy guest, until `--duration` ends.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use ambulance_capture::{vmm, Backend};
use ambulance_vmm::{EventKind, GuestConfig, Vmm};
use clap::Args;
use crossbeam_channel::RecvTimeoutError;
use serde_json::json;

use crate::kernels::{self, check_fault};
use crate::output::{event_human, event_json};
use crate::{load_kernel, parse_size, CliError};

/// Options of `ambulance run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel: `test` for the built-in test kernel, or the path of an ELF kernel.
    #[arg(long, default_value = "test")]
    pub kernel: String,
    /// Guest RAM, e.g. 64M or 1G.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Fault the test kernel injects (see the test kernel's catalogue).
    #[arg(long, default_value = "none")]
    pub fault: String,
    /// When the fault is injected, in ms after registration.
    #[arg(long, default_value_t = 500)]
    pub fault_after_ms: u64,
    /// Seed choosing which structure the fault hits.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Heartbeat stall that counts as a failure, in ms (0 disables the watchdog).
    #[arg(long, default_value_t = 1000)]
    pub watchdog_ms: u64,
    /// Heartbeat rate (per second) below which the guest counts as degraded (0 disables).
    #[arg(long, default_value_t = 500.0)]
    pub degraded_below_hz: f64,
    /// How long to run a healthy guest, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Extra kernel command-line options, appended after the fault options.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest name in events.
    #[arg(long, default_value = "guest")]
    pub name: String,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// On failure, diagnose the frozen guest and write DIR/<report id>.json and .txt.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// With --report-dir, also write the guest's memory as an ELF core (DIR/<id>.core).
    #[arg(long, requires = "report_dir")]
    pub core: bool,
    /// Declarative validation rules (TOML) to run with the built-in validators.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
}

impl RunArgs {
    /// The guest configuration these options describe.
    pub fn guest_config(&self) -> Result<GuestConfig, CliError> {
        if self.kernel == kernels::TEST {
            check_fault(&self.fault)?;
        }
        let mut cfg = GuestConfig::new(self.name.clone(), load_kernel(&self.kernel)?);
        cfg.memory_bytes = self.memory;
        cfg.vcpus = self.vcpus;
        cfg.cmdline = format!(
            "fault={} fault_after_ms={} seed={} {}",
            self.fault, self.fault_after_ms, self.seed, self.cmdline
        )
        .trim()
        .to_string();
        cfg.watchdog = (self.watchdog_ms > 0).then(|| Duration::from_millis(self.watchdog_ms));
        cfg.degraded_below_hz = (self.degraded_below_hz > 0.0).then_some(self.degraded_below_hz);
        Ok(cfg)
    }
}

/// Runs `ambulance run`.
pub fn run(args: RunArgs) -> Result<(), CliError> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(CliError::Usage(format!(
            "--duration must be a positive number of seconds, not {}",
            args.duration
        )));
    }
    let cfg = args.guest_config()?;
    let options = match &args.report_dir {
        Some(_) => Some(crate::diagnose_options(
            Some(&args.kernel),
            None,
            None,
            args.rules.as_deref(),
        )?),
        None => None,
    };
    let vmm = Vmm::new()?;
    let events = vmm.events();
    let start = SystemTime::now();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let report_dir = args
        .report_dir
        .as_ref()
        .map(ambulance_report::ReportDir::open)
        .transpose()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let guest = vmm.start(cfg)?;
    let backend = Backend::Vmm(guest.clone());
    let mut out = std::io::stdout().lock();
    let mut failure = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match events.recv_timeout(left) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(CliError::Failed("the VMM stopped sending events".into()))
            }
        };
        let mut written = None;
        if let (
            EventKind::Failure {
                cause,
                vcpu,
                detail,
                frozen,
            },
            Some(dir),
            Some(options),
        ) = (&event.kind, &report_dir, &options)
        {
            // The VMM froze the guest before it reported the failure.
            let failure = vmm::failure_info(cause, *vcpu, detail, event.time);
            let capture = backend.capture(failure, vmm::frozen_from(frozen, true))?;
            let (report, files) = capture.diagnose_here(options, Some(dir), args.core)?;
            written = files.map(|f| (report, f));
        }
        if args.json {
            let mut line = event_json(&event, start);
            if let Some((_, files)) = &written {
                line["report"] = json!(files.json.display().to_string());
                if let Some(core) = &files.core {
                    line["core"] = json!(core.display().to_string());
                }
            }
            let _ = writeln!(out, "{line}");
        } else {
            let _ = writeln!(out, "{}", event_human(&event, start));
            if let Some((report, files)) = &written {
                let _ = writeln!(out, "\n{}", ambulance_report::text::render(report));
                let _ = writeln!(out, "report: {}", files.json.display());
            }
        }
        let _ = out.flush();
        if let EventKind::Failure { cause, .. } = &event.kind {
            failure = Some(cause.name());
            break;
        }
    }
    let heartbeat = guest.heartbeat();
    let reason = if failure.is_some() {
        "failure"
    } else {
        "duration"
    };
    if args.json {
        let end = json!({
            "event": "end",
            "guest": guest.name(),
            "reason": reason,
            "cause": failure,
            "heartbeat": heartbeat,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        });
        let _ = writeln!(out, "{end}");
    } else {
        let _ = writeln!(
            out,
            "end: {reason} after {:.3} s{}; heartbeat {}",
            started.elapsed().as_secs_f64(),
            failure.map(|c| format!(" ({c})")).unwrap_or_default(),
            heartbeat
                .map(|h| h.to_string())
                .unwrap_or_else(|| "unregistered".into())
        );
    }
    guest.destroy();
    Ok(())
}
