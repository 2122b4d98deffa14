//! What operators ask of a guest: a diagnosis now (freeze, diagnose, resume), the
//! release of a held guest (restart or destroy), and its boot flag.

use std::sync::Arc;

use ambulance_capture::Backend;

use super::jobs::Job;
use super::{GuestStatus, Service, State};
use crate::config::ImageKind;
use crate::error::{Result, ServiceError};
use crate::store::{BootFlag, BootState, IndexEntry};

impl Service {
    fn no_guest(name: &str) -> ServiceError {
        ServiceError::NotFound(format!("no guest named {name:?}"))
    }

    fn status_of(&self, name: &str) -> Result<GuestStatus> {
        self.guest(name).ok_or_else(|| Self::no_guest(name))
    }

    /// An operator's diagnosis of a running guest: freeze it (once a diagnosis slot is
    /// free), diagnose, resume it. A failure that arrives meanwhile is handled when this
    /// ends, and the guest then stays frozen for it.
    pub async fn diagnose_now(self: &Arc<Self>, name: &str) -> Result<IndexEntry> {
        let backend = {
            let mut slots = self.slots.lock();
            let s = slots.get_mut(name).ok_or_else(|| Self::no_guest(name))?;
            if s.state != State::Running {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} is {}; only a running guest can be diagnosed on request",
                    s.state.name()
                )));
            }
            let backend = s
                .backend
                .clone()
                .ok_or_else(|| ServiceError::Conflict(format!("guest {name} has no VM")))?;
            s.state = State::Queued;
            s.operator_diagnosis = true;
            backend
        };
        let permit = self.permits.clone().acquire_owned().await;
        let failure = ambulance_capture::operator_failure("operator request");
        let mut job = Job::new(name, failure, backend.clone(), None, true);
        let capture = match job.capture().await {
            Ok(c) => c,
            Err(e) => {
                self.end_operator_diagnosis(name);
                return Err(ServiceError::Diagnosis(format!(
                    "cannot capture guest {name}: {e}"
                )));
            }
        };
        let was_running = capture.was_running;
        let svc = self.clone();
        let entry = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            svc.diagnose_and_store(&job, Ok(capture))
        })
        .await
        .map_err(|e| {
            ServiceError::Diagnosis(format!("the diagnosis task ended abnormally: {e}"))
        })?;
        self.after_diagnosis(name, "operator", entry.as_ref(), true);
        self.end_operator_diagnosis(name);
        let running = self
            .slots
            .lock()
            .get(name)
            .is_some_and(|s| s.state == State::Running);
        if running && was_running {
            backend
                .resume()
                .await
                .map_err(|e| ServiceError::Diagnosis(format!("cannot resume guest {name}: {e}")))?;
        }
        entry.ok_or_else(|| ServiceError::Diagnosis("the diagnosis could not be recorded".into()))
    }

    /// Ends an operator's diagnosis: the guest runs again, unless it failed meanwhile —
    /// then that failure is handled now (diagnosis, policy) and it stays frozen.
    fn end_operator_diagnosis(self: &Arc<Self>, name: &str) {
        let pending = {
            let mut slots = self.slots.lock();
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
            self.runtime.spawn(self.clone().run_job(job));
        }
    }

    /// Releases a held guest: `restart` boots it again (into the image its boot flag
    /// names; a guest QEMU runs is reset and run), `destroy` frees its VM (or asks QEMU
    /// to quit).
    pub async fn release(self: &Arc<Self>, name: &str, destroy: bool) -> Result<GuestStatus> {
        let backend = {
            let slots = self.slots.lock();
            let s = slots.get(name).ok_or_else(|| Self::no_guest(name))?;
            if s.state != State::Held {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} is {}, not held; only a held guest can be released",
                    s.state.name()
                )));
            }
            s.backend.clone()
        };
        if destroy {
            if let Some(b) = &backend {
                b.destroy().await.map_err(|e| {
                    ServiceError::Conflict(format!("cannot stop guest {name}: {e}"))
                })?;
            }
            if let Some(s) = self.slots.lock().get_mut(name) {
                if matches!(s.backend, Some(Backend::Vmm(_))) {
                    s.backend = None;
                }
                s.state = State::Stopped;
            }
            tracing::info!(guest = name, "held guest released: destroyed");
        } else {
            tracing::info!(guest = name, "held guest released: restarting");
            let image = self.flag_image(name);
            self.boot(name, image)
                .await
                .map_err(|e| ServiceError::Conflict(format!("cannot restart guest {name}: {e}")))?;
        }
        self.status_of(name)
    }

    /// Sets a guest's persisted boot flag and, when it is running, reboots it into the
    /// image the flag names.
    pub async fn set_boot_flag(
        self: &Arc<Self>,
        name: &str,
        flag: BootFlag,
    ) -> Result<GuestStatus> {
        let running = {
            let slots = self.slots.lock();
            let s = slots.get(name).ok_or_else(|| Self::no_guest(name))?;
            if !s.spec.has_rescue() {
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
            let image = match flag {
                BootFlag::Primary => ImageKind::Primary,
                BootFlag::Rescue => ImageKind::Rescue,
            };
            self.boot(name, image)
                .await
                .map_err(|e| ServiceError::Conflict(format!("cannot reboot guest {name}: {e}")))?;
        }
        self.status_of(name)
    }
}
