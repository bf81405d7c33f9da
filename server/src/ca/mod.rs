//! The server's certificate authority: X.509 CAs and JWT signing keys, rotated SPIRE's way.
//!
//! - Two slots (A/B) for the X.509 CA and two for the JWT key; each slot is Prepared -> Active -> Old on the
//!   schedule of [`rotation::rotation_step`]. A prepared key is published in the bundle before it signs.
//! - Self-signed mode: every X.509 CA is a root for `spiffe://<td>`. Upstream mode: every X.509 CA is an
//!   intermediate signed by an upstream CA read from disk; the bundle then holds the upstream roots and
//!   SVID chains carry the intermediate.
//! - Private keys are files under `<data_dir>/keys/` (mode 0600 from creation). Everything else is in the
//!   journal (serde_json bytes) the caller keeps in its datastore and hands back at start.
//! - Issued X509-SVIDs follow the anchor facts exactly (checklist B1-B7): one URI SAN, DNS SANs with
//!   CN = first DNS name, random 128-bit serial, SKI/AKI, keyUsage critical
//!   digitalSignature|keyEncipherment|keyAgreement, EKU serverAuth+clientAuth, cA=false, NotBefore
//!   backdated 10 s, NotAfter capped at the CA's NotAfter. Only the CSR's public key is used.
//!
//! Times are unix seconds (`i64`) throughout so callers and tests control the clock.

mod certs;
mod journal;
mod keys;
pub mod rotation;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use sigil_core::bundle::JwtAuthority;
use sigil_core::jwt::{JwtError, JwtSigningKey, JwtSvidClaims};
use sigil_core::{IdError, SpiffeId, TrustDomain};

use journal::{JOURNAL_VERSION, Journal, JwtPublic, JwtRecord, RetiredX509, X509Record};
pub use rotation::{RotationAction, SlotState, SlotTimes, rotation_step};

pub use certs::BACKDATE_SECS;

/// Everything that can go wrong in the CA. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid key type {0:?}: expected one of ec-p256, ec-p384, rsa-2048")]
    InvalidKeyType(String),
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "CA key file {path} is missing but the CA journal refers to it; restore the keys directory \
         (refusing to mint a new CA over an existing trust domain)"
    )]
    MissingKeyFile { path: PathBuf },
    #[error("CA key file {path} is unusable: {reason}")]
    CorruptKeyFile { path: PathBuf, reason: String },
    #[error("CA journal is corrupt: {0}")]
    CorruptJournal(String),
    #[error("CA journal belongs to trust domain {journal:?} but the server is configured for {config:?}")]
    TrustDomainMismatch { journal: String, config: String },
    #[error("upstream authority: {0}")]
    Upstream(String),
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    #[error("CSR signature does not verify")]
    CsrSignature,
    #[error(transparent)]
    InvalidSpiffeId(#[from] IdError),
    #[error("SPIFFE ID {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("invalid DNS name {0:?}")]
    InvalidDnsName(String),
    #[error("no active X.509 CA")]
    NoActiveCa,
    #[error("no active JWT signing key")]
    NoActiveJwtKey,
    #[error("JWT-SVID audience must have at least one non-empty value")]
    EmptyAudience,
    #[error("JWT-SVID: {0}")]
    Jwt(#[from] JwtError),
    #[error("certificate generation failed: {0}")]
    CertGeneration(String),
    #[error("time {0} is out of range")]
    InvalidTime(i64),
}

/// Key algorithm of a CA or JWT key. JWT: ec-p256 = ES256, ec-p384 = ES384, rsa-2048 = RS256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyType {
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "ec-p384")]
    EcP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyType {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa2048),
            other => Err(CaError::InvalidKeyType(other.to_owned())),
        }
    }
}

/// Subject of the X.509 CA certificates (SPIRE's `ca_subject`, default `C=US, O=SPIFFE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    pub country: String,
    pub organization: String,
    pub common_name: Option<String>,
}

impl Default for CaSubject {
    fn default() -> Self {
        Self { country: "US".into(), organization: "SPIFFE".into(), common_name: None }
    }
}

/// An upstream CA on disk: PEM certificate (optionally followed by its intermediates), PEM private key
/// (PKCS#8, SEC1 or PKCS#1), and optionally a PEM file of extra root certificates. The bundle's X.509
/// authorities are the self-signed last certificate of `cert_file` (if it is one) plus `bundle_file`'s
/// certificates; at least one root is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuthority {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub bundle_file: Option<PathBuf>,
}

/// CA settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub key_type: KeyType,
    /// Lifetime of each X.509 CA and JWT key.
    pub ca_ttl: Duration,
    pub default_x509_svid_ttl: Duration,
    pub default_jwt_svid_ttl: Duration,
    pub jwt_key_type: KeyType,
    pub upstream: Option<UpstreamAuthority>,
    pub ca_subject: CaSubject,
}

impl CaConfig {
    /// SPIRE's defaults: ec-p256 CA and JWT keys, 24h CA, 1h X509-SVIDs, 5m JWT-SVIDs, self-signed.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            default_x509_svid_ttl: Duration::from_secs(3600),
            default_jwt_svid_ttl: Duration::from_secs(300),
            jwt_key_type: KeyType::EcP256,
            upstream: None,
            ca_subject: CaSubject::default(),
        }
    }
}

/// The CA settings of a resolved server configuration (key types were validated when it was resolved).
pub fn config_from(config: &crate::config::ServerConfig) -> CaConfig {
    let key_type = |name: &str, value: &str| {
        KeyType::from_str(value).unwrap_or_else(|e| {
            tracing::warn!("{name}: {e}; using ec-p256");
            KeyType::EcP256
        })
    };
    CaConfig {
        trust_domain: config.trust_domain.clone(),
        key_type: key_type("ca_key_type", &config.ca_key_type),
        ca_ttl: config.ca_ttl,
        default_x509_svid_ttl: config.default_x509_svid_ttl,
        default_jwt_svid_ttl: config.default_jwt_svid_ttl,
        jwt_key_type: key_type("jwt_key_type", &config.jwt_key_type),
        upstream: config.upstream.as_ref().map(|u| UpstreamAuthority {
            cert_file: u.cert_file_path.clone(),
            key_file: u.key_file_path.clone(),
            bundle_file: u.bundle_file_path.clone(),
        }),
        ca_subject: CaSubject::default(),
    }
}

/// An issued X509-SVID: DER chain (leaf first, then the intermediates in upstream mode) and its NotAfter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedX509 {
    pub chain_der: Vec<Vec<u8>>,
    pub expires_at: i64,
}

/// What one slot holds, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// `'A'` or `'B'`.
    pub slot: char,
    pub id: String,
    pub state: SlotState,
    pub not_before: i64,
    pub not_after: i64,
    /// The JWT `kid`, for JWT slots.
    pub kid: Option<String>,
}

struct LoadedUpstream {
    cert_der: Vec<u8>,
    key: KeyPair,
    /// Certificates of the upstream chain that are not roots (the signing cert first when it is not a root).
    chain_der: Vec<Vec<u8>>,
    roots_der: Vec<Vec<u8>>,
    not_after: i64,
}

/// The certificate authority. Not `Clone`: there is one per server, behind the caller's lock.
pub struct CaManager {
    config: CaConfig,
    keys_dir: PathBuf,
    upstream: Option<LoadedUpstream>,
    journal: Journal,
    x509_keys: [Option<KeyPair>; 2],
    jwt_keys: [Option<JwtSigningKey>; 2],
}

impl fmt::Debug for CaManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |v: Vec<SlotStatus>| {
            v.into_iter().map(|s| format!("{}:{}:{:?}", s.slot, s.id, s.state)).collect::<Vec<_>>()
        };
        f.debug_struct("CaManager")
            .field("trust_domain", &self.config.trust_domain)
            .field("upstream", &self.upstream.is_some())
            .field("x509_slots", &ids(self.x509_status()))
            .field("jwt_slots", &ids(self.jwt_status()))
            .field("keys", &"[redacted]")
            .finish()
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn slot_letter(i: usize) -> char {
    if i == 0 { 'A' } else { 'B' }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A random 32-character alphanumeric key ID, like SPIRE's.
fn new_kid() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

impl CaManager {
    /// Loads the CA from `journal` and the key files under `<data_dir>/keys/`, or creates a new one when
    /// `journal` is `None`. Returns the manager and the journal to store (always the current one).
    ///
    /// A journal that refers to missing or corrupt key files is an error: a new CA is minted over an
    /// existing trust domain only when there is no journal at all.
    pub fn load_or_init(
        data_dir: &Path,
        config: CaConfig,
        journal: Option<Vec<u8>>,
        now: i64,
    ) -> Result<(CaManager, Vec<u8>), CaError> {
        let keys_dir = data_dir.join("keys");
        keys::ensure_private_dir(&keys_dir)?;
        let upstream = config.upstream.as_ref().map(load_upstream).transpose()?;
        let mut mgr = CaManager {
            keys_dir,
            upstream,
            journal: Journal {
                version: JOURNAL_VERSION,
                trust_domain: config.trust_domain.name().to_owned(),
                x509: [None, None],
                jwt: [None, None],
                retired_x509: vec![],
                retired_jwt: vec![],
            },
            config,
            x509_keys: [None, None],
            jwt_keys: [None, None],
        };
        if let Some(bytes) = journal {
            mgr.restore(&bytes, now)?;
        }
        mgr.rotate_inner(now)?;
        let bytes = mgr.journal_bytes()?;
        Ok((mgr, bytes))
    }

    fn restore(&mut self, bytes: &[u8], now: i64) -> Result<(), CaError> {
        let journal: Journal = serde_json::from_slice(bytes).map_err(|e| CaError::CorruptJournal(e.to_string()))?;
        if journal.version != JOURNAL_VERSION {
            return Err(CaError::CorruptJournal(format!(
                "unsupported journal version {} (expected {JOURNAL_VERSION})",
                journal.version
            )));
        }
        if journal.trust_domain != self.config.trust_domain.name() {
            return Err(CaError::TrustDomainMismatch {
                journal: journal.trust_domain,
                config: self.config.trust_domain.name().to_owned(),
            });
        }
        self.journal = journal;
        for i in 0..2 {
            if let Some(rec) = self.journal.x509[i].clone() {
                match self.load_x509_key(&rec) {
                    Ok(k) => self.x509_keys[i] = Some(k),
                    // A key that expired anyway is no loss (for example deleted by a rotation whose journal
                    // update was not stored).
                    Err(CaError::MissingKeyFile { .. }) if rec.not_after <= now => self.journal.x509[i] = None,
                    Err(e) => return Err(e),
                }
            }
            if let Some(rec) = self.journal.jwt[i].clone() {
                match self.load_jwt_key(&rec) {
                    Ok(k) => self.jwt_keys[i] = Some(k),
                    Err(CaError::MissingKeyFile { .. }) if rec.not_after <= now => self.journal.jwt[i] = None,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn key_path(&self, file: &str) -> Result<PathBuf, CaError> {
        if !valid_file_name(file) {
            return Err(CaError::CorruptJournal(format!("key file name {file:?} is not a plain file name")));
        }
        Ok(self.keys_dir.join(file))
    }

    fn load_x509_key(&self, rec: &X509Record) -> Result<KeyPair, CaError> {
        let path = self.key_path(&rec.key_file)?;
        let key = keys::read_key_file(&path, rec.key_type)?;
        let facts = certs::cert_facts(&rec.cert_der)
            .map_err(|e| CaError::CorruptJournal(format!("X.509 CA {}: {e}", rec.id)))?;
        if facts.public_key != key.der_bytes() {
            return Err(CaError::CorruptKeyFile {
                path,
                reason: format!("key does not match the certificate of X.509 CA {}", rec.id),
            });
        }
        Ok(key)
    }

    fn load_jwt_key(&self, rec: &JwtRecord) -> Result<JwtSigningKey, CaError> {
        let path = self.key_path(&rec.key_file)?;
        let key = keys::read_key_file(&path, rec.key_type)?;
        let jwt_key = JwtSigningKey::from_pkcs8(&key.serialize_der())
            .map_err(|e| CaError::CorruptKeyFile { path: path.clone(), reason: e.to_string() })?;
        if jwt_key.public_key_spki_der() != rec.public_key_spki_der {
            return Err(CaError::CorruptKeyFile {
                path,
                reason: format!("key does not match the public key of JWT key {}", rec.kid),
            });
        }
        Ok(jwt_key)
    }

    fn journal_bytes(&self) -> Result<Vec<u8>, CaError> {
        serde_json::to_vec(&self.journal).map_err(|e| CaError::CorruptJournal(e.to_string()))
    }

    /// One rotation step at `now` for the X.509 CA and the JWT key (prepare, activate, drop expired).
    /// Returns the new journal when something changed; the caller stores it and republishes the bundle.
    pub fn rotate(&mut self, now: i64) -> Result<Option<Vec<u8>>, CaError> {
        if self.rotate_inner(now)? { self.journal_bytes().map(Some) } else { Ok(None) }
    }

    fn rotate_inner(&mut self, now: i64) -> Result<bool, CaError> {
        let mut changed = self.prune(now);
        let x509_times = self.journal.x509.each_ref().map(|r| {
            r.as_ref().map(|r| SlotTimes { state: r.state, not_before: r.not_before, not_after: r.not_after })
        });
        match rotation_step(&x509_times, now) {
            RotationAction::Nothing => {}
            RotationAction::Bootstrap { slot } => {
                self.mint_x509_ca(slot, SlotState::Active, now)?;
                self.demote_other_x509(slot);
                tracing::info!(slot = %slot_letter(slot), "X.509 CA minted and activated");
                changed = true;
            }
            RotationAction::Prepare { slot } => {
                self.mint_x509_ca(slot, SlotState::Prepared, now)?;
                tracing::info!(slot = %slot_letter(slot), "X.509 CA prepared");
                changed = true;
            }
            RotationAction::Activate { slot } => {
                if let Some(r) = self.journal.x509[slot].as_mut() {
                    r.state = SlotState::Active;
                }
                self.demote_other_x509(slot);
                tracing::info!(slot = %slot_letter(slot), "X.509 CA activated");
                changed = true;
            }
        }
        let jwt_times = self.journal.jwt.each_ref().map(|r| {
            r.as_ref().map(|r| SlotTimes { state: r.state, not_before: r.not_before, not_after: r.not_after })
        });
        match rotation_step(&jwt_times, now) {
            RotationAction::Nothing => {}
            RotationAction::Bootstrap { slot } => {
                self.mint_jwt_key(slot, SlotState::Active, now)?;
                self.demote_other_jwt(slot);
                tracing::info!(slot = %slot_letter(slot), "JWT key minted and activated");
                changed = true;
            }
            RotationAction::Prepare { slot } => {
                self.mint_jwt_key(slot, SlotState::Prepared, now)?;
                tracing::info!(slot = %slot_letter(slot), "JWT key prepared");
                changed = true;
            }
            RotationAction::Activate { slot } => {
                if let Some(r) = self.journal.jwt[slot].as_mut() {
                    r.state = SlotState::Active;
                }
                self.demote_other_jwt(slot);
                tracing::info!(slot = %slot_letter(slot), "JWT key activated");
                changed = true;
            }
        }
        Ok(changed)
    }

    fn demote_other_x509(&mut self, slot: usize) {
        if let Some(r) = self.journal.x509[1 - slot].as_mut()
            && r.state != SlotState::Old
        {
            r.state = SlotState::Old;
        }
    }

    fn demote_other_jwt(&mut self, slot: usize) {
        if let Some(r) = self.journal.jwt[1 - slot].as_mut()
            && r.state != SlotState::Old
        {
            r.state = SlotState::Old;
        }
    }

    /// Drops expired keys that no longer sign (Old or Prepared) and expired retired authorities.
    fn prune(&mut self, now: i64) -> bool {
        let mut changed = false;
        for i in 0..2 {
            if let Some(r) = &self.journal.x509[i]
                && r.state != SlotState::Active
                && r.not_after <= now
            {
                self.remove_key_file(&r.key_file);
                self.journal.x509[i] = None;
                self.x509_keys[i] = None;
                changed = true;
            }
            if let Some(r) = &self.journal.jwt[i]
                && r.state != SlotState::Active
                && r.not_after <= now
            {
                self.remove_key_file(&r.key_file);
                self.journal.jwt[i] = None;
                self.jwt_keys[i] = None;
                changed = true;
            }
        }
        let before = self.journal.retired_x509.len() + self.journal.retired_jwt.len();
        self.journal.retired_x509.retain(|r| r.not_after > now);
        self.journal.retired_jwt.retain(|r| r.not_after > now);
        changed || before != self.journal.retired_x509.len() + self.journal.retired_jwt.len()
    }

    /// Deletes an expired key's file and, for an X.509 CA, the certificate file written next to it.
    fn remove_key_file(&self, file: &str) {
        let mut files = vec![file.to_owned()];
        if let Some(stem) = file.strip_suffix(".key.pem") {
            files.push(format!("{stem}.crt.pem"));
        }
        for f in files {
            if let Ok(path) = self.key_path(&f)
                && let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an expired key's file");
            }
        }
    }

    /// Empties `slot` before a new key goes in: an unexpired occupant stays published (retired) until it
    /// expires and its key file is kept; an expired one's key file is deleted.
    fn vacate_x509(&mut self, slot: usize, now: i64) {
        if let Some(old) = self.journal.x509[slot].take() {
            if old.not_after > now {
                self.journal
                    .retired_x509
                    .push(RetiredX509 { authorities_der: old.authorities_der, not_after: old.not_after });
            } else {
                self.remove_key_file(&old.key_file);
            }
        }
        self.x509_keys[slot] = None;
    }

    fn vacate_jwt(&mut self, slot: usize, now: i64) {
        if let Some(old) = self.journal.jwt[slot].take() {
            if old.not_after > now {
                self.journal.retired_jwt.push(JwtPublic {
                    kid: old.kid,
                    public_key_spki_der: old.public_key_spki_der,
                    not_after: old.not_after,
                });
            } else {
                self.remove_key_file(&old.key_file);
            }
        }
        self.jwt_keys[slot] = None;
    }

    fn mint_x509_ca(&mut self, slot: usize, state: SlotState, now: i64) -> Result<(), CaError> {
        let key_type = self.config.key_type;
        let key = keys::generate(key_type)?;
        let id = new_id();
        let not_before = now - BACKDATE_SECS;
        let mut not_after = now.saturating_add(secs(self.config.ca_ttl));
        let td = &self.config.trust_domain;
        let (cert_der, chain_der, authorities_der) = match &self.upstream {
            None => {
                let cert = certs::self_signed_ca(td, &self.config.ca_subject, &key, not_before, not_after)?;
                (cert.clone(), vec![], vec![cert])
            }
            Some(up) => {
                if up.not_after <= now {
                    return Err(CaError::Upstream("the upstream CA certificate has expired".into()));
                }
                not_after = not_after.min(up.not_after);
                let cert = certs::intermediate_ca(
                    td,
                    &self.config.ca_subject,
                    &key,
                    &up.cert_der,
                    &up.key,
                    not_before,
                    not_after,
                )?;
                (cert, up.chain_der.clone(), up.roots_der.clone())
            }
        };
        let key_file = format!("x509-ca-{id}.key.pem");
        keys::write_private_file(&self.keys_dir.join(&key_file), keys::private_key_pem(&key).as_bytes())?;
        let cert_pem: String = std::iter::once(&cert_der)
            .chain(chain_der.iter())
            .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
            .collect();
        keys::write_private_file(&self.keys_dir.join(format!("x509-ca-{id}.crt.pem")), cert_pem.as_bytes())?;
        self.vacate_x509(slot, now);
        self.journal.x509[slot] = Some(X509Record {
            id,
            state,
            key_type,
            key_file,
            cert_der,
            chain_der,
            authorities_der,
            not_before,
            not_after,
        });
        self.x509_keys[slot] = Some(key);
        Ok(())
    }

    fn mint_jwt_key(&mut self, slot: usize, state: SlotState, now: i64) -> Result<(), CaError> {
        let key_type = self.config.jwt_key_type;
        let key = keys::generate(key_type)?;
        let jwt_key = JwtSigningKey::from_pkcs8(&key.serialize_der())?;
        let id = new_id();
        let key_file = format!("jwt-{id}.key.pem");
        keys::write_private_file(&self.keys_dir.join(&key_file), keys::private_key_pem(&key).as_bytes())?;
        self.vacate_jwt(slot, now);
        self.journal.jwt[slot] = Some(JwtRecord {
            id,
            state,
            key_type,
            key_file,
            kid: new_kid(),
            public_key_spki_der: jwt_key.public_key_spki_der(),
            not_before: now,
            not_after: now.saturating_add(secs(self.config.ca_ttl)),
        });
        self.jwt_keys[slot] = Some(jwt_key);
        Ok(())
    }

    /// The trust domain this CA serves.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// True when X.509 CAs are intermediates under an upstream authority.
    pub fn is_upstream(&self) -> bool {
        self.upstream.is_some()
    }

    fn active_x509(&self, now: i64) -> Option<(&X509Record, &KeyPair)> {
        (0..2)
            .filter_map(|i| Some((self.journal.x509[i].as_ref()?, self.x509_keys[i].as_ref()?)))
            .filter(|(r, _)| r.state == SlotState::Active && r.not_before <= now && now < r.not_after)
            .max_by_key(|(r, _)| r.not_before)
    }

    fn active_jwt(&self, now: i64) -> Option<(&JwtRecord, &JwtSigningKey)> {
        (0..2)
            .filter_map(|i| Some((self.journal.jwt[i].as_ref()?, self.jwt_keys[i].as_ref()?)))
            .filter(|(r, _)| r.state == SlotState::Active && r.not_before <= now && now < r.not_after)
            .max_by_key(|(r, _)| r.not_before)
    }

    /// DER of the X.509 CA certificate that signs at `now`.
    pub fn active_x509_ca_der(&self, now: i64) -> Option<&[u8]> {
        self.active_x509(now).map(|(r, _)| r.cert_der.as_slice())
    }

    /// `kid` of the JWT key that signs at `now`.
    pub fn active_jwt_kid(&self, now: i64) -> Option<&str> {
        self.active_jwt(now).map(|(r, _)| r.kid.as_str())
    }

    pub fn x509_status(&self) -> Vec<SlotStatus> {
        (0..2)
            .filter_map(|i| {
                let r = self.journal.x509[i].as_ref()?;
                Some(SlotStatus {
                    slot: slot_letter(i),
                    id: r.id.clone(),
                    state: r.state,
                    not_before: r.not_before,
                    not_after: r.not_after,
                    kid: None,
                })
            })
            .collect()
    }

    pub fn jwt_status(&self) -> Vec<SlotStatus> {
        (0..2)
            .filter_map(|i| {
                let r = self.journal.jwt[i].as_ref()?;
                Some(SlotStatus {
                    slot: slot_letter(i),
                    id: r.id.clone(),
                    state: r.state,
                    not_before: r.not_before,
                    not_after: r.not_after,
                    kid: Some(r.kid.clone()),
                })
            })
            .collect()
    }

    /// What the trust bundle must hold at `now`: X.509 authorities (DER; the CAs themselves when
    /// self-signed, the upstream roots otherwise) and JWT authorities, of every unexpired key whether
    /// prepared, active or old. The caller builds the `Bundle` and owns its sequence number.
    pub fn bundle_authorities(&self, now: i64) -> (Vec<Vec<u8>>, Vec<JwtAuthority>) {
        let mut x509: Vec<Vec<u8>> = vec![];
        let live_x509 = self.journal.x509.iter().flatten().filter(|r| r.not_after > now).map(|r| &r.authorities_der);
        let retired_x509 = self.journal.retired_x509.iter().filter(|r| r.not_after > now).map(|r| &r.authorities_der);
        for der in live_x509.chain(retired_x509).flatten() {
            if !x509.contains(der) {
                x509.push(der.clone());
            }
        }
        let mut jwt: Vec<JwtAuthority> = vec![];
        let live_jwt = self
            .journal
            .jwt
            .iter()
            .flatten()
            .filter(|r| r.not_after > now)
            .map(|r| (&r.kid, &r.public_key_spki_der, r.not_after));
        let retired_jwt = self
            .journal
            .retired_jwt
            .iter()
            .filter(|r| r.not_after > now)
            .map(|r| (&r.kid, &r.public_key_spki_der, r.not_after));
        for (kid, spki, not_after) in live_jwt.chain(retired_jwt) {
            if !jwt.iter().any(|a| &a.key_id == kid) {
                jwt.push(JwtAuthority {
                    key_id: kid.clone(),
                    public_key_spki_der: spki.clone(),
                    expires_at: not_after,
                });
            }
        }
        (x509, jwt)
    }

    fn check_subject(&self, spiffe_id: &SpiffeId) -> Result<(), CaError> {
        spiffe_id.check_issuable()?;
        if !spiffe_id.is_member_of(&self.config.trust_domain) {
            return Err(CaError::ForeignTrustDomain {
                id: spiffe_id.to_string(),
                trust_domain: self.config.trust_domain.to_string(),
            });
        }
        Ok(())
    }

    fn issue_leaf(
        &self,
        public_key: &impl PublicKeyData,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: i64,
    ) -> Result<IssuedX509, CaError> {
        self.check_subject(spiffe_id)?;
        let (rec, key) = self.active_x509(now).ok_or(CaError::NoActiveCa)?;
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(self.config.default_x509_svid_ttl);
        let not_after = now.saturating_add(secs(ttl)).min(rec.not_after);
        let leaf = certs::leaf(spiffe_id, dns_names, public_key, &rec.cert_der, key, now - BACKDATE_SECS, not_after)?;
        let mut chain_der = vec![leaf];
        // A self-signed CA is itself the bundle authority; an intermediate travels with the SVID.
        let ca_is_root = rec.authorities_der.len() == 1 && rec.authorities_der[0] == rec.cert_der;
        if !ca_is_root {
            chain_der.push(rec.cert_der.clone());
            chain_der.extend(rec.chain_der.iter().cloned());
        }
        Ok(IssuedX509 { chain_der, expires_at: not_after })
    }

    /// Signs an X509-SVID for `spiffe_id` with the public key of `csr_der` (its signature is verified; its
    /// subject and requested extensions are ignored). `ttl` `None` or zero means the default; NotAfter is
    /// capped at the CA's.
    pub fn sign_x509_svid_csr(
        &self,
        csr_der: &[u8],
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: i64,
    ) -> Result<IssuedX509, CaError> {
        let public_key = certs::csr_public_key(csr_der)?;
        self.issue_leaf(&public_key, spiffe_id, dns_names, ttl, now)
    }

    /// Mints an X509-SVID with a fresh EC P-256 key; returns the SVID and the key as PKCS#8 DER.
    pub fn mint_x509_svid(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: i64,
    ) -> Result<(IssuedX509, Vec<u8>), CaError> {
        let key = keys::generate(KeyType::EcP256)?;
        let issued = self.issue_leaf(&key, spiffe_id, dns_names, ttl, now)?;
        Ok((issued, key.serialize_der()))
    }

    /// Signs a JWT-SVID with the active JWT key: `sub` = `spiffe_id`, `aud`, `iat` = now,
    /// `exp` = now + ttl capped at the key's expiry. Returns the token and `exp`.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Option<Duration>,
        now: i64,
    ) -> Result<(String, i64), CaError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(CaError::EmptyAudience);
        }
        self.check_subject(spiffe_id)?;
        let (rec, key) = self.active_jwt(now).ok_or(CaError::NoActiveJwtKey)?;
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(self.config.default_jwt_svid_ttl);
        let exp = now.saturating_add(secs(ttl)).min(rec.not_after);
        let claims = JwtSvidClaims { sub: spiffe_id.clone(), aud: audience.to_vec(), exp, iat: now };
        let token = sigil_core::jwt::sign_jwt_svid(key, &rec.kid, &claims)?;
        Ok((token, exp))
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, CaError> {
    let bytes = std::fs::read(path).map_err(|source| CaError::Io { path: path.to_path_buf(), source })?;
    let blocks = pem::parse_many(&bytes).map_err(|e| CaError::Upstream(format!("{}: not PEM: {e}", path.display())))?;
    let certs: Vec<Vec<u8>> =
        blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE").map(|b| b.into_contents()).collect();
    if certs.is_empty() {
        return Err(CaError::Upstream(format!("{}: no CERTIFICATE block", path.display())));
    }
    Ok(certs)
}

fn load_upstream(cfg: &UpstreamAuthority) -> Result<LoadedUpstream, CaError> {
    let certs_in_file = read_pem_certs(&cfg.cert_file)?;
    let key_bytes =
        std::fs::read(&cfg.key_file).map_err(|source| CaError::Io { path: cfg.key_file.clone(), source })?;
    let (key, _) = keys::parse_private_key_pem(&key_bytes)
        .map_err(|e| CaError::Upstream(format!("{}: {e}", cfg.key_file.display())))?;
    let cert_der = certs_in_file[0].clone();
    let facts =
        certs::cert_facts(&cert_der).map_err(|e| CaError::Upstream(format!("{}: {e}", cfg.cert_file.display())))?;
    if facts.public_key != key.der_bytes() {
        return Err(CaError::Upstream(format!(
            "{} does not hold the private key of the first certificate in {}",
            cfg.key_file.display(),
            cfg.cert_file.display()
        )));
    }
    check_is_ca(&cert_der).map_err(|e| CaError::Upstream(format!("{}: {e}", cfg.cert_file.display())))?;
    // Roots: a self-signed last certificate of cert_file, plus every certificate of bundle_file.
    let mut roots_der = vec![];
    if let Some(last) = certs_in_file.last() {
        let last_facts =
            certs::cert_facts(last).map_err(|e| CaError::Upstream(format!("{}: {e}", cfg.cert_file.display())))?;
        if last_facts.self_signed {
            roots_der.push(last.clone());
        }
    }
    if let Some(path) = &cfg.bundle_file {
        for root in read_pem_certs(path)? {
            if !roots_der.contains(&root) {
                roots_der.push(root);
            }
        }
    }
    if roots_der.is_empty() {
        return Err(CaError::Upstream(format!(
            "the last certificate in {} is not self-signed; set bundle_file to the upstream root(s)",
            cfg.cert_file.display()
        )));
    }
    let chain_der = certs_in_file.into_iter().filter(|c| !roots_der.contains(c)).collect();
    Ok(LoadedUpstream { cert_der, key, chain_der, roots_der, not_after: facts.not_after })
}

fn check_is_ca(der: &[u8]) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        _ => Err("the upstream certificate is not a CA (basicConstraints cA=true required)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_parses_and_names_bad_values() {
        let table = [("ec-p256", KeyType::EcP256), ("ec-p384", KeyType::EcP384), ("rsa-2048", KeyType::Rsa2048)];
        for (s, want) in table {
            assert_eq!(s.parse::<KeyType>().unwrap(), want);
            assert_eq!(want.to_string(), s);
        }
        let err = "rsa-4096x".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("\"rsa-4096x\""), "{err}");
        assert_eq!(KeyType::default(), KeyType::EcP256);
    }

    #[test]
    fn kid_is_32_alphanumeric() {
        let kid = new_kid();
        assert_eq!(kid.len(), 32);
        assert!(kid.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(kid, new_kid());
    }

    #[test]
    fn debug_redacts_keys() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let (mgr, _) = CaManager::load_or_init(dir.path(), CaConfig::new(td), None, 1_700_000_000).unwrap();
        let dbg = format!("{mgr:?}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
        let pem_key = std::fs::read_dir(dir.path().join("keys")).unwrap().count();
        assert_eq!(pem_key, 3, "x509 key + cert + jwt key");
    }

    #[test]
    fn default_config_matches_spire() {
        let c = CaConfig::new(TrustDomain::new("example.org").unwrap());
        assert_eq!(c.ca_ttl, Duration::from_secs(86_400));
        assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(3_600));
        assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.jwt_key_type, KeyType::EcP256);
        assert_eq!(c.ca_subject, CaSubject { country: "US".into(), organization: "SPIFFE".into(), common_name: None });
    }
}
