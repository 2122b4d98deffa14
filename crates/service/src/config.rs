//! The daemon's configuration: a TOML file, or embedded defaults.
//!
//! ```toml
//! data_dir = "/var/lib/ambulance"      # reports, index, socket
//! max_parallel_diagnoses = 2
//!
//! [api]
//! socket = "/run/ambulance.sock"       # default: <data_dir>/ambulance.sock (mode 0600)
//! tcp = "127.0.0.1:7878"               # optional; requires bearer_token, and tls off loopback
//! tls = { cert = "api.pem", key = "api.key" }
//! bearer_token = "…"
//!
//! [worker]
//! address_space = "2G"                 # RLIMIT_AS on top of the guest RAM it maps
//! cpu_seconds = 60                     # RLIMIT_CPU
//! timeout_ms = 30000                   # wall clock, enforced by the daemon
//!
//! [alerts]
//! webhooks = ["http://127.0.0.1:9000/hook"]
//! attempts = 5
//! backoff_ms = 500                     # doubled after every failed attempt
//!
//! [[guest]]
//! name = "web"
//! kernel = "test"                      # a built-in kernel the binary provides, or an ELF path
//! memory = "64M"
//! vcpus = 2
//! cmdline = "fault=none"
//! watchdog_ms = 1000
//! degraded_below_hz = 500
//! policy = "maintenance"               # restart | maintenance | rescue | hold
//! core = false
//! maintenance = { cmdline = "mode=maintenance", timeout_ms = 10000 }
//! rescue = { cmdline = "fault=none tasks=4", failures = 3, window_ms = 60000, healthy_period_ms = 0 }
//!
//! [[guest]]                            # a guest QEMU runs (Linux, unmodified)
//! name = "db"
//! kind = "qemu"
//! qmp = "/run/qemu/db.qmp"             # -qmp unix:PATH,server=on,wait=off
//! memory_file = "/dev/shm/db.ram"      # its memory-backend-file (default: QEMU's mem-path)
//! registration = "/run/ambulance/db.reg"   # optional: the Linux agent's serial port
//! debuginfo = "/usr/lib/debug/boot/vmlinux-6.1.0-…"   # optional
//! policy = "hold"                      # restart | hold
//!
//! [fleet]                              # optional: join a fleet (see `ambulance-fleet`)
//! nats = ["tls://nats1:4222"]          # the engine's servers (one or a cluster's)
//! subscriber = "acme"                  # the subscriber the zero certificate carries
//! host_id = "hv-17"                    # default: the machine's host name
//! bootstrap = "/etc/ambulance/zero"    # zero.pem (certificate and key) and ca.pem
//! health_interval_ms = 5000
//! ```
//!
//! Unknown keys are refused, and every refusal names the file, the key (with its line) and
//! the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Result, ServiceError};

/// Kernels the program provides under a name (the `ambulance` binary's built-in test
/// kernel is `test`), and the files they are. A configuration names a kernel either so
/// or by its path; either way the daemon gets a file, as it would a user's kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuiltinKernels {
    by_name: BTreeMap<String, PathBuf>,
    default: Option<String>,
}

impl BuiltinKernels {
    /// No built-in kernels: every kernel is a path.
    pub fn none() -> BuiltinKernels {
        BuiltinKernels::default()
    }

    /// Adds `name` for the file at `path`; the first one added is the default of guests
    /// that name no kernel.
    pub fn with(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> BuiltinKernels {
        let name = name.into();
        self.default.get_or_insert_with(|| name.clone());
        self.by_name.insert(name, path.into());
        self
    }

    /// The file a kernel `spec` (a built-in name or a path) names.
    pub fn resolve(&self, spec: &str) -> PathBuf {
        self.by_name
            .get(spec)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(spec))
    }

    /// The kernel of guests that name none.
    pub fn default_kernel(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The built-in names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// A size in bytes: an integer, or a string such as `"64M"` or `"1G"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

impl Size {
    fn bytes(&self) -> std::result::Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

/// Parses a memory size: a number of bytes with an optional K, M, G suffix (powers of
/// 1024; "MiB" and "MB" are read the same).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number such as 64M or 1G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

// ---------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    max_parallel_diagnoses: Option<usize>,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    guest: Vec<RawGuest>,
    fleet: Option<RawFleet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    #[serde(default)]
    nats: Vec<String>,
    subscriber: Option<String>,
    host_id: Option<String>,
    bootstrap: Option<PathBuf>,
    health_interval_ms: Option<u64>,
}

/// An `[api]` section as written: the daemon's and the fleet controller's API listeners
/// are configured alike; [`ApiSection::check`] makes an [`ApiConfig`] of it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    socket: Option<PathBuf>,
    tcp: Option<String>,
    bearer_token: Option<String>,
    tls: Option<TlsFiles>,
}

impl ApiSection {
    /// Checks the section: the socket (default `default_socket`) fits a Unix socket
    /// path, a TCP listener has a bearer token, and one off loopback has TLS. Paths go
    /// through `rebase` (relative paths are relative to the file). An error names the
    /// key (`api.…`) and the reason.
    pub fn check(
        self,
        default_socket: PathBuf,
        rebase: impl Fn(PathBuf) -> PathBuf,
    ) -> std::result::Result<ApiConfig, (String, String)> {
        let bad = |key: &str, reason: String| (format!("api.{key}"), reason);
        let socket = self.socket.map(&rebase).unwrap_or(default_socket);
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(bad(
                "socket",
                format!(
                    "{} is {} bytes long; a Unix socket path holds at most {SOCKET_PATH_MAX}",
                    socket.display(),
                    socket.as_os_str().len()
                ),
            ));
        }
        let tcp = self
            .tcp
            .as_deref()
            .map(|t| {
                t.parse::<SocketAddr>().map_err(|e| {
                    bad(
                        "tcp",
                        format!("{t:?} is not an address such as 127.0.0.1:7878: {e}"),
                    )
                })
            })
            .transpose()?;
        let bearer_token = self.bearer_token.filter(|t| !t.is_empty());
        if tcp.is_some() && bearer_token.is_none() {
            return Err(bad(
                "bearer_token",
                "a TCP listener (api.tcp) requires a non-empty bearer_token".into(),
            ));
        }
        let tls = self.tls.map(|t| TlsFiles {
            cert: rebase(t.cert),
            key: rebase(t.key),
        });
        match (tcp, &tls) {
            (Some(addr), None) if !addr.ip().is_loopback() => {
                return Err(bad(
                    "tcp",
                    format!(
                        "{addr} is not a loopback address: a TCP listener reachable from other machines requires api.tls = {{ cert = \"…\", key = \"…\" }} (the bearer token must not cross a network in clear)"
                    ),
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "tls",
                    "applies to the TCP listener; set api.tcp too".into(),
                ))
            }
            _ => {}
        }
        Ok(ApiConfig {
            socket,
            tcp,
            bearer_token,
            tls,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    executable: Option<PathBuf>,
    address_space: Option<Size>,
    cpu_seconds: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    #[serde(default)]
    webhooks: Vec<String>,
    attempts: Option<u32>,
    backoff_ms: Option<u64>,
    report_base_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: String,
    #[serde(default)]
    kind: Kind,
    kernel: Option<String>,
    memory: Option<Size>,
    vcpus: Option<u32>,
    #[serde(default)]
    cmdline: String,
    watchdog_ms: Option<u64>,
    degraded_below_hz: Option<f64>,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    core: bool,
    rules: Option<PathBuf>,
    maintenance: Option<RawImage>,
    rescue: Option<RawRescue>,
    qmp: Option<PathBuf>,
    memory_file: Option<PathBuf>,
    registration: Option<PathBuf>,
    debuginfo: Option<PathBuf>,
}

/// Who runs a guest.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Ambulance's own VMM boots and runs it (`kernel`, `memory`, … say how).
    #[default]
    Vmm,
    /// QEMU runs it; Ambulance attaches through QMP and its RAM file.
    Qemu,
}

impl Kind {
    /// The name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vmm => "vmm",
            Kind::Qemu => "qemu",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    kernel: Option<String>,
    cmdline: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRescue {
    kernel: Option<String>,
    cmdline: Option<String>,
    failures: Option<u32>,
    window_ms: Option<u64>,
    healthy_period_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// The checked configuration.

/// What happens to a guest after its failure is diagnosed.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Boot it again from its primary image.
    #[default]
    Restart,
    /// Boot its maintenance image, wait for maintenance-complete, then the primary image.
    Maintenance,
    /// Count failures; after N in a window boot the rescue image until flipped back.
    Rescue,
    /// Keep it frozen until an operator releases it.
    Hold,
}

impl Policy {
    /// The name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Restart => "restart",
            Policy::Maintenance => "maintenance",
            Policy::Rescue => "rescue",
            Policy::Hold => "hold",
        }
    }
}

/// A kernel image and its command line.
#[derive(Clone, Debug)]
pub struct Image {
    /// The ELF file it was read from (also where its debug info is read from).
    pub path: PathBuf,
    /// Its bytes.
    pub kernel: Arc<[u8]>,
    /// The command line.
    pub cmdline: String,
}

/// Maintenance image settings.
#[derive(Clone, Debug)]
pub struct Maintenance {
    /// What to boot.
    pub image: Image,
    /// How long to wait for maintenance-complete before booting the primary anyway.
    pub timeout: Duration,
}

/// Rescue image settings.
#[derive(Clone, Debug)]
pub struct Rescue {
    /// What to boot while the boot flag says rescue.
    pub image: Image,
    /// Failures within `window` that flip the flag to rescue.
    pub failures: u32,
    /// The window.
    pub window: Duration,
    /// Healthy time on the rescue image after which the flag flips back (None: only an
    /// operator flips it back).
    pub healthy_period: Option<Duration>,
}

/// One supervised guest.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// Unique name (the API's guest id).
    pub name: String,
    /// The recovery policy.
    pub policy: Policy,
    /// Write an ELF core with each report.
    pub core: bool,
    /// Declarative validation rules.
    pub rules: Option<PathBuf>,
    /// Who runs it, and how.
    pub runner: Runner,
}

/// Who runs a guest.
#[derive(Clone, Debug)]
pub enum Runner {
    /// Ambulance's VMM, booting the images configured here.
    Vmm(VmmSpec),
    /// QEMU; Ambulance follows it over QMP.
    Qemu(QemuSpec),
}

/// A guest Ambulance's VMM runs.
#[derive(Clone, Debug)]
pub struct VmmSpec {
    /// The primary image.
    pub primary: Image,
    /// RAM in bytes.
    pub memory_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Heartbeat stall that counts as a failure.
    pub watchdog: Option<Duration>,
    /// Heartbeat rate below which the guest is degraded.
    pub degraded_below_hz: Option<f64>,
    /// Maintenance image (always present for policy `maintenance`).
    pub maintenance: Option<Maintenance>,
    /// Rescue image (always present for policy `rescue`).
    pub rescue: Option<Rescue>,
}

/// How to reach a guest QEMU runs. Everything about booting it is QEMU's; its policy is
/// `restart` or `hold`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuSpec {
    /// QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp: PathBuf,
    /// The guest's RAM file (its `memory-backend-file`); default: the `mem-path` QEMU
    /// reports.
    pub memory_file: Option<PathBuf>,
    /// The registration socket Ambulance listens on for the Linux agent (QEMU connects a
    /// serial port to it).
    pub registration: Option<PathBuf>,
    /// The guest kernel's debug info (e.g. Debian's `-dbg` vmlinux), used when its build
    /// ID matches.
    pub debuginfo: Option<PathBuf>,
}

impl GuestSpec {
    /// Whether QEMU runs this guest.
    pub fn kind(&self) -> Kind {
        match self.runner {
            Runner::Vmm(_) => Kind::Vmm,
            Runner::Qemu(_) => Kind::Qemu,
        }
    }

    /// The VMM's part, for a guest it runs.
    pub fn vmm(&self) -> Option<&VmmSpec> {
        match &self.runner {
            Runner::Vmm(v) => Some(v),
            Runner::Qemu(_) => None,
        }
    }

    /// QEMU's part, for a guest QEMU runs.
    pub fn qemu(&self) -> Option<&QemuSpec> {
        match &self.runner {
            Runner::Qemu(q) => Some(q),
            Runner::Vmm(_) => None,
        }
    }

    /// Whether it has a rescue image (and so a persisted boot flag).
    pub fn has_rescue(&self) -> bool {
        self.vmm().is_some_and(|v| v.rescue.is_some())
    }
}

impl VmmSpec {
    /// The image of `kind` (the primary when that kind is not configured).
    pub fn image(&self, kind: ImageKind) -> &Image {
        match kind {
            ImageKind::Primary => &self.primary,
            ImageKind::Maintenance => self
                .maintenance
                .as_ref()
                .map_or(&self.primary, |m| &m.image),
            ImageKind::Rescue => self.rescue.as_ref().map_or(&self.primary, |r| &r.image),
        }
    }

    /// The VMM configuration that boots the guest `name` into `image`.
    pub fn vmm_config(&self, name: &str, image: &Image) -> ambulance_vmm::GuestConfig {
        let mut cfg = ambulance_vmm::GuestConfig::new(name, image.kernel.clone());
        cfg.memory_bytes = self.memory_bytes;
        cfg.vcpus = self.vcpus;
        cfg.cmdline = image.cmdline.clone();
        cfg.watchdog = self.watchdog;
        cfg.degraded_below_hz = self.degraded_below_hz;
        cfg
    }
}

/// Which image a guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// Its primary image.
    Primary,
    /// Its maintenance image.
    Maintenance,
    /// Its rescue image.
    Rescue,
}

/// API listeners.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The Unix socket (mode 0600).
    pub socket: PathBuf,
    /// An optional TCP listener, which requires `bearer_token`, and `tls` unless it is on
    /// a loopback address.
    pub tcp: Option<SocketAddr>,
    /// The token TCP clients must present.
    pub bearer_token: Option<String>,
    /// TLS for the TCP listener.
    pub tls: Option<TlsFiles>,
}

/// A TLS server's certificate chain and private key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Diagnosis worker limits.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The program to run as `<program> worker` (default: this executable).
    pub executable: Option<PathBuf>,
    /// Address space allowed on top of the guest RAM the worker maps.
    pub address_space_bytes: u64,
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Wall-clock limit, enforced by the daemon.
    pub timeout: Duration,
}

/// Alert webhooks.
#[derive(Clone, Debug)]
pub struct AlertConfig {
    /// `http://` URLs each failure is POSTed to.
    pub webhooks: Vec<String>,
    /// Attempts per alert.
    pub attempts: u32,
    /// First retry delay, doubled after each failed attempt.
    pub backoff: Duration,
    /// Base of the report URL in alerts (default: the TCP listener, else `unix:<socket>`).
    pub report_base_url: Option<String>,
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Where the file came from (`<embedded defaults>` without one).
    pub source: String,
    /// Reports, index, socket.
    pub data_dir: PathBuf,
    /// Diagnoses running at once; more wait.
    pub max_parallel_diagnoses: usize,
    /// Listeners.
    pub api: ApiConfig,
    /// Worker limits.
    pub worker: WorkerConfig,
    /// Alerts.
    pub alerts: AlertConfig,
    /// Supervised guests.
    pub guests: Vec<GuestSpec>,
    /// Membership of a fleet (`[fleet]`); without it the host is on its own.
    pub fleet: Option<FleetMembership>,
}

/// The `[fleet]` section: how this host joins a fleet. The agent that acts on it lives in
/// the `ambulance-fleet` crate; the service only carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetMembership {
    /// The engine's servers (`tls://host:port`), one or several of a cluster.
    pub nats: Vec<String>,
    /// The subscriber this host belongs to (the zero certificate carries it).
    pub subscriber: String,
    /// This host's id in the fleet (letters, digits, `-`; 1..=63 characters).
    pub host_id: String,
    /// The directory of the zero certificate: `zero.pem` (certificate and key) and
    /// `ca.pem` (the fleet CA).
    pub bootstrap: PathBuf,
    /// How often the host publishes its health.
    pub health_interval: Duration,
}

/// Whether `id` is a valid fleet name (host id, subscriber): lowercase letters, digits
/// and `-`, 1..=63 characters, starting with a letter or digit — so it can stand in a
/// NATS subject token, a bucket name and a certificate subject as it is.
pub fn valid_fleet_name(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// This machine's host name (`/proc/sys/kernel/hostname`), lowercased.
fn machine_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
}

/// The default data directory: `$XDG_STATE_HOME/ambulance`, else
/// `~/.local/state/ambulance`, else `./ambulance-state`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("ambulance");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/state/ambulance");
    }
    PathBuf::from("ambulance-state")
}

/// The socket of a data directory.
pub fn socket_in(data_dir: &Path) -> PathBuf {
    data_dir.join("ambulance.sock")
}

/// The default socket (of the default data directory).
pub fn default_socket() -> PathBuf {
    socket_in(&default_data_dir())
}

/// Longest Unix socket path (sun_path holds 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;

impl ServiceConfig {
    /// The embedded defaults: default data directory, Unix socket API, no guests.
    pub fn defaults() -> ServiceConfig {
        ServiceConfig::parse("", "<embedded defaults>", &BuiltinKernels::none())
            .expect("the embedded defaults are valid")
    }

    /// Reads and checks a configuration file; `kernels` are the kernel names it may use
    /// besides paths.
    pub fn load(path: &Path, kernels: &BuiltinKernels) -> Result<ServiceConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ServiceError::Config {
            file: path.display().to_string(),
            key: "(the file)".into(),
            reason: format!("cannot read it: {e}"),
        })?;
        let mut cfg = ServiceConfig::parse(&text, &path.display().to_string(), kernels)?;
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut cfg.data_dir);
        rebase(&mut cfg.api.socket);
        if let Some(tls) = &mut cfg.api.tls {
            rebase(&mut tls.cert);
            rebase(&mut tls.key);
        }
        if let Some(f) = &mut cfg.fleet {
            rebase(&mut f.bootstrap);
        }
        for g in &mut cfg.guests {
            if let Runner::Qemu(q) = &mut g.runner {
                rebase(&mut q.qmp);
                for p in [&mut q.memory_file, &mut q.registration, &mut q.debuginfo]
                    .into_iter()
                    .flatten()
                {
                    rebase(p);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and checks configuration text; `file` names it in errors, `kernels` are
    /// the kernel names it may use besides paths.
    pub fn parse(text: &str, file: &str, kernels: &BuiltinKernels) -> Result<ServiceConfig> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, file, &e))?;
        let bad = |key: String, reason: String| ServiceError::Config {
            file: file.to_string(),
            key,
            reason,
        };
        let data_dir = raw.data_dir.unwrap_or_else(default_data_dir);
        if data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir".into(), "is empty".into()));
        }
        let max_parallel_diagnoses = raw.max_parallel_diagnoses.unwrap_or(2);
        if !(1..=64).contains(&max_parallel_diagnoses) {
            return Err(bad(
                "max_parallel_diagnoses".into(),
                format!("is {max_parallel_diagnoses}; it must be 1..=64"),
            ));
        }
        let api = raw
            .api
            .check(socket_in(&data_dir), |p| p)
            .map_err(|(key, reason)| bad(key, reason))?;
        let address_space_bytes = raw
            .worker
            .address_space
            .map(|s| s.bytes())
            .transpose()
            .map_err(|e| bad("worker.address_space".into(), e))?
            .unwrap_or(4 << 30);
        if address_space_bytes < 64 << 20 {
            return Err(bad(
                "worker.address_space".into(),
                "must be at least 64M (the worker's own code and heap)".into(),
            ));
        }
        let cpu_seconds = raw.worker.cpu_seconds.unwrap_or(120);
        if cpu_seconds == 0 {
            return Err(bad("worker.cpu_seconds".into(), "must be positive".into()));
        }
        let timeout_ms = raw.worker.timeout_ms.unwrap_or(60_000);
        if timeout_ms < 100 {
            return Err(bad(
                "worker.timeout_ms".into(),
                "must be at least 100 ms".into(),
            ));
        }
        for (i, url) in raw.alerts.webhooks.iter().enumerate() {
            let u = crate::client::HttpUrl::parse(url)
                .map_err(|e| bad(format!("alerts.webhooks[{i}]"), e.to_string()))?;
            if u.tls {
                return Err(bad(
                    format!("alerts.webhooks[{i}]"),
                    format!("{url:?}: webhooks are posted over http:// (to a relay on the host or its management network)"),
                ));
            }
        }
        let attempts = raw.alerts.attempts.unwrap_or(5);
        if !(1..=100).contains(&attempts) {
            return Err(bad("alerts.attempts".into(), "must be 1..=100".into()));
        }
        let mut guests: Vec<GuestSpec> = Vec::new();
        for (i, g) in raw.guest.into_iter().enumerate() {
            let spec = guest_spec(g, i, kernels, &bad)?;
            if guests.iter().any(|o| o.name == spec.name) {
                return Err(bad(
                    format!("guest[{i}].name"),
                    format!(
                        "{:?} is used by another guest; names must be unique",
                        spec.name
                    ),
                ));
            }
            guests.push(spec);
        }
        let fleet = raw.fleet.map(|f| fleet_membership(f, &bad)).transpose()?;
        Ok(ServiceConfig {
            source: file.to_string(),
            data_dir,
            max_parallel_diagnoses,
            api,
            worker: WorkerConfig {
                executable: raw.worker.executable,
                address_space_bytes,
                cpu_seconds,
                timeout: Duration::from_millis(timeout_ms),
            },
            alerts: AlertConfig {
                webhooks: raw.alerts.webhooks,
                attempts,
                backoff: Duration::from_millis(raw.alerts.backoff_ms.unwrap_or(500)),
                report_base_url: raw.alerts.report_base_url,
            },
            guests,
            fleet,
        })
    }

    /// The directory reports are stored in.
    pub fn reports_dir(&self) -> PathBuf {
        self.data_dir.join("reports")
    }

    /// The guest named `name`.
    pub fn guest(&self, name: &str) -> Option<&GuestSpec> {
        self.guests.iter().find(|g| g.name == name)
    }
}

fn fleet_membership(
    f: RawFleet,
    bad: &impl Fn(String, String) -> ServiceError,
) -> Result<FleetMembership> {
    if f.nats.is_empty() {
        return Err(bad(
            "fleet.nats".into(),
            "name at least one server of the engine, e.g. [\"tls://nats1:4222\"]".into(),
        ));
    }
    for (i, url) in f.nats.iter().enumerate() {
        let rest = url.strip_prefix("tls://").ok_or_else(|| {
            bad(
                format!("fleet.nats[{i}]"),
                format!("{url:?}: a fleet is reached over TLS only: tls://host:port"),
            )
        })?;
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(bad(
                format!("fleet.nats[{i}]"),
                format!("{url:?}: expected tls://host:port"),
            ));
        }
    }
    let subscriber = f.subscriber.unwrap_or_default();
    if !valid_fleet_name(&subscriber) {
        return Err(bad(
            "fleet.subscriber".into(),
            format!("{subscriber:?}: required; lowercase letters, digits and -, at most 63"),
        ));
    }
    let host_id = match f.host_id {
        Some(h) => h,
        None => machine_hostname().ok_or_else(|| {
            bad(
                "fleet.host_id".into(),
                "not set, and this machine's host name cannot be read".into(),
            )
        })?,
    };
    if !valid_fleet_name(&host_id) {
        return Err(bad(
            "fleet.host_id".into(),
            format!("{host_id:?}: lowercase letters, digits and -, at most 63 (set it explicitly)"),
        ));
    }
    let bootstrap = f.bootstrap.ok_or_else(|| {
        bad(
            "fleet.bootstrap".into(),
            "required: the directory holding zero.pem and ca.pem (ambulance fleet bootstrap --out)"
                .into(),
        )
    })?;
    let health_ms = f.health_interval_ms.unwrap_or(5000);
    if !(100..=600_000).contains(&health_ms) {
        return Err(bad(
            "fleet.health_interval_ms".into(),
            "must be 100..=600000".into(),
        ));
    }
    Ok(FleetMembership {
        nats: f.nats,
        subscriber,
        host_id,
        bootstrap,
        health_interval: Duration::from_millis(health_ms),
    })
}

/// Reads the kernel `spec` names: a built-in name or a path.
fn load_image(
    spec: &str,
    kernels: &BuiltinKernels,
    cmdline: String,
) -> std::result::Result<Image, String> {
    let path = kernels.resolve(spec);
    let kernel = std::fs::read(&path)
        .map(Arc::from)
        .map_err(|e| format!("cannot read kernel image {}: {e}", path.display()))?;
    Ok(Image {
        path,
        kernel,
        cmdline,
    })
}

fn guest_spec(
    g: RawGuest,
    i: usize,
    kernels: &BuiltinKernels,
    bad: &impl Fn(String, String) -> ServiceError,
) -> Result<GuestSpec> {
    let guest_name = g.name.clone();
    let key = |k: &str| format!("guest[{i}] ({guest_name}).{k}");
    if g.name.is_empty()
        || !g
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(bad(
            format!("guest[{i}].name"),
            format!(
                "{:?}: a name is 1 or more of A-Z a-z 0-9 - _ . (it appears in URLs and file names)",
                g.name
            ),
        ));
    }
    if g.kind == Kind::Qemu {
        return qemu_guest_spec(g, &key, bad);
    }
    for (k, set) in [
        ("qmp", g.qmp.is_some()),
        ("memory_file", g.memory_file.is_some()),
        ("registration", g.registration.is_some()),
        ("debuginfo", g.debuginfo.is_some()),
    ] {
        if set {
            return Err(bad(
                key(k),
                "applies only to a guest QEMU runs (kind = \"qemu\")".into(),
            ));
        }
    }
    let kernel = match (&g.kernel, kernels.default_kernel()) {
        (Some(k), _) => k.clone(),
        (None, Some(k)) => k.to_string(),
        (None, None) => return Err(bad(
            key("kernel"),
            "is required: the path of the guest's ELF kernel (this build has no built-in kernel)"
                .into(),
        )),
    };
    let primary =
        load_image(&kernel, kernels, g.cmdline.clone()).map_err(|e| bad(key("kernel"), e))?;
    let memory_bytes = g
        .memory
        .map(|m| m.bytes())
        .transpose()
        .map_err(|e| bad(key("memory"), e))?
        .unwrap_or(64 << 20);
    let sub_image =
        |kernel: Option<String>, cmdline: Option<String>, default_cmdline: &str, k: &str| {
            let cmdline = cmdline.unwrap_or_else(|| default_cmdline.to_string());
            match kernel {
                Some(spec) => load_image(&spec, kernels, cmdline)
                    .map_err(|e| bad(key(&format!("{k}.kernel")), e)),
                None => Ok(Image {
                    cmdline,
                    ..primary.clone()
                }),
            }
        };
    let maintenance = match (g.maintenance, g.policy) {
        (Some(m), _) => Some(Maintenance {
            image: sub_image(m.kernel, m.cmdline, "mode=maintenance", "maintenance")?,
            timeout: Duration::from_millis(m.timeout_ms.unwrap_or(30_000)),
        }),
        (None, Policy::Maintenance) => Some(Maintenance {
            image: sub_image(None, None, "mode=maintenance", "maintenance")?,
            timeout: Duration::from_secs(30),
        }),
        (None, _) => None,
    };
    let rescue_defaults = |r: Option<RawRescue>| -> Result<Rescue> {
        let r = r.unwrap_or(RawRescue {
            kernel: None,
            cmdline: None,
            failures: None,
            window_ms: None,
            healthy_period_ms: None,
        });
        let failures = r.failures.unwrap_or(3);
        if failures == 0 {
            return Err(bad(key("rescue.failures"), "must be at least 1".into()));
        }
        Ok(Rescue {
            image: sub_image(r.kernel, r.cmdline, "fault=none tasks=4", "rescue")?,
            failures,
            window: Duration::from_millis(r.window_ms.unwrap_or(600_000)),
            healthy_period: r
                .healthy_period_ms
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
        })
    };
    let rescue = match (g.rescue, g.policy) {
        (Some(r), _) => Some(rescue_defaults(Some(r))?),
        (None, Policy::Rescue) => Some(rescue_defaults(None)?),
        (None, _) => None,
    };
    let vmm = VmmSpec {
        primary,
        memory_bytes,
        vcpus: g.vcpus.unwrap_or(1),
        watchdog: match g.watchdog_ms.unwrap_or(1000) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        degraded_below_hz: g.degraded_below_hz.filter(|&hz| hz != 0.0),
        maintenance,
        rescue,
    };
    // Let the VMM check what it will refuse later (sizes, vCPUs, command lines).
    let images = [
        Some(("cmdline", &vmm.primary)),
        vmm.maintenance
            .as_ref()
            .map(|m| ("maintenance.cmdline", &m.image)),
        vmm.rescue.as_ref().map(|r| ("rescue.cmdline", &r.image)),
    ];
    for (k, image) in images.into_iter().flatten() {
        if let Err(e) = vmm.vmm_config(&g.name, image).validate() {
            let reason = e.to_string();
            let k = if reason.contains("memory") {
                "memory"
            } else if reason.contains("vcpus") {
                "vcpus"
            } else if reason.contains("watchdog") {
                "watchdog_ms"
            } else if reason.contains("degraded") {
                "degraded_below_hz"
            } else {
                k
            };
            return Err(bad(key(k), reason));
        }
    }
    Ok(GuestSpec {
        name: g.name,
        policy: g.policy,
        core: g.core,
        rules: g.rules,
        runner: Runner::Vmm(vmm),
    })
}

/// A guest QEMU runs: its QMP socket and files; everything about booting it is QEMU's.
fn qemu_guest_spec(
    g: RawGuest,
    key: &impl Fn(&str) -> String,
    bad: &impl Fn(String, String) -> ServiceError,
) -> Result<GuestSpec> {
    let boots = "does not apply to a guest QEMU runs (kind = \"qemu\"): QEMU's command line says how it boots";
    for (k, set) in [
        ("kernel", g.kernel.is_some()),
        ("memory", g.memory.is_some()),
        ("vcpus", g.vcpus.is_some()),
        ("cmdline", !g.cmdline.is_empty()),
        ("watchdog_ms", g.watchdog_ms.is_some()),
        ("degraded_below_hz", g.degraded_below_hz.is_some()),
        ("maintenance", g.maintenance.is_some()),
        ("rescue", g.rescue.is_some()),
    ] {
        if set {
            return Err(bad(key(k), boots.into()));
        }
    }
    if matches!(g.policy, Policy::Maintenance | Policy::Rescue) {
        return Err(bad(
            key("policy"),
            format!(
                "{:?} needs an image Ambulance boots; a guest QEMU runs takes \"restart\" (system_reset and run again) or \"hold\"",
                g.policy.name()
            ),
        ));
    }
    let qmp = g.qmp.ok_or_else(|| {
        bad(
            key("qmp"),
            "is required for a guest QEMU runs: the path of its QMP socket (-qmp unix:PATH,server=on,wait=off)".into(),
        )
    })?;
    for (k, p) in [
        ("qmp", Some(&qmp)),
        ("registration", g.registration.as_ref()),
    ] {
        if let Some(p) = p {
            if p.as_os_str().is_empty() || p.as_os_str().len() > SOCKET_PATH_MAX {
                return Err(bad(
                    key(k),
                    format!(
                        "{:?} is not a usable Unix socket path (1 to {SOCKET_PATH_MAX} bytes)",
                        p.display()
                    ),
                ));
            }
        }
    }
    Ok(GuestSpec {
        name: g.name.clone(),
        policy: g.policy,
        core: g.core,
        rules: g.rules,
        runner: Runner::Qemu(QemuSpec {
            qmp,
            memory_file: g.memory_file,
            registration: g.registration,
            debuginfo: g.debuginfo,
        }),
    })
}

/// A TOML or schema error with its line, column and the key it is about.
fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> ServiceError {
    let (key, position) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
            let snippet = text
                .get(span.clone())
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
                .trim();
            (snippet.to_string(), format!("line {line}, column {column}"))
        }
        None => (String::new(), "somewhere".to_string()),
    };
    ServiceError::Config {
        file: file.to_string(),
        key: if key.is_empty() {
            position
        } else {
            format!("{key} (at {position})")
        },
        reason: e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test kernel as a built-in, as the `ambulance` binary provides it.
    fn kernels() -> BuiltinKernels {
        BuiltinKernels::none().with("test", ambulance_test_kernel::ELF_PATH)
    }

    fn parse(text: &str) -> Result<ServiceConfig> {
        ServiceConfig::parse(text, "a.toml", &kernels())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let c = ServiceConfig::defaults();
        assert!(c.guests.is_empty());
        assert_eq!(c.api.socket, socket_in(&c.data_dir));
        assert!(c.api.tcp.is_none());
    }

    #[test]
    fn a_full_config_parses() {
        let c = parse(
            r#"
data_dir = "/tmp/x"
max_parallel_diagnoses = 3
[api]
tcp = "127.0.0.1:7000"
bearer_token = "s3cret"
[worker]
address_space = "1G"
timeout_ms = 5000
[alerts]
webhooks = ["http://127.0.0.1:9/hook"]
[[guest]]
name = "a"
memory = "32M"
vcpus = 2
policy = "rescue"
rescue = { failures = 2, window_ms = 1000, healthy_period_ms = 500 }
[[guest]]
name = "b"
policy = "maintenance"
"#,
        )
        .unwrap();
        assert_eq!(c.max_parallel_diagnoses, 3);
        assert_eq!(c.worker.address_space_bytes, 1 << 30);
        assert_eq!(c.guests.len(), 2);
        let a = c.guests[0].vmm().unwrap();
        assert_eq!(
            a.primary.path,
            PathBuf::from(ambulance_test_kernel::ELF_PATH)
        );
        let r = a.rescue.as_ref().unwrap();
        assert_eq!(r.failures, 2);
        assert_eq!(r.image.cmdline, "fault=none tasks=4");
        assert_eq!(r.healthy_period, Some(Duration::from_millis(500)));
        assert_eq!(a.memory_bytes, 32 << 20);
        let m = c.guests[1].vmm().unwrap().maintenance.as_ref().unwrap();
        assert_eq!(m.image.cmdline, "mode=maintenance");
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let e = err("data_dir = \"/x\"\n[api]\nsockt = \"/y\"\n");
        assert!(
            e.contains("a.toml") && e.contains("sockt") && e.contains("line 3"),
            "{e}"
        );
        let e = err("[[guest]]\nname = \"a\"\nmemory = \"lots\"\n");
        assert!(
            e.contains("guest[0] (a).memory") && e.contains("lots"),
            "{e}"
        );
        let e = err("[[guest]]\nname = \"a\"\nmemory = \"8M\"\n");
        assert!(
            e.contains("guest[0] (a).memory") && e.contains("16 MiB"),
            "{e}"
        );
        let e = err("[[guest]]\nname = \"a\"\npolicy = \"pray\"\n");
        assert!(e.contains("pray") && e.contains("line 3"), "{e}");
        let e = err("[api]\ntcp = \"127.0.0.1:1\"\n");
        assert!(e.contains("api.bearer_token"), "{e}");
        let e = err("[api]\ntcp = \"0.0.0.0:7878\"\nbearer_token = \"t\"\n");
        assert!(e.contains("api.tcp") && e.contains("api.tls"), "{e}");
        let e = err("[api]\ntls = { cert = \"c\", key = \"k\" }\n");
        assert!(e.contains("api.tls") && e.contains("api.tcp"), "{e}");
        parse("[api]\ntcp = \"0.0.0.0:7878\"\nbearer_token = \"t\"\ntls = { cert = \"c\", key = \"k\" }\n")
            .unwrap();
        let e = err("[[guest]]\nname = \"a\"\n[[guest]]\nname = \"a\"\n");
        assert!(e.contains("guest[1].name") && e.contains("unique"), "{e}");
        let e = err("[[guest]]\nname = \"a/b\"\n");
        assert!(e.contains("guest[0].name"), "{e}");
        let e = err("[alerts]\nwebhooks = [\"ftp://x\"]\n");
        assert!(e.contains("alerts.webhooks[0]"), "{e}");
        let e = err("[[guest]]\nname = \"a\"\nkernel = \"/nonexistent/k.elf\"\n");
        assert!(
            e.contains("(a).kernel") && e.contains("/nonexistent/k.elf"),
            "{e}"
        );
        let e = err("max_parallel_diagnoses = 0\n");
        assert!(e.contains("max_parallel_diagnoses"), "{e}");
    }

    #[test]
    fn the_fleet_section_parses_and_is_checked() {
        assert!(parse("").unwrap().fleet.is_none(), "no [fleet]: on its own");
        let c = parse(
            "[fleet]\nnats = [\"tls://127.0.0.1:4222\", \"tls://n2:4222\"]\nsubscriber = \"acme\"\n\
             host_id = \"hv-1\"\nbootstrap = \"/etc/zero\"\nhealth_interval_ms = 1000\n",
        )
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.nats.len(), 2);
        assert_eq!(
            (f.subscriber.as_str(), f.host_id.as_str()),
            ("acme", "hv-1")
        );
        assert_eq!(f.health_interval, Duration::from_secs(1));
        let base = "subscriber = \"acme\"\nhost_id = \"hv-1\"\nbootstrap = \"/z\"\n";
        let e = err(&format!("[fleet]\nnats = [\"nats://x:4222\"]\n{base}"));
        assert!(e.contains("fleet.nats[0]") && e.contains("TLS"), "{e}");
        let e = err(&format!("[fleet]\n{base}"));
        assert!(e.contains("fleet.nats"), "{e}");
        let e = err(
            "[fleet]\nnats = [\"tls://x:1\"]\nsubscriber = \"Acme Corp\"\nbootstrap = \"/z\"\n",
        );
        assert!(e.contains("fleet.subscriber"), "{e}");
        let e = err("[fleet]\nnats = [\"tls://x:1\"]\nsubscriber = \"a\"\nhost_id = \"h.1\"\nbootstrap = \"/z\"\n");
        assert!(e.contains("fleet.host_id"), "{e}");
        let e = err("[fleet]\nnats = [\"tls://x:1\"]\nsubscriber = \"a\"\nhost_id = \"h\"\n");
        assert!(e.contains("fleet.bootstrap"), "{e}");
        assert!(!valid_fleet_name("-x") && !valid_fleet_name("") && valid_fleet_name("h-2"));
    }

    #[test]
    fn qemu_guests_parse_and_refuse_what_does_not_apply() {
        let c = parse(
            "[[guest]]\nname = \"db\"\nkind = \"qemu\"\nqmp = \"/run/db.qmp\"\n\
             registration = \"/run/db.reg\"\npolicy = \"hold\"\ncore = true\n",
        )
        .unwrap();
        let g = &c.guests[0];
        assert_eq!(g.kind(), Kind::Qemu);
        let q = g.qemu().unwrap();
        assert_eq!(q.qmp, PathBuf::from("/run/db.qmp"));
        assert_eq!(q.registration, Some(PathBuf::from("/run/db.reg")));
        assert_eq!(q.memory_file, None);
        assert_eq!(g.policy, Policy::Hold);
        let q = |extra: &str| {
            err(&format!(
                "[[guest]]\nname = \"db\"\nkind = \"qemu\"\n{extra}"
            ))
        };
        let e = q("");
        assert!(
            e.contains("guest[0] (db).qmp") && e.contains("required"),
            "{e}"
        );
        let e = q("qmp = \"/q\"\npolicy = \"maintenance\"\n");
        assert!(e.contains("(db).policy") && e.contains("restart"), "{e}");
        let e = q("qmp = \"/q\"\npolicy = \"rescue\"\n");
        assert!(e.contains("(db).policy"), "{e}");
        let e = q("qmp = \"/q\"\nrescue = { failures = 2 }\n");
        assert!(e.contains("(db).rescue") && e.contains("QEMU"), "{e}");
        let e = q("qmp = \"/q\"\nkernel = \"test\"\n");
        assert!(e.contains("(db).kernel"), "{e}");
        let e = q("qmp = \"/q\"\nkind2 = 1\n");
        assert!(e.contains("kind2"), "{e}");
        let e = err("[[guest]]\nname = \"a\"\nkind = \"xen\"\n");
        assert!(e.contains("xen"), "{e}");
        let e = err("[[guest]]\nname = \"a\"\nqmp = \"/q\"\n");
        assert!(
            e.contains("guest[0] (a).qmp") && e.contains("kind = \"qemu\""),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("3T").is_err());
    }
}
