//! The agent API against a real server: join-token attestation, push sync, batch signing, JWT, eviction, ban.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::*;
use sigil_core::SpiffeId;
use sigil_proto::admin::{self as apb, agents_client::AgentsClient, entries_client::EntriesClient};
use sigil_proto::agent as pb;
use sigil_proto::types as tpb;
use tonic::Code;

#[tokio::test]
async fn attest_with_join_token_gives_spire_format_agent_id() {
    let s = TestServer::start("").await;
    let token = s.join_token().await;
    let agent = attest(s.server.agent_addr, &token).await.unwrap();
    assert_eq!(agent.id.as_str(), format!("spiffe://{TD}/spire/agent/join_token/{token}"));
    let leaf_id =
        sigil_core::x509::verify_x509_svid(&agent.chain, &s.bundle(), sigil_server::state::now_unix()).unwrap();
    assert_eq!(leaf_id, agent.id);
    let listed = AgentsClient::new(s.admin().await).list_agents(apb::ListAgentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.agents.len(), 1);
    assert_eq!(listed.agents[0].id, agent.id.as_str());
    assert_eq!(listed.agents[0].attestation_type, "join_token");
}

#[tokio::test]
async fn join_token_reuse_is_refused() {
    let s = TestServer::start("").await;
    let token = s.join_token().await;
    attest(s.server.agent_addr, &token).await.unwrap();
    let err = attest(s.server.agent_addr, &token).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("already been used"), "{}", err.message());
}

#[tokio::test]
async fn expired_join_token_is_refused_and_consumed() {
    let s = TestServer::start("").await;
    let now = sigil_server::state::now_unix();
    s.server.state.ds.create_join_token("0f2d1c3a-expired", now - 1).await.unwrap();
    let err = attest(s.server.agent_addr, "0f2d1c3a-expired").await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "join token expired");
    let again = attest(s.server.agent_addr, "0f2d1c3a-expired").await.err().unwrap();
    assert!(again.message().contains("already been used"), "{}", again.message());
}

#[tokio::test]
async fn unknown_and_malformed_tokens_are_refused_with_clear_errors() {
    let s = TestServer::start("").await;
    let err = attest(s.server.agent_addr, "no-such-token").await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = attest(s.server.agent_addr, "bad token/../x").await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn rpcs_other_than_attest_need_an_agent_svid() {
    let s = TestServer::start("").await;
    let mut anon = sigil_proto::agent::node_client::NodeClient::new(bootstrap_channel(s.server.agent_addr));
    let err = anon.sync_entries(pb::SyncEntriesRequest {}).await.err().unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn sync_pushes_snapshot_then_new_and_deleted_entries() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let before = s.create_entry("spiffe://example.org/before", agent.id.as_str(), &["unix:uid:1"]).await;
    s.create_entry("spiffe://example.org/other", "spiffe://example.org/spire/agent/join_token/x", &["unix:uid:2"])
        .await;
    let mut stream = agent.sync().await;
    let first = next_update(&mut stream).await;
    assert!(first.full_snapshot);
    assert_eq!(first.upserted.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![before.id.clone()]);
    assert!(first.bundle.is_some());

    let created = s.create_entry("spiffe://example.org/web", agent.id.as_str(), &["unix:uid:1000"]).await;
    let upd = next_update(&mut stream).await;
    assert!(!upd.full_snapshot);
    assert_eq!(upd.upserted.len(), 1);
    assert_eq!(upd.upserted[0].id, created.id);
    assert_eq!(upd.upserted[0].spiffe_id, "spiffe://example.org/web");

    EntriesClient::new(s.admin().await)
        .batch_delete_entry(apb::BatchDeleteEntryRequest { ids: vec![created.id.clone()] })
        .await
        .unwrap();
    let upd = next_update(&mut stream).await;
    assert_eq!(upd.removed_entry_ids, vec![created.id]);
    assert!(upd.upserted.is_empty());
}

#[tokio::test]
async fn token_alias_entry_authorizes_entries_under_the_alias() {
    let s = TestServer::start("").await;
    let token = AgentsClient::new(s.admin().await)
        .create_join_token(apb::CreateJoinTokenRequest {
            ttl: 0,
            agent_alias_spiffe_id: "spiffe://example.org/host/a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let child = s.create_entry("spiffe://example.org/svc", "spiffe://example.org/host/a", &["unix:uid:7"]).await;
    let mut agent = attest(s.server.agent_addr, &token).await.unwrap();
    let mut stream = agent.sync().await;
    let first = next_update(&mut stream).await;
    let ids: BTreeSet<String> = first.upserted.iter().map(|e| e.spiffe_id.clone()).collect();
    assert_eq!(
        ids,
        BTreeSet::from(["spiffe://example.org/host/a".to_string(), "spiffe://example.org/svc".to_string()])
    );
    assert!(first.upserted.iter().any(|e| e.id == child.id));
}

#[tokio::test]
async fn batch_signing_signs_only_authorized_entries() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let mine = s.create_entry("spiffe://example.org/mine", agent.id.as_str(), &["unix:uid:1"]).await;
    let theirs = s
        .create_entry("spiffe://example.org/theirs", "spiffe://example.org/spire/agent/join_token/zz", &["unix:uid:1"])
        .await;
    let (csr1, _) = csr();
    let (csr2, _) = csr();
    let resp = agent
        .client
        .batch_new_x509_svid(pb::BatchNewX509SvidRequest {
            params: vec![
                pb::batch_new_x509_svid_request::Param { entry_id: mine.id.clone(), csr: csr1 },
                pb::batch_new_x509_svid_request::Param { entry_id: theirs.id.clone(), csr: csr2 },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 2);
    assert_eq!(resp.results[0].code, 0, "{}", resp.results[0].message);
    let svid = resp.results[0].svid.as_ref().unwrap();
    let id =
        sigil_core::x509::verify_x509_svid(&svid.cert_chain, &s.bundle(), sigil_server::state::now_unix()).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/mine");
    assert_eq!(resp.results[1].code, Code::PermissionDenied as i32);
    assert!(resp.results[1].svid.is_none());
}

#[tokio::test]
async fn batch_and_jwt_follow_aliases_and_nesting_and_keep_request_order() {
    let s = TestServer::start("").await;
    let token = AgentsClient::new(s.admin().await)
        .create_join_token(apb::CreateJoinTokenRequest {
            ttl: 0,
            agent_alias_spiffe_id: "spiffe://example.org/host/a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let svc = sigil_proto::types::Entry {
        spiffe_id: "spiffe://example.org/svc".into(),
        parent_id: "spiffe://example.org/host/a".into(),
        selectors: vec![sigil_proto::types::Selector { r#type: "unix".into(), value: "uid:7".into() }],
        dns_names: vec!["svc.example.org".into()],
        x509_svid_ttl: 600,
        ..Default::default()
    };
    let svc = EntriesClient::new(s.admin().await)
        .batch_create_entry(apb::BatchCreateEntryRequest { entries: vec![svc] })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0)
        .entry
        .unwrap();
    let inner = s.create_entry("spiffe://example.org/svc/inner", "spiffe://example.org/svc", &["unix:uid:8"]).await;
    let theirs = s
        .create_entry("spiffe://example.org/theirs", "spiffe://example.org/spire/agent/join_token/zz", &["unix:uid:1"])
        .await;
    let mut agent = attest(s.server.agent_addr, &token).await.unwrap();
    let ids = [theirs.id.as_str(), inner.id.as_str(), "nope", svc.id.as_str(), inner.id.as_str()];
    let params = ids
        .iter()
        .map(|id| pb::batch_new_x509_svid_request::Param { entry_id: id.to_string(), csr: csr().0 })
        .collect();
    let resp = agent.client.batch_new_x509_svid(pb::BatchNewX509SvidRequest { params }).await.unwrap().into_inner();
    assert_eq!(resp.results.iter().map(|r| r.entry_id.as_str()).collect::<Vec<_>>(), ids);
    assert_eq!(
        resp.results.iter().map(|r| r.code).collect::<Vec<_>>(),
        [Code::PermissionDenied as i32, 0, Code::PermissionDenied as i32, 0, 0]
    );
    assert_eq!(resp.results[0].message, format!("entry {:?} is not authorized for this agent", theirs.id));
    assert_eq!(resp.results[2].message, "entry \"nope\" is not authorized for this agent");
    let now = sigil_server::state::now_unix();
    let signed_ids: Vec<String> = [1, 3, 4]
        .iter()
        .map(|i| {
            let svid = resp.results[*i].svid.as_ref().unwrap();
            assert_eq!(
                svid.spiffe_id,
                sigil_core::x509::verify_x509_svid(&svid.cert_chain, &s.bundle(), now).unwrap().as_str()
            );
            svid.spiffe_id.clone()
        })
        .collect();
    assert_eq!(
        signed_ids,
        ["spiffe://example.org/svc/inner", "spiffe://example.org/svc", "spiffe://example.org/svc/inner"]
    );
    // The entry's DNS names and TTL reach the certificate.
    let svc_svid = resp.results[3].svid.as_ref().unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&svc_svid.cert_chain[0]).unwrap();
    let dns: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, ["svc.example.org"]);
    assert!((svc_svid.expires_at - now - 600).abs() <= 5, "expires_at {} now {now}", svc_svid.expires_at);

    let jwt = agent
        .client
        .new_jwt_svid(pb::NewJwtSvidRequest { entry_id: inner.id.clone(), audience: vec!["db".into()] })
        .await
        .unwrap()
        .into_inner();
    let bundle = s.bundle();
    let lookup = |td: &sigil_core::TrustDomain| (td == &bundle.trust_domain).then(|| (*bundle).clone());
    let v = sigil_core::jwt::validate_jwt_svid(&jwt.token, "db", &lookup, now).unwrap();
    assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/svc/inner");
    let err = agent
        .client
        .new_jwt_svid(pb::NewJwtSvidRequest { entry_id: theirs.id.clone(), audience: vec!["db".into()] })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), format!("entry {:?} is not authorized for this agent", theirs.id));
}

#[tokio::test]
async fn garbage_csr_gets_invalid_argument_not_a_panic() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let mine = s.create_entry("spiffe://example.org/mine", agent.id.as_str(), &["unix:uid:1"]).await;
    let resp = agent
        .client
        .batch_new_x509_svid(pb::BatchNewX509SvidRequest {
            params: vec![pb::batch_new_x509_svid_request::Param { entry_id: mine.id, csr: vec![0x30, 0x03, 1, 2, 3] }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].code, Code::InvalidArgument as i32);
}

#[tokio::test]
async fn jwt_svid_for_authorized_entry_validates_against_bundle() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let mine = s.create_entry("spiffe://example.org/mine", agent.id.as_str(), &["unix:uid:1"]).await;
    let resp = agent
        .client
        .new_jwt_svid(pb::NewJwtSvidRequest { entry_id: mine.id, audience: vec!["db".into()] })
        .await
        .unwrap()
        .into_inner();
    let bundle = s.bundle();
    let lookup = |td: &sigil_core::TrustDomain| (td == &bundle.trust_domain).then(|| (*bundle).clone());
    let v = sigil_core::jwt::validate_jwt_svid(&resp.token, "db", &lookup, sigil_server::state::now_unix()).unwrap();
    assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/mine");
    let err =
        agent.client.new_jwt_svid(pb::NewJwtSvidRequest { entry_id: "nope".into(), audience: vec!["db".into()] }).await;
    assert_eq!(err.err().unwrap().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn renewed_svid_keeps_the_agent_id_and_works() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let (csr, key) = csr();
    let svid =
        agent.client.renew_agent_svid(pb::RenewAgentSvidRequest { csr }).await.unwrap().into_inner().svid.unwrap();
    assert_eq!(svid.spiffe_id, agent.id.as_str());
    assert_ne!(svid.cert_chain, agent.chain);
    agent.chain = svid.cert_chain;
    agent.key = key;
    agent.reconnect();
    let mut stream = agent.sync().await;
    assert!(next_update(&mut stream).await.full_snapshot);
}

#[tokio::test]
async fn evicted_agent_must_attest_again() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let mut stream = agent.sync().await;
    next_update(&mut stream).await;
    AgentsClient::new(s.admin().await)
        .delete_agent(apb::DeleteAgentRequest { id: agent.id.to_string() })
        .await
        .unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message()).await.unwrap();
    assert_eq!(ended.err().unwrap().code(), Code::PermissionDenied);
    let err = agent.client.sync_entries(pb::SyncEntriesRequest {}).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("attest again"), "{}", err.message());
    let again = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    assert_ne!(again.id, agent.id);
}

#[tokio::test]
async fn banned_agent_cannot_sync_renew_or_reattest() {
    let s = TestServer::start("").await;
    let token = s.join_token().await;
    let mut agent = attest(s.server.agent_addr, &token).await.unwrap();
    AgentsClient::new(s.admin().await).ban_agent(apb::BanAgentRequest { id: agent.id.to_string() }).await.unwrap();
    let err = agent.client.sync_entries(pb::SyncEntriesRequest {}).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("banned"), "{}", err.message());
    let (csr, _) = csr();
    let err = agent.client.renew_agent_svid(pb::RenewAgentSvidRequest { csr }).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The same agent ID can never come back: its token is spent and the banned record stays.
    assert!(attest(s.server.agent_addr, &token).await.is_err());
    let shown = AgentsClient::new(s.admin().await)
        .get_agent(apb::GetAgentRequest { id: agent.id.to_string() })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.banned);
}

#[tokio::test]
async fn entry_validation_errors_name_the_field() {
    let s = TestServer::start("").await;
    let bad = sigil_proto::types::Entry {
        spiffe_id: "spiffe://example.org/ok".into(),
        parent_id: "not-a-spiffe-id".into(),
        selectors: vec![sigil_proto::types::Selector { r#type: "unix".into(), value: "uid:1".into() }],
        ..Default::default()
    };
    let resp = EntriesClient::new(s.admin().await)
        .batch_create_entry(apb::BatchCreateEntryRequest { entries: vec![bad] })
        .await
        .unwrap()
        .into_inner();
    let st = resp.results[0].status.clone().unwrap();
    assert_eq!(st.code, Code::InvalidArgument as i32);
    assert!(st.message.starts_with("parent_id:"), "{}", st.message);
    let _ = SpiffeId::new("spiffe://example.org/x").unwrap();
}

/// The sync stream's deltas follow the entry tree: renaming an entry that others are parented to removes
/// those (and their descendants) from the agent, moving one back brings it back, deleting the middle entry
/// removes everything below it. Each change is announced with what it touched, not recomputed in full.
#[tokio::test]
async fn sync_deltas_follow_nested_entries() {
    let s = TestServer::start("").await;
    let mut agent = attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    let mid = s.create_entry("spiffe://example.org/mid", agent.id.as_str(), &["unix:uid:1"]).await;
    let leaf = s.create_entry("spiffe://example.org/leaf", "spiffe://example.org/mid", &["unix:uid:2"]).await;
    let deep = s.create_entry("spiffe://example.org/deep", "spiffe://example.org/leaf", &["unix:uid:3"]).await;
    let mut stream = agent.sync().await;
    let first = next_update(&mut stream).await;
    let ids = |v: &[tpb::Entry]| v.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&first.upserted), BTreeSet::from([mid.id.clone(), leaf.id.clone(), deep.id.clone()]));

    let update = |e: tpb::Entry| {
        let s = &s;
        async move {
            let r = EntriesClient::new(s.admin().await)
                .batch_update_entry(apb::BatchUpdateEntryRequest { entries: vec![e] })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.results[0].status.as_ref().map(|s| s.code), Some(0), "{:?}", r.results[0].status);
        }
    };
    let mut renamed = mid.clone();
    renamed.spiffe_id = "spiffe://example.org/mid2".into();
    update(renamed).await;
    let upd = next_update(&mut stream).await;
    assert_eq!(ids(&upd.upserted), BTreeSet::from([mid.id.clone()]));
    assert_eq!(
        upd.removed_entry_ids.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([leaf.id.clone(), deep.id.clone()])
    );

    let mut moved = leaf.clone();
    moved.parent_id = "spiffe://example.org/mid2".into();
    update(moved).await;
    let upd = next_update(&mut stream).await;
    assert_eq!(ids(&upd.upserted), BTreeSet::from([leaf.id.clone(), deep.id.clone()]));
    assert!(upd.removed_entry_ids.is_empty());

    EntriesClient::new(s.admin().await)
        .batch_delete_entry(apb::BatchDeleteEntryRequest { ids: vec![mid.id.clone()] })
        .await
        .unwrap();
    let upd = next_update(&mut stream).await;
    assert!(upd.upserted.is_empty());
    assert_eq!(
        upd.removed_entry_ids.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([mid.id, leaf.id, deep.id])
    );
}
