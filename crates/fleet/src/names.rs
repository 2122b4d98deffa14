//! Every name the fleet uses on the engine — subjects, streams, buckets, consumers,
//! object names — in one place, so the permissions in [`crate::auth`] can be read against
//! them.
//!
//! | what | name | written by | read by |
//! |---|---|---|---|
//! | failure events | `amb.ev.<host>.failure` on stream `AMB_EVENTS` | the host | the controller |
//! | report events (JSON) | `amb.ev.<host>.report` on stream `AMB_EVENTS` | the host | the controller |
//! | report files | object store `reports-<host>`, objects `<host>/<report id>.json`, `.txt`, `.core` | the host | the controller |
//! | health | key `<host>` of key-value bucket `amb-health` (its TTL is the bucket's max age) | the host | the controller |
//! | transactions | key `cmd.<host>.<txn>` of bucket `amb-txn`, create-only | the controller | the host |
//! | results | key `res.<host>.<txn>` of bucket `amb-txn`, create-only then by revision | the host (the controller only to say it expired) | the controller |
//! | work queue | `amb.work.<host>` on work-queue stream `AMB_WORK`, durable pull consumer `work-<host>` | the controller | the host |
//! | enrolment | request to `amb.enrol.<subscriber>` | a zero certificate | the controller |
//! | renewal | request to `amb.renew.<host>` | the host | the controller |
//! | registry | keys `host.<host>`, `sub.<subscriber>` of bucket `amb-fleet` | the controller | the controller |
//! | image library | object store `amb-images`: the kernel as object `image.<sha-256>`, each role's manifest of it as `manifest.<role>.<sha-256>` | the controller | every host |
//! | pool | key `pool` of bucket `amb-fleet` (desired counts) | the controller | the controller |
//!
//! Each identity receives replies on an inbox of its own: `_INBOX_<host>.>` for a host,
//! `_INBOX_enrol.>` for zero certificates, `_INBOX_ctl.>` for the controller.

use crate::error::{FleetError, Result};

/// The stream of failure and report events.
pub const EVENTS_STREAM: &str = "AMB_EVENTS";
/// The subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "amb.ev.*.*";
/// The work-queue stream of transaction ids.
pub const WORK_STREAM: &str = "AMB_WORK";
/// The subjects of [`WORK_STREAM`].
pub const WORK_SUBJECTS: &str = "amb.work.*";
/// The key-value bucket of host health.
pub const HEALTH_BUCKET: &str = "amb-health";
/// The key-value bucket of transactions and their results.
pub const TXN_BUCKET: &str = "amb-txn";
/// The key-value bucket of the controller's registry (hosts, subscribers).
pub const STATE_BUCKET: &str = "amb-fleet";
/// The object store of the image library.
pub const IMAGE_BUCKET: &str = "amb-images";
/// The key of the pool's desired counts in [`STATE_BUCKET`].
pub const POOL_KEY: &str = "pool";
/// The inbox prefix of the controller.
pub const CONTROLLER_INBOX: &str = "_INBOX_ctl";
/// The inbox prefix of zero certificates (enrolment replies).
pub const ENROL_INBOX: &str = "_INBOX_enrol";
/// The queue group controllers answer enrolment and renewal in.
pub const CONTROLLER_QUEUE: &str = "amb-controllers";

/// Checks a host id or subscriber name (see [`ambulance_service::config::valid_fleet_name`]).
pub fn check(kind: &str, name: &str) -> Result<()> {
    if ambulance_service::config::valid_fleet_name(name) {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "{kind} {name:?} is not valid: 1 to 63 lowercase letters, digits and -, not starting with -"
        )))
    }
}

/// `amb.ev.<host>.failure`.
pub fn failure_subject(host: &str) -> String {
    format!("amb.ev.{host}.failure")
}

/// `amb.ev.<host>.report`.
pub fn report_subject(host: &str) -> String {
    format!("amb.ev.{host}.report")
}

/// `amb.work.<host>`.
pub fn work_subject(host: &str) -> String {
    format!("amb.work.{host}")
}

/// `work-<host>`: the host's durable work-queue consumer.
pub fn work_consumer(host: &str) -> String {
    format!("work-{host}")
}

/// `reports-<host>`: the host's object store bucket.
pub fn report_bucket(host: &str) -> String {
    format!("reports-{host}")
}

/// `amb.enrol.<subscriber>`.
pub fn enrol_subject(subscriber: &str) -> String {
    format!("amb.enrol.{subscriber}")
}

/// `amb.renew.<host>`.
pub fn renew_subject(host: &str) -> String {
    format!("amb.renew.{host}")
}

/// `_INBOX_<host>`.
pub fn host_inbox(host: &str) -> String {
    format!("_INBOX_{host}")
}

/// `cmd.<host>.<txn>`.
pub fn txn_key(host: &str, txn: &str) -> String {
    format!("cmd.{host}.{txn}")
}

/// `res.<host>.<txn>`.
pub fn result_key(host: &str, txn: &str) -> String {
    format!("res.{host}.{txn}")
}

/// `host.<host>` in the registry.
pub fn host_key(host: &str) -> String {
    format!("host.{host}")
}

/// `sub.<subscriber>` in the registry.
pub fn subscriber_key(subscriber: &str) -> String {
    format!("sub.{subscriber}")
}

/// The subject a key of a bucket is stored under.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// One of a report's files in the object store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Artifact {
    /// The JSON report.
    Json,
    /// Its text rendering.
    Text,
    /// The ELF core.
    Core,
}

impl Artifact {
    /// Its file extension.
    pub fn ext(self) -> &'static str {
        match self {
            Artifact::Json => "json",
            Artifact::Text => "txt",
            Artifact::Core => "core",
        }
    }
}

/// `<host>/<report id>.<ext>`.
pub fn object_name(host: &str, report: &str, artifact: Artifact) -> String {
    format!("{host}/{report}.{}", artifact.ext())
}

/// `image.<digest>`: an image's bytes in the library.
pub fn image_object(digest: &str) -> String {
    format!("image.{digest}")
}

/// `manifest.<role>.<digest>`: a role's manifest of an image in the library.
pub fn manifest_object(role: &str, digest: &str) -> String {
    format!("manifest.{role}.{digest}")
}

/// Checks an image digest: 64 lowercase hex digits (SHA-256).
pub fn check_digest(digest: &str) -> Result<()> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "image digest {digest:?} is not a SHA-256: 64 lowercase hex digits"
        )))
    }
}

/// A transaction id: sortable by creation (milliseconds since the epoch, base 36) and
/// unique (a random part).
pub fn new_txn_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut random = [0u8; 10];
    ring_random(&mut random);
    let tail: String = random
        .iter()
        .map(|b| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[(*b % 36) as usize]))
        .collect();
    format!("t{}{tail}", base36(ms))
}

fn base36(mut n: u64) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Fills `buf` from the system's random source.
pub(crate) fn ring_random(buf: &mut [u8]) {
    use std::io::Read;
    // The kernel's CSPRNG; it does not fail once the system has booted.
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    panic!("cannot read /dev/urandom");
}

/// Whether `id` is a well-formed transaction id (what [`new_txn_id`] makes).
pub fn valid_txn_id(id: &str) -> bool {
    id.len() >= 12
        && id.len() <= 40
        && id.starts_with('t')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ids_are_unique_sortable_and_checked() {
        let a = new_txn_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_txn_id();
        assert_ne!(a, b);
        assert!(a[..9] <= b[..9], "{a} {b}");
        assert!(valid_txn_id(&a) && valid_txn_id(&b), "{a} {b}");
        assert!(!valid_txn_id("t.>") && !valid_txn_id("x123456789012"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check("host id", "host-1").is_ok());
        let e = check("host id", "host.*").unwrap_err().to_string();
        assert!(e.contains("host id \"host.*\""), "{e}");
        assert_eq!(object_name("h", "r", Artifact::Text), "h/r.txt");
    }
}
