#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Checklist section B: X509-SVIDs (`sigil_core::x509`). Bundle publishing/consuming (B9, B10) is tested in
//! spec_f_bundle.rs.

#[path = "fixtures/pki.rs"]
mod pki;

use pki::{Ca, NOW, bundle_of, ca_params, dns, ec_key, leaf_params, raw_ext, rsa_key, uri};
use rcgen::{
    BasicConstraints, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, NameConstraints, date_time_ymd,
};
use sigil_core::SpiffeId;
use sigil_core::x509::{
    X509Error, check_ca_cert, leaf_spiffe_id, spki_der_of_cert, split_der_certs, validity_unix, verify_x509_svid,
};

const TD: &str = "example.org";
const ID: &str = "spiffe://example.org/ns/default/sa/web";

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

// ----- B1 -----

#[test]
fn b1_accepts_exactly_one_uri_san() {
    let ca = Ca::root(TD);
    assert_eq!(leaf_spiffe_id(&ca.leaf(&[ID])), Ok(id(ID)));
}

#[test]
fn b1_allows_other_san_types() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.subject_alt_names.push(dns("web.example.org"));
    p.subject_alt_names.push(rcgen::SanType::IpAddress([10, 0, 0, 1].into()));
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Ok(id(ID)));
}

#[test]
fn b1_rejects_two_uri_sans() {
    let ca = Ca::root(TD);
    let der = ca.leaf(&[ID, "spiffe://example.org/other"]);
    assert_eq!(leaf_spiffe_id(&der), Err(X509Error::UriSanCount(2)));
    // Also when the second URI is not a SPIFFE ID.
    let der = ca.leaf(&[ID, "https://example.org/"]);
    assert_eq!(leaf_spiffe_id(&der), Err(X509Error::UriSanCount(2)));
    let msg = X509Error::UriSanCount(2).to_string();
    assert!(msg.contains("exactly one") && msg.contains("(B1)"), "{msg}");
}

#[test]
fn b1_rejects_no_uri_san() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[]);
    p.subject_alt_names.push(dns("web.example.org"));
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::UriSanCount(0)));
    assert_eq!(leaf_spiffe_id(&ca.issue(&leaf_params(&[]), &ec_key())), Err(X509Error::UriSanCount(0)));
}

// ----- B2 -----

#[test]
fn b2_rejects_non_spiffe_scheme() {
    let ca = Ca::root(TD);
    for u in ["https://example.org/web", "SPIFFE://example.org/web", "urn:spiffe:example.org"] {
        let r = leaf_spiffe_id(&ca.leaf(&[u]));
        assert!(matches!(r, Err(X509Error::InvalidSpiffeId { .. })), "{u}: {r:?}");
    }
}

#[test]
fn b2_rejects_invalid_spiffe_id() {
    let ca = Ca::root(TD);
    for u in
        ["spiffe://example.org/a?b", "spiffe://example.org//a", "spiffe://Example.org/a", "spiffe://example.org/a/"]
    {
        let r = leaf_spiffe_id(&ca.leaf(&[u]));
        assert!(matches!(r, Err(X509Error::InvalidSpiffeId { .. })), "{u}: {r:?}");
    }
}

#[test]
fn b2_rejects_leaf_without_path() {
    let ca = Ca::root(TD);
    assert_eq!(
        leaf_spiffe_id(&ca.leaf(&["spiffe://example.org"])),
        Err(X509Error::LeafWithoutPath("spiffe://example.org".into()))
    );
}

#[test]
fn b2_empty_subject_requires_critical_san() {
    let ca = Ca::root(TD);
    // rcgen marks the SAN critical when the Subject is empty: accepted.
    let mut p = leaf_params(&[ID]);
    p.distinguished_name = DistinguishedName::new();
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Ok(id(ID)));

    // Same SAN as a hand-written non-critical extension: rejected.
    let mut p = leaf_params(&[]);
    p.distinguished_name = DistinguishedName::new();
    p.custom_extensions.push(raw_ext(pki::OID_SAN, pki::san_uri_der(ID), false));
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::EmptySubjectSanNotCritical));

    // A non-critical SAN is fine when there is a Subject.
    let mut p = leaf_params(&[]);
    p.custom_extensions.push(raw_ext(pki::OID_SAN, pki::san_uri_der(ID), false));
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Ok(id(ID)));
}

// ----- B3 -----

#[test]
fn b3_accepts_spire_style_ca() {
    let ca = Ca::root(TD);
    assert_eq!(check_ca_cert(&ca.der), Ok(Some(id("spiffe://example.org"))));
}

#[test]
fn b3_ca_without_spiffe_id_is_accepted() {
    let ca = Ca::root_with(ca_params("upstream root", None), ec_key());
    assert_eq!(check_ca_cert(&ca.der), Ok(None));
    // Non-SPIFFE URIs on a CA are not SPIFFE IDs.
    let mut p = ca_params("upstream root", None);
    p.subject_alt_names.push(uri("https://pki.example.org/root"));
    assert_eq!(check_ca_cert(&Ca::root_with(p, ec_key()).der), Ok(None));
}

#[test]
fn b3_ca_requires_ca_flag() {
    let ca = Ca::root(TD);
    assert_eq!(check_ca_cert(&ca.leaf(&[ID])), Err(X509Error::CaNotCa));
    let mut p = ca_params("not a ca", Some("spiffe://example.org"));
    p.is_ca = IsCa::ExplicitNoCa;
    assert_eq!(check_ca_cert(&Ca::root_with(p, ec_key()).der), Err(X509Error::CaNotCa));
}

#[test]
fn b3_ca_requires_key_cert_sign() {
    let mut p = ca_params("crl only", Some("spiffe://example.org"));
    p.key_usages = vec![KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    assert_eq!(check_ca_cert(&Ca::root_with(p, ec_key()).der), Err(X509Error::CaMissingKeyCertSign));
}

#[test]
fn b3_ca_spiffe_id_has_no_path() {
    let ca = Ca::root_with(ca_params("bad", Some("spiffe://example.org/ca")), ec_key());
    assert_eq!(check_ca_cert(&ca.der), Err(X509Error::CaIdHasPath("spiffe://example.org/ca".into())));
}

#[test]
fn b3_intermediate_with_path_is_rejected_in_chain() {
    let root = Ca::root(TD);
    let inter = root.intermediate(ca_params("inter", Some("spiffe://example.org/intermediate")), ec_key());
    let leaf = inter.leaf(&[ID]);
    let r = verify_x509_svid(&[leaf, inter.der.clone()], &bundle_of(TD, &[&root]), NOW);
    assert!(
        matches!(&r, Err(X509Error::Intermediate { index: 1, source }) if matches!(**source, X509Error::CaIdHasPath(_))),
        "{r:?}"
    );
}

// ----- B4 -----

#[test]
fn b4_rejects_ca_leaf() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let der = ca.issue(&p, &ec_key());
    assert_eq!(leaf_spiffe_id(&der), Err(X509Error::LeafIsCa));
    assert_eq!(verify_x509_svid(&[der], &bundle_of(TD, &[&ca]), NOW), Err(X509Error::LeafIsCa));
}

#[test]
fn b4_accepts_explicit_ca_false() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.is_ca = IsCa::ExplicitNoCa;
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Ok(id(ID)));
}

// ----- B5 (MAY) -----

fn name_constraints_der_uri(base: &str) -> Vec<u8> {
    // NameConstraints ::= SEQUENCE { permittedSubtrees [0] GeneralSubtrees }
    // GeneralSubtree ::= SEQUENCE { base GeneralName }   (URI = [6] IA5String)
    let mut gn = vec![0x86, base.len() as u8];
    gn.extend_from_slice(base.as_bytes());
    let mut subtree = vec![0x30, gn.len() as u8];
    subtree.extend(gn);
    let mut permitted = vec![0xa0, subtree.len() as u8];
    permitted.extend(subtree);
    let mut nc = vec![0x30, permitted.len() as u8];
    nc.extend(permitted);
    nc
}

#[test]
fn b5_dns_name_constraints_are_enforced() {
    let mut p = ca_params("constrained", Some("spiffe://example.org"));
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("example.org".into())],
        excluded_subtrees: vec![],
    });
    let root = Ca::root_with(p, ec_key());
    let bundle = bundle_of(TD, &[&root]);

    let mut ok = leaf_params(&[ID]);
    ok.subject_alt_names.push(dns("web.example.org"));
    assert_eq!(verify_x509_svid(&[root.issue(&ok, &ec_key())], &bundle, NOW), Ok(id(ID)));

    let mut bad = leaf_params(&[ID]);
    bad.subject_alt_names.push(dns("web.evil.com"));
    let r = verify_x509_svid(&[root.issue(&bad, &ec_key())], &bundle, NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");
}

/// Decision (see core/src/x509.rs): webpki has no URI name constraints and fails closed, as X509-SVID 4.2
/// foresees for such libraries.
#[test]
fn b5_uri_name_constraints_fail_closed() {
    let mut p = ca_params("uri constrained", Some("spiffe://example.org"));
    p.custom_extensions.push(raw_ext(pki::OID_NAME_CONSTRAINTS, name_constraints_der_uri("example.org"), true));
    let root = Ca::root_with(p, ec_key());
    let r = verify_x509_svid(&[root.leaf(&[ID])], &bundle_of(TD, &[&root]), NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");
}

// ----- B6 -----

#[test]
fn b6_rejects_missing_key_usage() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.key_usages.clear();
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::MissingKeyUsage("X509-SVID leaf")));
}

#[test]
fn b6_rejects_non_critical_key_usage() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.key_usages.clear();
    // BIT STRING, 7 unused bits, digitalSignature.
    p.custom_extensions.push(raw_ext(pki::OID_KEY_USAGE, vec![0x03, 0x02, 0x07, 0x80], false));
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::KeyUsageNotCritical("X509-SVID leaf")));
    // The same extension marked critical is accepted.
    let mut p = leaf_params(&[ID]);
    p.key_usages.clear();
    p.custom_extensions.push(raw_ext(pki::OID_KEY_USAGE, vec![0x03, 0x02, 0x07, 0x80], true));
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Ok(id(ID)));
}

#[test]
fn b6_rejects_key_cert_sign_on_leaf() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::LeafSigningUsage("keyCertSign")));
}

#[test]
fn b6_rejects_crl_sign_on_leaf() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::LeafSigningUsage("cRLSign")));
}

#[test]
fn b6_rejects_leaf_without_digital_signature() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::KeyAgreement];
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::LeafMissingDigitalSignature));
}

#[test]
fn b6_allows_digital_signature_alone_or_with_encipherment_and_agreement() {
    let ca = Ca::root(TD);
    for kus in [
        vec![KeyUsagePurpose::DigitalSignature],
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyAgreement],
    ] {
        let mut p = leaf_params(&[ID]);
        p.key_usages = kus.clone();
        assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Ok(id(ID)), "{kus:?}");
    }
}

#[test]
fn b6_ca_key_usage_must_be_present_and_critical() {
    let mut p = ca_params("no ku", Some("spiffe://example.org"));
    p.key_usages.clear();
    assert_eq!(check_ca_cert(&Ca::root_with(p, ec_key()).der), Err(X509Error::MissingKeyUsage("CA certificate")));

    let mut p = ca_params("non-critical ku", Some("spiffe://example.org"));
    p.key_usages.clear();
    // keyCertSign|cRLSign = bits 5,6 -> 0x06 with 1 unused bit.
    p.custom_extensions.push(raw_ext(pki::OID_KEY_USAGE, vec![0x03, 0x02, 0x01, 0x06], false));
    assert_eq!(check_ca_cert(&Ca::root_with(p, ec_key()).der), Err(X509Error::KeyUsageNotCritical("CA certificate")));
}

#[test]
fn b6_ca_may_set_crl_sign_and_digital_signature() {
    let mut p = ca_params("ca", Some("spiffe://example.org"));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    assert!(check_ca_cert(&Ca::root_with(p, ec_key()).der).is_ok());
    let mut p = ca_params("ca", Some("spiffe://example.org"));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    assert!(check_ca_cert(&Ca::root_with(p, ec_key()).der).is_ok());
}

// ----- B7 -----

#[test]
fn b7_accepts_absent_eku() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.extended_key_usages.clear();
    let der = ca.issue(&p, &ec_key());
    assert_eq!(leaf_spiffe_id(&der), Ok(id(ID)));
    assert_eq!(verify_x509_svid(&[der], &bundle_of(TD, &[&ca]), NOW), Ok(id(ID)));
}

#[test]
fn b7_rejects_eku_without_client_auth() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::LeafEkuIncomplete("clientAuth")));
}

#[test]
fn b7_rejects_eku_without_server_auth() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::CodeSigning];
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::LeafEkuIncomplete("serverAuth")));
    let mut p = leaf_params(&[ID]);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any];
    assert_eq!(leaf_spiffe_id(&ca.issue(&p, &ec_key())), Err(X509Error::LeafEkuIncomplete("serverAuth")));
}

#[test]
fn b7_extra_eku_purposes_are_allowed() {
    let ca = Ca::root(TD);
    let mut p = leaf_params(&[ID]);
    p.extended_key_usages.push(ExtendedKeyUsagePurpose::CodeSigning);
    let der = ca.issue(&p, &ec_key());
    assert_eq!(verify_x509_svid(&[der], &bundle_of(TD, &[&ca]), NOW), Ok(id(ID)));
}

// ----- B8 -----

#[test]
fn b8_verifies_leaf_signed_by_bundle_root() {
    let ca = Ca::root(TD);
    assert_eq!(verify_x509_svid(&[ca.leaf(&[ID])], &bundle_of(TD, &[&ca]), NOW), Ok(id(ID)));
}

#[test]
fn b8_verifies_chain_with_intermediates() {
    let root = Ca::root(TD);
    let i1 = root.intermediate(ca_params("i1", Some("spiffe://example.org")), ec_key());
    let i2 = i1.intermediate(ca_params("i2", None), pki::ec384_key());
    let leaf = i2.leaf(&[ID]);
    let bundle = bundle_of(TD, &[&root]);
    assert_eq!(verify_x509_svid(&[leaf.clone(), i2.der.clone(), i1.der.clone()], &bundle, NOW), Ok(id(ID)));
    // Missing intermediate: no path to the root.
    let r = verify_x509_svid(&[leaf, i2.der.clone()], &bundle, NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");
}

#[test]
fn b8_uses_any_root_of_the_bundle() {
    let old = Ca::root(TD);
    let new = Ca::root(TD);
    let bundle = bundle_of(TD, &[&old, &new]);
    assert_eq!(verify_x509_svid(&[old.leaf(&[ID])], &bundle, NOW), Ok(id(ID)));
    assert_eq!(verify_x509_svid(&[new.leaf(&[ID])], &bundle, NOW), Ok(id(ID)));
}

#[test]
fn b8_verifies_rsa_roots() {
    let root = Ca::root_with(ca_params("rsa root", Some("spiffe://example.org")), rsa_key());
    assert_eq!(verify_x509_svid(&[root.leaf(&[ID])], &bundle_of(TD, &[&root]), NOW), Ok(id(ID)));
}

#[test]
fn b8_rejects_untrusted_root() {
    let ca = Ca::root(TD);
    let other = Ca::root(TD);
    let r = verify_x509_svid(&[ca.leaf(&[ID])], &bundle_of(TD, &[&other]), NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");
}

#[test]
fn b8_uses_the_bundle_of_the_svids_own_trust_domain() {
    // Same CA, but the bundle is for another trust domain: refused (F5 / spec 6.4).
    let ca = Ca::root(TD);
    let r = verify_x509_svid(&[ca.leaf(&[ID])], &bundle_of("other.org", &[&ca]), NOW);
    assert_eq!(
        r,
        Err(X509Error::TrustDomainMismatch { id: ID.into(), svid_td: TD.into(), bundle_td: "other.org".into() })
    );
}

#[test]
fn b8_rejects_expired_and_not_yet_valid_leaves() {
    let ca = Ca::root(TD);
    let bundle = bundle_of(TD, &[&ca]);
    let mut expired = leaf_params(&[ID]);
    expired.not_before = date_time_ymd(2020, 1, 1);
    expired.not_after = date_time_ymd(2025, 1, 1);
    let r = verify_x509_svid(&[ca.issue(&expired, &ec_key())], &bundle, NOW);
    assert!(matches!(&r, Err(X509Error::PathValidation(m)) if m.to_lowercase().contains("expired")), "{r:?}");

    let mut future = leaf_params(&[ID]);
    future.not_before = date_time_ymd(2030, 1, 1);
    let r = verify_x509_svid(&[ca.issue(&future, &ec_key())], &bundle, NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");
}

#[test]
fn b8_rejects_expired_root_and_intermediate() {
    // Unlike plain RFC 5280 (where a trust anchor is just a name and key), an expired root in the bundle
    // anchors nothing, as in go-spiffe.
    let mut p = ca_params("old root", Some("spiffe://example.org"));
    p.not_after = date_time_ymd(2026, 1, 1);
    let old_root = Ca::root_with(p, ec_key());
    let r = verify_x509_svid(&[old_root.leaf(&[ID])], &bundle_of(TD, &[&old_root]), NOW);
    assert_eq!(r, Err(X509Error::NoTrustAnchors(TD.into())));
    // With a valid second root, the old one still anchors nothing.
    let root = Ca::root(TD);
    let r = verify_x509_svid(&[old_root.leaf(&[ID])], &bundle_of(TD, &[&old_root, &root]), NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");

    let mut ip = ca_params("old inter", None);
    ip.not_after = date_time_ymd(2026, 1, 1);
    let old_inter = root.intermediate(ip, ec_key());
    let inter = root.intermediate(ca_params("inter", None), ec_key());
    let bundle = bundle_of(TD, &[&root]);
    assert_eq!(verify_x509_svid(&[inter.leaf(&[ID]), inter.der.clone()], &bundle, NOW), Ok(id(ID)));
    let r = verify_x509_svid(&[old_inter.leaf(&[ID]), old_inter.der.clone()], &bundle, NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");
}

#[test]
fn b8_applies_leaf_checks() {
    let ca = Ca::root(TD);
    let bundle = bundle_of(TD, &[&ca]);
    assert_eq!(
        verify_x509_svid(&[ca.leaf(&[ID, "spiffe://example.org/b"])], &bundle, NOW),
        Err(X509Error::UriSanCount(2))
    );
    assert_eq!(
        verify_x509_svid(&[ca.leaf(&["spiffe://example.org"])], &bundle, NOW),
        Err(X509Error::LeafWithoutPath("spiffe://example.org".into()))
    );
    let mut p = leaf_params(&[ID]);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    assert_eq!(
        verify_x509_svid(&[ca.issue(&p, &ec_key())], &bundle, NOW),
        Err(X509Error::LeafSigningUsage("keyCertSign"))
    );
}

#[test]
fn b8_rejects_intermediate_without_key_cert_sign() {
    let root = Ca::root(TD);
    let mut ip = ca_params("i", None);
    ip.key_usages = vec![KeyUsagePurpose::CrlSign];
    let inter = root.intermediate(ip, ec_key());
    let r = verify_x509_svid(&[inter.leaf(&[ID]), inter.der.clone()], &bundle_of(TD, &[&root]), NOW);
    assert!(
        matches!(&r, Err(X509Error::Intermediate { index: 1, source }) if **source == X509Error::CaMissingKeyCertSign),
        "{r:?}"
    );
}

#[test]
fn b8_rejects_non_ca_intermediate() {
    let root = Ca::root(TD);
    let mut ip = ca_params("i", None);
    ip.is_ca = IsCa::NoCa;
    let inter = root.intermediate(ip, ec_key());
    let r = verify_x509_svid(&[inter.leaf(&[ID]), inter.der.clone()], &bundle_of(TD, &[&root]), NOW);
    assert!(matches!(&r, Err(X509Error::Intermediate { index: 1, source }) if **source == X509Error::CaNotCa), "{r:?}");
}

#[test]
fn b8_rejects_empty_bundle_and_bad_inputs() {
    let ca = Ca::root(TD);
    let leaf = ca.leaf(&[ID]);
    let empty = sigil_core::bundle::Bundle::new(pki::td(TD));
    assert_eq!(verify_x509_svid(std::slice::from_ref(&leaf), &empty, NOW), Err(X509Error::NoTrustAnchors(TD.into())));
    assert_eq!(verify_x509_svid(&[], &bundle_of(TD, &[&ca]), NOW), Err(X509Error::EmptyChain));
    assert_eq!(
        verify_x509_svid(std::slice::from_ref(&leaf), &bundle_of(TD, &[&ca]), -1),
        Err(X509Error::InvalidTime(-1))
    );
    let long = vec![leaf.clone(); 17];
    assert_eq!(verify_x509_svid(&long, &bundle_of(TD, &[&ca]), NOW), Err(X509Error::ChainTooLong(17)));
    let mut trailing = leaf.clone();
    trailing.push(0);
    assert!(matches!(leaf_spiffe_id(&trailing), Err(X509Error::Parse(_))));
    // Truncations of a valid certificate never panic.
    for cut in (0..leaf.len()).step_by(7) {
        assert!(leaf_spiffe_id(&leaf[..cut]).is_err());
    }
}

#[test]
fn b8_tampered_leaf_fails_signature_check() {
    let ca = Ca::root(TD);
    let mut leaf = ca.leaf(&[ID]);
    // Flip a bit in the last byte (inside the signature).
    let last = leaf.len() - 1;
    leaf[last] ^= 1;
    let r = verify_x509_svid(&[leaf], &bundle_of(TD, &[&ca]), NOW);
    assert!(matches!(r, Err(X509Error::PathValidation(_))), "{r:?}");
}

#[test]
fn spki_der_of_cert_returns_the_subject_key() {
    let key = ec_key();
    let ca = Ca::root(TD);
    let der = ca.issue(&leaf_params(&[ID]), &key);
    assert_eq!(spki_der_of_cert(&der).unwrap(), rcgen::PublicKeyData::subject_public_key_info(&key));
}

#[test]
fn split_der_certs_and_validity() {
    let root = Ca::root(TD);
    let inter = root.intermediate(ca_params("i", None), ec_key());
    let leaf = inter.leaf(&[ID]);
    let concat = [leaf.clone(), inter.der.clone()].concat();
    assert_eq!(split_der_certs(&concat, 16).unwrap(), vec![leaf.clone(), inter.der.clone()]);
    assert_eq!(split_der_certs(&[], 16).unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(split_der_certs(&concat, 1), Err(X509Error::TooManyCertificates(1)));
    assert!(matches!(split_der_certs(&concat[..concat.len() - 1], 16), Err(X509Error::Parse(_))));
    assert!(matches!(split_der_certs(&[concat.as_slice(), b"xx"].concat(), 16), Err(X509Error::Parse(_))));
    // 2020-01-01 and 2040-01-01 (pki.rs defaults).
    assert_eq!(validity_unix(&leaf), Ok((1_577_836_800, 2_208_988_800)));
}

/// Every single-byte change of a valid chain is refused (and nothing panics).
#[test]
fn every_single_byte_mutation_is_refused() {
    let root = Ca::root(TD);
    let inter = root.intermediate(ca_params("i", Some("spiffe://example.org")), ec_key());
    let leaf = inter.leaf(&[ID]);
    let bundle = bundle_of(TD, &[&root]);
    assert_eq!(verify_x509_svid(&[leaf.clone(), inter.der.clone()], &bundle, NOW), Ok(id(ID)));
    for which in 0..2 {
        let original = if which == 0 { &leaf } else { &inter.der };
        for i in 0..original.len() {
            for delta in [0x01u8, 0x80, 0xff] {
                let mut m = original.clone();
                m[i] ^= delta;
                let chain = if which == 0 { vec![m, inter.der.clone()] } else { vec![leaf.clone(), m] };
                let r = verify_x509_svid(&chain, &bundle, NOW);
                assert!(r.is_err(), "cert {which} byte {i} ^ {delta:#x} accepted");
            }
        }
    }
}
