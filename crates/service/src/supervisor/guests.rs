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
use crate::config::{GuestSpec, Image, ImageKind, Kind, Policy};
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

/// A role a slot was repurposed to (by the fleet): the image it boots instead of its
/// configured one, and the role's settings. The configured image stays the slot's
/// default; it boots again when the assignment is dropped (and after the daemon restarts).
#[derive(Clone, Debug)]
pub struct Assignment {
    /// The role's name.
    pub role: String,
    /// The image's SHA-256 (lowercase hex), checked by whoever fetched it.
    pub digest: String,
    /// The kernel and its command line.
    pub image: Image,
    /// RAM in bytes.
    pub memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
}

/// The SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
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
    /// The role it was repurposed to (None: its configured image).
    pub(crate) assignment: Option<Assignment>,
    /// A repurposing is under way.
    pub(crate) repurposing: bool,
    /// The digest of the image its VM was last built from.
    pub(crate) booted_digest: Option<String>,
    /// The SHA-256 of its configured (primary) image.
    pub(crate) default_digest: Option<String>,
    /// When its role last changed (or it first booted).
    pub(crate) role_since: ambulance_report::Timestamp,
}

impl Slot {
    pub(crate) fn new(spec: GuestSpec) -> Slot {
        Slot {
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
            assignment: None,
            repurposing: false,
            booted_digest: None,
            default_digest: spec.vmm().map(|v| sha256_hex(&v.primary.kernel)),
            role_since: ambulance_report::now(),
            spec,
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
    /// The role the fleet repurposed it to (None: its configured image, a spare).
    pub role: Option<String>,
    /// The SHA-256 of the image it runs (or boots next).
    pub image_digest: Option<String>,
    /// A repurposing is under way.
    pub repurposing: bool,
    /// When its role last changed.
    pub role_since: ambulance_report::Timestamp,
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
                role: s.assignment.as_ref().map(|a| a.role.clone()),
                image_digest: s
                    .assignment
                    .as_ref()
                    .map(|a| a.digest.clone())
                    .or_else(|| s.default_digest.clone()),
                repurposing: s.repurposing,
                role_since: s.role_since,
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
        // An assigned role replaces the primary image (maintenance and rescue images stay
        // the slot's own).
        let (config, digest) = match (&slot.assignment, kind) {
            (Some(a), ImageKind::Primary) => {
                let mut c = spec.vmm_config(name, &a.image);
                c.memory_bytes = a.memory_bytes;
                c.vcpus = a.vcpus;
                (c, Some(a.digest.clone()))
            }
            _ => (spec.vmm_config(name, spec.image(kind)), None),
        };
        let outcome = match slot.backend.take() {
            Some(Backend::Vmm(g)) if slot.image == kind && slot.booted_digest == digest => {
                g.restart().map(|()| g)
            }
            old => {
                if let Some(Backend::Vmm(g)) = old {
                    g.destroy();
                }
                vmm.start(config)
            }
        };
        match outcome {
            Ok(g) => {
                slot.backend = Some(Backend::Vmm(g));
                slot.booted_digest = digest;
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
