//! Who may do what on the engine: the NATS users the controller grants, each mapped from
//! a client certificate's subject (`tls { verify_and_map: true }`), with the subjects it
//! may publish and subscribe to. The controller renders them into the authorization file
//! its NATS servers include, and asks each server to reload it.
//!
//! * **controller**: everything (`>`), replies on `_INBOX_ctl.>`.
//! * **zero certificate** of subscriber S: publish only `amb.enrol.S` (a request), receive
//!   only on `_INBOX_enrol.>` (the answer: a certificate, nothing secret).
//! * **host** H: publish its own events (`amb.ev.H.>`), its health (`$KV.amb-health.H`),
//!   its results (`$KV.amb-txn.res.H.*`), its reports (`$O.reports-H.>` and the stream
//!   API calls of its own bucket — info, message get, purge when it replaces an object),
//!   read its own transactions and results by key (direct get of `cmd.H.*`, `res.H.*`),
//!   pull from its own work-queue consumer and acknowledge it, and ask to renew
//!   (`amb.renew.H`); read the image library (`amb-images`: its stream's info, message
//!   get, and an ordered consumer of its own with flow control); receive only on
//!   `_INBOX_H.>`. Nothing of another host, no stream management, no writes to the library.
//!
//! A host's user is its enrolment's subject (with the enrolment id), so a certificate of
//! an earlier enrolment of the same host id maps to no user. Revoking removes the user;
//! the server closes its connections when it reloads.

use std::path::{Path, PathBuf};

use crate::error::{FleetError, Result};
use crate::names::{
    self, CONTROLLER_INBOX, ENROL_INBOX, HEALTH_BUCKET, IMAGE_BUCKET, TXN_BUCKET, WORK_STREAM,
};
use crate::pki::Subject;

/// Subjects a user may publish to and subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// Publish.
    pub publish: Vec<String>,
    /// Subscribe.
    pub subscribe: Vec<String>,
}

/// The controller's permissions.
pub fn controller() -> Permissions {
    Permissions {
        publish: vec![">".into()],
        subscribe: vec![">".into(), format!("{CONTROLLER_INBOX}.>")],
    }
}

/// A zero certificate's permissions.
pub fn zero(subscriber: &str) -> Permissions {
    Permissions {
        publish: vec![names::enrol_subject(subscriber)],
        subscribe: vec![format!("{ENROL_INBOX}.>")],
    }
}

/// A host's permissions.
pub fn host(host: &str) -> Permissions {
    let bucket = names::report_bucket(host);
    let obj_stream = format!("OBJ_{bucket}");
    let consumer = names::work_consumer(host);
    let images = format!("OBJ_{IMAGE_BUCKET}");
    Permissions {
        publish: vec![
            format!("amb.ev.{host}.>"),
            names::kv_subject(HEALTH_BUCKET, host),
            names::kv_subject(TXN_BUCKET, &format!("res.{host}.*")),
            format!("$O.{bucket}.>"),
            format!("$JS.API.STREAM.INFO.{obj_stream}"),
            format!("$JS.API.STREAM.MSG.GET.{obj_stream}"),
            format!("$JS.API.STREAM.PURGE.{obj_stream}"),
            format!("$JS.API.DIRECT.GET.KV_{TXN_BUCKET}.$KV.{TXN_BUCKET}.cmd.{host}.*"),
            format!("$JS.API.DIRECT.GET.KV_{TXN_BUCKET}.$KV.{TXN_BUCKET}.res.{host}.*"),
            format!("$JS.API.CONSUMER.INFO.{WORK_STREAM}.{consumer}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{consumer}"),
            format!("$JS.ACK.{WORK_STREAM}.{consumer}.>"),
            names::renew_subject(host),
            format!("$JS.API.STREAM.INFO.{images}"),
            format!("$JS.API.STREAM.MSG.GET.{images}"),
            format!("$JS.API.DIRECT.GET.{images}.>"),
            format!("$JS.API.CONSUMER.CREATE.{images}"),
            format!("$JS.API.CONSUMER.CREATE.{images}.>"),
            format!("$JS.API.CONSUMER.DELETE.{images}.>"),
            format!("$JS.FC.{images}.>"),
        ],
        subscribe: vec![format!("{}.>", names::host_inbox(host))],
    }
}

/// One user of the authorization file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The certificate subject it is mapped from.
    pub subject: Subject,
    /// What it may do.
    pub permissions: Permissions,
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The authorization file's text.
pub fn render(users: &[User]) -> String {
    let mut out = String::from(
        "# Written by the ambulance fleet controller; changes here are overwritten.\n\
         authorization {\n  users = [\n",
    );
    for u in users {
        out += &format!(
            "    {{user: \"{}\", permissions: {{publish: {{allow: [{}]}}, subscribe: {{allow: [{}]}}}}}}\n",
            u.subject.nats_user(),
            quoted(&u.permissions.publish),
            quoted(&u.permissions.subscribe)
        );
    }
    out += "  ]\n}\n";
    out
}

/// A NATS server whose authorization the controller manages: the file its configuration
/// includes, and where its pid is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedServer {
    /// The authorization file.
    pub auth_file: PathBuf,
    /// Its `pid_file`.
    pub pid_file: PathBuf,
}

/// Writes the authorization to every managed server and asks each to reload (SIGHUP).
/// A server that is not running (no pid file, or no such process) reads the file when it
/// starts; that is not an error.
pub fn apply(servers: &[ManagedServer], text: &str) -> Result<()> {
    for s in servers {
        if std::fs::read_to_string(&s.auth_file).ok().as_deref() != Some(text) {
            crate::pki::write_public(&s.auth_file, text)?;
        }
        reload(&s.pid_file)?;
    }
    Ok(())
}

/// Sends SIGHUP to the server whose pid `pid_file` holds.
pub fn reload(pid_file: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        tracing::warn!(pid_file = %pid_file.display(), "no NATS server pid; it will read the authorization when it starts");
        return Ok(());
    };
    let pid: i32 = text.trim().parse().map_err(|_| {
        FleetError::Invalid(format!(
            "{}: {:?} is not a process id",
            pid_file.display(),
            text.trim()
        ))
    })?;
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ESRCH) => {
            tracing::warn!(
                pid,
                "the NATS server is not running; it will read the authorization when it starts"
            );
            Ok(())
        }
        Err(e) => Err(FleetError::Engine(format!(
            "cannot ask the NATS server (pid {pid}) to reload: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_permissions_name_only_the_host() {
        let p = host("h1");
        for s in p.publish.iter().chain(&p.subscribe) {
            if s.contains("OBJ_amb-images") {
                // The library is every host's to read (and no one's but the controller's
                // to write: these are reads, consumer set-up and flow control).
                assert!(!s.starts_with("$O."), "{s}");
                continue;
            }
            assert!(s.contains("h1"), "{s} is not host h1's own");
            assert!(!s.contains('>') || s.ends_with(".>"), "{s}");
        }
        let text = render(&[User {
            subject: Subject::host("h1", "acme", "e1"),
            permissions: p,
        }]);
        assert!(
            text.contains("user: \"SERIALNUMBER=e1,CN=h1,OU=ambulance-host,O=acme\""),
            "{text}"
        );
    }
}
