//! The supervisor: boots the configured guests, follows their events, diagnoses each
//! failure in a worker process (at most `max_parallel_diagnoses` at once, the rest
//! queue), stores the report, alerts, and applies the guest's recovery policy. Only the
//! failed guest is ever frozen; nothing here pauses another.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ambulance_vmm::{Event, EventKind, FailureCause, FrozenSummary, Guest, GuestState, Vmm};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::alerts::{self, Alert};
use crate::capture::{subject_for, Failure};
use crate::config::{Config, GuestSpec, Image, Policy};
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
}

/// A guest's status, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GuestStatus {
    /// Its name (the API's id).
    pub name: String,
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
    /// Why its last boot failed.
    pub boot_error: Option<String>,
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
        let vmm = match Vmm::new() {
            Ok(v) => Some(v),
            Err(e) if config.guests.is_empty() => {
                tracing::warn!("no VMM ({e}); serving reports only");
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
        let names: Vec<String> = lock(&self.slots).keys().cloned().collect();
        for name in names {
            let image = self.flag_image(&name);
            self.boot(&name, image);
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

    /// Destroys every guest.
    pub fn shutdown(&self) {
        for slot in lock(&self.slots).values_mut() {
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
                    let job = FailureJob {
                        name: name.clone(),
                        guest: slot.guest.clone()?,
                        cause: cause.clone(),
                        vcpu: *vcpu,
                        detail: detail.clone(),
                        frozen: frozen.clone(),
                        time: e.time,
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
        let cause = job.cause.name().to_string();
        let operator = job.operator;
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
        if !operator {
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
            (
                Self::image(&slot.spec, slot.image).debuginfo_path(),
                slot.spec.rules.clone(),
                slot.spec.core,
            )
        };
        let (debuginfo, rules, want_core) = spec_image;
        let failure = Failure {
            cause: &job.cause,
            vcpu: job.vcpu,
            detail: &job.detail,
            frozen: &job.frozen,
            time: job.time,
        };
        let subject = subject_for(&job.guest, &failure);
        let time = subject.failure.time.clone();
        let core_tmp = want_core.then(|| {
            self.store.dir().join(format!(
                "pending-{}-{}.core.tmp",
                std::process::id(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            ))
        });
        let result: std::result::Result<ambulance_report::Report, String> = (|| {
            let export = job
                .guest
                .memory_export()
                .map_err(|e| format!("cannot export guest RAM: {e}"))?;
            let request = worker::Request {
                regions: export
                    .regions
                    .iter()
                    .map(|r| (r.gpa, r.size, r.file_offset))
                    .collect(),
                guest: subject.guest.clone(),
                failure: subject.failure.clone(),
                vcpus: subject.vcpus.clone(),
                descriptor_gpa: subject.descriptor_gpa,
                descriptor_bytes: subject.descriptor_bytes.clone(),
                debuginfo: Some(debuginfo),
                rules,
                core_path: core_tmp.clone(),
                timeline: vec![ambulance_report::Phase {
                    name: "freeze".into(),
                    duration_us: job.frozen.freeze_latency_us,
                }],
            };
            worker::run(
                &self.worker_program,
                &self.limits,
                &request,
                &export.file,
                |pid| {
                    if let Some(s) = lock(&self.slots).get_mut(&job.name) {
                        s.worker_pid = Some(pid);
                    }
                },
            )
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
                        job.cause.name(),
                        &time,
                        &format!("cannot store the report: {e}"),
                    )
                })
            }
            Err(why) => {
                if let Some(p) = &core_tmp {
                    let _ = std::fs::remove_file(p);
                }
                self.store
                    .store_failure(&job.name, job.cause.name(), &time, &why)
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
            (
                GuestStatus {
                    name: name.to_string(),
                    state: s.state,
                    image: s.image,
                    policy: s.spec.policy,
                    boot_flag: None,
                    vmm_state: g.map(Guest::state),
                    generation: g.map(Guest::generation),
                    heartbeat: g.and_then(Guest::heartbeat),
                    registered: g.is_some_and(|g| g.registration().is_some()),
                    failures: s.failures,
                    last_failure: s.last_failure.clone(),
                    last_report: s.last_report.clone(),
                    worker_pid: s.worker_pid,
                    last_maintenance_status: s.last_maintenance_status,
                    boot_error: s.boot_error.clone(),
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
            s.state = State::Queued;
            s.guest
                .clone()
                .ok_or_else(|| ServiceError::Conflict(format!("guest {name} has no VM")))?
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
            let job = FailureJob {
                name: name.clone(),
                guest: guest.clone(),
                cause: FailureCause::Operator,
                vcpu: None,
                detail: "operator request".into(),
                frozen: frozen.summary(),
                time: SystemTime::now(),
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
        {
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
            if destroy {
                if let Some(g) = s.guest.take() {
                    g.destroy();
                }
                s.state = State::Stopped;
                tracing::info!(guest = name, "held guest released: destroyed");
            }
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

struct FailureJob {
    name: String,
    guest: Guest,
    cause: FailureCause,
    vcpu: Option<u32>,
    detail: String,
    frozen: FrozenSummary,
    time: SystemTime,
    operator: bool,
}
