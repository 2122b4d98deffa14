//! Recovery policies: what happens to a guest after its failure was diagnosed.
//!
//! * `restart` boots the primary image again (a guest QEMU runs is reset and run);
//! * `maintenance` boots the maintenance image, waits for its maintenance-complete
//!   doorbell (or the timeout, see the timer) and boots the primary;
//! * `rescue` counts failures in a window in the persisted boot state and flips the boot
//!   flag to the rescue image after too many; the timer flips it back after a healthy
//!   period on the rescue image;
//! * `hold` keeps the guest frozen until an operator releases it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_capture::Backend;

use super::{Service, State};
use crate::config::{ImageKind, Policy};
use crate::store::{BootFlag, BootState};

/// How often the timer looks at maintenance deadlines and healthy periods.
const TICK: Duration = Duration::from_millis(100);

fn now_ms() -> u64 {
    ambulance_report::now().as_millisecond().max(0) as u64
}

/// Starts the timer behind maintenance timeouts and rescue healthy periods.
pub(super) fn start_timer(svc: &Arc<Service>) {
    let svc = svc.clone();
    svc.runtime.clone().spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            svc.on_tick().await;
        }
    });
}

impl Service {
    /// Boots `name` into `kind`: a VMM guest gets that image (see
    /// [`Service::boot_vmm`]; a failure leaves it stopped with its boot error); a guest QEMU
    /// runs is reset and runs again (its only image).
    pub(crate) async fn boot(self: &Arc<Self>, name: &str, kind: ImageKind) -> Result<(), String> {
        let backend = self.slots.lock().get(name).and_then(|s| s.backend.clone());
        match backend {
            Some(Backend::Qemu(q)) => {
                q.restart().await.map_err(|e| e.to_string())?;
                if let Some(s) = self.slots.lock().get_mut(name) {
                    s.state = State::Running;
                    s.booted_at = Instant::now();
                    s.boot_error = None;
                }
                tracing::info!(guest = name, "guest reset and running again");
                Ok(())
            }
            _ => {
                let (svc, n) = (self.clone(), name.to_string());
                tokio::task::spawn_blocking(move || svc.boot_vmm(&n, kind))
                    .await
                    .map_err(|e| format!("the boot task ended abnormally: {e}"))
            }
        }
    }

    /// Applies `name`'s recovery policy after a failure was diagnosed.
    pub(crate) async fn apply_policy(self: &Arc<Self>, name: &str) {
        let Some((policy, rescue, image)) = self.slots.lock().get(name).map(|s| {
            (
                s.spec.policy,
                s.spec.vmm().and_then(|v| v.rescue.clone()),
                s.image,
            )
        }) else {
            return;
        };
        let next = match policy {
            Policy::Restart => ImageKind::Primary,
            // The maintenance image itself failed: go back to the primary image.
            Policy::Maintenance if image == ImageKind::Maintenance => {
                tracing::warn!(
                    guest = name,
                    "the maintenance image failed; booting the primary image"
                );
                ImageKind::Primary
            }
            Policy::Maintenance => ImageKind::Maintenance,
            Policy::Hold => {
                if let Some(s) = self.slots.lock().get_mut(name) {
                    s.state = State::Held;
                }
                tracing::info!(
                    guest = name,
                    "guest held frozen for forensics; release it to go on"
                );
                return;
            }
            Policy::Rescue => match rescue {
                None => ImageKind::Primary,
                Some(rescue) => self.count_failure_for_rescue(name, rescue.failures, rescue.window),
            },
        };
        if let Err(e) = self.boot(name, next).await {
            tracing::error!(guest = name, "cannot restart the guest: {e}");
            if let Some(s) = self.slots.lock().get_mut(name) {
                s.state = State::Held;
                s.boot_error = Some(format!("restart failed: {e}"));
            }
        }
    }

    /// Records a failure in `name`'s persisted boot state, flips the flag to rescue after
    /// `failures` within `window`, and says which image the flag now names.
    fn count_failure_for_rescue(&self, name: &str, failures: u32, window: Duration) -> ImageKind {
        let mut state = self.store.boot_state(name).unwrap_or_default();
        let now = now_ms();
        let window = window.as_millis() as u64;
        state.failures.push(now);
        state.failures.retain(|&t| now.saturating_sub(t) <= window);
        if state.flag == BootFlag::Primary && state.failures.len() as u32 >= failures {
            state.flag = BootFlag::Rescue;
            state.reason = format!("{} failures within {} ms", state.failures.len(), window);
            tracing::warn!(
                guest = name,
                reason = state.reason,
                "boot flag flipped to rescue"
            );
        }
        if let Err(e) = self.store.set_boot_state(name, &state) {
            tracing::error!(guest = name, "cannot persist the boot flag: {e}");
        }
        match state.flag {
            BootFlag::Primary => ImageKind::Primary,
            BootFlag::Rescue => ImageKind::Rescue,
        }
    }

    /// Maintenance that did not complete in time, and rescue images that stayed healthy
    /// for their healthy period: both go back to the primary image.
    async fn on_tick(self: &Arc<Self>) {
        let now = Instant::now();
        let mut to_primary = Vec::new();
        for (name, s) in self.slots.lock().iter() {
            if s.state == State::Maintenance && s.maintenance_deadline.is_some_and(|d| now >= d) {
                tracing::warn!(
                    guest = name,
                    "the maintenance image did not complete in time; booting the primary image"
                );
                to_primary.push((name.clone(), false));
            }
            let healthy = s
                .spec
                .vmm()
                .and_then(|v| v.rescue.as_ref())
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
            let _ = self.boot(&name, ImageKind::Primary).await;
        }
    }
}
