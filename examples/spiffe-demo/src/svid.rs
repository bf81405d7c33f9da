//! What a workload shows of its X509-SVID and bundles: parsed once into plain values, shaped as JSON.

use serde::Serialize;
use sha2::{Digest, Sha256};
use spiffe::{X509BundleSet, X509Svid};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::validate::rfc3339;

/// One X509-SVID as shown by `/spiffe/svid/x509` and recorded by the rotation history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SvidSummary {
    pub spiffe_id: String,
    /// Hex, as openssl prints it (without colons).
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    #[serde(skip)]
    pub not_before_unix: i64,
    #[serde(skip)]
    pub not_after_unix: i64,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub subject: String,
    pub issuer: String,
    /// Certificates in the chain, leaf included.
    pub chain_length: usize,
    pub hint: Option<String>,
}

/// Parses the leaf of `svid`.
pub fn summarize(svid: &X509Svid) -> Result<SvidSummary, String> {
    let chain = svid.cert_chain();
    let leaf = chain.first().ok_or("empty chain")?;
    let (_, cert) = X509Certificate::from_der(leaf.as_bytes()).map_err(|e| e.to_string())?;
    let mut uri_sans = vec![];
    let mut dns_sans = vec![];
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                match n {
                    GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
    }
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    Ok(SvidSummary {
        spiffe_id: svid.spiffe_id().to_string(),
        serial: hex::encode(cert.raw_serial()),
        not_before: rfc3339(nb),
        not_after: rfc3339(na),
        not_before_unix: nb,
        not_after_unix: na,
        uri_sans,
        dns_sans,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        chain_length: chain.len(),
        hint: svid.hint().map(str::to_owned),
    })
}

/// The chain as PEM, leaf first.
pub fn chain_pem(svid: &X509Svid) -> String {
    svid.cert_chain().iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.as_bytes().to_vec()))).collect()
}

/// The SPIFFE agent rotates an X509-SVID at half its lifetime: the estimate `/spiffe/svid/info` gives.
pub fn rotation_due(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) / 2
}

/// One X.509 authority as `/spiffe/trust-bundle` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorityInfo {
    pub subject: String,
    pub not_after: String,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
}

pub fn authority_info(der: &[u8]) -> AuthorityInfo {
    let sha256 = hex::encode(Sha256::digest(der));
    match X509Certificate::from_der(der) {
        Ok((_, c)) => AuthorityInfo {
            subject: c.subject().to_string(),
            not_after: rfc3339(c.validity().not_after.timestamp()),
            sha256,
        },
        Err(e) => AuthorityInfo { subject: format!("(unparsable: {e})"), not_after: String::new(), sha256 },
    }
}

/// Per trust domain: its X.509 authorities.
pub fn x509_authorities(bundles: &X509BundleSet) -> Vec<(String, Vec<AuthorityInfo>)> {
    let mut v: Vec<_> = bundles
        .iter()
        .map(|(td, b)| (td.to_string(), b.authorities().iter().map(|a| authority_info(a.as_bytes())).collect()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_at_half_life() {
        assert_eq!(rotation_due(1000, 1030), 1015);
        assert_eq!(rotation_due(0, 3600), 1800);
    }
}
