//! Fleet figures, on loopback with a real NATS server, controller and host:
//! * crash on a host → its report listed at the controller (the failure's time as the
//!   host recorded it, to the first listing of `GET /v1/reports` that has it, polled
//!   every 2 ms): median and p99 over 100 crashes;
//! * a controller ingesting health and events from 1,000 simulated hosts: events per
//!   second, and the controller process's CPU and memory while it does.
//!
//! Run with `cargo bench --bench fleet`. Needs /dev/kvm (the first figure) and the NATS
//! server `fixtures/ensure-nats.sh` installs.

#[path = "../tests/fleet_harness/mod.rs"]
mod fleet_harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ambulance_report::Timestamp;
use criterion::{Criterion, SamplingMode, Throughput};
use fleet_harness::{connect, guest, wait_for, Fleet};
use serde_json::Value;

/// Simulated hosts.
const HOSTS: usize = 1000;
/// Connections they share.
const CONNECTIONS: usize = 10;

fn listed(f: &Fleet) -> Vec<Value> {
    f.json("/v1/reports?host=host-1")
        .as_array()
        .cloned()
        .unwrap()
}

/// Waits for the next report to be listed and returns its latency: listing time minus
/// the failure time the host recorded.
fn next_latency(f: &Fleet, seen: &mut BTreeSet<String>) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = listed(f);
        let now = ambulance_report::now();
        let fresh: Vec<&Value> = list
            .iter()
            .filter(|e| !seen.contains(e["id"].as_str().unwrap()))
            .collect();
        if let Some(e) = fresh.first() {
            for e in &fresh {
                seen.insert(e["id"].as_str().unwrap().to_string());
            }
            // Only the newest: others arrived while we were not looking this closely.
            let newest = fresh.last().unwrap_or(e);
            let t: Timestamp = newest["time"].as_str().unwrap().parse().unwrap();
            let ms = now.as_millisecond() - t.as_millisecond();
            if fresh.len() == 1 {
                return Duration::from_millis(ms.max(0) as u64);
            }
        }
        assert!(Instant::now() < deadline, "no report listed for 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn crash_to_listed(c: &mut Criterion) {
    if !ambulance_testkit::kvm() {
        return;
    }
    let Some(f) = Fleet::start("") else { return };
    let _h = f.host(
        "host-1",
        &guest("crasher", "fault=panic fault_after_ms=500", "restart", ""),
    );
    let mut seen: BTreeSet<String> = listed(&f)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let mut all = Vec::new();
    let mut g = c.benchmark_group("fleet");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    g.bench_function("crash on a host -> report listed at the controller", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let l = next_latency(&f, &mut seen);
                all.push(l);
                total += l;
            }
            total
        })
    });
    g.finish();
    while all.len() < 100 {
        all.push(next_latency(&f, &mut seen));
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1];
    println!(
        "crash -> listed at the controller: median {} ms, p99 {} ms, min {} ms, max {} ms over {} crashes",
        pct(0.5).as_millis(),
        pct(0.99).as_millis(),
        all[0].as_millis(),
        all[all.len() - 1].as_millis(),
        all.len()
    );
}

/// utime + stime of a process, in clock ticks, and its VmRSS / VmHWM in KiB.
fn usage(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmRSS:"), kib("VmHWM:"))
}

fn ingest(c: &mut Criterion) {
    let Some(f) = Fleet::start("health_ttl_ms = 60000") else {
        return;
    };
    let rt = fleet_harness::runtime();
    let clients: Vec<async_nats::Client> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..CONNECTIONS {
            v.push(
                connect(&f.url(), &f.ca(), &f.controller_identity(), "_INBOX_ctl")
                    .await
                    .unwrap()
                    .0,
            );
        }
        v
    });
    let stats = |f: &Fleet| {
        let s = f.json("/v1/stats");
        s["events"].as_u64().unwrap() + s["health_updates"].as_u64().unwrap()
    };
    let mut round = 0u64;
    // One round: every simulated host publishes its health, a failure and its report;
    // then wait until the controller ingested all of it.
    let publish_round = |round: u64| -> u64 {
        let before = stats(&f);
        rt.block_on(async {
            let mut tasks = Vec::new();
            for (ci, client) in clients.iter().enumerate() {
                let js = async_nats::jetstream::new(client.clone());
                tasks.push(tokio::spawn(async move {
                    let mut acks = Vec::new();
                    for h in (ci..HOSTS).step_by(CONNECTIONS) {
                        let host = format!("sim-{h:04}");
                        let now = ambulance_report::now();
                        let id = format!("20260101T000000Z-g{round}-{h:08x}");
                        let health = serde_json::json!({
                            "host": host, "subscriber": "sim", "time": now, "interval_ms": 5000,
                            "guests": [{"name": "g", "state": "running", "failures": round, "last_report": null}],
                            "reports": round, "outbox": 0, "version": "bench"
                        });
                        let failure = serde_json::json!({
                            "host": host, "guest": "g", "report_id": id, "cause": "panic",
                            "time": now, "detail": "simulated"
                        });
                        let report = serde_json::json!({
                            "entry": {"host": host, "id": id, "guest": "g", "cause": "panic", "time": now,
                                      "status": "ok", "error": null,
                                      "severity": {"worst": "critical", "critical": 1, "error": 0, "warning": 0, "info": 0},
                                      "text": true, "core": false},
                            "report": null
                        });
                        acks.push(js.publish(format!("$KV.amb-health.{host}"), health.to_string().into()).await.unwrap());
                        let mut hd = async_nats::HeaderMap::new();
                        hd.insert("Nats-Msg-Id", format!("{host}/failure/{id}").as_str());
                        acks.push(js.publish_with_headers(format!("amb.ev.{host}.failure"), hd, failure.to_string().into()).await.unwrap());
                        let mut hd = async_nats::HeaderMap::new();
                        hd.insert("Nats-Msg-Id", format!("{host}/report/{id}").as_str());
                        acks.push(js.publish_with_headers(format!("amb.ev.{host}.report"), hd, report.to_string().into()).await.unwrap());
                    }
                    for a in acks {
                        a.await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let want = before + 3 * HOSTS as u64;
        wait_for(
            Duration::from_secs(120),
            "the controller to ingest a round",
            || (stats(&f) >= want).then_some(()),
        );
        3 * HOSTS as u64
    };
    let pid = f.controller.child.id();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let (t0, _, _) = usage(pid);
    let start = Instant::now();
    let mut events = 0u64;
    let mut g = c.benchmark_group("fleet");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(3 * HOSTS as u64));
    g.bench_function(
        "controller ingests a round of 1,000 hosts (health + failure + report)",
        |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    round += 1;
                    events += publish_round(round);
                }
                t.elapsed()
            })
        },
    );
    g.finish();
    let elapsed = start.elapsed().as_secs_f64();
    let (t1, rss, hwm) = usage(pid);
    let s = f.json("/v1/stats");
    println!(
        "controller ingest, {HOSTS} simulated hosts over {CONNECTIONS} connections: {events} events \
         ({} rounds) in {elapsed:.1} s = {:.0} events/s (publish, engine fsync and ingestion \
         together); controller CPU {:.0} % of one core; memory VmRSS {:.1} MiB, VmHWM {:.1} MiB; \
         it holds {} hosts' health, {} reports, {} failures",
        round,
        events as f64 / elapsed,
        (t1 - t0) as f64 / ticks_per_s / elapsed * 100.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        s["hosts_seen"],
        s["reports"],
        s["failures"],
    );

    // The controller alone: a new controller process rebuilds its index from the whole
    // events stream (two events per host and round) as fast as it can ingest.
    let mut f = f;
    let want = 2 * HOSTS as u64 * round;
    let t = Instant::now();
    f.restart_controller();
    let pid = f.controller.child.id();
    wait_for(
        Duration::from_secs(300),
        "the new controller to replay the stream",
        || (f.json("/v1/stats")["events"].as_u64().unwrap() >= want).then_some(()),
    );
    let elapsed = t.elapsed().as_secs_f64();
    let (ticks, rss, hwm) = usage(pid);
    println!(
        "controller replay at start: {want} events (and {HOSTS} hosts' health) in {elapsed:.2} s \
         = {:.0} events/s, process start included; CPU {:.0} % of one core; memory VmRSS {:.1} MiB, \
         VmHWM {:.1} MiB",
        want as f64 / elapsed,
        ticks as f64 / ticks_per_s / elapsed * 100.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wanted("crash") {
        crash_to_listed(&mut c);
    }
    if wanted("ingest") {
        ingest(&mut c);
    }
    c.final_summary();
}
