//! Zero certificate → unique certificate, and renewal before expiry.
//!
//! The host's key and certificate live together in `<data_dir>/fleet/host.pem` (0600),
//! the fleet CA in `ca.pem` beside it. A new key is made for each enrolment and each
//! renewal; the signing request leaves the host, the key never does.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;

use super::Agent;
use crate::engine::{self, Identity};
use crate::error::{FleetError, Result};
use crate::model::{EnrolReply, EnrolRequest};
use crate::names;
use crate::pki::{self, Role};

/// A host's identity files.
#[derive(Clone, Debug)]
pub struct HostIdentity;

impl HostIdentity {
    /// `<fleet dir>/host.pem`.
    pub fn pem(dir: &std::path::Path) -> std::path::PathBuf {
        dir.join("host.pem")
    }
}

impl Agent {
    fn unique(&self) -> Identity {
        Identity {
            ca: self.dir.join("ca.pem"),
            pem: HostIdentity::pem(&self.dir),
        }
    }

    /// The host's unique identity: the one it has (when it is still valid and is this
    /// host's), or a new one from the controller through the zero certificate. The
    /// engine being unreachable is waited out; a refusal is an error.
    pub(super) async fn ensure_identity(self: Arc<Self>) -> Result<Identity> {
        let id = self.unique();
        if let Ok(text) = std::fs::read_to_string(&id.pem) {
            let info = pki::cert_info(&text)?;
            let subject = info.subject.clone().ok_or_else(|| {
                FleetError::Pki(format!(
                    "{} is not a fleet host certificate",
                    id.pem.display()
                ))
            })?;
            if subject.role != Role::Host
                || subject.name != self.host()
                || subject.org != self.m.subscriber
            {
                return Err(FleetError::Invalid(format!(
                    "{} is host {:?} of subscriber {:?}, but [fleet] says host {:?} of {:?}; \
                     remove that directory to enrol as configured",
                    id.pem.display(),
                    subject.name,
                    subject.org,
                    self.host(),
                    self.m.subscriber
                )));
            }
            if !info.expired() {
                return Ok(id);
            }
            tracing::error!(
                host = self.host(),
                expired = %info.not_after,
                "fleet: this host's certificate expired (the host was away longer than its \
                 validity); enrolling again with the zero certificate"
            );
            return self.enrol().await.map_err(|e| match e {
                FleetError::Refused(why) => FleetError::Refused(format!(
                    "this host's certificate expired at {} and enrolling again was refused: {why}",
                    info.not_after
                )),
                other => other,
            });
        }
        self.enrol().await
    }

    /// Enrols through the zero certificate, retrying while the engine or the controller
    /// cannot be reached.
    async fn enrol(&self) -> Result<Identity> {
        let zero = Identity {
            ca: self.m.bootstrap.join("ca.pem"),
            pem: self.m.bootstrap.join("zero.pem"),
        };
        for p in [&zero.ca, &zero.pem] {
            if !p.exists() {
                return Err(FleetError::Invalid(format!(
                    "the zero certificate is missing: {} (fleet.bootstrap; made by `ambulance \
                     fleet bootstrap --out`)",
                    p.display()
                )));
            }
        }
        let zero_info = pki::cert_info(
            &std::fs::read_to_string(&zero.pem)
                .map_err(|e| FleetError::io("cannot read", &zero.pem, e))?,
        )?;
        if zero_info.expired() {
            return Err(FleetError::Refused(format!(
                "the zero certificate {} expired at {}; ask for a new one (ambulance fleet bootstrap)",
                zero.pem.display(),
                zero_info.not_after
            )));
        }
        let mut delay = Duration::from_millis(200);
        loop {
            match self.enrol_once(&zero).await {
                Ok(id) => return Ok(id),
                Err(e @ FleetError::Refused(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        host = self.host(),
                        "fleet: cannot enrol yet: {e}; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn enrol_once(&self, zero: &Identity) -> Result<Identity> {
        let client = engine::connect(
            &self.m.nats,
            zero,
            &format!("ambulance-enrol-{}", self.host()),
            names::ENROL_INBOX,
        )
        .await?;
        let (key, csr) = pki::key_and_csr(self.host())?;
        let reply = self
            .ask(&client, &names::enrol_subject(&self.m.subscriber), &csr)
            .await;
        drop(client);
        let reply = reply?;
        let id = self.unique();
        self.store_identity(&reply, &key)?;
        tracing::info!(
            host = self.host(),
            until = ?reply.not_after,
            "fleet: enrolled; unique certificate stored"
        );
        Ok(id)
    }

    async fn ask(&self, client: &Client, subject: &str, csr: &str) -> Result<EnrolReply> {
        let req = EnrolRequest {
            host: self.host().to_string(),
            subscriber: self.m.subscriber.clone(),
            csr: csr.to_string(),
        };
        let body = Bytes::from(serde_json::to_vec(&req).unwrap_or_default());
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            client.request(subject.to_string(), body),
        )
        .await
        .map_err(|_| FleetError::Engine(format!("no answer from the controller on {subject}")))?
        .map_err(|e| {
            FleetError::engine(&format!("no answer from the controller on {subject}"), e)
        })?;
        let reply: EnrolReply = serde_json::from_slice(&msg.payload)
            .map_err(|e| FleetError::Engine(format!("the controller's answer is not JSON: {e}")))?;
        if let Some(why) = reply.error {
            return Err(FleetError::Refused(why));
        }
        Ok(reply)
    }

    fn store_identity(&self, reply: &EnrolReply, key: &str) -> Result<()> {
        let (Some(cert), Some(ca)) = (&reply.certificate, &reply.ca) else {
            return Err(FleetError::Engine(
                "the controller's answer has no certificate".into(),
            ));
        };
        let id = self.unique();
        pki::write_public(&id.ca, ca)?;
        pki::write_private(&id.pem, &format!("{cert}{key}"))
    }

    /// Renews the certificate over the host's own identity once two thirds of its
    /// validity have passed (and retries every 30 s until it works).
    pub(super) async fn renew_loop(self: Arc<Self>, client: Client) -> Result<()> {
        let id = self.unique();
        loop {
            let text = std::fs::read_to_string(&id.pem)
                .map_err(|e| FleetError::io("cannot read", &id.pem, e))?;
            let info = pki::cert_info(&text)?;
            let renew_at = info.renew_at().as_second();
            let now = ambulance_report::now().as_second();
            if renew_at > now {
                tokio::time::sleep(Duration::from_secs((renew_at - now) as u64)).await;
                continue;
            }
            let renewed = async {
                let (key, csr) = pki::key_and_csr(self.host())?;
                let reply = self
                    .ask(&client, &names::renew_subject(self.host()), &csr)
                    .await?;
                self.store_identity(&reply, &key)?;
                Ok::<_, FleetError>(reply.not_after)
            }
            .await;
            match renewed {
                Ok(until) => {
                    tracing::info!(host = self.host(), ?until, "fleet: certificate renewed");
                    // Reconnect now with the new certificate.
                    let _ = client.force_reconnect().await;
                }
                Err(e) => {
                    tracing::warn!(
                        host = self.host(),
                        "fleet: cannot renew the certificate yet: {e}"
                    );
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    }
}
