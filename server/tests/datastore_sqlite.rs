#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The SQLite datastore against a real database file in a temporary directory.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sigil_server::datastore::sqlite::SCHEMA_VERSION;
use sigil_server::datastore::{
    AttestedAgent, Datastore, DatastoreError, EntryFilter, JoinTokenOutcome, Page, SelectorMatch, SqliteDatastore,
    open_sqlite,
};

const AGENT: &str = "spiffe://example.org/spire/agent/join_token/abc";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

fn sels(items: &[&str]) -> Vec<Selector> {
    items.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

fn entry(spiffe: &str, parent: &str, selectors: &[&str]) -> RegistrationEntry {
    sigil_core::RegistrationEntry::new(id(spiffe), id(parent), sels(selectors))
}

/// An entry with every field set to a non-default value.
fn full_entry() -> RegistrationEntry {
    RegistrationEntry {
        id: String::new(),
        spiffe_id: id("spiffe://example.org/ns/prod/sa/web"),
        parent_id: id(AGENT),
        // Not sorted, on purpose: order must round-trip.
        selectors: sels(&["unix:uid:1000", "k8s:pod-label:app:web", "k8s:ns:prod"]),
        x509_svid_ttl: 3600,
        jwt_svid_ttl: 300,
        dns_names: vec!["web.prod.svc".into(), "*.web.example.org".into()],
        federates_with: vec![td("partner.org"), td("another.net")],
        admin: true,
        downstream: true,
        hint: "external".into(),
        entry_expiry: 4_102_444_800,
        store_svid: true,
        revision: 77,
        created_at: 12,
    }
}

fn agent(spiffe: &str) -> AttestedAgent {
    AttestedAgent {
        spiffe_id: id(spiffe),
        attestation_type: "join_token".into(),
        cert_serial: "0a1b2c".into(),
        cert_expires_at: 1_900_000_000,
        selectors: sels(&["k8s_psat:cluster:demo", "k8s_psat:agent_ns:spire"]),
        banned: false,
        created_at: 1_700_000_000,
        updated_at: 1_700_000_000,
        new_cert_serial: "0d0e".into(),
        new_cert_expires_at: 1_900_000_600,
    }
}

fn bundle(name: &str, sequence: u64, refresh: Option<u64>) -> Bundle {
    Bundle {
        trust_domain: td(name),
        x509_authorities: vec![vec![0x30, 0x82, 0x01, 0x00, 0xff], vec![], vec![0x30, 0x03, 0x02, 0x01, 0x00]],
        jwt_authorities: vec![
            JwtAuthority {
                key_id: "kid-1".into(),
                public_key_spki_der: vec![1, 2, 3, 0, 255],
                expires_at: 1_800_000_000,
            },
            JwtAuthority { key_id: "kid-2".into(), public_key_spki_der: vec![9; 91], expires_at: 0 },
        ],
        sequence,
        refresh_hint_secs: refresh,
    }
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("datastore.sqlite3")
}

async fn open(path: &Path) -> SqliteDatastore {
    SqliteDatastore::open(path).await.unwrap()
}

fn ids(entries: &[RegistrationEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn entry_crud_round_trip_with_all_fields() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let before = now();
    let given = full_entry();
    let created = ds.create_entry(given.clone()).await.unwrap();

    // Server-assigned fields.
    let uuid = uuid::Uuid::parse_str(&created.id).unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    // SPIRE's numbering: a new entry is at revision 0.
    assert_eq!(created.revision, 0);
    assert!(created.created_at >= before && created.created_at <= now(), "{}", created.created_at);
    // Everything else exactly as given.
    let expected = RegistrationEntry { id: created.id.clone(), revision: 0, created_at: created.created_at, ..given };
    assert_eq!(created, expected);
    assert_eq!(ds.get_entry(&created.id).await.unwrap(), Some(expected.clone()));
    assert_eq!(ds.all_entries().await.unwrap(), vec![expected.clone()]);

    // A client-chosen ID is kept.
    let mut custom = entry("spiffe://example.org/db", AGENT, &["unix:uid:5"]);
    custom.id = "my-entry/1".into();
    let custom = ds.create_entry(custom).await.unwrap();
    assert_eq!(custom.id, "my-entry/1");
    assert_eq!(ds.get_entry("my-entry/1").await.unwrap(), Some(custom.clone()));

    // Update replaces every client field; revision grows, created_at stays.
    let changed = RegistrationEntry {
        id: created.id.clone(),
        spiffe_id: id("spiffe://example.org/ns/prod/sa/web2"),
        parent_id: id("spiffe://example.org/spire/agent/join_token/other"),
        selectors: sels(&["unix:gid:7"]),
        x509_svid_ttl: 60,
        jwt_svid_ttl: 61,
        dns_names: vec!["x.example.org".into()],
        federates_with: vec![],
        admin: false,
        downstream: false,
        hint: "internal".into(),
        entry_expiry: 0,
        store_svid: false,
        revision: 999,
        created_at: 5,
    };
    let updated = ds.update_entry(changed.clone(), None).await.unwrap();
    assert_eq!(updated, RegistrationEntry { revision: 1, created_at: created.created_at, ..changed });
    assert_eq!(ds.get_entry(&created.id).await.unwrap(), Some(updated.clone()));
    // The selector index follows the update.
    let by_old =
        EntryFilter { by_selectors: Some((sels(&["unix:uid:1000"]), SelectorMatch::Any)), ..Default::default() };
    assert_eq!(ds.count_entries(&by_old).await.unwrap(), 0);
    let by_new =
        EntryFilter { by_selectors: Some((sels(&["unix:gid:7"]), SelectorMatch::Exact)), ..Default::default() };
    assert_eq!(ids(&ds.list_entries(&by_new, &Page::default()).await.unwrap().0), vec![created.id.clone()]);

    // Delete: per-ID results, the deleted entry or NotFound.
    let results = ds.delete_entries(&[created.id.clone(), "missing".into(), created.id.clone()]).await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], Ok(updated));
    assert!(matches!(results[1], Err(DatastoreError::NotFound(_))), "{:?}", results[1]);
    assert!(matches!(results[2], Err(DatastoreError::NotFound(_))), "{:?}", results[2]);
    assert_eq!(ds.get_entry(&created.id).await.unwrap(), None);
    assert_eq!(ds.all_entries().await.unwrap(), vec![custom]);
    assert_eq!(ds.count_entries(&by_new).await.unwrap(), 0);
}

#[tokio::test]
async fn invalid_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let no_selectors = entry("spiffe://example.org/web", AGENT, &[]);
    assert!(matches!(ds.create_entry(no_selectors).await, Err(DatastoreError::Invalid(_))));
    let mut bad_id = entry("spiffe://example.org/web", AGENT, &["unix:uid:1"]);
    bad_id.id = "has space".into();
    assert!(matches!(ds.create_entry(bad_id).await, Err(DatastoreError::Invalid(_))));
    let ok = ds.create_entry(entry("spiffe://example.org/web", AGENT, &["unix:uid:1"])).await.unwrap();
    let emptied = RegistrationEntry { selectors: vec![], ..ok.clone() };
    assert!(matches!(ds.update_entry(emptied, None).await, Err(DatastoreError::Invalid(_))));
    assert_eq!(ds.get_entry(&ok.id).await.unwrap(), Some(ok));
}

#[tokio::test]
async fn duplicate_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let first = ds.create_entry(entry("spiffe://example.org/web", AGENT, &["a:1", "b:2"])).await.unwrap();

    // Same SPIFFE ID, parent and selector set (any order, repeated): refused.
    for dup in [&["b:2", "a:1"][..], &["a:1", "b:2", "a:1"][..]] {
        let err = ds.create_entry(entry("spiffe://example.org/web", AGENT, dup)).await.unwrap_err();
        // SPIRE's exact message; the API's result carries the existing entry (see entry_ids.rs).
        assert!(matches!(&err, DatastoreError::AlreadyExists(m) if m == "similar entry already exists"), "{err:?}");
    }
    // Same ID: refused.
    let mut same_id = entry("spiffe://example.org/other", AGENT, &["c:3"]);
    same_id.id = first.id.clone();
    assert!(matches!(ds.create_entry(same_id).await, Err(DatastoreError::AlreadyExists(_))));

    // Any difference makes a distinct entry.
    let distinct = [
        entry("spiffe://example.org/web", AGENT, &["a:1"]),
        entry("spiffe://example.org/web", AGENT, &["a:1", "b:2", "c:3"]),
        entry("spiffe://example.org/web2", AGENT, &["a:1", "b:2"]),
        entry("spiffe://example.org/web", "spiffe://example.org/spire/agent/x/y", &["a:1", "b:2"]),
    ];
    let mut created = vec![];
    for e in distinct {
        created.push(ds.create_entry(e).await.unwrap());
    }
    assert_eq!(ds.all_entries().await.unwrap().len(), 5);

    // An update that would make a duplicate is refused and changes nothing.
    let clash = RegistrationEntry { selectors: sels(&["b:2", "a:1"]), ..created[0].clone() };
    let err = ds.update_entry(clash, None).await.unwrap_err();
    assert!(matches!(err, DatastoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(ds.get_entry(&created[0].id).await.unwrap(), Some(created[0].clone()));
}

#[tokio::test]
async fn revision_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let e = ds.create_entry(entry("spiffe://example.org/web", AGENT, &["a:1"])).await.unwrap();

    assert_eq!(e.revision, 0);
    let stale = RegistrationEntry { hint: "stale".into(), ..e.clone() };
    let err = ds.update_entry(stale, Some(1)).await.unwrap_err();
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    assert_eq!(ds.get_entry(&e.id).await.unwrap(), Some(e.clone()));

    let v1 = ds.update_entry(RegistrationEntry { hint: "h1".into(), ..e.clone() }, Some(0)).await.unwrap();
    assert_eq!((v1.revision, v1.hint.as_str()), (1, "h1"));
    // The old revision is now stale.
    let err = ds.update_entry(RegistrationEntry { hint: "h2".into(), ..e.clone() }, Some(0)).await.unwrap_err();
    assert!(matches!(err, DatastoreError::Conflict(_)), "{err:?}");
    // Without an expectation the update goes through.
    let v2 = ds.update_entry(RegistrationEntry { hint: "h2".into(), ..e.clone() }, None).await.unwrap();
    assert_eq!(v2.revision, 2);

    let missing = RegistrationEntry { id: "nope".into(), ..e };
    assert!(matches!(ds.update_entry(missing, None).await, Err(DatastoreError::NotFound(_))));
}

#[tokio::test]
async fn batch_create_with_bad_items() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let batch = vec![
        entry("spiffe://example.org/one", AGENT, &["a:1"]),
        entry("spiffe://example.org/bad", AGENT, &[]),
        // Duplicate of the first item of the same batch.
        entry("spiffe://example.org/one", AGENT, &["a:1"]),
        entry("spiffe://example.org/two", AGENT, &["b:2"]),
    ];
    let results = ds.create_entries(batch).await;
    assert_eq!(results.len(), 4);
    assert!(matches!(results[1], Err(DatastoreError::Invalid(_))), "{:?}", results[1]);
    assert!(matches!(results[2], Err(DatastoreError::AlreadyExists(_))), "{:?}", results[2]);
    let one = results[0].clone().unwrap();
    let two = results[3].clone().unwrap();
    assert_eq!(
        (one.spiffe_id.as_str(), two.spiffe_id.as_str()),
        ("spiffe://example.org/one", "spiffe://example.org/two")
    );
    assert_ne!(one.id, two.id);
    let mut want = vec![one, two];
    want.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(ds.all_entries().await.unwrap(), want);
    // The refused duplicate left no selector rows behind.
    let f = EntryFilter { by_selectors: Some((sels(&["a:1"]), SelectorMatch::Any)), ..Default::default() };
    assert_eq!(ds.count_entries(&f).await.unwrap(), 1);
    assert!(ds.create_entries(vec![]).await.is_empty());
}

#[tokio::test]
async fn selector_match_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let other_parent = "spiffe://example.org/spire/agent/join_token/other";
    let fixtures: &[(&str, &str, &[&str])] = &[
        ("A", AGENT, &["a:1"]),
        ("B", AGENT, &["a:1", "b:2"]),
        ("C", AGENT, &["b:2", "c:3"]),
        ("D", AGENT, &["d:4"]),
        ("E", other_parent, &["a:1"]),
    ];
    for (name, parent, s) in fixtures {
        let mut e = entry(&format!("spiffe://example.org/{name}"), parent, s);
        e.id = (*name).into();
        ds.create_entry(e).await.unwrap();
    }
    use SelectorMatch::*;
    let cases: &[(SelectorMatch, &[&str], &[&str])] = &[
        (Exact, &["a:1"], &["A", "E"]),
        (Exact, &["b:2", "a:1"], &["B"]),
        (Exact, &["a:1", "b:2", "c:3"], &[]),
        (Subset, &["a:1"], &["A", "E"]),
        (Subset, &["a:1", "b:2"], &["A", "B", "E"]),
        (Subset, &["a:1", "b:2", "c:3"], &["A", "B", "C", "E"]),
        (Subset, &["z:9"], &[]),
        (Superset, &["a:1"], &["A", "B", "E"]),
        (Superset, &["b:2"], &["B", "C"]),
        (Superset, &["a:1", "b:2"], &["B"]),
        (Superset, &["a:1", "a:1"], &["A", "B", "E"]),
        (Superset, &["a:1", "b:2", "c:3"], &[]),
        (Any, &["a:1", "c:3"], &["A", "B", "C", "E"]),
        (Any, &["d:4"], &["D"]),
        (Any, &["z:9"], &[]),
    ];
    for (mode, given, want) in cases {
        let filter = EntryFilter { by_selectors: Some((sels(given), *mode)), ..Default::default() };
        let (got, next) = ds.list_entries(&filter, &Page::default()).await.unwrap();
        assert_eq!(ids(&got), *want, "{mode:?} {given:?}");
        assert_eq!(next, None);
        assert_eq!(ds.count_entries(&filter).await.unwrap(), want.len() as u64, "{mode:?} {given:?}");
    }

    // Selector filters combine with the others (AND).
    let filter = EntryFilter {
        by_parent_id: Some(id(AGENT)),
        by_selectors: Some((sels(&["a:1"]), Superset)),
        ..Default::default()
    };
    assert_eq!(ids(&ds.list_entries(&filter, &Page::default()).await.unwrap().0), vec!["A", "B"]);

    let empty = EntryFilter { by_selectors: Some((vec![], Any)), ..Default::default() };
    assert!(matches!(ds.list_entries(&empty, &Page::default()).await, Err(DatastoreError::Invalid(_))));
}

#[tokio::test]
async fn field_filters() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let other_parent = "spiffe://example.org/spire/agent/join_token/other";
    let fixtures: &[(&str, &str, &str, &str, bool)] = &[
        ("1", "spiffe://example.org/web", AGENT, "", false),
        ("2", "spiffe://example.org/web", other_parent, "ext", true),
        ("3", "spiffe://example.org/db", AGENT, "ext", false),
    ];
    for (eid, spiffe, parent, hint, downstream) in fixtures {
        let mut e = entry(spiffe, parent, &["unix:uid:1"]);
        e.id = (*eid).into();
        e.hint = (*hint).into();
        e.downstream = *downstream;
        ds.create_entry(e).await.unwrap();
    }
    let cases: Vec<(EntryFilter, &[&str])> = vec![
        (EntryFilter::default(), &["1", "2", "3"]),
        (EntryFilter { by_spiffe_id: Some(id("spiffe://example.org/web")), ..Default::default() }, &["1", "2"]),
        (EntryFilter { by_parent_id: Some(id(AGENT)), ..Default::default() }, &["1", "3"]),
        (EntryFilter { by_hint: Some("ext".into()), ..Default::default() }, &["2", "3"]),
        (EntryFilter { by_hint: Some("none".into()), ..Default::default() }, &[]),
        (EntryFilter { by_downstream: Some(true), ..Default::default() }, &["2"]),
        (EntryFilter { by_downstream: Some(false), ..Default::default() }, &["1", "3"]),
        (
            EntryFilter {
                by_spiffe_id: Some(id("spiffe://example.org/web")),
                by_hint: Some("ext".into()),
                ..Default::default()
            },
            &["2"],
        ),
    ];
    for (filter, want) in cases {
        let (got, _) = ds.list_entries(&filter, &Page::default()).await.unwrap();
        assert_eq!(ids(&got), want, "{filter:?}");
        assert_eq!(ds.count_entries(&filter).await.unwrap(), want.len() as u64, "{filter:?}");
    }
}

#[tokio::test]
async fn pagination_covers_every_entry_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let batch: Vec<_> =
        (0..25).map(|i| entry(&format!("spiffe://example.org/w{i}"), AGENT, &[&format!("unix:uid:{i}")])).collect();
    let created: Vec<_> = ds.create_entries(batch).await.into_iter().map(Result::unwrap).collect();
    let mut all_ids: Vec<String> = created.iter().map(|e| e.id.clone()).collect();
    all_ids.sort();

    for size in [1u32, 5, 7, 24, 25, 26, 100] {
        let mut seen = vec![];
        let mut token = None;
        let mut pages = 0;
        loop {
            let (page, next) =
                ds.list_entries(&EntryFilter::default(), &Page { size, token: token.clone() }).await.unwrap();
            pages += 1;
            assert!(page.len() <= size as usize, "size {size}: page of {}", page.len());
            seen.extend(ids(&page));
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
            assert!(pages <= 30, "size {size}: pagination does not end");
        }
        assert_eq!(seen, all_ids, "size {size}");
        assert_eq!(pages, all_ids.len().div_ceil(size as usize).max(1), "size {size}");
    }

    // Size 0 is everything in one page.
    let (everything, next) = ds.list_entries(&EntryFilter::default(), &Page::default()).await.unwrap();
    assert_eq!((ids(&everything), next), (all_ids.clone(), None));

    // Pages of a filtered listing.
    let filter = EntryFilter {
        by_selectors: Some((sels(&["unix:uid:1", "unix:uid:2", "unix:uid:3"]), SelectorMatch::Any)),
        ..Default::default()
    };
    let (p1, t1) = ds.list_entries(&filter, &Page { size: 2, token: None }).await.unwrap();
    let (p2, t2) = ds.list_entries(&filter, &Page { size: 2, token: t1.clone() }).await.unwrap();
    assert_eq!(p1.len(), 2);
    assert_eq!(p2.len(), 1);
    assert!(t1.is_some());
    assert_eq!(t2, None);
    let got: BTreeSet<String> = ids(&p1).into_iter().chain(ids(&p2)).collect();
    assert_eq!(got.len(), 3);

    // An entry deleted between pages does not make the listing skip or repeat the others.
    let (first, t) = ds.list_entries(&EntryFilter::default(), &Page { size: 10, token: None }).await.unwrap();
    ds.delete_entries(&[first[0].id.clone(), all_ids[12].clone()]).await.into_iter().for_each(|r| {
        r.unwrap();
    });
    let (second, _) = ds.list_entries(&EntryFilter::default(), &Page { size: 10, token: t }).await.unwrap();
    assert_eq!(ids(&second), all_ids[10..21].iter().filter(|i| **i != all_ids[12]).cloned().collect::<Vec<_>>());
}

#[tokio::test]
async fn join_token_is_single_use() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open_sqlite(&db_path(&dir)).await.unwrap();
    let t = now();
    ds.create_join_token("tok-1", t + 600).await.unwrap();
    assert!(matches!(ds.create_join_token("tok-1", t + 600).await, Err(DatastoreError::AlreadyExists(_))));
    assert!(matches!(ds.create_join_token("", t + 600).await, Err(DatastoreError::Invalid(_))));
    assert_eq!(ds.consume_join_token("tok-1", t).await.unwrap(), JoinTokenOutcome::Valid);
    assert_eq!(ds.consume_join_token("tok-1", t).await.unwrap(), JoinTokenOutcome::NotFound);
    assert_eq!(ds.consume_join_token("never-made", t).await.unwrap(), JoinTokenOutcome::NotFound);
}

#[tokio::test]
async fn expired_join_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open_sqlite(&db_path(&dir)).await.unwrap();
    let t = 1_000_000;
    ds.create_join_token("past", t - 1).await.unwrap();
    ds.create_join_token("boundary", t).await.unwrap();
    ds.create_join_token("future", t + 1).await.unwrap();
    // An expired token is used up by the attempt too.
    assert_eq!(ds.consume_join_token("past", t).await.unwrap(), JoinTokenOutcome::Expired);
    assert_eq!(ds.consume_join_token("past", t).await.unwrap(), JoinTokenOutcome::NotFound);
    assert_eq!(ds.consume_join_token("boundary", t).await.unwrap(), JoinTokenOutcome::Expired);
    assert_eq!(ds.consume_join_token("future", t).await.unwrap(), JoinTokenOutcome::Valid);

    // Prune removes the expired ones only.
    for (tok, exp) in [("a", t - 10), ("b", t), ("c", t + 10), ("d", t + 20)] {
        ds.create_join_token(tok, exp).await.unwrap();
    }
    assert_eq!(ds.prune_join_tokens(t).await.unwrap(), 2);
    assert_eq!(ds.prune_join_tokens(t).await.unwrap(), 0);
    assert_eq!(ds.consume_join_token("a", t - 100).await.unwrap(), JoinTokenOutcome::NotFound);
    assert_eq!(ds.consume_join_token("b", t - 100).await.unwrap(), JoinTokenOutcome::NotFound);
    assert_eq!(ds.consume_join_token("c", t).await.unwrap(), JoinTokenOutcome::Valid);
    assert_eq!(ds.consume_join_token("d", t).await.unwrap(), JoinTokenOutcome::Valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_consumers_of_one_token_exactly_one_valid() {
    let dir = tempfile::tempdir().unwrap();
    let ds: Arc<dyn Datastore> = open_sqlite(&db_path(&dir)).await.unwrap();
    let t = now();
    for round in 0..5 {
        let token = format!("token-{round}");
        ds.create_join_token(&token, t + 600).await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (ds, token, barrier) = (Arc::clone(&ds), token.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    ds.consume_join_token(&token, t).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = vec![];
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let valid = outcomes.iter().filter(|o| **o == JoinTokenOutcome::Valid).count();
        let not_found = outcomes.iter().filter(|o| **o == JoinTokenOutcome::NotFound).count();
        assert_eq!((valid, not_found), (1, 31), "round {round}: {outcomes:?}");
    }
}

#[tokio::test]
async fn agents_ban_and_evict() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    let a = agent(AGENT);
    let b = agent("spiffe://example.org/spire/agent/join_token/aaa");
    assert_eq!(ds.create_agent(a.clone()).await.unwrap(), a);
    assert_eq!(ds.create_agent(b.clone()).await.unwrap(), b);
    assert!(matches!(ds.create_agent(a.clone()).await, Err(DatastoreError::AlreadyExists(_))));
    assert_eq!(ds.get_agent(&a.spiffe_id).await.unwrap(), Some(a.clone()));
    // Listed in SPIFFE ID order.
    assert_eq!(ds.list_agents().await.unwrap(), vec![b.clone(), a.clone()]);

    // Zero timestamps are filled in.
    let before = now();
    let c = ds
        .create_agent(AttestedAgent { created_at: 0, updated_at: 0, ..agent("spiffe://example.org/spire/agent/x/c") })
        .await
        .unwrap();
    assert!(c.created_at >= before && c.updated_at >= before);
    assert_eq!(ds.get_agent(&c.spiffe_id).await.unwrap(), Some(c.clone()));

    // Renewal: serial, expiry, selectors and updated_at change; created_at stays.
    let renewed = AttestedAgent {
        cert_serial: "ffee".into(),
        cert_expires_at: 1_950_000_000,
        new_cert_serial: String::new(),
        new_cert_expires_at: 0,
        selectors: sels(&["k8s_psat:cluster:other"]),
        created_at: 1,
        updated_at: 1_700_000_500,
        ..a.clone()
    };
    let stored = ds.update_agent(renewed.clone()).await.unwrap();
    assert_eq!(stored, AttestedAgent { created_at: a.created_at, ..renewed.clone() });
    assert_eq!(ds.get_agent(&a.spiffe_id).await.unwrap(), Some(stored.clone()));

    // Ban: the row stays, marked banned; an update does not lift the ban.
    ds.set_agent_banned(&a.spiffe_id, true).await.unwrap();
    assert!(ds.get_agent(&a.spiffe_id).await.unwrap().unwrap().banned);
    let after = ds.update_agent(AttestedAgent { banned: false, ..renewed }).await.unwrap();
    assert!(after.banned);
    assert!(matches!(ds.create_agent(a.clone()).await, Err(DatastoreError::AlreadyExists(_))));
    assert_eq!(ds.list_agents().await.unwrap().len(), 3);
    ds.set_agent_banned(&a.spiffe_id, false).await.unwrap();
    assert!(!ds.get_agent(&a.spiffe_id).await.unwrap().unwrap().banned);

    // Evict: the row is gone, and the agent may attest again.
    ds.delete_agent(&b.spiffe_id).await.unwrap();
    assert_eq!(ds.get_agent(&b.spiffe_id).await.unwrap(), None);
    assert!(matches!(ds.delete_agent(&b.spiffe_id).await, Err(DatastoreError::NotFound(_))));
    assert!(matches!(ds.set_agent_banned(&b.spiffe_id, true).await, Err(DatastoreError::NotFound(_))));
    assert!(matches!(ds.update_agent(b.clone()).await, Err(DatastoreError::NotFound(_))));
    assert_eq!(ds.create_agent(b.clone()).await.unwrap(), b);
}

#[tokio::test]
async fn bundles_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    assert_eq!(ds.get_bundle(&td("example.org")).await.unwrap(), None);
    assert!(ds.list_bundles().await.unwrap().is_empty());

    // Extreme u64 values survive the i64 column.
    let own = bundle("example.org", u64::MAX, Some(u64::MAX));
    let fed = bundle("partner.org", 0, None);
    ds.set_bundle(own.clone()).await.unwrap();
    ds.set_bundle(fed.clone()).await.unwrap();
    assert_eq!(ds.get_bundle(&td("example.org")).await.unwrap(), Some(own.clone()));
    assert_eq!(ds.get_bundle(&td("partner.org")).await.unwrap(), Some(fed.clone()));
    assert_eq!(ds.list_bundles().await.unwrap(), vec![own.clone(), fed.clone()]);

    // Setting again replaces the whole bundle, authorities included.
    let mut next = own.clone();
    next.sequence = 42;
    next.refresh_hint_secs = Some(300);
    next.x509_authorities = vec![vec![7, 7, 7]];
    next.jwt_authorities.remove(0);
    ds.set_bundle(next.clone()).await.unwrap();
    assert_eq!(ds.get_bundle(&td("example.org")).await.unwrap(), Some(next.clone()));
    let empty = Bundle::new(td("empty.test"));
    ds.set_bundle(empty.clone()).await.unwrap();
    assert_eq!(ds.list_bundles().await.unwrap(), vec![empty.clone(), next.clone(), fed]);

    ds.delete_bundle(&td("partner.org")).await.unwrap();
    assert_eq!(ds.get_bundle(&td("partner.org")).await.unwrap(), None);
    assert!(matches!(ds.delete_bundle(&td("partner.org")).await, Err(DatastoreError::NotFound(_))));
    assert_eq!(ds.list_bundles().await.unwrap(), vec![empty, next]);
}

#[tokio::test]
async fn ca_journal_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ds = open(&db_path(&dir)).await;
    assert_eq!(ds.load_ca_journal().await.unwrap(), None);
    let first: Vec<u8> = (0..=255u8).collect();
    ds.store_ca_journal(first.clone()).await.unwrap();
    assert_eq!(ds.load_ca_journal().await.unwrap(), Some(first));
    ds.store_ca_journal(vec![]).await.unwrap();
    assert_eq!(ds.load_ca_journal().await.unwrap(), Some(vec![]));
    ds.store_ca_journal(b"v3".to_vec()).await.unwrap();
    assert_eq!(ds.load_ca_journal().await.unwrap(), Some(b"v3".to_vec()));
}

/// Everything the datastore holds, for comparing before and after a reopen.
#[derive(Debug, PartialEq)]
struct Snapshot {
    entries: Vec<RegistrationEntry>,
    agents: Vec<AttestedAgent>,
    bundles: Vec<Bundle>,
    journal: Option<Vec<u8>>,
}

async fn snapshot(ds: &dyn Datastore) -> Snapshot {
    Snapshot {
        entries: ds.all_entries().await.unwrap(),
        agents: ds.list_agents().await.unwrap(),
        bundles: ds.list_bundles().await.unwrap(),
        journal: ds.load_ca_journal().await.unwrap(),
    }
}

async fn populate(ds: &dyn Datastore) {
    ds.create_entry(full_entry()).await.unwrap();
    ds.create_entry(entry("spiffe://example.org/db", AGENT, &["unix:uid:5"])).await.unwrap();
    ds.create_agent(agent(AGENT)).await.unwrap();
    ds.set_agent_banned(&id(AGENT), true).await.unwrap();
    ds.set_bundle(bundle("example.org", 3, Some(300))).await.unwrap();
    ds.store_ca_journal(b"journal".to_vec()).await.unwrap();
    ds.create_join_token("survivor", now() + 600).await.unwrap();
}

#[tokio::test]
async fn reopen_finds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let before = {
        let ds = open_sqlite(&path).await.unwrap();
        populate(ds.as_ref()).await;
        snapshot(ds.as_ref()).await
    };
    assert_eq!(before.entries.len(), 2);
    let ds = open_sqlite(&path).await.unwrap();
    assert_eq!(snapshot(ds.as_ref()).await, before);
    assert_eq!(ds.consume_join_token("survivor", now()).await.unwrap(), JoinTokenOutcome::Valid);
}

#[tokio::test]
async fn migrations_are_idempotent_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let ds = open(&path).await;
    const { assert!(SCHEMA_VERSION >= 1) };
    assert_eq!(ds.schema_version().await.unwrap(), SCHEMA_VERSION);
    populate(&ds).await;
    let before = snapshot(&ds).await;
    drop(ds);
    for _ in 0..3 {
        let ds = open(&path).await;
        assert_eq!(ds.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert_eq!(snapshot(&ds).await, before);
    }
    // WAL mode is recorded in the file.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(open(&path).await);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    }
    let err = SqliteDatastore::open(&path).await.unwrap_err();
    assert!(matches!(&err, DatastoreError::Backend(m) if m.contains("newer")), "{err:?}");
}

#[tokio::test]
async fn db_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let ds = open(&path).await;
    ds.create_entry(entry("spiffe://example.org/web", AGENT, &["a:1"])).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    assert!(wal.exists());
    assert_eq!(mode(&wal), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    drop(ds);

    // A file that already exists with a looser mode is tightened at open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _ds = open(&path).await;
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn acknowledged_write_is_visible_without_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let ds = open(&path).await;
    let e = ds.create_entry(entry("spiffe://example.org/web", AGENT, &["a:1"])).await.unwrap();
    ds.create_join_token("tok", now() + 600).await.unwrap();
    // Never closed: no checkpoint, the WAL stays as the crash left it.
    std::mem::forget(ds);
    let ds = open(&path).await;
    assert_eq!(ds.get_entry(&e.id).await.unwrap(), Some(e));
    assert_eq!(ds.consume_join_token("tok", now()).await.unwrap(), JoinTokenOutcome::Valid);
}

const CHILD_ENV: &str = "SIGIL_DATASTORE_KILL9_CHILD_DB";

/// Acknowledged writes survive `kill -9`: a child process writes, reports, and is killed mid-flight.
#[tokio::test]
async fn acknowledged_write_survives_kill_9() {
    if let Ok(child_db) = std::env::var(CHILD_ENV) {
        // Child: write, acknowledge on stdout, then wait to be killed.
        let ds = open(Path::new(&child_db)).await;
        let e = ds.create_entry(entry("spiffe://example.org/web", AGENT, &["a:1"])).await.unwrap();
        ds.set_bundle(bundle("example.org", 9, Some(60))).await.unwrap();
        ds.store_ca_journal(b"child".to_vec()).await.unwrap();
        println!("ACK {}", e.id);
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "acknowledged_write_survives_kill_9", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The test harness prints the test name on the same line, before the child's output.
    let reader = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            if let Some((_, id)) = line.unwrap().split_once("ACK ") {
                return Some(id.trim().to_owned());
            }
        }
        None
    });
    let acked = tokio::time::timeout(std::time::Duration::from_secs(60), reader).await;
    child.kill().unwrap(); // SIGKILL
    let entry_id = acked
        .expect("child did not acknowledge within 60s")
        .unwrap()
        .expect("child exited without acknowledging its write");
    let status = child.wait().unwrap();
    assert!(!status.success());

    let ds = open(&path).await;
    let got = ds.get_entry(&entry_id).await.unwrap().expect("acknowledged entry lost");
    assert_eq!(got.spiffe_id, id("spiffe://example.org/web"));
    assert_eq!(ds.get_bundle(&td("example.org")).await.unwrap(), Some(bundle("example.org", 9, Some(60))));
    assert_eq!(ds.load_ca_journal().await.unwrap(), Some(b"child".to_vec()));
}
