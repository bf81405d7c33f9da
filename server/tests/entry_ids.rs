//! Client-chosen entry IDs (SPIRE's `entry create -entryID`, since 1.6) and SPIRE's "similar entry" refusal,
//! against a real in-process server over its admin socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestServer;
use sigil_proto::admin::{
    self as apb, batch_create_entry_response::Result as CreateResult, entries_client::EntriesClient,
};
use sigil_proto::types as tpb;
use tonic::Code;

const PARENT: &str = "spiffe://example.org/host";

fn entry(id: &str, spiffe_id: &str, selectors: &[(&str, &str)]) -> tpb::Entry {
    tpb::Entry {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        parent_id: PARENT.into(),
        selectors: selectors.iter().map(|(t, v)| tpb::Selector { r#type: (*t).into(), value: (*v).into() }).collect(),
        ..Default::default()
    }
}

async fn create(s: &TestServer, entries: Vec<tpb::Entry>) -> Vec<CreateResult> {
    EntriesClient::new(s.admin().await)
        .batch_create_entry(apb::BatchCreateEntryRequest { entries })
        .await
        .unwrap()
        .into_inner()
        .results
}

fn code(r: &CreateResult) -> Code {
    Code::from_i32(r.status.as_ref().unwrap().code)
}

fn message(r: &CreateResult) -> &str {
    &r.status.as_ref().unwrap().message
}

async fn count(s: &TestServer) -> u64 {
    EntriesClient::new(s.admin().await)
        .count_entries(apb::CountEntriesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .count
}

#[tokio::test]
async fn custom_entry_id_is_kept_and_empty_id_is_generated() {
    let s = TestServer::start("").await;
    let results = create(
        &s,
        vec![
            entry("ns.web-1_A", "spiffe://example.org/web", &[("k8s", "ns:web")]),
            entry("", "spiffe://example.org/db", &[("k8s", "ns:db")]),
        ],
    )
    .await;
    assert_eq!((code(&results[0]), code(&results[1])), (Code::Ok, Code::Ok), "{results:?}");
    let custom = results[0].entry.as_ref().unwrap();
    assert_eq!(custom.id, "ns.web-1_A");
    assert_eq!(custom.spiffe_id, "spiffe://example.org/web");
    let generated = &results[1].entry.as_ref().unwrap().id;
    assert_eq!(uuid::Uuid::parse_str(generated).unwrap().get_version_num(), 4, "{generated}");
    let got = EntriesClient::new(s.admin().await)
        .get_entry(apb::GetEntryRequest { id: "ns.web-1_A".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got, custom);
    // The in-memory index (what agents are served from) has it under the same ID.
    assert_eq!(
        s.server.state.index().get("ns.web-1_A").map(|e| e.spiffe_id.to_string()).as_deref(),
        Some("spiffe://example.org/web")
    );
}

/// SPIRE's rule (pkg/server/datastore/sqlstore `validEntryIDChars` + length check): at most 255 bytes of
/// A-Z a-z 0-9 '-' '.' '_'. Each bad item is refused alone; the rest of the batch is created.
#[tokio::test]
async fn entry_id_refused_by_spire_rule_rest_of_batch_succeeds() {
    let s = TestServer::start("").await;
    let cases: &[(&str, Option<&str>)] = &[
        ("has/slash", Some("entry ID contains invalid characters")),
        ("has space", Some("entry ID contains invalid characters")),
        ("colon:1", Some("entry ID contains invalid characters")),
        ("éntry", Some("entry ID contains invalid characters")),
        ("entry😊", Some("entry ID contains invalid characters")),
        (&"x".repeat(256), Some("entry ID too long")),
        (&"y".repeat(255), None),
        ("Good-ID.1_z", None),
    ];
    let entries = cases
        .iter()
        .enumerate()
        .map(|(i, (id, _))| entry(id, &format!("spiffe://example.org/w{i}"), &[("unix", "uid:1")]))
        .collect();
    let results = create(&s, entries).await;
    assert_eq!(results.len(), cases.len());
    for ((id, want), r) in cases.iter().zip(&results) {
        match want {
            Some(text) => {
                assert_eq!(code(r), Code::InvalidArgument, "{id:?}: {r:?}");
                assert!(message(r).contains(text), "{id:?}: {}", message(r));
                assert!(r.entry.is_none());
                assert!(s.server.state.index().get(id).is_none(), "{id:?} must not be stored");
            }
            None => {
                assert_eq!(code(r), Code::Ok, "{id:?}: {r:?}");
                assert_eq!(r.entry.as_ref().unwrap().id, *id);
            }
        }
    }
    assert_eq!(count(&s).await, 2);
}

#[tokio::test]
async fn duplicate_id_is_already_exists_while_rest_of_batch_succeeds() {
    let s = TestServer::start("").await;
    let first = create(&s, vec![entry("dup-1", "spiffe://example.org/a", &[("unix", "uid:1")])]).await;
    assert_eq!(code(&first[0]), Code::Ok);
    let results = create(
        &s,
        vec![
            entry("dup-1", "spiffe://example.org/b", &[("unix", "uid:2")]),
            entry("", "spiffe://example.org/c", &[("unix", "uid:3")]),
            entry("other-2", "spiffe://example.org/d", &[("unix", "uid:4")]),
            // The same ID twice in one batch: the second is refused.
            entry("other-2", "spiffe://example.org/e", &[("unix", "uid:5")]),
        ],
    )
    .await;
    assert_eq!(code(&results[0]), Code::AlreadyExists, "{results:?}");
    assert_eq!(message(&results[0]), "an entry with id \"dup-1\" already exists");
    // The refusal carries the entry in the way, unchanged.
    assert_eq!(results[0].entry.as_ref().unwrap(), first[0].entry.as_ref().unwrap());
    assert_eq!(code(&results[1]), Code::Ok);
    assert_eq!(code(&results[2]), Code::Ok);
    assert_eq!(results[2].entry.as_ref().unwrap().id, "other-2");
    assert_eq!(code(&results[3]), Code::AlreadyExists);
    assert_eq!(results[3].entry.as_ref().unwrap().spiffe_id, "spiffe://example.org/d");
    assert_eq!(count(&s).await, 3);
    let stored = s.server.state.index().get("dup-1").unwrap().spiffe_id.to_string();
    assert_eq!(stored, "spiffe://example.org/a");
}

/// What the operator relies on: a retried create with the same deterministic ID never makes a duplicate.
#[tokio::test]
async fn retried_create_with_same_id_is_already_exists_never_a_duplicate() {
    let s = TestServer::start("").await;
    let e =
        entry("op.default.web", "spiffe://example.org/ns/default/sa/web", &[("k8s", "ns:default"), ("k8s", "sa:web")]);
    let first = create(&s, vec![e.clone()]).await;
    assert_eq!(code(&first[0]), Code::Ok);
    for _ in 0..3 {
        let again = create(&s, vec![e.clone()]).await;
        assert_eq!(code(&again[0]), Code::AlreadyExists, "{again:?}");
        assert_eq!(again[0].entry.as_ref().unwrap(), first[0].entry.as_ref().unwrap());
    }
    assert_eq!(count(&s).await, 1);
}

/// As SPIRE: same SPIFFE ID, parent ID and selector set (any order) as an existing entry is refused with
/// "similar entry already exists", whatever ID the new entry asks for.
#[tokio::test]
async fn similar_entry_is_already_exists_like_spire() {
    let s = TestServer::start("").await;
    let original =
        create(&s, vec![entry("", "spiffe://example.org/web", &[("unix", "uid:1"), ("unix", "gid:2")])]).await;
    assert_eq!(code(&original[0]), Code::Ok);
    let original = original[0].entry.clone().unwrap();
    for id in ["", "another-id"] {
        let r = create(&s, vec![entry(id, "spiffe://example.org/web", &[("unix", "gid:2"), ("unix", "uid:1")])]).await;
        assert_eq!(code(&r[0]), Code::AlreadyExists, "{id:?}: {r:?}");
        // SPIRE's exact message; the existing entry (and so its ID) is in the result.
        assert_eq!(message(&r[0]), "similar entry already exists");
        assert_eq!(r[0].entry.as_ref().unwrap(), &original);
    }
    // A different selector set is a different entry.
    let r = create(&s, vec![entry("", "spiffe://example.org/web", &[("unix", "uid:1")])]).await;
    assert_eq!(code(&r[0]), Code::Ok);
    assert_eq!(count(&s).await, 2);
}

#[tokio::test]
async fn custom_ids_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = sigil_server::run::start(common::config(dir.path(), "")).await.unwrap();
    let ch = sigil_server::cli::admin_channel(&server.state.config.socket_path).await.unwrap();
    let r = EntriesClient::new(ch)
        .batch_create_entry(apb::BatchCreateEntryRequest {
            entries: vec![entry("kept.after-restart", "spiffe://example.org/r", &[("unix", "uid:9")])],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Code::from_i32(r.results[0].status.as_ref().unwrap().code), Code::Ok);
    server.shutdown().await;
    let server = sigil_server::run::start(common::config(dir.path(), "")).await.unwrap();
    let got = server.state.index().get("kept.after-restart").map(|e| e.spiffe_id.to_string());
    assert_eq!(got.as_deref(), Some("spiffe://example.org/r"));
    server.shutdown().await;
}
