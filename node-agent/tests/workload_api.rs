#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Workload API served on a real Unix socket with injected state (no Sigil server), called by a real
//! tonic client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sigil_agent::attest::{UnixAttestor, UnixAttestorConfig, WorkloadAttestor};
use sigil_agent::client;
use sigil_agent::metrics::Metrics;
use sigil_agent::state::{CachedSvid, Snapshot};
use sigil_agent::testing::TestCa;
use sigil_agent::workload::{self, JwtSource, WorkloadApi};
use sigil_core::{RegistrationEntry, Selector, SpiffeId};
use sigil_proto::workload as pb;
use tokio::sync::watch;
use tonic::{Code, Status};

struct FakeJwt(Arc<TestCa>, watch::Receiver<Arc<Snapshot>>);

#[async_trait::async_trait]
impl JwtSource for FakeJwt {
    async fn jwt_svid(&self, entry_id: &str, audience: &[String]) -> Result<String, Status> {
        let e = self.1.borrow().entries.get(entry_id).cloned().ok_or_else(|| Status::not_found("entry"))?;
        self.0.jwt(&e.spiffe_id, audience, 300).map_err(|e| Status::internal(e.to_string()))
    }
}

fn entry(id: &str, spiffe: &str, selectors: &[String], created_at: i64, hint: &str) -> Arc<RegistrationEntry> {
    Arc::new(RegistrationEntry {
        id: id.into(),
        spiffe_id: SpiffeId::new(spiffe).unwrap(),
        parent_id: SpiffeId::new("spiffe://example.org/spire/agent/join_token/t").unwrap(),
        selectors: selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        dns_names: vec![],
        federates_with: vec![],
        admin: false,
        downstream: false,
        hint: hint.into(),
        entry_expiry: 0,
        store_svid: false,
        revision: 0,
        created_at,
    })
}

fn svid_for(ca: &TestCa, e: &RegistrationEntry, ttl: i64) -> Arc<CachedSvid> {
    let (chain, key) = ca.issue(&e.spiffe_id, ttl).unwrap();
    let (nb, na) = sigil_agent::manager::validity(&chain[0]).unwrap();
    Arc::new(CachedSvid {
        entry_id: e.id.as_str().into(),
        spiffe_id: e.spiffe_id.clone(),
        chain_der: chain.into_iter().map(Into::into).collect(),
        key_pkcs8: key.into(),
        not_before: nb,
        not_after: na,
        rotate_at: na,
        dns_names: vec![],
        x509_ttl: 0,
    })
}

fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

struct Fixture {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    ca: Arc<TestCa>,
    state: watch::Sender<Arc<Snapshot>>,
}

impl Fixture {
    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut s = self.state.borrow().as_ref().clone();
        f(&mut s);
        self.state.send_replace(Arc::new(s));
    }
}

/// A served Workload API whose state is `snap` (synced, with the CA's bundle).
async fn serve(entries: Vec<Arc<RegistrationEntry>>, with_svids: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("public/api.sock");
    let ca = Arc::new(TestCa::new("example.org").unwrap());
    let mut snap = Snapshot { synced: true, bundle: Some(Arc::new(ca.bundle())), ..Default::default() };
    for e in entries {
        if with_svids {
            snap.svids.insert(e.id.as_str().into(), svid_for(&ca, &e, 3600));
        }
        snap.entries.insert(e.id.as_str().into(), e);
    }
    let (tx, rx) = watch::channel(Arc::new(snap));
    let attestors: Vec<Arc<dyn WorkloadAttestor>> = vec![Arc::new(UnixAttestor::new(UnixAttestorConfig::default()))];
    let api = WorkloadApi::new(rx.clone(), attestors, Arc::new(FakeJwt(ca.clone(), rx)), Arc::new(Metrics::new()));
    let listener = workload::bind_socket(&socket).unwrap();
    tokio::spawn(workload::serve(listener, api, std::future::pending()));
    Fixture { _dir: dir, socket, ca, state: tx }
}

fn uid_selector() -> Vec<String> {
    vec![format!("unix:uid:{}", my_uid())]
}

async fn first_x509(socket: &Path) -> Result<pb::X509svidResponse, Status> {
    let mut c = client::connect(socket).await.unwrap();
    let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await?.into_inner();
    Ok(stream.message().await?.expect("one message"))
}

#[tokio::test]
async fn socket_modes_are_0755_dir_and_0777_socket() {
    use std::os::unix::fs::PermissionsExt;
    let f = serve(vec![], false).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(f.socket.parent().unwrap()), 0o755);
    assert_eq!(mode(&f.socket), 0o777);
}

#[tokio::test]
async fn missing_header_is_invalid_argument_on_every_rpc() {
    let f = serve(vec![entry("e1", "spiffe://example.org/web", &uid_selector(), 1, "")], true).await;
    let ch = client::channel(&f.socket).await.unwrap();
    let mut c = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch);
    let codes = vec![
        c.fetch_x509svid(pb::X509svidRequest {}).await.err().map(|s| (s.code(), s.message().to_owned())),
        c.fetch_x509_bundles(pb::X509BundlesRequest {}).await.err().map(|s| (s.code(), s.message().to_owned())),
        c.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await.err().map(|s| (s.code(), s.message().to_owned())),
        c.fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["a".into()], spiffe_id: String::new() })
            .await
            .err()
            .map(|s| (s.code(), s.message().to_owned())),
        c.validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: "a".into(), svid: "x.y.z".into() })
            .await
            .err()
            .map(|s| (s.code(), s.message().to_owned())),
    ];
    for got in codes {
        assert_eq!(got, Some((Code::InvalidArgument, "security header missing from request".to_owned())));
    }
}

#[tokio::test]
async fn no_matching_entry_is_permission_denied() {
    let f = serve(vec![entry("e1", "spiffe://example.org/other", &["unix:uid:4242424".to_owned()], 1, "")], true).await;
    let mut c = client::connect(&f.socket).await.unwrap();
    assert_eq!(c.fetch_x509svid(pb::X509svidRequest {}).await.err().map(|s| s.code()), Some(Code::PermissionDenied));
    assert_eq!(
        c.fetch_x509_bundles(pb::X509BundlesRequest {}).await.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        c.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    let jwt = c.fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["a".into()], spiffe_id: String::new() }).await;
    assert_eq!(jwt.err().map(|s| s.code()), Some(Code::PermissionDenied));
}

#[tokio::test]
async fn not_synced_is_unavailable() {
    let f = serve(vec![], false).await;
    f.update(|s| s.synced = false);
    let mut c = client::connect(&f.socket).await.unwrap();
    assert_eq!(c.fetch_x509svid(pb::X509svidRequest {}).await.err().map(|s| s.code()), Some(Code::Unavailable));
    let jwt = c.fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["a".into()], spiffe_id: String::new() }).await;
    assert_eq!(jwt.err().map(|s| s.code()), Some(Code::Unavailable));
}

#[tokio::test]
async fn x509_svid_response_is_complete_and_ordered() {
    let sels = uid_selector();
    let f = serve(
        vec![
            entry("newer", "spiffe://example.org/b", &sels, 20, "second"),
            entry("older", "spiffe://example.org/a", &sels, 10, "first"),
            entry("dup-hint", "spiffe://example.org/c", &sels, 30, "first"),
        ],
        true,
    )
    .await;
    let resp = first_x509(&f.socket).await.unwrap();
    let ids: Vec<(&str, &str)> = resp.svids.iter().map(|s| (s.spiffe_id.as_str(), s.hint.as_str())).collect();
    assert_eq!(ids, vec![("spiffe://example.org/a", "first"), ("spiffe://example.org/b", "second")]);
    let bundle = f.ca.bundle();
    for s in &resp.svids {
        assert_eq!(s.bundle, bundle.x509_authorities_der_concat());
        let (_, cert) = x509_parser::parse_x509_certificate(&s.x509_svid).unwrap();
        let id = sigil_core::x509::leaf_spiffe_id(cert.as_ref()).unwrap();
        assert_eq!(id.as_str(), s.spiffe_id);
        assert!(rcgen::KeyPair::try_from(&s.x509_svid_key[..]).is_ok(), "PKCS#8 key");
    }
    assert!(resp.federated_bundles.is_empty());
}

#[tokio::test]
async fn stream_resends_only_when_the_callers_view_changes() {
    let sels = uid_selector();
    let e1 = entry("e1", "spiffe://example.org/web", &sels, 1, "");
    let f = serve(vec![e1.clone()], true).await;
    let mut c = client::connect(&f.socket).await.unwrap();
    let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);

    // Another workload's entry: nothing is sent.
    let other = entry("other", "spiffe://example.org/other", &["unix:uid:4242424".to_owned()], 1, "");
    let other_svid = svid_for(&f.ca, &other, 3600);
    f.update(|s| {
        s.entries.insert("other".into(), other.clone());
        s.svids.insert("other".into(), other_svid);
    });
    let quiet = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(quiet.is_err(), "unexpected message: {quiet:?}");

    // Rotation of the caller's SVID: a new full message.
    let rotated = svid_for(&f.ca, &e1, 7200);
    f.update(|s| {
        s.svids.insert("e1".into(), rotated.clone());
    });
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.svids.len(), 1);
    assert_eq!(second.svids[0].x509_svid, rotated.chain_der.concat());
    assert_ne!(second.svids[0].x509_svid, first.svids[0].x509_svid);

    // A new entry for the caller: the message carries both.
    let e2 = entry("e2", "spiffe://example.org/api", &sels, 2, "");
    let e2_svid = svid_for(&f.ca, &e2, 3600);
    f.update(|s| {
        s.entries.insert("e2".into(), e2.clone());
        s.svids.insert("e2".into(), e2_svid);
    });
    let third = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(third.svids.len(), 2);

    // Bundle change: re-sent with the new bundle bytes.
    let other_ca = TestCa::new("example.org").unwrap();
    let mut b = f.ca.bundle();
    b.x509_authorities.extend(other_ca.bundle().x509_authorities);
    let want_bundle = b.x509_authorities_der_concat();
    f.update(|s| s.bundle = Some(Arc::new(b)));
    let fourth = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(fourth.svids[0].bundle, want_bundle);

    // All entries removed: the stream ends with PermissionDenied.
    f.update(|s| {
        s.entries.remove("e1");
        s.entries.remove("e2");
    });
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap();
    assert_eq!(end.err().map(|s| s.code()), Some(Code::PermissionDenied));
}

#[tokio::test]
async fn first_response_waits_for_the_svid() {
    let sels = uid_selector();
    let e1 = entry("e1", "spiffe://example.org/web", &sels, 1, "");
    let f = serve(vec![e1.clone()], false).await;
    let socket = f.socket.clone();
    let pending = tokio::spawn(async move { first_x509(&socket).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());
    let s = svid_for(&f.ca, &e1, 3600);
    f.update(|snap| {
        snap.svids.insert("e1".into(), s);
    });
    let resp = tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.svids[0].spiffe_id, "spiffe://example.org/web");
}

#[tokio::test]
async fn bundles_streams_carry_own_and_federated() {
    let sels = uid_selector();
    let mut e = entry("e1", "spiffe://example.org/web", &sels, 1, "").as_ref().clone();
    e.federates_with = vec![sigil_core::TrustDomain::new("partner.org").unwrap()];
    let f = serve(vec![Arc::new(e)], true).await;
    let partner = TestCa::new("partner.org").unwrap();
    f.update(|s| {
        s.federated_bundles = BTreeMap::from([(partner.trust_domain.clone(), Arc::new(partner.bundle()))]);
    });
    let mut c = client::connect(&f.socket).await.unwrap();
    let x =
        c.fetch_x509_bundles(pb::X509BundlesRequest {}).await.unwrap().into_inner().message().await.unwrap().unwrap();
    let mut keys: Vec<&str> = x.bundles.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, vec!["spiffe://example.org", "spiffe://partner.org"]);
    assert_eq!(x.bundles["spiffe://partner.org"], partner.bundle().x509_authorities_der_concat());
    let j = c.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await.unwrap().into_inner().message().await.unwrap().unwrap();
    let own: serde_json::Value = serde_json::from_slice(&j.bundles["spiffe://example.org"]).unwrap();
    let keys = own["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "only jwt-svid keys: {own}");
    assert_eq!(keys[0]["use"], "jwt-svid");
    let svid = first_x509(&f.socket).await.unwrap();
    assert_eq!(svid.federated_bundles.keys().collect::<Vec<_>>(), vec!["spiffe://partner.org"]);
}

/// A federated bundle the agent holds reaches only workloads whose entries federate with that trust domain, and
/// only those may validate that trust domain's JWT-SVIDs (SPIRE: the caller's own and federated bundles).
#[tokio::test]
async fn federated_bundles_only_for_entries_that_federate_with_them() {
    let sels = uid_selector();
    let f = serve(vec![entry("e1", "spiffe://example.org/web", &sels, 1, "")], true).await;
    let partner = TestCa::new("partner.org").unwrap();
    f.update(|s| {
        s.federated_bundles = BTreeMap::from([(partner.trust_domain.clone(), Arc::new(partner.bundle()))]);
    });
    let mut c = client::connect(&f.socket).await.unwrap();
    let svid = first_x509(&f.socket).await.unwrap();
    assert!(svid.federated_bundles.is_empty(), "{:?}", svid.federated_bundles.keys());
    let x =
        c.fetch_x509_bundles(pb::X509BundlesRequest {}).await.unwrap().into_inner().message().await.unwrap().unwrap();
    assert_eq!(x.bundles.keys().collect::<Vec<_>>(), vec!["spiffe://example.org"]);
    let j = c.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await.unwrap().into_inner().message().await.unwrap().unwrap();
    assert_eq!(j.bundles.keys().collect::<Vec<_>>(), vec!["spiffe://example.org"]);
    let token = partner.jwt(&SpiffeId::new("spiffe://partner.org/api").unwrap(), &["web".into()], 300).unwrap();
    let refused = c.validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: "web".into(), svid: token.clone() }).await;
    let status = refused.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("partner.org"), "{}", status.message());

    // The same workload once its entry federates with partner.org.
    f.update(|s| {
        let mut e = s.entries["e1"].as_ref().clone();
        e.federates_with = vec![partner.trust_domain.clone()];
        s.entries.insert("e1".into(), Arc::new(e));
    });
    let ok = c.validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: "web".into(), svid: token }).await.unwrap();
    assert_eq!(ok.into_inner().spiffe_id, "spiffe://partner.org/api");
    let svid = first_x509(&f.socket).await.unwrap();
    assert_eq!(svid.federated_bundles.keys().collect::<Vec<_>>(), vec!["spiffe://partner.org"]);
}

#[tokio::test]
async fn jwt_svid_fetch_and_validate() {
    let sels = uid_selector();
    let f = serve(
        vec![
            entry("e1", "spiffe://example.org/web", &sels, 1, "w"),
            entry("e2", "spiffe://example.org/api", &sels, 2, "a"),
        ],
        true,
    )
    .await;
    let mut c = client::connect(&f.socket).await.unwrap();
    let no_aud = c.fetch_jwtsvid(pb::JwtsvidRequest { audience: vec![], spiffe_id: String::new() }).await;
    assert_eq!(no_aud.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let all = c
        .fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["db".into()], spiffe_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec!["spiffe://example.org/web", "spiffe://example.org/api"]);
    let one = c
        .fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["db".into()], spiffe_id: "spiffe://example.org/api".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(one.svids[0].hint, "a");
    let not_mine = c
        .fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["db".into()], spiffe_id: "spiffe://example.org/x".into() })
        .await;
    assert_eq!(not_mine.err().map(|s| s.code()), Some(Code::PermissionDenied));

    let token = one.svids[0].svid.clone();
    let ok =
        c.validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: "db".into(), svid: token.clone() }).await.unwrap();
    let ok = ok.into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://example.org/api");
    let claims = ok.claims.unwrap();
    assert_eq!(
        claims.fields["sub"].kind,
        Some(prost_types::value::Kind::StringValue("spiffe://example.org/api".into()))
    );
    let cases = [("other", token.as_str()), ("", token.as_str()), ("db", ""), ("db", "not.a.jwt")];
    for (aud, svid) in cases {
        let r = c.validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: aud.into(), svid: svid.into() }).await;
        assert_eq!(r.err().map(|s| s.code()), Some(Code::InvalidArgument), "{aud} {svid}");
    }
}

#[tokio::test]
async fn unknown_rpc_is_unimplemented() {
    let f = serve(vec![], false).await;
    let ch = client::channel(&f.socket).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchWITSVID");
    let r = grpc.unary(tonic::Request::new(()), path, codec).await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::Unimplemented));
}

/// Run by `another_uid_gets_permission_denied` as uid 65534; does nothing otherwise.
#[tokio::test]
async fn child_as_other_uid() {
    let Ok(socket) = std::env::var("SIGIL_TEST_SOCKET") else { return };
    assert_eq!(my_uid(), 65534);
    let r = first_x509(Path::new(&socket)).await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::PermissionDenied));
}

#[tokio::test]
async fn another_uid_gets_permission_denied() {
    if my_uid() != 0 {
        eprintln!("skipped: needs root to switch uid");
        return;
    }
    let f = serve(vec![entry("e1", "spiffe://example.org/root-only", &uid_selector(), 1, "")], true).await;
    // Sanity: the owner uid gets its SVID.
    assert_eq!(first_x509(&f.socket).await.unwrap().svids.len(), 1);
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", "child_as_other_uid", "--nocapture"])
        .env("SIGIL_TEST_SOCKET", &f.socket)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// Rough latency of a FetchX509SVID first response with a warm cache (run with --ignored --nocapture;
/// numbers from a debug build are an upper bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn first_response_latency() {
    let f = serve(vec![entry("e1", "spiffe://example.org/web", &uid_selector(), 1, "")], true).await;
    let mut c = client::connect(&f.socket).await.unwrap();
    let mut times = vec![];
    for _ in 0..2000 {
        let t = std::time::Instant::now();
        let mut s = c.fetch_x509svid(pb::X509svidRequest {}).await.unwrap().into_inner();
        let m = s.message().await.unwrap().unwrap();
        times.push(t.elapsed());
        assert_eq!(m.svids.len(), 1);
    }
    times.sort();
    println!("p50 {:?} p99 {:?}", times[times.len() / 2], times[times.len() * 99 / 100]);
    // Baseline: a unary call answered before attestation.
    let mut base = vec![];
    for _ in 0..2000 {
        let t = std::time::Instant::now();
        let r = c.validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: "a".into(), svid: String::new() }).await;
        base.push(t.elapsed());
        assert!(r.is_err());
    }
    base.sort();
    println!("baseline unary p50 {:?} p99 {:?}", base[base.len() / 2], base[base.len() * 99 / 100]);
}

/// A burst of 300 entry changes for one workload (one every 2 ms) while its client reads as fast as it can:
/// the open FetchX509SVID stream merges them (pacing: at least 10 ms between messages, more for bigger
/// ones) instead of sending one message per change (the old stream sent ~one per change), and its last
/// message is the final state.
#[tokio::test]
async fn a_burst_of_changes_is_merged_into_few_messages() {
    let sels = uid_selector();
    let f = serve(vec![entry("e0", "spiffe://example.org/w0", &sels, 0, "")], true).await;
    let mut c = client::connect(&f.socket).await.unwrap();
    let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().svids.len(), 1);
    let reader = tokio::spawn(async move {
        let mut messages = 0usize;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
            messages += 1;
            if m.svids.len() == 301 {
                return messages;
            }
        }
    });
    let started = std::time::Instant::now();
    for i in 1..=300 {
        let e = entry(&format!("e{i}"), &format!("spiffe://example.org/w{i}"), &sels, i, "");
        let svid = svid_for(&f.ca, &e, 3600);
        f.update(|s| {
            s.svids.insert(e.id.as_str().into(), svid);
            s.entries.insert(e.id.as_str().into(), e);
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let burst = started.elapsed();
    let messages = reader.await.unwrap();
    eprintln!("{messages} messages for 300 changes in {burst:?}");
    // At most one message per 10 ms of burst (plus the last), and far from one per change.
    let bound = usize::try_from(burst.as_millis() / 10 + 2).unwrap();
    assert!(messages <= bound && messages < 150, "{messages} messages for 300 changes in {burst:?}");
}
