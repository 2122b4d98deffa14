//! Guests QEMU runs: connected over QMP, their RAM in a shared `memory-backend-file`, the
//! Linux agent's registration on a socket of ours.
//!
//! A [`QemuGuest`] exists whether or not QEMU is up: the daemon creates it at start-up
//! (binding the registration socket at once) and [`connect`](QemuGuest::connect)s it
//! whenever QEMU is reachable; `ambulance attach` connects it once. Which QMP events are
//! failures is decided here, in [`failure_of`], for both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ambulance_diagnose::NoteAddress;
use ambulance_qemu::{
    AgentListener, AgentRegistration, ConnectOptions, Qmp, QmpEvent, QmpEvents, RamFile, RunStatus,
};
use ambulance_report::{FailureInfo, GuestInfo};
use parking_lot::Mutex;
use serde::Serialize;

use crate::{Capture, CaptureError, Frozen, Registered, Result};

/// How long a reset guest may take to leave the panicked state.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// The QMP connection and what it told us.
struct Connection {
    qmp: Qmp,
    ram: Arc<RamFile>,
    vcpus: u32,
    run_state: String,
}

/// A guest QEMU runs.
pub struct QemuGuest {
    name: Mutex<String>,
    qmp_socket: PathBuf,
    memory_file: Option<PathBuf>,
    listener: Option<AgentListener>,
    options: ConnectOptions,
    conn: Mutex<Option<Connection>>,
    /// Why it is not connected, as last seen.
    detached: Mutex<String>,
}

/// What [`QemuGuest::connect`] found.
pub struct Connected {
    /// QEMU's run state at connection.
    pub status: RunStatus,
    /// Its events, until the connection ends.
    pub events: QmpEvents,
}

/// A guest QEMU runs, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct QemuStatus {
    /// Whether Ambulance is connected to its QMP socket.
    pub connected: bool,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// QEMU's run state as last seen (`running`, `paused`, `guest-panicked`, …).
    pub run_state: Option<String>,
    /// QEMU's pid.
    pub pid: Option<u32>,
    /// QEMU's version.
    pub version: Option<String>,
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// RAM bytes.
    pub memory_bytes: Option<u64>,
    /// The RAM file mapped at diagnosis.
    pub memory_file: Option<PathBuf>,
    /// The registration socket, when there is one.
    pub registration_socket: Option<PathBuf>,
    /// The Linux agent's latest registration.
    pub registration: Option<AgentStatus>,
}

/// A Linux agent's registration, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AgentStatus {
    /// Guest-physical address of the VMCOREINFO note (`0x…`).
    pub vmcoreinfo: String,
    /// Its buffer's size.
    pub size: u64,
    /// The kernel release.
    pub release: String,
}

impl QemuGuest {
    /// A guest named `name` whose QMP socket is `qmp_socket`, its RAM in `memory_file`
    /// (default: the `mem-path` QEMU reports), registering through `listener`.
    pub fn new(
        name: impl Into<String>,
        qmp_socket: impl Into<PathBuf>,
        memory_file: Option<PathBuf>,
        listener: Option<AgentListener>,
        options: ConnectOptions,
    ) -> QemuGuest {
        QemuGuest {
            name: Mutex::new(name.into()),
            qmp_socket: qmp_socket.into(),
            memory_file,
            listener,
            options,
            conn: Mutex::new(None),
            detached: Mutex::new("not connected yet".into()),
        }
    }

    /// Its name.
    pub fn name(&self) -> String {
        self.name.lock().clone()
    }

    /// Names it (after asking QEMU, say).
    pub fn rename(&self, name: impl Into<String>) {
        *self.name.lock() = name.into();
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// The Linux agent's registration channel.
    pub fn listener(&self) -> Option<&AgentListener> {
        self.listener.as_ref()
    }

    /// The Linux agent's latest registration.
    pub fn registration(&self) -> Option<AgentRegistration> {
        self.listener.as_ref().and_then(AgentListener::latest)
    }

    /// Connects to QEMU (retrying within the connect timeout), finds and checks the
    /// guest's RAM file, and learns its vCPUs and run state.
    pub async fn connect(&self) -> Result<Connected> {
        let (qmp, events) = Qmp::connect(&self.qmp_socket, self.options).await?;
        let ram = RamFile::discover(&qmp, self.memory_file.as_deref()).await?;
        let vcpus = qmp.query_cpus().await?.len() as u32;
        let status = qmp.query_status().await?;
        tracing::info!(
            guest = self.name(),
            qemu = qmp.version(),
            pid = qmp.peer_pid().unwrap_or(0),
            vcpus,
            memory_bytes = ram.layout.size,
            memory_file = %ram.path.display(),
            run_state = status.status,
            "attached to QEMU"
        );
        *self.conn.lock() = Some(Connection {
            qmp,
            ram: Arc::new(ram),
            vcpus,
            run_state: status.status.clone(),
        });
        Ok(Connected { status, events })
    }

    /// Records that the connection ended (or could not be made), and why.
    pub fn detach(&self, why: impl Into<String>) {
        *self.conn.lock() = None;
        *self.detached.lock() = why.into();
    }

    /// Why it is not connected (`None` while it is).
    pub fn detached_because(&self) -> Option<String> {
        match &*self.conn.lock() {
            Some(c) if !c.qmp.is_closed() => None,
            _ => Some(self.detached.lock().clone()),
        }
    }

    /// Follows an event: the run state it implies, and a reset that makes the guest's
    /// next boot register anew.
    pub fn observe(&self, e: &QmpEvent) {
        let state = match e.name.as_str() {
            "STOP" => Some("paused"),
            "RESUME" => Some("running"),
            "GUEST_PANICKED" => Some("guest-panicked"),
            "SHUTDOWN" => Some("shutdown"),
            _ => None,
        };
        if let (Some(st), Some(c)) = (state, self.conn.lock().as_mut()) {
            c.run_state = st.to_string();
        }
        if e.name == "RESET" {
            if let Some(l) = &self.listener {
                l.forget();
            }
        }
    }

    /// The QMP connection, or why there is none.
    pub fn qmp(&self) -> Result<Qmp> {
        match &*self.conn.lock() {
            Some(c) => Ok(c.qmp.clone()),
            None => Err(CaptureError::NotConnected {
                guest: self.name(),
                why: self.detached.lock().clone(),
            }),
        }
    }

    /// Pauses the guest (`stop`, unless it is paused already) and takes every vCPU's
    /// registers (`info registers -a`).
    pub async fn freeze(&self) -> Result<Frozen> {
        let qmp = self.qmp()?;
        let t = Instant::now();
        let status = qmp.query_status().await?;
        if status.running {
            qmp.stop().await?;
        }
        let vcpus = qmp.registers().await?;
        Ok(Frozen {
            vcpus,
            freeze_us: t.elapsed().as_micros() as u64,
            was_running: status.running,
        })
    }

    /// Captures the paused guest: its RAM file (a new read-only descriptor) and the Linux
    /// agent's registration.
    pub fn capture(&self, failure: FailureInfo, frozen: Frozen) -> Result<Capture> {
        let (ram, vcpus, pid) = {
            let conn = self.conn.lock();
            let c = conn.as_ref().ok_or_else(|| CaptureError::NotConnected {
                guest: self.name(),
                why: self.detached.lock().clone(),
            })?;
            (c.ram.clone(), c.vcpus, c.qmp.peer_pid())
        };
        let registered = self.registration().map(|r| Registered::LinuxAgent {
            note: NoteAddress {
                pa: r.vmcoreinfo_pa,
                size: r.vmcoreinfo_size,
            },
            release: r.release,
        });
        Ok(Capture {
            guest: GuestInfo {
                name: self.name(),
                id: u64::from(pid.unwrap_or(0)),
                generation: 0,
                memory_bytes: ram.layout.size,
                vcpus,
            },
            failure,
            vcpus: frozen.vcpus,
            ram: ram.guest_ram()?,
            registered,
            freeze_us: frozen.freeze_us,
            was_running: frozen.was_running,
        })
    }

    /// Lets the paused guest run (`cont`).
    pub async fn resume(&self) -> Result<()> {
        Ok(self.qmp()?.cont().await?)
    }

    /// `system_reset`, then — once QEMU has left the panicked state — `cont`.
    pub async fn restart(&self) -> Result<()> {
        let qmp = self.qmp()?;
        qmp.system_reset().await?;
        if let Some(l) = &self.listener {
            l.forget();
        }
        let deadline = Instant::now() + RESET_TIMEOUT;
        loop {
            let st = match qmp.query_status().await {
                Ok(st) => st,
                Err(e @ ambulance_qemu::Error::Closed { .. }) => {
                    return Err(CaptureError::Stuck {
                        guest: self.name(),
                        what: format!(
                            "QEMU exited on system_reset (was it started with -no-reboot or -action reboot=shutdown?): {e}"
                        ),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            if st.running {
                return Ok(());
            }
            if !matches!(
                st.status.as_str(),
                "guest-panicked" | "internal-error" | "shutdown"
            ) {
                qmp.cont().await?;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CaptureError::Stuck {
                    guest: self.name(),
                    what: format!("QEMU still says {} after system_reset", st.status),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks QEMU to quit.
    pub async fn quit(&self) -> Result<()> {
        self.qmp()?.quit().await?;
        self.detach("QEMU was asked to quit");
        Ok(())
    }

    /// Its status, as the API shows it.
    pub fn status(&self) -> QemuStatus {
        let conn = self.conn.lock();
        let c = conn.as_ref();
        QemuStatus {
            connected: c.is_some_and(|c| !c.qmp.is_closed()),
            qmp: self.qmp_socket.clone(),
            run_state: c.map(|c| c.run_state.clone()),
            pid: c.and_then(|c| c.qmp.peer_pid()),
            version: c.map(|c| c.qmp.version().to_string()),
            vcpus: c.map(|c| c.vcpus),
            memory_bytes: c.map(|c| c.ram.layout.size),
            memory_file: c.map(|c| c.ram.path.clone()),
            registration_socket: self.listener.as_ref().map(|l| l.path().to_path_buf()),
            registration: self.registration().map(|r| AgentStatus {
                vmcoreinfo: format!("{:#x}", r.vmcoreinfo_pa),
                size: r.vmcoreinfo_size,
                release: r.release,
            }),
        }
    }

    /// QEMU's machine type and the RAM file, for people (`None` until connected).
    pub fn describe(&self) -> Option<String> {
        let conn = self.conn.lock();
        let c = conn.as_ref()?;
        Some(format!(
            "QEMU {}, pid {}: {} vCPUs, {} MiB of RAM in {} ({})",
            c.qmp.version(),
            c.qmp
                .peer_pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            c.vcpus,
            c.ram.layout.size >> 20,
            c.ram.path.display(),
            c.ram.machine_type.as_deref().unwrap_or("?"),
        ))
    }
}

/// The failure a QMP event reports, if it reports one:
///
/// * `GUEST_PANICKED` (pvpanic) is a `panic`; `GUEST_CRASHLOADED` too (the guest
///   panicked and its kdump kernel took over);
/// * `WATCHDOG` (the virtual watchdog, e.g. `-device i6300esb`, expired: the guest
///   stopped feeding it) is a `watchdog_stall`;
/// * a `SHUTDOWN` the guest caused (`"guest": true`) is a `reset` (reason
///   `guest-reset`: a reboot or a triple fault, which QEMU does not tell apart, under
///   `-no-reboot` or `-action reboot=shutdown`), a `panic` (`guest-panic`) or a
///   `shutdown` (`guest-shutdown`, the guest powered itself off). Those the host caused
///   (`quit`, a signal) are not failures.
///
/// A `RESET` is never one: the firmware resets the machine itself once more after a
/// host's `system_reset` (SeaBIOS does), and QEMU reports that as the guest's own, so a
/// guest that resets and runs on cannot be told from the daemon's own restarts. To have
/// a triple fault or a reboot reported, and the guest kept for the diagnosis, run QEMU
/// with `-action reboot=shutdown,shutdown=pause`.
pub fn failure_of(e: &QmpEvent) -> Option<FailureInfo> {
    let data: BTreeMap<String, serde_json::Value> = e
        .data
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .and_then(|a| a.as_str())
            .unwrap_or("?")
            .to_string()
    };
    let (cause, detail) = match e.name.as_str() {
        "GUEST_PANICKED" => (
            "panic",
            format!("QEMU reported GUEST_PANICKED (action {})", text("action")),
        ),
        "GUEST_CRASHLOADED" => (
            "panic",
            format!(
                "the guest panicked and loaded its crash kernel: QEMU reported \
                 GUEST_CRASHLOADED (action {})",
                text("action")
            ),
        ),
        "WATCHDOG" => (
            "watchdog_stall",
            format!(
                "the guest stopped feeding its virtual watchdog, which expired: QEMU \
                 reported WATCHDOG (action {})",
                text("action")
            ),
        ),
        "SHUTDOWN" => {
            if data.get("guest").and_then(|g| g.as_bool()) != Some(true) {
                return None;
            }
            let reason = text("reason");
            let cause = match reason.as_str() {
                "guest-panic" => "panic",
                "guest-shutdown" => "shutdown",
                _ => "reset",
            };
            let what = match reason.as_str() {
                "guest-reset" => "the guest reset itself (a reboot or a triple fault)",
                "guest-panic" => "the guest panicked",
                "guest-shutdown" => "the guest powered itself off",
                _ => "the guest stopped",
            };
            (
                cause,
                format!("{what}: QEMU reported {} (reason {reason})", e.name),
            )
        }
        _ => return None,
    };
    Some(failure(cause, detail, data, e.time))
}

/// The report's view of a failure of a guest QEMU runs.
pub fn failure(
    cause: &str,
    detail: String,
    data: BTreeMap<String, serde_json::Value>,
    time: SystemTime,
) -> FailureInfo {
    FailureInfo {
        cause: cause.to_string(),
        detail,
        time: ambulance_report::timestamp(time),
        vcpu: None,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(name: &str, data: serde_json::Value) -> QmpEvent {
        QmpEvent {
            name: name.into(),
            data,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn which_events_are_failures() {
        let cause = |name: &str, data| failure_of(&event(name, data)).map(|f| f.cause);
        assert_eq!(
            cause("GUEST_PANICKED", json!({"action": "pause"})).as_deref(),
            Some("panic")
        );
        assert_eq!(
            cause("GUEST_CRASHLOADED", json!({"action": "run"})).as_deref(),
            Some("panic")
        );
        assert_eq!(
            cause("WATCHDOG", json!({"action": "pause"})).as_deref(),
            Some("watchdog_stall")
        );
        let guest = |reason: &str| json!({"guest": true, "reason": reason});
        // The firmware's own reset after a host's system_reset is reported as the
        // guest's: a RESET alone says nothing.
        assert_eq!(cause("RESET", guest("guest-reset")), None);
        assert_eq!(
            cause("SHUTDOWN", guest("guest-reset")).as_deref(),
            Some("reset")
        );
        assert_eq!(
            cause("SHUTDOWN", guest("guest-shutdown")).as_deref(),
            Some("shutdown")
        );
        assert_eq!(
            cause("SHUTDOWN", guest("guest-panic")).as_deref(),
            Some("panic")
        );
        // What the host did is not the guest's failure.
        for reason in ["host-qmp-system-reset", "host-qmp-quit", "host-signal"] {
            let host = json!({"guest": false, "reason": reason});
            assert_eq!(cause("RESET", host.clone()), None, "{reason}");
            assert_eq!(cause("SHUTDOWN", host), None, "{reason}");
        }
        assert_eq!(cause("RESET", json!({})), None);
        for name in ["STOP", "RESUME", "POWERDOWN", "DEVICE_DELETED"] {
            assert_eq!(cause(name, json!({})), None, "{name}");
        }
        // The detail says what happened; the event's data is kept.
        let f = failure_of(&event("WATCHDOG", json!({"action": "pause"}))).unwrap();
        assert!(
            f.detail.contains("watchdog") && f.detail.contains("pause"),
            "{}",
            f.detail
        );
        assert_eq!(f.data["action"], "pause");
        let f = failure_of(&event("SHUTDOWN", guest("guest-reset"))).unwrap();
        assert!(f.detail.contains("triple fault"), "{}", f.detail);
        assert_eq!(f.data["reason"], "guest-reset");
    }
}
