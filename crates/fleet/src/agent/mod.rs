//! The host agent: runs inside `ambulance serve` when its configuration has a `[fleet]`
//! section. It enrols the host (zero certificate → unique certificate), keeps the
//! certificate renewed, publishes the host's health, failures and reports, and runs the
//! operators' transactions.
//!
//! * [`identity`](self::identity): enrolment and renewal, the key and certificate in
//!   `<data_dir>/fleet/host.pem` (0600);
//! * [`outbox`]: failures and reports, from the host's own store, until the engine
//!   acknowledges each;
//! * [`commands`]: the host's work queue, transactions run at most once;
//! * [`ledger`]: what was acknowledged and what was run, durably;
//! * [`images`]: a slot repurposed from the image library.

mod commands;
mod identity;
pub mod images;
pub mod ledger;
mod outbox;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambulance_service::config::FleetMembership;
use ambulance_service::{Companion, Service};
use async_nats::Client;
use bytes::Bytes;

use crate::engine;
use crate::error::{FleetError, Result};
use crate::model::{GuestHealth, Health};
use crate::names;

pub use identity::HostIdentity;

/// The agent of one host.
pub(crate) struct Agent {
    svc: Arc<Service>,
    m: FleetMembership,
    dir: PathBuf,
    ledger: ledger::Ledger,
    /// Diagnoses in the store, and of those not yet acknowledged, as of the outbox's last
    /// pass (the health reports them without scanning the store again).
    stored: AtomicUsize,
    outbox: AtomicUsize,
    /// Publish the health now (a slot changed role).
    health_now: tokio::sync::Notify,
}

/// The agent for `svc`, when its configuration has a `[fleet]` section: a companion for
/// [`ambulance_service::serve_with`]. It ends with an error only when the controller
/// refuses the host's enrolment; everything else (the engine down, a revoked identity)
/// it waits out, while the daemon goes on supervising its guests.
pub fn companion(svc: &Arc<Service>) -> Result<Option<Companion>> {
    let Some(m) = svc.config().fleet.clone() else {
        return Ok(None);
    };
    let dir = svc.config().data_dir.join("fleet");
    crate::pki::create_private_dir(&dir)?;
    let ledger = ledger::Ledger::open(&dir.join("ledger.redb"))?;
    let agent = Arc::new(Agent {
        svc: svc.clone(),
        m,
        dir,
        ledger,
        stored: AtomicUsize::new(0),
        outbox: AtomicUsize::new(0),
        health_now: tokio::sync::Notify::new(),
    });
    // Subscribe now, before the guests boot, so no failure is missed.
    let notices = svc.subscribe();
    Ok(Some(Box::pin(async move {
        agent
            .run(notices)
            .await
            .map_err(|e| ambulance_service::ServiceError::Invalid(format!("fleet: {e}")))
    })))
}

impl Agent {
    fn host(&self) -> &str {
        &self.m.host_id
    }

    async fn run(
        self: Arc<Self>,
        notices: tokio::sync::broadcast::Receiver<ambulance_service::Notice>,
    ) -> Result<()> {
        let id = self.clone().ensure_identity().await?;
        let client = self.connect_unique(&id).await;
        tracing::info!(host = self.host(), subscriber = %self.m.subscriber, "fleet: joined");
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.clone().health_loop(client.clone()));
        tasks.spawn(self.clone().outbox_loop(client.clone(), notices));
        tasks.spawn(self.clone().command_loop(client.clone()));
        tasks.spawn(self.clone().renew_loop(client.clone()));
        match tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(FleetError::Invalid(format!(
                "a fleet task ended abnormally: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Connects with the host's unique identity, retrying until it works (the engine
    /// may be down, or still reloading its authorization just after the enrolment).
    async fn connect_unique(&self, id: &engine::Identity) -> Client {
        let mut delay = Duration::from_millis(200);
        loop {
            match engine::connect(
                &self.m.nats,
                id,
                &format!("ambulance-host-{}", self.host()),
                &names::host_inbox(self.host()),
            )
            .await
            {
                Ok(c) => return c,
                Err(e) => {
                    tracing::warn!(host = self.host(), "fleet: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn health(&self) -> Result<Health> {
        let guests = self
            .svc
            .guests()
            .into_iter()
            .map(|g| GuestHealth {
                name: g.name,
                state: g.state.name().to_string(),
                failures: g.failures,
                last_report: g.last_report.map(|r| r.to_string()),
                role: g.role,
                image: g.image_digest,
                repurposing: g.repurposing,
                registered: g.registered,
                role_since: Some(g.role_since),
            })
            .collect();
        Ok(Health {
            host: self.host().to_string(),
            subscriber: self.m.subscriber.clone(),
            time: ambulance_report::now(),
            interval_ms: self.m.health_interval.as_millis() as u64,
            guests,
            reports: self.stored.load(Ordering::Relaxed),
            outbox: self.outbox.load(Ordering::Relaxed),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    /// Publishes the host's health every interval (its presence in the bucket, fresher
    /// than the bucket's TTL, is what makes the host available).
    async fn health_loop(self: Arc<Self>, client: Client) -> Result<()> {
        let js = engine::jetstream(&client);
        let mut tick = tokio::time::interval(self.m.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.health_now.notified() => {}
            }
            let h = match self.health() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("fleet: cannot gather health: {e}");
                    continue;
                }
            };
            let body = Bytes::from(serde_json::to_vec(&h).unwrap_or_default());
            // Never wait longer than an interval for an acknowledgement (one lost in a
            // reconnection would otherwise hold the next health back past the TTL).
            let put = tokio::time::timeout(
                self.m.health_interval.max(Duration::from_millis(500)),
                engine::kv_put(&js, names::HEALTH_BUCKET, self.host(), body),
            )
            .await
            .unwrap_or_else(|_| Err(FleetError::Engine("no acknowledgement in time".into())));
            match put {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("fleet: health published again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("fleet: cannot publish health: {e}");
                }
                Err(_) => {}
            }
        }
    }
}
