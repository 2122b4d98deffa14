//! Image library and pool balancing end to end: a real NATS JetStream server, a real
//! controller and real `ambulance serve` hosts whose configured test-kernel guests are
//! slots. The controller keeps each role at its desired count by repurposing slots from
//! images in the library.

mod fleet_harness;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleet_harness::{connect, guest, runtime, wait_for, Fleet, Host};
use serde_json::Value;

fn kvm_and_nats(extra: &str) -> Option<Fleet> {
    if !ambulance_testkit::kvm() {
        return None;
    }
    Fleet::start(extra)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The test kernel with `tag` appended (an ELF loads the same with bytes after its
/// sections): a distinct image, with a distinct digest, per role.
fn kernel_file(f: &Fleet, tag: &str) -> PathBuf {
    let mut bytes = ambulance_test_kernel::ELF.to_vec();
    bytes.extend_from_slice(format!("\nambulance-role-image:{tag}\n").as_bytes());
    let p = f.path().join(format!("{tag}.elf"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn sha256(path: &PathBuf) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `fleet image add ROLE FILE --cmdline …`: the digest it printed.
fn add_image(f: &Fleet, role: &str, file: &PathBuf, cmdline: &str) -> String {
    let out = f.cli(&[
        "image",
        "add",
        role,
        file.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--memory",
        "32M",
    ]);
    assert!(out.status.success(), "image add: {}", stderr(&out));
    let text = stdout(&out);
    let digest = text.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(digest, sha256(file), "{text}");
    digest
}

fn pool(f: &Fleet) -> Value {
    f.json("/v1/pool")
}

/// Waits until the pool has converged with `want` (role, count) and nothing in flight.
fn converged(f: &Fleet, want: &[(&str, u64)], timeout: Duration, what: &str) -> Value {
    wait_for(timeout, what, || {
        let p = pool(f);
        let ok = p["converged"] == true
            && want
                .iter()
                .all(|(r, n)| p["actual"][*r].as_u64().unwrap_or(0) == *n);
        ok.then_some(p)
    })
}

/// Every (host, guest) → (role, image digest, state, registered) from each host's own API.
fn slots(hosts: &[&Host]) -> Vec<(String, String, Option<String>, String, String, bool)> {
    let mut out = Vec::new();
    for h in hosts {
        for g in h.json("/v1/guests").as_array().unwrap() {
            out.push((
                h.name.clone(),
                g["name"].as_str().unwrap().to_string(),
                g["role"].as_str().map(str::to_string),
                g["image_digest"].as_str().unwrap_or("").to_string(),
                g["state"].as_str().unwrap().to_string(),
                g["registered"] == true,
            ));
        }
    }
    out
}

fn two_slots(policy: &str) -> String {
    format!(
        "{}{}",
        guest("s1", "fault=none", policy, ""),
        guest("s2", "fault=none", policy, "")
    )
}

const POOL: &str = "pool_tick_ms = 300\nmin_dwell_ms = 1000\nregister_timeout_ms = 20000\n";

#[test]
fn from_all_spare_the_pool_converges_and_a_killed_hosts_roles_come_back_elsewhere() {
    let Some(f) = kvm_and_nats(POOL) else { return };
    let web = kernel_file(&f, "web");
    let batch = kernel_file(&f, "batch");
    let web_d = add_image(&f, "web", &web, "fault=none tasks=8");
    let batch_d = add_image(&f, "batch", &batch, "fault=none tasks=4");
    let ls = stdout(&f.cli(&["image", "ls"]));
    assert!(ls.contains(&web_d) && ls.contains(&batch_d), "{ls}");

    let mut hosts: Vec<Host> = (1..=3)
        .map(|i| f.host(&format!("host-{i}"), &two_slots("restart")))
        .collect();
    // All spare: every slot runs its default image (the test kernel as configured).
    let default_d: String = {
        use sha2::Digest;
        sha2::Sha256::digest(ambulance_test_kernel::ELF)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let before = slots(&hosts.iter().collect::<Vec<_>>());
    assert_eq!(before.len(), 6);
    assert!(
        before.iter().all(|s| s.2.is_none() && s.3 == default_d),
        "{before:?}"
    );
    wait_for(
        Duration::from_secs(20),
        "6 spares at the controller",
        || (pool(&f)["spare"] == 6).then_some(()),
    );

    let t = Instant::now();
    let out = f.cli(&["pool", "set", "web=2", "batch=1"]);
    assert!(out.status.success(), "pool set: {}", stderr(&out));
    let p = converged(
        &f,
        &[("web", 2), ("batch", 1)],
        Duration::from_secs(120),
        "web=2 batch=1",
    );
    eprintln!("converged in {:?}: {p}", t.elapsed());
    assert_eq!(p["spare"], 3, "{p}");
    assert_eq!(p["started"], 3, "exactly three repurposings: {p}");
    let shown = stdout(&f.cli(&["pool"]));
    assert!(
        shown.contains("converged") && shown.contains("web"),
        "{shown}"
    );

    // The hosts' own statuses show the right digests, registered and running.
    let now = slots(&hosts.iter().collect::<Vec<_>>());
    let of = |role: &str| {
        now.iter()
            .filter(|s| s.2.as_deref() == Some(role))
            .collect::<Vec<_>>()
    };
    assert_eq!(of("web").len(), 2, "{now:?}");
    assert_eq!(of("batch").len(), 1, "{now:?}");
    for s in of("web") {
        assert_eq!(
            (s.3.as_str(), s.4.as_str(), s.5),
            (web_d.as_str(), "running", true)
        );
    }
    for s in of("batch") {
        assert_eq!(
            (s.3.as_str(), s.4.as_str(), s.5),
            (batch_d.as_str(), "running", true)
        );
    }
    // Spread: no host has both web slots.
    assert_ne!(of("web")[0].0, of("web")[1].0, "{now:?}");
    // The image is in each repurposed host's data directory, checked.
    for s in of("web") {
        let h = hosts.iter().find(|h| h.name == s.0).unwrap();
        assert_eq!(sha256(&h.data.join("fleet/images").join(&web_d)), web_d);
    }
    // An image a slot runs is not removed.
    let out = f.cli(&["image", "rm", &web_d]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in use by"), "{}", stderr(&out));

    // Nothing changes: nothing more is planned.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pool(&f)["started"], 3);

    // Kill the host with the most roles; its roles come back on the others.
    let victim = ["host-1", "host-2", "host-3"]
        .into_iter()
        .max_by_key(|h| {
            (
                now.iter().filter(|s| s.0 == *h && s.2.is_some()).count(),
                std::cmp::Reverse(*h),
            )
        })
        .unwrap();
    let lost = now
        .iter()
        .filter(|s| s.0 == victim && s.2.is_some())
        .count();
    assert!(lost >= 1);
    let i = hosts.iter().position(|h| h.name == victim).unwrap();
    let mut dead = hosts.remove(i);
    let t = Instant::now();
    dead.proc.kill();
    wait_for(
        Duration::from_secs(20),
        "the killed host unavailable",
        || (!f.available(victim)).then_some(()),
    );
    let p = wait_for(
        Duration::from_secs(120),
        "roles back after a host was killed",
        || {
            let p = pool(&f);
            (p["converged"] == true
                && p["actual"]["web"] == 2
                && p["actual"]["batch"] == 1
                && p["started"].as_u64() == Some(3 + lost as u64))
            .then_some(p)
        },
    );
    eprintln!(
        "{victim} killed ({lost} roles); back in {:?}: {p}",
        t.elapsed()
    );
    assert_eq!(p["failed"], 0, "{p}");
    // Four slots left, three of them with roles.
    assert_eq!(p["spare"], 1, "{p}");
    let after = slots(&hosts.iter().collect::<Vec<_>>());
    assert_eq!(
        after
            .iter()
            .filter(|s| s.2.as_deref() == Some("web"))
            .count(),
        2,
        "{after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|s| s.2.as_deref() == Some("batch"))
            .count(),
        1,
        "{after:?}"
    );
}

#[test]
fn a_held_web_guest_stays_frozen_while_a_spare_is_repurposed_to_web() {
    let Some(f) = kvm_and_nats(POOL) else { return };
    let web = kernel_file(&f, "web-panics");
    // The web image panics some seconds after it boots.
    let web_d = add_image(&f, "web", &web, "fault=panic fault_after_ms=6000");
    let hosts: Vec<Host> = (1..=3)
        .map(|i| f.host(&format!("host-{i}"), &two_slots("hold")))
        .collect();
    let out = f.cli(&["pool", "set", "web=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    converged(&f, &[("web", 1)], Duration::from_secs(60), "web=1");
    let first = slots(&hosts.iter().collect::<Vec<_>>())
        .into_iter()
        .find(|s| s.2.as_deref() == Some("web"))
        .unwrap();
    // It crashes under `hold`: held for forensics, missing from web.
    let h = hosts.iter().find(|h| h.name == first.0).unwrap();
    wait_for(Duration::from_secs(60), "the web guest held", || {
        (h.json(&format!("/v1/guests/{}", first.1))["state"] == "held").then_some(())
    });
    let t = Instant::now();
    // A spare becomes web; the held guest stays frozen.
    let replacement = wait_for(Duration::from_secs(60), "a spare repurposed to web", || {
        slots(&hosts.iter().collect::<Vec<_>>())
            .into_iter()
            .find(|s| {
                s.2.as_deref() == Some("web")
                    && s.4 == "running"
                    && s.5
                    && (s.0 != first.0 || s.1 != first.1)
            })
    });
    eprintln!(
        "replaced in {:?} by {}/{}",
        t.elapsed(),
        replacement.0,
        replacement.1
    );
    assert_eq!(replacement.3, web_d);
    let held = h.json(&format!("/v1/guests/{}", first.1));
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(held["vmm_state"], "frozen", "{held}");
    assert_eq!(held["role"], "web", "{held}");
    let p = pool(&f);
    assert!(p["missing"]["web"].as_u64().unwrap_or(0) >= 1, "{p}");
    // Its report reached the fleet.
    wait_for(
        Duration::from_secs(60),
        "the crash's report at the controller",
        || (!f.report_ids(&first.0).is_empty()).then_some(()),
    );
}

#[test]
fn a_tampered_image_is_refused_and_one_that_never_registers_falls_back() {
    let Some(f) = kvm_and_nats(POOL) else { return };
    let h = f.host("host-1", &two_slots("restart"));
    let default_d = h.json("/v1/guests/s1")["image_digest"]
        .as_str()
        .unwrap()
        .to_string();

    // Bad input, refused with clear errors and nothing stored.
    let junk = f.path().join("junk.bin");
    std::fs::write(&junk, b"not a kernel").unwrap();
    let out = f.cli(&["image", "add", "web", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not an ELF"), "{}", stderr(&out));
    let out = f.cli(&["image", "add", "Web!", "test"]);
    assert!(stderr(&out).contains("role \"Web!\""), "{}", stderr(&out));
    let out = f.cli(&["pool", "set", "web=two"]);
    assert!(
        stderr(&out).contains("\"two\" is not a count"),
        "{}",
        stderr(&out)
    );
    let out = f.cli(&["pool", "set", "web=1"]);
    assert!(
        stderr(&out).contains("role web has no image in the library"),
        "{}",
        stderr(&out)
    );
    assert_eq!(f.json("/v1/images"), serde_json::json!([]));
    assert_eq!(pool(&f)["desired"], serde_json::json!({}));
    let out = f.cli(&["image", "rm", "abc"]);
    assert!(stderr(&out).contains("not a SHA-256"), "{}", stderr(&out));
    let r = f.call(
        "POST",
        "/v1/transactions",
        Some(r#"{"host": "host-1", "instructions": [{"op": "repurpose", "guest": "s1", "role": "web", "digest": "xyz"}]}"#),
        "application/json",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("image digest")
            && r.text().contains("xyz")
            && r.text().contains("is not a SHA-256"),
        "{}",
        r.text()
    );
    // A digest the library does not have: the host says so, and nothing changes.
    let out = f.cli(&[
        "command",
        "host-1",
        "repurpose",
        "s1",
        "web",
        &"0".repeat(64),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the library has no image 0000"),
        "{}",
        stderr(&out)
    );
    assert_eq!(h.json("/v1/guests/s1")["role"], Value::Null);

    // An image whose bytes no longer match its digest: refused, the slot stays spare.
    let good = kernel_file(&f, "web");
    let digest = add_image(&f, "web", &good, "fault=none");
    runtime().block_on(async {
        let (client, _) = connect(&f.url(), &f.ca(), &f.controller_identity(), "_INBOX_ctl")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let store = js.get_object_store("amb-images").await.unwrap();
        let mut other = ambulance_test_kernel::ELF.to_vec();
        other.extend_from_slice(b"tampered");
        store
            .put(format!("image.{digest}").as_str(), &mut other.as_slice())
            .await
            .unwrap();
    });
    let out = f.cli(&["command", "host-1", "repurpose", "s1", "web", &digest]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("refused, not booted") && e.contains("SHA-256") && e.contains(&digest),
        "{e}"
    );
    let s1 = h.json("/v1/guests/s1");
    assert_eq!(s1["role"], Value::Null, "{s1}");
    assert_eq!(s1["image_digest"], default_d.as_str(), "{s1}");
    assert_eq!(s1["state"], "running", "{s1}");
    assert!(!h.data.join("fleet/images").join(&digest).exists());

    // An image that boots but never registers: the slot boots its default again.
    let dud = kernel_file(&f, "dud");
    let dud_d = add_image(&f, "dud", &dud, "fault=none register=never");
    let t = Instant::now();
    let out = f.cli(&[
        "command",
        "host-1",
        "repurpose",
        "s2",
        "dud",
        &dud_d,
        "--register-timeout",
        "3s",
    ]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("did not register within 3000 ms")
            && e.contains("booted its default image again"),
        "{e}"
    );
    assert!(t.elapsed() >= Duration::from_secs(3));
    let s2 = wait_for(
        Duration::from_secs(20),
        "s2 registered on its default",
        || {
            let s = h.json("/v1/guests/s2");
            (s["registered"] == true).then_some(s)
        },
    );
    assert_eq!(s2["role"], Value::Null, "{s2}");
    assert_eq!(s2["image_digest"], default_d.as_str(), "{s2}");
    assert_eq!(s2["state"], "running", "{s2}");
    // Nothing runs it now: it can be removed.
    let out = f.cli(&["image", "rm", &dud_d]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("removed"), "{}", stdout(&out));
    assert!(!stdout(&f.cli(&["image", "ls"])).contains(&dud_d));

    // A good image, for contrast: the same instruction succeeds and reports its times.
    let web2 = kernel_file(&f, "web2");
    let web2_d = add_image(&f, "web", &web2, "fault=none");
    let out = f.cli(&["command", "host-1", "repurpose", "s2", "web", &web2_d]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s2 = h.json("/v1/guests/s2");
    assert_eq!(s2["role"], "web", "{s2}");
    assert_eq!(s2["image_digest"], web2_d.as_str(), "{s2}");
    assert_eq!(s2["registered"], true, "{s2}");
}
