//! The controller's configuration (`fleet.toml`).
//!
//! ```toml
//! name = "fleet"                        # the fleet's name (in the CA's subject)
//! data_dir = "/var/lib/ambulance-fleet" # CA, certificates, the NATS files `fleet init` writes
//! health_ttl_ms = 15000                 # a host whose health is older is unavailable
//! host_certificate_s = 86400            # unique certificates' validity (renewed at 2/3)
//! zero_certificate_s = 2592000          # zero certificates' validity
//! command_timeout_ms = 60000            # a transaction's default deadline
//! duplicate_window_s = 86400            # the events stream's duplicate window
//! replicas = 1                          # stream and bucket replicas (3 on a cluster)
//! pool_tick_ms = 1000                   # the pool planner runs this often (and on health changes)
//! min_dwell_ms = 30000                  # a slot stays in a role this long before it may donate
//! register_timeout_ms = 30000           # a repurposed slot's kernel must register within this
//!
//! [api]
//! socket = "/run/ambulance-fleet.sock"  # default: <data_dir>/fleet.sock (0600)
//! tcp = "127.0.0.1:7979"                # optional; needs bearer_token, and tls off loopback
//! bearer_token = "…"
//! tls = { cert = "api.pem", key = "api.key" }
//!
//! [nats]
//! urls = ["tls://127.0.0.1:4222"]       # the engine (one server, or several of a cluster)
//! listen = "127.0.0.1:4222"             # for the server configuration `fleet init` writes
//! server_names = ["localhost", "127.0.0.1"]   # the server certificate's names
//! [[nats.server]]                       # servers whose authorization this controller manages
//! auth_file = "/etc/nats/ambulance-auth.conf"
//! pid_file = "/run/nats/nats-server.pid"
//! ```
//!
//! Without `[[nats.server]]` the controller manages the one server `fleet init` writes
//! the configuration of: `<data_dir>/nats/auth.conf` and `<data_dir>/nats/nats-server.pid`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ambulance_service::config::{ApiConfig, ApiSection};
use serde::Deserialize;

use crate::auth::ManagedServer;
use crate::error::{FleetError, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    health_ttl_ms: Option<u64>,
    host_certificate_s: Option<u64>,
    zero_certificate_s: Option<u64>,
    command_timeout_ms: Option<u64>,
    duplicate_window_s: Option<u64>,
    replicas: Option<usize>,
    pool_tick_ms: Option<u64>,
    min_dwell_ms: Option<u64>,
    register_timeout_ms: Option<u64>,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    nats: RawNats,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    #[serde(default)]
    urls: Vec<String>,
    listen: Option<String>,
    #[serde(default)]
    server_names: Vec<String>,
    #[serde(default)]
    server: Vec<RawServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    auth_file: PathBuf,
    pid_file: PathBuf,
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Where it came from.
    pub source: String,
    /// The fleet's name.
    pub name: String,
    /// CA, certificates, NATS files.
    pub data_dir: PathBuf,
    /// The API's listeners: the host API's `[api]` section and rules.
    pub api: ApiConfig,
    /// The engine's servers.
    pub urls: Vec<String>,
    /// Where the server `fleet init` configures listens.
    pub listen: String,
    /// The server certificate's names.
    pub server_names: Vec<String>,
    /// Servers whose authorization this controller manages.
    pub servers: Vec<ManagedServer>,
    /// A host whose health is older than this is unavailable.
    pub health_ttl: Duration,
    /// Unique certificates' validity.
    pub host_certificate: Duration,
    /// Zero certificates' validity.
    pub zero_certificate: Duration,
    /// A transaction's default deadline.
    pub command_timeout: Duration,
    /// The events stream's duplicate window.
    pub duplicate_window: Duration,
    /// Replicas of streams and buckets.
    pub replicas: usize,
    /// How often the pool planner runs without a health change.
    pub pool_tick: Duration,
    /// How long a slot stays in a role before it may be given to another.
    pub min_dwell: Duration,
    /// How long a repurposed slot's kernel has to register.
    pub register_timeout: Duration,
}

impl ControllerConfig {
    /// Reads and checks a configuration file (relative paths are relative to it).
    pub fn load(path: &Path) -> Result<ControllerConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| FleetError::Config {
            file: path.display().to_string(),
            key: "(the file)".into(),
            reason: format!("cannot read it: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Absolute: the NATS server configuration names these paths from elsewhere.
        let base = std::path::absolute(if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        })
        .map_err(|e| FleetError::io("cannot resolve", base, e))?;
        ControllerConfig::parse(&text, &path.display().to_string(), &base)
    }

    /// Parses configuration text; `file` names it in errors, relative paths are relative
    /// to `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<ControllerConfig> {
        let bad = |key: &str, reason: String| FleetError::Config {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| bad("(syntax)", e.to_string()))?;
        let rebase = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let name = raw.name.unwrap_or_else(|| "fleet".into());
        crate::names::check("fleet name", &name).map_err(|e| bad("name", e.to_string()))?;
        let data_dir = rebase(
            raw.data_dir
                .ok_or_else(|| bad("data_dir", "required".into()))?,
        );
        let api = raw
            .api
            .check(data_dir.join("fleet.sock"), rebase)
            .map_err(|(key, reason)| bad(&key, reason))?;
        let listen = raw.nats.listen.unwrap_or_else(|| "127.0.0.1:4222".into());
        let urls = if raw.nats.urls.is_empty() {
            vec![format!("tls://{listen}")]
        } else {
            raw.nats.urls
        };
        for (i, u) in urls.iter().enumerate() {
            if !u.starts_with("tls://") {
                return Err(bad(
                    &format!("nats.urls[{i}]"),
                    format!("{u:?}: the engine is reached over TLS only: tls://host:port"),
                ));
            }
        }
        let server_names = if raw.nats.server_names.is_empty() {
            vec!["localhost".into(), "127.0.0.1".into()]
        } else {
            raw.nats.server_names
        };
        let servers = if raw.nats.server.is_empty() {
            vec![ManagedServer {
                auth_file: data_dir.join("nats/auth.conf"),
                pid_file: data_dir.join("nats/nats-server.pid"),
            }]
        } else {
            raw.nats
                .server
                .into_iter()
                .map(|s| ManagedServer {
                    auth_file: rebase(s.auth_file),
                    pid_file: rebase(s.pid_file),
                })
                .collect()
        };
        let ms = |key: &str, v: Option<u64>, default: u64, min: u64| {
            let v = v.unwrap_or(default);
            if v < min {
                Err(bad(key, format!("is {v}; at least {min}")))
            } else {
                Ok(v)
            }
        };
        let replicas = raw.replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            return Err(bad("replicas", "must be 1..=5".into()));
        }
        Ok(ControllerConfig {
            source: file.to_string(),
            name,
            api,
            urls,
            listen,
            server_names,
            servers,
            health_ttl: Duration::from_millis(ms("health_ttl_ms", raw.health_ttl_ms, 15_000, 500)?),
            host_certificate: Duration::from_secs(ms(
                "host_certificate_s",
                raw.host_certificate_s,
                86_400,
                10,
            )?),
            zero_certificate: Duration::from_secs(ms(
                "zero_certificate_s",
                raw.zero_certificate_s,
                30 * 86_400,
                60,
            )?),
            command_timeout: Duration::from_millis(ms(
                "command_timeout_ms",
                raw.command_timeout_ms,
                60_000,
                100,
            )?),
            duplicate_window: Duration::from_secs(ms(
                "duplicate_window_s",
                raw.duplicate_window_s,
                86_400,
                60,
            )?),
            replicas,
            pool_tick: Duration::from_millis(ms("pool_tick_ms", raw.pool_tick_ms, 1_000, 100)?),
            min_dwell: Duration::from_millis(ms("min_dwell_ms", raw.min_dwell_ms, 30_000, 0)?),
            register_timeout: Duration::from_millis(ms(
                "register_timeout_ms",
                raw.register_timeout_ms,
                30_000,
                100,
            )?),
            data_dir,
        })
    }

    /// `<data_dir>/ca`.
    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir.join("ca")
    }

    /// `<data_dir>/nats`.
    pub fn nats_dir(&self) -> PathBuf {
        self.data_dir.join("nats")
    }

    /// The controller's identity on the engine.
    pub fn identity(&self) -> crate::engine::Identity {
        crate::engine::Identity {
            ca: self.ca_dir().join("ca.pem"),
            pem: self.data_dir.join("controller.pem"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c =
            ControllerConfig::parse("data_dir = \"d\"\n", "f.toml", Path::new("/base")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/base/d"));
        assert_eq!(c.urls, vec!["tls://127.0.0.1:4222".to_string()]);
        assert_eq!(
            c.servers[0].auth_file,
            PathBuf::from("/base/d/nats/auth.conf")
        );
        assert_eq!(c.health_ttl, Duration::from_secs(15));
        let e = ControllerConfig::parse(
            "data_dir = \"d\"\n[api]\ntcp = \"127.0.0.1:1\"\n",
            "f.toml",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("api.bearer_token"), "{e}");
        let e = ControllerConfig::parse(
            "data_dir = \"d\"\n[nats]\nurls = [\"nats://x:1\"]\n",
            "f.toml",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nats.urls[0]"), "{e}");
        let e = ControllerConfig::parse("datadir = \"d\"\n", "f.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("datadir"), "{e}");
    }
}
