//! Certificate templates: the X.509 CA (self-signed root or intermediate under an upstream) and the
//! X509-SVID leaf, exactly as SPIRE issues them (anchor facts; checklist B1-B7).

use rand::Rng;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use rustls_pki_types::CertificateDer;
use sigil_core::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

use super::{CaError, CaSubject};

/// How far NotBefore is backdated, for clock skew between server and relying parties.
pub const BACKDATE_SECS: i64 = 10;

fn odt(t: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(t).map_err(|_| CaError::InvalidTime(t))
}

/// A random positive 128-bit serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let mut rng = rand::rng();
    while bytes.iter().all(|b| *b == 0) {
        rng.fill(&mut bytes);
    }
    SerialNumber::from_slice(&bytes)
}

fn rcgen_err(what: &'static str) -> impl Fn(rcgen::Error) -> CaError {
    move |e| CaError::CertGeneration(format!("{what}: {e}"))
}

fn uri_san(id: &str) -> Result<SanType, CaError> {
    Ia5String::try_from(id).map(SanType::URI).map_err(|e| CaError::CertGeneration(format!("URI SAN {id:?}: {e}")))
}

fn ca_params(
    td: &TrustDomain,
    subject: &CaSubject,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if !subject.country.is_empty() {
        dn.push(DnType::CountryName, subject.country.as_str());
    }
    if !subject.organization.is_empty() {
        dn.push(DnType::OrganizationName, subject.organization.as_str());
    }
    if let Some(cn) = subject.common_name.as_deref() {
        dn.push(DnType::CommonName, cn);
    }
    p.distinguished_name = dn;
    p.serial_number = Some(random_serial());
    p.not_before = odt(not_before)?;
    p.not_after = odt(not_after)?;
    p.subject_alt_names = vec![uri_san(&td.id_string())?];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// A self-signed root CA for `td`, valid `[not_before, not_after]`.
pub(crate) fn self_signed_ca(
    td: &TrustDomain,
    subject: &CaSubject,
    key: &KeyPair,
    not_before: i64,
    not_after: i64,
) -> Result<Vec<u8>, CaError> {
    let p = ca_params(td, subject, not_before, not_after)?;
    let cert = p.self_signed(key).map_err(rcgen_err("self-signed CA"))?;
    Ok(cert.der().to_vec())
}

/// An intermediate CA for `td` signed by the upstream CA (`upstream_cert_der` + `upstream_key`).
pub(crate) fn intermediate_ca(
    td: &TrustDomain,
    subject: &CaSubject,
    key: &KeyPair,
    upstream_cert_der: &[u8],
    upstream_key: &KeyPair,
    not_before: i64,
    not_after: i64,
) -> Result<Vec<u8>, CaError> {
    let mut p = ca_params(td, subject, not_before, not_after)?;
    p.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(upstream_cert_der), upstream_key)
        .map_err(rcgen_err("upstream CA certificate"))?;
    let cert = p.signed_by(key, &issuer).map_err(rcgen_err("intermediate CA"))?;
    Ok(cert.der().to_vec())
}

/// Signs an X509-SVID leaf for `public_key` with the CA (`ca_cert_der` + `ca_key`).
pub(crate) fn leaf(
    spiffe_id: &SpiffeId,
    dns_names: &[String],
    public_key: &impl PublicKeyData,
    ca_cert_der: &[u8],
    ca_key: &impl SigningKey,
    not_before: i64,
    not_after: i64,
) -> Result<Vec<u8>, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "SPIRE");
    let mut sans = vec![uri_san(spiffe_id.as_str())?];
    for name in dns_names {
        if name.is_empty() || !name.is_ascii() || name.contains(|c: char| c.is_ascii_whitespace() || c == '/') {
            return Err(CaError::InvalidDnsName(name.clone()));
        }
        let ia5 = Ia5String::try_from(name.as_str()).map_err(|_| CaError::InvalidDnsName(name.clone()))?;
        sans.push(SanType::DnsName(ia5));
    }
    if let Some(first) = dns_names.first() {
        dn.push(DnType::CommonName, first.as_str());
    }
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.serial_number = Some(random_serial());
    p.not_before = odt(not_before)?;
    p.not_after = odt(not_after)?;
    // ExplicitNoCa writes basicConstraints (critical, cA=false) and the subject key identifier.
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages =
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::KeyAgreement];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let issuer =
        Issuer::from_ca_cert_der(&CertificateDer::from(ca_cert_der), ca_key).map_err(rcgen_err("CA certificate"))?;
    let cert = p.signed_by(public_key, &issuer).map_err(rcgen_err("X509-SVID"))?;
    Ok(cert.der().to_vec())
}

/// Verifies a PKCS#10 CSR's signature and returns only its public key; every subject field and requested
/// extension is ignored. RSA keys under 2048 bits are refused.
pub(crate) fn csr_public_key(csr_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|e| CaError::InvalidCsr(format!("not a CSR: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::InvalidCsr("trailing bytes after the CSR".to_owned()));
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    let spki = &csr.certification_request_info.subject_pki;
    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() {
        let bits = rsa.key_size();
        if bits < 2048 {
            return Err(CaError::InvalidCsr(format!("RSA key of {bits} bits; at least 2048 required")));
        }
    }
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CaError::InvalidCsr(format!("unsupported public key: {e}")))
}

/// Facts read back from a certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertFacts {
    pub not_after: i64,
    pub self_signed: bool,
    /// Raw subject public key bits (what rcgen calls `der_bytes`).
    pub public_key: Vec<u8>,
}

pub(crate) fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".to_owned());
    }
    Ok(CertFacts {
        not_after: cert.validity().not_after.timestamp(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}
