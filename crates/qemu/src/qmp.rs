//! An async QMP client on tokio.
//!
//! QMP is line-delimited JSON on a Unix socket: QEMU greets (`{"QMP": {...}}`), the client
//! leaves negotiation mode with `qmp_capabilities`, then sends
//! `{"execute": CMD, "arguments": {...}, "id": N}` and gets `{"return": ..., "id": N}` or
//! `{"error": {"class": ..., "desc": ...}, "id": N}`; asynchronous events
//! (`{"event": NAME, "data": {...}, "timestamp": {...}}`) arrive at any time, also between
//! a command and its reply.
//!
//! [`Qmp::connect`] returns the command side ([`Qmp`], cheap to clone, usable from many
//! tasks at once) and the event side ([`QmpEvents`]); a reader task routes every reply to the
//! command that waits for it by id and every event to [`QmpEvents`]. Connecting is retried
//! while the socket is absent or refuses (QEMU starting), and every command has a timeout.
//!
//! QEMU serves one QMP client per socket at a time: a second client connects but gets no
//! greeting until the first leaves, which [`Qmp::connect`] reports as such.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result};

/// Longest QMP line accepted (an `info registers -a` of many vCPUs is well below).
pub const MAX_LINE: usize = 16 << 20;

/// Timeouts of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// How long to retry connecting while the socket is absent or refuses, and to wait
    /// for the greeting.
    pub connect_timeout: Duration,
    /// How long each command may take (see [`Qmp::execute_with_timeout`] for others).
    pub command_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(10),
        }
    }
}

/// An asynchronous QMP event.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    /// Its name (`GUEST_PANICKED`, `STOP`, `RESUME`, `RESET`, `SHUTDOWN`, …).
    pub name: String,
    /// Its `data` (an empty object when it has none).
    pub data: Value,
    /// When QEMU emitted it.
    pub time: SystemTime,
}

impl QmpEvent {
    /// The event `msg` is (`{"event": …, "data": …, "timestamp": …}`), or `None` when it
    /// is not an event.
    fn from_message(msg: &Value) -> Option<QmpEvent> {
        let name = msg.get("event")?.as_str()?;
        let time = msg
            .get("timestamp")
            .and_then(|t| {
                let s = u64::try_from(t.get("seconds")?.as_i64()?).ok()?;
                let us = u64::try_from(t.get("microseconds")?.as_i64()?).ok()?;
                SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(s))?
                    .checked_add(Duration::from_micros(us))
            })
            .unwrap_or_else(SystemTime::now);
        Some(QmpEvent {
            name: name.to_string(),
            data: msg.get("data").cloned().unwrap_or_else(|| json!({})),
            time,
        })
    }
}

/// The guest's run state (`query-status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStatus {
    /// QEMU's `RunState`: `running`, `paused`, `guest-panicked`, `prelaunch`,
    /// `shutdown`, `internal-error`, ….
    pub status: String,
    /// Whether the vCPUs run.
    pub running: bool,
}

type Reply = std::result::Result<Value, (String, String)>;

/// What the reader task and the command side share.
#[derive(Default)]
struct Shared {
    /// Commands waiting for their reply, by id: (command name, where the reply goes).
    pending: Mutex<HashMap<u64, (String, oneshot::Sender<Reply>)>>,
    /// Set when the reader ended: no command can be answered any more.
    closed: Mutex<bool>,
}

struct Inner {
    socket: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    command_timeout: Duration,
    version: String,
    peer_pid: Option<u32>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The command side of a QMP connection. Clones share the connection; it closes when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("socket", &self.inner.socket)
            .field("version", &self.inner.version)
            .finish()
    }
}

/// The event side of a QMP connection. It ends (`None`) when the connection does.
#[derive(Debug)]
pub struct QmpEvents {
    socket: PathBuf,
    rx: mpsc::UnboundedReceiver<QmpEvent>,
}

impl QmpEvents {
    /// The next event; `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<QmpEvent> {
        self.rx.recv().await
    }

    /// Waits for the first event named one of `names` (others are dropped), at most
    /// `timeout`.
    pub async fn wait_for(&mut self, names: &[&str], timeout: Duration) -> Result<QmpEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) if names.contains(&e.name.as_str()) => return Ok(e),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::Closed {
                        socket: self.socket.clone(),
                        command: None,
                    })
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        socket: self.socket.clone(),
                        command: format!("waiting for event {}", names.join(" or ")),
                        after: timeout,
                    })
                }
            }
        }
    }
}

fn is_retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// Reads one `\n`-terminated line of at most `max` bytes (without the terminator) into
/// `buf`; `Ok(false)` at end of stream. A longer line is consumed and refused.
pub(crate) async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return if too_long {
                Err(line_too_long(max))
            } else {
                Ok(!buf.is_empty())
            };
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if too_long || buf.len() + take > max {
            too_long = true;
        } else {
            buf.extend_from_slice(&chunk[..take]);
        }
        r.consume(take + usize::from(done));
        if done {
            return if too_long {
                Err(line_too_long(max))
            } else {
                Ok(true)
            };
        }
    }
}

pub(crate) fn line_too_long(max: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a line longer than {max} bytes"),
    )
}

/// Events QEMU may send ahead of the greeting before [`read_greeting`] gives up. QEMU
/// writes an event it could not deliver to the client that just left (a `STOP` as the
/// guest panicked, say) to the next one, before that client's greeting; a few are normal,
/// an endless stream is not QMP.
const MAX_EVENTS_BEFORE_GREETING: usize = 64;

/// Reads the connection's first message that is not an event: QMP's greeting, which the
/// caller checks. Events before it are QEMU's, sent late (see
/// [`MAX_EVENTS_BEFORE_GREETING`]); they are returned, in order, to be delivered first.
async fn read_greeting(
    reader: &mut BufReader<OwnedReadHalf>,
    socket: &Path,
) -> Result<(Value, Vec<QmpEvent>)> {
    let mut line = Vec::new();
    let mut events = Vec::new();
    loop {
        let got = read_line_bounded(reader, &mut line, MAX_LINE)
            .await
            .map_err(|source| Error::Io {
                socket: socket.to_path_buf(),
                source,
            })?;
        if !got {
            return Err(Error::Closed {
                socket: socket.to_path_buf(),
                command: None,
            });
        }
        let message: Value = serde_json::from_slice(&line).map_err(|e| Error::Protocol {
            socket: socket.to_path_buf(),
            reason: format!("the greeting is not JSON ({e}): is this a QMP socket?"),
        })?;
        match QmpEvent::from_message(&message) {
            Some(event) if events.len() < MAX_EVENTS_BEFORE_GREETING => events.push(event),
            Some(_) => {
                return Err(Error::Protocol {
                    socket: socket.to_path_buf(),
                    reason: format!(
                        "more than {MAX_EVENTS_BEFORE_GREETING} events and no greeting: is this a QMP socket?"
                    ),
                })
            }
            None => return Ok((message, events)),
        }
    }
}

/// Routes QEMU's lines: replies to the command waiting for their id, events to `events`.
/// When the connection ends every waiting command gets `Closed`.
async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    socket: PathBuf,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    let mut line = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut line, MAX_LINE).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), "QMP connection ends: {e}");
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(text) {
            Ok(Value::Object(m)) => Value::Object(m),
            Ok(_) | Err(_) => {
                tracing::warn!(socket = %socket.display(), line = %truncate(text, 200), "QMP line is not a JSON object; ignored");
                continue;
            }
        };
        if let Some(event) = QmpEvent::from_message(&msg) {
            let _ = events.send(event);
            continue;
        }
        let reply: Reply = if let Some(r) = msg.get("return") {
            Ok(r.clone())
        } else if let Some(e) = msg.get("error") {
            Err((
                e.get("class")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                e.get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ))
        } else {
            tracing::warn!(socket = %socket.display(), line = %truncate(text, 200), "QMP line is neither a reply nor an event; ignored");
            continue;
        };
        let waiter = msg
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| shared.pending.lock().remove(&id));
        match waiter {
            Some((_, tx)) => {
                let _ = tx.send(reply);
            }
            None => {
                tracing::warn!(socket = %socket.display(), line = %truncate(text, 200), "QMP reply for no waiting command; ignored")
            }
        }
    }
    *shared.closed.lock() = true;
    // Dropping the senders wakes every waiting command with `Closed`.
    shared.pending.lock().clear();
}

impl Qmp {
    /// Connects to the QMP socket at `path` (retrying while it is absent or refuses, up
    /// to `options.connect_timeout`), reads the greeting and leaves negotiation mode.
    /// Must be called inside a tokio runtime.
    pub async fn connect(path: &Path, options: ConnectOptions) -> Result<(Qmp, QmpEvents)> {
        let started = Instant::now();
        let deadline = started + options.connect_timeout;
        let socket = path.to_path_buf();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if is_retryable(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(source) => {
                    return Err(Error::Connect {
                        socket,
                        waited: started.elapsed().min(options.connect_timeout),
                        source,
                    })
                }
            }
        };
        let peer_pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let (greeting, early_events) =
            tokio::time::timeout(left, read_greeting(&mut reader, &socket))
                .await
                .map_err(|_| Error::Protocol {
                    socket: socket.clone(),
                    reason: format!(
                        "no QMP greeting within {} ms (QEMU serves one QMP client per socket: is another one connected?)",
                        left.as_millis()
                    ),
                })??;
        let version = greeting
            .pointer("/QMP/version/qemu")
            .map(|v| {
                format!(
                    "{}.{}.{}",
                    v["major"].as_u64().unwrap_or(0),
                    v["minor"].as_u64().unwrap_or(0),
                    v["micro"].as_u64().unwrap_or(0)
                )
            })
            .ok_or_else(|| Error::Protocol {
                socket: socket.clone(),
                reason: format!(
                    "the greeting is not QMP's: {}",
                    truncate(&greeting.to_string(), 200)
                ),
            })?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        for event in early_events {
            let _ = events_tx.send(event);
        }
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(read_loop(reader, socket.clone(), shared.clone(), events_tx));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                socket: socket.clone(),
                writer: tokio::sync::Mutex::new(write),
                shared,
                next_id: AtomicU64::new(1),
                command_timeout: options.command_timeout,
                version,
                peer_pid,
                reader: task.abort_handle(),
            }),
        };
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok((
            qmp,
            QmpEvents {
                socket,
                rx: events_rx,
            },
        ))
    }

    /// The socket this connection is on.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// QEMU's version (`major.minor.micro`) from the greeting.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The pid of the QEMU process on the other end (`SO_PEERCRED`), when known.
    pub fn peer_pid(&self) -> Option<u32> {
        self.inner.peer_pid
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.lock()
    }

    /// Runs `command` with `arguments` (`Value::Null` or an object) and returns its
    /// `return` value, within the connection's command timeout.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value> {
        self.execute_with_timeout(command, arguments, self.inner.command_timeout)
            .await
    }

    /// [`Qmp::execute`] with its own timeout (for slow commands such as dumps).
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let socket = || self.inner.socket.clone();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            if *self.inner.shared.closed.lock() {
                return Err(Error::Closed {
                    socket: socket(),
                    command: Some(command.to_string()),
                });
            }
            self.inner
                .shared
                .pending
                .lock()
                .insert(id, (command.to_string(), tx));
        }
        let mut msg = Map::new();
        msg.insert("execute".into(), json!(command));
        match arguments {
            Value::Null => {}
            Value::Object(a) if a.is_empty() => {}
            a @ Value::Object(_) => {
                msg.insert("arguments".into(), a);
            }
            other => {
                self.inner.shared.pending.lock().remove(&id);
                return Err(Error::Reply {
                    socket: socket(),
                    command: command.to_string(),
                    reason: format!("arguments must be a JSON object, not {other}"),
                });
            }
        }
        msg.insert("id".into(), json!(id));
        let mut bytes = serde_json::to_vec(&Value::Object(msg)).expect("JSON values serialize");
        bytes.push(b'\n');
        let exchange = async {
            {
                let mut w = self.inner.writer.lock().await;
                w.write_all(&bytes).await.map_err(|source| Error::Io {
                    socket: socket(),
                    source,
                })?;
            }
            rx.await.map_err(|_| Error::Closed {
                socket: socket(),
                command: Some(command.to_string()),
            })
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        self.inner.shared.pending.lock().remove(&id);
        match outcome {
            Err(_) => Err(Error::Timeout {
                socket: socket(),
                command: command.to_string(),
                after: timeout,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(Error::Command {
                socket: socket(),
                command: command.to_string(),
                class,
                desc,
            }),
        }
    }

    fn reply_error(&self, command: &str, reason: impl Into<String>) -> Error {
        Error::Reply {
            socket: self.inner.socket.clone(),
            command: command.to_string(),
            reason: reason.into(),
        }
    }

    /// Pauses every vCPU (`stop`).
    pub async fn stop(&self) -> Result<()> {
        self.execute("stop", Value::Null).await.map(drop)
    }

    /// Resumes the vCPUs (`cont`).
    pub async fn cont(&self) -> Result<()> {
        self.execute("cont", Value::Null).await.map(drop)
    }

    /// Resets the machine (`system_reset`; the reset itself happens asynchronously, and a
    /// `RESET` event follows).
    pub async fn system_reset(&self) -> Result<()> {
        self.execute("system_reset", Value::Null).await.map(drop)
    }

    /// Asks QEMU to exit (`quit`).
    pub async fn quit(&self) -> Result<()> {
        match self.execute("quit", Value::Null).await {
            // QEMU may close the socket before the reply gets out.
            Ok(_) | Err(Error::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The guest's run state (`query-status`).
    pub async fn query_status(&self) -> Result<RunStatus> {
        let v = self.execute("query-status", Value::Null).await?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| self.reply_error("query-status", format!("no `status` in {v}")))?;
        Ok(RunStatus {
            status: status.to_string(),
            running: v.get("running").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// The guest's name (`query-name`; `-name`), if it has one.
    pub async fn query_name(&self) -> Result<Option<String>> {
        let v = self.execute("query-name", Value::Null).await?;
        Ok(v.get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string))
    }

    /// The vCPU indexes (`query-cpus-fast`), in order.
    pub async fn query_cpus(&self) -> Result<Vec<u32>> {
        let v = self.execute("query-cpus-fast", Value::Null).await?;
        let list = v
            .as_array()
            .ok_or_else(|| self.reply_error("query-cpus-fast", "not a list"))?;
        let mut cpus = list
            .iter()
            .map(|c| {
                c.get("cpu-index")
                    .and_then(Value::as_u64)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        self.reply_error("query-cpus-fast", format!("no `cpu-index` in {c}"))
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        cpus.sort_unstable();
        Ok(cpus)
    }

    /// A QOM property (`qom-get`).
    pub async fn qom_get(&self, path: &str, property: &str) -> Result<Value> {
        self.execute("qom-get", json!({"path": path, "property": property}))
            .await
    }

    /// A human monitor command's output (`human-monitor-command`).
    pub async fn hmp(&self, command_line: &str) -> Result<String> {
        let v = self
            .execute(
                "human-monitor-command",
                json!({"command-line": command_line}),
            )
            .await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.reply_error("human-monitor-command", "the output is not a string"))
    }

    /// Every vCPU's registers (`info registers -a`). Stop the guest first for a
    /// consistent picture.
    pub async fn registers(&self) -> Result<Vec<ambulance_report::VcpuRegisters>> {
        let text = self.hmp("info registers -a").await?;
        crate::registers::parse_registers(&text)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A fake QEMU for unit tests.
#[cfg(test)]
pub(crate) mod fake {
    use serde_json::Value;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, then answers each command as `answer` says (None: never),
    /// sending an event before every reply.
    pub async fn fake_qemu(
        listener: UnixListener,
        answer: impl Fn(&Value) -> Option<Value> + Send + 'static,
    ) {
        fake_qemu_late(listener, Vec::new(), answer).await
    }

    /// [`fake_qemu`] that first sends `events` ahead of its greeting, as QEMU does with
    /// events it could not deliver to the client before.
    pub async fn fake_qemu_late(
        listener: UnixListener,
        events: Vec<Value>,
        answer: impl Fn(&Value) -> Option<Value> + Send + 'static,
    ) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        for event in events {
            w.write_all(format!("{event}\r\n").as_bytes())
                .await
                .unwrap();
        }
        w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let cmd: Value = serde_json::from_str(&l).unwrap();
            w.write_all(b"{\"timestamp\": {\"seconds\": 1795337730, \"microseconds\": 5}, \"event\": \"STOP\"}\r\n")
                .await
                .unwrap();
            if let Some(mut reply) = answer(&cmd) {
                reply["id"] = cmd["id"].clone();
                w.write_all(format!("{reply}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{fake_qemu, fake_qemu_late};
    use super::*;
    use tokio::net::UnixListener;

    fn options() -> ConnectOptions {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn commands_replies_events_errors_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        // Connecting before the socket exists is retried.
        let p = path.clone();
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let l = UnixListener::bind(&p).unwrap();
            fake_qemu(l, |c| match c["execute"].as_str().unwrap() {
                "qmp_capabilities" => Some(json!({"return": {}})),
                "query-status" => Some(json!({"return": {"status": "guest-panicked", "running": false}})),
                "nosuch" => Some(json!({"error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}})),
                "human-monitor-command" => Some(json!({"return": include_str!("../../../fixtures/qemu/info-registers-a-2vcpu.txt")})),
                _ => None,
            })
            .await
        });
        let (qmp, mut events) = Qmp::connect(&path, options()).await.unwrap();
        assert_eq!(qmp.version(), "7.2.22");
        assert_eq!(qmp.peer_pid(), Some(std::process::id()));
        let st = qmp.query_status().await.unwrap();
        assert_eq!(st.status, "guest-panicked");
        assert!(!st.running);
        let e = qmp
            .execute("nosuch", Value::Null)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("qmp.sock") && e.contains("`nosuch` failed: CommandNotFound"),
            "{e}"
        );
        let e = qmp
            .execute("slow", json!({}))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`slow` got no reply within 300 ms"), "{e}");
        // Concurrent commands get their own replies.
        let (a, b) = tokio::join!(qmp.query_status(), qmp.registers());
        assert_eq!(a.unwrap().status, "guest-panicked");
        assert_eq!(b.unwrap().len(), 2);
        let ev = events
            .wait_for(&["STOP"], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(ev.data, json!({}));
        assert_eq!(
            ev.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1795337730) + Duration::from_micros(5)
        );
        server.abort();
        let _ = server.await;
        // The server is gone: commands fail as closed, events end.
        while events.next().await.is_some() {}
        let e = qmp.query_status().await.unwrap_err();
        assert!(matches!(e, Error::Closed { .. }), "{e}");
        assert!(qmp.is_closed());
    }

    fn capabilities_only(c: &Value) -> Option<Value> {
        (c["execute"] == "qmp_capabilities").then(|| json!({"return": {}}))
    }

    fn event(name: &str, seconds: u64) -> Value {
        json!({"timestamp": {"seconds": seconds, "microseconds": 0}, "event": name})
    }

    /// QEMU writes an event it could not deliver to the client that left to the next
    /// one, ahead of that client's greeting (seen: a `STOP` after a guest panicked, on the
    /// second connection). The connection is made, and those events come first, in order.
    #[tokio::test]
    async fn events_ahead_of_the_greeting_are_delivered_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let before = vec![event("GUEST_PANICKED", 10), event("STOP", 11)];
        let server = tokio::spawn(fake_qemu_late(listener, before, capabilities_only));
        let (_qmp, mut events) = Qmp::connect(&path, options()).await.unwrap();
        let first = events.next().await.unwrap();
        let second = events.next().await.unwrap();
        assert_eq!(
            (first.name.as_str(), second.name.as_str()),
            ("GUEST_PANICKED", "STOP")
        );
        assert_eq!(
            second.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(11)
        );
        server.abort();
    }

    /// Events without end and no greeting are not QMP: a clear error, not a wait for the
    /// connect timeout.
    #[tokio::test]
    async fn a_peer_that_sends_only_events_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let before = (0..=MAX_EVENTS_BEFORE_GREETING as u64)
            .map(|i| event("RTC_CHANGE", i))
            .collect();
        let server = tokio::spawn(fake_qemu_late(listener, before, capabilities_only));
        let e = Qmp::connect(&path, options())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("qmp.sock") && e.contains("events and no greeting"),
            "{e}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_socket_and_a_silent_peer_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let quick = ConnectOptions {
            connect_timeout: Duration::from_millis(200),
            ..options()
        };
        let e = Qmp::connect(&path, quick).await.unwrap_err().to_string();
        assert!(e.contains("none.sock") && e.contains("retried"), "{e}");
        // Something listens but never greets (another client holds QEMU's QMP).
        let _l = UnixListener::bind(&path).unwrap();
        let e = Qmp::connect(&path, quick).await.unwrap_err().to_string();
        assert!(e.contains("no QMP greeting"), "{e}");
    }
}
