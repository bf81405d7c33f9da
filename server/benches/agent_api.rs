//! `cargo bench -p sigil-server --bench agent_api`: figures for issue acceptance 6 and 7.
//! - push sync: `entry create` on the admin API -> the entry arrives on an agent's SyncEntries stream;
//!   p50/p99 over 200 entries, measured from the start of the create call (includes its fsync).
//! - X509-SVID signing through the agent API (batches of 100 CSRs) vs the raw P-256 signing rate of `ring`
//!   on this machine (single thread and all cores), and their ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use sigil_proto::agent as pb;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn raw_p256_rate(threads: usize, dur: Duration) -> f64 {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let pkcs8 = pkcs8.as_ref().to_vec();
            std::thread::spawn(move || {
                let rng = ring::rand::SystemRandom::new();
                let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).unwrap();
                let msg = [7u8; 300]; // about the size of a leaf TBSCertificate
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < dur {
                    std::hint::black_box(key.sign(&rng, &msg).unwrap());
                    n += 1;
                }
                n as f64 / start.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list tests; there are none.
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("machine: {cores} cores");
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();

    // --- push sync latency ---
    let mut stream = agent.sync().await;
    let first = next_update(&mut stream).await;
    assert!(first.full_snapshot);
    let mut from_call = vec![];
    let mut from_ack = vec![];
    for i in 0..200 {
        let t0 = Instant::now();
        let e = s
            .create_entry(&format!("spiffe://example.org/bench/{i}"), agent.id.as_str(), &[&format!("unix:uid:{i}")])
            .await;
        let acked = Instant::now();
        loop {
            let upd = next_update(&mut stream).await;
            if upd.upserted.iter().any(|u| u.id == e.id) {
                break;
            }
        }
        let got = Instant::now();
        from_call.push(got - t0);
        from_ack.push(got.saturating_duration_since(acked));
    }
    from_call.sort();
    from_ack.sort();
    println!(
        "push sync (entry create -> agent stream), 200 entries: from create call p50 {:.2} ms p99 {:.2} ms max {:.2} ms; from create ack p50 {:.3} ms p99 {:.3} ms",
        ms(pct(&from_call, 0.5)),
        ms(pct(&from_call, 0.99)),
        ms(from_call[from_call.len() - 1]),
        ms(pct(&from_ack, 0.5)),
        ms(pct(&from_ack, 0.99)),
    );

    // --- batch signing throughput ---
    let entries: Vec<String> = first.upserted.iter().map(|e| e.id.clone()).collect();
    let mut ids = entries;
    // The 200 bench entries are authorized too; use 100 of them.
    let all = s.server.state.authorized_entries(&agent.id);
    ids.extend(all.iter().map(|e| e.id.clone()));
    ids.sort();
    ids.dedup();
    ids.truncate(100);
    assert_eq!(ids.len(), 100);
    let csrs: Vec<Vec<u8>> = (0..100).map(|_| csr().0).collect();
    let params: Vec<pb::batch_new_x509_svid_request::Param> = ids
        .iter()
        .zip(&csrs)
        .map(|(id, csr)| pb::batch_new_x509_svid_request::Param { entry_id: id.clone(), csr: csr.clone() })
        .collect();
    // Warm up.
    agent.client.batch_new_x509_svid(pb::BatchNewX509SvidRequest { params: params.clone() }).await.unwrap();
    let batches = 30;
    let start = Instant::now();
    let mut signed = 0;
    for _ in 0..batches {
        let resp = agent
            .client
            .batch_new_x509_svid(pb::BatchNewX509SvidRequest { params: params.clone() })
            .await
            .unwrap()
            .into_inner();
        signed += resp.results.iter().filter(|r| r.code == 0).count();
    }
    let rate = signed as f64 / start.elapsed().as_secs_f64();
    assert_eq!(signed, batches * 100);

    // A server serves many agents: two agents with a batch in flight each, so transport and
    // authorization of one overlap the signing of the other.
    let mut second = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let mut second_ids = vec![];
    for i in 0..100 {
        let e = s
            .create_entry(&format!("spiffe://example.org/bench2/{i}"), second.id.as_str(), &[&format!("unix:uid:{i}")])
            .await;
        second_ids.push(e.id);
    }
    let params2: Vec<pb::batch_new_x509_svid_request::Param> = second_ids
        .iter()
        .zip(&csrs)
        .map(|(id, csr)| pb::batch_new_x509_svid_request::Param { entry_id: id.clone(), csr: csr.clone() })
        .collect();
    second.client.batch_new_x509_svid(pb::BatchNewX509SvidRequest { params: params2.clone() }).await.unwrap();
    let start = Instant::now();
    let (a, b) = tokio::join!(
        async {
            let mut n = 0;
            for _ in 0..batches {
                let r = agent
                    .client
                    .batch_new_x509_svid(pb::BatchNewX509SvidRequest { params: params.clone() })
                    .await
                    .unwrap();
                n += r.into_inner().results.iter().filter(|r| r.code == 0).count();
            }
            n
        },
        async {
            let mut n = 0;
            for _ in 0..batches {
                let r = second
                    .client
                    .batch_new_x509_svid(pb::BatchNewX509SvidRequest { params: params2.clone() })
                    .await
                    .unwrap();
                n += r.into_inner().results.iter().filter(|r| r.code == 0).count();
            }
            n
        }
    );
    assert_eq!(a + b, 2 * batches * 100);
    let rate2 = (a + b) as f64 / start.elapsed().as_secs_f64();
    let raw1 = raw_p256_rate(1, Duration::from_secs(2));
    let raw_all = raw_p256_rate(cores, Duration::from_secs(2));
    println!(
        "X509-SVID signing via agent API (batches of 100 CSRs, {batches} batches): {rate:.0} SVIDs/s with one batch in flight, {rate2:.0} SVIDs/s with two agents' batches in flight"
    );
    println!("raw P-256 ECDSA signing (ring): {raw1:.0} sig/s on 1 thread, {raw_all:.0} sig/s on {cores} threads");
    println!(
        "ratio (two in flight): {:.1}% of the single-thread raw rate, {:.1}% of the all-cores raw rate; (one in flight): {:.1}% / {:.1}%",
        100.0 * rate2 / raw1,
        100.0 * rate2 / raw_all,
        100.0 * rate / raw1,
        100.0 * rate / raw_all
    );
    s.server.shutdown().await;
}
