//! The admin API's federation relationships (`sigil.admin.v1.TrustDomains`), against a real in-process
//! server: round trip, every refusal with its message, the foreign bundle, persistence across restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestServer;
use sigil_core::TrustDomain;
use sigil_core::bundle::Bundle;
use sigil_proto::admin::{
    self as apb, FederationRelationship, HttpsSpiffeProfile, HttpsWebProfile, bundles_client::BundlesClient,
    federation_relationship::Profile, trust_domains_client::TrustDomainsClient,
};
use sigil_server::api::convert;
use tonic::Code;
use tonic::transport::Channel;

fn web(td: &str, url: &str) -> FederationRelationship {
    FederationRelationship {
        trust_domain: td.into(),
        bundle_endpoint_url: url.into(),
        profile: Some(Profile::HttpsWeb(HttpsWebProfile {})),
        trust_domain_bundle: None,
        managed_by: String::new(),
    }
}

fn spiffe(td: &str, url: &str, endpoint: &str) -> FederationRelationship {
    FederationRelationship {
        profile: Some(Profile::HttpsSpiffe(HttpsSpiffeProfile { endpoint_spiffe_id: endpoint.into() })),
        ..web(td, url)
    }
}

/// A foreign CA certificate (self-signed, CA, keyCertSign) and the bundle holding it.
fn foreign_bundle(td: &str) -> Bundle {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    Bundle { x509_authorities: vec![cert.der().to_vec()], sequence: 7, ..Bundle::new(TrustDomain::new(td).unwrap()) }
}

fn client(ch: Channel) -> TrustDomainsClient<Channel> {
    TrustDomainsClient::new(ch)
}

async fn create_one(ch: Channel, r: FederationRelationship) -> (Code, String, Option<FederationRelationship>) {
    let resp = client(ch)
        .batch_create_federation_relationship(apb::BatchCreateFederationRelationshipRequest {
            federation_relationships: vec![r],
        })
        .await
        .unwrap()
        .into_inner();
    let r = resp.results.into_iter().next().unwrap();
    let st = r.status.unwrap();
    (Code::from_i32(st.code), st.message, r.federation_relationship)
}

async fn update_one(ch: Channel, r: FederationRelationship) -> (Code, String, Option<FederationRelationship>) {
    let resp = client(ch)
        .batch_update_federation_relationship(apb::BatchUpdateFederationRelationshipRequest {
            federation_relationships: vec![r],
        })
        .await
        .unwrap()
        .into_inner();
    let r = resp.results.into_iter().next().unwrap();
    let st = r.status.unwrap();
    (Code::from_i32(st.code), st.message, r.federation_relationship)
}

async fn delete(ch: Channel, tds: &[&str]) -> Vec<(Code, String, String)> {
    client(ch)
        .batch_delete_federation_relationship(apb::BatchDeleteFederationRelationshipRequest {
            trust_domains: tds.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| {
            let st = r.status.unwrap();
            (Code::from_i32(st.code), st.message, r.trust_domain)
        })
        .collect()
}

async fn list(ch: Channel) -> Vec<FederationRelationship> {
    client(ch)
        .list_federation_relationships(apb::ListFederationRelationshipsRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .federation_relationships
}

async fn get(ch: Channel, td: &str) -> Result<FederationRelationship, tonic::Status> {
    client(ch)
        .get_federation_relationship(apb::GetFederationRelationshipRequest { trust_domain: td.into() })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn create_list_show_update_delete_round_trip() {
    let s = TestServer::start("").await;
    let spiffe_rel = spiffe("b.test", "https://b.test:8443/bundle", "spiffe://b.test/spire/server");
    let web_rel = web("a.test", "https://a.test/");
    let resp = client(s.admin().await)
        .batch_create_federation_relationship(apb::BatchCreateFederationRelationshipRequest {
            federation_relationships: vec![spiffe_rel.clone(), web_rel.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<_> = resp.results.iter().map(|r| r.status.as_ref().unwrap().code).collect();
    assert_eq!(codes, vec![0, 0], "{resp:?}");
    assert_eq!(resp.results[0].federation_relationship.as_ref(), Some(&spiffe_rel));
    assert_eq!(resp.results[1].federation_relationship.as_ref(), Some(&web_rel));

    // Listed in trust domain order; shown one by one.
    assert_eq!(list(s.admin().await).await, vec![web_rel.clone(), spiffe_rel.clone()]);
    assert_eq!(get(s.admin().await, "b.test").await.unwrap(), spiffe_rel);
    assert_eq!(s.server.state.federation_relationships().len(), 2);

    // Update: new URL, profile switched.
    let changed = spiffe("a.test", "https://bundles.a.test:9443/", "spiffe://a.test/spire/server");
    let (code, msg, out) = update_one(s.admin().await, changed.clone()).await;
    assert_eq!((code, msg.as_str()), (Code::Ok, ""));
    assert_eq!(out, Some(changed.clone()));
    assert_eq!(get(s.admin().await, "a.test").await.unwrap(), changed);
    let back = web("a.test", "https://a.test/other");
    assert_eq!(update_one(s.admin().await, back.clone()).await.0, Code::Ok);
    assert_eq!(get(s.admin().await, "a.test").await.unwrap(), back);

    // Delete one of two (and an unknown one in the same batch).
    let results = delete(s.admin().await, &["a.test", "nope.test"]).await;
    assert_eq!(results[0], (Code::Ok, String::new(), "a.test".into()));
    assert_eq!(results[1].0, Code::NotFound);
    assert_eq!(results[1].1, "no federation relationship with trust domain nope.test");
    assert_eq!(list(s.admin().await).await, vec![spiffe_rel]);
    let err = get(s.admin().await, "a.test").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no federation relationship with trust domain a.test");
}

#[tokio::test]
async fn refusals_name_the_problem() {
    let s = TestServer::start("").await;
    let mismatched_bundle = FederationRelationship {
        trust_domain_bundle: Some(convert::bundle_to_pb(&foreign_bundle("other.test"))),
        ..web("c.test", "https://c.test/")
    };
    let not_a_ca = FederationRelationship {
        trust_domain_bundle: Some(sigil_proto::types::Bundle {
            trust_domain: "c.test".into(),
            x509_authorities: vec![vec![1, 2, 3]],
            ..Default::default()
        }),
        ..web("c.test", "https://c.test/")
    };
    let cases: Vec<(&str, FederationRelationship, &str)> = vec![
        (
            "own trust domain",
            web("example.org", "https://example.org/"),
            "example.org is the server's own trust domain",
        ),
        ("bad trust domain", web("Bad_TD!", "https://x.test/"), "trust_domain:"),
        ("empty trust domain", web("", "https://x.test/"), "trust_domain:"),
        ("http URL", web("c.test", "http://c.test/"), "must use the https scheme"),
        ("no host", web("c.test", "https:///bundle"), "bundle_endpoint_url:"),
        ("user info", web("c.test", "https://admin:pw@c.test/"), "must not contain user info"),
        ("empty URL", web("c.test", ""), "bundle_endpoint_url:"),
        (
            "no profile",
            FederationRelationship { profile: None, ..web("c.test", "https://c.test/") },
            "profile: required",
        ),
        (
            "bad endpoint SPIFFE ID",
            spiffe("c.test", "https://c.test/", "https://c.test/server"),
            "https_spiffe.endpoint_spiffe_id:",
        ),
        ("empty endpoint SPIFFE ID", spiffe("c.test", "https://c.test/", ""), "https_spiffe.endpoint_spiffe_id:"),
        ("bundle of another trust domain", mismatched_bundle, "not of the relationship's trust domain c.test"),
        ("bundle with a non-CA certificate", not_a_ca, "trust_domain_bundle:"),
    ];
    for (name, rel, want) in cases {
        let (code, msg, out) = create_one(s.admin().await, rel.clone()).await;
        assert_eq!(code, Code::InvalidArgument, "{name}: {msg}");
        assert!(msg.contains(want), "{name}: {msg:?} lacks {want:?}");
        assert!(out.is_none(), "{name}");
        // The same checks on update (the relationship exists, so only validation can refuse it).
        if rel.trust_domain == "c.test" {
            let _ = create_one(s.admin().await, web("c.test", "https://c.test/")).await;
            let (code, msg, _) = update_one(s.admin().await, rel).await;
            assert_eq!(code, Code::InvalidArgument, "update {name}: {msg}");
            assert!(msg.contains(want), "update {name}: {msg:?} lacks {want:?}");
        }
    }
    // Nothing refused was stored; the bundle of the mismatched case was not written either.
    assert_eq!(list(s.admin().await).await, vec![web("c.test", "https://c.test/")]);
    assert!(s.server.state.federated_bundle(&TrustDomain::new("other.test").unwrap()).is_none());

    // Duplicate create, update and delete of an unknown trust domain.
    let (code, msg, _) = create_one(s.admin().await, web("c.test", "https://elsewhere.test/")).await;
    assert_eq!(code, Code::AlreadyExists);
    assert_eq!(msg, "a federation relationship with trust domain c.test already exists");
    assert_eq!(get(s.admin().await, "c.test").await.unwrap().bundle_endpoint_url, "https://c.test/");
    let (code, msg, _) = update_one(s.admin().await, web("d.test", "https://d.test/")).await;
    assert_eq!((code, msg.as_str()), (Code::NotFound, "no federation relationship with trust domain d.test"));
    let del = delete(s.admin().await, &["d.test", "NOT VALID"]).await;
    assert_eq!(del[0].0, Code::NotFound);
    assert_eq!(del[1].0, Code::InvalidArgument);
    assert_eq!(del[1].2, "NOT VALID");
    let err = get(s.admin().await, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn given_bundle_is_stored_as_federated_bundle_and_outlives_the_relationship() {
    let s = TestServer::start("").await;
    let td = TrustDomain::new("partner.test").unwrap();
    let bundle = foreign_bundle("partner.test");
    let mut changes = s.server.state.subscribe();
    let rel = FederationRelationship {
        trust_domain_bundle: Some(convert::bundle_to_pb(&bundle)),
        ..spiffe("partner.test", "https://partner.test/", "spiffe://partner.test/spire/server")
    };
    let (code, msg, out) = create_one(s.admin().await, rel.clone()).await;
    assert_eq!(code, Code::Ok, "{msg}");
    // The response and later reads carry the stored bundle.
    assert_eq!(out.as_ref(), Some(&rel));
    assert_eq!(get(s.admin().await, "partner.test").await.unwrap(), rel);
    assert_eq!(s.server.state.federated_bundle(&td), Some(bundle.clone()));
    let listed = BundlesClient::new(s.admin().await)
        .list_federated_bundles(apb::ListFederatedBundlesRequest {})
        .await
        .unwrap()
        .into_inner()
        .bundles;
    assert_eq!(listed, vec![convert::bundle_to_pb(&bundle)]);
    // Agents hear about the new federated bundle.
    let mut seen = vec![];
    while let Ok(c) = changes.try_recv() {
        seen.push(c);
    }
    assert!(seen.contains(&sigil_server::state::Change::FederatedBundles), "{seen:?}");
    assert!(seen.contains(&sigil_server::state::Change::FederationRelationships(vec![td.clone()])), "{seen:?}");

    // An update with a new bundle replaces it; without one it keeps it.
    let newer = Bundle { sequence: 8, ..foreign_bundle("partner.test") };
    let upd = FederationRelationship {
        trust_domain_bundle: Some(convert::bundle_to_pb(&newer)),
        ..web("partner.test", "https://partner.test/")
    };
    assert_eq!(update_one(s.admin().await, upd).await.0, Code::Ok);
    assert_eq!(s.server.state.federated_bundle(&td), Some(newer.clone()));
    assert_eq!(update_one(s.admin().await, web("partner.test", "https://p2.test/")).await.0, Code::Ok);
    assert_eq!(s.server.state.federated_bundle(&td), Some(newer.clone()));

    // Deleting the relationship leaves the bundle (as SPIRE).
    assert_eq!(delete(s.admin().await, &["partner.test"]).await[0].0, Code::Ok);
    assert!(list(s.admin().await).await.is_empty());
    assert_eq!(s.server.state.federated_bundle(&td), Some(newer));
    // A relationship without a stored bundle has none in its output.
    let (_, _, out) = create_one(s.admin().await, web("nobundle.test", "https://n.test/")).await;
    assert_eq!(out.unwrap().trust_domain_bundle, None);
}

#[tokio::test]
async fn relationships_and_bundle_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = foreign_bundle("persist.test");
    let rel = FederationRelationship {
        trust_domain_bundle: Some(convert::bundle_to_pb(&bundle)),
        // The managing tool's name is stored and survives the restart too.
        managed_by: "sigil-operator/test".into(),
        ..spiffe("persist.test", "https://persist.test:8443/", "spiffe://persist.test/spire/server")
    };
    let other = web("web.test", "https://web.test/");
    let server = sigil_server::run::start(common::config(dir.path(), "")).await.unwrap();
    let socket = server.state.config.socket_path.clone();
    let ch = sigil_server::cli::admin_channel(&socket).await.unwrap();
    assert_eq!(create_one(ch.clone(), rel.clone()).await.0, Code::Ok);
    assert_eq!(create_one(ch.clone(), other.clone()).await.0, Code::Ok);
    assert_eq!(create_one(ch.clone(), web("gone.test", "https://gone.test/")).await.0, Code::Ok);
    assert_eq!(delete(ch, &["gone.test"]).await[0].0, Code::Ok);
    server.shutdown().await;

    let server = sigil_server::run::start(common::config(dir.path(), "")).await.unwrap();
    let ch = sigil_server::cli::admin_channel(&socket).await.unwrap();
    assert_eq!(list(ch).await, vec![rel, other]);
    assert_eq!(server.state.federated_bundle(&TrustDomain::new("persist.test").unwrap()), Some(bundle));
    server.shutdown().await;
}

#[tokio::test]
async fn list_pages_in_trust_domain_order() {
    let s = TestServer::start("").await;
    for td in ["c.test", "a.test", "e.test", "b.test", "d.test"] {
        assert_eq!(create_one(s.admin().await, web(td, &format!("https://{td}/"))).await.0, Code::Ok);
    }
    let mut seen = vec![];
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client(s.admin().await)
            .list_federation_relationships(apb::ListFederationRelationshipsRequest { page_size: 2, page_token: token })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.federation_relationships.len() <= 2);
        seen.extend(page.federation_relationships.into_iter().map(|r| r.trust_domain));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec!["a.test", "b.test", "c.test", "d.test", "e.test"]);
}
