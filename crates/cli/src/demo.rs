//! `ambulance demo`: three test guests on embedded defaults; one gets a fault; the
//! failure is captured (guest frozen, registers taken) while the other two keep their
//! heartbeats going.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use ambulance_vmm::{EventKind, Guest, GuestConfig, Vmm};
use clap::Args;
use crossbeam_channel::RecvTimeoutError;

use crate::output::event_human;
use crate::{check_fault, CliError};

/// Options of `ambulance demo` (all have embedded defaults).
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The fault injected into the second guest.
    #[arg(long, default_value = "list-corruption")]
    pub fault: String,
    /// Seed choosing which structure the fault hits.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// When the fault is injected, in ms after registration.
    #[arg(long, default_value_t = 1500)]
    pub fault_after_ms: u64,
    /// Where the report and core are written (default: ambulance-demo in the temp dir).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<std::path::PathBuf>,
}

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
const VICTIM: usize = 1;

fn config(name: &str, cmdline: String) -> GuestConfig {
    let mut cfg = GuestConfig::new(name, ambulance_test_kernel::ELF);
    cfg.memory_bytes = 64 << 20;
    cfg.vcpus = 2;
    cfg.cmdline = cmdline;
    cfg.watchdog = Some(Duration::from_millis(1000));
    cfg.degraded_below_hz = Some(500.0);
    cfg
}

/// Runs `ambulance demo`.
pub fn demo(args: DemoArgs) -> Result<(), CliError> {
    check_fault(&args.fault)?;
    if args.fault == "none" {
        return Err(CliError::Usage(
            "the demo needs a fault other than none".into(),
        ));
    }
    let vmm = Vmm::new()?;
    let events = vmm.events();
    let start = SystemTime::now();
    println!("ambulance demo: booting three test guests (2 vCPUs, 64 MiB each) on KVM");
    println!(
        "  {} will get fault {:?} (seed {}) {} ms after it registers\n",
        NAMES[VICTIM], args.fault, args.seed, args.fault_after_ms
    );
    let mut guests: Vec<Guest> = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let cmdline = if i == VICTIM {
            format!(
                "fault={} fault_after_ms={} seed={}",
                args.fault, args.fault_after_ms, args.seed
            )
        } else {
            "fault=none".to_string()
        };
        guests.push(vmm.start(config(name, cmdline))?);
    }
    let victim = guests[VICTIM].clone();
    let options = crate::diagnose_options(Some("test"), None, None, None)?;
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("ambulance-demo"));
    let mut written = None;

    // Follow the events until the victim's failure is captured.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failure = None;
    let mut ground_truth = None;
    while failure.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match events.recv_timeout(left) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                return Err(CliError::Failed(format!(
                    "{} did not fail within 30 s",
                    NAMES[VICTIM]
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(CliError::Failed("the VMM stopped sending events".into()))
            }
        };
        let is_victim = event.guest == victim.id();
        if let EventKind::Console { text } = &event.kind {
            if text.starts_with("AMBULANCE-FAULT") {
                ground_truth = Some(text.clone());
            }
            // Show the victim's console in full, the others' only until they registered.
            if !is_victim && !text.starts_with("registration") && !text.starts_with("ambulance") {
                continue;
            }
        }
        println!("{}", event_human(&event, start));
        if let EventKind::Failure {
            cause,
            vcpu,
            detail,
            frozen,
        } = &event.kind
        {
            if is_victim {
                failure = Some(cause.name());
                let f = crate::live::Failure {
                    cause,
                    vcpu: *vcpu,
                    detail,
                    frozen,
                    time: event.time,
                };
                written = Some(crate::live::diagnose_and_write(
                    &victim,
                    &f,
                    &options,
                    &report_dir,
                    true,
                )?);
            } else {
                return Err(CliError::Failed(format!(
                    "{} failed ({}) although it had no fault",
                    event.guest_name,
                    cause.name()
                )));
            }
        }
    }

    // The others were never paused: their heartbeats keep advancing.
    println!(
        "\n{} is frozen for diagnosis; the others keep running:",
        NAMES[VICTIM]
    );
    let survivors: Vec<&Guest> = guests.iter().filter(|g| g.id() != victim.id()).collect();
    let before: HashMap<u64, Option<u64>> =
        survivors.iter().map(|g| (g.id(), g.heartbeat())).collect();
    let victim_before = victim.heartbeat();
    let window = Duration::from_secs(1);
    std::thread::sleep(window);
    let mut all_advanced = true;
    for g in &survivors {
        let (b, a) = (before[&g.id()], g.heartbeat());
        let advanced = matches!((b, a), (Some(b), Some(a)) if a > b);
        all_advanced &= advanced;
        println!(
            "  {:8} heartbeat {:>7} -> {:>7}  ({:+} in {:.1} s) {}",
            g.name(),
            show(b),
            show(a),
            a.unwrap_or(0) as i64 - b.unwrap_or(0) as i64,
            window.as_secs_f64(),
            if advanced { "running" } else { "NOT ADVANCING" }
        );
    }
    println!(
        "  {:8} heartbeat {:>7} -> {:>7}  (frozen: {})",
        victim.name(),
        show(victim_before),
        show(victim.heartbeat()),
        failure.unwrap_or("?")
    );
    if let Some(w) = &written {
        println!("\n{}", ambulance_report::text::render(&w.report));
        println!("report (JSON): {}", w.json.display());
        println!("report (text): {}", w.text.display());
        if let Some(core) = &w.core {
            println!("ELF core:      {core}", core = core.display());
        }
    }
    if let Some(line) = ground_truth {
        println!("\nground truth from the guest: {line}");
    }
    for g in &guests {
        g.destroy();
    }
    if !all_advanced {
        return Err(CliError::Failed(
            "a healthy guest's heartbeat stopped while another guest was captured".into(),
        ));
    }
    println!("\ndone: failure captured, other guests unaffected");
    Ok(())
}

fn show(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}
