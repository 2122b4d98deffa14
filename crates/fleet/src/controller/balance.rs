//! The image library and the pool.
//!
//! * **Library**: `add_image` stores a kernel in the object store `amb-images` under its
//!   SHA-256 (`image.<digest>`, once, however many roles use it) and a role's manifest of
//!   it (`manifest.<role>.<digest>`: role, digest, size, boot settings). A role boots its
//!   newest image. An image is not removed while a slot runs it or a repurposing targets it.
//! * **Pool**: the desired counts (key `pool` of the registry bucket), and a loop — woken
//!   by every health change and by a tick — that feeds the hosts' statuses to the pure
//!   planner ([`crate::pool::plan`]) and starts each planned repurposing as a transaction.
//!   A repurposing stays "in flight" until its transaction failed, or ended and the host's
//!   health shows the slot in its new role. A slot whose repurposing failed is not used
//!   again for `min_dwell_ms`, so an image that never registers does not churn the spares.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{object_store, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::AsyncReadExt;

use super::Controller;
use crate::engine;
use crate::error::{FleetError, Result};
use crate::model::{
    ImageManifest, InFlight, Instruction, PoolSpec, PoolView, TxnRequest, TxnStatus,
};
use crate::names;
use crate::pool::{self, SlotState};

/// The largest image the library takes.
pub const MAX_IMAGE: u64 = 1 << 30;

/// What the pool loop keeps.
#[derive(Default)]
pub(crate) struct PoolState {
    spec: PoolSpec,
    /// Its revision in the registry bucket (0: none yet).
    revision: u64,
    in_flight: Vec<InFlight>,
    blocked: Vec<String>,
    /// Slots whose last repurposing failed, and until when they are not used again (so an
    /// image that never registers does not churn through the spares).
    cooling: BTreeMap<(String, String), i64>,
}

/// Counters of the pool loop.
#[derive(Default)]
pub(crate) struct PoolStats {
    started: AtomicU64,
    failed: AtomicU64,
}

/// A new image: the role and its boot settings.
#[derive(Clone, Debug)]
pub struct NewImage {
    /// The role.
    pub role: String,
    /// The kernel command line.
    pub cmdline: String,
    /// RAM in bytes.
    pub memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn spawn(ctl: &Arc<Controller>) {
    let c = ctl.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(c.cfg.pool_tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = c.pool_wake.notified() => {}
            }
            if let Err(e) = c.balance().await {
                tracing::warn!("pool: {e}");
            }
        }
    });
}

impl Controller {
    /// Makes the library's bucket and reads the library and the pool's desired counts.
    pub(super) async fn load_pool(&self) -> Result<()> {
        if self.js.get_object_store(names::IMAGE_BUCKET).await.is_err() {
            self.js
                .create_object_store(object_store::Config {
                    bucket: names::IMAGE_BUCKET.into(),
                    description: Some(
                        "the image library: kernels by SHA-256, role manifests".into(),
                    ),
                    storage: stream::StorageType::File,
                    num_replicas: self.cfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| FleetError::engine("cannot make the image library", e))?;
        }
        self.reload_library().await?;
        if let Some(entry) = self
            .state_kv
            .entry(names::POOL_KEY)
            .await
            .map_err(|e| FleetError::engine("cannot read the pool", e))?
        {
            if entry.operation == async_nats::jetstream::kv::Operation::Put {
                let spec: PoolSpec = serde_json::from_slice(&entry.value).map_err(|e| {
                    FleetError::Engine(format!("the stored pool is unreadable: {e}"))
                })?;
                let mut p = self.pool.lock();
                p.spec = spec;
                p.revision = entry.revision;
            }
        }
        Ok(())
    }

    async fn library_store(&self) -> Result<object_store::ObjectStore> {
        self.js
            .get_object_store(names::IMAGE_BUCKET)
            .await
            .map_err(|e| FleetError::engine("cannot open the image library", e))
    }

    /// Reads every manifest of the library.
    async fn reload_library(&self) -> Result<()> {
        let store = self.library_store().await?;
        let mut list = store
            .list()
            .await
            .map_err(|e| FleetError::engine("cannot list the image library", e))?;
        let mut names = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| FleetError::engine("cannot list the image library", e))?;
            if !info.deleted && info.name.starts_with("manifest.") {
                names.push(info.name);
            }
        }
        let mut lib = BTreeMap::new();
        for name in names {
            let mut obj = match store.get(&name).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(name, "library: {e}");
                    continue;
                }
            };
            let mut text = Vec::new();
            if let Err(e) = obj.read_to_end(&mut text).await {
                tracing::warn!(name, "library: {e}");
                continue;
            }
            match serde_json::from_slice::<ImageManifest>(&text) {
                Ok(m) => {
                    lib.insert((m.role.clone(), m.digest.clone()), m);
                }
                Err(e) => tracing::warn!(name, "library: unreadable manifest: {e}"),
            }
        }
        *self.library.write() = lib;
        Ok(())
    }

    /// The library's manifests, by role then digest.
    pub fn images(&self) -> Vec<ImageManifest> {
        self.library.read().values().cloned().collect()
    }

    /// The image each role boots: its newest.
    fn role_images(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, (ambulance_report::Timestamp, String)> = BTreeMap::new();
        for m in self.library.read().values() {
            let e = out
                .entry(m.role.clone())
                .or_insert((m.added, m.digest.clone()));
            if (m.added, &m.digest) > (e.0, &e.1) {
                *e = (m.added, m.digest.clone());
            }
        }
        out.into_iter().map(|(r, (_, d))| (r, d)).collect()
    }

    /// Adds `kernel` to the library for `new.role`. A role's manifest of the same image
    /// is refused (remove it first); the same bytes for another role are stored once.
    pub async fn add_image(&self, new: &NewImage, kernel: Bytes) -> Result<ImageManifest> {
        names::check("role", &new.role)?;
        if kernel.is_empty() {
            return Err(FleetError::Invalid("the kernel image is empty".into()));
        }
        if kernel.len() as u64 > MAX_IMAGE {
            return Err(FleetError::Invalid(format!(
                "the kernel image is {} bytes; the library takes at most {MAX_IMAGE}",
                kernel.len()
            )));
        }
        if !kernel.starts_with(b"\x7fELF") {
            return Err(FleetError::Invalid(
                "the kernel image is not an ELF file (it does not start with \\x7fELF)".into(),
            ));
        }
        if new.cmdline.len() >= 4096 || new.cmdline.chars().any(|c| c.is_control()) {
            return Err(FleetError::Invalid(
                "cmdline: at most 4095 bytes, no control characters".into(),
            ));
        }
        if !(16 << 20..=512 << 30).contains(&new.memory_bytes) {
            return Err(FleetError::Invalid(format!(
                "memory: {} bytes; must be 16M..=512G",
                new.memory_bytes
            )));
        }
        if !(1..=16).contains(&new.vcpus) {
            return Err(FleetError::Invalid(format!(
                "vcpus: {}; must be 1..=16",
                new.vcpus
            )));
        }
        let digest = hex(&sha2::Sha256::digest(&kernel));
        if self
            .library
            .read()
            .contains_key(&(new.role.clone(), digest.clone()))
        {
            return Err(FleetError::Conflict(format!(
                "image {digest} is in the library for role {} already (remove it first to \
                 change its settings)",
                new.role
            )));
        }
        let store = self.library_store().await?;
        let object = names::image_object(&digest);
        let present = store.info(&object).await.is_ok_and(|i| !i.deleted);
        if !present {
            store
                .put(object.as_str(), &mut kernel.as_ref())
                .await
                .map_err(|e| FleetError::engine(&format!("cannot store image {digest}"), e))?;
        }
        let m = ImageManifest {
            role: new.role.clone(),
            digest: digest.clone(),
            size: kernel.len() as u64,
            cmdline: new.cmdline.clone(),
            memory_bytes: new.memory_bytes,
            vcpus: new.vcpus,
            added: ambulance_report::now(),
        };
        let body = serde_json::to_vec(&m).unwrap_or_default();
        store
            .put(
                names::manifest_object(&new.role, &digest).as_str(),
                &mut body.as_slice(),
            )
            .await
            .map_err(|e| {
                FleetError::engine(&format!("cannot store the manifest of {digest}"), e)
            })?;
        self.library
            .write()
            .insert((m.role.clone(), digest.clone()), m.clone());
        tracing::info!(
            role = m.role,
            digest,
            size = m.size,
            "image added to the library"
        );
        self.pool_wake.notify_one();
        Ok(m)
    }

    /// Removes an image from the library (for `role` only, or for every role), refused
    /// while a slot runs it or a repurposing targets it. The manifests removed.
    pub async fn remove_image(
        &self,
        digest: &str,
        role: Option<&str>,
    ) -> Result<Vec<ImageManifest>> {
        names::check_digest(digest)?;
        if let Some(r) = role {
            names::check("role", r)?;
        }
        let targets: Vec<ImageManifest> = self
            .library
            .read()
            .values()
            .filter(|m| m.digest == digest && role.is_none_or(|r| r == m.role))
            .cloned()
            .collect();
        if targets.is_empty() {
            return Err(FleetError::NotFound(match role {
                Some(r) => format!("the library has no image {digest} for role {r}"),
                None => format!("the library has no image {digest}"),
            }));
        }
        let users: Vec<String> = {
            let seen = self.seen.read();
            let mut v: Vec<String> = seen
                .iter()
                .filter_map(|(h, s)| s.health.as_ref().map(|x| (h, x)))
                .flat_map(|(h, health)| {
                    health
                        .guests
                        .iter()
                        .filter(|g| {
                            g.image.as_deref() == Some(digest)
                                && g.role
                                    .as_deref()
                                    .is_some_and(|r| targets.iter().any(|m| m.role == r))
                        })
                        .map(move |g| format!("{h}/{}", g.name))
                })
                .collect();
            v.extend(
                self.pool
                    .lock()
                    .in_flight
                    .iter()
                    .filter(|f| f.digest == digest && targets.iter().any(|m| m.role == f.role))
                    .map(|f| format!("{}/{} (being repurposed)", f.host, f.guest)),
            );
            v
        };
        if !users.is_empty() {
            return Err(FleetError::Conflict(format!(
                "image {digest} is in use by {}; not removed",
                users.join(", ")
            )));
        }
        let store = self.library_store().await?;
        for m in &targets {
            let name = names::manifest_object(&m.role, digest);
            store
                .delete(&name)
                .await
                .map_err(|e| FleetError::engine(&format!("cannot remove {name}"), e))?;
            self.library
                .write()
                .remove(&(m.role.clone(), digest.to_string()));
        }
        let still_used = self.library.read().values().any(|m| m.digest == digest);
        if !still_used {
            let object = names::image_object(digest);
            store
                .delete(&object)
                .await
                .map_err(|e| FleetError::engine(&format!("cannot remove {object}"), e))?;
        }
        tracing::info!(
            digest,
            roles = targets.len(),
            "image removed from the library"
        );
        Ok(targets)
    }

    /// Sets desired counts (`0` removes a role). Every role must have an image.
    pub async fn set_pool(&self, counts: &BTreeMap<String, u32>) -> Result<PoolView> {
        if counts.is_empty() {
            return Err(FleetError::Invalid(
                "no counts given; expected role=N, e.g. web=2".into(),
            ));
        }
        let images = self.role_images();
        for (role, n) in counts {
            names::check("role", role)?;
            if *n > 10_000 {
                return Err(FleetError::Invalid(format!(
                    "{role}={n}: at most 10000 per role"
                )));
            }
            if *n > 0 && !images.contains_key(role) {
                return Err(FleetError::Invalid(format!(
                    "role {role} has no image in the library; add one with `ambulance fleet \
                     image add {role} KERNEL` first"
                )));
            }
        }
        // Changed by revision: two controllers (or two operators) do not overwrite each other.
        for _ in 0..5 {
            let (mut spec, rev) = {
                let p = self.pool.lock();
                (p.spec.clone(), p.revision)
            };
            for (role, n) in counts {
                if *n == 0 {
                    spec.desired.remove(role);
                } else {
                    spec.desired.insert(role.clone(), *n);
                }
            }
            spec.updated = Some(ambulance_report::now());
            let body = Bytes::from(serde_json::to_vec(&spec).unwrap_or_default());
            match engine::kv_write(&self.js, names::STATE_BUCKET, names::POOL_KEY, body, rev)
                .await?
            {
                engine::Written::Stored(r) => {
                    {
                        let mut p = self.pool.lock();
                        p.spec = spec;
                        p.revision = r;
                    }
                    tracing::info!(desired = ?counts, "pool: desired counts set");
                    self.pool_wake.notify_one();
                    return Ok(self.pool_view());
                }
                engine::Written::Conflict => {
                    // Someone else changed it: read it again and apply ours on top.
                    if let Some(e) = self
                        .state_kv
                        .entry(names::POOL_KEY)
                        .await
                        .map_err(|e| FleetError::engine("cannot read the pool", e))?
                    {
                        let spec = serde_json::from_slice(&e.value).unwrap_or_default();
                        let mut p = self.pool.lock();
                        p.spec = spec;
                        p.revision = e.revision;
                    }
                }
            }
        }
        Err(FleetError::Conflict(
            "the pool changed under this request five times; try again".into(),
        ))
    }

    /// The planner's input from what the controller knows now.
    fn planner_input(&self) -> pool::Input {
        let now = ambulance_report::now().as_millisecond();
        let mut slots = Vec::new();
        let hosts: Vec<(String, crate::model::Health)> = self
            .seen
            .read()
            .iter()
            .filter_map(|(h, s)| s.health.clone().map(|x| (h.clone(), x)))
            .collect();
        let hosts: Vec<_> = hosts
            .into_iter()
            .filter(|(h, _)| self.availability(h).0)
            .collect();
        // (The pool's lock is taken after the health's, never around it.)
        let mut p = self.pool.lock();
        p.cooling.retain(|_, until| *until > now);
        for (host, health) in hosts {
            for g in &health.guests {
                let mut state = SlotState::of(&g.state, g.repurposing);
                if state == SlotState::Ready
                    && p.cooling.contains_key(&(host.clone(), g.name.clone()))
                {
                    // Its last repurposing failed: it counts, but does not give, for now.
                    state = SlotState::Busy;
                }
                slots.push(pool::Slot {
                    host: host.clone(),
                    guest: g.name.clone(),
                    role: g.role.clone(),
                    state,
                    since_ms: g.role_since.map_or(0, |t| t.as_millisecond()),
                });
            }
        }
        pool::Input {
            desired: p.spec.desired.clone(),
            images: self.role_images(),
            slots,
            in_flight: p
                .in_flight
                .iter()
                .map(|f| pool::Move {
                    host: f.host.clone(),
                    guest: f.guest.clone(),
                    from: f.from.clone(),
                    role: f.role.clone(),
                    digest: f.digest.clone(),
                })
                .collect(),
            now_ms: now,
            min_dwell_ms: self.cfg.min_dwell.as_millis() as i64,
        }
    }

    /// `GET /v1/pool`.
    pub fn pool_view(&self) -> PoolView {
        let input = self.planner_input();
        let plan = pool::plan(&input);
        let p = self.pool.lock();
        let converged = p.in_flight.is_empty()
            && p.spec
                .desired
                .iter()
                .all(|(r, n)| plan.actual.get(r).copied().unwrap_or(0) >= *n);
        PoolView {
            desired: p.spec.desired.clone(),
            actual: plan.actual,
            spare: plan.spare,
            missing: plan.missing,
            in_flight: p.in_flight.clone(),
            blocked: p.blocked.clone(),
            converged,
            started: self.pool_stats.started.load(Ordering::Relaxed),
            failed: self.pool_stats.failed.load(Ordering::Relaxed),
        }
    }

    /// One pass of the pool loop: settle what is in flight, plan, start the plan.
    async fn balance(&self) -> Result<()> {
        // Settle repurposings under way.
        let flights = self.pool.lock().in_flight.clone();
        let mut done = Vec::new();
        for f in &flights {
            let view = match self.transaction(&f.txn).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(txn = f.txn, "pool: {e}");
                    continue;
                }
            };
            match view.status {
                TxnStatus::Pending | TxnStatus::Running => {}
                TxnStatus::Ok => {
                    let finished = view
                        .result
                        .as_ref()
                        .and_then(|r| r.finished)
                        .unwrap_or_else(ambulance_report::now);
                    // Kept until the host's health (published after it) shows the new role.
                    let shown = self.seen.read().get(&f.host).is_some_and(|s| {
                        s.health.as_ref().is_some_and(|h| {
                            h.time >= finished
                                && h.guests.iter().any(|g| {
                                    g.name == f.guest && g.role.as_deref() == Some(&f.role)
                                })
                        })
                    });
                    let host_gone = !self.availability(&f.host).0;
                    if shown || host_gone {
                        done.push((f.txn.clone(), None));
                    } else if f.finished.is_none() {
                        if let Some(x) = self
                            .pool
                            .lock()
                            .in_flight
                            .iter_mut()
                            .find(|x| x.txn == f.txn)
                        {
                            x.finished = Some(finished);
                        }
                    }
                }
                other => {
                    let why = view
                        .result
                        .as_ref()
                        .and_then(|r| r.error.clone())
                        .unwrap_or_else(|| format!("{other:?}"));
                    done.push((f.txn.clone(), Some(why)));
                }
            }
        }
        if !done.is_empty() {
            let mut p = self.pool.lock();
            let until =
                ambulance_report::now().as_millisecond() + self.cfg.min_dwell.as_millis() as i64;
            for (txn, failed) in &done {
                if let Some(f) = p.in_flight.iter().find(|f| f.txn == *txn).cloned() {
                    match failed {
                        Some(why) => {
                            p.cooling.insert((f.host.clone(), f.guest.clone()), until);
                            self.pool_stats.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                txn,
                                host = f.host,
                                guest = f.guest,
                                role = f.role,
                                "pool: repurposing failed: {why}"
                            );
                        }
                        None => tracing::info!(
                            txn,
                            host = f.host,
                            guest = f.guest,
                            role = f.role,
                            "pool: repurposed"
                        ),
                    }
                }
                p.in_flight.retain(|f| f.txn != *txn);
            }
        }
        let input = self.planner_input();
        let plan = pool::plan(&input);
        self.pool.lock().blocked = plan.blocked.clone();
        for m in plan.moves {
            let req = TxnRequest {
                subscriber: None,
                host: m.host.clone(),
                instructions: vec![Instruction::Repurpose {
                    guest: m.guest.clone(),
                    role: m.role.clone(),
                    digest: m.digest.clone(),
                    register_timeout_ms: Some(self.cfg.register_timeout.as_millis() as u64),
                }],
                timeout_ms: Some(self.cfg.command_timeout.as_millis() as u64),
                no_wait: true,
            };
            match self.create_transaction(&req).await {
                Ok(t) => {
                    self.pool_stats.started.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(txn = t.txn, host = m.host, guest = m.guest, from = ?m.from, role = m.role, "pool: repurposing");
                    self.pool.lock().in_flight.push(InFlight {
                        txn: t.txn,
                        host: m.host,
                        guest: m.guest,
                        from: m.from,
                        role: m.role,
                        digest: m.digest,
                        started: t.created,
                        finished: None,
                    });
                }
                Err(e) => {
                    tracing::warn!(
                        host = m.host,
                        guest = m.guest,
                        role = m.role,
                        "pool: cannot start a repurposing: {e}"
                    );
                }
            }
        }
        Ok(())
    }
}
