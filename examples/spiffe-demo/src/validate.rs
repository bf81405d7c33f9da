//! X509-SVID validation as a relying party does it: the leaf's own rules first (exactly one SPIFFE URI
//! SAN, not a CA, not self-signed, a trusted trust domain, inside its validity), each refused with a
//! one-line reason, then the chain against the trust domain's bundle (rustls-webpki).

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use spiffe::{SpiffeId, X509BundleSet};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// What the rules need from a leaf certificate (parsed once; the rules themselves do no parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    /// Every URI SAN.
    pub uris: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Issuer equals subject and the certificate's own key verifies its signature.
    pub self_signed: bool,
    pub is_ca: bool,
}

/// Why a certificate is not accepted as a peer's X509-SVID: each reads as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("no certificate found in the PEM")]
    Empty,
    #[error("no SPIFFE ID: the certificate has no URI SAN")]
    NoUriSan,
    #[error("{0} URI SANs: an X509-SVID has exactly one")]
    ManyUriSans(usize),
    #[error("URI SAN {uri} is not a SPIFFE ID: {reason}")]
    NotSpiffe { uri: String, reason: String },
    #[error("the certificate is a CA: an X509-SVID leaf must not be")]
    IsCa,
    #[error("self-signed certificate: not issued by an authority of the trust bundle")]
    SelfSigned,
    #[error("trust domain {peer} is not trusted (bundles held for: {ours})")]
    ForeignTrustDomain { peer: String, ours: String },
    #[error("certificate expired at {0}")]
    Expired(String),
    #[error("certificate not valid before {0}")]
    NotYetValid(String),
    #[error("chain does not verify against the {td} bundle: {reason}")]
    Chain { td: String, reason: String },
    #[error("peer is {got}, not the authorized {want}")]
    NotAuthorized { got: String, want: String },
}

/// RFC 3339 of unix seconds (the number itself when out of range).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Seconds since the epoch, now.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Parses what [`check_leaf`] needs from a DER certificate.
pub fn leaf_facts(der: &[u8]) -> Result<LeafFacts, Refusal> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| Refusal::Malformed(e.to_string()))?;
    Ok(facts_of(&cert))
}

pub(crate) fn facts_of(cert: &X509Certificate<'_>) -> LeafFacts {
    let mut uris = vec![];
    let mut is_ca = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        uris.push((*u).to_owned());
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            _ => {}
        }
    }
    let self_signed = cert.issuer().as_raw() == cert.subject().as_raw() && cert.verify_signature(None).is_ok();
    LeafFacts {
        uris,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        self_signed,
        is_ca,
    }
}

/// The leaf's rules, in the order a reader expects the reason: identity, then issuer, then trust domain,
/// then time. Returns the SPIFFE ID.
pub fn check_leaf(f: &LeafFacts, now: i64, trusted: &[String]) -> Result<SpiffeId, Refusal> {
    let uri = match f.uris.as_slice() {
        [] => return Err(Refusal::NoUriSan),
        [one] => one,
        many => return Err(Refusal::ManyUriSans(many.len())),
    };
    let id = SpiffeId::new(uri).map_err(|e| Refusal::NotSpiffe { uri: uri.clone(), reason: e.to_string() })?;
    if f.is_ca {
        return Err(Refusal::IsCa);
    }
    if f.self_signed {
        return Err(Refusal::SelfSigned);
    }
    let td = id.trust_domain_name();
    if !trusted.iter().any(|t| t == td) {
        return Err(Refusal::ForeignTrustDomain { peer: td.to_owned(), ours: trusted.join(", ") });
    }
    if now >= f.not_after {
        return Err(Refusal::Expired(rfc3339(f.not_after)));
    }
    if now < f.not_before {
        return Err(Refusal::NotYetValid(rfc3339(f.not_before)));
    }
    Ok(id)
}

/// Whether the verified peer is the one authorized.
pub fn authorize(got: &SpiffeId, want: &SpiffeId) -> Result<(), Refusal> {
    if got == want { Ok(()) } else { Err(Refusal::NotAuthorized { got: got.to_string(), want: want.to_string() }) }
}

/// The certificates of a PEM text, in order (leaf first).
pub fn parse_pem_chain(text: &str) -> Result<Vec<CertificateDer<'static>>, Refusal> {
    let blocks = pem::parse_many(text).map_err(|e| Refusal::Malformed(format!("PEM: {e}")))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(Refusal::Empty);
    }
    Ok(certs)
}

/// Which extended key usage the leaf must allow, by the role it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Validates `chain` (leaf first) as an X509-SVID against `bundles` at `now`: [`check_leaf`], then the
/// path to an authority of the leaf's trust domain. Returns the SPIFFE ID.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundles: &X509BundleSet,
    now: i64,
    role: Role,
) -> Result<SpiffeId, Refusal> {
    let leaf = chain.first().ok_or(Refusal::Empty)?;
    let facts = leaf_facts(leaf)?;
    let trusted: Vec<String> = bundles.iter().map(|(td, _)| td.to_string()).collect();
    let id = check_leaf(&facts, now, &trusted)?;
    let td = id.trust_domain_name().to_owned();
    let bundle = bundles
        .get(id.trust_domain())
        .ok_or_else(|| Refusal::ForeignTrustDomain { peer: td.clone(), ours: trusted.join(", ") })?;
    let roots: Vec<CertificateDer<'_>> =
        bundle.authorities().iter().map(|a| CertificateDer::from(a.as_bytes())).collect();
    let anchors: Vec<_> = roots.iter().filter_map(|r| webpki::anchor_from_trusted_cert(r).ok()).collect();
    let ee = EndEntityCert::try_from(leaf).map_err(|e| Refusal::Malformed(format!("{e:?}")))?;
    let usage = match role {
        Role::Client => KeyUsage::client_auth(),
        Role::Server => KeyUsage::server_auth(),
    };
    let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &chain[1..], time, usage, None, None)
        .map_err(|e| Refusal::Chain { td: td.clone(), reason: webpki_reason(&e) })?;
    Ok(id)
}

fn webpki_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "not issued by any of its authorities".into(),
        webpki::Error::InvalidSignatureForPublicKey => "bad signature".into(),
        webpki::Error::RequiredEkuNotFoundContext(_) => "the leaf's extended key usage does not allow this role".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn facts(uris: &[&str]) -> LeafFacts {
        LeafFacts {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            not_before: 1000,
            not_after: 2000,
            self_signed: false,
            is_ca: false,
        }
    }

    #[test]
    fn leaf_rules_in_order() {
        let td = vec!["example.org".to_owned()];
        let b = "spiffe://example.org/service-b";
        let cases: Vec<(&str, LeafFacts, i64, Result<&str, &str>)> = vec![
            ("valid", facts(&[b]), 1500, Ok(b)),
            ("no URI SAN", facts(&[]), 1500, Err("no SPIFFE ID: the certificate has no URI SAN")),
            (
                "two URI SANs",
                facts(&[b, "spiffe://example.org/x"]),
                1500,
                Err("2 URI SANs: an X509-SVID has exactly one"),
            ),
            (
                "not spiffe",
                facts(&["https://example.org/x"]),
                1500,
                Err("URI SAN https://example.org/x is not a SPIFFE ID"),
            ),
            ("CA", LeafFacts { is_ca: true, ..facts(&[b]) }, 1500, Err("the certificate is a CA")),
            ("self-signed", LeafFacts { self_signed: true, ..facts(&[b]) }, 1500, Err("self-signed certificate")),
            (
                "foreign",
                facts(&["spiffe://other.org/service-b"]),
                1500,
                Err("trust domain other.org is not trusted (bundles held for: example.org)"),
            ),
            ("expired", facts(&[b]), 2000, Err("certificate expired at 1970-01-01T00:33:20Z")),
            ("not yet", facts(&[b]), 999, Err("certificate not valid before 1970-01-01T00:16:40Z")),
            // Self-signed beats foreign and expired: the first reason a reader would look for.
            (
                "self-signed, foreign, expired",
                LeafFacts { self_signed: true, ..facts(&["spiffe://other.org/x"]) },
                5000,
                Err("self-signed"),
            ),
        ];
        for (name, f, now, want) in cases {
            match (check_leaf(&f, now, &td), want) {
                (Ok(id), Ok(w)) => assert_eq!(id.to_string(), w, "{name}"),
                (Err(e), Err(w)) => assert!(e.to_string().starts_with(w), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn authorization_is_exact() {
        let a = SpiffeId::new("spiffe://example.org/a").unwrap();
        let b = SpiffeId::new("spiffe://example.org/b").unwrap();
        assert_eq!(authorize(&a, &a), Ok(()));
        assert_eq!(
            authorize(&a, &b).unwrap_err().to_string(),
            "peer is spiffe://example.org/a, not the authorized spiffe://example.org/b"
        );
    }

    /// A CA of `td` (params, key).
    fn ca(cn: &str) -> (rcgen::CertificateParams, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p, key)
    }

    fn leaf_of(
        id: &str,
        issuer: &(rcgen::CertificateParams, rcgen::KeyPair),
        ekus: &[rcgen::ExtendedKeyUsagePurpose],
    ) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "leaf");
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        p.extended_key_usages = ekus.to_vec();
        p.signed_by(&key, &rcgen::Issuer::from_params(&issuer.0, &issuer.1)).unwrap().der().to_vec()
    }

    fn bundles(td: &str, roots: &[&(rcgen::CertificateParams, rcgen::KeyPair)]) -> X509BundleSet {
        let ders: Vec<Vec<u8>> = roots.iter().map(|(p, k)| p.self_signed(k).unwrap().der().to_vec()).collect();
        let refs: Vec<&[u8]> = ders.iter().map(Vec::as_slice).collect();
        let b = spiffe::X509Bundle::from_x509_authorities(spiffe::TrustDomain::new(td).unwrap(), &refs).unwrap();
        let mut set = X509BundleSet::new();
        set.add_bundle(b);
        set
    }

    #[test]
    fn chains_against_the_bundle() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let root = ca("example.org root");
        let impostor = ca("impostor");
        let set = bundles("example.org", &[&root]);
        let now = now_unix();
        let id = "spiffe://example.org/svc";
        let der = |d: Vec<u8>| vec![CertificateDer::from(d)];

        let ok = der(leaf_of(id, &root, &[ServerAuth, ClientAuth]));
        assert_eq!(verify_chain(&ok, &set, now, Role::Client).unwrap().to_string(), id);
        assert_eq!(verify_chain(&ok, &set, now, Role::Server).unwrap().to_string(), id);
        // No EKU at all is allowed (only a present EKU must allow the role).
        assert!(verify_chain(&der(leaf_of(id, &root, &[])), &set, now, Role::Client).is_ok());

        let client_only = der(leaf_of(id, &root, &[ClientAuth]));
        let e = verify_chain(&client_only, &set, now, Role::Server).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chain does not verify against the example.org bundle: the leaf's extended key usage does not allow this role"
        );

        let forged = der(leaf_of(id, &impostor, &[ServerAuth, ClientAuth]));
        let e = verify_chain(&forged, &set, now, Role::Client).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chain does not verify against the example.org bundle: not issued by any of its authorities"
        );

        // Through an intermediate sent along with the leaf.
        let ikey = rcgen::KeyPair::generate().unwrap();
        let mut ip = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ip.distinguished_name.push(rcgen::DnType::CommonName, "intermediate");
        ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ider = ip.signed_by(&ikey, &rcgen::Issuer::from_params(&root.0, &root.1)).unwrap().der().to_vec();
        let inter = (ip, ikey);
        let chain = vec![CertificateDer::from(leaf_of(id, &inter, &[ClientAuth])), CertificateDer::from(ider)];
        assert_eq!(verify_chain(&chain, &set, now, Role::Client).unwrap().to_string(), id);
        assert!(verify_chain(&chain[..1], &set, now, Role::Client).is_err(), "without the intermediate");

        assert_eq!(verify_chain(&[], &set, now, Role::Client), Err(Refusal::Empty));
    }

    #[test]
    fn pem_parsing() {
        assert_eq!(parse_pem_chain(""), Err(Refusal::Empty));
        assert!(matches!(
            parse_pem_chain("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"),
            Err(Refusal::Malformed(_))
        ));
        let one = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert_eq!(parse_pem_chain(&one).unwrap().len(), 1);
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]));
        assert_eq!(parse_pem_chain(&key), Err(Refusal::Empty));
    }
}
