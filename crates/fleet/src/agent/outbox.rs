//! Failures and reports to the engine, exactly once.
//!
//! The host's store is the source of truth: every index entry (a report, or a failed
//! diagnosis) is published until the engine acknowledges it, then marked in the ledger.
//! A failure event is kept in the ledger from the moment the failure is accepted until
//! the engine acknowledges it; an entry whose failure event never made it (the daemon
//! stopped before) gets one made from the entry. Every message carries a message id
//! (`<host>/failure/<report id>`, `<host>/report/<report id>`) so a message published
//! again — the acknowledgement was lost, the host restarted before it recorded it — is
//! dropped by the engine inside the stream's duplicate window, and by the controller's
//! index after it.
//!
//! A report's files go to the host's object store bucket before its event: once the
//! controller sees the event, the files are there.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ambulance_service::store::{Filter, IndexEntry, Status};
use ambulance_service::Notice;
use async_nats::jetstream::{self, object_store::ObjectStore};
use async_nats::Client;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::ledger::{FAILURE, REPORT};
use super::Agent;
use crate::engine;
use crate::error::{FleetError, Result};
use crate::model::{FailureEvent, FleetEntry, ReportEvent};
use crate::names::{self, Artifact};

/// A full sweep of the store at least this often (besides every notice).
const SWEEP: Duration = Duration::from_secs(30);

impl Agent {
    pub(super) async fn outbox_loop(
        self: Arc<Self>,
        client: Client,
        mut notices: broadcast::Receiver<Notice>,
    ) -> Result<()> {
        let js = engine::jetstream(&client);
        let mut bucket: Option<ObjectStore> = None;
        let mut delay = Duration::from_millis(200);
        let mut failing = false;
        loop {
            let outcome = self.flush(&js, &mut bucket).await;
            let wait = match outcome {
                Ok(n) => {
                    if failing {
                        tracing::info!(host = self.host(), "fleet: publishing again");
                        failing = false;
                    }
                    if n > 0 {
                        tracing::debug!(host = self.host(), published = n, "fleet: outbox flushed");
                    }
                    delay = Duration::from_millis(200);
                    SWEEP
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            host = self.host(),
                            "fleet: cannot publish yet ({e}); retrying"
                        );
                        failing = true;
                    }
                    bucket = None;
                    let d = delay;
                    delay = (delay * 2).min(Duration::from_secs(3));
                    d
                }
            };
            // Wait for news (or the retry or sweep time).
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, notices.recv()).await {
                    Err(_) => break,
                    Ok(Ok(Notice::Failure {
                        guest,
                        report_id,
                        cause,
                        time,
                        detail,
                    })) => {
                        let ev = FailureEvent {
                            host: self.host().to_string(),
                            guest,
                            report_id: report_id.to_string(),
                            cause,
                            time,
                            detail,
                        };
                        if let Err(e) = self.ledger.queue_failure(&ev) {
                            tracing::error!("fleet: cannot keep a failure event: {e}");
                        }
                        if !failing {
                            break;
                        }
                    }
                    Ok(Ok(Notice::Diagnosed(_))) if !failing => break,
                    Ok(Ok(_)) => {}
                    // Lagged: some notices were lost; the sweep finds their entries.
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                }
            }
        }
    }

    /// Publishes everything not yet acknowledged; how many messages went out.
    async fn flush(
        &self,
        js: &jetstream::Context,
        bucket: &mut Option<ObjectStore>,
    ) -> Result<usize> {
        let host = self.host().to_string();
        let mut sent = 0;
        for ev in self.ledger.pending_failures()? {
            self.publish_failure(js, &ev).await?;
            sent += 1;
        }
        let acked = self.ledger.all_acked()?;
        let entries = self.svc.store().list(&Filter::default())?;
        self.stored.store(entries.len(), Ordering::Relaxed);
        let pending: Vec<_> = entries
            .into_iter()
            .filter(|e| acked.get(e.id.as_str()).copied().unwrap_or(0) & REPORT == 0)
            .collect();
        self.outbox.store(pending.len(), Ordering::Relaxed);
        for e in pending {
            let bits = acked.get(e.id.as_str()).copied().unwrap_or(0);
            if bits & FAILURE == 0 {
                let ev = FailureEvent {
                    host: host.clone(),
                    guest: e.guest.clone(),
                    report_id: e.id.to_string(),
                    cause: e.cause.clone(),
                    time: e.time,
                    detail: String::new(),
                };
                self.publish_failure(js, &ev).await?;
                sent += 1;
            }
            if bucket.is_none() {
                *bucket = Some(
                    js.get_object_store(names::report_bucket(&host))
                        .await
                        .map_err(|e| {
                            FleetError::engine("cannot open this host's report bucket", e)
                        })?,
                );
            }
            let store = bucket.as_ref().expect("just opened");
            self.publish_entry(js, store, &e).await?;
            self.outbox.fetch_sub(1, Ordering::Relaxed);
            sent += 1;
        }
        Ok(sent)
    }

    async fn publish_failure(&self, js: &jetstream::Context, ev: &FailureEvent) -> Result<()> {
        let body = Bytes::from(serde_json::to_vec(ev).unwrap_or_default());
        engine::publish_once(
            js,
            &names::failure_subject(self.host()),
            &format!("{}/failure/{}", self.host(), ev.report_id),
            body,
        )
        .await?;
        self.ledger.ack(&ev.report_id, FAILURE)
    }

    async fn publish_entry(
        &self,
        js: &jetstream::Context,
        bucket: &ObjectStore,
        e: &IndexEntry,
    ) -> Result<()> {
        let host = self.host();
        let id = e.id.to_string();
        let mut report_json = None;
        if e.status == Status::Ok {
            for (artifact, path) in [
                (Artifact::Core, &e.core),
                (Artifact::Text, &e.text),
                (Artifact::Json, &e.json),
            ] {
                let Some(path) = path else { continue };
                let mut file = tokio::fs::File::open(path)
                    .await
                    .map_err(|err| FleetError::io("cannot open", path, err))?;
                let name = names::object_name(host, &id, artifact);
                bucket
                    .put(name.as_str(), &mut file)
                    .await
                    .map_err(|err| FleetError::engine(&format!("cannot store {name}"), err))?;
                if artifact == Artifact::Json {
                    report_json = Some(
                        tokio::fs::read_to_string(path)
                            .await
                            .map_err(|err| FleetError::io("cannot read", path, err))?,
                    );
                }
            }
        }
        let max = js.client().server_info().max_payload.saturating_sub(4096);
        let report = report_json
            .filter(|j| j.len() < max)
            .and_then(|j| serde_json::value::RawValue::from_string(j).ok());
        let ev = ReportEvent {
            entry: FleetEntry::of(host, e),
            report,
        };
        let body = Bytes::from(serde_json::to_vec(&ev).unwrap_or_default());
        engine::publish_once(
            js,
            &names::report_subject(host),
            &format!("{host}/report/{id}"),
            body,
        )
        .await?;
        self.ledger.ack(&id, REPORT)
    }
}
