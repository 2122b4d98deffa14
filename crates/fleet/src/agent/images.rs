//! Repurposing a slot on this host: the image is streamed from the library into
//! `<data_dir>/fleet/images/<digest>`, its SHA-256 checked against the digest the
//! transaction names (a mismatch is refused and nothing boots), and the slot booted from
//! it with the role's settings ([`ambulance_service::Service::repurpose`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_service::config::Image;
use ambulance_service::supervisor::Assignment;
use async_nats::jetstream;
use sha2::Digest;
use tokio::io::AsyncReadExt;

use super::Agent;
use crate::error::{FleetError, Result};
use crate::model::ImageManifest;
use crate::names;

/// How long a repurposed kernel has to register when the transaction does not say.
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads an image's manifest for `role` from the library.
pub async fn manifest(
    store: &jetstream::object_store::ObjectStore,
    role: &str,
    digest: &str,
) -> Result<ImageManifest> {
    let name = names::manifest_object(role, digest);
    let mut obj = store.get(&name).await.map_err(|e| {
        FleetError::NotFound(format!(
            "the library has no image {digest} for role {role} ({name}: {e})"
        ))
    })?;
    let mut text = Vec::new();
    obj.read_to_end(&mut text)
        .await
        .map_err(|e| FleetError::engine(&format!("cannot read {name}"), e))?;
    serde_json::from_slice(&text)
        .map_err(|e| FleetError::Engine(format!("manifest {name} is unreadable: {e}")))
}

impl Agent {
    /// Fetches, checks and boots: the guest's status and how long each part took.
    pub(super) async fn repurpose(
        self: &Arc<Self>,
        js: &jetstream::Context,
        guest: &str,
        role: &str,
        digest: &str,
        register_timeout: Duration,
    ) -> Result<serde_json::Value> {
        names::check("role", role)?;
        names::check_digest(digest)?;
        if self.svc.guest(guest).is_none() {
            return Err(FleetError::NotFound(format!(
                "no guest (slot) named {guest:?} on host {}",
                self.host()
            )));
        }
        let started = Instant::now();
        let store = js
            .get_object_store(names::IMAGE_BUCKET)
            .await
            .map_err(|e| FleetError::engine("cannot open the image library", e))?;
        let m = manifest(&store, role, digest).await?;
        if m.digest != digest || m.role != role {
            return Err(FleetError::Refused(format!(
                "manifest of {digest} names image {} of role {}",
                m.digest, m.role
            )));
        }
        let dir = self.dir.join("images");
        crate::pki::create_private_dir(&dir)?;
        let part = dir.join(format!("{digest}.part"));
        let mut obj = store.get(names::image_object(digest)).await.map_err(|e| {
            FleetError::NotFound(format!("the library has no bytes of image {digest}: {e}"))
        })?;
        let mut bytes = Vec::with_capacity(m.size.min(1 << 30) as usize);
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = obj
                .read(&mut buf)
                .await
                .map_err(|e| FleetError::engine(&format!("cannot stream image {digest}"), e))?;
            if n == 0 {
                break;
            }
            if bytes.len() as u64 + n as u64 > m.size {
                return Err(FleetError::Refused(format!(
                    "image {digest} is larger than its manifest's {} bytes; refused, not booted",
                    m.size
                )));
            }
            hasher.update(&buf[..n]);
            bytes.extend_from_slice(&buf[..n]);
        }
        let actual: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != digest {
            return Err(FleetError::Refused(format!(
                "image {digest} of role {role}: the bytes the library streamed ({} bytes) have \
                 SHA-256 {actual}; refused, not booted",
                bytes.len()
            )));
        }
        std::fs::write(&part, &bytes).map_err(|e| FleetError::io("cannot write", &part, e))?;
        let path = dir.join(digest);
        std::fs::rename(&part, &path).map_err(|e| FleetError::io("cannot rename", &part, e))?;
        let fetched = started.elapsed();
        let assignment = Assignment {
            role: role.to_string(),
            digest: digest.to_string(),
            image: Image {
                path,
                kernel: Arc::from(bytes),
                cmdline: m.cmdline.clone(),
            },
            memory_bytes: m.memory_bytes,
            vcpus: m.vcpus,
        };
        let booted = Instant::now();
        let status = self
            .svc
            .repurpose(guest, assignment, register_timeout)
            .await;
        self.health_now.notify_one();
        let status = status?;
        Ok(serde_json::json!({
            "state": status.state,
            "role": status.role,
            "image": status.image_digest,
            "registered": status.registered,
            "fetch_ms": fetched.as_millis() as u64,
            "register_ms": booted.elapsed().as_millis() as u64,
        }))
    }
}
