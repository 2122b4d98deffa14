//! What travels between hosts, the controller and operators, as JSON.

use ambulance_report::Timestamp;
use ambulance_service::store::{BootFlag, IndexEntry, SeveritySummary, Status};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A host's request to enrol (to `amb.enrol.<subscriber>`, with the zero certificate) or
/// to renew (to `amb.renew.<host>`, with its own).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The host id.
    pub host: String,
    /// The subscriber.
    pub subscriber: String,
    /// A PEM certificate signing request for the host's new key, `CN=<host>`.
    pub csr: String,
}

/// The controller's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EnrolReply {
    /// The certificate (PEM), when granted.
    pub certificate: Option<String>,
    /// The fleet CA (PEM).
    pub ca: Option<String>,
    /// When the certificate expires.
    pub not_after: Option<Timestamp>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// One guest as a host's health reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestHealth {
    /// Its name.
    pub name: String,
    /// Its state (`running`, `held`, …).
    pub state: String,
    /// Failures since the daemon started.
    pub failures: u64,
    /// Its last report.
    pub last_report: Option<String>,
    /// The role the fleet repurposed it to (None: its configured image — a spare).
    #[serde(default)]
    pub role: Option<String>,
    /// The SHA-256 of the image it runs.
    #[serde(default)]
    pub image: Option<String>,
    /// A repurposing is under way.
    #[serde(default)]
    pub repurposing: bool,
    /// Whether its running kernel registered.
    #[serde(default)]
    pub registered: bool,
    /// When its role last changed.
    #[serde(default)]
    pub role_since: Option<Timestamp>,
}

/// A host's health (key `<host>` of `amb-health`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The host id.
    pub host: String,
    /// Its subscriber.
    pub subscriber: String,
    /// When it was published.
    pub time: Timestamp,
    /// How often it is published (ms).
    pub interval_ms: u64,
    /// Its guests.
    pub guests: Vec<GuestHealth>,
    /// Diagnoses in its store.
    pub reports: usize,
    /// Of those, not yet acknowledged by the engine.
    pub outbox: usize,
    /// The ambulance version.
    pub version: String,
}

/// A failure (on `amb.ev.<host>.failure`; message id `<host>/failure/<report id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureEvent {
    /// The host.
    pub host: String,
    /// The guest.
    pub guest: String,
    /// The report id its diagnosis has.
    pub report_id: String,
    /// The cause.
    pub cause: String,
    /// When.
    pub time: Timestamp,
    /// What the backend said.
    pub detail: String,
}

/// A diagnosis as the fleet lists it: the host's index entry without its file paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetEntry {
    /// The host.
    pub host: String,
    /// The report id.
    pub id: String,
    /// The guest.
    pub guest: String,
    /// The cause.
    pub cause: String,
    /// When the failure happened.
    pub time: Timestamp,
    /// Ok or diagnosis_failed.
    pub status: Status,
    /// Why the diagnosis failed.
    pub error: Option<String>,
    /// Findings by severity.
    pub severity: SeveritySummary,
    /// Whether the object store has its text and core.
    pub text: bool,
    /// Whether it has a core.
    pub core: bool,
}

impl FleetEntry {
    /// The fleet's view of a host's index entry.
    pub fn of(host: &str, e: &IndexEntry) -> FleetEntry {
        FleetEntry {
            host: host.into(),
            id: e.id.to_string(),
            guest: e.guest.clone(),
            cause: e.cause.clone(),
            time: e.time,
            status: e.status,
            error: e.error.clone(),
            severity: e.severity.clone(),
            text: e.text.is_some(),
            core: e.core.is_some(),
        }
    }
}

/// A stored diagnosis (on `amb.ev.<host>.report`; message id `<host>/report/<report id>`):
/// the entry, and the JSON report as the host stored it (absent for a failed diagnosis,
/// or when it is larger than the engine's largest message — the object store has it).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportEvent {
    /// The entry.
    pub entry: FleetEntry,
    /// The report.
    pub report: Option<Box<RawValue>>,
}

/// What to release a held guest into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseAction {
    /// Boot it again.
    Restart,
    /// Free it.
    Destroy,
}

/// One instruction of a transaction: the fixed vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Instruction {
    /// Diagnose a running guest now (freeze, diagnose, resume).
    Diagnose {
        /// The guest.
        guest: String,
    },
    /// Release a held guest.
    Release {
        /// The guest.
        guest: String,
        /// Restart or destroy.
        action: ReleaseAction,
    },
    /// Set a guest's boot flag.
    BootFlag {
        /// The guest.
        guest: String,
        /// Primary or rescue.
        flag: BootFlag,
    },
    /// Repurpose a slot: fetch the image from the library, check its digest, boot the slot
    /// from it with the role's settings; done when the guest registers, else the slot
    /// boots its default image again.
    Repurpose {
        /// The slot (a configured guest).
        guest: String,
        /// The role.
        role: String,
        /// The image's SHA-256 (lowercase hex).
        digest: String,
        /// How long the new kernel has to register (default 30 s).
        #[serde(default)]
        register_timeout_ms: Option<u64>,
    },
}

impl Instruction {
    /// Its operation's name.
    pub fn op(&self) -> &'static str {
        match self {
            Instruction::Diagnose { .. } => "diagnose",
            Instruction::Release { .. } => "release",
            Instruction::BootFlag { .. } => "boot-flag",
            Instruction::Repurpose { .. } => "repurpose",
        }
    }

    /// The guest it is about.
    pub fn guest(&self) -> &str {
        match self {
            Instruction::Diagnose { guest }
            | Instruction::Release { guest, .. }
            | Instruction::BootFlag { guest, .. }
            | Instruction::Repurpose { guest, .. } => guest,
        }
    }
}

/// A transaction as stored (key `cmd.<host>.<txn>` of `amb-txn`, create-only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// Its id.
    pub txn: String,
    /// The subscriber the host belongs to.
    pub subscriber: String,
    /// The host.
    pub host: String,
    /// What to do, in order (the first failure stops the rest).
    pub instructions: Vec<Instruction>,
    /// When it was created.
    pub created: Timestamp,
    /// After this it is not started any more.
    pub deadline: Timestamp,
}

/// Where a transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnStatus {
    /// Stored; no host has taken it yet.
    Pending,
    /// The host took it and is running it.
    Running,
    /// Every instruction succeeded.
    Ok,
    /// An instruction failed (see its step).
    Failed,
    /// Its deadline passed before the host took it; it was not run.
    Expired,
    /// The host restarted while running it; it was not run again (at most once).
    Interrupted,
}

/// One instruction's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The operation.
    pub op: String,
    /// The guest.
    pub guest: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it answered (the index entry of a diagnosis, the guest's status, …).
    pub output: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A transaction's result (key `res.<host>.<txn>` of `amb-txn`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxnResult {
    /// The transaction.
    pub txn: String,
    /// The host.
    pub host: String,
    /// Where it is.
    pub status: TxnStatus,
    /// When the host took it.
    pub started: Option<Timestamp>,
    /// When it ended.
    pub finished: Option<Timestamp>,
    /// Each instruction's outcome, in order.
    #[serde(default)]
    pub steps: Vec<StepResult>,
    /// Why it failed, expired or was interrupted.
    pub error: Option<String>,
}

/// A transaction and where it is, as the API answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TxnView {
    /// The transaction.
    #[serde(flatten)]
    pub transaction: Transaction,
    /// Where it is.
    pub status: TxnStatus,
    /// Its result, once there is one.
    pub result: Option<TxnResult>,
}

/// `POST /v1/transactions`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    /// The subscriber (checked against the host's when given).
    pub subscriber: Option<String>,
    /// The host.
    pub host: String,
    /// The instructions.
    pub instructions: Vec<Instruction>,
    /// How long the host has to take it (default: the controller's `command_timeout`).
    pub timeout_ms: Option<u64>,
    /// Answer at once (202) instead of when it ends.
    #[serde(default)]
    pub no_wait: bool,
}

/// A host as the controller knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host id.
    pub host: String,
    /// Its subscriber.
    pub subscriber: String,
    /// Its current enrolment (the certificate subject's serialNumber).
    pub enrolment: String,
    /// Its certificate's serial number.
    pub serial: String,
    /// When that certificate expires.
    pub not_after: Timestamp,
    /// When it enrolled.
    pub enrolled: Timestamp,
    /// When it last renewed.
    pub renewed: Option<Timestamp>,
    /// Revoked by an operator: no access until it enrols again (which needs
    /// `reenrol_allowed`).
    pub revoked: bool,
    /// An operator allowed it to enrol again.
    pub reenrol_allowed: bool,
}

/// A subscriber the controller issued a zero certificate for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscriberRecord {
    /// Its name.
    pub subscriber: String,
    /// When its (latest) zero certificate was issued.
    pub issued: Timestamp,
    /// Its serial number.
    pub serial: String,
    /// When it expires.
    pub not_after: Timestamp,
    /// Its generation (the subject's serialNumber): only the latest zero certificate of a
    /// subscriber maps to a user.
    pub generation: String,
}

/// `GET /v1/hosts`: a host, its certificate, and whether it is available.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostView {
    /// What the registry holds.
    #[serde(flatten)]
    pub record: HostRecord,
    /// Whether its health is fresher than the TTL.
    pub available: bool,
    /// When its health was last published.
    pub last_seen: Option<Timestamp>,
    /// Its last health.
    pub health: Option<Health>,
    /// Reports the controller has from it.
    pub reports: usize,
}

/// An image of the library (the object `<digest>` of bucket `amb-images`, this manifest in
/// its metadata): a full bootable kernel for one role, and the role's boot settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// The role it boots.
    pub role: String,
    /// SHA-256 of the kernel (lowercase hex): the image's name.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The kernel command line.
    pub cmdline: String,
    /// RAM in bytes.
    pub memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// When it was added.
    pub added: Timestamp,
}

/// Desired counts per role (key `pool` of the registry bucket).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Role → how many running guests it should have.
    pub desired: std::collections::BTreeMap<String, u32>,
    /// When it last changed.
    pub updated: Option<Timestamp>,
}

/// A repurposing the controller started and has not seen through yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Its transaction.
    pub txn: String,
    /// The host.
    pub host: String,
    /// The slot.
    pub guest: String,
    /// The role it had (None: spare).
    pub from: Option<String>,
    /// The role it gets.
    pub role: String,
    /// The image.
    pub digest: String,
    /// When the transaction was created.
    pub started: Timestamp,
    /// When its host reported it done (kept until the host's health shows it).
    pub finished: Option<Timestamp>,
}

/// `GET /v1/pool`: what the pool should be, what it is, and what is being done about it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolView {
    /// Desired counts.
    pub desired: std::collections::BTreeMap<String, u32>,
    /// Running guests per role, on available hosts.
    pub actual: std::collections::BTreeMap<String, u32>,
    /// Spare slots (running their default image) on available hosts.
    pub spare: u32,
    /// Slots held for forensics or failed, per role (counted as missing).
    pub missing: std::collections::BTreeMap<String, u32>,
    /// Repurposings under way.
    pub in_flight: Vec<InFlight>,
    /// What the planner could not do (no image for a role, no donor left).
    pub blocked: Vec<String>,
    /// Whether every role has its desired count and nothing is under way.
    pub converged: bool,
    /// Repurposings started since the controller started.
    pub started: u64,
    /// Of those, failed or expired.
    pub failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_is_fixed() {
        let i: Vec<Instruction> = serde_json::from_str(
            r#"[{"op":"diagnose","guest":"a"},{"op":"release","guest":"b","action":"destroy"},
                {"op":"boot-flag","guest":"c","flag":"rescue"},
                {"op":"repurpose","guest":"d","role":"web","digest":"ab"}]"#,
        )
        .unwrap();
        assert_eq!(i[1].op(), "release");
        assert_eq!(i[2].guest(), "c");
        assert_eq!((i[3].op(), i[3].guest()), ("repurpose", "d"));
        let e = serde_json::from_str::<Instruction>(r#"{"op":"reboot","guest":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reboot") && e.contains("diagnose"), "{e}");
        let e = serde_json::from_str::<Instruction>(r#"{"op":"diagnose","guest":"a","x":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x"), "{e}");
    }
}
