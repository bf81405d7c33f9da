//! Test support: a small in-memory CA that issues X509-SVIDs and signs CSRs, and a fake
//! [`SvidSigner`](crate::manager::SvidSigner) built on it. Used by this crate's tests and usable by
//! integration tests elsewhere; not for production.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_core::jwt::{JwtSigningKey, JwtSvidClaims, sign_jwt_svid};
use sigil_core::{SpiffeId, TrustDomain};
use tonic::Status;

use crate::manager::{SignResult, SvidSigner, now_unix};

/// Errors of the test CA.
#[derive(Debug, thiserror::Error)]
pub enum TestCaError {
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("jwt: {0}")]
    Jwt(#[from] sigil_core::jwt::JwtError),
    #[error("{0}")]
    Other(String),
}

/// A self-signed X.509 CA and a JWT key for one trust domain.
#[derive(Debug)]
pub struct TestCa {
    pub trust_domain: TrustDomain,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: Vec<u8>,
    jwt_key: JwtSigningKey,
    jwt_kid: String,
}

fn san_uri(id: &str) -> Result<SanType, TestCaError> {
    Ok(SanType::URI(id.try_into().map_err(|e: rcgen::Error| TestCaError::Rcgen(e))?))
}

fn time_at(unix: i64) -> Result<time::OffsetDateTime, TestCaError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| TestCaError::Other(e.to_string()))
}

impl TestCa {
    pub fn new(td: &str) -> Result<Self, TestCaError> {
        let trust_domain = TrustDomain::new(td).map_err(|e| TestCaError::Other(e.to_string()))?;
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.distinguished_name.push(DnType::CommonName, "test CA");
        ca_params.subject_alt_names = vec![san_uri(&format!("spiffe://{td}"))?];
        ca_params.not_before = time_at(now_unix() - 3600)?;
        ca_params.not_after = time_at(now_unix() + 24 * 3600)?;
        let ca_der = ca_params.self_signed(&ca_key)?.der().to_vec();
        let jwt_pkcs8 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?.serialize_der();
        let jwt_key = JwtSigningKey::from_pkcs8(&jwt_pkcs8)?;
        Ok(Self { trust_domain, ca_params, ca_key, ca_der, jwt_key, jwt_kid: "test-kid".into() })
    }

    /// The bundle: the CA certificate and the JWT key.
    pub fn bundle(&self) -> Bundle {
        let mut b = Bundle::new(self.trust_domain.clone());
        b.x509_authorities = vec![self.ca_der.clone()];
        b.jwt_authorities = vec![JwtAuthority {
            key_id: self.jwt_kid.clone(),
            public_key_spki_der: self.jwt_key.public_key_spki_der(),
            expires_at: 0,
        }];
        b.sequence = 1;
        b
    }

    fn leaf_params(&self, id: &SpiffeId, ttl_secs: i64) -> Result<CertificateParams, TestCaError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = vec![san_uri(id.as_str())?];
        p.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::KeyAgreement];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = now_unix();
        p.not_before = time_at(now - 10)?;
        p.not_after = time_at(now + ttl_secs)?;
        p.serial_number = Some(rand::random::<u64>().into());
        Ok(p)
    }

    /// A new X509-SVID (chain, PKCS#8 key) for `id`, valid for `ttl_secs` from now.
    pub fn issue(&self, id: &SpiffeId, ttl_secs: i64) -> Result<(Vec<Vec<u8>>, Vec<u8>), TestCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = self.leaf_params(id, ttl_secs)?.signed_by(&key, &issuer)?;
        Ok((vec![cert.der().to_vec()], key.serialize_der()))
    }

    /// Signs a CSR (only its key is used) as an X509-SVID for `id`.
    pub fn sign_csr(&self, csr_der: &[u8], id: &SpiffeId, ttl_secs: i64) -> Result<Vec<Vec<u8>>, TestCaError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der)?;
        csr.params = self.leaf_params(id, ttl_secs)?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        Ok(vec![csr.signed_by(&issuer)?.der().to_vec()])
    }

    /// A JWT-SVID for `id`.
    pub fn jwt(&self, id: &SpiffeId, audience: &[String], ttl_secs: i64) -> Result<String, TestCaError> {
        let now = now_unix();
        let claims = JwtSvidClaims { sub: id.clone(), aud: audience.to_vec(), exp: now + ttl_secs, iat: now };
        Ok(sign_jwt_svid(&self.jwt_key, &self.jwt_kid, &claims)?)
    }
}

/// A fake server: signs every CSR for a known entry with a [`TestCa`].
#[derive(Debug)]
pub struct FakeSigner {
    pub ca: TestCa,
    /// entry id -> SPIFFE ID.
    pub entries: Mutex<std::collections::HashMap<String, SpiffeId>>,
    pub x509_ttl_secs: i64,
    /// Number of BatchNewX509Svid calls.
    pub calls: AtomicUsize,
    /// When true, every call fails with Unavailable.
    pub down: std::sync::atomic::AtomicBool,
}

impl FakeSigner {
    pub fn new(ca: TestCa, x509_ttl_secs: i64) -> Self {
        Self {
            ca,
            entries: Mutex::default(),
            x509_ttl_secs,
            calls: AtomicUsize::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn add_entry(&self, entry_id: &str, id: &SpiffeId) {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(entry_id.to_owned(), id.clone());
        }
    }

    fn lookup(&self, entry_id: &str) -> Option<SpiffeId> {
        self.entries.lock().ok().and_then(|m| m.get(entry_id).cloned())
    }
}

#[async_trait::async_trait]
impl SvidSigner for FakeSigner {
    async fn batch_new_x509_svid(&self, params: Vec<(String, Vec<u8>)>) -> Result<Vec<SignResult>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("fake server is down"));
        }
        Ok(params
            .into_iter()
            .map(|(entry_id, csr)| {
                let r = match self.lookup(&entry_id) {
                    Some(id) => self.ca.sign_csr(&csr, &id, self.x509_ttl_secs).map_err(|e| e.to_string()),
                    None => Err("entry not authorized".to_owned()),
                };
                (entry_id, r)
            })
            .collect())
    }

    async fn new_jwt_svid(&self, entry_id: &str, audience: &[String]) -> Result<(String, i64), Status> {
        let id = self.lookup(entry_id).ok_or_else(|| Status::permission_denied("entry not authorized"))?;
        let token = self.ca.jwt(&id, audience, 300).map_err(|e| Status::internal(e.to_string()))?;
        Ok((token, now_unix() + 300))
    }
}
