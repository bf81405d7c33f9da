//! `cargo bench -p sigil-server --bench sync_scale [-- 1000 10000 100000]`: issue 18 (1). With N entries in
//! the store, all authorized for one connected agent, 100 single-entry creates one after another: the
//! server's CPU per create (this process's user + system time, which also holds the bench's own gRPC
//! client and the agent-side stream reader), the create -> agent SyncEntries stream latency p50/p99, and
//! this process's RSS with the N entries before the agent connects (the server's index and datastore, and a
//! small admin client) and after its full snapshot (the encode buffer and the client's decoded copy too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../e2e/interop/benches/support/procstat.rs"]
mod procstat;

use std::time::{Duration, Instant};

use common::*;
use sigil_proto::admin::{self as apb, entries_client::EntriesClient};
use sigil_proto::types as tpb;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    procstat::cpu_seconds(std::process::id())
}

fn rss_mib() -> f64 {
    procstat::rss_kib(std::process::id()) as f64 / 1024.0
}

fn entry(i: usize, parent: &str) -> tpb::Entry {
    tpb::Entry {
        spiffe_id: format!("spiffe://example.org/scale/w{i}"),
        parent_id: parent.into(),
        selectors: vec![tpb::Selector { r#type: "k8s".into(), value: format!("pod-uid:{i:08}") }],
        ..Default::default()
    }
}

async fn run(n: usize) {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let mut admin = EntriesClient::new(s.admin().await);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let entries = chunk.iter().map(|&i| entry(i, agent.id.as_str())).collect();
        let r = admin.batch_create_entry(apb::BatchCreateEntryRequest { entries }).await.unwrap().into_inner();
        let bad: Vec<_> = r.results.iter().filter(|r| r.status.as_ref().is_none_or(|s| s.code != 0)).take(3).collect();
        assert!(bad.is_empty(), "{bad:?}");
    }
    let rss_store = rss_mib();
    let mut stream = agent.sync().await;
    let first = next_update(&mut stream).await;
    assert_eq!(first.upserted.len(), n);
    drop(first);
    let rss = rss_mib();
    let cpu0 = cpu_seconds();
    let mut lat = vec![];
    for i in 0..100 {
        let t0 = Instant::now();
        let r = admin
            .batch_create_entry(apb::BatchCreateEntryRequest { entries: vec![entry(n + i, agent.id.as_str())] })
            .await
            .unwrap()
            .into_inner();
        let id = r.results[0].entry.as_ref().unwrap().id.clone();
        loop {
            let upd = next_update(&mut stream).await;
            if upd.upserted.iter().any(|u| u.id == id) {
                break;
            }
        }
        lat.push(t0.elapsed());
    }
    let cpu = cpu_seconds() - cpu0;
    lat.sort();
    println!(
        "{n:>7} entries: CPU per single-entry create {:.2} ms; create -> agent stream p50 {:.2} ms p99 {:.2} ms; process RSS with them {rss_store:.0} MiB before the agent connects, {rss:.0} MiB after its full snapshot",
        cpu * 1000.0 / 100.0,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    );
    s.server.shutdown().await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 10_000, 100_000] } else { sizes };
    for n in sizes {
        run(n).await;
    }
}
