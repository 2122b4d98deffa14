//! Enrolment (zero certificate → unique certificate), renewal, revocation, zero
//! certificates, and the registry they change (bucket `amb-fleet`). Every change to who
//! may do what is written to the registry first and then to the engine's authorization;
//! when the authorization cannot be applied the registry change is undone.

use std::sync::Arc;

use async_nats::Message;
use bytes::Bytes;
use futures_util::StreamExt;

use super::Controller;
use crate::error::{FleetError, Result};
use crate::model::{EnrolReply, EnrolRequest, HostRecord, SubscriberRecord};
use crate::names;
use crate::pki::Subject;

/// 12 random hex digits: an enrolment's or a zero certificate generation's id.
fn random_id() -> String {
    let mut random = [0u8; 6];
    names::ring_random(&mut random);
    random.iter().map(|b| format!("{b:02x}")).collect()
}

impl Controller {
    pub(super) async fn load_registry(&self) -> Result<()> {
        let mut reg = self.registry.lock().await;
        let mut keys = self
            .state_kv
            .keys()
            .await
            .map_err(|e| FleetError::engine("cannot list the registry", e))?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            names.push(k.map_err(|e| FleetError::engine("cannot list the registry", e))?);
        }
        for key in names {
            let Some(entry) = self
                .state_kv
                .entry(&key)
                .await
                .map_err(|e| FleetError::engine("cannot read the registry", e))?
            else {
                continue;
            };
            if let Some(h) = key.strip_prefix("host.") {
                match serde_json::from_slice::<HostRecord>(&entry.value) {
                    Ok(r) => {
                        reg.hosts.insert(h.to_string(), (r, entry.revision));
                    }
                    Err(e) => tracing::error!(key, "registry: unreadable host record: {e}"),
                }
            } else if let Some(s) = key.strip_prefix("sub.") {
                match serde_json::from_slice::<SubscriberRecord>(&entry.value) {
                    Ok(r) => {
                        reg.subscribers.insert(s.to_string(), (r, entry.revision));
                    }
                    Err(e) => tracing::error!(key, "registry: unreadable subscriber record: {e}"),
                }
            }
        }
        tracing::info!(
            hosts = reg.hosts.len(),
            subscribers = reg.subscribers.len(),
            "registry loaded"
        );
        Ok(())
    }

    /// Writes a record at the revision the registry holds (0: create-only); the new
    /// revision.
    async fn put_record(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<u64> {
        let r = if revision == 0 {
            self.state_kv
                .create(key, Bytes::from(value))
                .await
                .map_err(|e| e.to_string())
        } else {
            self.state_kv
                .update(key, Bytes::from(value), revision)
                .await
                .map_err(|e| e.to_string())
        };
        r.map_err(|e| {
            FleetError::Conflict(format!(
                "registry {key} changed under this controller ({e}); try again"
            ))
        })
    }

    pub(super) async fn spawn_responders(self: Arc<Self>) -> Result<()> {
        let enrol = self
            .client
            .queue_subscribe("amb.enrol.*", names::CONTROLLER_QUEUE.into())
            .await
            .map_err(|e| FleetError::engine("cannot answer enrolments", e))?;
        let renew = self
            .client
            .queue_subscribe("amb.renew.*", names::CONTROLLER_QUEUE.into())
            .await
            .map_err(|e| FleetError::engine("cannot answer renewals", e))?;
        for (mut sub, renewal) in [(enrol, false), (renew, true)] {
            let ctl = self.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let ctl = ctl.clone();
                    tokio::spawn(async move { ctl.answer(msg, renewal).await });
                }
            });
        }
        Ok(())
    }

    async fn answer(&self, msg: Message, renewal: bool) {
        let token = msg.subject.rsplit('.').next().unwrap_or("").to_string();
        let outcome = match serde_json::from_slice::<EnrolRequest>(&msg.payload) {
            Err(e) => Err(FleetError::Invalid(format!(
                "malformed enrolment request: {e}"
            ))),
            Ok(req) if renewal => self.renew(&token, &req).await,
            Ok(req) => self.enrol(&token, &req).await,
        };
        let reply = match outcome {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, "{} refused: {e}", if renewal { "renewal" } else { "enrolment" });
                EnrolReply {
                    error: Some(e.to_string()),
                    ..Default::default()
                }
            }
        };
        if let Some(to) = msg.reply {
            let body = Bytes::from(serde_json::to_vec(&reply).unwrap_or_default());
            if let Err(e) = self.client.publish(to, body).await {
                tracing::warn!("cannot answer {}: {e}", msg.subject);
            }
        }
    }

    /// A host's enrolment, asked with subscriber `subscriber`'s zero certificate (the
    /// engine lets that certificate publish on `amb.enrol.<subscriber>` only).
    async fn enrol(&self, subscriber: &str, req: &EnrolRequest) -> Result<EnrolReply> {
        names::check("host id", &req.host)?;
        if req.subscriber != subscriber {
            return Err(FleetError::Refused(format!(
                "this zero certificate is subscriber {subscriber:?}'s, not {:?}'s",
                req.subscriber
            )));
        }
        let mut reg = self.registry.lock().await;
        if !reg.subscribers.contains_key(subscriber) {
            return Err(FleetError::Refused(format!(
                "subscriber {subscriber:?} has no zero certificate from this controller"
            )));
        }
        let previous = reg.hosts.get(&req.host).cloned();
        if let Some((h, _)) = &previous {
            if h.subscriber != subscriber {
                return Err(FleetError::Refused(format!(
                    "host id {:?} is enrolled for subscriber {:?}",
                    req.host, h.subscriber
                )));
            }
            if !h.reenrol_allowed {
                return Err(FleetError::Refused(format!(
                    "host id {:?} is already enrolled (since {}); an operator must allow it to \
                     enrol again: ambulance fleet reenrol {}",
                    req.host, h.enrolled, req.host
                )));
            }
        }
        let enrolment = random_id();
        let subject = Subject::host(&req.host, subscriber, &enrolment);
        let issued = self
            .ca
            .sign_csr(&req.csr, &req.host, &subject, self.cfg.host_certificate)?;
        self.ensure_host_resources(&req.host).await?;
        let now = ambulance_report::now();
        let record = HostRecord {
            host: req.host.clone(),
            subscriber: subscriber.to_string(),
            enrolment,
            serial: issued.serial.clone(),
            not_after: issued.not_after,
            enrolled: now,
            renewed: None,
            revoked: false,
            reenrol_allowed: false,
        };
        let rev = previous.as_ref().map(|(_, r)| *r).unwrap_or(0);
        let new_rev = match self
            .put_record(
                &names::host_key(&req.host),
                serde_json::to_vec(&record).unwrap_or_default(),
                rev,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if previous.is_none() {
                    self.remove_host_resources(&req.host).await;
                }
                return Err(e);
            }
        };
        reg.hosts
            .insert(req.host.clone(), (record.clone(), new_rev));
        if let Err(e) = self.apply_auth(&reg) {
            // Undo: the registry must not say what the engine does not.
            match &previous {
                Some((old, _)) => {
                    let _ = self
                        .put_record(
                            &names::host_key(&req.host),
                            serde_json::to_vec(old).unwrap_or_default(),
                            new_rev,
                        )
                        .await
                        .map(|r| reg.hosts.insert(req.host.clone(), (old.clone(), r)));
                }
                None => {
                    let _ = self.state_kv.purge(names::host_key(&req.host)).await;
                    reg.hosts.remove(&req.host);
                    self.remove_host_resources(&req.host).await;
                }
            }
            return Err(e);
        }
        tracing::info!(host = req.host, subscriber, serial = issued.serial, until = %issued.not_after, "host enrolled");
        Ok(EnrolReply {
            certificate: Some(issued.pem),
            ca: Some(self.ca.cert_pem().to_string()),
            not_after: Some(issued.not_after),
            error: None,
        })
    }

    /// A host's renewal, asked over its own identity (the engine lets host H publish on
    /// `amb.renew.H` only).
    async fn renew(&self, host: &str, req: &EnrolRequest) -> Result<EnrolReply> {
        if req.host != host {
            return Err(FleetError::Refused(format!(
                "host {host:?} cannot renew host {:?}'s certificate",
                req.host
            )));
        }
        let mut reg = self.registry.lock().await;
        let (mut record, rev) = reg
            .hosts
            .get(host)
            .cloned()
            .ok_or_else(|| FleetError::Refused(format!("host {host:?} is not enrolled")))?;
        if record.revoked {
            return Err(FleetError::Refused(format!("host {host:?} is revoked")));
        }
        let subject = Subject::host(host, &record.subscriber, &record.enrolment);
        let issued = self
            .ca
            .sign_csr(&req.csr, host, &subject, self.cfg.host_certificate)?;
        record.serial = issued.serial.clone();
        record.not_after = issued.not_after;
        record.renewed = Some(ambulance_report::now());
        let new_rev = self
            .put_record(
                &names::host_key(host),
                serde_json::to_vec(&record).unwrap_or_default(),
                rev,
            )
            .await?;
        reg.hosts.insert(host.to_string(), (record, new_rev));
        tracing::info!(host, serial = issued.serial, until = %issued.not_after, "host certificate renewed");
        Ok(EnrolReply {
            certificate: Some(issued.pem),
            ca: Some(self.ca.cert_pem().to_string()),
            not_after: Some(issued.not_after),
            error: None,
        })
    }

    /// Revokes a host: its user leaves the engine's authorization at once (the servers
    /// close its connections as they reload); its reports stay.
    pub async fn revoke(&self, host: &str) -> Result<HostRecord> {
        self.change_host(host, |r| {
            if r.revoked {
                return Err(FleetError::Conflict(format!(
                    "host {host} is already revoked"
                )));
            }
            r.revoked = true;
            Ok(())
        })
        .await
    }

    /// Lets an enrolled (or revoked) host id enrol again, once.
    pub async fn allow_reenrolment(&self, host: &str) -> Result<HostRecord> {
        self.change_host(host, |r| {
            r.reenrol_allowed = true;
            Ok(())
        })
        .await
    }

    async fn change_host(
        &self,
        host: &str,
        change: impl FnOnce(&mut HostRecord) -> Result<()>,
    ) -> Result<HostRecord> {
        let mut reg = self.registry.lock().await;
        let (old, rev) = reg
            .hosts
            .get(host)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(format!("no host {host:?} is enrolled")))?;
        let mut record = old.clone();
        change(&mut record)?;
        let new_rev = self
            .put_record(
                &names::host_key(host),
                serde_json::to_vec(&record).unwrap_or_default(),
                rev,
            )
            .await?;
        reg.hosts
            .insert(host.to_string(), (record.clone(), new_rev));
        if let Err(e) = self.apply_auth(&reg) {
            if let Ok(r) = self
                .put_record(
                    &names::host_key(host),
                    serde_json::to_vec(&old).unwrap_or_default(),
                    new_rev,
                )
                .await
            {
                reg.hosts.insert(host.to_string(), (old, r));
            }
            return Err(e);
        }
        Ok(record)
    }

    /// Signs a zero certificate for `subscriber` (the request's key stays with whoever
    /// made it) and lets it enrol hosts; the subscriber's previous zero certificate stops
    /// working. The certificate and the CA, PEM.
    pub async fn bootstrap(&self, subscriber: &str, csr: &str) -> Result<(String, String)> {
        names::check("subscriber", subscriber)?;
        let generation = random_id();
        let issued = self.ca.sign_csr(
            csr,
            "zero",
            &Subject::zero(subscriber, &generation),
            self.cfg.zero_certificate,
        )?;
        let mut reg = self.registry.lock().await;
        let rev = reg
            .subscribers
            .get(subscriber)
            .map(|(_, r)| *r)
            .unwrap_or(0);
        let record = SubscriberRecord {
            subscriber: subscriber.to_string(),
            issued: ambulance_report::now(),
            serial: issued.serial.clone(),
            not_after: issued.not_after,
            generation,
        };
        let new_rev = self
            .put_record(
                &names::subscriber_key(subscriber),
                serde_json::to_vec(&record).unwrap_or_default(),
                rev,
            )
            .await?;
        reg.subscribers
            .insert(subscriber.to_string(), (record, new_rev));
        self.apply_auth(&reg)?;
        tracing::info!(
            subscriber,
            serial = issued.serial,
            "zero certificate issued"
        );
        Ok((issued.pem, self.ca.cert_pem().to_string()))
    }

    /// The registry's hosts.
    pub(crate) async fn host_records(&self) -> Vec<HostRecord> {
        self.registry
            .lock()
            .await
            .hosts
            .values()
            .map(|(h, _)| h.clone())
            .collect()
    }

    pub(crate) async fn host_record(&self, host: &str) -> Option<HostRecord> {
        self.registry
            .lock()
            .await
            .hosts
            .get(host)
            .map(|(h, _)| h.clone())
    }
}
