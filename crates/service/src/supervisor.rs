//! The supervisor: boots the configured guests, follows their events, diagnoses each
//! failure in a worker process (at most `max_parallel_diagnoses` at once, the rest
//! queue), stores the report, alerts, and applies the guest's recovery policy. Only the
//! failed guest is ever frozen; nothing here pauses another.
//!
//! Guests QEMU runs (`kind = "qemu"`) are followed through QMP instead of the VMM: the
//! supervisor connects to each one's QMP socket (retrying while QEMU is not up, and again
//! whenever the connection ends), listens on its registration socket for the Linux
//! agent, and on `GUEST_PANICKED` captures the paused guest (registers from QEMU, its RAM
//! file opened read-only) and diagnoses it through the same worker path. Their policy is
//! `hold` (stay paused) or `restart` (`system_reset`, then run).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ambulance_diagnose::Subject;
use ambulance_qemu::{ConnectOptions, Qmp, RamFile};
use ambulance_report::FailureInfo;
use ambulance_vmm::{Event, EventKind, FailureCause, Guest, GuestState, Vmm};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::alerts::{self, Alert};
use crate::capture::{subject_for, Failure};
use crate::config::{Config, GuestSpec, Image, Kind, Policy, QemuGuest};
use crate::error::{Result, ServiceError};
use crate::metrics::Metrics;
use crate::store::{BootFlag, BootState, Filter, IndexEntry, Reconciled, Status, Store};
use crate::worker::{self, Limits};

/// Which image a guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// Its primary image.
    Primary,
    /// Its maintenance image.
    Maintenance,
    /// Its rescue image.
    Rescue,
}

/// What the supervisor is doing with a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Running (its primary or rescue image).
    Running,
    /// Running its maintenance image; waiting for maintenance-complete.
    Maintenance,
    /// Frozen; waiting for a diagnosis slot.
    Queued,
    /// Frozen; being diagnosed.
    Diagnosing,
    /// Frozen after a failure until an operator releases it (policy `hold`).
    Held,
    /// Not running: destroyed by an operator, or its boot failed.
    Stopped,
}

impl State {
    /// Its name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Maintenance => "maintenance",
            State::Queued => "queued",
            State::Diagnosing => "diagnosing",
            State::Held => "held",
            State::Stopped => "stopped",
        }
    }
}

/// Something that happened, for in-process observers (the demo, benchmarks).
#[derive(Clone, Debug)]
pub enum Notice {
    /// A VMM event.
    Event(Box<Event>),
    /// A diagnosis ended (with or without a report).
    Diagnosed(Box<IndexEntry>),
    /// A guest was booted.
    Booted {
        /// The guest.
        guest: String,
        /// Into which image.
        image: ImageKind,
    },
}

struct Slot {
    spec: GuestSpec,
    guest: Option<Guest>,
    state: State,
    image: ImageKind,
    booted_at: Instant,
    failures: u64,
    last_failure: Option<String>,
    last_report: Option<String>,
    worker_pid: Option<u32>,
    maintenance_deadline: Option<Instant>,
    last_maintenance_status: Option<u32>,
    boot_error: Option<String>,
    /// An operator's diagnosis has the guest frozen.
    operator_diagnosis: bool,
    /// A failure that arrived meanwhile.
    pending: Option<FailureJob>,
    /// A guest QEMU runs: the connection to it.
    qemu: Option<QemuSlot>,
}

/// What the supervisor knows of a guest QEMU runs.
#[derive(Default)]
struct QemuSlot {
    /// The QMP connection, while there is one.
    qmp: Option<Qmp>,
    /// Its RAM file (read-only) and layout, found when connecting.
    ram: Option<Arc<RamFile>>,
    /// vCPUs (`query-cpus-fast`).
    vcpus: u32,
    /// QEMU's pid.
    pid: Option<u32>,
    /// QEMU's version.
    version: Option<String>,
    /// QEMU's run state as last seen.
    run_state: Option<String>,
    /// The Linux agent's registration channel.
    listener: Option<Arc<ambulance_qemu::Listener>>,
}

/// A guest QEMU runs, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct QemuStatus {
    /// Whether the supervisor is connected to its QMP socket.
    pub connected: bool,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// QEMU's run state as last seen (`running`, `paused`, `guest-panicked`, …).
    pub run_state: Option<String>,
    /// QEMU's pid.
    pub pid: Option<u32>,
    /// QEMU's version.
    pub version: Option<String>,
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// RAM bytes.
    pub memory_bytes: Option<u64>,
    /// The RAM file mapped at diagnosis.
    pub memory_file: Option<PathBuf>,
    /// The registration socket, when configured.
    pub registration_socket: Option<PathBuf>,
    /// The Linux agent's latest registration.
    pub registration: Option<QemuRegistration>,
}

/// A Linux agent's registration, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct QemuRegistration {
    /// Guest-physical address of the VMCOREINFO note (`0x…`).
    pub vmcoreinfo: String,
    /// Its buffer's size.
    pub size: u64,
    /// The kernel release.
    pub release: String,
}

/// A guest's status, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GuestStatus {
    /// Its name (the API's id).
    pub name: String,
    /// Who runs it: `vmm` or `qemu`.
    pub kind: Kind,
    /// What the supervisor is doing with it.
    pub state: State,
    /// The image it runs.
    pub image: ImageKind,
    /// Its recovery policy.
    pub policy: Policy,
    /// The persisted boot flag (guests with a rescue image).
    pub boot_flag: Option<BootFlag>,
    /// The VMM's view: running, frozen, stopped.
    pub vmm_state: Option<GuestState>,
    /// Boots of this VM since its image last changed.
    pub generation: Option<u32>,
    /// Its heartbeat counter now.
    pub heartbeat: Option<u64>,
    /// Whether the running kernel registered.
    pub registered: bool,
    /// Failures seen since the daemon started.
    pub failures: u64,
    /// The cause of the last one.
    pub last_failure: Option<String>,
    /// The id of the last diagnosis.
    pub last_report: Option<String>,
    /// The pid of the worker diagnosing it now.
    pub worker_pid: Option<u32>,
    /// The status the maintenance image reported last.
    pub last_maintenance_status: Option<u32>,
    /// Why its last boot failed (a guest QEMU runs: why the supervisor is not attached).
    pub boot_error: Option<String>,
    /// A guest QEMU runs: the connection to it.
    pub qemu: Option<QemuStatus>,
}

/// The running service.
pub struct Service {
    config: Config,
    vmm: Option<Vmm>,
    store: Store,
    slots: Mutex<BTreeMap<String, Slot>>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    alerts: mpsc::UnboundedSender<Alert>,
    notices: broadcast::Sender<Notice>,
    worker_program: PathBuf,
    limits: Limits,
    seq: AtomicU64,
    runtime: tokio::runtime::Handle,
    reconciled: Reconciled,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Service {
    /// Opens the store, the VMM and the alert dispatcher. Guests are booted by
    /// [`Service::run`]. Must be called inside a tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Service>> {
        let (store, reconciled) = Store::open(&config.data_dir)?;
        let vmm_guests = config.guests.iter().any(|g| g.kind() == Kind::Vmm);
        let vmm = match Vmm::new() {
            Ok(v) => Some(v),
            Err(e) if !vmm_guests => {
                tracing::warn!("no VMM ({e}); serving reports and guests QEMU runs only");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let worker_program = match &config.worker.executable {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| {
                ServiceError::io("cannot find this executable", "/proc/self/exe", e)
            })?,
        };
        let metrics = Arc::new(Metrics::default());
        let alerts = alerts::spawn(config.alerts.clone(), metrics.clone());
        let (notices, _) = broadcast::channel(4096);
        let slots = config
            .guests
            .iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    Slot {
                        spec: spec.clone(),
                        guest: None,
                        state: State::Stopped,
                        image: ImageKind::Primary,
                        booted_at: Instant::now(),
                        failures: 0,
                        last_failure: None,
                        last_report: None,
                        worker_pid: None,
                        maintenance_deadline: None,
                        last_maintenance_status: None,
                        boot_error: None,
                        operator_diagnosis: false,
                        pending: None,
                        qemu: spec.qemu.as_ref().map(|_| QemuSlot::default()),
                    },
                )
            })
            .collect();
        Ok(Arc::new(Service {
            limits: Limits {
                address_space_bytes: config.worker.address_space_bytes,
                cpu_seconds: config.worker.cpu_seconds,
                timeout: config.worker.timeout,
            },
            permits: Arc::new(Semaphore::new(config.max_parallel_diagnoses)),
            config,
            vmm,
            store,
            slots: Mutex::new(slots),
            metrics,
            alerts,
            notices,
            worker_program,
            seq: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            reconciled,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The report store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What start-up reconciliation of the store did.
    pub fn reconciled(&self) -> &Reconciled {
        &self.reconciled
    }

    /// Follows what happens (subscribe before [`Service::run`] to see everything).
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Boots every configured guest (each into the image its boot flag names), starts
    /// following VMM events and the policy timer.
    pub fn run(self: &Arc<Self>) -> Result<()> {
        if let Some(vmm) = &self.vmm {
            let events = vmm.events();
            let svc = self.clone();
            std::thread::Builder::new()
                .name("ambulance-events".into())
                .spawn(move || {
                    for e in events.iter() {
                        svc.on_event(e);
                    }
                })
                .map_err(|e| {
                    ServiceError::Invalid(format!("cannot start the event thread: {e}"))
                })?;
        }
        let guests: Vec<(String, Option<QemuGuest>)> = lock(&self.slots)
            .iter()
            .map(|(n, s)| (n.clone(), s.spec.qemu.clone()))
            .collect();
        for (name, qemu) in guests {
            match qemu {
                Some(q) => self.follow_qemu_guest(&name, q)?,
                None => {
                    let image = self.flag_image(&name);
                    self.boot(&name, image);
                }
            }
        }
        let svc = self.clone();
        self.runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let svc = svc.clone();
                let _ = tokio::task::spawn_blocking(move || svc.on_tick()).await;
            }
        });
        Ok(())
    }

    /// Destroys every guest Ambulance runs (guests QEMU runs are left to QEMU).
    pub fn shutdown(&self) {
        for slot in lock(&self.slots).values_mut() {
            if let Some(q) = &mut slot.qemu {
                q.qmp = None;
                q.listener = None;
                continue;
            }
            if let Some(g) = slot.guest.take() {
                g.destroy();
            }
            slot.state = State::Stopped;
        }
    }

    fn flag_image(&self, name: &str) -> ImageKind {
        let has_rescue = lock(&self.slots)
            .get(name)
            .is_some_and(|s| s.spec.rescue.is_some());
        if !has_rescue {
            return ImageKind::Primary;
        }
        match self.store.boot_state(name) {
            Ok(s) if s.flag == BootFlag::Rescue => ImageKind::Rescue,
            Ok(_) => ImageKind::Primary,
            Err(e) => {
                tracing::error!(
                    guest = name,
                    "cannot read the boot flag, booting primary: {e}"
                );
                ImageKind::Primary
            }
        }
    }

    fn image(spec: &GuestSpec, kind: ImageKind) -> &Image {
        match kind {
            ImageKind::Primary => &spec.primary,
            ImageKind::Maintenance => spec
                .maintenance
                .as_ref()
                .map(|m| &m.image)
                .unwrap_or(&spec.primary),
            ImageKind::Rescue => spec
                .rescue
                .as_ref()
                .map(|r| &r.image)
                .unwrap_or(&spec.primary),
        }
    }

    /// Boots `name` into `kind` (restarting the VM when the image stays the same,
    /// replacing it otherwise). Failures leave the guest stopped with `boot_error`.
    fn boot(&self, name: &str, kind: ImageKind) {
        let Some(vmm) = &self.vmm else { return };
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        if slot.qemu.is_some() {
            return;
        }
        let outcome = match slot.guest.take() {
            Some(g) if slot.image == kind => g.restart().map(|()| g),
            old => {
                if let Some(g) = old {
                    g.destroy();
                }
                let cfg = slot.spec.vmm_config(Self::image(&slot.spec, kind));
                vmm.start(cfg)
            }
        };
        match outcome {
            Ok(g) => {
                slot.guest = Some(g);
                slot.image = kind;
                slot.booted_at = Instant::now();
                slot.boot_error = None;
                slot.state = if kind == ImageKind::Maintenance {
                    State::Maintenance
                } else {
                    State::Running
                };
                slot.maintenance_deadline = (kind == ImageKind::Maintenance).then(|| {
                    Instant::now()
                        + slot
                            .spec
                            .maintenance
                            .as_ref()
                            .map(|m| m.timeout)
                            .unwrap_or(Duration::from_secs(30))
                });
                tracing::info!(guest = name, image = ?kind, "guest booted");
                let _ = self.notices.send(Notice::Booted {
                    guest: name.to_string(),
                    image: kind,
                });
            }
            Err(e) => {
                slot.state = State::Stopped;
                slot.boot_error = Some(e.to_string());
                tracing::error!(guest = name, image = ?kind, "cannot boot guest: {e}");
            }
        }
    }

    fn slot_of_event(&self, e: &Event) -> Option<String> {
        lock(&self.slots).iter().find_map(|(name, s)| {
            let g = s.guest.as_ref()?;
            (g.id() == e.guest && g.generation() == e.generation).then(|| name.clone())
        })
    }

    fn on_event(self: &Arc<Self>, e: Event) {
        let name = self.slot_of_event(&e);
        match (&e.kind, &name) {
            (
                EventKind::Failure {
                    cause,
                    vcpu,
                    detail,
                    frozen,
                },
                Some(name),
            ) => {
                let job = (|| {
                    let mut slots = lock(&self.slots);
                    let slot = slots.get_mut(name)?;
                    let guest = slot.guest.clone()?;
                    let failure = Failure {
                        cause,
                        vcpu: *vcpu,
                        detail,
                        frozen,
                        time: e.time,
                    };
                    let job = FailureJob {
                        name: name.clone(),
                        cause: cause.name().to_string(),
                        subject: subject_for(&guest, &failure),
                        memory: JobMemory::Vmm(guest),
                        freeze_us: frozen.freeze_latency_us,
                        operator: false,
                    };
                    if slot.operator_diagnosis {
                        // An operator's diagnosis has it frozen; handled when that ends.
                        slot.failures += 1;
                        slot.last_failure = Some(cause.name().to_string());
                        slot.pending = Some(job);
                        None
                    } else if !matches!(slot.state, State::Running | State::Maintenance) {
                        tracing::warn!(
                            guest = name,
                            state = slot.state.name(),
                            cause = cause.name(),
                            "failure while not running; not diagnosed again"
                        );
                        None
                    } else {
                        slot.state = State::Queued;
                        slot.failures += 1;
                        slot.last_failure = Some(cause.name().to_string());
                        Some(job)
                    }
                })();
                self.metrics.failure(cause.name());
                if let Some(job) = job {
                    let svc = self.clone();
                    self.runtime.spawn(async move {
                        svc.handle_failure(job).await;
                    });
                }
            }
            (EventKind::MaintenanceComplete { status }, Some(name)) => {
                let in_maintenance = lock(&self.slots).get_mut(name).is_some_and(|slot| {
                    slot.last_maintenance_status = Some(*status);
                    slot.state == State::Maintenance
                });
                if in_maintenance {
                    tracing::info!(
                        guest = name,
                        status,
                        "maintenance complete; booting the primary image"
                    );
                    let (svc, name) = (self.clone(), name.clone());
                    self.runtime
                        .spawn_blocking(move || svc.boot(&name, ImageKind::Primary));
                }
            }
            _ => {}
        }
        let _ = self.notices.send(Notice::Event(Box::new(e)));
    }

    async fn handle_failure(self: Arc<Self>, job: FailureJob) {
        let permit = self.permits.clone().acquire_owned().await;
        let svc = self.clone();
        let name = job.name.clone();
        let cause = job.cause.clone();
        let operator = job.operator;
        let qemu = matches!(job.memory, JobMemory::Qemu { .. });
        let outcome = tokio::task::spawn_blocking(move || {
            let entry = svc.diagnose_and_store(&job);
            drop(permit);
            entry
        })
        .await;
        let entry = match outcome {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(guest = name, "the diagnosis task ended abnormally: {e}");
                return;
            }
        };
        self.after_diagnosis(&name, &cause, entry.as_ref(), operator);
        if operator {
            return;
        }
        if qemu {
            self.apply_qemu_policy(&name).await;
        } else {
            let svc = self.clone();
            let _ = tokio::task::spawn_blocking(move || svc.apply_policy(&name)).await;
        }
    }

    /// Runs the worker and stores what comes out; a failed diagnosis is stored as such.
    fn diagnose_and_store(&self, job: &FailureJob) -> Option<IndexEntry> {
        let started = Instant::now();
        let spec_image = {
            let mut slots = lock(&self.slots);
            let slot = slots.get_mut(&job.name)?;
            slot.state = State::Diagnosing;
            let debuginfo = match &slot.spec.qemu {
                Some(q) => q.debuginfo.clone(),
                None => Some(Self::image(&slot.spec, slot.image).debuginfo_path()),
            };
            (debuginfo, slot.spec.rules.clone(), slot.spec.core)
        };
        let (debuginfo, rules, want_core) = spec_image;
        let subject = &job.subject;
        let time = subject.failure.time.clone();
        let core_tmp = want_core.then(|| {
            self.store.dir().join(format!(
                "pending-{}-{}.core.tmp",
                std::process::id(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            ))
        });
        let result: std::result::Result<ambulance_report::Report, String> = (|| {
            let (file, regions): (File, Vec<(u64, u64, u64)>) = match &job.memory {
                JobMemory::Vmm(guest) => {
                    let export = guest
                        .memory_export()
                        .map_err(|e| format!("cannot export guest RAM: {e}"))?;
                    let regions = export
                        .regions
                        .iter()
                        .map(|r| (r.gpa, r.size, r.file_offset))
                        .collect();
                    (export.file, regions)
                }
                JobMemory::Qemu { ram } => (
                    ram.file
                        .try_clone()
                        .map_err(|e| format!("cannot pass the guest RAM file on: {e}"))?,
                    ram.regions(),
                ),
            };
            let request = worker::Request {
                regions,
                guest: subject.guest.clone(),
                failure: subject.failure.clone(),
                vcpus: subject.vcpus.clone(),
                descriptor_gpa: subject.descriptor_gpa,
                descriptor_bytes: subject.descriptor_bytes.clone(),
                debuginfo,
                rules,
                core_path: core_tmp.clone(),
                timeline: vec![ambulance_report::Phase {
                    name: "freeze".into(),
                    duration_us: job.freeze_us,
                }],
                vmcoreinfo: subject.vmcoreinfo.clone(),
                vmcoreinfo_origin: subject.vmcoreinfo_origin.clone(),
            };
            worker::run(&self.worker_program, &self.limits, &request, &file, |pid| {
                if let Some(s) = lock(&self.slots).get_mut(&job.name) {
                    s.worker_pid = Some(pid);
                }
            })
        })();
        if let Some(s) = lock(&self.slots).get_mut(&job.name) {
            s.worker_pid = None;
        }
        let stored = match result {
            Ok(mut report) => {
                let t = Instant::now();
                let entry = self.store.store_report(&mut report, core_tmp.as_deref());
                tracing::debug!(us = t.elapsed().as_micros() as u64, "report stored");
                entry.or_else(|e| {
                    self.store.store_failure(
                        &job.name,
                        &job.cause,
                        &time,
                        &format!("cannot store the report: {e}"),
                    )
                })
            }
            Err(why) => {
                if let Some(p) = &core_tmp {
                    let _ = std::fs::remove_file(p);
                }
                self.store.store_failure(&job.name, &job.cause, &time, &why)
            }
        };
        match stored {
            Ok(entry) => {
                self.metrics
                    .diagnosis(started.elapsed(), entry.status == Status::Ok);
                if let Some(s) = lock(&self.slots).get_mut(&job.name) {
                    s.last_report = Some(entry.id.clone());
                }
                let _ = self
                    .notices
                    .send(Notice::Diagnosed(Box::new(entry.clone())));
                Some(entry)
            }
            Err(e) => {
                self.metrics.diagnosis(started.elapsed(), false);
                tracing::error!(guest = job.name, "cannot record the diagnosis: {e}");
                None
            }
        }
    }

    fn after_diagnosis(&self, name: &str, cause: &str, entry: Option<&IndexEntry>, operator: bool) {
        let policy = lock(&self.slots)
            .get(name)
            .map(|s| s.spec.policy.name())
            .unwrap_or("-");
        let Some(entry) = entry else { return };
        let worst = entry.severity.worst.map(|s| s.to_string());
        tracing::warn!(
            guest = name,
            cause,
            report = entry.id,
            status = ?entry.status,
            worst = worst.as_deref().unwrap_or("none"),
            error = entry.error.as_deref().unwrap_or(""),
            policy = if operator { "resume" } else { policy },
            "guest failure diagnosed"
        );
        if operator {
            return;
        }
        let base = self
            .config
            .alerts
            .report_base_url
            .clone()
            .unwrap_or_else(|| match self.config.api.tcp {
                Some(a) => format!("http://{a}"),
                None => format!("unix:{}:", self.config.api.socket.display()),
            });
        let _ = self.alerts.send(Alert {
            guest: name.to_string(),
            cause: cause.to_string(),
            time: entry.time.clone(),
            report_id: entry.id.clone(),
            report_url: format!("{}/v1/reports/{}", base.trim_end_matches('/'), entry.id),
            status: match entry.status {
                Status::Ok => "ok".into(),
                Status::DiagnosisFailed => "diagnosis_failed".into(),
            },
            error: entry.error.clone(),
            worst,
            policy: policy.to_string(),
        });
    }

    fn apply_policy(&self, name: &str) {
        let Some((policy, has_rescue, image)) = lock(&self.slots)
            .get(name)
            .map(|s| (s.spec.policy, s.spec.rescue.clone(), s.image))
        else {
            return;
        };
        match policy {
            Policy::Restart => self.boot(name, ImageKind::Primary),
            // The maintenance image itself failed: go back to the primary image.
            Policy::Maintenance if image == ImageKind::Maintenance => {
                tracing::warn!(
                    guest = name,
                    "the maintenance image failed; booting the primary image"
                );
                self.boot(name, ImageKind::Primary)
            }
            Policy::Maintenance => self.boot(name, ImageKind::Maintenance),
            Policy::Hold => {
                if let Some(s) = lock(&self.slots).get_mut(name) {
                    s.state = State::Held;
                }
                tracing::info!(
                    guest = name,
                    "guest held frozen for forensics; release it to go on"
                );
            }
            Policy::Rescue => {
                let Some(rescue) = has_rescue else {
                    return self.boot(name, ImageKind::Primary);
                };
                let mut state = self.store.boot_state(name).unwrap_or_default();
                let now = now_ms();
                let window = rescue.window.as_millis() as u64;
                state.failures.push(now);
                state.failures.retain(|&t| now.saturating_sub(t) <= window);
                if state.flag == BootFlag::Primary && state.failures.len() as u32 >= rescue.failures
                {
                    state.flag = BootFlag::Rescue;
                    state.reason =
                        format!("{} failures within {} ms", state.failures.len(), window);
                    tracing::warn!(
                        guest = name,
                        reason = state.reason,
                        "boot flag flipped to rescue"
                    );
                }
                if let Err(e) = self.store.set_boot_state(name, &state) {
                    tracing::error!(guest = name, "cannot persist the boot flag: {e}");
                }
                let image = match state.flag {
                    BootFlag::Primary => ImageKind::Primary,
                    BootFlag::Rescue => ImageKind::Rescue,
                };
                self.boot(name, image);
            }
        }
    }

    fn on_tick(&self) {
        let now = Instant::now();
        let mut to_primary = Vec::new();
        for (name, s) in lock(&self.slots).iter() {
            if s.state == State::Maintenance && s.maintenance_deadline.is_some_and(|d| now >= d) {
                tracing::warn!(
                    guest = name,
                    "the maintenance image did not complete in time; booting the primary image"
                );
                to_primary.push((name.clone(), false));
            }
            let healthy = s
                .spec
                .rescue
                .as_ref()
                .and_then(|r| r.healthy_period)
                .is_some_and(|p| now.duration_since(s.booted_at) >= p);
            if s.state == State::Running && s.image == ImageKind::Rescue && healthy {
                tracing::info!(
                    guest = name,
                    "healthy on the rescue image for its healthy period; flipping back to primary"
                );
                to_primary.push((name.clone(), true));
            }
        }
        for (name, flip) in to_primary {
            if flip {
                let state = BootState {
                    flag: BootFlag::Primary,
                    failures: Vec::new(),
                    reason: "healthy period on the rescue image".into(),
                };
                if let Err(e) = self.store.set_boot_state(&name, &state) {
                    tracing::error!(guest = name, "cannot persist the boot flag: {e}");
                    continue;
                }
            }
            self.boot(&name, ImageKind::Primary);
        }
    }

    // -----------------------------------------------------------------------------------
    // Operator requests.

    /// Every guest's status.
    pub fn guests(&self) -> Vec<GuestStatus> {
        let names: Vec<String> = lock(&self.slots).keys().cloned().collect();
        names.iter().filter_map(|n| self.guest(n)).collect()
    }

    /// One guest's status.
    pub fn guest(&self, name: &str) -> Option<GuestStatus> {
        let (status, has_rescue) = {
            let slots = lock(&self.slots);
            let s = slots.get(name)?;
            let g = s.guest.as_ref();
            let qemu = s.qemu.as_ref().zip(s.spec.qemu.as_ref()).map(|(q, spec)| {
                let registration = q.listener.as_ref().and_then(|l| l.latest());
                QemuStatus {
                    connected: q.qmp.as_ref().is_some_and(|c| !c.is_closed()),
                    qmp: spec.qmp.clone(),
                    run_state: q.run_state.clone(),
                    pid: q.pid,
                    version: q.version.clone(),
                    vcpus: q.ram.as_ref().map(|_| q.vcpus),
                    memory_bytes: q.ram.as_ref().map(|r| r.layout.size),
                    memory_file: q.ram.as_ref().map(|r| r.path.clone()),
                    registration_socket: spec.registration.clone(),
                    registration: registration.map(|r| QemuRegistration {
                        vmcoreinfo: format!("{:#x}", r.vmcoreinfo_pa),
                        size: r.vmcoreinfo_size,
                        release: r.release,
                    }),
                }
            });
            (
                GuestStatus {
                    name: name.to_string(),
                    kind: s.spec.kind(),
                    state: s.state,
                    image: s.image,
                    policy: s.spec.policy,
                    boot_flag: None,
                    vmm_state: g.map(Guest::state),
                    generation: g.map(Guest::generation),
                    heartbeat: g.and_then(Guest::heartbeat),
                    registered: g.is_some_and(|g| g.registration().is_some())
                        || qemu.as_ref().is_some_and(|q| q.registration.is_some()),
                    failures: s.failures,
                    last_failure: s.last_failure.clone(),
                    last_report: s.last_report.clone(),
                    worker_pid: s.worker_pid,
                    last_maintenance_status: s.last_maintenance_status,
                    boot_error: s.boot_error.clone(),
                    qemu,
                },
                s.spec.rescue.is_some(),
            )
        };
        let boot_flag = has_rescue
            .then(|| self.store.boot_state(name).map(|b| b.flag).ok())
            .flatten();
        Some(GuestStatus {
            boot_flag,
            ..status
        })
    }

    /// Guests by state, for metrics.
    pub fn guests_by_state(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for s in lock(&self.slots).values() {
            *m.entry(s.state.name()).or_default() += 1;
        }
        m
    }

    /// Reports stored (with a report), for metrics.
    pub fn reports_stored(&self) -> u64 {
        self.store
            .list(&Filter::default())
            .map(|l| l.iter().filter(|e| e.status == Status::Ok).count() as u64)
            .unwrap_or(0)
    }

    /// An operator's diagnosis of a running guest: freeze it, diagnose, resume it.
    pub async fn diagnose_now(self: &Arc<Self>, name: &str) -> Result<IndexEntry> {
        let guest = {
            let mut slots = lock(&self.slots);
            let s = slots
                .get_mut(name)
                .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))?;
            if s.state != State::Running {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} is {}; only a running guest can be diagnosed on request",
                    s.state.name()
                )));
            }
            if s.qemu.is_some() {
                s.state = State::Queued;
                s.operator_diagnosis = true;
                None
            } else {
                let g = s
                    .guest
                    .clone()
                    .ok_or_else(|| ServiceError::Conflict(format!("guest {name} has no VM")))?;
                s.state = State::Queued;
                s.operator_diagnosis = true;
                Some(g)
            }
        };
        let Some(guest) = guest else {
            return self.diagnose_qemu_now(name).await;
        };
        let permit = self.permits.clone().acquire_owned().await;
        let svc = self.clone();
        let name = name.to_string();
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let frozen = match guest.freeze() {
                Ok(f) => f,
                Err(e) => {
                    svc.end_operator_diagnosis(&name);
                    return Err(ServiceError::from(e));
                }
            };
            let summary = frozen.summary();
            let failure = Failure {
                cause: &FailureCause::Operator,
                vcpu: None,
                detail: "operator request",
                frozen: &summary,
                time: SystemTime::now(),
            };
            let job = FailureJob {
                name: name.clone(),
                cause: "operator".into(),
                subject: subject_for(&guest, &failure),
                memory: JobMemory::Vmm(guest.clone()),
                freeze_us: summary.freeze_latency_us,
                operator: true,
            };
            let entry = svc.diagnose_and_store(&job);
            svc.after_diagnosis(&name, "operator", entry.as_ref(), true);
            svc.end_operator_diagnosis(&name);
            if svc.guest(&name).is_some_and(|g| g.state == State::Running) {
                guest.resume()?;
            }
            entry.ok_or_else(|| {
                ServiceError::Diagnosis("the diagnosis could not be recorded".into())
            })
        })
        .await
        .map_err(|e| {
            ServiceError::Diagnosis(format!("the diagnosis task ended abnormally: {e}"))
        })?;
        outcome
    }

    /// Ends an operator's diagnosis: the guest runs again, unless it failed meanwhile —
    /// then that failure is handled now (diagnosis, policy) and it stays frozen.
    fn end_operator_diagnosis(self: &Arc<Self>, name: &str) {
        let pending = {
            let mut slots = lock(&self.slots);
            let Some(s) = slots.get_mut(name) else { return };
            s.operator_diagnosis = false;
            let pending = s.pending.take();
            s.state = if pending.is_some() {
                State::Queued
            } else {
                State::Running
            };
            pending
        };
        if let Some(job) = pending {
            let svc = self.clone();
            self.runtime
                .spawn(async move { svc.handle_failure(job).await });
        }
    }

    /// Releases a held guest: `restart` boots it again (into the image its boot flag
    /// names), `destroy` frees its VM.
    pub async fn release(self: &Arc<Self>, name: &str, destroy: bool) -> Result<GuestStatus> {
        let qemu = {
            let mut slots = lock(&self.slots);
            let s = slots
                .get_mut(name)
                .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))?;
            if s.state != State::Held {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} is {}, not held; only a held guest can be released",
                    s.state.name()
                )));
            }
            let qemu = s.qemu.is_some();
            if destroy && !qemu {
                if let Some(g) = s.guest.take() {
                    g.destroy();
                }
                s.state = State::Stopped;
                tracing::info!(guest = name, "held guest released: destroyed");
            }
            qemu
        };
        if qemu {
            return self.release_qemu(name, destroy).await;
        }
        if !destroy {
            tracing::info!(guest = name, "held guest released: restarting");
            let (svc, n) = (self.clone(), name.to_string());
            tokio::task::spawn_blocking(move || {
                let image = svc.flag_image(&n);
                svc.boot(&n, image)
            })
            .await
            .map_err(|e| {
                ServiceError::Conflict(format!("the restart task ended abnormally: {e}"))
            })?;
        }
        self.guest(name)
            .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))
    }

    /// Sets a guest's persisted boot flag and, when it is running, reboots it into the
    /// image the flag names.
    pub async fn set_boot_flag(
        self: &Arc<Self>,
        name: &str,
        flag: BootFlag,
    ) -> Result<GuestStatus> {
        let running = {
            let slots = lock(&self.slots);
            let s = slots
                .get(name)
                .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))?;
            if s.spec.rescue.is_none() {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} has no rescue image configured; its boot flag cannot change"
                )));
            }
            s.state == State::Running
        };
        self.store.set_boot_state(
            name,
            &BootState {
                flag,
                failures: Vec::new(),
                reason: "operator".into(),
            },
        )?;
        tracing::info!(guest = name, ?flag, "boot flag set by an operator");
        if running {
            let (svc, n) = (self.clone(), name.to_string());
            let image = match flag {
                BootFlag::Primary => ImageKind::Primary,
                BootFlag::Rescue => ImageKind::Rescue,
            };
            tokio::task::spawn_blocking(move || svc.boot(&n, image))
                .await
                .map_err(|e| {
                    ServiceError::Conflict(format!("the reboot task ended abnormally: {e}"))
                })?;
        }
        self.guest(name)
            .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))
    }

    /// The VMM handle of a guest (for in-process observers).
    pub fn vm(&self, name: &str) -> Option<Guest> {
        lock(&self.slots).get(name)?.guest.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Guests QEMU runs.

/// How long to wait between attempts to reach a guest's QMP socket.
const QEMU_RETRY: Duration = Duration::from_secs(1);

impl Service {
    /// Starts following a guest QEMU runs: its registration socket now, its QMP socket
    /// from a task that reconnects for as long as the service runs.
    fn follow_qemu_guest(self: &Arc<Self>, name: &str, spec: QemuGuest) -> Result<()> {
        if let Some(path) = &spec.registration {
            let listener = ambulance_qemu::Listener::bind(path)
                .map_err(|e| ServiceError::Invalid(format!("guest {name}: {e}")))?;
            if let Some(q) = lock(&self.slots)
                .get_mut(name)
                .and_then(|s| s.qemu.as_mut())
            {
                q.listener = Some(Arc::new(listener));
            }
        }
        let svc = self.clone();
        let name = name.to_string();
        self.runtime
            .spawn(async move { svc.watch_qemu(name, spec).await });
        Ok(())
    }

    /// Connects, follows events until the connection ends, and starts again.
    async fn watch_qemu(self: Arc<Self>, name: String, spec: QemuGuest) {
        let mut last_error: Option<String> = None;
        loop {
            match self.attach_qemu(&name, &spec).await {
                Ok(events) => {
                    last_error = None;
                    self.follow_qemu_events(&name, events).await;
                    tracing::warn!(guest = name, qmp = %spec.qmp.display(), "QEMU's QMP connection ended; reconnecting");
                    if let Some(s) = lock(&self.slots).get_mut(&name) {
                        if let Some(q) = &mut s.qemu {
                            q.qmp = None;
                            q.run_state = None;
                        }
                        if matches!(s.state, State::Running | State::Held) {
                            s.state = State::Stopped;
                        }
                        s.boot_error = Some("QEMU's QMP connection ended".into());
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    if last_error.as_deref() != Some(why.as_str()) {
                        tracing::warn!(guest = name, "cannot attach to QEMU (retrying): {why}");
                    }
                    if let Some(s) = lock(&self.slots).get_mut(&name) {
                        s.boot_error = Some(why.clone());
                    }
                    last_error = Some(why);
                }
            }
            tokio::time::sleep(QEMU_RETRY).await;
        }
    }

    /// Connects to QEMU, finds and checks the guest's RAM file, and records the guest as
    /// running (or handles a panic that happened while nobody watched).
    async fn attach_qemu(
        self: &Arc<Self>,
        name: &str,
        spec: &QemuGuest,
    ) -> ambulance_qemu::Result<ambulance_qemu::Events> {
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(10),
        };
        let (qmp, events) = Qmp::connect(&spec.qmp, options).await?;
        let ram = RamFile::discover(&qmp, spec.memory_file.as_deref()).await?;
        let vcpus = qmp.query_cpus().await?.len() as u32;
        let status = qmp.query_status().await?;
        tracing::info!(
            guest = name,
            qemu = qmp.version(),
            pid = qmp.peer_pid().unwrap_or(0),
            vcpus,
            memory_bytes = ram.layout.size,
            memory_file = %ram.path.display(),
            run_state = status.status,
            "attached to QEMU"
        );
        let panicked_unseen = {
            let mut slots = lock(&self.slots);
            let Some(s) = slots.get_mut(name) else {
                return Ok(events);
            };
            let q = s.qemu.get_or_insert_with(QemuSlot::default);
            q.qmp = Some(qmp);
            q.ram = Some(Arc::new(ram));
            q.vcpus = vcpus;
            q.pid = q.qmp.as_ref().and_then(Qmp::peer_pid);
            q.version = q.qmp.as_ref().map(|c| c.version().to_string());
            q.run_state = Some(status.status.clone());
            s.boot_error = None;
            let panicked = status.status == "guest-panicked";
            if s.state == State::Held && panicked {
                false
            } else {
                s.state = State::Running;
                s.booted_at = Instant::now();
                panicked
            }
        };
        if panicked_unseen {
            let detail = "the guest had panicked when Ambulance attached to QEMU".to_string();
            let failure = qemu_failure("panic", detail, BTreeMap::new(), SystemTime::now());
            let svc = self.clone();
            let name = name.to_string();
            self.runtime
                .spawn(async move { svc.on_qemu_failure(&name, failure).await });
        }
        Ok(events)
    }

    async fn follow_qemu_events(self: &Arc<Self>, name: &str, mut events: ambulance_qemu::Events) {
        while let Some(e) = events.next().await {
            tracing::debug!(guest = name, event = e.name, data = %e.data, "QEMU event");
            let run_state = match e.name.as_str() {
                "STOP" => Some("paused"),
                "RESUME" => Some("running"),
                "GUEST_PANICKED" => Some("guest-panicked"),
                "SHUTDOWN" => Some("shutdown"),
                _ => None,
            };
            let listener = match lock(&self.slots)
                .get_mut(name)
                .and_then(|s| s.qemu.as_mut())
            {
                Some(q) => {
                    if let Some(st) = run_state {
                        q.run_state = Some(st.to_string());
                    }
                    q.listener.clone()
                }
                None => None,
            };
            match e.name.as_str() {
                "GUEST_PANICKED" => {
                    let data: BTreeMap<String, serde_json::Value> = match &e.data {
                        serde_json::Value::Object(m) => {
                            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                        }
                        _ => BTreeMap::new(),
                    };
                    let action = data
                        .get("action")
                        .and_then(|a| a.as_str())
                        .unwrap_or("?")
                        .to_string();
                    let failure = qemu_failure(
                        "panic",
                        format!("QEMU reported GUEST_PANICKED (action {action})"),
                        data,
                        e.time,
                    );
                    let svc = self.clone();
                    let name = name.to_string();
                    self.runtime
                        .spawn(async move { svc.on_qemu_failure(&name, failure).await });
                }
                "RESET" => {
                    // A new boot registers anew.
                    if let Some(l) = listener {
                        l.forget();
                    }
                }
                _ => {}
            }
        }
    }

    /// A guest QEMU runs failed: capture it and queue its diagnosis (or keep it for
    /// after an operator's diagnosis that has it frozen).
    async fn on_qemu_failure(self: Arc<Self>, name: &str, failure: FailureInfo) {
        self.metrics.failure(&failure.cause);
        {
            let mut slots = lock(&self.slots);
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            slot.failures += 1;
            slot.last_failure = Some(failure.cause.clone());
            if !slot.operator_diagnosis {
                if slot.state != State::Running {
                    tracing::warn!(
                        guest = name,
                        state = slot.state.name(),
                        cause = failure.cause,
                        "failure while not running; not diagnosed again"
                    );
                    return;
                }
                slot.state = State::Queued;
            }
        }
        let cause = failure.cause.clone();
        let time = failure.time.clone();
        let job = match self.capture_qemu(name, failure, false).await {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(guest = name, "cannot capture the guest for diagnosis: {e}");
                let entry = self.store.store_failure(
                    name,
                    &cause,
                    &time,
                    &format!("cannot capture the guest: {e}"),
                );
                let entry = entry.ok();
                if let Some(e) = &entry {
                    if let Some(s) = lock(&self.slots).get_mut(name) {
                        s.last_report = Some(e.id.clone());
                    }
                }
                self.after_diagnosis(name, &cause, entry.as_ref(), false);
                self.apply_qemu_policy(name).await;
                return;
            }
        };
        let pending = {
            let mut slots = lock(&self.slots);
            match slots.get_mut(name) {
                Some(s) if s.operator_diagnosis => {
                    s.pending = Some(job);
                    None
                }
                _ => Some(job),
            }
        };
        if let Some(job) = pending {
            self.handle_failure(job).await;
        }
    }

    /// Freezes a guest QEMU runs (`stop`, unless already paused), takes its registers,
    /// and reads the Linux agent's registered VMCOREINFO note out of its RAM.
    async fn capture_qemu(
        &self,
        name: &str,
        failure: FailureInfo,
        operator: bool,
    ) -> std::result::Result<FailureJob, String> {
        let (qmp, ram, vcpus, pid, listener) = {
            let slots = lock(&self.slots);
            let q = slots
                .get(name)
                .and_then(|s| s.qemu.as_ref())
                .ok_or("not a guest QEMU runs")?;
            (
                q.qmp.clone().ok_or("not connected to QEMU")?,
                q.ram.clone().ok_or("its RAM file is not known")?,
                q.vcpus,
                q.pid,
                q.listener.clone(),
            )
        };
        let t = Instant::now();
        let status = qmp.query_status().await.map_err(|e| e.to_string())?;
        if status.running {
            qmp.stop().await.map_err(|e| e.to_string())?;
        }
        let registers = qmp.registers().await.map_err(|e| e.to_string())?;
        let freeze_us = t.elapsed().as_micros() as u64;
        let registration = listener.as_ref().and_then(|l| l.latest());
        let vmcoreinfo = match &registration {
            Some(r) => {
                let ram = ram.clone();
                let r2 = r.clone();
                match tokio::task::spawn_blocking(move || {
                    let mem = ram.map().map_err(|e| e.to_string())?;
                    ambulance_qemu::registration::vmcoreinfo_text(&mem, &r2)
                        .map_err(|e| e.to_string())
                })
                .await
                {
                    Ok(Ok(text)) => Some(text),
                    Ok(Err(e)) => {
                        tracing::warn!(guest = name, "the registered VMCOREINFO is unusable, falling back to a RAM scan: {e}");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(
                            guest = name,
                            "reading the registered VMCOREINFO ended abnormally: {e}"
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let subject = Subject {
            guest: ambulance_report::GuestInfo {
                name: name.to_string(),
                id: u64::from(pid.unwrap_or(0)),
                generation: 0,
                memory_bytes: ram.layout.size,
                vcpus,
            },
            failure,
            vcpus: registers,
            descriptor_gpa: None,
            descriptor_bytes: None,
            vmcoreinfo_origin: vmcoreinfo.as_ref().map(|_| "registration".to_string()),
            vmcoreinfo,
        };
        Ok(FailureJob {
            name: name.to_string(),
            cause: subject.failure.cause.clone(),
            subject,
            memory: JobMemory::Qemu { ram },
            freeze_us,
            operator,
        })
    }

    /// The policy of a guest QEMU runs: `hold` leaves it paused; `restart` resets it and
    /// runs it again.
    async fn apply_qemu_policy(&self, name: &str) {
        let Some(policy) = lock(&self.slots).get(name).map(|s| s.spec.policy) else {
            return;
        };
        match policy {
            Policy::Restart => {
                if let Err(e) = self.restart_qemu(name).await {
                    tracing::error!(guest = name, "cannot restart the guest: {e}");
                    if let Some(s) = lock(&self.slots).get_mut(name) {
                        s.state = State::Held;
                        s.boot_error = Some(format!("restart failed: {e}"));
                    }
                }
            }
            _ => {
                if let Some(s) = lock(&self.slots).get_mut(name) {
                    s.state = State::Held;
                }
                tracing::info!(
                    guest = name,
                    "guest held paused for forensics; release it to go on"
                );
            }
        }
    }

    /// `system_reset`, then — once QEMU has left the panicked state — `cont`.
    async fn restart_qemu(&self, name: &str) -> std::result::Result<(), String> {
        let (qmp, listener) = {
            let slots = lock(&self.slots);
            let q = slots
                .get(name)
                .and_then(|s| s.qemu.as_ref())
                .ok_or("not a guest QEMU runs")?;
            (
                q.qmp.clone().ok_or("not connected to QEMU")?,
                q.listener.clone(),
            )
        };
        qmp.system_reset().await.map_err(|e| e.to_string())?;
        if let Some(l) = listener {
            l.forget();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = qmp.query_status().await.map_err(|e| match e {
                ambulance_qemu::Error::Closed { .. } => format!(
                    "QEMU exited on system_reset (was it started with -no-reboot or -action reboot=shutdown?): {e}"
                ),
                e => e.to_string(),
            })?;
            if st.running {
                break;
            }
            if !matches!(
                st.status.as_str(),
                "guest-panicked" | "internal-error" | "shutdown"
            ) {
                qmp.cont().await.map_err(|e| e.to_string())?;
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("QEMU still says {} after system_reset", st.status));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(s) = lock(&self.slots).get_mut(name) {
            s.state = State::Running;
            s.booted_at = Instant::now();
            s.boot_error = None;
        }
        tracing::info!(guest = name, "guest reset and running again");
        Ok(())
    }

    /// An operator's diagnosis of a running guest QEMU runs: pause, diagnose, resume.
    async fn diagnose_qemu_now(self: &Arc<Self>, name: &str) -> Result<IndexEntry> {
        let permit = self.permits.clone().acquire_owned().await;
        let failure = qemu_failure(
            "operator",
            "operator request".into(),
            BTreeMap::new(),
            SystemTime::now(),
        );
        let job = match self.capture_qemu(name, failure, true).await {
            Ok(job) => job,
            Err(e) => {
                self.end_operator_diagnosis(name);
                return Err(ServiceError::Diagnosis(format!(
                    "cannot capture guest {name}: {e}"
                )));
            }
        };
        let svc = self.clone();
        let entry = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            svc.diagnose_and_store(&job)
        })
        .await
        .map_err(|e| {
            ServiceError::Diagnosis(format!("the diagnosis task ended abnormally: {e}"))
        })?;
        self.after_diagnosis(name, "operator", entry.as_ref(), true);
        self.end_operator_diagnosis(name);
        let resume = self.guest(name).is_some_and(|g| g.state == State::Running);
        if resume {
            let qmp = lock(&self.slots)
                .get(name)
                .and_then(|s| s.qemu.as_ref())
                .and_then(|q| q.qmp.clone());
            if let Some(qmp) = qmp {
                qmp.cont().await.map_err(|e| {
                    ServiceError::Diagnosis(format!("cannot resume guest {name}: {e}"))
                })?;
            }
        }
        entry.ok_or_else(|| ServiceError::Diagnosis("the diagnosis could not be recorded".into()))
    }

    /// Releases a held guest QEMU runs: `restart` resets it and runs it again, `destroy`
    /// asks QEMU to quit.
    async fn release_qemu(self: &Arc<Self>, name: &str, destroy: bool) -> Result<GuestStatus> {
        if destroy {
            let qmp = lock(&self.slots)
                .get(name)
                .and_then(|s| s.qemu.as_ref())
                .and_then(|q| q.qmp.clone());
            if let Some(qmp) = qmp {
                qmp.quit()
                    .await
                    .map_err(|e| ServiceError::Conflict(format!("cannot stop QEMU: {e}")))?;
            }
            if let Some(s) = lock(&self.slots).get_mut(name) {
                s.state = State::Stopped;
            }
            tracing::info!(guest = name, "held guest released: QEMU asked to quit");
        } else {
            tracing::info!(guest = name, "held guest released: resetting");
            self.restart_qemu(name)
                .await
                .map_err(|e| ServiceError::Conflict(format!("cannot restart guest {name}: {e}")))?;
        }
        self.guest(name)
            .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))
    }
}

/// The report's view of a failure of a guest QEMU runs.
fn qemu_failure(
    cause: &str,
    detail: String,
    data: BTreeMap<String, serde_json::Value>,
    time: SystemTime,
) -> FailureInfo {
    FailureInfo {
        cause: cause.to_string(),
        detail,
        time: ambulance_diagnose::rfc3339(time),
        vcpu: None,
        data,
    }
}

/// A frozen guest waiting for (or in) its diagnosis.
struct FailureJob {
    name: String,
    /// The failure cause's name.
    cause: String,
    /// Everything known about the guest and the failure but its memory.
    subject: Subject,
    memory: JobMemory,
    /// How long freezing took (µs).
    freeze_us: u64,
    operator: bool,
}

/// Where a job's guest RAM comes from.
enum JobMemory {
    /// The VMM exports it at diagnosis time.
    Vmm(Guest),
    /// A guest QEMU runs: its RAM file, open read-only.
    Qemu { ram: Arc<RamFile> },
}
