//! CA rotation on a running server with ca_ttl = 2m (issue acceptance 4): every SVID is signed by a CA that
//! was already in the published bundle before the signing, and every SVID signed so far keeps validating
//! against the published bundle while it is unexpired. Same for JWT keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use sigil_proto::admin::{self as apb, svids_client::SvidsClient};
use sigil_server::state::now_unix;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_2m_prepared_ca_published_before_use_and_old_svids_keep_validating() {
    let s = TestServer::start("ca_ttl = \"2m\"\ndefault_x509_svid_ttl = \"1m\"\ndefault_jwt_svid_ttl = \"1m\"").await;
    let mut svids = SvidsClient::new(s.admin().await);
    let mut minted: Vec<(Vec<Vec<u8>>, i64)> = vec![];
    let mut signing_cas: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut jwt_kids: BTreeSet<String> = BTreeSet::new();
    let mut sequences = vec![];
    // 2m lifetime: the next CA is prepared 60 s before the end and activated 20 s before it; 170 s covers
    // at least one full prepare -> activate -> old cycle.
    let end = tokio::time::Instant::now() + Duration::from_secs(170);
    while tokio::time::Instant::now() < end {
        let published_before = s.bundle();
        sequences.push(published_before.sequence);
        let (csr, _) = csr();
        let svid = svids
            .mint_x509_svid(apb::MintX509SvidRequest {
                csr,
                spiffe_id: "spiffe://example.org/rot".into(),
                dns_names: vec![],
                ttl: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .svid
            .unwrap();
        let now = now_unix();
        // Signed by a CA that was published before this SVID existed.
        let id = sigil_core::x509::verify_x509_svid(&svid.cert_chain, &published_before, now)
            .unwrap_or_else(|e| panic!("SVID signed by a CA not yet in the bundle published before it: {e}"));
        assert_eq!(id.as_str(), "spiffe://example.org/rot");
        // Every CA has the same subject, so find the signer by its key, not its name.
        let leaf = x509_parser::parse_x509_certificate(&svid.cert_chain[0]).unwrap().1;
        let signer = published_before
            .x509_authorities
            .iter()
            .find(|ca| {
                let ca = x509_parser::parse_x509_certificate(ca).unwrap().1;
                leaf.verify_signature(Some(ca.public_key())).is_ok()
            })
            .expect("the signing CA is one of the published authorities");
        signing_cas.insert(signer.clone());
        minted.push((svid.cert_chain, svid.expires_at));

        let jwt = svids
            .mint_jwt_svid(apb::MintJwtSvidRequest {
                spiffe_id: "spiffe://example.org/rot".into(),
                audience: vec!["a".into()],
                ttl: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let lookup =
            |td: &sigil_core::TrustDomain| (td == &published_before.trust_domain).then(|| (*published_before).clone());
        sigil_core::jwt::validate_jwt_svid(&jwt.token, "a", &lookup, now)
            .unwrap_or_else(|e| panic!("JWT signed by a key not yet in the bundle published before it: {e}"));
        let header = jwt.token.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
        )
        .unwrap();
        jwt_kids.insert(header["kid"].as_str().unwrap().to_owned());

        // Everything signed so far and not yet expired validates against what is published now.
        let published_now = s.bundle();
        for (chain, exp) in &minted {
            if *exp > now + 1 {
                sigil_core::x509::verify_x509_svid(chain, &published_now, now)
                    .unwrap_or_else(|e| panic!("unexpired SVID no longer validates against the published bundle: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(signing_cas.len() >= 2, "no CA rotation happened within the test window");
    assert!(jwt_kids.len() >= 2, "no JWT key rotation happened within the test window");
    assert!(sequences.windows(2).all(|w| w[0] <= w[1]), "bundle sequence went backwards: {sequences:?}");
    assert!(sequences.last() > sequences.first(), "bundle sequence never changed");
}
