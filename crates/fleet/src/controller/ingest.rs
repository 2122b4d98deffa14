//! What hosts publish, into the controller's index: failure and report events (an
//! ordered consumer over the whole events stream, from its start — the index is rebuilt
//! from the engine at every start) and health (a watch of the health bucket).
//!
//! Events are deduplicated by host and report id here too, so a report published again
//! after the engine's duplicate window (a host away for longer than that) is still
//! listed once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ambulance_report::Timestamp;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::{Controller, Seen};
use crate::error::{FleetError, Result};
use crate::model::{FailureEvent, Health, ReportEvent};
use crate::names;

pub(super) fn spawn(ctl: &Arc<Controller>) {
    let c = ctl.clone();
    tokio::spawn(async move {
        let mut next = 1u64;
        loop {
            if let Err(e) = c.follow_events(&mut next).await {
                tracing::warn!("events: {e}; following again from {next}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let c = ctl.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = c.follow_health().await {
                tracing::warn!("health: {e}; watching again");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

fn timestamp(t: time::OffsetDateTime) -> Timestamp {
    Timestamp::from_nanosecond(t.unix_timestamp_nanos()).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Controller {
    async fn follow_events(&self, next: &mut u64) -> Result<()> {
        let stream = self
            .js
            .get_stream(names::EVENTS_STREAM)
            .await
            .map_err(|e| FleetError::engine("cannot open the events stream", e))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: "amb.ev.>".into(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: *next,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| FleetError::engine("cannot follow the events stream", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| FleetError::engine("cannot follow the events stream", e))?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| FleetError::engine("events stream", e))?;
            if let Ok(info) = m.info() {
                *next = info.stream_sequence + 1;
            }
            self.ingest(&m.subject, &m.payload);
        }
        Err(FleetError::Engine("the events stream ended".into()))
    }

    /// One event: `amb.ev.<host>.failure` or `amb.ev.<host>.report`.
    pub(super) fn ingest(&self, subject: &str, payload: &[u8]) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let mut parts = subject.split('.');
        let (Some("amb"), Some("ev"), Some(host), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        match kind {
            "failure" => match serde_json::from_slice::<FailureEvent>(payload) {
                // The subject is the host's (the engine lets no one else publish there).
                Ok(ev) if ev.host == host => {
                    let mut idx = self.index.write();
                    if idx
                        .failure_keys
                        .insert((host.to_string(), ev.report_id.clone()))
                    {
                        idx.failures.push(ev);
                    } else {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(ev) => tracing::warn!(
                    subject,
                    claimed = ev.host,
                    "failure event names another host; ignored"
                ),
                Err(e) => tracing::warn!(subject, "unreadable failure event: {e}"),
            },
            "report" => match serde_json::from_slice::<ReportEvent>(payload) {
                Ok(ev) if ev.entry.host == host => {
                    let mut idx = self.index.write();
                    let key = (host.to_string(), ev.entry.id.clone());
                    if idx.reports.contains_key(&key) {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    idx.by_id
                        .entry(ev.entry.id.clone())
                        .or_default()
                        .push(host.to_string());
                    idx.reports.insert(key, ev.entry);
                }
                Ok(ev) => tracing::warn!(
                    subject,
                    claimed = ev.entry.host,
                    "report event names another host; ignored"
                ),
                Err(e) => tracing::warn!(subject, "unreadable report event: {e}"),
            },
            _ => {}
        }
    }

    async fn follow_health(&self) -> Result<()> {
        let store = self
            .js
            .get_key_value(names::HEALTH_BUCKET)
            .await
            .map_err(|e| FleetError::engine("cannot open the health bucket", e))?;
        let mut watch = store
            .watch_all()
            .await
            .map_err(|e| FleetError::engine("cannot watch the health bucket", e))?;
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| FleetError::engine("health bucket", e))?;
            self.stats.health.fetch_add(1, Ordering::Relaxed);
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let health = serde_json::from_slice::<Health>(&entry.value).ok();
            if health.as_ref().is_some_and(|h| h.host != entry.key) {
                tracing::warn!(key = entry.key, "health names another host; ignored");
                continue;
            }
            let changed = {
                let mut seen = self.seen.write();
                let before = seen
                    .get(&entry.key)
                    .and_then(|s| s.health.as_ref())
                    .map(|h| &h.guests)
                    != health.as_ref().map(|h| &h.guests);
                seen.insert(
                    entry.key.clone(),
                    Seen {
                        health,
                        at: timestamp(entry.created),
                    },
                );
                before
            };
            if changed {
                self.pool_wake.notify_one();
            }
        }
        Err(FleetError::Engine("the health watch ended".into()))
    }
}
