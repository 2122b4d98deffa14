//! `ambulance serve` with a guest QEMU runs: a real daemon process configured with a
//! `kind = "qemu"` guest (QMP socket, RAM file, registration socket, policy `hold`), the
//! daemon started before QEMU (it waits for the QMP socket), then Debian's cloud kernel
//! under QEMU (TCG) with the Linux agent. An operator's diagnosis pauses the running
//! guest, diagnoses it in a worker and resumes it; the sysrq panic (GUEST_PANICKED) is
//! diagnosed the same way, stored, counted, and the guest held; releasing it resets it and
//! it runs again.

mod linux_guest;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambulance_service::client::{blocking_request, Endpoint};
use linux_guest::{fixture, Boot, Guest, GuestPaths};
use serde_json::Value;

/// A running `ambulance serve`, killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(config: &Path, socket: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_ambulance"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ambulance serve starts");
        let d = Daemon {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn call(&self, method: &str, path: &str, accept: &str) -> (u16, String) {
        let r = blocking_request(
            &Endpoint::Unix(self.socket.clone()),
            method,
            path,
            None,
            accept,
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (r.status, r.text())
    }

    fn json(&self, method: &str, path: &str) -> Value {
        let (status, text) = self.call(method, path, "application/json");
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// Polls the guest's status until `done` holds, at most `timeout`.
    fn wait_guest(
        &self,
        what: &str,
        guest: &Guest,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let g = self.json("GET", "/v1/guests/debian");
            if done(&g) {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the guest is {g:#}\nits console:\n{}",
                guest.console_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_qemu_guest_under_the_daemon() {
    let fixture = fixture(false);
    let paths = GuestPaths::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let registration = paths.dir.path().join("reg.sock");
    let config = dir.path().join("ambulance.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nsocket = \"{}\"\n[[guest]]\nname = \"debian\"\nkind = \"qemu\"\n\
             qmp = \"{}\"\nmemory_file = \"{}\"\nregistration = \"{}\"\npolicy = \"hold\"\n",
            dir.path().join("data").display(),
            socket.display(),
            paths.qmp.display(),
            paths.ram.display(),
            registration.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, &socket);

    // QEMU is not up: the guest is listed, waiting, with why.
    let g = daemon.json("GET", "/v1/guests/debian");
    assert_eq!(g["kind"], "qemu");
    assert_eq!(g["state"], "stopped");
    assert_eq!(g["qemu"]["connected"], false);
    assert!(
        registration.exists(),
        "the daemon listens for the agent at start-up"
    );

    let guest = Guest::boot_at(
        paths,
        &fixture,
        &Boot {
            panic_after: Some(6),
            registration: Some(registration.clone()),
            // The daemon's `restart` (release) is a system_reset.
            no_reboot: false,
            ..Boot::default()
        },
    );
    let g = daemon.wait_guest(
        "the agent's registration",
        &guest,
        Duration::from_secs(120),
        |g| g["registered"] == true,
    );
    assert_eq!(g["state"], "running", "{g:#}");
    assert_eq!(g["qemu"]["vcpus"], 2);
    assert_eq!(g["qemu"]["memory_bytes"], 256u64 << 20);
    assert_eq!(
        g["qemu"]["registration"]["release"]
            .as_str()
            .map(|r| r.contains("cloud-amd64")),
        Some(true)
    );

    // An operator's diagnosis: paused, diagnosed in a worker, resumed.
    let entry = daemon.json("POST", "/v1/guests/debian/diagnose");
    assert_eq!(entry["cause"], "operator", "{entry:#}");
    let report = daemon.json(
        "GET",
        &format!("/v1/reports/{}", entry["id"].as_str().unwrap()),
    );
    assert_eq!(report["failure"]["cause"], "operator");
    assert_eq!(report["kernel"]["sources"]["vmcoreinfo"], "registration");
    linux_guest::check_vcpus(&report, false);
    let g = daemon.json("GET", "/v1/guests/debian");
    assert_eq!(g["state"], "running", "{g:#}");
    daemon.wait_guest(
        "the guest to run again",
        &guest,
        Duration::from_secs(10),
        |g| g["qemu"]["run_state"] == "running",
    );

    // The panic: diagnosed, stored, counted, held.
    let g = daemon.wait_guest(
        "the panic to be diagnosed and held",
        &guest,
        Duration::from_secs(120),
        |g| g["state"] == "held",
    );
    assert_eq!(g["last_failure"], "panic");
    let id = g["last_report"].as_str().expect("a report").to_string();
    let report = daemon.json("GET", &format!("/v1/reports/{id}"));
    assert_eq!(report["failure"]["cause"], "panic", "{report:#}");
    assert_eq!(report["failure"]["data"]["action"], "pause");
    assert_eq!(report["guest"]["name"], "debian");
    assert_eq!(report["kernel"]["sources"]["vmcoreinfo"], "registration");
    assert!(report["kernel"]["panic_message"]
        .as_str()
        .is_some_and(|m| m.contains("sysrq triggered crash")));
    linux_guest::check_vcpus(&report, true);
    linux_guest::check_against_console(&report, &guest.console_text());
    // And all of that (kallsyms, BTF, printk, tasks) was read by a worker under its
    // seccomp filter and no_new_privs, in the namespaces the host allowed.
    let sandbox = &report["tool"]["sandbox"];
    for must in ["seccomp", "no_new_privs"] {
        assert!(
            sandbox["applied"]
                .as_array()
                .is_some_and(|a| a.contains(&must.into())),
            "{sandbox:#}"
        );
    }
    let (status, text) = daemon.call("GET", &format!("/v1/reports/{id}"), "text/plain");
    assert_eq!(status, 200);
    assert!(text.contains("QEMU reported GUEST_PANICKED"), "{text}");
    let list = daemon.json("GET", "/v1/reports?guest=debian&cause=panic");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    let (_, metrics) = daemon.call("GET", "/metrics", "text/plain");
    assert!(
        metrics.contains("ambulance_failures_total{cause=\"panic\"} 1"),
        "{metrics}"
    );

    // Released: reset and running again; the new boot registers anew.
    let g = daemon.json("POST", "/v1/guests/debian/release");
    assert_eq!(g["state"], "running", "{g:#}");
    daemon.wait_guest(
        "the guest to run after the reset",
        &guest,
        Duration::from_secs(60),
        |g| g["qemu"]["run_state"] == "running",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while guest
        .console_text()
        .matches("ambulance-register: registered")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no second boot:\n{}",
            guest.console_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.wait_guest(
        "the new boot's registration",
        &guest,
        Duration::from_secs(10),
        |g| g["registered"] == true,
    );
}
