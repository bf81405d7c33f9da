//! `cargo build --release --bins && SIGIL_GO_WORKLOAD=... cargo bench -p sigil-interop --bench federation`
//! (SIGIL_GO_WORKLOAD: `go build -o X ./cmd/workload` in e2e/interop/go). Issue 12, benchmark 7, on the real
//! binaries (two servers and an agent on loopback):
//! - a change of b.test's own bundle -> visible on a.test's workload's open FetchX509Bundles stream (go-spiffe
//!   WatchX509Bundles), p50/p99 over SIGIL_FED_BENCH_CHANGES (default 20) changes, refresh hint 1 s. The
//!   changes are b.test's own CA rotating (ca_ttl 1m, the least the server takes): each rotation publishes a
//!   prepared CA and later drops the expired one. The change time is when b.test's `bundle show` first shows
//!   it (polled every 50 ms, so figures may be up to ~50 ms + one CLI call low).
//! - requests/s of b.test's bundle endpoint with the server pinned to one core (`taskset -c 0`) and the
//!   go-spiffe-written load generator (keep-alive HTTPS, SIGIL_FED_BENCH_CONNS connections, default 8) on
//!   the other. Debug binaries (`cargo build --bench federation`, run the binary) measure the same but slower.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fed_common/mod.rs"]
mod fed_common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, ok, run, wait_for};
use fed_common::*;
use serde_json::Value;

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let changes = env_or("SIGIL_FED_BENCH_CHANGES", 20);
    let conns = env_or("SIGIL_FED_BENCH_CONNS", 8);
    let (a_bep, b_bep) = (free_port(), free_port());
    let b = Domain::start(B, "ca_ttl = \"1m\"\n", &spiffe_endpoint(b_bep, "1s"));
    let mut a = Domain::start(A, "", &format!("{}{}", spiffe_endpoint(a_bep, "1s"), federates_spiffe(B, b_bep)));
    a.bundle_set(&b);
    a.register(A_WEB, B, None);
    a.start_agent();
    let doc = b.bundle();
    wait_for("a.test's workload given b.test's bundle", Duration::from_secs(60), || sees(&a, A_WEB, B, &doc));

    // Throughput first (no rotation under way yet at this point of b.test's first CA's life).
    let server_pid = b.server.as_ref().unwrap().id().to_string();
    ok(run(Command::new("taskset").args(["-a", "-p", "-c", "0", &server_pid])));
    let mut load = Command::new("taskset");
    load.args(["-c", "1"]).arg(go_workload()).args([
        "bundleload",
        "-id",
        "spiffe://b.test/spire/server",
        "-url",
        &url(b_bep),
        "-for",
        "10s",
        "-conns",
        &conns.to_string(),
    ]);
    let l: Value = serde_json::from_str(&ok(run(&mut load))).unwrap();
    println!(
        "bundle endpoint (https_spiffe, server on one core, {} keep-alive connections, 10 s): {:.0} requests/s ({} ok, {} errors)",
        l["connections"],
        l["per_second"].as_f64().unwrap(),
        l["requests"],
        l["errors"]
    );
    ok(run(Command::new("taskset").args(["-a", "-p", "-c", "0-1024", &server_pid])));

    // Bundle change latency (SIGIL_FED_BENCH_CHANGES=0: throughput only).
    if changes == 0 {
        return;
    }
    let (_watch, updates) = spawn_lines(a.go(&["watchbundles", "-id", A_WEB, "-for", "3600s"]));
    let key = format!("spiffe://{B}");
    let mut last = authorities(&b.bundle()).0;
    let mut a_view: Vec<String> = vec![];
    let mut lat: Vec<f64> = vec![];
    let limit = Instant::now() + Duration::from_secs(60 * (changes as u64 + 2));
    while lat.len() < changes {
        assert!(Instant::now() < limit, "only {} changes of b.test's bundle", lat.len());
        std::thread::sleep(Duration::from_millis(50));
        let now_doc = b.bundle();
        let at = unix_now();
        let cur = authorities(&now_doc).0;
        if cur == last {
            continue;
        }
        last = cur.clone();
        // Wait for a.test's stream to carry exactly this X.509 bundle for b.test.
        let seen = loop {
            if a_view == cur {
                break None; // already there before the poll saw it
            }
            let (t, line) = updates.recv_timeout(Duration::from_secs(30)).expect("a.test's stream update");
            let v: Value = serde_json::from_str(&line).unwrap();
            a_view = strings(&v["bundles"][&key]);
            if a_view == cur {
                break Some(t.max(v["received"].as_f64().unwrap()));
            }
        };
        let ms = seen.map_or(0.0, |t| ((t - at) * 1000.0).max(0.0));
        println!(
            "change {}: {} X.509 authorities in b.test, at a.test's workload after {ms:.0} ms",
            lat.len() + 1,
            cur.len()
        );
        lat.push(ms);
    }
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    println!(
        "b.test bundle change -> a.test FetchX509Bundles stream (hint 1 s, {} changes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
}
