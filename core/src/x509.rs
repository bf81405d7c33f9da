//! X509-SVID and CA certificate checks (checklist B).
//!
//! - [`leaf_spiffe_id`]: the leaf rules of B1, B2, B4, B6 and B7 on one certificate, returning its SPIFFE ID.
//! - [`check_ca_cert`]: the signing-certificate rules of B3 and B6.
//! - [`verify_x509_svid`]: B8, RFC 5280 path validation (rustls-webpki) against the bundle of the SVID's own
//!   trust domain, plus the leaf rules and the SPIFFE checks on intermediates.
//!
//! Decisions where the checklist leaves room:
//! - **B7 (EKU)**: an absent extendedKeyUsage is accepted (the spec says leaves SHOULD carry it). When it is
//!   present it MUST contain both serverAuth and clientAuth (X509-SVID 4.4 "When included ... MUST be set"),
//!   so a leaf with only one of them is rejected. `anyExtendedKeyUsage` does not stand in for either.
//! - **B5 (URI name constraints)**: rustls-webpki does not implement URI name constraints and fails closed: a
//!   SVID below a CA with a permitted URI subtree is rejected. The X509-SVID spec (4.2) foresees exactly this
//!   for libraries without support. DNS and IP name constraints are enforced by webpki.
//! - **Intermediates**: webpki ignores keyUsage. RFC 5280 6.1.4 (n) requires keyCertSign when keyUsage is
//!   present on an intermediate, and B3 forbids a path in a signing certificate's SPIFFE ID; both are checked
//!   here. The stricter [`check_ca_cert`] (keyUsage present and critical) is for CAs we mint or import, not
//!   for third-party intermediates in a presented chain.
//! - EKU on intermediates is not restricted (X509-SVID 4.4 notes libraries differ; go-spiffe accepts any).

use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;

use crate::bundle::Bundle;
use crate::id::SpiffeId;

/// Longest certificate chain (leaf plus intermediates) [`verify_x509_svid`] accepts.
pub const MAX_CHAIN_LEN: usize = 16;

/// Why a certificate or chain was refused. Messages name the checklist rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("cannot parse X.509 certificate: {0}")]
    Parse(String),
    #[error("X509-SVID has {0} URI SANs; exactly one is required (B1)")]
    UriSanCount(usize),
    #[error("X509-SVID URI SAN {uri:?} is not a valid SPIFFE ID (B2): {reason}")]
    InvalidSpiffeId { uri: String, reason: String },
    #[error("X509-SVID SPIFFE ID {0} has no path; a leaf SVID needs a non-root path (B2)")]
    LeafWithoutPath(String),
    #[error("X509-SVID has an empty Subject, so its SAN extension must be critical (B2)")]
    EmptySubjectSanNotCritical,
    #[error("X509-SVID leaf has basicConstraints cA=true; a leaf must have cA=false (B4)")]
    LeafIsCa,
    #[error("{0} has no keyUsage extension; it is required on every SVID (B6)")]
    MissingKeyUsage(&'static str),
    #[error("{0} keyUsage extension is not critical; it must be critical (B6)")]
    KeyUsageNotCritical(&'static str),
    #[error("X509-SVID leaf keyUsage lacks digitalSignature (B6)")]
    LeafMissingDigitalSignature,
    #[error("X509-SVID leaf keyUsage sets {0}; a leaf must set neither keyCertSign nor cRLSign (B6)")]
    LeafSigningUsage(&'static str),
    #[error("X509-SVID leaf extendedKeyUsage lacks {0}; when present it must contain serverAuth and clientAuth (B7)")]
    LeafEkuIncomplete(&'static str),
    #[error("CA certificate does not have basicConstraints cA=true (B3)")]
    CaNotCa,
    #[error("CA certificate keyUsage lacks keyCertSign (B3, B6)")]
    CaMissingKeyCertSign,
    #[error("CA certificate SPIFFE ID {0} has a path; a signing certificate's SPIFFE ID must not (B3)")]
    CaIdHasPath(String),
    #[error("CA certificate has {0} SPIFFE URI SANs; at most one is allowed (B3)")]
    CaSpiffeIdCount(usize),
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("certificate chain has {0} certificates; at most {MAX_CHAIN_LEN} are accepted")]
    ChainTooLong(usize),
    #[error("more than {0} concatenated certificates")]
    TooManyCertificates(usize),
    #[error("chain certificate {index} (intermediate): {source}")]
    Intermediate {
        index: usize,
        #[source]
        source: Box<X509Error>,
    },
    #[error("X509-SVID {id} is in trust domain {svid_td}, but the bundle is for {bundle_td} (B8)")]
    TrustDomainMismatch { id: String, svid_td: String, bundle_td: String },
    #[error("bundle for trust domain {0} has no usable (readable, currently valid) X.509 authorities (B8)")]
    NoTrustAnchors(String),
    #[error("X509-SVID path validation failed (B8, RFC 5280): {0}")]
    PathValidation(String),
    #[error("validation time {0} is before the Unix epoch")]
    InvalidTime(i64),
}

/// The keyUsage bits the SPIFFE rules look at.
#[derive(Clone, Copy)]
struct Ku {
    critical: bool,
    digital_signature: bool,
    key_cert_sign: bool,
    crl_sign: bool,
}

/// The parts of a certificate the SPIFFE rules look at.
struct CertFacts {
    /// basicConstraints cA (false when the extension is absent).
    is_ca: bool,
    /// Every URI SAN; `None` for one that is not valid UTF-8.
    uri_sans: Vec<Option<String>>,
    san_critical: bool,
    subject_empty: bool,
    /// keyUsage when present.
    key_usage: Option<Ku>,
    /// (serverAuth, clientAuth) when the extension is present.
    eku: Option<(bool, bool)>,
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| X509Error::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509Error::Parse(format!("{} bytes of trailing data after the certificate", rest.len())));
    }
    Ok(cert)
}

fn malformed(name: &str) -> X509Error {
    X509Error::Parse(format!("malformed or duplicate {name} extension"))
}

fn facts(cert: &X509Certificate<'_>) -> Result<CertFacts, X509Error> {
    let tbs = &cert.tbs_certificate;

    let is_ca = match tbs.get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS) {
        Err(_) => return Err(malformed("basicConstraints")),
        Ok(None) => false,
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => bc.ca,
            _ => return Err(malformed("basicConstraints")),
        },
    };

    let (uri_sans, san_critical) = match tbs.get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME) {
        Err(_) => return Err(malformed("subjectAltName")),
        Ok(None) => (Vec::new(), false),
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                let uris = san
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some(Some((*uri).to_owned())),
                        // A URI (context tag 6) x509-parser could not read as UTF-8 still counts for B1.
                        GeneralName::Invalid(tag, _) if tag.0 == 6 => Some(None),
                        _ => None,
                    })
                    .collect();
                (uris, ext.critical)
            }
            _ => return Err(malformed("subjectAltName")),
        },
    };

    let key_usage = match tbs.get_extension_unique(&OID_X509_EXT_KEY_USAGE) {
        Err(_) => return Err(malformed("keyUsage")),
        Ok(None) => None,
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => Some(Ku {
                critical: ext.critical,
                digital_signature: ku.digital_signature(),
                key_cert_sign: ku.key_cert_sign(),
                crl_sign: ku.crl_sign(),
            }),
            _ => return Err(malformed("keyUsage")),
        },
    };

    let eku = match tbs.get_extension_unique(&OID_X509_EXT_EXTENDED_KEY_USAGE) {
        Err(_) => return Err(malformed("extendedKeyUsage")),
        Ok(None) => None,
        Ok(Some(ext)) => match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => Some((eku.server_auth, eku.client_auth)),
            _ => return Err(malformed("extendedKeyUsage")),
        },
    };

    let subject_empty = tbs.subject().iter_attributes().next().is_none();

    Ok(CertFacts { is_ca, uri_sans, san_critical, subject_empty, key_usage, eku })
}

fn parse_uri_as_spiffe_id(uri: Option<&String>) -> Result<SpiffeId, X509Error> {
    let Some(uri) = uri else {
        return Err(X509Error::InvalidSpiffeId { uri: String::new(), reason: "URI SAN is not valid UTF-8".into() });
    };
    SpiffeId::new(uri)
        .map_err(|e| X509Error::InvalidSpiffeId { uri: uri.chars().take(128).collect(), reason: e.to_string() })
}

fn leaf_checks(f: &CertFacts) -> Result<SpiffeId, X509Error> {
    // B1: exactly one URI SAN.
    if f.uri_sans.len() != 1 {
        return Err(X509Error::UriSanCount(f.uri_sans.len()));
    }
    // B2 / B8: spiffe scheme, valid ID, non-root path.
    let id = parse_uri_as_spiffe_id(f.uri_sans.first().and_then(Option::as_ref))?;
    if id.is_trust_domain_id() {
        return Err(X509Error::LeafWithoutPath(id.to_string()));
    }
    // B2: empty Subject => SAN extension critical.
    if f.subject_empty && !f.san_critical {
        return Err(X509Error::EmptySubjectSanNotCritical);
    }
    // B4: cA=false.
    if f.is_ca {
        return Err(X509Error::LeafIsCa);
    }
    // B6: keyUsage present, critical, digitalSignature, neither keyCertSign nor cRLSign.
    const LEAF: &str = "X509-SVID leaf";
    let Some(ku) = f.key_usage else {
        return Err(X509Error::MissingKeyUsage(LEAF));
    };
    if !ku.critical {
        return Err(X509Error::KeyUsageNotCritical(LEAF));
    }
    if ku.key_cert_sign {
        return Err(X509Error::LeafSigningUsage("keyCertSign"));
    }
    if ku.crl_sign {
        return Err(X509Error::LeafSigningUsage("cRLSign"));
    }
    if !ku.digital_signature {
        return Err(X509Error::LeafMissingDigitalSignature);
    }
    // B7: EKU optional; when present both serverAuth and clientAuth.
    if let Some((server, client)) = f.eku {
        if !server {
            return Err(X509Error::LeafEkuIncomplete("serverAuth"));
        }
        if !client {
            return Err(X509Error::LeafEkuIncomplete("clientAuth"));
        }
    }
    Ok(id)
}

/// Parses a leaf X509-SVID (DER) and checks the leaf rules B1, B2, B4, B6 and B7; returns its SPIFFE ID.
///
/// This does not validate the signature chain; use [`verify_x509_svid`] for that.
pub fn leaf_spiffe_id(leaf_der: &[u8]) -> Result<SpiffeId, X509Error> {
    let cert = parse_cert(leaf_der)?;
    leaf_checks(&facts(&cert)?)
}

/// The SPIFFE ID of a signing certificate, if it carries one: at most one `spiffe://` URI SAN, without a
/// path (B3). Non-SPIFFE URI SANs are not SPIFFE IDs and are ignored.
fn ca_spiffe_id(f: &CertFacts) -> Result<Option<SpiffeId>, X509Error> {
    let spiffe_uris: Vec<&Option<String>> = f
        .uri_sans
        .iter()
        .filter(|u| u.as_deref().is_some_and(|u| u.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))))
        .collect();
    match spiffe_uris.as_slice() {
        [] => Ok(None),
        [uri] => {
            let id = parse_uri_as_spiffe_id(uri.as_ref())?;
            if !id.is_trust_domain_id() {
                return Err(X509Error::CaIdHasPath(id.to_string()));
            }
            Ok(Some(id))
        }
        many => Err(X509Error::CaSpiffeIdCount(many.len())),
    }
}

/// Checks a signing (CA) certificate: cA=true, keyUsage present and critical with keyCertSign (B3, B6;
/// cRLSign and digitalSignature are allowed), and a SPIFFE ID, if present, without a path (B3).
/// Returns that SPIFFE ID.
pub fn check_ca_cert(der: &[u8]) -> Result<Option<SpiffeId>, X509Error> {
    const CA: &str = "CA certificate";
    let cert = parse_cert(der)?;
    let f = facts(&cert)?;
    if !f.is_ca {
        return Err(X509Error::CaNotCa);
    }
    let Some(ku) = f.key_usage else {
        return Err(X509Error::MissingKeyUsage(CA));
    };
    if !ku.critical {
        return Err(X509Error::KeyUsageNotCritical(CA));
    }
    if !ku.key_cert_sign {
        return Err(X509Error::CaMissingKeyCertSign);
    }
    ca_spiffe_id(&f)
}

/// The checks on an intermediate of a presented chain that webpki does not do (see the module docs).
fn check_intermediate(der: &[u8]) -> Result<(), X509Error> {
    let cert = parse_cert(der)?;
    let f = facts(&cert)?;
    if !f.is_ca {
        return Err(X509Error::CaNotCa);
    }
    if let Some(ku) = f.key_usage
        && !ku.key_cert_sign
    {
        return Err(X509Error::CaMissingKeyCertSign);
    }
    ca_spiffe_id(&f).map(|_| ())
}

/// Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle` bytes) into one DER
/// per certificate, checking that each parses. At most `max` certificates are accepted.
pub fn split_der_certs(concat: &[u8], max: usize) -> Result<Vec<Vec<u8>>, X509Error> {
    let mut out = Vec::new();
    let mut rest = concat;
    while !rest.is_empty() {
        if out.len() == max {
            return Err(X509Error::TooManyCertificates(max));
        }
        let (after, _) = X509Certificate::from_der(rest).map_err(|e| X509Error::Parse(e.to_string()))?;
        let used = rest.len() - after.len();
        out.push(rest[..used].to_vec());
        rest = after;
    }
    Ok(out)
}

/// A certificate's validity period as unix seconds `(notBefore, notAfter)`.
pub fn validity_unix(der: &[u8]) -> Result<(i64, i64), X509Error> {
    let cert = parse_cert(der)?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn spki_der_of_cert(der: &[u8]) -> Result<Vec<u8>, X509Error> {
    let cert = parse_cert(der)?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

fn is_valid_at(der: &[u8], now_unix: i64) -> bool {
    parse_cert(der).is_ok_and(|c| {
        let v = c.validity();
        v.not_before.timestamp() <= now_unix && now_unix <= v.not_after.timestamp()
    })
}

/// Accepts any EKU content during path building (like go-spiffe's `ExtKeyUsageAny`); B7 is checked on the
/// leaf by [`leaf_checks`]. A malformed EKU extension is still an error.
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// Validates an X509-SVID chain (DER, leaf first, then intermediates) against `bundle` at `now_unix` (B8).
///
/// Checks, in order: the leaf rules ([`leaf_spiffe_id`]), that the SVID's trust domain is the bundle's,
/// the intermediates (cA, keyCertSign when keyUsage is present, SPIFFE ID without path), and RFC 5280 path
/// validation with rustls-webpki using the bundle's X.509 authorities as trust anchors (signatures,
/// validity periods, basic constraints, path length, name constraints). Returns the SVID's SPIFFE ID.
pub fn verify_x509_svid(chain_der: &[Vec<u8>], bundle: &Bundle, now_unix: i64) -> Result<SpiffeId, X509Error> {
    let Some((leaf, intermediates)) = chain_der.split_first() else {
        return Err(X509Error::EmptyChain);
    };
    if chain_der.len() > MAX_CHAIN_LEN {
        return Err(X509Error::ChainTooLong(chain_der.len()));
    }
    let id = leaf_spiffe_id(leaf)?;
    let svid_td = id.trust_domain();
    if svid_td != bundle.trust_domain {
        return Err(X509Error::TrustDomainMismatch {
            id: id.to_string(),
            svid_td: svid_td.to_string(),
            bundle_td: bundle.trust_domain.to_string(),
        });
    }
    for (i, der) in intermediates.iter().enumerate() {
        check_intermediate(der).map_err(|e| X509Error::Intermediate { index: i + 1, source: Box::new(e) })?;
    }

    let secs = u64::try_from(now_unix).map_err(|_| X509Error::InvalidTime(now_unix))?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(secs));

    // Authorities outside their validity period do not anchor anything (as in go-spiffe / Go's x509,
    // which check the root's dates too; RFC 5280 path validation alone would not).
    let anchor_ders: Vec<CertificateDer<'_>> = bundle
        .x509_authorities
        .iter()
        .filter(|c| is_valid_at(c, now_unix))
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    // An authority webpki cannot read cannot anchor anything; the others still can.
    let anchors: Vec<TrustAnchor<'_>> =
        anchor_ders.iter().filter_map(|der| webpki::anchor_from_trusted_cert(der).ok()).collect();
    if anchors.is_empty() {
        return Err(X509Error::NoTrustAnchors(bundle.trust_domain.to_string()));
    }

    let leaf_der = CertificateDer::from(leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| X509Error::PathValidation(e.to_string()))?;
    let inter_ders: Vec<CertificateDer<'_>> =
        intermediates.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &inter_ders, time, AnyEku, None, None)
        .map_err(|e| X509Error::PathValidation(e.to_string()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        for input in [&b""[..], b"\x30", b"\x30\x82\xff\xff", b"not a certificate"] {
            assert!(matches!(leaf_spiffe_id(input), Err(X509Error::Parse(_))), "{input:?}");
            assert!(matches!(check_ca_cert(input), Err(X509Error::Parse(_))), "{input:?}");
            assert!(matches!(spki_der_of_cert(input), Err(X509Error::Parse(_))), "{input:?}");
        }
    }

    #[test]
    fn empty_chain_is_refused() {
        let td = crate::TrustDomain::new("example.org").unwrap();
        assert_eq!(verify_x509_svid(&[], &Bundle::new(td), 0), Err(X509Error::EmptyChain));
    }
}
