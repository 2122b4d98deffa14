//! Pool figures, on loopback with a real NATS server, controller and hosts:
//! * `pool set web=2 batch=1` → converged, for three hosts with two test-guest slots each,
//!   all spare at the start (each sample restarts the hosts, whose slots then boot their
//!   default image again): from the `PUT /v1/pool` to the first `GET /v1/pool` (polled
//!   every 10 ms) that shows every role at its count and nothing in flight;
//! * repurpose latency of a test-kernel image: one transaction `repurpose` (stream the
//!   image from the library, check its SHA-256, boot, wait for the guest's registration)
//!   from `POST /v1/transactions` to its answer, alternating between two images so that
//!   each is a real change; and the host's own split into fetch and boot-to-registration.
//!
//! Run with `cargo bench --bench pool`. Needs /dev/kvm and the NATS server
//! `fixtures/ensure-nats.sh` installs.

#[path = "../tests/fleet_harness/mod.rs"]
mod fleet_harness;

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use fleet_harness::{guest, wait_for, Fleet, Host};
use serde_json::{json, Value};

const POOL: &str = "pool_tick_ms = 200\nmin_dwell_ms = 1000\nregister_timeout_ms = 30000\n";

/// Adds the test kernel with `tag` appended (a distinct image) for `role`: its digest.
fn add_image(f: &Fleet, role: &str, tag: &str) -> String {
    let mut bytes = ambulance_test_kernel::ELF.to_vec();
    bytes.extend_from_slice(format!("\nambulance-role-image:{tag}\n").as_bytes());
    let p = f.path().join(format!("{tag}.elf"));
    std::fs::write(&p, bytes).unwrap();
    let out = f.cli(&[
        "image",
        "add",
        role,
        p.to_str().unwrap(),
        "--cmdline",
        "fault=none",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn slots() -> String {
    format!(
        "{}{}",
        guest("s1", "fault=none", "restart", ""),
        guest("s2", "fault=none", "restart", "")
    )
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn convergence(c: &mut Criterion) {
    if !ambulance_testkit::kvm() {
        return;
    }
    let Some(f) = Fleet::start(POOL) else { return };
    add_image(&f, "web", "web");
    add_image(&f, "batch", "batch");
    let mut hosts: Vec<Host> = (1..=3)
        .map(|i| f.host(&format!("host-{i}"), &slots()))
        .collect();
    let mut all = Vec::new();
    let mut repurposings = 0u64;
    // Every host back to all-spare: the pool emptied, each host restarted.
    let reset = |hosts: &mut Vec<Host>| {
        let r = f.call(
            "PUT",
            "/v1/pool",
            Some(r#"{"desired": {"web": 0, "batch": 0}}"#),
            "application/json",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        for h in hosts.iter_mut() {
            h.proc.stop();
            let (name, config, socket) = (h.name.clone(), h.config.clone(), h.socket.clone());
            *h = f.spawn_host_with(&name, &name, &config, &socket);
        }
        wait_for(Duration::from_secs(120), "six spares", || {
            let p = f.json("/v1/pool");
            (p["spare"] == 6 && p["in_flight"].as_array().is_some_and(|v| v.is_empty()))
                .then_some(())
        });
    };
    let mut g = c.benchmark_group("pool");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(30));
    g.bench_function(
        "pool set web=2 batch=1 -> converged, 3 hosts x 2 slots",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    reset(&mut hosts);
                    let before = f.json("/v1/pool")["started"].as_u64().unwrap();
                    let t = Instant::now();
                    let r = f.call(
                        "PUT",
                        "/v1/pool",
                        Some(r#"{"desired": {"web": 2, "batch": 1}}"#),
                        "application/json",
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                    let p = wait_for(Duration::from_secs(120), "convergence", || {
                        let p = f.json("/v1/pool");
                        (p["converged"] == true
                            && p["actual"]["web"] == 2
                            && p["actual"]["batch"] == 1)
                            .then_some(p)
                    });
                    let d = t.elapsed();
                    repurposings += p["started"].as_u64().unwrap() - before;
                    all.push(d);
                    total += d;
                }
                total
            })
        },
    );
    g.finish();
    let n = all.len();
    println!(
        "pool set web=2 batch=1 -> converged (3 hosts x 2 slots, from all spare): median {} ms, \
         p90 {} ms, min {} ms, max {} ms over {n} runs ({repurposings} repurposings, {:.1} per run)",
        pct(&mut all, 0.5).as_millis(),
        pct(&mut all, 0.9).as_millis(),
        all[0].as_millis(),
        all[n - 1].as_millis(),
        repurposings as f64 / n as f64
    );
}

fn repurpose(c: &mut Criterion) {
    if !ambulance_testkit::kvm() {
        return;
    }
    let Some(f) = Fleet::start(POOL) else { return };
    let images = [add_image(&f, "web", "a"), add_image(&f, "web", "b")];
    let size = ambulance_test_kernel::ELF.len();
    let _h = f.host("host-1", &guest("s1", "fault=none", "restart", ""));
    let mut k = 0usize;
    let (mut wall, mut fetch, mut boot) = (Vec::new(), Vec::new(), Vec::new());
    let mut one = || {
        k += 1;
        let body = json!({
            "host": "host-1",
            "instructions": [{"op": "repurpose", "guest": "s1", "role": "web", "digest": images[k % 2]}],
        })
        .to_string();
        let t = Instant::now();
        let r = f.call("POST", "/v1/transactions", Some(&body), "application/json");
        let d = t.elapsed();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], "ok", "{v}");
        let out = &v["result"]["steps"][0]["output"];
        fetch.push(Duration::from_millis(out["fetch_ms"].as_u64().unwrap()));
        boot.push(Duration::from_millis(out["register_ms"].as_u64().unwrap()));
        wall.push(d);
        d
    };
    let mut g = c.benchmark_group("pool");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    g.bench_function(
        "repurpose a slot: fetch + check + boot to registration",
        |b| b.iter_custom(|iters| (0..iters).map(|_| one()).sum()),
    );
    g.finish();
    let n = wall.len();
    println!(
        "repurpose latency, test-kernel image of {size} bytes, 32 MiB 1 vCPU guest: transaction \
         median {} ms, p90 {} ms over {n}; on the host: fetch + SHA-256 median {} ms, boot to \
         registration median {} ms",
        pct(&mut wall, 0.5).as_millis(),
        pct(&mut wall, 0.9).as_millis(),
        pct(&mut fetch, 0.5).as_millis(),
        pct(&mut boot, 0.5).as_millis(),
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wanted("converge") {
        convergence(&mut c);
    }
    if wanted("repurpose") {
        repurpose(&mut c);
    }
    c.final_summary();
}
