//! The fleet controller (`ambulance fleet serve`): the fleet CA, enrolment and renewal,
//! the registry of hosts, what hosts publish (health, failures, reports), transactions,
//! and the fleet API.
//!
//! * [`config`](mod@config): `fleet.toml`;
//! * [`init`]: the files the NATS server and the controller need before either runs;
//! * `registry`: enrolment, renewal, revocation, zero certificates — and the engine's
//!   authorization that follows from them;
//! * `ingest`: health, failure and report events into the controller's index;
//! * `txn`: transactions;
//! * [`balance`]: the image library and the pool loop (the planner is [`crate::pool`]);
//! * [`api`]: the HTTP API.

pub mod api;
pub mod balance;
pub mod config;
mod ingest;
mod registry;
mod txn;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use ambulance_report::Timestamp;
use async_nats::jetstream::{self, consumer::pull, kv, object_store, stream};
use async_nats::Client;

pub use config::ControllerConfig;

use crate::auth;
use crate::engine;
use crate::error::{FleetError, Result};
use crate::model::{FailureEvent, FleetEntry, Health, HostRecord, SubscriberRecord};
use crate::names;
use crate::pki::{self, Ca, Role, Subject};

/// Certificates the controller issues for itself and the NATS server last this long, and
/// are issued again when less than a tenth of it is left.
const OWN_CERTIFICATES: Duration = Duration::from_secs(365 * 86_400);

/// How long a host has to acknowledge (or extend, while it runs) a transaction id before
/// the engine delivers it again — to a restarted host, when the pull request it went to
/// was its predecessor's.
pub const WORK_ACK_WAIT: Duration = Duration::from_secs(10);

/// What [`init`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Initialized {
    /// The NATS server configuration to run (`nats-server -c`).
    pub server_config: std::path::PathBuf,
    /// Files made now (not there before).
    pub created: Vec<std::path::PathBuf>,
}

fn needs_new(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return true;
    };
    match pki::cert_info(&text) {
        Ok(info) => {
            let left = info.not_after.as_second() - ambulance_report::now().as_second();
            left < (OWN_CERTIFICATES.as_secs() / 10) as i64
        }
        Err(_) => true,
    }
}

/// Writes what the NATS server and the controller need before either runs, keeping what
/// is there: the CA, the server's certificate (for `nats.server_names`), the controller's
/// certificate, the authorization file (the controller alone, until hosts enrol; an
/// existing one is the running controller's and is kept) and `nats/nats-server.conf` — a
/// single JetStream server on `nats.listen` with `sync_interval: always`, mutual TLS,
/// users mapped from certificates, and the authorization file included.
pub fn init(cfg: &ControllerConfig) -> Result<Initialized> {
    let mut out = Initialized::default();
    pki::create_private_dir(&cfg.data_dir)?;
    let nats = cfg.nats_dir();
    pki::create_private_dir(&nats)?;
    pki::create_private_dir(&nats.join("jetstream"))?;
    let ca_existed = cfg.ca_dir().join("ca.key").exists();
    let ca = Ca::load_or_create(&cfg.ca_dir(), &cfg.name)?;
    if !ca_existed {
        out.created.push(cfg.ca_dir().join("ca.pem"));
    }
    let server_pem = nats.join("server.pem");
    if needs_new(&server_pem) {
        let subject = Subject {
            name: "nats".into(),
            role: Role::Server,
            org: cfg.name.clone(),
            enrolment: None,
        };
        let (key, cert) = ca.issue(&subject, &cfg.server_names, OWN_CERTIFICATES)?;
        pki::write_private(&server_pem, &format!("{}{key}", cert.pem))?;
        out.created.push(server_pem.clone());
    }
    let id = cfg.identity();
    if needs_new(&id.pem) {
        let (key, cert) = ca.issue(&Subject::controller(&cfg.name), &[], OWN_CERTIFICATES)?;
        pki::write_private(&id.pem, &format!("{}{key}", cert.pem))?;
        out.created.push(id.pem.clone());
    }
    for s in &cfg.servers {
        if !s.auth_file.exists() {
            if let Some(dir) = s.auth_file.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| FleetError::io("cannot create directory", dir, e))?;
            }
            pki::write_public(
                &s.auth_file,
                &auth::render(&[auth::User {
                    subject: Subject::controller(&cfg.name),
                    permissions: auth::controller(),
                }]),
            )?;
            out.created.push(s.auth_file.clone());
        }
    }
    let conf = nats.join("nats-server.conf");
    let auth_file = &cfg.servers[0].auth_file;
    let text = format!(
        "# Written by `ambulance fleet init` from {source}; written again each time.\n\
         # A single JetStream server for the fleet. For a cluster, copy it to each server\n\
         # and add a `cluster {{}}` block (see the README).\n\
         server_name: \"{name}-nats-1\"\n\
         listen: \"{listen}\"\n\
         pid_file: \"{pid}\"\n\
         max_payload: 8MB\n\
         jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
         tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{cert}\"\n  ca_file: \"{ca}\"\n  verify_and_map: true\n  timeout: 5\n}}\n\
         include \"{auth}\"\n",
        source = cfg.source,
        name = cfg.name,
        listen = cfg.listen,
        pid = cfg.servers[0].pid_file.display(),
        store = nats.join("jetstream").display(),
        cert = server_pem.display(),
        ca = cfg.ca_dir().join("ca.pem").display(),
        auth = relative(&nats, auth_file).display(),
    );
    pki::write_public(&conf, &text)?;
    out.server_config = conf;
    Ok(out)
}

/// `to` relative to the directory `from` (the NATS server reads an include relative to
/// the including file, even an absolute one).
fn relative(from: &Path, to: &Path) -> std::path::PathBuf {
    let from: Vec<_> = from.components().collect();
    let to_c: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to_c[common..] {
        out.push(c);
    }
    out
}

/// A host's last health, and when the engine stored it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    health: Option<Health>,
    at: Timestamp,
}

/// What the controller knows of the reports and failures hosts published.
#[derive(Default)]
pub(crate) struct Index {
    /// (host, report id) → entry.
    reports: BTreeMap<(String, String), FleetEntry>,
    /// Report id → hosts that have it (almost always one).
    by_id: HashMap<String, Vec<String>>,
    /// Failures, in arrival order (deduplicated by host and report id).
    failures: Vec<FailureEvent>,
    failure_keys: std::collections::HashSet<(String, String)>,
}

/// The registry: hosts and subscribers, with their revisions in the state bucket.
#[derive(Default)]
pub(crate) struct Registry {
    hosts: BTreeMap<String, (HostRecord, u64)>,
    subscribers: BTreeMap<String, (SubscriberRecord, u64)>,
}

/// Counters.
#[derive(Default)]
pub(crate) struct Stats {
    events: AtomicU64,
    health: AtomicU64,
    duplicates: AtomicU64,
}

/// The running controller.
pub struct Controller {
    cfg: ControllerConfig,
    ca: Ca,
    client: Client,
    js: jetstream::Context,
    state_kv: kv::Store,
    registry: tokio::sync::Mutex<Registry>,
    index: parking_lot::RwLock<Index>,
    seen: parking_lot::RwLock<HashMap<String, Seen>>,
    /// Transaction id → (host, deadline) of transactions without an end yet.
    pending: parking_lot::Mutex<HashMap<String, (String, Timestamp)>>,
    /// Transaction id → host, for every transaction in the bucket.
    txns: parking_lot::Mutex<HashMap<String, String>>,
    stats: Stats,
    /// The image library: (role, digest) → manifest.
    library: parking_lot::RwLock<BTreeMap<(String, String), crate::model::ImageManifest>>,
    /// Desired counts and repurposings under way.
    pool: parking_lot::Mutex<balance::PoolState>,
    pool_stats: balance::PoolStats,
    /// Wakes the pool loop (a health change, new counts, a new image).
    pool_wake: tokio::sync::Notify,
}

impl Controller {
    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// Connects (retrying until the engine answers), makes the streams and buckets,
    /// loads the registry, brings the engine's authorization in line with it, and starts
    /// following what hosts publish and answering enrolments.
    pub async fn start(cfg: ControllerConfig) -> Result<Arc<Controller>> {
        init(&cfg)?;
        let ca = Ca::load_or_create(&cfg.ca_dir(), &cfg.name)?;
        let id = cfg.identity();
        let mut delay = Duration::from_millis(200);
        let client = loop {
            match engine::connect(
                &cfg.urls,
                &id,
                "ambulance-controller",
                names::CONTROLLER_INBOX,
            )
            .await
            {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!("{e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let js = engine::jetstream(&client);
        let state_kv = setup(&js, &cfg).await?;
        let ctl = Arc::new(Controller {
            cfg,
            ca,
            client,
            js,
            state_kv,
            registry: Default::default(),
            index: Default::default(),
            seen: Default::default(),
            pending: Default::default(),
            txns: Default::default(),
            stats: Default::default(),
            library: Default::default(),
            pool: Default::default(),
            pool_stats: Default::default(),
            pool_wake: tokio::sync::Notify::new(),
        });
        ctl.load_registry().await?;
        ctl.apply_auth(&*ctl.registry.lock().await)?;
        let hosts: Vec<String> = ctl.registry.lock().await.hosts.keys().cloned().collect();
        for h in hosts {
            ctl.ensure_host_resources(&h).await?;
        }
        ctl.load_transactions().await?;
        ctl.load_pool().await?;
        ctl.clone().spawn_responders().await?;
        ingest::spawn(&ctl);
        txn::spawn_sweeper(&ctl);
        balance::spawn(&ctl);
        tracing::info!(urls = ?ctl.cfg.urls, "fleet controller started");
        Ok(ctl)
    }

    /// Makes the host's object store bucket and its work-queue consumer (both kept when
    /// they exist).
    async fn ensure_host_resources(&self, host: &str) -> Result<()> {
        let bucket = names::report_bucket(host);
        if self.js.get_object_store(&bucket).await.is_err() {
            self.js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some(format!("reports of host {host}")),
                    storage: stream::StorageType::File,
                    num_replicas: self.cfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| FleetError::engine(&format!("cannot make bucket {bucket}"), e))?;
        }
        let work = self
            .js
            .get_stream(names::WORK_STREAM)
            .await
            .map_err(|e| FleetError::engine("cannot open the work stream", e))?;
        work.get_or_create_consumer(
            &names::work_consumer(host),
            pull::Config {
                durable_name: Some(names::work_consumer(host)),
                description: Some(format!("transactions of host {host}")),
                filter_subject: names::work_subject(host),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: WORK_ACK_WAIT,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| FleetError::engine(&format!("cannot make host {host}'s work queue"), e))?;
        Ok(())
    }

    /// Undoes [`Controller::ensure_host_resources`] for a host whose first enrolment
    /// failed after them (best effort: an error here leaves empty resources, which the
    /// next enrolment reuses).
    async fn remove_host_resources(&self, host: &str) {
        let _ = self
            .js
            .delete_consumer_from_stream(names::work_consumer(host), names::WORK_STREAM)
            .await;
        let _ = self
            .js
            .delete_object_store(names::report_bucket(host))
            .await;
    }

    /// The engine's users as the registry says: the controller, each subscriber's zero
    /// certificate, each host not revoked.
    fn users(&self, reg: &Registry) -> Vec<auth::User> {
        let mut users = vec![auth::User {
            subject: Subject::controller(&self.cfg.name),
            permissions: auth::controller(),
        }];
        for (s, _) in reg.subscribers.values() {
            users.push(auth::User {
                subject: Subject::zero(&s.subscriber, &s.generation),
                permissions: auth::zero(&s.subscriber),
            });
        }
        for (h, _) in reg.hosts.values() {
            if !h.revoked {
                users.push(auth::User {
                    subject: Subject::host(&h.host, &h.subscriber, &h.enrolment),
                    permissions: auth::host(&h.host),
                });
            }
        }
        users
    }

    /// Writes the authorization the registry implies and has every managed server
    /// reload it.
    fn apply_auth(&self, reg: &Registry) -> Result<()> {
        auth::apply(&self.cfg.servers, &auth::render(&self.users(reg)))
    }

    /// Whether a host's health is fresher than the TTL, and when it was last seen.
    pub(crate) fn availability(&self, host: &str) -> (bool, Option<Timestamp>) {
        let seen = self.seen.read().get(host).map(|s| s.at);
        let ttl = self.cfg.health_ttl.as_millis() as i64;
        let now = ambulance_report::now().as_millisecond();
        (seen.is_some_and(|t| now - t.as_millisecond() < ttl), seen)
    }
}

/// The streams and buckets every host and the controller use (the per-host ones are
/// made at enrolment). Returns the registry bucket.
async fn setup(js: &jetstream::Context, cfg: &ControllerConfig) -> Result<kv::Store> {
    fn e<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> FleetError {
        move |err| FleetError::engine(what, err)
    }
    js.create_or_update_stream(stream::Config {
        name: names::EVENTS_STREAM.into(),
        description: Some("failures and reports of every host".into()),
        subjects: vec![names::EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    })
    .await
    .map_err(e("cannot make the events stream"))?;
    js.create_or_update_stream(stream::Config {
        name: names::WORK_STREAM.into(),
        description: Some("transaction ids, one work queue per host".into()),
        subjects: vec![names::WORK_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .map_err(e("cannot make the work stream"))?;
    js.create_or_update_key_value(kv::Config {
        bucket: names::HEALTH_BUCKET.into(),
        description: "host health; a key lives as long as the TTL".into(),
        history: 1,
        max_age: cfg.health_ttl,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(e("cannot make the health bucket"))?;
    js.create_or_update_key_value(kv::Config {
        bucket: names::TXN_BUCKET.into(),
        description: "transactions (cmd.<host>.<txn>) and results (res.<host>.<txn>)".into(),
        history: 5,
        max_age: Duration::from_secs(30 * 86_400),
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(e("cannot make the transactions bucket"))?;
    js.create_or_update_key_value(kv::Config {
        bucket: names::STATE_BUCKET.into(),
        description: "the controller's registry of hosts and subscribers".into(),
        history: 10,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(e("cannot make the registry bucket"))
}

/// Runs the controller and its API until SIGINT or SIGTERM.
pub async fn serve(cfg: ControllerConfig) -> Result<()> {
    let ctl = Controller::start(cfg).await?;
    api::serve(ctl).await
}
