//! Trust bundles (checklist B9, B10, C10, F).
//!
//! [`Bundle`] is the in-memory form: the X.509 authorities (DER CA certificates) and JWT authorities of one
//! trust domain, with its sequence number and refresh hint. Serialization to and from the SPIFFE bundle
//! format (a JWK Set with `spiffe_sequence` and `spiffe_refresh_hint`) and to PEM lives here too.

use crate::id::TrustDomain;

/// A JWT signing key as published in a bundle: `kid`, the public key as DER SubjectPublicKeyInfo, and when
/// it stops being valid (unix seconds, 0 = unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    pub key_id: String,
    pub public_key_spki_der: Vec<u8>,
    pub expires_at: i64,
}

/// The trust bundle of one trust domain. Bundles of different trust domains are never merged (F5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub trust_domain: TrustDomain,
    /// DER-encoded CA certificates.
    pub x509_authorities: Vec<Vec<u8>>,
    pub jwt_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence`: grows on every change (F2).
    pub sequence: u64,
    /// `spiffe_refresh_hint` in seconds (F3); `None` when absent.
    pub refresh_hint_secs: Option<u64>,
}

impl Bundle {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self { trust_domain, x509_authorities: vec![], jwt_authorities: vec![], sequence: 0, refresh_hint_secs: None }
    }
}
