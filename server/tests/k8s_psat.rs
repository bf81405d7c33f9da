//! The `k8s_psat` node attestor.
//!
//! Tests without a cluster: configuration and dispatch through the real gRPC `Attest`, the bounded wait on
//! an API server that never answers, re-attestation replacing an agent's SVID, renewal refused.
//!
//! `#[ignore]` tests need a real kube-apiserver (`e2e/cluster/cluster up --tier api`):
//!
//! ```sh
//! export KUBECONFIG=$(e2e/cluster/cluster up --tier api)
//! cargo test -p sigil-server --test k8s_psat -- --ignored
//! ```
//!
//! They create a namespace, service account, node and pod, get pod-bound tokens from the TokenRequest API,
//! and sign an expired one with the cluster's service account key (`$SIGIL_CLUSTER_DIR/pki/sa.key`,
//! default `/tmp/sigil-cluster`). With `CI=true` and no `KUBECONFIG` they fail instead of passing unrun.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod k8s_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_support::*;
use sigil_core::TrustDomain;
use sigil_proto::admin::{self as apb, agents_client::AgentsClient};
use sigil_proto::agent as pb;
use sigil_server::attestor::K8sPsatAttestor;
use sigil_server::attestor::k8s_psat::PsatError;
use sigil_server::attestor::kube::ClusterApi;
use sigil_server::config::{K8sPsatCluster, K8sPsatConfig};
use sigil_server::datastore::AttestedAgent;
use tonic::Code;

fn payload(cluster: &str, token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "cluster": cluster, "token": token })).unwrap()
}

fn psat_toml(cluster: &str, kubeconfig: &str, extra: &str) -> String {
    format!(
        "[node_attestor.k8s_psat.clusters.{cluster}]\nservice_account_allow_list = [\"spire:spire-agent\"]\nkube_config_file = \"{kubeconfig}\"\n{extra}"
    )
}

// ----- without a cluster -----

#[tokio::test]
async fn k8s_psat_is_refused_when_not_configured() {
    let s = TestServer::start("").await;
    let err = attest_as(s.server.agent_addr, "k8s_psat", payload("c1", "t")).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), r#"attestation_type "k8s_psat" is not supported (supported: join_token)"#);
}

#[tokio::test]
async fn payload_errors_and_unknown_cluster_need_no_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://{}", unused_addr()));
    let s = TestServer::start(&psat_toml("c1", &kubeconfig, "")).await;
    let addr = s.server.agent_addr;
    let cases: &[(&str, Vec<u8>, &str)] = &[
        ("bogus", b"x".to_vec(), r#"attestation_type "bogus" is not supported (supported: join_token, k8s_psat)"#),
        ("k8s_psat", payload("other", "t"), r#"k8s_psat: not configured for cluster "other""#),
        ("k8s_psat", b"{".to_vec(), "k8s_psat: failed to unmarshal data payload"),
        ("k8s_psat", vec![], "k8s_psat: missing attestation payload"),
        ("k8s_psat", payload("", "t"), "k8s_psat: missing cluster in attestation data"),
        ("k8s_psat", payload("c1", ""), "k8s_psat: missing token in attestation data"),
    ];
    for (kind, body, want) in cases {
        let err = attest_as(addr, kind, body.clone()).await.err().unwrap();
        assert_eq!(err.code(), Code::InvalidArgument, "{kind} {want}");
        assert!(err.message().starts_with(want), "{kind}: {}", err.message());
    }
    // The join token type still works next to k8s_psat.
    attest(addr, &s.join_token().await).await.unwrap();
    let invalid = attestation_count(&s, "k8s_psat", "invalid");
    assert_eq!(invalid, 5);
}

#[tokio::test]
async fn unreachable_api_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://{}", unused_addr()));
    let s = TestServer::start(&psat_toml("c1", &kubeconfig, "")).await;
    let started = Instant::now();
    let err = attest_as(s.server.agent_addr, "k8s_psat", payload("c1", "a.b.c")).await.err().unwrap();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().starts_with("k8s_psat: TokenReview: "), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(12), "{:?}", started.elapsed());
    assert_eq!(attestation_count(&s, "k8s_psat", "unavailable"), 1);
}

#[tokio::test]
async fn silent_api_server_ends_in_the_bound_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, holder) = silent_api_server(dir.path()).await;
    let cluster = psat_cluster(&["spire:spire-agent"], Some(kubeconfig.into()));
    let api = ClusterApi::connect("c1", &cluster).await.unwrap().with_timeout(Duration::from_secs(1));
    let config = K8sPsatConfig { clusters: [("c1".to_owned(), cluster)].into() };
    let attestor = K8sPsatAttestor::with_apis(config, [("c1".to_owned(), api)].into());
    let started = Instant::now();
    let err = attestor.attest(&TrustDomain::new(TD).unwrap(), &payload("c1", "a.b.c")).await.unwrap_err();
    assert!(matches!(err, PsatError::Unavailable { what: "TokenReview", .. }), "{err:?}");
    assert!(err.to_string().contains("no answer from the Kubernetes API server within 1 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    holder.abort();
}

#[tokio::test]
async fn bad_kubeconfig_stops_the_start_naming_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.kubeconfig");
    let garbage = dir.path().join("garbage.kubeconfig");
    std::fs::write(&garbage, "clusters: [oops").unwrap();
    for file in [&missing, &garbage] {
        let toml = psat_toml("east", file.to_str().unwrap(), "");
        let err = sigil_server::run::start(config(dir.path(), &toml)).await.err().unwrap().to_string();
        assert!(err.contains("node_attestor.k8s_psat.clusters.east: kube_config_file"), "{err}");
        assert!(err.contains(file.to_str().unwrap()), "{err}");
    }
}

/// Re-attestation (what a k8s_psat agent does instead of renewing) keeps one record per agent ID, replaces
/// the SVID serial (the previous SVID stops working, its open stream ends) and the selectors.
#[tokio::test]
async fn reattestation_replaces_the_svid_and_selectors_of_the_one_record() {
    let s = TestServer::start("").await;
    let mut first = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let id = first.id.clone();
    let before = s.server.state.agent(&id).unwrap();
    let mut stream = first.sync().await;
    assert!(next_update(&mut stream).await.full_snapshot);

    // The same agent ID attested again, with another SVID (as Node::attest records it).
    tokio::time::sleep(Duration::from_millis(1100)).await; // so updated_at differs from created_at
    let selectors = vec![sigil_core::Selector::parse("k8s_psat:cluster:c1").unwrap()];
    let reattested = AttestedAgent {
        attestation_type: "k8s_psat".into(),
        cert_serial: "0a0b0c".into(),
        selectors: selectors.clone(),
        created_at: sigil_server::state::now_unix(),
        updated_at: sigil_server::state::now_unix(),
        ..before.clone()
    };
    let stored = s.server.state.record_attested_agent(reattested).await.unwrap();
    assert_eq!((stored.created_at, stored.cert_serial.as_str()), (before.created_at, "0a0b0c"));
    assert_eq!(stored.selectors, selectors);
    assert!(stored.updated_at > before.updated_at);

    let end = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap();
    let status = end.expect_err("the stream opened with the previous SVID ends");
    assert_eq!(status.code(), Code::PermissionDenied);
    let err = first.client.sync_entries(pb::SyncEntriesRequest {}).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("is not the agent's current SVID"), "{}", err.message());

    let listed = AgentsClient::new(s.admin().await).list_agents(apb::ListAgentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.agents.len(), 1);
    assert_eq!(listed.agents[0].attestation_type, "k8s_psat");
    assert_eq!(listed.agents[0].selectors.len(), 1);
    assert_eq!(s.server.state.ds.get_agent(&id).await.unwrap().unwrap(), stored);
}

#[tokio::test]
async fn reattesting_a_banned_agent_is_refused() {
    let s = TestServer::start("").await;
    let agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let before = s.server.state.agent(&agent.id).unwrap();
    s.server.state.ban_agent(&agent.id).await.unwrap();
    let again = AttestedAgent { cert_serial: "0a0b0c".into(), ..before };
    let err = s.server.state.record_attested_agent(again).await.unwrap_err();
    assert!(err.to_string().contains("is banned"), "{err}");
    assert!(s.server.state.agent(&agent.id).unwrap().banned);
}

#[tokio::test]
async fn k8s_psat_agents_must_reattest_instead_of_renewing() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    // Turn the record into a k8s_psat one that accepts the agent's current SVID.
    let record = s.server.state.agent(&agent.id).unwrap();
    let psat = AttestedAgent { attestation_type: "k8s_psat".into(), ..record };
    s.server.state.record_attested_agent(psat).await.unwrap();
    agent.reconnect();
    let (csr, _) = csr();
    let err = agent.client.renew_agent_svid(pb::RenewAgentSvidRequest { csr }).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("AGENT_MUST_REATTEST"), "{}", err.message());
    // Nothing else about the agent changed: it still syncs.
    let mut stream = agent.sync().await;
    assert!(next_update(&mut stream).await.full_snapshot);
}

// ----- against a real kube-apiserver -----

/// The attestor, as configured for cluster `test`, with a client built from `KUBECONFIG`.
fn attestor(k: &Kube, cluster: K8sPsatCluster) -> K8sPsatAttestor {
    let config = K8sPsatConfig { clusters: [("test".to_owned(), cluster)].into() };
    K8sPsatAttestor::with_apis(config, [("test".to_owned(), ClusterApi::from_client(k.client.clone()))].into())
}

fn allowed(f: &Fixture) -> K8sPsatCluster {
    let mut c = psat_cluster(&[&format!("{}:spire-agent", f.ns)], None);
    c.allowed_node_label_keys = ["zone".to_owned()].into();
    c.allowed_pod_label_keys = ["app".to_owned()].into();
    c
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

#[track_caller]
fn assert_refused(result: Result<impl std::fmt::Debug, PsatError>, code: Code, fragment: &str) -> String {
    let err = result.unwrap_err();
    let status = err.to_status();
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(fragment), "want {fragment:?} in {:?}", status.message());
    status.message().to_owned()
}

#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_attests_a_pod_bound_token() {
    let Some(k) = Kube::from_env().await else { return };
    let f = Fixture::create(&k).await;
    let token = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &["spire-server"]).await;
    let a = attestor(&k, allowed(&f)).attest(&td(), &payload("test", &token)).await.unwrap();
    assert_eq!(a.agent_id.as_str(), format!("spiffe://{TD}/spire/agent/k8s_psat/test/{}", f.node_uid));
    let got: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
    let want = [
        "k8s_psat:cluster:test".to_owned(),
        format!("k8s_psat:agent_ns:{}", f.ns),
        "k8s_psat:agent_sa:spire-agent".into(),
        format!("k8s_psat:agent_pod_name:{}", f.pod),
        format!("k8s_psat:agent_pod_uid:{}", f.pod_uid),
        format!("k8s_psat:agent_node_ip:{HOST_IP}"),
        format!("k8s_psat:agent_node_name:{}", f.node),
        format!("k8s_psat:agent_node_uid:{}", f.node_uid),
        "k8s_psat:agent_node_label:zone:z1".into(),
        "k8s_psat:agent_pod_label:app:spire-agent".into(),
    ];
    assert_eq!(got, want); // the node's and pod's `secret` labels are not allowed keys

    let mut by_pod = allowed(&f);
    by_pod.use_pod_uid_for_agent_id = true;
    let a = attestor(&k, by_pod).attest(&td(), &payload("test", &token)).await.unwrap();
    assert_eq!(a.agent_id.as_str(), format!("spiffe://{TD}/spire/agent/k8s_psat/test/pod/{}", f.pod_uid));
    f.delete(&k).await;
}

#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_refuses_a_token_for_another_audience() {
    let Some(k) = Kube::from_env().await else { return };
    let f = Fixture::create(&k).await;
    let other_audience = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &["not-spire"]).await;
    let msg = assert_refused(
        attestor(&k, allowed(&f)).attest(&td(), &payload("test", &other_audience)).await,
        Code::PermissionDenied,
        "k8s_psat: token not authenticated according to TokenReview API: ",
    );
    assert!(msg.contains("audience"), "{msg}");
    eprintln!("other audience: {msg}");
    f.delete(&k).await;
}

#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_audience_empty_means_the_api_servers_own() {
    let Some(k) = Kube::from_env().await else { return };
    let f = Fixture::create(&k).await;
    // audience = []: no spec.audiences, so the API server's audiences (its issuer) apply, not spire-server.
    let mut api_default = allowed(&f);
    api_default.audience.clear();
    let psat = attestor(&k, api_default);
    let for_spire = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &["spire-server"]).await;
    assert_refused(psat.attest(&td(), &payload("test", &for_spire)).await, Code::PermissionDenied, "not authenticated");
    let for_api_server = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &[]).await;
    psat.attest(&td(), &payload("test", &for_api_server)).await.unwrap();
    f.delete(&k).await;
}

#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_service_account_not_in_allow_list() {
    let Some(k) = Kube::from_env().await else { return };
    let f = Fixture::create(&k).await;
    let good = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &["spire-server"]).await;
    let other_sa = psat_cluster(&[&format!("{}:someone-else", f.ns), "spire:spire-agent"], None);
    assert_refused(
        attestor(&k, other_sa).attest(&td(), &payload("test", &good)).await,
        Code::PermissionDenied,
        &format!("k8s_psat: \"{}:spire-agent\" is not an allowed service account", f.ns),
    );
    f.delete(&k).await;
}

#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_cluster_not_configured() {
    let Some(k) = Kube::from_env().await else { return };
    let f = Fixture::create(&k).await;
    let good = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &["spire-server"]).await;
    assert_refused(
        attestor(&k, allowed(&f)).attest(&td(), &payload("elsewhere", &good)).await,
        Code::InvalidArgument,
        "k8s_psat: not configured for cluster \"elsewhere\"",
    );
    f.delete(&k).await;
}

#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_refuses_the_token_of_a_deleted_pod() {
    let Some(k) = Kube::from_env().await else { return };
    let f = Fixture::create(&k).await;
    let psat = attestor(&k, allowed(&f));
    let (gone, gone_uid) = f.pod(&k, "agent-gone", "spire-agent").await;
    let orphan = f.token(&k, "spire-agent", &gone, &gone_uid, &["spire-server"]).await;
    // Positive control: accepted while the pod exists.
    psat.attest(&td(), &payload("test", &orphan)).await.unwrap();
    f.delete_pod(&k, &gone).await;
    // Bound tokens die with their pod, but the API server checks the pod in its informer cache: just after
    // the deletion the TokenReview may still pass, and then the attestor's own GET of the pod refuses the
    // token. Once the cache has caught up the TokenReview refuses it. Both are PermissionDenied.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut get_path_seen = false;
    loop {
        let msg =
            assert_refused(psat.attest(&td(), &payload("test", &orphan)).await, Code::PermissionDenied, "k8s_psat: ");
        if msg.starts_with("k8s_psat: token not authenticated according to TokenReview API: ") {
            eprintln!("deleted pod: {msg} (the attestor's pod GET refused it first: {get_path_seen})");
            break;
        }
        assert!(msg.starts_with(&format!("k8s_psat: pod {}/{gone} not found", f.ns)), "{msg}");
        get_path_seen = true;
        assert!(Instant::now() < deadline, "the TokenReview still accepts the token of a deleted pod");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A garbage token, for comparison.
    assert_refused(psat.attest(&td(), &payload("test", "a.b.c")).await, Code::PermissionDenied, "not authenticated");
    f.delete(&k).await;
}

#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_refuses_an_expired_token() {
    let Some(k) = Kube::from_env().await else { return };
    let Some(signer) = SaSigner::from_cluster_dir() else { return };
    let f = Fixture::create(&k).await;
    let psat = attestor(&k, allowed(&f));
    // Positive control: the same claims, signed the same way, but still valid, are accepted. So the refusal
    // below is about the expiry, not about how the token was made.
    let now = sigil_server::state::now_unix();
    let valid = signer.sign(&f.claims("spire-server", now - 60, now + 600));
    let a = psat.attest(&td(), &payload("test", &valid)).await.unwrap();
    assert!(a.agent_id.as_str().ends_with(&f.node_uid), "{}", a.agent_id);

    let expired = signer.sign(&f.claims("spire-server", now - 7200, now - 3600));
    let msg = assert_refused(
        psat.attest(&td(), &payload("test", &expired)).await,
        Code::PermissionDenied,
        "k8s_psat: token not authenticated according to TokenReview API: ",
    );
    assert!(msg.contains("expired"), "{msg}");
    eprintln!("expired: {msg}");
    f.delete(&k).await;
}

/// The whole path through a started server: Attest over gRPC, node alias entries over the agent's
/// selectors, renewal refused, re-attestation with a fresh token keeping one record per node.
#[tokio::test]
#[ignore = "needs a real kube-apiserver: KUBECONFIG=$(e2e/cluster/cluster up --tier api)"]
async fn real_apiserver_through_grpc_attest_and_reattest() {
    let Some(k) = Kube::from_env().await else { return };
    let f = Fixture::create(&k).await;
    let toml = format!(
        "[node_attestor.k8s_psat.clusters.test]\nservice_account_allow_list = [\"{}:spire-agent\"]\nkube_config_file = \"{}\"\nallowed_node_label_keys = [\"zone\"]\n",
        f.ns,
        k.path.display()
    );
    let s = TestServer::start(&toml).await;
    let addr = s.server.agent_addr;
    let agent_id = format!("spiffe://{TD}/spire/agent/k8s_psat/test/{}", f.node_uid);
    let alias = "spiffe://example.org/k8s-node/zone-z1";
    s.create_entry(
        alias,
        "spiffe://example.org/spire/server",
        &["k8s_psat:cluster:test", "k8s_psat:agent_node_label:zone:z1"],
    )
    .await;
    let via_alias = s.create_entry("spiffe://example.org/via-alias", alias, &["unix:uid:1"]).await;
    let direct = s.create_entry("spiffe://example.org/direct", &agent_id, &["unix:uid:2"]).await;

    let token = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &["spire-server"]).await;
    let mut first = attest_as(addr, "k8s_psat", payload("test", &token)).await.unwrap();
    assert_eq!(first.id.as_str(), agent_id);
    let mut stream = first.sync().await;
    let snapshot = next_update(&mut stream).await;
    let mut ids: Vec<String> = snapshot.upserted.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    let mut want = vec![via_alias.id.clone(), direct.id.clone()];
    want.sort();
    assert_eq!(ids, want);

    let (csr, _) = csr();
    let err = first.client.renew_agent_svid(pb::RenewAgentSvidRequest { csr }).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("AGENT_MUST_REATTEST"), "{}", err.message());

    let created_at = s.server.state.agent(&first.id).unwrap().created_at;
    // The agent re-attests with a fresh token (same pod, same node): same ID, one record, new SVID.
    let fresh = f.token(&k, "spire-agent", &f.pod, &f.pod_uid, &["spire-server"]).await;
    let mut second = attest_as(addr, "k8s_psat", payload("test", &fresh)).await.unwrap();
    assert_eq!(second.id, first.id);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap();
    assert_eq!(end.expect_err("the old SVID's stream ends").code(), Code::PermissionDenied);
    let err = first.client.sync_entries(pb::SyncEntriesRequest {}).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut stream = second.sync().await;
    assert_eq!(next_update(&mut stream).await.upserted.len(), 2);

    let listed = AgentsClient::new(s.admin().await).list_agents(apb::ListAgentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.agents.len(), 1);
    let shown = &listed.agents[0];
    assert_eq!((shown.id.as_str(), shown.attestation_type.as_str()), (agent_id.as_str(), "k8s_psat"));
    let selectors: BTreeMap<String, String> = shown
        .selectors
        .iter()
        .map(|s| s.value.split_once(':').map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap())
        .collect();
    assert_eq!(selectors.get("agent_node_uid"), Some(&f.node_uid));
    assert_eq!(selectors.get("agent_node_label").map(String::as_str), Some("zone:z1"));
    assert_eq!(s.server.state.agent(&second.id).unwrap().created_at, created_at);
    assert_eq!(attestation_count(&s, "k8s_psat", "ok"), 2);

    // Refusals through gRPC keep their codes.
    let err = attest_as(addr, "k8s_psat", payload("test", "a.b.c")).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    f.delete(&k).await;
}
