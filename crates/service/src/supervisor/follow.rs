//! Where failures come from: the VMM's event channel (one thread for all its guests),
//! and a task per guest QEMU runs that connects to its QMP socket — retrying while QEMU
//! is not up, and again whenever the connection ends — and follows its events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_capture::qemu::{failure, failure_of, QemuGuest};
use ambulance_capture::{vmm, Backend};
use ambulance_qemu::{AgentListener, ConnectOptions};
use ambulance_vmm::{EventKind, VmmEvent};
use crossbeam_channel::Receiver;

use super::{ImageKind, Notice, Service, State};
use crate::config::QemuSpec;
use crate::error::{Result, ServiceError};

/// How long to wait between attempts to reach a guest's QMP socket.
const QEMU_RETRY: Duration = Duration::from_secs(1);

/// Follows the VMM's events on a thread of their own.
pub(super) fn vmm_events(svc: &Arc<Service>, events: Receiver<VmmEvent>) -> Result<()> {
    let svc = svc.clone();
    std::thread::Builder::new()
        .name("ambulance-events".into())
        .spawn(move || {
            for e in events.iter() {
                svc.on_vmm_event(e);
            }
        })
        .map_err(|e| ServiceError::Invalid(format!("cannot start the event thread: {e}")))?;
    Ok(())
}

/// Starts following a guest QEMU runs: its registration socket now, its QMP socket from
/// a task that reconnects for as long as the service runs.
pub(super) fn qemu_guest(svc: &Arc<Service>, name: &str, spec: &QemuSpec) -> Result<()> {
    let listener = spec
        .registration
        .as_deref()
        .map(AgentListener::bind)
        .transpose()
        .map_err(|e| ServiceError::Invalid(format!("guest {name}: {e}")))?;
    let guest = Arc::new(QemuGuest::new(
        name,
        &spec.qmp,
        spec.memory_file.clone(),
        listener,
        ConnectOptions {
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(10),
        },
    ));
    if let Some(s) = svc.slots.lock().get_mut(name) {
        s.backend = Some(Backend::Qemu(guest.clone()));
    }
    svc.runtime
        .spawn(svc.clone().watch_qemu(name.to_string(), guest));
    Ok(())
}

impl Service {
    fn slot_of_event(&self, e: &VmmEvent) -> Option<String> {
        self.slots
            .lock()
            .iter()
            .find_map(|(name, s)| match &s.backend {
                Some(Backend::Vmm(g)) if g.id() == e.guest && g.generation() == e.generation => {
                    Some(name.clone())
                }
                _ => None,
            })
    }

    fn on_vmm_event(self: &Arc<Self>, e: VmmEvent) {
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
                // The VMM froze the guest before it reported the failure.
                let failure = vmm::failure_info(cause, *vcpu, detail, e.time);
                self.accept_failure(name, failure, Some(vmm::frozen_from(frozen, true)));
            }
            (EventKind::MaintenanceComplete { status }, Some(name)) => {
                let in_maintenance = self.slots.lock().get_mut(name).is_some_and(|slot| {
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
                    self.runtime.spawn(async move {
                        let _ = svc.boot(&name, ImageKind::Primary).await;
                    });
                }
            }
            _ => {}
        }
        let _ = self.notices.send(Notice::Event(Box::new(e)));
    }

    /// Connects, follows events until the connection ends, and starts again.
    async fn watch_qemu(self: Arc<Self>, name: String, guest: Arc<QemuGuest>) {
        let mut last_error: Option<String> = None;
        loop {
            match guest.connect().await {
                Ok(connected) => {
                    last_error = None;
                    self.attached(&name, &connected.status.status);
                    let mut events = connected.events;
                    while let Some(e) = events.next().await {
                        tracing::debug!(guest = name, event = e.name, data = %e.data, "QEMU event");
                        guest.observe(&e);
                        if let Some(f) = failure_of(&e) {
                            self.accept_failure(&name, f, None);
                        }
                    }
                    tracing::warn!(guest = name, qmp = %guest.qmp_socket().display(), "QEMU's QMP connection ended; reconnecting");
                    guest.detach("QEMU's QMP connection ended");
                    if let Some(s) = self.slots.lock().get_mut(&name) {
                        if matches!(s.state, State::Running | State::Held) {
                            s.state = State::Stopped;
                        }
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    if last_error.as_deref() != Some(why.as_str()) {
                        tracing::warn!(guest = name, "cannot attach to QEMU (retrying): {why}");
                    }
                    guest.detach(why.clone());
                    last_error = Some(why);
                }
            }
            tokio::time::sleep(QEMU_RETRY).await;
        }
    }

    /// QEMU is attached: the guest runs — unless it is held for forensics and still
    /// panicked. A panic that happened while nobody watched is diagnosed now.
    fn attached(self: &Arc<Self>, name: &str, run_state: &str) {
        let panicked_unseen = {
            let mut slots = self.slots.lock();
            let Some(s) = slots.get_mut(name) else { return };
            s.boot_error = None;
            let panicked = run_state == "guest-panicked";
            if s.state == State::Held && panicked {
                false
            } else {
                s.state = State::Running;
                s.booted_at = Instant::now();
                panicked
            }
        };
        if panicked_unseen {
            let f = failure(
                "panic",
                "the guest had panicked when Ambulance attached to QEMU".into(),
                Default::default(),
                std::time::SystemTime::now(),
            );
            self.accept_failure(name, f, None);
        }
    }
}
