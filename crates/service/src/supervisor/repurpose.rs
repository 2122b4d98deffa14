//! Repurposing a slot: the fleet has a configured guest boot another role's image (already
//! fetched and checked by the caller), waits for the new kernel to register, and when it
//! does not in time boots the slot's configured image again. The configured image is the
//! slot's default and persists: the assignment lives only in memory, so a restarted
//! daemon boots every slot into its default again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guests::Assignment;
use super::{GuestStatus, Service, State};
use crate::config::{ImageKind, Kind};
use crate::error::{Result, ServiceError};

/// How often a repurposed guest's registration is looked at.
const POLL: Duration = Duration::from_millis(20);

impl Service {
    /// Boots `name` into `assignment` and waits up to `timeout` for its kernel to
    /// register. On success the slot keeps the role (a restart by its policy boots the same
    /// image). When the boot fails, or the kernel does not register in time, or the guest
    /// fails meanwhile, the slot boots its default image again (a guest that failed is left
    /// to its policy) and the answer says why.
    pub async fn repurpose(
        self: &Arc<Self>,
        name: &str,
        assignment: Assignment,
        timeout: Duration,
    ) -> Result<GuestStatus> {
        let role = assignment.role.clone();
        {
            let mut slots = self.slots.lock();
            let s = slots
                .get_mut(name)
                .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))?;
            if s.spec.kind() != Kind::Vmm {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} is run by QEMU; only a guest of Ambulance's VMM can be repurposed"
                )));
            }
            if s.repurposing {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} is being repurposed already"
                )));
            }
            if !matches!(s.state, State::Running | State::Stopped) {
                return Err(ServiceError::Conflict(format!(
                    "guest {name} is {}; only a running or stopped slot can be repurposed",
                    s.state.name()
                )));
            }
            s.assignment = Some(assignment);
            s.repurposing = true;
            s.role_since = ambulance_report::now();
        }
        tracing::info!(guest = name, role, "repurposing");
        let outcome = self.boot_and_register(name, timeout).await;
        match outcome {
            Ok(()) => {
                if let Some(s) = self.slots.lock().get_mut(name) {
                    s.repurposing = false;
                }
                tracing::info!(guest = name, role, "repurposed: the guest registered");
                self.guest(name)
                    .ok_or_else(|| ServiceError::NotFound(format!("no guest named {name:?}")))
            }
            Err((why, fall_back)) => {
                let back = if fall_back {
                    self.fall_back(name).await
                } else {
                    if let Some(s) = self.slots.lock().get_mut(name) {
                        s.repurposing = false;
                    }
                    String::from("; it failed and is left to its recovery policy")
                };
                tracing::warn!(guest = name, role, "repurposing failed: {why}{back}");
                Err(ServiceError::Conflict(format!(
                    "repurposing guest {name} to role {role} failed: {why}{back}"
                )))
            }
        }
    }

    /// Boots the assigned image and waits for registration: `Err((why, whether to boot the
    /// default image again))`.
    async fn boot_and_register(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> std::result::Result<(), (String, bool)> {
        self.boot(name, ImageKind::Primary)
            .await
            .map_err(|e| (format!("cannot boot the image: {e}"), true))?;
        if let Some(e) = self
            .slots
            .lock()
            .get(name)
            .and_then(|s| s.boot_error.clone())
        {
            return Err((format!("cannot boot the image: {e}"), true));
        }
        let deadline = Instant::now() + timeout;
        loop {
            {
                let slots = self.slots.lock();
                let s = slots
                    .get(name)
                    .ok_or_else(|| (format!("guest {name} is gone"), false))?;
                if s.state != State::Running {
                    return Err((
                        format!("the guest is {} before it registered", s.state.name()),
                        s.state == State::Stopped,
                    ));
                }
                if s.backend.as_ref().is_some_and(|b| b.registered()) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err((
                    format!(
                        "its kernel did not register within {} ms",
                        timeout.as_millis()
                    ),
                    true,
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Drops the slot's assignment and boots its default image: what happened, for the
    /// error message.
    async fn fall_back(self: &Arc<Self>, name: &str) -> String {
        if let Some(s) = self.slots.lock().get_mut(name) {
            s.assignment = None;
            s.role_since = ambulance_report::now();
        }
        let image = self.flag_image(name);
        let r = self.boot(name, image).await;
        if let Some(s) = self.slots.lock().get_mut(name) {
            s.repurposing = false;
        }
        match r {
            Ok(()) => "; the slot booted its default image again".to_string(),
            Err(e) => format!("; booting its default image again failed too: {e}"),
        }
    }
}
