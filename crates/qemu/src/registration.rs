//! The Linux agent's registration channel.
//!
//! An unmodified Linux guest has no Ambulance doorbell; instead a small agent
//! (`guest-agent/linux/ambulance-register.sh`) tells the host where the kernel's
//! VMCOREINFO note is, over a serial port that QEMU connects to a Unix socket Ambulance
//! listens on:
//!
//! ```text
//! -chardev socket,id=amb,path=SOCK,reconnect=1 -device isa-serial,chardev=amb   # guest /dev/ttyS1
//! ```
//!
//! Protocol, one line each way (ASCII, `\n`-terminated, at most [`MAX_LINE`] bytes; a
//! trailing `\r` is ignored):
//!
//! ```text
//! guest → host   AMBULANCE-REGISTER v1 vmcoreinfo=<hex> size=<hex> release=<uname -r>
//! host → guest   AMBULANCE-ACK v1 vmcoreinfo=<hex> size=<hex> release=<…>
//!           or   AMBULANCE-REFUSED v1 <reason>
//! ```
//!
//! `vmcoreinfo` and `size` are what `/sys/kernel/vmcoreinfo` says (`"%pa %x"`), as bare
//! hex (no `0x`): the guest-physical address of the note and the size of its buffer
//! (`VMCOREINFO_NOTE_SIZE`, 0x1024 with 4 KiB pages). Fields
//! come in this order, separated by one space, each exactly once; anything else is
//! refused with a reason. The host keeps the latest accepted registration, forgets it
//! when the guest resets (a new boot registers anew), and reads the note itself out of
//! guest RAM at diagnosis time — the registration only says where to look.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::{Error, Result};

/// Longest registration line, in bytes.
pub const MAX_LINE: usize = 256;
/// Largest note buffer accepted: the kernel's `VMCOREINFO_NOTE_SIZE` is a page of text
/// plus the note headers (4132 bytes with 4 KiB pages); the introspection layer's bound.
pub const MAX_NOTE_SIZE: u64 = ambulance_linux::VMCOREINFO_NOTE_MAX as u64;
/// Smallest: an ELF note header and the `VMCOREINFO` name.
pub const MIN_NOTE_SIZE: u64 = 24;
/// Longest `uname -r` (`__NEW_UTS_LEN`).
pub const MAX_RELEASE: usize = 64;
/// The first word of a registration.
pub const MAGIC: &str = "AMBULANCE-REGISTER";
/// The protocol version this host speaks.
pub const VERSION: &str = "v1";

/// A registration the guest sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRegistration {
    /// Guest-physical address of the VMCOREINFO ELF note.
    pub vmcoreinfo_pa: u64,
    /// Size of the note's buffer.
    pub vmcoreinfo_size: u64,
    /// The kernel release (`uname -r`).
    pub release: String,
    /// When it arrived.
    pub received: SystemTime,
}

impl AgentRegistration {
    /// The line the host answers an accepted registration with (without `\n`).
    pub fn ack_line(&self) -> String {
        format!(
            "AMBULANCE-ACK {VERSION} vmcoreinfo={:x} size={:x} release={}",
            self.vmcoreinfo_pa, self.vmcoreinfo_size, self.release
        )
    }
}

impl std::fmt::Display for AgentRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VMCOREINFO note at guest-physical {:#x} ({} bytes), kernel {}",
            self.vmcoreinfo_pa, self.vmcoreinfo_size, self.release
        )
    }
}

/// Why a line is not a registration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Longer than [`MAX_LINE`].
    #[error("the line is longer than {MAX_LINE} bytes")]
    TooLong,
    /// A byte that is not printable ASCII.
    #[error("byte {0:#04x} at offset {1} is not printable ASCII")]
    Byte(u8, usize),
    /// It does not start with [`MAGIC`].
    #[error("not a registration (it does not start with {MAGIC})")]
    NotRegistration,
    /// Another protocol version.
    #[error("protocol version {0:?} is not spoken here (this host speaks {VERSION})")]
    Version(String),
    /// A field is missing, unknown, repeated or out of order.
    #[error("expected field `{expected}=` at word {index}, found {found:?}")]
    Field {
        /// The field expected there.
        expected: &'static str,
        /// Its position.
        index: usize,
        /// What was there.
        found: String,
    },
    /// Words after the last field.
    #[error("unexpected words after release=: {0:?}")]
    Trailing(String),
    /// A value is not bare hex of the right width.
    #[error("{field}={value:?} is not hex of at most {max_digits} digits (no 0x)")]
    Hex {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The most digits accepted.
        max_digits: usize,
    },
    /// The note size is implausible.
    #[error("size={0:#x} is not that of a VMCOREINFO note buffer ({MIN_NOTE_SIZE}..={MAX_NOTE_SIZE} bytes)")]
    Size(u64),
    /// The release is empty or too long.
    #[error("release is empty or longer than {MAX_RELEASE} bytes")]
    Release,
}

fn hex(field: &'static str, value: &str, max_digits: usize) -> Result<u64, LineError> {
    let bad = || LineError::Hex {
        field,
        value: value.chars().take(40).collect(),
        max_digits,
    };
    if value.is_empty() || value.len() > max_digits || !value.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    u64::from_str_radix(value, 16).map_err(|_| bad())
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
pub fn parse_line(line: &[u8]) -> Result<AgentRegistration, LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    if let Some(i) = line.iter().position(|&b| !(0x20..0x7f).contains(&b)) {
        return Err(LineError::Byte(line[i], i));
    }
    let text = std::str::from_utf8(line).expect("printable ASCII is UTF-8");
    let mut words = text.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(LineError::NotRegistration);
    }
    match words.next() {
        Some(VERSION) => {}
        other => return Err(LineError::Version(other.unwrap_or("").to_string())),
    }
    let mut field = |index: usize, name: &'static str| {
        let w = words.next().unwrap_or("");
        w.strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
            .ok_or_else(|| LineError::Field {
                expected: name,
                index,
                found: w.chars().take(40).collect(),
            })
    };
    let pa = hex("vmcoreinfo", field(2, "vmcoreinfo")?, 16)?;
    let size = hex("size", field(3, "size")?, 8)?;
    let release = field(4, "release")?.to_string();
    if let Some(rest) = words.next() {
        return Err(LineError::Trailing(rest.chars().take(40).collect()));
    }
    if !(MIN_NOTE_SIZE..=MAX_NOTE_SIZE).contains(&size) {
        return Err(LineError::Size(size));
    }
    if release.is_empty() || release.len() > MAX_RELEASE {
        return Err(LineError::Release);
    }
    Ok(AgentRegistration {
        vmcoreinfo_pa: pa,
        vmcoreinfo_size: size,
        release,
        received: SystemTime::now(),
    })
}

/// Refusals logged per connection; a guest that keeps sending garbage is not allowed to
/// flood the log.
const MAX_LOGGED_REFUSALS: u32 = 10;

/// Listens on a registration socket and keeps the latest registration. Dropping it stops
/// listening and removes the socket file.
pub struct AgentListener {
    path: PathBuf,
    latest: watch::Sender<Option<AgentRegistration>>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for AgentListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("path", &self.path)
            .finish()
    }
}

/// Binds a Unix socket at `path`, replacing a stale socket file but refusing one that
/// something listens on, and anything that is not a socket.
fn bind(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let bad = |reason: String| Error::Registration {
        path: path.to_path_buf(),
        reason,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bad(
                "exists and is not a socket; refusing to replace it".into()
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(bad("something already listens on it".into()));
        }
        std::fs::remove_file(path)
            .map_err(|e| bad(format!("cannot remove the stale socket: {e}")))?;
    }
    UnixListener::bind(path).map_err(|e| bad(format!("cannot listen on it: {e}")))
}

impl AgentListener {
    /// Starts listening at `path` (inside a tokio runtime).
    pub fn bind(path: &Path) -> Result<AgentListener> {
        let listener = bind(path)?;
        let (latest, _) = watch::channel(None);
        let tx = latest.clone();
        let socket = path.to_path_buf();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tracing::debug!(socket = %socket.display(), "registration channel connected");
                        tokio::spawn(serve(stream, socket.clone(), tx.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(socket = %socket.display(), "registration socket: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(AgentListener {
            path: path.to_path_buf(),
            latest,
            task: task.abort_handle(),
        })
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The latest accepted registration.
    pub fn latest(&self) -> Option<AgentRegistration> {
        self.latest.borrow().clone()
    }

    /// Follows registrations as they are accepted (and forgotten: `None`).
    pub fn subscribe(&self) -> watch::Receiver<Option<AgentRegistration>> {
        self.latest.subscribe()
    }

    /// Forgets the registration (the guest reset; its next boot registers anew).
    pub fn forget(&self) {
        self.latest.send_replace(None);
    }
}

impl Drop for AgentListener {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection (QEMU's end of the guest's serial port): every line is a registration
/// or refused, and answered.
async fn serve(
    stream: UnixStream,
    socket: PathBuf,
    latest: watch::Sender<Option<AgentRegistration>>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let mut refusals = 0u32;
    loop {
        let answer = match crate::qmp::read_line_bounded(&mut reader, &mut line, MAX_LINE + 1).await
        {
            Ok(false) => break,
            Ok(true) if line.iter().all(|b| b.is_ascii_whitespace()) => continue,
            Ok(true) => match parse_line(&line) {
                Ok(r) => {
                    tracing::info!(socket = %socket.display(), "guest registered: {r}");
                    let ack = r.ack_line();
                    latest.send_replace(Some(r));
                    ack
                }
                Err(e) => refuse(&socket, &mut refusals, &e.to_string(), &line),
            },
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                refuse(&socket, &mut refusals, &LineError::TooLong.to_string(), &[])
            }
            Err(e) => {
                tracing::debug!(socket = %socket.display(), "registration channel: {e}");
                break;
            }
        };
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    tracing::debug!(socket = %socket.display(), "registration channel closed");
}

fn refuse(socket: &Path, refusals: &mut u32, reason: &str, line: &[u8]) -> String {
    *refusals += 1;
    let shown: String = String::from_utf8_lossy(line)
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if *refusals <= MAX_LOGGED_REFUSALS {
        tracing::warn!(socket = %socket.display(), line = %shown, "registration refused: {reason}");
    } else if *refusals == MAX_LOGGED_REFUSALS + 1 {
        tracing::warn!(socket = %socket.display(), "more registrations refused on this connection; no longer logged");
    }
    format!("AMBULANCE-REFUSED {VERSION} {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_parses() {
        let r = parse_line(
            b"AMBULANCE-REGISTER v1 vmcoreinfo=2b5ca000 size=1024 release=6.1.0-56-cloud-amd64\r",
        )
        .unwrap();
        assert_eq!(r.vmcoreinfo_pa, 0x2b5c_a000);
        assert_eq!(r.vmcoreinfo_size, 0x1024);
        assert_eq!(r.release, "6.1.0-56-cloud-amd64");
        assert_eq!(
            r.ack_line(),
            "AMBULANCE-ACK v1 vmcoreinfo=2b5ca000 size=1024 release=6.1.0-56-cloud-amd64"
        );
    }

    #[test]
    fn malformed_lines_are_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"hello", "not a registration"),
            (
                b"AMBULANCE-REGISTER v2 vmcoreinfo=1 size=1000 release=x",
                "v2",
            ),
            (b"AMBULANCE-REGISTER v1", "vmcoreinfo="),
            (
                b"AMBULANCE-REGISTER v1 size=1000 vmcoreinfo=1 release=x",
                "vmcoreinfo=",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=0x1000 size=1000 release=x",
                "no 0x",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=12345678901234567 size=1000 release=x",
                "16 digits",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=zz release=x",
                "size=\"zz\"",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=100000 release=x",
                "size=0x100000",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=10 release=x",
                "size=0x10",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=1000 release=",
                "release",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=1000 release=x extra=1",
                "extra",
            ),
            (
                b"AMBULANCE-REGISTER v1  vmcoreinfo=1000 size=1000 release=x",
                "word 2",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=1000 release=a\tb",
                "0x09",
            ),
            (
                b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=1000 release=\xff",
                "0xff",
            ),
        ];
        for (line, want) in cases {
            let e = parse_line(line).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
        }
        let long = format!(
            "AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=1000 release={}",
            "x".repeat(300)
        );
        assert_eq!(parse_line(long.as_bytes()), Err(LineError::TooLong));
        let long = format!(
            "AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=1000 release={}",
            "x".repeat(65)
        );
        assert_eq!(parse_line(long.as_bytes()), Err(LineError::Release));
    }

    #[tokio::test]
    async fn the_listener_acks_keeps_the_latest_and_refuses_garbage() {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.sock");
        let listener = AgentListener::bind(&path).unwrap();
        // A second listener on the same live socket is refused.
        let e = AgentListener::bind(&path).unwrap_err().to_string();
        assert!(e.contains("already listens"), "{e}");
        let mut watch = listener.subscribe();
        let s = UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"garbage\r\n").await.unwrap();
        let l = lines.next_line().await.unwrap().unwrap();
        assert!(
            l.starts_with("AMBULANCE-REFUSED v1 not a registration"),
            "{l}"
        );
        w.write_all(&[b'x'; 1000]).await.unwrap();
        w.write_all(b"\n").await.unwrap();
        let l = lines.next_line().await.unwrap().unwrap();
        assert!(l.contains("longer than 256"), "{l}");
        w.write_all(b"AMBULANCE-REGISTER v1 vmcoreinfo=2b5ca000 size=1024 release=6.1.0-x\n")
            .await
            .unwrap();
        let l = lines.next_line().await.unwrap().unwrap();
        assert!(l.starts_with("AMBULANCE-ACK v1 vmcoreinfo=2b5ca000"), "{l}");
        watch.changed().await.unwrap();
        assert_eq!(listener.latest().unwrap().vmcoreinfo_pa, 0x2b5c_a000);
        w.write_all(b"AMBULANCE-REGISTER v1 vmcoreinfo=1000 size=1024 release=6.1.0-y\n")
            .await
            .unwrap();
        lines.next_line().await.unwrap().unwrap();
        assert_eq!(listener.latest().unwrap().release, "6.1.0-y");
        listener.forget();
        assert!(listener.latest().is_none());
        drop(listener);
        assert!(!path.exists(), "the socket file is removed");
        // A stale socket file is replaced; a regular file is not.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        drop(AgentListener::bind(&path).unwrap());
        std::fs::write(&path, b"x").unwrap();
        assert!(AgentListener::bind(&path)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
    }
}
