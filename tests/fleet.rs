//! The fleet end to end: a real NATS JetStream server (installed by
//! `fixtures/ensure-nats.sh`), a real controller (`ambulance fleet serve`) and real hosts
//! (`ambulance serve` with `[fleet]`) running test-kernel guests on KVM, all on loopback.
//! Each test has its own engine, controller and hosts, killed when it ends.

mod fleet_harness;

use std::time::{Duration, Instant};

use ambulance_fleet::pki;
use fleet_harness::{connect, guest, runtime, wait_for, Fleet};
use futures_util::StreamExt;
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

/// Every (id, count) of report events for `host` on the events stream, read with the
/// controller's identity.
fn report_messages(f: &Fleet, host: &str) -> std::collections::BTreeMap<String, usize> {
    runtime().block_on(async {
        let (client, _) = connect(&f.url(), &f.ca(), &f.controller_identity(), "_INBOX_ctl")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("AMB_EVENTS").await.unwrap();
        let subject = format!("amb.ev.{host}.report");
        let mut counts = std::collections::BTreeMap::new();
        let mut info = stream.info_with_subjects(&subject).await.unwrap();
        let mut total = 0;
        while let Some(s) = info.next().await {
            total += s.unwrap().1;
        }
        if total == 0 {
            return counts;
        }
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = consumer.messages().await.unwrap();
        let mut seen = 0;
        while seen < total {
            let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
                .await
                .expect("the stream's messages")
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            *counts
                .entry(v["entry"]["id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
            seen += 1;
        }
        counts
    })
}

#[test]
fn three_hosts_enrol_report_and_run_commands_once() {
    let Some(f) = kvm_and_nats("") else { return };
    let victim = guest(
        "victim",
        "fault=list-corruption fault_after_ms=1500 seed=3",
        "hold",
        "core = true",
    );
    let calm = guest("calm", "fault=none", "restart", "");
    let h1 = f.host("host-1", &calm);
    let h2 = f.host("host-2", &victim);
    let h3 = f.host("host-3", &calm);

    // Three distinct unique certificates, each the host's own, keys private.
    let mut serials = std::collections::BTreeSet::new();
    for h in [&h1, &h2, &h3] {
        use std::os::unix::fs::PermissionsExt;
        let pem = h.identity();
        assert_eq!(
            std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
            0o600,
            "{} is private",
            pem.display()
        );
        let info = pki::cert_info(&std::fs::read_to_string(&pem).unwrap()).unwrap();
        let s = info.subject.unwrap();
        assert_eq!((s.name.as_str(), s.org.as_str()), (h.name.as_str(), "acme"));
        assert_eq!(s.role, pki::Role::Host);
        let record = f.host_view(&h.name).unwrap();
        assert_eq!(record["serial"], info.serial.as_str());
        assert!(serials.insert(info.serial));
    }
    assert_eq!(serials.len(), 3);
    let zero = pki::cert_info(&std::fs::read_to_string(f.zero.join("zero.pem")).unwrap()).unwrap();
    assert!(
        !serials.contains(&zero.serial),
        "the zero certificate is not a host's"
    );

    // A second enrolment of host-2's id is refused: that daemon stops, saying why, and
    // host-2's record is unchanged.
    let before = f.host_view("host-2").unwrap();
    let mut twin = f.spawn_host("host-2", "host-2-twin", "");
    let status = twin
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("the second host-2 stops");
    assert!(!status.success());
    let log = twin.proc.log();
    assert!(
        log.contains("already enrolled") && log.contains("ambulance fleet reenrol host-2"),
        "{log}"
    );
    assert!(!twin.identity().exists(), "no certificate was stored");
    assert_eq!(f.host_view("host-2").unwrap()["serial"], before["serial"]);

    // The fault on host 2 → its report is listed by `fleet reports`, and `fleet report`
    // gives the very bytes host 2's API gives (JSON, text, core).
    let id = wait_for(
        Duration::from_secs(60),
        "host-2's report at the controller",
        || {
            let out = f.cli(&["reports", "--host", "host-2", "--json"]);
            assert!(out.status.success(), "{}", stderr(&out));
            let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
            v.as_array()
                .and_then(|a| a.first())
                .map(|e| e["id"].as_str().unwrap().to_string())
        },
    );
    assert_eq!(h2.report_ids(), vec![id.clone()]);
    let listing = stdout(&f.cli(&["reports"]));
    assert!(
        listing.contains(&id) && listing.contains("host-2"),
        "{listing}"
    );
    let out = f.cli(&["report", &id, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let host_json = h2.call("GET", &format!("/v1/reports/{id}"), "application/json");
    assert_eq!(host_json.status, 200);
    assert_eq!(
        out.stdout, host_json.body,
        "fleet report = host-2's JSON, byte for byte"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["guest"]["name"], "victim");
    let text = f.cli(&["report", &id]);
    let host_text = h2.call("GET", &format!("/v1/reports/{id}"), "text/plain");
    assert_eq!(text.stdout, host_text.body);
    let core = f.call("GET", &format!("/v1/reports/{id}/core"), None, "*/*");
    let host_core = h2.call("GET", &format!("/v1/reports/{id}/core"), "*/*");
    assert_eq!(core.status, 200);
    assert!(core.body == host_core.body && core.body.starts_with(b"\x7fELF"));
    let failures = f.json("/v1/failures?host=host-2");
    assert_eq!(failures.as_array().unwrap().len(), 1, "{failures}");
    assert_eq!(failures[0]["report_id"], id.as_str());

    // A command round trip on host 3: an operator diagnosis, by transaction id.
    let out = f.cli(&["command", "host-3", "diagnose", "calm"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let said = stdout(&out);
    let txn = said
        .split_whitespace()
        .nth(1)
        .expect("the transaction id")
        .to_string();
    assert!(
        said.contains(": ok") && said.contains("diagnose calm: ok, report"),
        "{said}"
    );
    let view = f.json(&format!("/v1/transactions/{txn}"));
    assert_eq!(view["status"], "ok", "{view}");
    assert_eq!(view["host"], "host-3");
    let made = view["result"]["steps"][0]["output"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        h3.report_ids(),
        vec![made.clone()],
        "the diagnosis ran on host-3"
    );
    let shown = stdout(&f.cli(&["txn", &txn]));
    assert!(shown.contains(&txn) && shown.contains("ok"), "{shown}");

    // The same transaction delivered again runs once: its id is queued a second time
    // (as the controller would, had it lost the acknowledgement).
    runtime().block_on(async {
        let (client, _) = connect(&f.url(), &f.ca(), &f.controller_identity(), "_INBOX_ctl")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.publish("amb.work.host-3", bytes::Bytes::from(txn.clone()))
            .await
            .unwrap()
            .await
            .unwrap();
        let stream = js.get_stream("AMB_WORK").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("work-host-3").await.unwrap();
            let info = c.info().await.unwrap();
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= 2
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "host-3 did not take the redelivery: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        h3.report_ids(),
        vec![made],
        "the second delivery did not run again"
    );
    let again = f.json(&format!("/v1/transactions/{txn}"));
    assert_eq!(again["result"], view["result"], "its result is unchanged");
    let log = h3.proc.log();
    assert!(log.contains("delivered again"), "{log}");
    assert!(h1.report_ids().is_empty());

    // Without waiting: the id at once, the result by id later.
    let out = f.cli(&["command", "host-3", "--no-wait", "diagnose", "calm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let txn = stdout(&out).trim().to_string();
    assert!(ambulance_fleet::names::valid_txn_id(&txn), "{txn}");
    wait_for(
        Duration::from_secs(30),
        "the no-wait transaction's end",
        || (f.json(&format!("/v1/transactions/{txn}"))["status"] == "ok").then_some(()),
    );
    assert_eq!(h3.report_ids().len(), 2);

    // The hosts' health says what they hold and that nothing waits in their outboxes.
    wait_for(
        Duration::from_secs(10),
        "host-2's health to count its report",
        || {
            let h = f.host_view("host-2").unwrap();
            (h["health"]["reports"] == 1 && h["health"]["outbox"] == 0).then_some(())
        },
    );
    let health = f.host_view("host-2").unwrap()["health"].clone();
    assert_eq!(health["guests"][0]["name"], "victim", "{health}");
    assert_eq!(health["guests"][0]["state"], "held", "{health}");
}

#[test]
fn engine_killed_during_a_failure_storm_every_report_arrives_once() {
    let Some(mut f) = kvm_and_nats("") else {
        return;
    };
    let storm = guest("storm", "fault=panic fault_after_ms=200", "restart", "");
    let mut a = f.host("host-a", &storm);
    let mut b = f.host("host-b", &storm);
    wait_for(
        Duration::from_secs(60),
        "the storm reaching the controller",
        || (f.report_ids("host-a").len() >= 3 && f.report_ids("host-b").len() >= 3).then_some(()),
    );

    // The engine dies mid-storm; the hosts go on failing for a minute, and host-b's
    // daemon is itself killed and restarted meanwhile.
    f.kill_engine();
    let down = Instant::now();
    let at_kill = (a.report_ids().len(), b.report_ids().len());
    std::thread::sleep(Duration::from_secs(30));
    b.proc.kill();
    b = f.spawn_host_with("host-b", "host-b", &b.config.clone(), &b.socket.clone());
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down.elapsed()));
    let during = (a.report_ids().len(), b.report_ids().len());
    assert!(
        during.0 > at_kill.0 + 5 && during.1 > at_kill.1,
        "the storm went on while the engine was down: {at_kill:?} -> {during:?}"
    );
    f.restart_engine();
    std::thread::sleep(Duration::from_secs(3));

    // End the storm: each daemon stops and comes back without its failing guest, from
    // the same store (the outbox is whatever the store has that was not acknowledged).
    for h in [&mut a, &mut b] {
        h.proc.stop();
        let (config, socket) = f.host_config(&h.name, &h.name, "", "");
        *h = f.spawn_host_with(&h.name.clone(), &h.name.clone(), &config, &socket);
    }
    for h in [&a, &b] {
        wait_for(Duration::from_secs(30), "the restarted host's API", || {
            std::os::unix::net::UnixStream::connect(&h.socket).ok()
        });
        let want: std::collections::BTreeSet<String> = h.report_ids().into_iter().collect();
        let got = wait_for(
            Duration::from_secs(90),
            &format!("every report of {}", h.name),
            || {
                let got: std::collections::BTreeSet<String> =
                    f.report_ids(&h.name).into_iter().collect();
                (got == want).then_some(got)
            },
        );
        assert!(
            got.len() > 20,
            "{}: a storm has many reports ({})",
            h.name,
            got.len()
        );
        let counts = report_messages(&f, &h.name);
        assert_eq!(
            counts
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            want,
            "{}: the stream has exactly the host's reports",
            h.name
        );
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            twice.is_empty(),
            "{}: reports on the stream more than once: {twice:?}",
            h.name
        );
        let listed = f.json(&format!("/v1/reports?host={}", h.name));
        assert_eq!(
            listed.as_array().unwrap().len(),
            want.len(),
            "listed once each"
        );
        let failures = f.json(&format!("/v1/failures?host={}", h.name));
        let failure_ids: std::collections::BTreeSet<String> = failures
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["report_id"].as_str().unwrap().to_string())
            .collect();
        assert!(
            failure_ids.is_superset(&want),
            "{}: every failure event arrived",
            h.name
        );
        assert_eq!(
            failure_ids.len(),
            failures.as_array().unwrap().len(),
            "failures once each"
        );
    }
}

#[test]
fn permissions_zero_enrols_only_hosts_publish_only_their_own_revoked_refused() {
    let Some(f) = Fleet::start("") else { return };
    let _h1 = f.host("host-1", "");
    let h2 = f.host("host-2", "");
    let h2_first = std::fs::read(h2.identity()).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let short = |c: &async_nats::Client| {
            async_nats::jetstream::ContextBuilder::new()
                .timeout(Duration::from_secs(2))
                .build(c.clone())
        };
        // The zero certificate connects, but may publish nothing but its enrolment.
        let (zero, zero_events) =
            connect(&f.url(), &f.ca(), &f.zero.join("zero.pem"), "_INBOX_enrol")
                .await
                .unwrap();
        let ack = short(&zero)
            .publish("amb.ev.host-1.failure", bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .await;
        assert!(ack.is_err(), "a zero certificate published an event");
        let _ = zero.subscribe("amb.>").await;
        zero.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ev = zero_events.all().join("\n");
        assert!(
            ev.contains("Permissions Violation for Publish to \"amb.ev.host-1.failure\"")
                && ev.contains("Permissions Violation for Subscription to \"amb.>\""),
            "{ev}"
        );

        // A new zero certificate for the subscriber retires the previous one.
        let old_zero = f.path().join("old-zero.pem");
        std::fs::copy(f.zero.join("zero.pem"), &old_zero).unwrap();
        let out = f.cli(&[
            "bootstrap",
            "--subscriber",
            "acme",
            "--out",
            f.zero.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let refused = connect(&f.url(), &f.ca(), &old_zero, "_INBOX_enrol").await;
        assert!(
            refused
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("authorization violation"),
            "the retired zero certificate still connects"
        );
        assert!(
            connect(&f.url(), &f.ca(), &f.zero.join("zero.pem"), "_INBOX_enrol")
                .await
                .is_ok()
        );

        // Host 1 cannot act as host 2 — but can as itself.
        let (h1c, h1_events) = connect(
            &f.url(),
            &f.ca(),
            &f.path().join("host-1/data/fleet/host.pem"),
            "_INBOX_host-1",
        )
        .await
        .unwrap();
        let js1 = short(&h1c);
        for subject in [
            "amb.ev.host-2.report",
            "amb.ev.host-2.failure",
            "$KV.amb-health.host-2",
            "$KV.amb-txn.res.host-2.t0000000000000",
            "$O.reports-host-2.C.x",
        ] {
            let r = js1
                .publish(subject, bytes::Bytes::from_static(b"{}"))
                .await
                .unwrap()
                .await;
            assert!(r.is_err(), "host-1 published on {subject}");
        }
        let read = h1c
            .request(
                "$JS.API.DIRECT.GET.KV_amb-txn.$KV.amb-txn.cmd.host-2.t0000000000000",
                bytes::Bytes::new(),
            )
            .await;
        assert!(read.is_err(), "host-1 read host-2's transactions");
        let own = js1
            .publish(
                "$KV.amb-health.host-1",
                bytes::Bytes::from_static(b"{\"probe\": true}"),
            )
            .await
            .unwrap()
            .await;
        assert!(own.is_ok(), "host-1 publishes its own health: {own:?}");
        h1c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ev = h1_events.all().join("\n");
        for s in [
            "amb.ev.host-2.report",
            "$KV.amb-health.host-2",
            "$O.reports-host-2.C.x",
        ] {
            assert!(ev.contains(&format!("Publish to \"{s}\"")), "{s}: {ev}");
        }
        let js = async_nats::jetstream::new(
            connect(&f.url(), &f.ca(), &f.controller_identity(), "_INBOX_ctl")
                .await
                .unwrap()
                .0,
        );
        let stream = js.get_stream("AMB_EVENTS").await.unwrap();
        let mut subjects = stream.info_with_subjects("amb.ev.host-2.>").await.unwrap();
        assert!(
            subjects.next().await.is_none(),
            "nothing reached host-2's subjects"
        );

        // Revoked: host 2's live connection is closed, a new one refused, its health stops.
        let (h2c, h2_events) = connect(&f.url(), &f.ca(), &h2.identity(), "_INBOX_host-2")
            .await
            .unwrap();
        let out = f.cli(&["revoke", "host-2"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !h2_events.all().iter().any(|e| e.contains("disconnected")) {
            assert!(
                Instant::now() < deadline,
                "host-2's connection stayed open: {:?}",
                h2_events.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = h2c;
        let again = connect(&f.url(), &f.ca(), &h2.identity(), "_INBOX_host-2").await;
        let e = again.err().expect("a revoked host is refused").to_string();
        assert!(e.contains("authorization violation"), "{e}");
    });
    wait_for(
        Duration::from_secs(10),
        "host-2 unavailable once revoked",
        || {
            let v = f.host_view("host-2").unwrap();
            (v["revoked"] == true && v["available"] == false).then_some(())
        },
    );
    let listing = stdout(&f.cli(&["hosts"]));
    assert!(listing.contains("revoked"), "{listing}");
    let r = f.call(
        "POST",
        "/v1/transactions",
        Some(r#"{"host": "host-2", "instructions": [{"op": "diagnose", "guest": "g"}]}"#),
        "application/json",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("revoked"));

    // An operator lets host-2 enrol again: a new enrolment, and the certificate of the
    // earlier one stays refused.
    let out = f.cli(&["reenrol", "host-2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(h2);
    let h2b = f.spawn_host("host-2", "host-2-again", "");
    wait_for(Duration::from_secs(30), "host-2 enrolled again", || {
        let v = f.host_view("host-2").unwrap();
        (v["revoked"] == false && v["available"] == true).then_some(())
    });
    let old = f.path().join("old-host-2.pem");
    std::fs::write(&old, &h2_first).unwrap();
    let r = rt.block_on(connect(&f.url(), &f.ca(), &old, "_INBOX_host-2"));
    assert!(r.is_err(), "the earlier enrolment's certificate is refused");
    assert!(r
        .err()
        .unwrap()
        .to_string()
        .contains("authorization violation"));
    let new = pki::cert_info(&std::fs::read_to_string(h2b.identity()).unwrap()).unwrap();
    let first = pki::cert_info(&String::from_utf8(h2_first).unwrap()).unwrap();
    assert_ne!(
        new.subject.unwrap().enrolment,
        first.subject.unwrap().enrolment
    );
}

#[test]
fn a_killed_host_becomes_unavailable_and_its_command_expires_unrun() {
    let Some(f) = kvm_and_nats("") else { return };
    let calm = guest("calm", "fault=none", "restart", "");
    let mut h = f.host("host-1", &calm);
    assert!(f.available("host-1"));
    h.proc.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(10), "host-1 unavailable", || {
        (!f.available("host-1")).then_some(())
    });
    let after = killed.elapsed();
    // TTL 2 s, health every 0.5 s: unavailable between 1.5 s and a little over 2 s.
    assert!(
        after >= Duration::from_millis(1400),
        "unavailable too early ({after:?}): before the TTL"
    );
    let shown = stdout(&f.cli(&["hosts"]));
    assert!(shown.contains("unavailable"), "{shown}");

    let t = Instant::now();
    let out = f.cli(&["command", "host-1", "diagnose", "calm", "--timeout", "2s"]);
    assert!(!out.status.success());
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "it waited for the deadline"
    );
    let e = stderr(&out);
    assert!(
        e.contains("did not take transaction")
            && e.contains("unavailable")
            && e.contains("not run"),
        "{e}"
    );
    let txn = e
        .split("transaction ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let view = f.json(&format!("/v1/transactions/{txn}"));
    assert_eq!(view["status"], "expired", "{view}");

    // The host comes back: the queued transaction reaches it, and it does not run it.
    let h = f.spawn_host_with("host-1", "host-1", &h.config.clone(), &h.socket.clone());
    wait_for(Duration::from_secs(30), "host-1 back", || {
        f.available("host-1").then_some(())
    });
    // (It may first go to the killed daemon's last pull request; then it comes back after
    // the work queue's acknowledgement wait, 10 s.)
    wait_for(
        Duration::from_secs(45),
        "the expired transaction delivered",
        || {
            let log = h.proc.log();
            (log.contains("transaction taken after its deadline; not run")
                || log.contains("transaction already has a result; not run"))
            .then_some(())
        },
    );
    assert!(
        h.report_ids().is_empty(),
        "the expired diagnosis did not run"
    );
    assert_eq!(
        f.json(&format!("/v1/transactions/{txn}"))["status"],
        "expired"
    );
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_stored() {
    let Some(f) = Fleet::start("") else { return };
    let mut h = f.host("host-1", "");
    let post = |body: &str| f.call("POST", "/v1/transactions", Some(body), "application/json");
    let cases: [(&str, u16, &[&str]); 6] = [
        (
            "{\"host\": \"host-1\", \"instructions\": [",
            400,
            &["malformed transaction"],
        ),
        (
            r#"{"host": "host-9", "instructions": [{"op": "diagnose", "guest": "g"}]}"#,
            404,
            &["unknown host \"host-9\""],
        ),
        (
            r#"{"host": "host-1", "instructions": [{"op": "reboot", "guest": "g"}]}"#,
            400,
            &["reboot", "diagnose", "boot-flag"],
        ),
        (
            r#"{"host": "host-1", "instructions": []}"#,
            400,
            &["1 to 16 instructions"],
        ),
        (
            r#"{"host": "host-1", "instructions": [{"op": "release", "guest": "g", "action": "explode"}]}"#,
            400,
            &["explode"],
        ),
        (
            r#"{"host": "host-1", "subscriber": "other", "instructions": [{"op": "diagnose", "guest": "g"}]}"#,
            400,
            &["subscriber"],
        ),
    ];
    for (body, status, words) in cases {
        let r = post(body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let e = v["error"].as_str().unwrap();
        for w in words {
            assert!(e.contains(w), "{body}: {e}");
        }
    }
    let out = f.cli(&["command", "host-9", "diagnose", "g"]);
    assert!(
        !out.status.success() && stderr(&out).contains("unknown host"),
        "{}",
        stderr(&out)
    );
    let r = f.call("POST", "/v1/subscribers/acme2/zero", Some(r#"{"csr": "-----BEGIN CERTIFICATE REQUEST-----\nnonsense\n-----END CERTIFICATE REQUEST-----\n"}"#), "application/json");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("signing request is unusable"),
        "{}",
        r.text()
    );

    let rt = runtime();
    rt.block_on(async {
        // Enrolment requests that cannot be granted, through the zero certificate.
        let (zero, _) = connect(&f.url(), &f.ca(), &f.zero.join("zero.pem"), "_INBOX_enrol")
            .await
            .unwrap();
        let (_key, csr) = pki::key_and_csr("host-x").unwrap();
        let mut bad = csr.clone().into_bytes();
        let mid = bad.len() / 2;
        bad[mid] = if bad[mid] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        let ask = |body: Value| {
            let zero = zero.clone();
            async move {
                let m = zero
                    .request("amb.enrol.acme", bytes::Bytes::from(body.to_string()))
                    .await
                    .unwrap();
                serde_json::from_slice::<Value>(&m.payload).unwrap()["error"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            }
        };
        let e = ask(serde_json::json!({"host": "host-x", "subscriber": "acme", "csr": bad})).await;
        assert!(e.contains("signing request is unusable"), "{e}");
        let e = ask(serde_json::json!({"host": "host-x", "subscriber": "acme", "csr": "garbage"}))
            .await;
        assert!(e.contains("signing request is unusable"), "{e}");
        let e = ask(serde_json::json!({"host": "host-x", "subscriber": "other", "csr": csr})).await;
        assert!(e.contains("subscriber"), "{e}");
        let (_k2, csr_y) = pki::key_and_csr("host-y").unwrap();
        let e =
            ask(serde_json::json!({"host": "host-x", "subscriber": "acme", "csr": csr_y})).await;
        assert!(e.contains("CN=\"host-y\""), "{e}");
        let m = zero
            .request("amb.enrol.acme", bytes::Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&m.payload).contains("malformed enrolment request"));

        // Nothing stored: no transaction, no work item, no host-x anywhere.
        let (ctl, _) = connect(&f.url(), &f.ca(), &f.controller_identity(), "_INBOX_ctl")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(ctl);
        let kv = js.get_key_value("amb-txn").await.unwrap();
        let mut keys = kv.keys().await.unwrap();
        assert!(
            keys.next().await.is_none(),
            "a refused transaction was stored"
        );
        let mut work = js.get_stream("AMB_WORK").await.unwrap();
        assert_eq!(work.info().await.unwrap().state.messages, 0);
        assert!(
            js.get_stream("OBJ_reports-host-x").await.is_err(),
            "no bucket for host-x"
        );
        let state = js.get_key_value("amb-fleet").await.unwrap();
        assert!(state.get("host.host-x").await.unwrap().is_none());
    });
    let r = f.call("GET", "/v1/hosts/host-x", None, "application/json");
    assert_eq!(r.status, 404);
    let auth = std::fs::read_to_string(f.path().join("ctl/nats/auth.conf")).unwrap();
    assert!(
        !auth.contains("host-x") && auth.contains("CN=host-1"),
        "{auth}"
    );

    // An expired certificate: the engine refuses it, and a host holding one says so —
    // and, its id being enrolled, is refused a new one until an operator allows it.
    let ca = pki::Ca::load_or_create(&f.path().join("ctl/ca"), "fleet").unwrap();
    let info = pki::cert_info(&std::fs::read_to_string(h.identity()).unwrap()).unwrap();
    let (key, cert) = ca
        .issue_between(
            &info.subject.clone().unwrap(),
            &[],
            "2020-01-01T00:00:00Z".parse().unwrap(),
            "2020-01-02T00:00:00Z".parse().unwrap(),
        )
        .unwrap();
    let expired = f.path().join("expired.pem");
    pki::write_private(&expired, &format!("{}{key}", cert.pem)).unwrap();
    let e = rt
        .block_on(connect(&f.url(), &f.ca(), &expired, "_INBOX_host-1"))
        .err()
        .expect("an expired certificate is refused")
        .to_string();
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("tls"),
        "{e}"
    );
    h.proc.stop();
    pki::write_private(&h.identity(), &format!("{}{key}", cert.pem)).unwrap();
    let mut h = f.spawn_host_with("host-1", "host-1", &h.config.clone(), &h.socket.clone());
    let status = h.proc.wait_exit(Duration::from_secs(60)).expect("it stops");
    assert!(!status.success());
    let log = h.proc.log();
    assert!(
        log.contains("certificate expired at 2020-01-02T00:00:00Z")
            && log.contains("already enrolled"),
        "{log}"
    );
}

#[test]
fn a_host_renews_its_certificate_over_its_own_identity_before_it_expires() {
    let Some(f) = Fleet::start("host_certificate_s = 12") else {
        return;
    };
    let h = f.host("host-1", "");
    let first = pki::cert_info(&std::fs::read_to_string(h.identity()).unwrap()).unwrap();
    // Renewed two thirds of the way (8 s after issue), then again; the host stays
    // available past the first certificate's expiry.
    // (The controller records the renewal before the host has written its new
    // certificate: wait for both.)
    wait_for(Duration::from_secs(30), "a renewal", || {
        let v = f.host_view("host-1").unwrap();
        let on_disk = std::fs::read_to_string(h.identity())
            .ok()
            .and_then(|t| pki::cert_info(&t).ok())
            .is_some_and(|c| c.serial != first.serial);
        (v["renewed"] != Value::Null && v["serial"] != first.serial.as_str() && on_disk)
            .then_some(())
    });
    let renewed = pki::cert_info(&std::fs::read_to_string(h.identity()).unwrap()).unwrap();
    assert_ne!(renewed.serial, first.serial);
    assert_eq!(renewed.subject, first.subject, "the same identity, renewed");
    while ambulance_report::now() < first.not_after {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let log = h.proc.log();
    assert!(
        f.available("host-1"),
        "still available after the first certificate expired: {log}\n{}\n{:#}\n{:#}",
        f.nats_log(),
        f.json("/v1/hosts"),
        f.json("/v1/stats")
    );
    assert!(log.contains("certificate renewed"), "{log}");
}
