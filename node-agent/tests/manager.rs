#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The SVID manager against a fake signer: batch signing, rotation before expiry, serving cached SVIDs
//! while the server is down, entry removal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sigil_agent::manager::{self, BATCH_SIZE, Command};
use sigil_agent::metrics::Metrics;
use sigil_agent::state::Snapshot;
use sigil_agent::testing::{FakeSigner, TestCa};
use sigil_core::SpiffeId;
use sigil_proto::agent as pb;
use sigil_proto::types as tpb;
use tokio::sync::watch;

fn pb_entry(id: &str, spiffe: &str) -> tpb::Entry {
    tpb::Entry {
        id: id.into(),
        spiffe_id: spiffe.into(),
        parent_id: "spiffe://example.org/spire/agent/join_token/t".into(),
        selectors: vec![tpb::Selector { r#type: "unix".into(), value: "uid:1000".into() }],
        ..Default::default()
    }
}

fn pb_bundle(ca: &TestCa) -> tpb::Bundle {
    let b = ca.bundle();
    tpb::Bundle {
        trust_domain: b.trust_domain.name().into(),
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: vec![],
        sequence_number: 1,
        refresh_hint: 0,
    }
}

async fn wait_for(rx: &mut watch::Receiver<Arc<Snapshot>>, what: &str, f: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let s = rx.borrow_and_update().clone();
            if f(&s) {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn setup(ttl: i64, n: usize) -> (Arc<FakeSigner>, manager::ManagerHandle, pb::SyncEntriesUpdate) {
    let ca = TestCa::new("example.org").unwrap();
    let bundle = pb_bundle(&ca);
    let signer = Arc::new(FakeSigner::new(ca, ttl));
    let mut upserted = vec![];
    for i in 0..n {
        let id = format!("e{i}");
        let spiffe = format!("spiffe://example.org/w{i}");
        signer.add_entry(&id, &SpiffeId::new(&spiffe).unwrap());
        upserted.push(pb_entry(&id, &spiffe));
    }
    let (handle, _task) = manager::spawn(signer.clone(), None, Arc::new(Metrics::new()));
    let first = pb::SyncEntriesUpdate {
        full_snapshot: true,
        upserted,
        bundle: Some(bundle),
        federated_bundles_changed: true,
        ..Default::default()
    };
    (signer, handle, first)
}

#[tokio::test]
async fn signs_all_entries_in_batches() {
    let n = BATCH_SIZE * 2 + 5;
    let (signer, handle, first) = setup(3600, n);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    let snap = wait_for(&mut rx, "all SVIDs", |s| s.svids.len() == n).await;
    assert_eq!(signer.calls.load(Ordering::SeqCst), 3, "ceil({n}/{BATCH_SIZE}) batch calls");
    let s = &snap.svids["e7"];
    assert_eq!(s.spiffe_id.as_str(), "spiffe://example.org/w7");
    assert!(s.rotate_at > s.not_before && s.rotate_at < s.not_after);
    assert!(snap.pending.is_empty());
}

#[tokio::test]
async fn removed_entries_drop_their_svids() {
    let (_signer, handle, first) = setup(3600, 2);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    wait_for(&mut rx, "SVIDs", |s| s.svids.len() == 2).await;
    handle.send(Command::Sync(Box::new(pb::SyncEntriesUpdate {
        removed_entry_ids: vec!["e0".into()],
        ..Default::default()
    })));
    let snap = wait_for(&mut rx, "removal", |s| s.entries.len() == 1).await;
    assert_eq!(snap.svids.keys().map(|k| &**k).collect::<Vec<_>>(), vec!["e1"]);
}

#[tokio::test]
async fn rotates_before_expiry_and_keeps_serving_while_server_is_down() {
    // The test CA backdates NotBefore by 10 s; rotation is at half the lifetime left at receipt: about
    // 3 s (+-0.3 s) after issue, well before expiry at 6 s.
    let (signer, handle, first) = setup(6, 1);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    let s1 = wait_for(&mut rx, "first SVID", |s| s.svids.contains_key("e0")).await.svids["e0"].clone();
    let s2 = wait_for(&mut rx, "rotation", |s| s.svids.get("e0").is_some_and(|n| n.not_after > s1.not_after)).await;
    let s2 = s2.svids["e0"].clone();
    let waited = manager::now_unix() - (s1.not_after - 6);
    assert!((2..=5).contains(&waited), "rotated after about half the lifetime: {waited}s");
    assert!(manager::now_unix() < s1.not_after, "rotated before the old SVID expired");
    assert_ne!(s2.key_pkcs8, s1.key_pkcs8, "a new key per rotation");

    // Server down: the cached SVID stays until it expires, and the manager retries with backoff.
    signer.down.store(true, Ordering::SeqCst);
    let calls_before = signer.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let now = manager::now_unix();
    let snap = handle.snapshot();
    if now < s2.not_after {
        assert_eq!(snap.svids.get("e0").map(|s| s.not_after), Some(s2.not_after), "cached SVID still served");
    }
    let calls_down = signer.calls.load(Ordering::SeqCst) - calls_before;
    assert!((1..=4).contains(&calls_down), "retries with backoff, not a busy loop: {calls_down}");

    // Server back: a fresh SVID arrives unaided.
    signer.down.store(false, Ordering::SeqCst);
    handle.send(Command::Retry);
    wait_for(&mut rx, "recovery", |s| s.svids.get("e0").is_some_and(|n| n.not_after > s2.not_after)).await;
}

#[tokio::test]
async fn node_alias_entries_get_no_svid() {
    let (_signer, handle, mut first) = setup(3600, 1);
    let mut alias = pb_entry("alias", "spiffe://example.org/node-group");
    alias.parent_id = "spiffe://example.org/spire/server".into();
    first.upserted.push(alias);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    let snap = wait_for(&mut rx, "SVID", |s| s.svids.contains_key("e0")).await;
    assert_eq!(snap.entries.keys().map(|k| &**k).collect::<Vec<_>>(), vec!["e0"]);
}

#[tokio::test]
async fn changed_spiffe_id_is_resigned() {
    let (signer, handle, first) = setup(3600, 1);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    wait_for(&mut rx, "SVID", |s| s.svids.contains_key("e0")).await;
    signer.add_entry("e0", &SpiffeId::new("spiffe://example.org/renamed").unwrap());
    handle.send(Command::Sync(Box::new(pb::SyncEntriesUpdate {
        upserted: vec![pb_entry("e0", "spiffe://example.org/renamed")],
        ..Default::default()
    })));
    wait_for(&mut rx, "re-signed SVID", |s| {
        s.svids.get("e0").is_some_and(|n| n.spiffe_id.as_str() == "spiffe://example.org/renamed")
    })
    .await;
}

#[tokio::test]
async fn jwt_svids_are_cached_per_audience_set() {
    let (_signer, handle, first) = setup(3600, 1);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    wait_for(&mut rx, "SVID", |s| s.svids.contains_key("e0")).await;
    let a = handle.jwt_svid("e0", &["x".into(), "y".into()]).await.unwrap();
    let b = handle.jwt_svid("e0", &["y".into(), "x".into()]).await.unwrap();
    assert_eq!(a, b, "same audience set -> cached token");
    let c = handle.jwt_svid("e0", &["x".into()]).await.unwrap();
    assert_ne!(a, c);
    assert!(handle.jwt_svid("unknown", &["x".into()]).await.is_err());
}

#[tokio::test]
async fn a_delta_signs_only_what_changed() {
    let (signer, handle, first) = setup(3600, 3);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    let before = wait_for(&mut rx, "SVIDs", |s| s.svids.len() == 3).await;
    let earliest = before.svids.values().map(|s| s.not_after).min();
    assert_eq!(before.next_expiry, earliest, "the snapshot carries its earliest SVID expiry");
    let calls = signer.calls.load(Ordering::SeqCst);
    // e1 again, unchanged, and a new e3.
    signer.add_entry("e3", &SpiffeId::new("spiffe://example.org/w3").unwrap());
    handle.send(Command::Sync(Box::new(pb::SyncEntriesUpdate {
        upserted: vec![pb_entry("e1", "spiffe://example.org/w1"), pb_entry("e3", "spiffe://example.org/w3")],
        ..Default::default()
    })));
    let after = wait_for(&mut rx, "the new SVID", |s| s.svids.contains_key("e3")).await;
    assert_eq!(signer.calls.load(Ordering::SeqCst), calls + 1, "one batch call");
    for id in ["e0", "e1", "e2"] {
        assert!(Arc::ptr_eq(&before.svids[id], &after.svids[id]), "{id} kept its SVID");
    }
}

#[tokio::test]
async fn entries_refused_while_the_server_was_down_are_signed_when_it_is_back() {
    let (signer, handle, first) = setup(3600, 2);
    signer.down.store(true, Ordering::SeqCst);
    let mut rx = handle.subscribe();
    handle.send(Command::Sync(Box::new(first)));
    wait_for(&mut rx, "the synced snapshot", |s| s.synced).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(signer.calls.load(Ordering::SeqCst) >= 1, "it tried");
    assert!(handle.snapshot().svids.is_empty());
    // Back up, and no Retry command: the manager's own backoff brings the SVIDs.
    signer.down.store(false, Ordering::SeqCst);
    let snap = wait_for(&mut rx, "SVIDs after the backoff", |s| s.svids.len() == 2).await;
    assert_eq!(snap.next_expiry, snap.svids.values().map(|s| s.not_after).min());
}
