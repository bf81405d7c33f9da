//! `cargo build --release --bins && cargo bench -p sigil-interop --bench workload_api`
//! Issue 3 figures, on the real release binaries (server + agent processes on loopback):
//! - entry create on the server -> the workload's open FetchX509SVID stream delivers the new SVID: 200 single
//!   changes (50 ms apart), then 200 creates back to back for the same workload
//! - FetchX509SVID first response with a warm cache (10,000 calls, one connection)
//! - agent RSS with 100 workloads' SVIDs cached
//! - issue 18 (2): 1,000 single-entry creates for one workload (one BatchCreateEntry call each, in a row, as a
//!   script of `entry create` does) while it watches FetchX509SVID: messages and bytes it receives, agent
//!   CPU, burst time (SPIRE v1.13.3 on this machine: ~60 messages, ~110 MB)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;

use std::time::{Duration, Instant};

use common::*;
use procstat::{cpu_seconds, rss_kib};
use sigil_proto::admin::{self as apb, entries_client::EntriesClient};
use sigil_proto::types as tpb;
use sigil_proto::workload::{X509svidRequest, X509svidResponse, spiffe_workload_api_client::SpiffeWorkloadApiClient};

async fn uds(path: std::path::PathBuf) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap()
}

fn req() -> tonic::Request<X509svidRequest> {
    let mut r = tonic::Request::new(X509svidRequest {});
    r.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

/// An entry for workloads running as `uid` under the agent.
fn uid_entry(spiffe_id: impl Into<String>, agent_id: &str, uid: u32) -> tpb::Entry {
    tpb::Entry {
        spiffe_id: spiffe_id.into(),
        parent_id: agent_id.into(),
        selectors: vec![tpb::Selector { r#type: "unix".into(), value: format!("uid:{uid}") }],
        ..Default::default()
    }
}

/// Creates one entry (one BatchCreateEntry call, as `entry create` makes); returns its ID.
async fn create_one(entries: &mut EntriesClient<tonic::transport::Channel>, entry: tpb::Entry) -> String {
    let r =
        entries.batch_create_entry(apb::BatchCreateEntryRequest { entries: vec![entry] }).await.unwrap().into_inner();
    assert_eq!(r.results[0].status.as_ref().unwrap().code, 0);
    r.results[0].entry.as_ref().unwrap().id.clone()
}

/// Reads the stream until a message satisfies `done`.
async fn until(stream: &mut tonic::Streaming<X509svidResponse>, done: impl Fn(&X509svidResponse) -> bool) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        if done(&msg) {
            return;
        }
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("binaries: {}", bin("sigil-agent").display());
    let s = tokio::task::spawn_blocking(|| stack(None)).await.unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let mut entries = EntriesClient::new(uds(s.server_sock()).await);
    let mut workload = SpiffeWorkloadApiClient::new(uds(s.agent_sock()).await);

    // 1a. a single change: entry create -> its SVID on the open stream, for a workload with its usual one or
    //     two SVIDs; each create comes 50 ms after the last message (changes apart, as single changes are),
    //     then the entry is deleted again.
    let mut stream = workload.fetch_x509svid(req()).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    let mut single = vec![];
    for i in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let id = format!("spiffe://{TD}/single/e{i}");
        let t0 = Instant::now();
        let entry_id = create_one(&mut entries, uid_entry(id.clone(), &s.agent_id, uid)).await;
        until(&mut stream, |m| m.svids.iter().any(|sv| sv.spiffe_id == id)).await;
        single.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
        entries.batch_delete_entry(apb::BatchDeleteEntryRequest { ids: vec![entry_id] }).await.unwrap();
        until(&mut stream, |m| !m.svids.iter().any(|sv| sv.spiffe_id == id)).await;
    }
    single.sort();
    println!(
        "single change: entry create -> workload FetchX509SVID stream has the new SVID (200 changes): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&single, 0.5),
        pct(&single, 0.99),
        single.last().unwrap().as_secs_f64() * 1000.0
    );

    // 1b. the same 200 creates back to back, each as soon as the last one arrived, all for this workload (it
    //     ends with 201 SVIDs): a burst, paced by message size (up to ~50 ms between messages at the end).
    let mut lat = vec![];
    for i in 0..200 {
        let id = format!("spiffe://{TD}/bench/e{i}");
        let t0 = Instant::now();
        create_one(&mut entries, uid_entry(id.clone(), &s.agent_id, uid)).await;
        until(&mut stream, |m| m.svids.iter().any(|sv| sv.spiffe_id == id)).await;
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "back-to-back creates for one workload (it ends with 201 SVIDs): entry create -> stream has it: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().unwrap().as_secs_f64() * 1000.0
    );
    drop(stream);

    // 2. warm FetchX509SVID first response. Use a fresh set with the 200 bench entries removed, so the
    //    response holds the workload's single SVID as a typical workload's would.
    let ids: Vec<String> = entries
        .list_entries(apb::ListEntriesRequest {
            filter: Some(apb::EntryFilter { by_parent_id: s.agent_id.clone(), ..Default::default() }),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.spiffe_id.contains("/bench/"))
        .map(|e| e.id)
        .collect();
    entries.batch_delete_entry(apb::BatchDeleteEntryRequest { ids }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..200 {
        let mut st = workload.fetch_x509svid(req()).await.unwrap().into_inner();
        st.message().await.unwrap().unwrap();
    }
    let mut first = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let t0 = Instant::now();
        let mut st = workload.fetch_x509svid(req()).await.unwrap().into_inner();
        let msg = st.message().await.unwrap().unwrap();
        first.push(t0.elapsed());
        assert_eq!(msg.svids.len(), 1);
    }
    first.sort();
    println!(
        "FetchX509SVID first response, warm cache (10,000 calls): p50 {:.3} ms  p99 {:.3} ms",
        pct(&first, 0.5),
        pct(&first, 0.99)
    );

    // 3. agent RSS with 100 workloads' SVIDs cached (100 entries, each with its own key and SVID).
    let agent_pid = s.agent.as_ref().unwrap().id();
    let before = rss_kib(agent_pid);
    let batch: Vec<tpb::Entry> = (0..100)
        .map(|i| tpb::Entry {
            spiffe_id: format!("spiffe://{TD}/rss/w{i}"),
            parent_id: s.agent_id.clone(),
            selectors: vec![tpb::Selector { r#type: "unix".into(), value: format!("uid:{}", 100_000 + i) }],
            ..Default::default()
        })
        .collect();
    entries.batch_create_entry(apb::BatchCreateEntryRequest { entries: batch }).await.unwrap();
    // Done when workloads running as the first and the last of those uids get their SVIDs.
    make_world_reachable(s.agent_sock().parent().unwrap());
    for uid in [100_000, 100_099] {
        let sock = s.agent_sock();
        wait_for("the agent to serve the 100 new workloads", Duration::from_secs(60), || {
            std::process::Command::new("setpriv")
                .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
                .arg(bin("sigil-agent"))
                .args(["api", "fetch", "x509", "-socketPath"])
                .arg(&sock)
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = rss_kib(agent_pid);
    println!(
        "agent RSS: {before} KiB with 1 SVID cached, {last} KiB with 101 SVIDs cached ({:.1} MiB)",
        last as f64 / 1024.0
    );

    // 4. a burst of 1,000 single-entry creates for one workload that watches FetchX509SVID.
    let mut stream = workload.fetch_x509svid(req()).await.unwrap().into_inner();
    let have = stream.message().await.unwrap().unwrap().svids.len();
    let want = have + 1000;
    let watcher = tokio::spawn(async move {
        let (mut messages, mut bytes) = (0u64, 0u64);
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), stream.message()).await.unwrap().unwrap().unwrap();
            messages += 1;
            bytes += prost::Message::encoded_len(&m) as u64;
            if m.svids.len() >= want {
                return (messages, bytes);
            }
        }
    });
    let cpu0 = cpu_seconds(agent_pid);
    let t0 = Instant::now();
    for i in 0..1000 {
        create_one(&mut entries, uid_entry(format!("spiffe://{TD}/burst/e{i}"), &s.agent_id, uid)).await;
    }
    let creates = t0.elapsed();
    let (messages, bytes) = watcher.await.unwrap();
    let done = t0.elapsed();
    let cpu = cpu_seconds(agent_pid) - cpu0;
    println!(
        "burst of 1,000 single-entry creates for one watching workload: {messages} messages, {:.1} MB to it; \
         agent CPU {cpu:.2} s; creates took {:.2} s, the workload had all {want} SVIDs after {:.2} s",
        bytes as f64 / 1e6,
        creates.as_secs_f64(),
        done.as_secs_f64()
    );

    churn(&mut entries, &mut workload, &s.agent_id, agent_pid, uid).await;
}

/// Issue 18 (3): the agent's RSS with the workload's 1,000+ SVIDs, then after each of 6 cycles of 200
/// single-entry creates and 200 deletes for it (the same SVID count after each cycle).
async fn churn(
    entries: &mut EntriesClient<tonic::transport::Channel>,
    workload: &mut SpiffeWorkloadApiClient<tonic::transport::Channel>,
    agent_id: &str,
    agent_pid: u32,
    uid: u32,
) {
    let mut stream = workload.fetch_x509svid(req()).await.unwrap().into_inner();
    let base = stream.message().await.unwrap().unwrap().svids.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(agent_pid);
    let mut after = vec![];
    for cycle in 0..6 {
        let mut ids = vec![];
        for i in 0..200 {
            ids.push(create_one(entries, uid_entry(format!("spiffe://{TD}/churn/c{cycle}/e{i}"), agent_id, uid)).await);
        }
        until(&mut stream, |m| m.svids.len() == base + 200).await;
        for id in ids {
            entries.batch_delete_entry(apb::BatchDeleteEntryRequest { ids: vec![id] }).await.unwrap();
        }
        until(&mut stream, |m| m.svids.len() == base).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        after.push(rss_kib(agent_pid));
    }
    let last = *after.last().unwrap();
    println!(
        "agent RSS with {base} SVIDs cached: {:.1} MiB; after each of 6 cycles of 200 creates + 200 deletes: {} MiB \
         (last {:+.0}% of before)",
        before as f64 / 1024.0,
        after.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(", "),
        (last as f64 / before as f64 - 1.0) * 100.0
    );
}
