//! How the fetcher authenticates a foreign bundle endpoint (SPIFFE Federation 5.2, checklist G4/G5).
//!
//! - `https_spiffe` ([`SpiffeEndpointVerifier`]): the presented chain must be an X509-SVID valid for the
//!   locally stored bundle of the endpoint SPIFFE ID's trust domain, for exactly the configured ID. The
//!   host name is not checked (the SVID names no host), as in SPIRE and go-spiffe.
//! - `https_web` ([`WebEndpointVerifier`]): rustls' Web PKI verifier (chain to the roots, RFC 6125 name
//!   check against the URL's host). When it refuses a certificate that carries a SPIFFE ID, the failure
//!   says "maybe use https_spiffe", as SPIRE's does (for a wrong name, and here for an unknown issuer too:
//!   an SVID never chains to web roots).
//!
//! rustls only carries an error kind back to the caller, so each verifier also records its own words for
//! the last refusal in a [`FailureNote`], which the fetcher reports instead.
//! The TLS signature checks are rustls' own with the ring provider's algorithms.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sigil_core::SpiffeId;
use sigil_core::bundle::Bundle;

/// The verifier's own description of why it refused the peer, if it did.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailureNote(Arc<Mutex<Option<String>>>);

impl FailureNote {
    fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn chain_of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Vec<Vec<u8>> {
    std::iter::once(end_entity).chain(intermediates).map(|c| c.to_vec()).collect()
}

/// The `spiffe://` URI SANs of a certificate (empty when it has none or does not parse).
fn spiffe_uris(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return vec![] };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return vec![] };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.to_ascii_lowercase().starts_with("spiffe://") => {
                Some((*u).to_owned())
            }
            _ => None,
        })
        .collect()
}

/// `https_spiffe`: an X509-SVID for exactly `expected`, valid for `bundle` (the stored bundle of
/// `expected`'s trust domain).
#[derive(Debug)]
pub(crate) struct SpiffeEndpointVerifier {
    pub(crate) expected: SpiffeId,
    pub(crate) bundle: Bundle,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
    pub(crate) note: FailureNote,
}

impl ServerCertVerifier for SpiffeEndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let refuse = |text: String| {
            self.note.set(text);
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        };
        let id = sigil_core::x509::verify_x509_svid(&chain_of(end_entity, intermediates), &self.bundle, now)
            .map_err(|e| {
                refuse(format!(
                    "the endpoint's certificate is not an X509-SVID valid for the stored bundle of {} (sequence {}): {e}",
                    self.bundle.trust_domain, self.bundle.sequence
                ))
            })?;
        if id != self.expected {
            return Err(refuse(format!(
                "the endpoint presented an X509-SVID for {id}, but endpoint_spiffe_id is {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    sigil_tls::handshake_signatures!(algorithms);
}

/// `https_web`: rustls' Web PKI checks, with SPIRE's hint when the certificate is an SVID.
#[derive(Debug)]
pub(crate) struct WebEndpointVerifier {
    inner: Arc<WebPkiServerVerifier>,
    note: FailureNote,
}

impl WebEndpointVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<rustls::crypto::CryptoProvider>,
        note: FailureNote,
    ) -> Result<Self, String> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider).build().map_err(|e| e.to_string())?;
        Ok(Self { inner, note })
    }
}

impl ServerCertVerifier for WebEndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map_err(|e| {
            let name_or_issuer = matches!(
                &e,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                        | CertificateError::UnknownIssuer
                )
            );
            let ids = spiffe_uris(end_entity);
            if name_or_issuer && let Some(id) = ids.first() {
                self.note.set(format!(
                    "{e}; the certificate carries SPIFFE ID {id}: maybe use https_spiffe (bundle_endpoint_profile = \
                     \"https_spiffe\", endpoint_spiffe_id = \"{id}\")"
                ));
            }
            e
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The system's root certificates (rustls-native-certs: the platform store, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set), read once per process: reading them on every fetch would cost a directory
/// scan each second for short hints, and the store rarely changes under a running server.
pub(crate) fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: std::sync::OnceLock<Result<Arc<RootCertStore>, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "no system root certificates could be loaded ({}); set ca_file_path in the relationship's \
                     [federation.federates_with] table, or SSL_CERT_FILE",
                    if why.is_empty() { "none found".to_owned() } else { why.join("; ") }
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// The CA certificates of a PEM file (`ca_file_path`), read on every fetch so a renewed file is used.
pub(crate) fn roots_from_file(path: &std::path::Path) -> Result<Arc<RootCertStore>, String> {
    let text = std::fs::read(path).map_err(|e| format!("ca_file_path {}: {e}", path.display()))?;
    roots_from_pem(&text).map_err(|e| format!("ca_file_path {}: {e}", path.display()))
}

pub(crate) fn roots_from_pem(text: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let mut store = RootCertStore::empty();
    for (i, block) in blocks.iter().filter(|b| b.tag() == "CERTIFICATE").enumerate() {
        store
            .add(CertificateDer::from(block.contents().to_vec()))
            .map_err(|e| format!("certificate {i} cannot be a trust anchor: {e}"))?;
    }
    if store.is_empty() {
        return Err("no CERTIFICATE blocks".into());
    }
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ca_file_contents() {
        let one = ca_pem();
        let two = format!("{}junk between blocks\n{}", ca_pem(), ca_pem());
        let cases: Vec<(String, Result<usize, &str>)> = vec![
            (one, Ok(1)),
            (two, Ok(2)),
            (String::new(), Err("no CERTIFICATE blocks")),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(), Err("no CERTIFICATE blocks")),
            ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(), Err("certificate 0 cannot be")),
        ];
        for (text, want) in cases {
            let got = roots_from_pem(text.as_bytes()).map(|s| s.len());
            match (got, want) {
                (Ok(n), Ok(w)) => assert_eq!(n, w),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                (got, want) => panic!("{text:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn spiffe_uris_of_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["b.test".to_owned()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::URI("spiffe://b.test/spire/server".try_into().unwrap()));
        p.subject_alt_names.push(rcgen::SanType::URI("https://b.test/".try_into().unwrap()));
        let der = p.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(spiffe_uris(&der), ["spiffe://b.test/spire/server"]);
        assert_eq!(spiffe_uris(b"garbage"), Vec::<String>::new());
    }
}
