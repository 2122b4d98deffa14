//! The daemon end to end: real `ambulance serve` processes, real guests on KVM, real HTTP
//! over its Unix socket and a loopback TCP listener, a real webhook receiver on 127.0.0.1,
//! and real worker processes (killed, in one test).
//!
//! The tests run one at a time (a lock): each boots a daemon with a few small guests, and
//! the machine has two cores.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ambulance_service::client::{blocking_request, Endpoint, Response};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn have_kvm() -> bool {
    ambulance_testkit::kvm()
}

/// A running `ambulance serve`, killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(config: &Path, socket: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambulance"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("ambulance serve starts");
        let d = Daemon {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon did not listen on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        blocking_request(
            &Endpoint::Unix(self.socket.clone()),
            method,
            path,
            body.map(|b| b.as_bytes().to_vec()),
            "application/json",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let r = self.call(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", r.text()))
    }

    fn guest(&self, name: &str) -> Value {
        self.json("GET", &format!("/v1/guests/{name}"), None)
    }

    /// Polls `what` until `done` holds for it, at most `timeout`.
    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut poll: impl FnMut(&Daemon) -> Option<Value>,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = poll(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn reports(&self, query: &str) -> Vec<Value> {
        self.json("GET", &format!("/v1/reports{query}"), None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(dir: &Path, body: &str) -> (PathBuf, PathBuf) {
    let socket = dir.join("api.sock");
    let config = dir.join("ambulance.toml");
    let text = format!("data_dir = \"{}\"\n{body}", dir.join("data").display())
        .replace("@SOCKET@", &socket.display().to_string());
    std::fs::write(&config, text).unwrap();
    (config, socket)
}

fn guest_toml(name: &str, cmdline: &str, policy: &str, extra: &str) -> String {
    format!(
        "[[guest]]\nname = \"{name}\"\nmemory = \"32M\"\nvcpus = 1\ncmdline = \"{cmdline}\"\n\
         watchdog_ms = 5000\npolicy = \"{policy}\"\n{extra}\n"
    )
}

/// A one-shot-per-connection HTTP server on 127.0.0.1 that answers 200 and hands every
/// request body to the returned channel (it stops with the test process).
fn webhook_receiver() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(100) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len.min(1 << 20)];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if request_line.starts_with("POST /hook ") {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    (url, rx)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn heartbeat(d: &Daemon, name: &str) -> u64 {
    d.guest(name)["heartbeat"].as_u64().unwrap_or(0)
}

fn assert_advancing(d: &Daemon, name: &str) {
    let before = heartbeat(d, name);
    std::thread::sleep(Duration::from_millis(300));
    let after = heartbeat(d, name);
    assert!(
        after > before,
        "{name}'s heartbeat is not advancing ({before} -> {after})"
    );
}

#[test]
fn api_end_to_end_report_webhook_auth_and_cli() {
    if !have_kvm() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (hook, hooks) = webhook_receiver();
    let port = free_port();
    let body = format!(
        "[api]\nsocket = \"@SOCKET@\"\ntcp = \"127.0.0.1:{port}\"\nbearer_token = \"t0ken\"\n\
         [alerts]\nwebhooks = [\"{hook}\"]\nbackoff_ms = 100\n{}{}",
        guest_toml(
            "victim",
            "fault=list-corruption fault_after_ms=300 seed=3",
            "hold",
            "core = true"
        ),
        guest_toml("bystander", "fault=none", "restart", ""),
    );
    let (config, socket) = write_config(dir.path(), &body);
    let d = Daemon::start(&config, &socket, &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is private");

    // The fault → a webhook naming the report → the report, with the expected finding.
    let alert = hooks
        .recv_timeout(Duration::from_secs(60))
        .expect("a webhook POST for the failure");
    assert_eq!(alert["guest"], "victim", "{alert}");
    assert_eq!(alert["cause"], "panic", "{alert}");
    assert_eq!(alert["status"], "ok", "{alert}");
    let id = alert["report_id"].as_str().unwrap().to_string();
    assert_eq!(
        alert["report_url"],
        format!("http://127.0.0.1:{port}/v1/reports/{id}"),
        "{alert}"
    );
    let report = d.json("GET", &format!("/v1/reports/{id}"), None);
    assert_eq!(report["id"], id.as_str());
    assert_eq!(report["guest"]["name"], "victim");
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["validator"] == "list-integrity"
            && f["severity"] == "critical"
            && f["structure"]["root"] == "run_queue"),
        "no list-integrity finding on run_queue: {findings:#?}"
    );
    let phases: Vec<&str> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        phases.contains(&"worker_start") && phases.contains(&"jail") && phases.contains(&"core"),
        "{phases:?}"
    );
    // Diagnosed in the jail, which the report says.
    let applied = &report["tool"]["sandbox"]["applied"];
    assert!(
        applied
            .as_array()
            .is_some_and(|a| a.contains(&"seccomp".into())),
        "{:#}",
        report["tool"]
    );
    let text = blocking_request(
        &Endpoint::Unix(socket.clone()),
        "GET",
        &format!("/v1/reports/{id}"),
        None,
        "text/plain",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(text.status, 200);
    assert!(text.content_type.starts_with("text/plain"));
    assert!(
        text.text().starts_with(&format!("Ambulance report {id}")),
        "{}",
        text.text()
    );
    let core = d.call("GET", &format!("/v1/reports/{id}/core"), None);
    assert_eq!(core.status, 200);
    assert_eq!(&core.body[..4], b"\x7fELF");
    let listed = d.reports("?guest=victim&cause=panic&since=2020-01-01T00:00:00Z");
    assert!(listed.iter().any(|e| e["id"] == id.as_str()), "{listed:?}");
    assert!(d.reports("?guest=bystander").is_empty());
    assert!(d.reports("?since=4000000000").is_empty());

    // Policy hold: the victim stays frozen; the bystander never stopped.
    let victim = d.wait_for(Duration::from_secs(10), "the victim held", |d| {
        let g = d.guest("victim");
        (g["state"] == "held").then_some(g)
    });
    assert_eq!(victim["vmm_state"], "frozen");
    assert_advancing(&d, "bystander");

    // Operator diagnosis of a running guest: frozen briefly, diagnosed, resumed.
    let entry = d.json("POST", "/v1/guests/bystander/diagnose", Some("{}"));
    assert_eq!(entry["status"], "ok", "{entry}");
    assert_eq!(entry["cause"], "operator");
    assert_eq!(d.guest("bystander")["state"], "running");
    assert_advancing(&d, "bystander");

    // Errors: malformed JSON → 400 with a message; wrong states → 409; unknown → 404.
    let r = d.call("POST", "/v1/guests/victim/release", Some("{\"action\": "));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("malformed JSON body"), "{}", r.text());
    let r = d.call(
        "POST",
        "/v1/guests/victim/release",
        Some("{\"action\": \"explode\"}"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = d.call("POST", "/v1/guests/bystander/release", None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("not held"), "{}", r.text());
    assert_eq!(d.call("GET", "/v1/guests/nobody", None).status, 404);
    assert_eq!(d.call("GET", "/v1/reports/nothing", None).status, 404);
    let r = d.call("GET", "/v1/reports?colour=red", None);
    assert_eq!(r.status, 400, "{}", r.text());

    // TCP: 401 without the token or with a wrong one, 200 with it.
    let tcp = |token: Option<&str>| {
        blocking_request(
            &Endpoint::Tcp {
                authority: format!("127.0.0.1:{port}"),
                token: token.map(str::to_string),
                tls: None,
            },
            "GET",
            "/v1/guests",
            None,
            "application/json",
            Duration::from_secs(10),
        )
        .unwrap()
    };
    assert_eq!(tcp(None).status, 401);
    assert_eq!(tcp(Some("wrong")).status, 401);
    assert!(tcp(None).text().contains("Bearer"));
    assert_eq!(tcp(Some("t0ken")).status, 200);

    // Metrics.
    let metrics = d.call("GET", "/metrics", None).text();
    for needle in [
        "ambulance_guests{state=\"held\"} 1",
        "ambulance_failures_total{cause=\"panic\"} 1",
        "ambulance_diagnosis_duration_seconds_count 2",
        "ambulance_diagnoses_failed_total 0",
        "ambulance_reports_stored 2",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }

    // The CLI client.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = cli(&["status"]);
    assert!(
        status.contains("victim") && status.contains("held"),
        "{status}"
    );
    let reports = cli(&["reports", "--guest", "victim"]);
    assert!(
        reports.contains(&id) && reports.contains("critical"),
        "{reports}"
    );
    let json = cli(&["report", &id, "--format", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap()["id"],
        id.as_str()
    );
    let text = cli(&["report", &id]);
    assert!(text.contains("list-integrity"), "{text}");
    let diag = cli(&["diagnose", "--guest", "bystander", "--format", "text"]);
    assert!(diag.contains("operator"), "{diag}");
    let released = cli(&["release", "victim"]);
    assert!(released.contains("released (restart)"), "{released}");
    let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .args(["release", "bystander", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));
}

#[test]
fn worker_killed_mid_diagnosis_is_recorded_and_nothing_else_stops() {
    if !have_kvm() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[api]\nsocket = \"@SOCKET@\"\n{}{}",
        guest_toml("victim", "fault=panic fault_after_ms=200", "hold", ""),
        guest_toml("bystander", "fault=none", "restart", ""),
    );
    let (config, socket) = write_config(dir.path(), &body);
    let d = Daemon::start(
        &config,
        &socket,
        &[(ambulance_service::worker::DELAY_ENV, "30000")],
    );
    let pid = d.wait_for(
        Duration::from_secs(30),
        "a worker diagnosing the victim",
        |d| {
            let g = d.guest("victim");
            (g["state"] == "diagnosing" && g["worker_pid"].is_u64())
                .then(|| g["worker_pid"].clone())
        },
    );
    let pid = pid.as_u64().unwrap() as i32;
    assert_advancing(&d, "bystander");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let entry = d.wait_for(Duration::from_secs(10), "the failed diagnosis", |d| {
        d.reports("?guest=victim").into_iter().next()
    });
    assert_eq!(entry["status"], "diagnosis_failed", "{entry}");
    let error = entry["error"].as_str().unwrap();
    assert!(
        error.starts_with("diagnosis failed:") && error.contains("SIGKILL"),
        "{error}"
    );
    let r = d.call(
        "GET",
        &format!("/v1/reports/{}", entry["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(r.status, 404);
    assert!(r.text().contains("SIGKILL"), "{}", r.text());
    // The policy still applies; the daemon and the other guest carry on.
    d.wait_for(Duration::from_secs(10), "the victim held", |d| {
        (d.guest("victim")["state"] == "held").then_some(Value::Null)
    });
    assert_advancing(&d, "bystander");
    assert_eq!(d.guest("bystander")["state"], "running");
    let metrics = d.call("GET", "/metrics", None).text();
    assert!(
        metrics.contains("ambulance_diagnoses_failed_total 1"),
        "{metrics}"
    );
    let g = d.json(
        "POST",
        "/v1/guests/victim/release",
        Some("{\"action\": \"destroy\"}"),
    );
    assert_eq!(g["state"], "stopped");
    assert!(g["vmm_state"].is_null(), "{g}");
}

fn report_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for_file(dir: &Path, suffix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(f) = report_files(dir).into_iter().find(|f| f.ends_with(suffix)) {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "no *{suffix} in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every report file belongs to an indexed report and every indexed report's files exist.
fn assert_store_consistent(d: &Daemon, reports_dir: &Path) {
    let files = report_files(reports_dir);
    assert!(
        files.iter().all(|f| !f.ends_with(".tmp")),
        "temporary files left: {files:?}"
    );
    let indexed: Vec<Value> = d.reports("");
    let ids: BTreeSet<&str> = indexed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for f in &files {
        let id = f.rsplit_once('.').unwrap().0;
        assert!(ids.contains(id), "{f} is not indexed: {ids:?}");
    }
    for e in &indexed {
        if e["status"] == "ok" {
            for k in ["json", "text"] {
                let p = e[k].as_str().unwrap();
                assert!(Path::new(p).exists(), "{p} is indexed but missing");
            }
            let r = d.json(
                "GET",
                &format!("/v1/reports/{}", e["id"].as_str().unwrap()),
                None,
            );
            assert_eq!(r["id"], e["id"]);
        }
    }
}

#[test]
fn service_killed_while_writing_reports_recovers_consistently() {
    if !have_kvm() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[api]\nsocket = \"@SOCKET@\"\n{}{}",
        guest_toml("victim", "fault=panic fault_after_ms=300", "restart", ""),
        guest_toml(
            "flagged",
            "fault=none",
            "rescue",
            "rescue = { cmdline = \"fault=none tasks=4\", failures = 3 }"
        ),
    );
    let (config, socket) = write_config(dir.path(), &body);
    let reports_dir = dir.path().join("data/reports");
    let pause = ambulance_service::store::PAUSE_ENV;

    // Run 1: set a boot flag, then die after the report files landed, before the index.
    let mut d = Daemon::start(&config, &socket, &[(pause, "before-index:20000")]);
    let g = d.json(
        "POST",
        "/v1/guests/flagged/boot-flag",
        Some("{\"flag\": \"rescue\"}"),
    );
    assert_eq!(g["boot_flag"], "rescue", "{g}");
    assert_eq!(g["image"], "rescue", "{g}");
    let finished = wait_for_file(&reports_dir, ".json", Duration::from_secs(30));
    let finished_id = finished.trim_end_matches(".json").to_string();
    assert!(d.reports("").is_empty(), "not indexed yet");
    d.kill();

    // Run 2: the finished report was indexed at start-up; die before the JSON's rename.
    let mut d = Daemon::start(&config, &socket, &[(pause, "before-rename:20000")]);
    let entry = d.json("GET", "/v1/reports", None);
    assert!(
        entry
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == finished_id.as_str() && e["status"] == "ok"),
        "the finished report was lost: {entry}"
    );
    let g = d.guest("flagged");
    assert_eq!(g["boot_flag"], "rescue", "the boot flag survived: {g}");
    assert_eq!(g["image"], "rescue", "{g}");
    let partial = wait_for_file(&reports_dir, ".json.tmp", Duration::from_secs(30));
    let partial_id = partial.trim_end_matches(".json.tmp").to_string();
    assert!(report_files(&reports_dir).contains(&format!("{partial_id}.txt")));
    d.kill();

    // Run 3: no partial report anywhere, the index matches the files, flags intact.
    let d = Daemon::start(&config, &socket, &[]);
    let left = report_files(&reports_dir);
    assert!(
        !left.iter().any(|f| f.starts_with(&partial_id)),
        "files of the partial report {partial_id} are still there: {left:?}"
    );
    assert!(d.reports("").iter().all(|e| e["id"] != partial_id.as_str()));
    assert_eq!(
        d.call("GET", &format!("/v1/reports/{partial_id}"), None)
            .status,
        404
    );
    assert_store_consistent(&d, &reports_dir);
    assert_eq!(d.guest("flagged")["boot_flag"], "rescue");
    // And it keeps working: the victim's next failure is stored normally.
    d.wait_for(Duration::from_secs(30), "a new report", |d| {
        d.reports("?guest=victim")
            .into_iter()
            .find(|e| e["id"] != finished_id.as_str() && e["status"] == "ok")
    });
    assert_store_consistent(&d, &reports_dir);
}

#[test]
fn recovery_policies_round_trip() {
    if !have_kvm() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[api]\nsocket = \"@SOCKET@\"\n{}{}{}{}",
        // maintenance after a crash, then back to the primary image
        guest_toml(
            "maint",
            "fault=panic fault_after_ms=1500",
            "maintenance",
            "maintenance = { cmdline = \"mode=maintenance\", timeout_ms = 20000 }"
        ),
        // maintenance after a degraded heartbeat (no crash)
        guest_toml(
            "slow",
            "fault=slow fault_after_ms=300",
            "maintenance",
            "degraded_below_hz = 300"
        ),
        // rescue: 2 failures within a minute flip the flag; 2 s healthy flips it back
        guest_toml(
            "resc",
            "fault=panic fault_after_ms=200",
            "rescue",
            "rescue = { cmdline = \"fault=none tasks=4\", failures = 2, window_ms = 60000, healthy_period_ms = 2000 }"
        ),
        // rescue flag flipped by an operator
        guest_toml(
            "flip",
            "fault=none",
            "rescue",
            "rescue = { cmdline = \"fault=none tasks=4\", failures = 5 }"
        ),
    );
    let (config, socket) = write_config(dir.path(), &body);
    let d = Daemon::start(&config, &socket, &[]);

    // Operator flips: rescue, then primary, each rebooting the guest into that image.
    let g = d.json(
        "POST",
        "/v1/guests/flip/boot-flag",
        Some("{\"flag\": \"rescue\"}"),
    );
    assert_eq!(
        (g["boot_flag"].as_str(), g["image"].as_str()),
        (Some("rescue"), Some("rescue")),
        "{g}"
    );
    let g = d.json(
        "POST",
        "/v1/guests/flip/boot-flag",
        Some("{\"flag\": \"primary\"}"),
    );
    assert_eq!(
        (g["boot_flag"].as_str(), g["image"].as_str()),
        (Some("primary"), Some("primary")),
        "{g}"
    );
    let r = d.call(
        "POST",
        "/v1/guests/flip/boot-flag",
        Some("{\"flag\": \"sideways\"}"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = d.call(
        "POST",
        "/v1/guests/maint/boot-flag",
        Some("{\"flag\": \"rescue\"}"),
    );
    assert_eq!(r.status, 409, "{}", r.text());

    // Rescue: two failures → flag rescue → rescue image; healthy 2 s → flag primary.
    d.wait_for(Duration::from_secs(30), "resc flipped to rescue", |d| {
        let g = d.guest("resc");
        (g["boot_flag"] == "rescue" && g["image"] == "rescue" && g["state"] == "running")
            .then_some(g)
    });
    assert!(d.reports("?guest=resc").len() >= 2);
    d.wait_for(
        Duration::from_secs(20),
        "resc flipped back to primary",
        |d| {
            let g = d.guest("resc");
            (g["boot_flag"] == "primary" && g["image"] == "primary").then_some(g)
        },
    );

    // Maintenance after a crash: maintenance image → complete → primary.
    d.wait_for(
        Duration::from_secs(40),
        "maint's maintenance complete and primary again",
        |d| {
            let g = d.guest("maint");
            (g["last_maintenance_status"] == 0
                && g["image"] == "primary"
                && g["state"] == "running")
                .then_some(g)
        },
    );
    assert!(d
        .reports("?guest=maint&cause=panic")
        .iter()
        .any(|e| e["status"] == "ok"));

    // Degraded (no crash) also goes through maintenance.
    d.wait_for(
        Duration::from_secs(40),
        "slow's maintenance after degrading",
        |d| {
            let g = d.guest("slow");
            (g["last_maintenance_status"] == 0 && g["last_failure"] == "degraded").then_some(g)
        },
    );
    assert!(!d.reports("?guest=slow&cause=degraded").is_empty());
}
