//! Talking to the engine: connecting with a certificate of the fleet CA, publishing
//! exactly once (a message id per event), and the few key-value operations hosts do by
//! subject — create-only, update by revision, read by key — so that their permissions can
//! name exactly those subjects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{Client, ConnectErrorKind, StatusCode};
use bytes::Bytes;

use crate::error::{FleetError, Result};

/// A client identity: the fleet CA, and one PEM file holding the certificate and its key.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The certificate followed by its key (PEM), 0600.
    pub pem: PathBuf,
}

/// Connects to the first reachable server of `urls` as `id`, with replies on `inbox`.
/// Once connected the client reconnects by itself for as long as it lives (reading the
/// identity file again each time, so a renewed certificate is used from then on).
pub async fn connect(urls: &[String], id: &Identity, name: &str, inbox: &str) -> Result<Client> {
    let addrs = urls
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| FleetError::Invalid(format!("engine address {u:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let who = name.to_string();
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .require_tls(true)
        .add_root_certificates(id.ca.clone())
        .add_client_certificate(id.pem.clone(), id.pem.clone())
        .custom_inbox_prefix(inbox)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(5) as u64).min(2000))
        })
        .event_callback(move |event| {
            let who = who.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(client = who, "engine connected")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(client = who, "engine disconnected; reconnecting")
                    }
                    other => tracing::warn!(client = who, "engine: {other}"),
                }
            }
        });
    options.connect(addrs).await.map_err(|e| {
        let why = match e.kind() {
            ConnectErrorKind::AuthorizationViolation => format!(
                "the engine refused {} (authorization violation: not enrolled, revoked, or a \
                 certificate of an earlier enrolment)",
                id.pem.display()
            ),
            ConnectErrorKind::Tls => format!(
                "TLS with {} failed: {e} (is the certificate expired, or not of this fleet's CA?)",
                id.pem.display()
            ),
            _ => e.to_string(),
        };
        FleetError::Engine(format!("cannot connect to {}: {why}", urls.join(", ")))
    })
}

/// The JetStream context of a client (acknowledgements awaited up to 10 s).
pub fn jetstream(client: &Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone())
}

/// Publishes `payload` on `subject` with `msg_id` as its message id and waits for the
/// engine's acknowledgement. The answer says whether the engine had it already (a
/// duplicate inside the stream's window): either way it is stored once.
pub async fn publish_once(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Bytes,
) -> Result<bool> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let ack = js
        .publish_with_headers(subject.to_string(), headers, payload)
        .await
        .map_err(|e| FleetError::engine(&format!("cannot publish {subject}"), e))?
        .await
        .map_err(|e| FleetError::engine(&format!("no acknowledgement for {subject}"), e))?;
    Ok(ack.duplicate)
}

/// Whether a key-value write was stored, or refused because the key's revision was not
/// the one expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Stored at this revision.
    Stored(u64),
    /// The key was not at the expected revision (for a create: it exists).
    Conflict,
}

/// Writes `key` of `bucket` if its last revision is `expected` (0: create-only).
pub async fn kv_write(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
    value: Bytes,
    expected: u64,
) -> Result<Written> {
    let subject = crate::names::kv_subject(bucket, key);
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    let ack = js
        .publish_with_headers(subject.clone(), headers, value)
        .await
        .map_err(|e| FleetError::engine(&format!("cannot write {subject}"), e))?
        .await;
    match ack {
        Ok(a) => Ok(Written::Stored(a.sequence)),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Written::Conflict),
        Err(e) => Err(FleetError::engine(
            &format!("no acknowledgement for {subject}"),
            e,
        )),
    }
}

/// Publishes `key` of `bucket` unconditionally (a put), waiting for the acknowledgement.
pub async fn kv_put(js: &jetstream::Context, bucket: &str, key: &str, value: Bytes) -> Result<u64> {
    let subject = crate::names::kv_subject(bucket, key);
    let ack = js
        .publish(subject.clone(), value)
        .await
        .map_err(|e| FleetError::engine(&format!("cannot write {subject}"), e))?
        .await
        .map_err(|e| FleetError::engine(&format!("no acknowledgement for {subject}"), e))?;
    Ok(ack.sequence)
}

/// Reads `key` of `bucket` by a direct get of its last message: its value and revision,
/// or `None` when it has none (or was deleted).
pub async fn kv_read(client: &Client, bucket: &str, key: &str) -> Result<Option<(Bytes, u64)>> {
    let api = format!(
        "$JS.API.DIRECT.GET.KV_{bucket}.{}",
        crate::names::kv_subject(bucket, key)
    );
    let msg = client
        .request(api.clone(), Bytes::new())
        .await
        .map_err(|e| FleetError::engine(&format!("cannot read {bucket}/{key}"), e))?;
    match msg.status {
        Some(StatusCode::NOT_FOUND) => return Ok(None),
        Some(s) if s != StatusCode::OK => {
            return Err(FleetError::Engine(format!(
                "cannot read {bucket}/{key}: status {s} {}",
                msg.description.unwrap_or_default()
            )))
        }
        _ => {}
    }
    let headers = msg.headers.unwrap_or_default();
    let op = headers.get("KV-Operation").map(|v| v.as_str().to_string());
    if matches!(op.as_deref(), Some("DEL") | Some("PURGE")) {
        return Ok(None);
    }
    let seq = headers
        .get("Nats-Sequence")
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| FleetError::Engine(format!("{bucket}/{key}: no sequence in the answer")))?;
    Ok(Some((msg.payload, seq)))
}

/// Reads an identity file's certificate: whether it is there and usable.
pub fn identity_exists(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.len() > 0)
        .unwrap_or(false)
}
