//! Trust bundles (checklist B9, B10, C10, F).
//!
//! [`Bundle`] is the in-memory form: the X.509 authorities (DER CA certificates) and JWT authorities of one
//! trust domain, with its sequence number and refresh hint. Serialization to and from the SPIFFE bundle
//! format (a JWK Set with `spiffe_sequence` and `spiffe_refresh_hint`) and to PEM lives here too.
//!
//! Decisions:
//! - Publishing (B9, C10): one JWK per X.509 authority with `use`=`x509-svid`, no `kid`, `x5c` holding exactly
//!   that DER certificate, plus the certificate's key as `kty`/`crv`/`x`/`y` or `kty`/`n`/`e` (go-jose checks
//!   that these match the `x5c` certificate). JWT authorities get `use`=`jwt-svid` and `kid`. An authority
//!   whose key cannot be expressed as a JWK (not EC P-256/P-384/P-521 or RSA) is left out by
//!   [`Bundle::to_jwks_json`], because one unreadable JWK makes JOSE libraries refuse the whole set;
//!   [`Bundle::try_to_jwks_json`] reports it instead.
//! - Consuming (F1, F4, B10): `keys` is required; entries with an unknown or missing `kty` (known: `EC`,
//!   `RSA`) or `use` are ignored; `x509-svid` entries without a non-empty `x5c` are ignored and only the first
//!   `x5c` value is used. A `jwt-svid` entry without `kid` makes the whole bundle invalid (C10; go-spiffe does
//!   the same), as does any entry of a known type and use whose content is malformed. `spiffe_sequence` absent
//!   reads as 0; `spiffe_refresh_hint` absent stays `None` (consumers default to about 5 minutes, F3).
//!   Exact duplicate authorities are kept once; two different keys with one `kid` are an error.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use crate::id::TrustDomain;
use crate::jwt::{EcCurve, PublicKeyMaterial};

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

/// JWK `use` of X.509 authorities (B9).
pub const USE_X509_SVID: &str = "x509-svid";
/// JWK `use` of JWT authorities (C10).
pub const USE_JWT_SVID: &str = "jwt-svid";

/// Why a bundle could not be read or written. Messages name the checklist rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not valid JSON: {0}")]
    Json(String),
    #[error("bundle is not a JSON object (F1)")]
    NotObject,
    #[error("bundle has no \"keys\" array (F1)")]
    MissingKeys,
    #[error("bundle {0} must be a non-negative integer (F2, F3)")]
    InvalidField(&'static str),
    #[error("bundle key {0} is not a JSON object (F1)")]
    KeyNotObject(usize),
    #[error("bundle key {index} (jwt-svid) has no kid; JWT authorities need one (C10)")]
    MissingKid { index: usize },
    #[error("bundle key {index} ({key_use}) is malformed: {reason}")]
    InvalidKey { index: usize, key_use: &'static str, reason: String },
    #[error("bundle has two different JWT authorities with kid {0:?}")]
    DuplicateKid(String),
    #[error("PEM bundle: {0}")]
    Pem(String),
    #[error("PEM bundle has no CERTIFICATE blocks")]
    EmptyPem,
    #[error("X.509 authority {index} cannot be published as a JWK: {reason}")]
    UnpublishableX509 { index: usize, reason: String },
    #[error("JWT authority {kid:?} cannot be published as a JWK: {reason}")]
    UnpublishableJwt { kid: String, reason: String },
}

/// The JWK members describing a public key (`kty` and `crv`/`x`/`y` or `n`/`e`).
fn jwk_key_members(key: &PublicKeyMaterial) -> Map<String, Value> {
    let mut m = Map::new();
    match key {
        PublicKeyMaterial::Ec { curve, point } => {
            // `point` is 0x04 || x || y with equal-length coordinates (checked when it was read).
            let coords = point.get(1..).unwrap_or_default();
            let (x, y) = coords.split_at(coords.len() / 2);
            m.insert("kty".into(), "EC".into());
            m.insert("crv".into(), curve.jwk_name().into());
            m.insert("x".into(), URL_SAFE_NO_PAD.encode(x).into());
            m.insert("y".into(), URL_SAFE_NO_PAD.encode(y).into());
        }
        PublicKeyMaterial::Rsa { n, e } => {
            m.insert("kty".into(), "RSA".into());
            m.insert("n".into(), URL_SAFE_NO_PAD.encode(n).into());
            m.insert("e".into(), URL_SAFE_NO_PAD.encode(e).into());
        }
    }
    m
}

fn b64url_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("missing or non-string {name:?}"))?;
    URL_SAFE_NO_PAD.decode(s).map_err(|_| format!("{name:?} is not unpadded base64url"))
}

/// The public key of a JWT-authority JWK (`kty` is already known to be `EC` or `RSA`).
fn jwk_to_key(kty: &str, jwk: &Map<String, Value>) -> Result<PublicKeyMaterial, String> {
    if kty == "EC" {
        let crv = jwk.get("crv").and_then(Value::as_str).ok_or("missing or non-string \"crv\"")?;
        let curve = EcCurve::from_jwk_name(crv).ok_or_else(|| format!("unsupported curve {crv:?}"))?;
        let x = b64url_member(jwk, "x")?;
        let y = b64url_member(jwk, "y")?;
        let len = curve.coordinate_len();
        if x.len() != len || y.len() != len {
            return Err(format!("{crv} coordinates must be {len} bytes each"));
        }
        let mut point = Vec::with_capacity(1 + 2 * len);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        Ok(PublicKeyMaterial::Ec { curve, point })
    } else {
        let n = b64url_member(jwk, "n")?;
        let e = b64url_member(jwk, "e")?;
        let strip = |v: &[u8]| v.iter().position(|&b| b != 0).map(|i| v[i..].to_vec()).unwrap_or_default();
        let (n, e) = (strip(&n), strip(&e));
        if n.is_empty() || e.is_empty() {
            return Err("RSA \"n\" and \"e\" must be non-zero".into());
        }
        Ok(PublicKeyMaterial::Rsa { n, e })
    }
}

fn x509_authority_jwk(der: &[u8]) -> Result<Value, String> {
    let spki = crate::x509::spki_der_of_cert(der).map_err(|e| e.to_string())?;
    let key = PublicKeyMaterial::from_spki_der(&spki).map_err(|e| e.to_string())?;
    let mut jwk = jwk_key_members(&key);
    jwk.insert("use".into(), USE_X509_SVID.into());
    jwk.insert("x5c".into(), Value::Array(vec![STANDARD.encode(der).into()]));
    Ok(Value::Object(jwk))
}

fn jwt_authority_jwk(a: &JwtAuthority) -> Result<Value, String> {
    if a.key_id.is_empty() {
        return Err("empty kid (C10)".into());
    }
    let key = PublicKeyMaterial::from_spki_der(&a.public_key_spki_der).map_err(|e| e.to_string())?;
    let mut jwk = jwk_key_members(&key);
    jwk.insert("use".into(), USE_JWT_SVID.into());
    jwk.insert("kid".into(), a.key_id.clone().into());
    Ok(Value::Object(jwk))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Bundle {
    fn jwk_set(&self, x509: bool, strict: bool) -> Result<String, BundleError> {
        let mut keys = Vec::new();
        if x509 {
            for (index, der) in self.x509_authorities.iter().enumerate() {
                match x509_authority_jwk(der) {
                    Ok(jwk) => keys.push(jwk),
                    Err(reason) if strict => return Err(BundleError::UnpublishableX509 { index, reason }),
                    Err(_) => {}
                }
            }
        }
        for a in &self.jwt_authorities {
            match jwt_authority_jwk(a) {
                Ok(jwk) => keys.push(jwk),
                Err(reason) if strict => {
                    return Err(BundleError::UnpublishableJwt { kid: a.key_id.clone(), reason });
                }
                Err(_) => {}
            }
        }
        let mut set = Map::new();
        set.insert("keys".into(), Value::Array(keys));
        if x509 {
            set.insert("spiffe_sequence".into(), self.sequence.into());
            if let Some(hint) = self.refresh_hint_secs {
                set.insert("spiffe_refresh_hint".into(), hint.into());
            }
        }
        Ok(Value::Object(set).to_string())
    }

    /// The SPIFFE bundle document: `{"keys":[...],"spiffe_sequence":N[,"spiffe_refresh_hint":S]}` (F1-F3,
    /// B9, C10). Authorities whose key has no JWK form are left out (see the module notes).
    pub fn to_jwks_json(&self) -> String {
        self.jwk_set(true, false).unwrap_or_else(|_| String::from("{\"keys\":[]}"))
    }

    /// Like [`Bundle::to_jwks_json`], but an authority that cannot be published is an error.
    pub fn try_to_jwks_json(&self) -> Result<String, BundleError> {
        self.jwk_set(true, true)
    }

    /// A JWK Set with only the JWT authorities (`{"keys":[...]}`), as the Workload API's `JWTBundlesResponse`
    /// carries it.
    pub fn jwt_jwks_json(&self) -> String {
        self.jwk_set(false, false).unwrap_or_else(|_| String::from("{\"keys\":[]}"))
    }

    /// The X.509 authorities as concatenated DER certificates (the Workload API's bundle bytes).
    pub fn x509_authorities_der_concat(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// Reads a SPIFFE bundle document for `trust_domain` (F1, F4, B10, C10; see the module notes).
    pub fn from_jwks_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Bundle, BundleError> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let Value::Object(doc) = doc else {
            return Err(BundleError::NotObject);
        };
        let Some(Value::Array(keys)) = doc.get("keys") else {
            return Err(BundleError::MissingKeys);
        };
        let sequence = match doc.get("spiffe_sequence") {
            None => 0,
            Some(v) => v.as_u64().ok_or(BundleError::InvalidField("spiffe_sequence"))?,
        };
        let refresh_hint_secs = match doc.get("spiffe_refresh_hint") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or(BundleError::InvalidField("spiffe_refresh_hint"))?),
        };

        let mut bundle = Bundle::new(trust_domain);
        bundle.sequence = sequence;
        bundle.refresh_hint_secs = refresh_hint_secs;

        for (index, key) in keys.iter().enumerate() {
            let Value::Object(jwk) = key else {
                return Err(BundleError::KeyNotObject(index));
            };
            // F4: unknown (or missing) kty or use => ignore the entry.
            let Some(kty @ ("EC" | "RSA")) = jwk.get("kty").and_then(Value::as_str) else {
                continue;
            };
            match jwk.get("use").and_then(Value::as_str) {
                Some(USE_X509_SVID) => {
                    let invalid = |reason: String| BundleError::InvalidKey { index, key_use: USE_X509_SVID, reason };
                    // B10: without a non-empty x5c the entry is ignored; only the first value counts.
                    let first = match jwk.get("x5c") {
                        Some(Value::Array(certs)) => match certs.first() {
                            None => continue,
                            Some(first) => first,
                        },
                        None => continue,
                        Some(_) => return Err(invalid("\"x5c\" is not an array".into())),
                    };
                    let b64 = first.as_str().ok_or_else(|| invalid("\"x5c\" value is not a string".into()))?;
                    let der = STANDARD.decode(b64).map_err(|_| invalid("\"x5c\" value is not base64".into()))?;
                    crate::x509::spki_der_of_cert(&der).map_err(|e| invalid(e.to_string()))?;
                    if !bundle.x509_authorities.contains(&der) {
                        bundle.x509_authorities.push(der);
                    }
                }
                Some(USE_JWT_SVID) => {
                    let key_id = match jwk.get("kid") {
                        Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
                        _ => return Err(BundleError::MissingKid { index }),
                    };
                    let key = jwk_to_key(kty, jwk).map_err(|reason| BundleError::InvalidKey {
                        index,
                        key_use: USE_JWT_SVID,
                        reason,
                    })?;
                    let authority = JwtAuthority { key_id, public_key_spki_der: key.to_spki_der(), expires_at: 0 };
                    match bundle.jwt_authorities.iter().find(|a| a.key_id == authority.key_id) {
                        Some(existing) if existing.public_key_spki_der == authority.public_key_spki_der => {}
                        Some(_) => return Err(BundleError::DuplicateKid(authority.key_id)),
                        None => bundle.jwt_authorities.push(authority),
                    }
                }
                _ => continue,
            }
        }
        Ok(bundle)
    }

    /// The X.509 authorities as PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        self.x509_authorities.iter().map(|der| pem_block("CERTIFICATE", der)).collect()
    }

    /// Reads X.509 authorities from PEM. Every block must be a parseable `CERTIFICATE`; text between blocks
    /// is ignored; at least one certificate is required. The bundle has no JWT authorities, sequence 0 and
    /// no refresh hint.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Bundle, BundleError> {
        let mut bundle = Bundle::new(trust_domain);
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| BundleError::Pem(e.to_string()))?;
            if block.label != "CERTIFICATE" {
                return Err(BundleError::Pem(format!("unexpected block {:?}; only CERTIFICATE", block.label)));
            }
            crate::x509::spki_der_of_cert(&block.contents).map_err(|e| BundleError::Pem(e.to_string()))?;
            if !bundle.x509_authorities.contains(&block.contents) {
                bundle.x509_authorities.push(block.contents);
            }
        }
        if bundle.x509_authorities.is_empty() {
            return Err(BundleError::EmptyPem);
        }
        Ok(bundle)
    }
}
