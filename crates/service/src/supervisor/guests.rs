//! The guest table: one slot per configured guest, the images Ambulance boots into them,
//! and each guest's status as the API shows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_capture::{Backend, QemuStatus};
use ambulance_report::ReportId;
use ambulance_vmm::GuestState;
use serde::Serialize;

use super::jobs::Job;
use super::{Notice, Service};
use crate::config::{GuestSpec, ImageKind, Kind, Policy};
use crate::store::{BootFlag, Filter, Status};

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
    /// Not running: destroyed by an operator, its boot failed, or QEMU is not reachable.
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

/// One configured guest and what the supervisor knows of it.
pub(crate) struct Slot {
    pub(crate) spec: GuestSpec,
    /// Who runs it: a VMM guest while it has a VM, a QEMU guest always.
    pub(crate) backend: Option<Backend>,
    pub(crate) state: State,
    pub(crate) image: ImageKind,
    pub(crate) booted_at: Instant,
    pub(crate) failures: u64,
    pub(crate) last_failure: Option<String>,
    pub(crate) last_report: Option<ReportId>,
    pub(crate) worker_pid: Option<u32>,
    pub(crate) maintenance_deadline: Option<Instant>,
    pub(crate) last_maintenance_status: Option<u32>,
    pub(crate) boot_error: Option<String>,
    /// An operator's diagnosis has the guest frozen.
    pub(crate) operator_diagnosis: bool,
    /// A failure that arrived meanwhile.
    pub(crate) pending: Option<Job>,
}

impl Slot {
    pub(crate) fn new(spec: GuestSpec) -> Slot {
        Slot {
            spec,
            backend: None,
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
        }
    }
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
    pub last_report: Option<ReportId>,
    /// The pid of the worker diagnosing it now.
    pub worker_pid: Option<u32>,
    /// The status the maintenance image reported last.
    pub last_maintenance_status: Option<u32>,
    /// Why its last boot failed (a guest QEMU runs: why the supervisor is not attached).
    pub boot_error: Option<String>,
    /// A guest QEMU runs: the connection to it.
    pub qemu: Option<QemuStatus>,
}

impl Service {
    /// Every guest's status.
    pub fn guests(&self) -> Vec<GuestStatus> {
        let names: Vec<String> = self.slots.lock().keys().cloned().collect();
        names.iter().filter_map(|n| self.guest(n)).collect()
    }

    /// One guest's status.
    pub fn guest(&self, name: &str) -> Option<GuestStatus> {
        let status = {
            let slots = self.slots.lock();
            let s = slots.get(name)?;
            let vm = match &s.backend {
                Some(Backend::Vmm(g)) => Some(g),
                _ => None,
            };
            let (qemu, detached) = match &s.backend {
                Some(Backend::Qemu(q)) => (Some(q.status()), q.detached_because()),
                _ => (None, None),
            };
            GuestStatus {
                name: name.to_string(),
                kind: s.spec.kind(),
                state: s.state,
                image: s.image,
                policy: s.spec.policy,
                boot_flag: None,
                vmm_state: vm.map(|g| g.state()),
                generation: vm.map(|g| g.generation()),
                heartbeat: vm.and_then(|g| g.heartbeat()),
                registered: s.backend.as_ref().is_some_and(Backend::registered),
                failures: s.failures,
                last_failure: s.last_failure.clone(),
                last_report: s.last_report.clone(),
                worker_pid: s.worker_pid,
                last_maintenance_status: s.last_maintenance_status,
                boot_error: s.boot_error.clone().or(detached),
                qemu,
            }
        };
        let has_rescue = self.slots.lock().get(name)?.spec.has_rescue();
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
        for s in self.slots.lock().values() {
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

    /// The image a guest's persisted boot flag names (primary without a rescue image).
    pub(crate) fn flag_image(&self, name: &str) -> ImageKind {
        let has_rescue = self
            .slots
            .lock()
            .get(name)
            .is_some_and(|s| s.spec.has_rescue());
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

    /// Boots the VMM guest `name` into `kind`: the same VM again when the image stays the
    /// same, a new VM otherwise. A failure leaves it stopped with `boot_error`. Blocks
    /// while the VM is built.
    pub(crate) fn boot_vmm(self: &Arc<Self>, name: &str, kind: ImageKind) {
        let Some(vmm) = &self.vmm else { return };
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        let Some(spec) = slot.spec.vmm().cloned() else {
            return;
        };
        let outcome = match slot.backend.take() {
            Some(Backend::Vmm(g)) if slot.image == kind => g.restart().map(|()| g),
            old => {
                if let Some(Backend::Vmm(g)) = old {
                    g.destroy();
                }
                vmm.start(spec.vmm_config(name, spec.image(kind)))
            }
        };
        match outcome {
            Ok(g) => {
                slot.backend = Some(Backend::Vmm(g));
                slot.image = kind;
                slot.booted_at = Instant::now();
                slot.boot_error = None;
                let maintenance = kind == ImageKind::Maintenance;
                slot.state = if maintenance {
                    State::Maintenance
                } else {
                    State::Running
                };
                slot.maintenance_deadline = maintenance.then(|| {
                    Instant::now()
                        + spec
                            .maintenance
                            .as_ref()
                            .map_or(Duration::from_secs(30), |m| m.timeout)
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
}
