//! `ambulance demo`: the service on embedded defaults with three test guests; one gets a
//! fault; the failure is captured (guest frozen, registers taken), diagnosed in a worker
//! process and stored, while the other two keep their heartbeats going.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ambulance_service::store::Status;
use ambulance_service::{Notice, Service, ServiceConfig};
use ambulance_vmm::EventKind;
use clap::Args;
use tokio::sync::broadcast::error::RecvError;

use crate::kernels::check_fault;
use crate::output::event_human;
use crate::CliError;

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
    /// The service's data directory, where the report and core are stored (default:
    /// ambulance-demo in the temp dir).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<std::path::PathBuf>,
}

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
const VICTIM: usize = 1;

/// The demo's service configuration: three test guests (2 vCPUs, 64 MiB); the victim is
/// held frozen after its diagnosis (with an ELF core), the others restart on failure.
fn config(args: &DemoArgs, data_dir: &Path) -> Result<ServiceConfig, CliError> {
    let mut toml = String::new();
    for (i, name) in NAMES.iter().enumerate() {
        let (cmdline, policy, core) = if i == VICTIM {
            (
                format!(
                    "fault={} fault_after_ms={} seed={}",
                    args.fault, args.fault_after_ms, args.seed
                ),
                "hold",
                true,
            )
        } else {
            ("fault=none".to_string(), "restart", false)
        };
        toml += &format!(
            "[[guest]]\nname = \"{name}\"\nkernel = \"test\"\nmemory = \"64M\"\nvcpus = 2\n\
             cmdline = \"{cmdline}\"\nwatchdog_ms = 1000\ndegraded_below_hz = 500\n\
             policy = \"{policy}\"\ncore = {core}\n\n"
        );
    }
    let mut cfg = ServiceConfig::parse(&toml, "<demo>", &crate::kernels::builtin()?)?;
    cfg.data_dir = data_dir.to_path_buf();
    cfg.api.socket = ambulance_service::config::socket_in(data_dir);
    Ok(cfg)
}

/// Runs `ambulance demo`.
pub fn demo(args: DemoArgs) -> Result<(), CliError> {
    check_fault(&args.fault)?;
    if args.fault == "none" {
        return Err(CliError::Usage(
            "the demo needs a fault other than none".into(),
        ));
    }
    let data_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("ambulance-demo"));
    let cfg = config(&args, &data_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run_demo(args, cfg))
}

async fn run_demo(args: DemoArgs, cfg: ServiceConfig) -> Result<(), CliError> {
    let data_dir = cfg.data_dir.clone();
    let svc = Service::new(cfg)?;
    let mut notices = svc.subscribe();
    let start = SystemTime::now();
    println!("ambulance demo: the ambulance service with three test guests (2 vCPUs, 64 MiB each) on KVM");
    println!("  data directory {}", data_dir.display());
    println!(
        "  {} will get fault {:?} (seed {}) {} ms after it registers; its policy is hold\n",
        NAMES[VICTIM], args.fault, args.seed, args.fault_after_ms
    );
    svc.run()?;

    // Follow the events until the victim's failure is diagnosed and stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failure = None;
    let mut ground_truth = None;
    let entry = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let notice = match tokio::time::timeout(left, notices.recv()).await {
            Ok(Ok(n)) => n,
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Err(RecvError::Closed)) => {
                return Err(CliError::Failed("the service stopped".into()))
            }
            Err(_) => {
                svc.shutdown();
                return Err(CliError::Failed(format!(
                    "{} was not failed and diagnosed within 60 s",
                    NAMES[VICTIM]
                )));
            }
        };
        let event = match notice {
            Notice::Event(e) => e,
            Notice::Diagnosed(entry) if entry.guest == NAMES[VICTIM] => break entry,
            Notice::Diagnosed(_) | Notice::Booted { .. } | Notice::Failure { .. } => continue,
        };
        let is_victim = event.guest_name == NAMES[VICTIM];
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
        if let EventKind::Failure { cause, .. } = &event.kind {
            if is_victim {
                failure = Some(cause.name());
                println!(
                    "  -> {} frozen; diagnosing it in a worker process (read-only RAM descriptor)",
                    NAMES[VICTIM]
                );
            } else {
                svc.shutdown();
                return Err(CliError::Failed(format!(
                    "{} failed ({}) although it had no fault",
                    event.guest_name,
                    cause.name()
                )));
            }
        }
    };

    // The others were never paused: their heartbeats keep advancing.
    println!(
        "\n{} is held frozen after its diagnosis; the others keep running:",
        NAMES[VICTIM]
    );
    let heartbeat = |name: &str| svc.vm(name).and_then(|g| g.heartbeat());
    let survivors: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != VICTIM)
        .map(|(_, n)| *n)
        .collect();
    let before: Vec<Option<u64>> = survivors.iter().map(|n| heartbeat(n)).collect();
    let victim_before = heartbeat(NAMES[VICTIM]);
    let window = Duration::from_secs(1);
    tokio::time::sleep(window).await;
    let mut all_advanced = true;
    for (name, b) in survivors.iter().zip(before) {
        let a = heartbeat(name);
        let advanced = matches!((b, a), (Some(b), Some(a)) if a > b);
        all_advanced &= advanced;
        println!(
            "  {:8} heartbeat {:>7} -> {:>7}  ({:+} in {:.1} s) {}",
            name,
            show(b),
            show(a),
            a.unwrap_or(0) as i64 - b.unwrap_or(0) as i64,
            window.as_secs_f64(),
            if advanced { "running" } else { "NOT ADVANCING" }
        );
    }
    println!(
        "  {:8} heartbeat {:>7} -> {:>7}  (frozen: {})",
        NAMES[VICTIM],
        show(victim_before),
        show(heartbeat(NAMES[VICTIM])),
        failure.unwrap_or("?")
    );
    match (&entry.status, &entry.text) {
        (Status::Ok, Some(text)) => {
            let rendered = std::fs::read_to_string(text)
                .map_err(|e| CliError::Failed(format!("cannot read {}: {e}", text.display())))?;
            println!("\n{rendered}");
            println!("report id:     {}", entry.id);
            if let Some(json) = &entry.json {
                println!("report (JSON): {}", json.display());
            }
            println!("report (text): {}", text.display());
            if let Some(core) = &entry.core {
                println!("ELF core:      {}", core.display());
            }
        }
        _ => println!(
            "\nno report: {}",
            entry.error.as_deref().unwrap_or("diagnosis failed")
        ),
    }
    if let Some(line) = ground_truth {
        println!("\nground truth from the guest: {line}");
    }
    svc.shutdown();
    if entry.status != Status::Ok {
        return Err(CliError::Failed(format!(
            "the diagnosis of {} failed: {}",
            NAMES[VICTIM],
            entry.error.as_deref().unwrap_or("?")
        )));
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
