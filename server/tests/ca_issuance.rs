#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The CA's issuance against the SPIFFE checklist (section B) and SPIRE's anchor facts, checked with
//! x509-parser, rustls-webpki and the real `openssl` binary.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use sigil_core::bundle::Bundle;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_server::ca::{CaConfig, CaError, CaManager, KeyType, SlotState, UpstreamAuthority};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn id(path: &str) -> SpiffeId {
    td().join(path).unwrap()
}

fn real_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn new_ca(dir: &Path, config: CaConfig, now: i64) -> CaManager {
    CaManager::load_or_init(dir, config, None, now).unwrap().0
}

fn csr_for(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default().serialize_request(key).unwrap().der().to_vec()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| if let GeneralName::URI(u) = g { Some(u.to_string()) } else { None })
        .collect()
}

fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| if let GeneralName::DNSName(u) = g { Some(u.to_string()) } else { None })
        .collect()
}

fn pem_file(path: &Path, ders: &[Vec<u8>]) {
    let text: String = ders.iter().map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone()))).collect();
    std::fs::write(path, text).unwrap();
}

/// Runs `openssl verify -x509_strict -CAfile bundle [-untrusted chain[1..]] chain[0]`.
fn openssl_verify(dir: &Path, bundle: &[Vec<u8>], chain: &[Vec<u8>], at: Option<i64>) -> (bool, String) {
    let ca = dir.join("verify-bundle.pem");
    let leaf = dir.join("verify-leaf.pem");
    let inter = dir.join("verify-untrusted.pem");
    pem_file(&ca, bundle);
    pem_file(&leaf, &chain[..1]);
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-x509_strict").arg("-CAfile").arg(&ca);
    if chain.len() > 1 {
        pem_file(&inter, &chain[1..]);
        cmd.arg("-untrusted").arg(&inter);
    }
    if let Some(t) = at {
        cmd.arg("-attime").arg(t.to_string());
    }
    let out = cmd.arg(&leaf).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn openssl_text(dir: &Path, der: &[u8]) -> String {
    let path = dir.join("text.pem");
    pem_file(&path, &[der.to_vec()]);
    let out = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn webpki_verify(bundle: &[Vec<u8>], chain: &[Vec<u8>], now: i64) -> Result<(), webpki::Error> {
    let roots: Vec<CertificateDer<'_>> = bundle.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let anchors: Vec<_> = roots.iter().map(|c| webpki::anchor_from_trusted_cert(c).unwrap()).collect();
    let leaf = CertificateDer::from(chain[0].as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let inters: Vec<CertificateDer<'_>> = chain[1..].iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inters,
        UnixTime::since_unix_epoch(Duration::from_secs(now as u64)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

fn issued_leaf(now: i64) -> (tempfile::TempDir, CaManager, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), CaConfig::new(td()), now);
    let key = KeyPair::generate().unwrap();
    let dns = vec!["web.example.org".to_string(), "web".to_string()];
    let issued = ca.sign_x509_svid_csr(&csr_for(&key), &id("/ns/default/sa/web"), &dns, None, now).unwrap();
    assert_eq!(issued.chain_der.len(), 1, "self-signed mode: the chain is the leaf alone");
    let leaf = issued.chain_der[0].clone();
    (dir, ca, leaf)
}

#[test]
fn b1_issued_svid_has_one_uri_san() {
    let (_d, _ca, leaf) = issued_leaf(real_now());
    let cert = parse(&leaf);
    assert_eq!(uri_sans(&cert), vec!["spiffe://example.org/ns/default/sa/web".to_string()]);
    assert_eq!(dns_sans(&cert), vec!["web.example.org".to_string(), "web".to_string()]);
}

#[test]
fn b2_leaf_id_has_path_and_trust_domain_id_is_refused() {
    let now = real_now();
    let (_d, ca, leaf) = issued_leaf(now);
    let uri = &uri_sans(&parse(&leaf))[0];
    assert!(!SpiffeId::new(uri).unwrap().is_trust_domain_id());
    let key = KeyPair::generate().unwrap();
    let err = ca.sign_x509_svid_csr(&csr_for(&key), &td().to_spiffe_id(), &[], None, now).unwrap_err();
    assert!(matches!(err, CaError::InvalidSpiffeId(_)), "{err}");
    let err = ca.mint_x509_svid(&SpiffeId::new("spiffe://other.org/x").unwrap(), &[], None, now).unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
    // The subject is never empty (O=SPIRE, C=US), so the SAN extension need not be critical.
    let cert = parse(&leaf);
    assert!(!cert.subject().as_raw().is_empty());
}

#[test]
fn b3_ca_cert_is_ca_with_cert_sign() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), CaConfig::new(td()), now);
    let der = ca.active_x509_ca_der(now).unwrap().to_vec();
    let cert = parse(&der);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert_eq!(uri_sans(&cert), vec!["spiffe://example.org".to_string()]);
    assert_eq!(cert.subject().to_string(), "C=US, O=SPIFFE");
    assert_eq!(cert.subject(), cert.issuer(), "self-signed root");
    assert_eq!(cert.validity().not_before.timestamp(), now - 10);
    assert_eq!(cert.validity().not_after.timestamp(), now + 86_400);
    assert!(cert.raw_serial().len() >= 15 && cert.raw_serial().len() <= 17, "128-bit serial");
    assert!(cert.extensions().iter().any(|e| matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(_))));
    // The CA passes the shared spec rules too.
    assert_eq!(
        sigil_core::x509::check_ca_cert(&der).unwrap().map(|i| i.to_string()),
        Some("spiffe://example.org".into())
    );
}

#[test]
fn b4_issued_leaf_is_not_ca() {
    let (_d, _ca, leaf) = issued_leaf(real_now());
    let cert = parse(&leaf);
    let bc = cert.basic_constraints().unwrap().expect("basicConstraints present");
    assert!(bc.critical);
    assert!(!bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, None);
}

#[test]
fn b6_issued_leaf_key_usage_critical() {
    let (_d, _ca, leaf) = issued_leaf(real_now());
    let cert = parse(&leaf);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(ku.value.key_encipherment());
    assert!(ku.value.key_agreement());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());
    assert!(!ku.value.non_repudiation() && !ku.value.data_encipherment());
}

#[test]
fn b7_issued_leaf_eku_both() {
    let (_d, _ca, leaf) = issued_leaf(real_now());
    let cert = parse(&leaf);
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth);
    assert!(eku.value.client_auth);
    assert!(!eku.value.any && !eku.value.code_signing && eku.value.other.is_empty());
}

#[test]
fn leaf_matches_anchor_facts() {
    let now = real_now();
    let (_d, ca, leaf) = issued_leaf(now);
    let cert = parse(&leaf);
    let ca_der = ca.active_x509_ca_der(now).unwrap().to_vec();
    let ca_cert = parse(&ca_der);
    // CN = first DNS name, O=SPIRE, C=US.
    assert_eq!(cert.subject().to_string(), "C=US, O=SPIRE, CN=web.example.org");
    assert_eq!(cert.issuer(), ca_cert.subject());
    // NotBefore backdated 10 s; default TTL 1h.
    assert_eq!(cert.validity().not_before.timestamp(), now - 10);
    assert_eq!(cert.validity().not_after.timestamp(), now + 3_600);
    // Random 128-bit serial (DER may add a leading zero; leading zero bytes may shrink it).
    let serial = cert.raw_serial();
    assert!(serial.len() <= 17 && serial.len() >= 14, "serial of {} bytes", serial.len());
    // SKI present; AKI = CA's SKI.
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => aki = a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => {}
        }
    }
    let ca_ski = ca_cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert!(ski.is_some());
    assert_eq!(aki, Some(ca_ski));
    // Two leaves get different serials.
    let (_d2, _ca2, leaf2) = issued_leaf(now);
    assert_ne!(parse(&leaf2).raw_serial(), serial);
    // The shared spec rules accept it.
    assert_eq!(sigil_core::x509::leaf_spiffe_id(&leaf).unwrap(), id("/ns/default/sa/web"));
}

#[test]
fn leaf_ttl_is_capped_at_ca_not_after() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CaConfig::new(td());
    cfg.ca_ttl = Duration::from_secs(600);
    let ca = new_ca(dir.path(), cfg, now);
    let (issued, _) = ca.mint_x509_svid(&id("/w"), &[], Some(Duration::from_secs(7_200)), now).unwrap();
    assert_eq!(issued.expires_at, now + 600);
    assert_eq!(parse(&issued.chain_der[0]).validity().not_after.timestamp(), now + 600);
    let (issued, _) = ca.mint_x509_svid(&id("/w"), &[], Some(Duration::from_secs(60)), now).unwrap();
    assert_eq!(issued.expires_at, now + 60);
}

#[test]
fn openssl_verifies_svid_and_shows_one_uri_san() {
    let now = real_now();
    let (dir, ca, leaf) = issued_leaf(now);
    let (x509, _) = ca.bundle_authorities(now);
    assert_eq!(x509.len(), 1);
    let (ok, out) = openssl_verify(dir.path(), &x509, std::slice::from_ref(&leaf), None);
    assert!(ok, "{out}");
    assert!(out.contains(": OK"), "{out}");
    let text = openssl_text(dir.path(), &leaf);
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(text.contains("URI:spiffe://example.org/ns/default/sa/web"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Digital Signature, Key Encipherment, Key Agreement"), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
    assert!(text.contains("X509v3 Basic Constraints: critical"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    // A different CA's bundle does not verify it.
    let other_dir = tempfile::tempdir().unwrap();
    let other = new_ca(other_dir.path(), CaConfig::new(td()), now);
    let (other_x509, _) = other.bundle_authorities(now);
    let (ok, out) = openssl_verify(dir.path(), &other_x509, &[leaf], None);
    assert!(!ok, "{out}");
}

#[test]
fn csr_requesting_ca_still_yields_leaf() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), CaConfig::new(td()), now);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![
        SanType::URI("spiffe://evil.org/x".try_into().unwrap()),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ];
    p.distinguished_name.push(DnType::CommonName, "evil");
    p.custom_extensions = vec![CustomExtension::from_oid_content(&[1, 2, 3, 4, 5], vec![0x05, 0x00])];
    let csr = p.serialize_request(&key).unwrap().der().to_vec();
    let issued = ca.sign_x509_svid_csr(&csr, &id("/good"), &[], None, now).unwrap();
    let cert = parse(&issued.chain_der[0]);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(!ku.key_cert_sign() && !ku.crl_sign() && ku.digital_signature());
    assert_eq!(uri_sans(&cert), vec!["spiffe://example.org/good".to_string()]);
    assert!(dns_sans(&cert).is_empty());
    assert_eq!(cert.subject().to_string(), "C=US, O=SPIRE");
    assert!(!cert.extensions().iter().any(|e| e.oid.to_id_string() == "1.2.3.4.5"));
    // The certified key is the CSR's key.
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
}

#[test]
fn csr_with_bad_signature_or_garbage_is_refused() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), CaConfig::new(td()), now);
    let key = KeyPair::generate().unwrap();
    let mut csr = csr_for(&key);
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let err = ca.sign_x509_svid_csr(&csr, &id("/w"), &[], None, now).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature | CaError::InvalidCsr(_)), "{err}");
    let err = ca.sign_x509_svid_csr(b"not a csr", &id("/w"), &[], None, now).unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr(_)), "{err}");
    let err = ca.sign_x509_svid_csr(&csr_for(&key), &id("/w"), &["bad name".into()], None, now).unwrap_err();
    assert!(matches!(err, CaError::InvalidDnsName(_)), "{err}");
}

/// Writes an upstream root CA (cert + PKCS#8 key) and returns its DER.
fn write_upstream_root(dir: &Path, not_after_from_now: i64, now: i64) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "Upstream Root");
    p.not_before = time::OffsetDateTime::from_unix_timestamp(now - 3600).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(now + not_after_from_now).unwrap();
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(dir.join("upstream.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("upstream.key"), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

#[test]
fn upstream_mode_chain_verifies_against_upstream_root_only() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let root = write_upstream_root(dir.path(), 30 * 86_400, now);
    let mut cfg = CaConfig::new(td());
    cfg.upstream = Some(UpstreamAuthority {
        cert_file: dir.path().join("upstream.crt"),
        key_file: dir.path().join("upstream.key"),
        bundle_file: None,
    });
    let ca = new_ca(dir.path(), cfg, now);
    assert!(ca.is_upstream());
    let intermediate = ca.active_x509_ca_der(now).unwrap().to_vec();
    let (x509, _) = ca.bundle_authorities(now);
    assert_eq!(x509, vec![root.clone()], "the bundle holds the upstream root, not the intermediate");

    let (issued, _) = ca.mint_x509_svid(&id("/svc"), &[], None, now).unwrap();
    assert_eq!(issued.chain_der.len(), 2);
    assert_eq!(issued.chain_der[1], intermediate);
    let (ok, out) = openssl_verify(dir.path(), &x509, &issued.chain_der, None);
    assert!(ok, "{out}");
    assert!(out.contains(": OK"), "{out}");
    webpki_verify(&x509, &issued.chain_der, now).unwrap();
    // Without the intermediate the leaf does not verify against the root.
    let (ok, _) = openssl_verify(dir.path(), &x509, &issued.chain_der[..1], None);
    assert!(!ok);

    let inter = parse(&intermediate);
    assert_eq!(inter.issuer().to_string(), "CN=Upstream Root");
    assert!(inter.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(uri_sans(&inter), vec!["spiffe://example.org".to_string()]);
    assert!(
        inter.extensions().iter().any(|e| matches!(e.parsed_extension(), ParsedExtension::AuthorityKeyIdentifier(_)))
    );
}

#[test]
fn upstream_not_after_caps_the_intermediate() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    write_upstream_root(dir.path(), 3_600, now);
    let mut cfg = CaConfig::new(td());
    cfg.upstream = Some(UpstreamAuthority {
        cert_file: dir.path().join("upstream.crt"),
        key_file: dir.path().join("upstream.key"),
        bundle_file: Some(dir.path().join("upstream.crt")),
    });
    let ca = new_ca(dir.path(), cfg, now);
    let inter = ca.active_x509_ca_der(now).unwrap().to_vec();
    assert_eq!(parse(&inter).validity().not_after.timestamp(), now + 3_600);
}

#[test]
fn upstream_with_mismatched_key_is_refused() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    write_upstream_root(dir.path(), 3_600, now);
    std::fs::write(dir.path().join("upstream.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let mut cfg = CaConfig::new(td());
    cfg.upstream = Some(UpstreamAuthority {
        cert_file: dir.path().join("upstream.crt"),
        key_file: dir.path().join("upstream.key"),
        bundle_file: None,
    });
    let err = CaManager::load_or_init(dir.path(), cfg, None, now).unwrap_err();
    assert!(matches!(err, CaError::Upstream(_)), "{err}");
    assert!(err.to_string().contains("private key"), "{err}");
}

#[test]
fn rotation_publishes_before_use_and_svids_verify_across_steps() {
    let t0 = 1_700_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CaConfig::new(td());
    cfg.ca_ttl = Duration::from_secs(120);
    let (mut ca, mut journal) = CaManager::load_or_init(dir.path(), cfg.clone(), None, t0).unwrap();

    let mut first_published: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut first_signed: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut kid_published: HashMap<String, i64> = HashMap::new();
    let mut kid_signed: HashMap<String, i64> = HashMap::new();
    let mut svids: Vec<(Vec<Vec<u8>>, i64)> = vec![];
    let mut tokens: Vec<(String, i64)> = vec![];
    let mut saw_states = vec![];

    let step = 5;
    let mut now = t0;
    while now < t0 + 6 * 120 {
        if now > t0
            && let Some(j) = ca.rotate(now).unwrap()
        {
            journal = j;
        }
        // A restart at any point resumes the same state.
        if (now - t0) % 100 == 0 {
            let before = ca.active_x509_ca_der(now).map(<[u8]>::to_vec);
            ca = CaManager::load_or_init(dir.path(), cfg.clone(), Some(journal.clone()), now).unwrap().0;
            assert_eq!(ca.active_x509_ca_der(now).map(<[u8]>::to_vec), before);
        }
        saw_states.extend(ca.x509_status().into_iter().map(|s| s.state));
        let (x509, jwt) = ca.bundle_authorities(now);
        for der in &x509 {
            first_published.entry(der.clone()).or_insert(now);
        }
        for a in &jwt {
            kid_published.entry(a.key_id.clone()).or_insert(now);
            assert!(a.expires_at > now);
        }

        let signing = ca.active_x509_ca_der(now).expect("an active CA at every step").to_vec();
        assert!(x509.contains(&signing), "signing CA is in the bundle at {now}");
        first_signed.entry(signing).or_insert(now);
        let kid = ca.active_jwt_kid(now).expect("an active JWT key").to_string();
        assert!(jwt.iter().any(|a| a.key_id == kid), "signing kid is in the bundle at {now}");
        kid_signed.entry(kid).or_insert(now);

        let (issued, _) = ca.mint_x509_svid(&id("/w"), &[], None, now).unwrap();
        svids.push((issued.chain_der, issued.expires_at));
        let (token, exp) = ca.sign_jwt_svid(&id("/w"), &["aud".into()], None, now).unwrap();
        tokens.push((token, exp));

        // Every unexpired SVID issued so far (this step and earlier) verifies against today's bundle.
        for (chain, exp) in &svids {
            if *exp > now {
                webpki_verify(&x509, chain, now).unwrap_or_else(|e| panic!("SVID verifies at {now}: {e:?}"));
            }
        }
        let bundle = Bundle { jwt_authorities: jwt.clone(), ..Bundle::new(td()) };
        for (token, exp) in &tokens {
            if *exp > now {
                sigil_core::jwt::validate_jwt_svid(token, "aud", &|_| Some(bundle.clone()), now)
                    .unwrap_or_else(|e| panic!("JWT-SVID validates at {now}: {e}"));
            }
        }
        // Expired CAs leave the bundle.
        for der in &x509 {
            assert!(parse(der).validity().not_after.timestamp() > now);
        }
        now += step;
    }
    // Several generations went by, each published strictly before it signed (except the first).
    assert!(first_signed.len() >= 5, "{} CAs", first_signed.len());
    for (der, signed_at) in &first_signed {
        let published = first_published[der];
        if published > t0 {
            assert!(published < *signed_at, "CA published at {published} signed at {signed_at}");
        }
    }
    assert!(kid_signed.len() >= 5);
    for (kid, signed_at) in &kid_signed {
        let published = kid_published[kid];
        if published > t0 {
            assert!(published < *signed_at, "kid published at {published} signed at {signed_at}");
        }
    }
    for state in [SlotState::Prepared, SlotState::Active, SlotState::Old] {
        assert!(saw_states.contains(&state), "{state:?} seen");
    }
    // Old key files are cleaned up: at most two CA keys and two JWT keys remain.
    let key_files = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".key.pem"))
        .count();
    assert!(key_files <= 4, "{key_files} key files");
    let cert_files = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".crt.pem"))
        .count();
    assert!((1..=2).contains(&cert_files), "{cert_files} CA certificate files");
}

#[test]
fn rotation_verifies_with_openssl_at_step_and_next_step() {
    let t0 = real_now() - 1_000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CaConfig::new(td());
    cfg.ca_ttl = Duration::from_secs(120);
    let mut ca = new_ca(dir.path(), cfg, t0);
    let mut now = t0;
    let mut prev: Option<Vec<Vec<u8>>> = None;
    while now < t0 + 300 {
        ca.rotate(now).unwrap();
        let (x509, _) = ca.bundle_authorities(now);
        let (issued, _) = ca.mint_x509_svid(&id("/w"), &[], Some(Duration::from_secs(30)), now).unwrap();
        let (ok, out) = openssl_verify(dir.path(), &x509, &issued.chain_der, Some(now));
        assert!(ok && out.contains(": OK"), "step {now}: {out}");
        if let Some(p) = prev.take() {
            let (ok, out) = openssl_verify(dir.path(), &x509, &p, Some(now));
            assert!(ok, "previous SVID at {now}: {out}");
        }
        prev = Some(issued.chain_der);
        now += 20;
    }
}

#[test]
fn restart_keeps_same_ca_and_key_files_are_0600() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let cfg = CaConfig::new(td());
    let (ca, journal) = CaManager::load_or_init(dir.path(), cfg.clone(), None, now).unwrap();
    let ca_der = ca.active_x509_ca_der(now).unwrap().to_vec();
    let kid = ca.active_jwt_kid(now).unwrap().to_string();
    drop(ca);
    let (ca2, journal2) = CaManager::load_or_init(dir.path(), cfg.clone(), Some(journal.clone()), now + 30).unwrap();
    assert_eq!(ca2.active_x509_ca_der(now + 30).unwrap(), ca_der.as_slice());
    assert_eq!(ca2.active_jwt_kid(now + 30).unwrap(), kid);
    assert_eq!(journal2, journal, "nothing changed across the restart");
    // The restarted CA still signs SVIDs that verify against the same bundle.
    let (issued, _) = ca2.mint_x509_svid(&id("/w"), &[], None, now + 30).unwrap();
    let (ok, out) = openssl_verify(dir.path(), &[ca_der], &issued.chain_der, Some(now + 30));
    assert!(ok, "{out}");

    let keys_dir = dir.path().join("keys");
    assert_eq!(std::fs::metadata(&keys_dir).unwrap().permissions().mode() & 0o777, 0o700);
    let mut key_files = 0;
    for e in std::fs::read_dir(&keys_dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        if e.file_name().to_string_lossy().ends_with(".key.pem") {
            key_files += 1;
            assert_eq!(mode, 0o600, "{:?}", e.path());
        }
    }
    assert_eq!(key_files, 2);
}

#[test]
fn corrupt_journal_or_missing_keys_are_clear_errors() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let cfg = CaConfig::new(td());
    let (ca, journal) = CaManager::load_or_init(dir.path(), cfg.clone(), None, now).unwrap();
    drop(ca);

    let err = CaManager::load_or_init(dir.path(), cfg.clone(), Some(b"{not json".to_vec()), now).unwrap_err();
    assert!(matches!(err, CaError::CorruptJournal(_)), "{err}");
    assert!(err.to_string().contains("CA journal is corrupt"), "{err}");

    let other = CaConfig::new(TrustDomain::new("other.org").unwrap());
    let err = CaManager::load_or_init(dir.path(), other, Some(journal.clone()), now).unwrap_err();
    assert!(matches!(err, CaError::TrustDomainMismatch { .. }), "{err}");

    let keys: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".key.pem"))
        .collect();
    let x509_key = keys.iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with("x509-ca-")).unwrap();
    let saved = std::fs::read(x509_key).unwrap();

    std::fs::write(x509_key, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let err = CaManager::load_or_init(dir.path(), cfg.clone(), Some(journal.clone()), now).unwrap_err();
    assert!(matches!(err, CaError::CorruptKeyFile { .. }), "{err}");

    // A valid key that is not the CA's key.
    let stranger = KeyPair::generate().unwrap();
    std::fs::write(x509_key, pem::encode(&pem::Pem::new("PRIVATE KEY", stranger.serialize_der()))).unwrap();
    let err = CaManager::load_or_init(dir.path(), cfg.clone(), Some(journal.clone()), now).unwrap_err();
    assert!(matches!(err, CaError::CorruptKeyFile { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    std::fs::remove_file(x509_key).unwrap();
    let err = CaManager::load_or_init(dir.path(), cfg.clone(), Some(journal.clone()), now).unwrap_err();
    assert!(matches!(err, CaError::MissingKeyFile { .. }), "{err}");
    assert!(err.to_string().contains(&x509_key.display().to_string()), "{err}");
    assert!(err.to_string().contains("refusing to mint a new CA"), "{err}");

    // Restored, it loads again.
    std::fs::write(x509_key, saved).unwrap();
    CaManager::load_or_init(dir.path(), cfg, Some(journal), now).unwrap();
}

#[test]
fn ec_p384_and_rsa_2048_issue_svids_openssl_verifies() {
    let now = real_now();
    for (kt, alg_text) in [(KeyType::EcP384, "ecdsa-with-SHA384"), (KeyType::Rsa2048, "sha256WithRSAEncryption")] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CaConfig::new(td());
        cfg.key_type = kt;
        cfg.jwt_key_type = kt;
        let (ca, journal) = CaManager::load_or_init(dir.path(), cfg.clone(), None, now).unwrap();
        let (x509, jwt) = ca.bundle_authorities(now);
        // The workload key is P-384 too (the CSR's algorithm is independent of the CA's).
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let issued = ca.sign_x509_svid_csr(&csr_for(&key), &id("/w"), &[], None, now).unwrap();
        assert_eq!(parse(&issued.chain_der[0]).public_key().subject_public_key.data.as_ref(), key.public_key_raw());
        let (ok, out) = openssl_verify(dir.path(), &x509, &issued.chain_der, None);
        assert!(ok && out.contains(": OK"), "{kt}: {out}");
        let text = openssl_text(dir.path(), &issued.chain_der[0]);
        assert!(text.contains(alg_text), "{kt}: {text}");
        // JWT-SVIDs with the same key type validate against the bundle.
        let (token, _) = ca.sign_jwt_svid(&id("/w"), &["a".into()], None, now).unwrap();
        let bundle = Bundle { jwt_authorities: jwt, ..Bundle::new(td()) };
        sigil_core::jwt::validate_jwt_svid(&token, "a", &|_| Some(bundle.clone()), now).unwrap();
        // Both keys reload after a restart.
        let (again, _) = CaManager::load_or_init(dir.path(), cfg.clone(), Some(journal), now + 1).unwrap();
        assert_eq!(again.active_x509_ca_der(now + 1), ca.active_x509_ca_der(now));
        assert_eq!(again.active_jwt_kid(now + 1), ca.active_jwt_kid(now));
    }
}

#[test]
fn jwt_svid_has_kid_sub_aud_and_capped_exp() {
    use base64::Engine;
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CaConfig::new(td());
    cfg.ca_ttl = Duration::from_secs(200);
    let ca = new_ca(dir.path(), cfg, now);
    let kid = ca.active_jwt_kid(now).unwrap().to_string();
    assert_eq!(kid.len(), 32);
    let (token, exp) = ca.sign_jwt_svid(&id("/w"), &["a".into(), "b".into()], None, now).unwrap();
    assert_eq!(exp, now + 200, "default 5m capped at the key's expiry (200 s)");
    let (token2, exp2) = ca.sign_jwt_svid(&id("/w"), &["a".into()], Some(Duration::from_secs(60)), now).unwrap();
    assert_eq!(exp2, now + 60);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value = serde_json::from_slice(&engine.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["kid"], kid.as_str());
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["alg"], "ES256");
    let claims: serde_json::Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "spiffe://example.org/w");
    assert_eq!(claims["aud"], serde_json::json!(["a", "b"]));
    assert_eq!(claims["exp"], exp);
    assert_eq!(claims["iat"], now);
    let (_, jwt) = ca.bundle_authorities(now);
    let bundle = Bundle { jwt_authorities: jwt, ..Bundle::new(td()) };
    let v = sigil_core::jwt::validate_jwt_svid(&token2, "a", &|_| Some(bundle.clone()), now).unwrap();
    assert_eq!(v.spiffe_id, id("/w"));

    let err = ca.sign_jwt_svid(&id("/w"), &[], None, now).unwrap_err();
    assert!(matches!(err, CaError::EmptyAudience), "{err}");
    let err = ca.sign_jwt_svid(&td().to_spiffe_id(), &["a".into()], None, now).unwrap_err();
    assert!(matches!(err, CaError::InvalidSpiffeId(_)), "{err}");
}

#[test]
fn upstream_intermediate_with_sec1_key_and_root_bundle() {
    let now = real_now();
    let dir = tempfile::tempdir().unwrap();
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = time::OffsetDateTime::from_unix_timestamp(now - 3600).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(now + 30 * 86_400).unwrap();
        p
    };
    // Enterprise root -> upstream intermediate (the key Sigil holds) -> Sigil's CA -> SVID.
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Enterprise Root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let up_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut up_params = ca_params("Upstream Intermediate");
    up_params.use_authority_key_identifier_extension = true;
    let up = up_params.signed_by(&up_key, &root_issuer).unwrap();
    std::fs::write(dir.path().join("up.crt"), up.pem()).unwrap();
    std::fs::write(dir.path().join("root.crt"), root.pem()).unwrap();
    std::fs::write(dir.path().join("up.pkcs8"), up_key.serialize_pem()).unwrap();
    // SEC1 ("EC PRIVATE KEY") form of the upstream key, converted by openssl.
    let out = Command::new("openssl")
        .args(["ec", "-in"])
        .arg(dir.path().join("up.pkcs8"))
        .arg("-out")
        .arg(dir.path().join("up.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(dir.path().join("up.key")).unwrap().contains("BEGIN EC PRIVATE KEY"));

    let mut cfg = CaConfig::new(td());
    cfg.upstream = Some(UpstreamAuthority {
        cert_file: dir.path().join("up.crt"),
        key_file: dir.path().join("up.key"),
        bundle_file: None,
    });
    // Without the root bundle there is no root to publish.
    let err = CaManager::load_or_init(dir.path(), cfg.clone(), None, now).unwrap_err();
    assert!(err.to_string().contains("bundle_file"), "{err}");

    cfg.upstream.as_mut().unwrap().bundle_file = Some(dir.path().join("root.crt"));
    let ca = new_ca(dir.path(), cfg, now);
    let (x509, _) = ca.bundle_authorities(now);
    assert_eq!(x509, vec![root.der().to_vec()]);
    let (issued, _) = ca.mint_x509_svid(&id("/svc"), &[], None, now).unwrap();
    assert_eq!(issued.chain_der.len(), 3, "leaf, Sigil CA, upstream intermediate");
    assert_eq!(issued.chain_der[2], up.der().to_vec());
    let sigil_ca = parse(&issued.chain_der[1]);
    assert_eq!(sigil_ca.issuer().to_string(), "CN=Upstream Intermediate");
    assert_eq!(sigil_ca.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.3", "ecdsa-with-SHA384");
    let (ok, out) = openssl_verify(dir.path(), &x509, &issued.chain_der, None);
    assert!(ok && out.contains(": OK"), "{out}");
    webpki_verify(&x509, &issued.chain_der, now).unwrap();
}
