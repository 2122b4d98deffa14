//! The supervisor: boots the configured guests, follows their events, diagnoses each
//! failure in a worker process, stores the report, alerts, and applies the guest's
//! recovery policy. Only the failed guest is ever frozen; nothing here pauses another.
//!
//! Every guest sits in a [`Slot`](guests) with the [`Backend`](ambulance_capture::Backend)
//! that runs it — Ambulance's VMM or QEMU — and everything done to a guest goes through
//! that one seam. The work is split by concern:
//!
//! * [`follow`]: where failures come from — the VMM's event channel, and a QMP watcher
//!   per guest QEMU runs (reconnecting while the daemon lives);
//! * [`jobs`]: a failure accepted (its report id minted there), captured, queued for one
//!   of `max_parallel_diagnoses` worker slots, diagnosed, stored and alerted;
//! * [`policy`]: what happens to a guest after its diagnosis — restart, maintenance image,
//!   rescue image, hold — and the timer behind maintenance and rescue;
//! * [`operator`]: what operators ask through the API — diagnose now, release, boot flag;
//! * [`guests`]: the guest table, booting images, and the status the API shows;
//! * [`repurpose`]: a slot booted into another role's image for the fleet, and back into
//!   its default when that image does not register.

mod follow;
mod guests;
mod jobs;
mod operator;
mod policy;
mod repurpose;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ambulance_vmm::{Guest, Vmm, VmmEvent};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::alerts::{self, Alert};
pub use crate::config::ImageKind;
use crate::config::{Kind, ServiceConfig};
use crate::error::{Result, ServiceError};
use crate::metrics::Metrics;
use crate::store::{IndexEntry, Reconciled, Store};
use crate::worker::Limits;
use guests::Slot;
pub use guests::{sha256_hex, Assignment, GuestStatus, State};

/// Something that happened, for in-process observers (the demo, benchmarks).
#[derive(Clone, Debug)]
pub enum Notice {
    /// A VMM event.
    Event(Box<VmmEvent>),
    /// A guest failed and its failure was accepted for diagnosis (from either backend):
    /// the report id it will be stored under.
    Failure {
        /// The guest.
        guest: String,
        /// The id its report (or failed diagnosis) will have.
        report_id: ambulance_report::ReportId,
        /// The failure cause.
        cause: String,
        /// When it failed.
        time: ambulance_report::Timestamp,
        /// What the backend said about it.
        detail: String,
    },
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

/// The running service.
pub struct Service {
    config: ServiceConfig,
    vmm: Option<Vmm>,
    store: Store,
    slots: Mutex<BTreeMap<String, Slot>>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    alerts: mpsc::UnboundedSender<Alert>,
    notices: broadcast::Sender<Notice>,
    worker_program: PathBuf,
    limits: Limits,
    runtime: tokio::runtime::Handle,
    reconciled: Reconciled,
}

impl Service {
    /// Opens the store, the VMM and the alert dispatcher. Guests are booted by
    /// [`Service::run`]. Must be called inside a tokio runtime.
    pub fn new(config: ServiceConfig) -> Result<Arc<Service>> {
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
            .map(|spec| (spec.name.clone(), Slot::new(spec.clone())))
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
            runtime: tokio::runtime::Handle::current(),
            reconciled,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
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

    /// Boots every guest Ambulance runs (each into the image its boot flag names), starts
    /// following the VMM's events and every guest QEMU runs, and the policy timer.
    pub fn run(self: &Arc<Self>) -> Result<()> {
        if let Some(vmm) = &self.vmm {
            follow::vmm_events(self, vmm.events())?;
        }
        let specs: Vec<_> = self.slots.lock().values().map(|s| s.spec.clone()).collect();
        for spec in specs {
            match spec.qemu() {
                Some(q) => follow::qemu_guest(self, &spec.name, q)?,
                None => {
                    let image = self.flag_image(&spec.name);
                    self.boot_vmm(&spec.name, image);
                }
            }
        }
        policy::start_timer(self);
        Ok(())
    }

    /// Destroys every guest Ambulance runs (guests QEMU runs are left to QEMU; the
    /// connections to them close).
    pub fn shutdown(&self) {
        for slot in self.slots.lock().values_mut() {
            match slot.backend.take() {
                Some(ambulance_capture::Backend::Vmm(g)) => g.destroy(),
                Some(ambulance_capture::Backend::Qemu(q)) => q.detach("the daemon stopped"),
                None => {}
            }
            slot.state = State::Stopped;
        }
    }

    /// The VMM handle of a guest (for in-process observers).
    pub fn vm(&self, name: &str) -> Option<Guest> {
        match self.slots.lock().get(name)?.backend.as_ref()? {
            ambulance_capture::Backend::Vmm(g) => Some(g.clone()),
            ambulance_capture::Backend::Qemu(_) => None,
        }
    }
}
