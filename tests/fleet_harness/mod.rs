//! A fleet on this machine for the end-to-end tests and the benchmark: a real
//! `nats-server` (from `fixtures/ensure-nats.sh`) on a free loopback port with its own
//! JetStream directory, a real controller (`ambulance fleet serve`), and real hosts
//! (`ambulance serve` with a `[fleet]` section), each a process killed when its handle is
//! dropped — also when a test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ambulance_service::client::{blocking_request, Endpoint, Response};
use ambulance_testkit::NatsProcess;
use serde_json::Value;

/// The `ambulance` binary.
pub fn ambulance() -> &'static str {
    env!("CARGO_BIN_EXE_ambulance")
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (up to 20 s).
    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself (up to `timeout`): its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(ambulance());
    cmd.args(args)
        .env("RUST_LOG", "info,async_nats=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().expect("ambulance starts"),
        log: log.to_path_buf(),
    }
}

/// A fleet: engine, controller, the zero certificate of subscriber `acme`.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub nats_bin: PathBuf,
    pub nats: Option<NatsProcess>,
    pub port: u16,
    pub controller: Proc,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub zero: PathBuf,
    pub server_config: PathBuf,
}

/// A host: an `ambulance serve` process and where its API and data are.
pub struct Host {
    pub name: String,
    pub proc: Proc,
    pub socket: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
}

impl Host {
    pub fn call(&self, method: &str, path: &str, accept: &str) -> Response {
        blocking_request(
            &Endpoint::Unix(self.socket.clone()),
            method,
            path,
            None,
            accept,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("host {} {method} {path}: {e}", self.name))
    }

    pub fn json(&self, path: &str) -> Value {
        let r = self.call("GET", path, "application/json");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    pub fn report_ids(&self) -> Vec<String> {
        self.json("/v1/reports")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Its unique identity (certificate and key).
    pub fn identity(&self) -> PathBuf {
        self.data.join("fleet/host.pem")
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Fleet {
    /// Starts an engine and a controller (`extra` is added to fleet.toml), and issues the
    /// zero certificate of subscriber `acme`. `None` (after a loud skip) when there is no
    /// NATS server to be had.
    pub fn start(extra: &str) -> Option<Fleet> {
        let nats_bin = ambulance_testkit::nats_server()?;
        let dir = tempfile::Builder::new().prefix("fleet").tempdir().unwrap();
        let port = ambulance_testkit::free_port();
        let config = dir.path().join("fleet.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"ctl\"\n{}{}{extra}\n[nats]\nlisten = \"127.0.0.1:{port}\"\n",
                if extra.contains("health_ttl_ms") {
                    ""
                } else {
                    "health_ttl_ms = 2000\n"
                },
                if extra.contains("command_timeout_ms") {
                    ""
                } else {
                    "command_timeout_ms = 20000\n"
                },
            ),
        )
        .unwrap();
        let out = Command::new(ambulance())
            .args(["fleet", "init", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fleet init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server_config = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let nats = NatsProcess::start(
            &nats_bin,
            &server_config,
            port,
            &dir.path().join("nats.log"),
        );
        let controller = spawn(
            &["fleet", "serve", "--config", config.to_str().unwrap()],
            &dir.path().join("controller.log"),
            &[],
        );
        let socket = dir.path().join("ctl/fleet.sock");
        let f = Fleet {
            zero: dir.path().join("zero"),
            dir,
            nats_bin,
            nats: Some(nats),
            port,
            controller,
            config,
            socket,
            server_config,
        };
        let sock = f.socket.clone();
        wait_for(Duration::from_secs(30), "the controller's API", || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
        let zero = f.zero.clone();
        let out = f.cli(&[
            "bootstrap",
            "--subscriber",
            "acme",
            "--out",
            zero.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(f)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `ambulance fleet <args> --config fleet.toml`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(ambulance())
            .arg("fleet")
            .args(&args[..1])
            .arg("--config")
            .arg(&self.config)
            .args(&args[1..])
            .output()
            .unwrap()
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>, accept: &str) -> Response {
        blocking_request(
            &Endpoint::Unix(self.socket.clone()),
            method,
            path,
            body.map(|b| b.as_bytes().to_vec()),
            accept,
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("controller {method} {path}: {e}"))
    }

    pub fn json(&self, path: &str) -> Value {
        let r = self.call("GET", path, None, "application/json");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    pub fn hosts(&self) -> Vec<Value> {
        self.json("/v1/hosts").as_array().cloned().unwrap()
    }

    pub fn host_view(&self, host: &str) -> Option<Value> {
        self.hosts().into_iter().find(|h| h["host"] == host)
    }

    pub fn available(&self, host: &str) -> bool {
        self.host_view(host).is_some_and(|h| h["available"] == true)
    }

    pub fn report_ids(&self, host: &str) -> Vec<String> {
        self.json(&format!("/v1/reports?host={host}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Writes a host configuration: `[fleet]` for `name` (`fleet_extra` added to it) and
    /// `guests` (TOML).
    pub fn host_config(
        &self,
        name: &str,
        data: &str,
        guests: &str,
        fleet_extra: &str,
    ) -> (PathBuf, PathBuf) {
        let dir = self.path().join(data);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("ambulance.toml");
        let socket = dir.join("api.sock");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[api]\nsocket = \"{}\"\n[fleet]\nnats = [\"tls://127.0.0.1:{}\"]\n\
                 subscriber = \"acme\"\nhost_id = \"{name}\"\nbootstrap = \"{}\"\nhealth_interval_ms = 500\n\
                 {fleet_extra}\n{guests}",
                dir.join("data").display(),
                socket.display(),
                self.port,
                self.zero.display()
            ),
        )
        .unwrap();
        (config, socket)
    }

    /// Starts a host (not waiting for anything).
    pub fn spawn_host(&self, name: &str, data: &str, guests: &str) -> Host {
        let (config, socket) = self.host_config(name, data, guests, "");
        self.spawn_host_with(name, data, &config, &socket)
    }

    pub fn spawn_host_with(&self, name: &str, data: &str, config: &Path, socket: &Path) -> Host {
        let dir = self.path().join(data);
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let proc = spawn(
            &["serve", "--config", config.to_str().unwrap()],
            &dir.join(format!("serve-{n}.log")),
            &[],
        );
        Host {
            name: name.to_string(),
            proc,
            socket: socket.to_path_buf(),
            data: dir.join("data"),
            config: config.to_path_buf(),
        }
    }

    /// Starts a host and waits until the controller calls it available.
    pub fn host(&self, name: &str, guests: &str) -> Host {
        let h = self.spawn_host(name, name, guests);
        wait_for(
            Duration::from_secs(60),
            &format!("{name} available"),
            || self.available(name).then_some(()),
        );
        h
    }

    /// Kills the engine (SIGKILL).
    pub fn kill_engine(&mut self) {
        if let Some(mut n) = self.nats.take() {
            n.kill();
        }
    }

    /// Starts the engine again on the same port, configuration and store.
    pub fn restart_engine(&mut self) {
        self.kill_engine();
        self.nats = Some(NatsProcess::start(
            &self.nats_bin,
            &self.server_config,
            self.port,
            &self.path().join("nats.log"),
        ));
    }

    /// Kills the controller and starts it again (it rebuilds its index from the engine);
    /// returns when its API answers.
    pub fn restart_controller(&mut self) {
        self.controller.kill();
        let _ = std::fs::remove_file(&self.socket);
        self.controller = spawn(
            &["fleet", "serve", "--config", self.config.to_str().unwrap()],
            &self.path().join("controller-2.log"),
            &[],
        );
        let sock = self.socket.clone();
        wait_for(Duration::from_secs(30), "the controller's API", || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
    }

    /// The controller's identity on the engine.
    pub fn controller_identity(&self) -> PathBuf {
        self.path().join("ctl/controller.pem")
    }

    pub fn ca(&self) -> PathBuf {
        self.path().join("ctl/ca/ca.pem")
    }

    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    pub fn nats_log(&self) -> String {
        std::fs::read_to_string(self.path().join("nats.log")).unwrap_or_default()
    }
}

/// A guest for a host configuration.
pub fn guest(name: &str, cmdline: &str, policy: &str, extra: &str) -> String {
    format!(
        "[[guest]]\nname = \"{name}\"\nmemory = \"32M\"\nvcpus = 1\ncmdline = \"{cmdline}\"\n\
         watchdog_ms = 5000\npolicy = \"{policy}\"\n{extra}\n"
    )
}

/// Connects to the engine as the identity in `pem`, recording the server's errors
/// (permission violations) in the returned list.
pub async fn connect(
    url: &str,
    ca: &Path,
    pem: &Path,
    inbox: &str,
) -> Result<(async_nats::Client, std::sync::Arc<Events>), async_nats::ConnectError> {
    let errors = std::sync::Arc::new(Events::default());
    let e = errors.clone();
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.to_path_buf())
        .add_client_certificate(pem.to_path_buf(), pem.to_path_buf())
        .custom_inbox_prefix(inbox)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(3))
        .event_callback(move |ev| {
            let e = e.clone();
            async move {
                e.0.lock().unwrap().push(ev.to_string());
            }
        })
        .connect(url)
        .await?;
    Ok((client, errors))
}

/// Events a test client saw (`server error: …`, `disconnected`, …).
#[derive(Default)]
pub struct Events(pub std::sync::Mutex<Vec<String>>);

impl Events {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A runtime for a test's engine calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
