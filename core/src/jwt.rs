//! JWT-SVID encoding and validation (checklist C).
//!
//! - [`sign_jwt_svid`] issues a compact JWS whose header is exactly `{"alg","kid","typ":"JWT"}` (C1, C2, C4).
//! - [`validate_jwt_svid`] validates a token per C1-C8 against the bundle of the subject's trust domain.
//! - [`PublicKeyMaterial`] converts between DER SubjectPublicKeyInfo and the raw key parts JWKs carry.
//!
//! Decisions:
//! - **Order** (C3): after the size limit and the split into three parts, the header is decoded and `alg` is
//!   checked before anything else. Then the other header rules (C2, C4, C5), the subject (C6), the key
//!   lookup and the signature; `aud`, `exp`, `nbf` and `iat` are judged only on an authentic token.
//! - **Leeway** ([`CLOCK_LEEWAY_SECS`] = 30 s) for `exp`, `nbf` and `iat` (a token is expired once
//!   `now > exp + 30`; `nbf`/`iat` may be up to 30 s in the future), matching the "small leeway" of C8.
//! - **Size**: tokens over [`MAX_TOKEN_LEN`] (64 KiB) are refused before any decoding.
//! - **Duplicate JSON members** in the header or claims are refused (they invite parser confusion).
//! - **ES512** is an allowed algorithm (C3) but *ring* has no P-521, so such tokens are refused as
//!   unsupported; Sigil never issues them.
//! - Audience: the validator's audience must be non-empty; `aud` may be a string or a non-empty array of
//!   strings. Tokens Sigil issues carry `aud` as a string when there is one value (as go-jose does), else an
//!   array.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Map, Value};

use crate::bundle::Bundle;
use crate::id::{SpiffeId, TrustDomain};

/// Longest token [`validate_jwt_svid`] looks at.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Clock skew tolerated for `exp`, `nbf` and `iat`, in seconds.
pub const CLOCK_LEEWAY_SECS: i64 = 30;

/// Why a JWT-SVID could not be issued or was refused. Messages name the checklist rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("JWT-SVID is {0} bytes; at most {MAX_TOKEN_LEN} are accepted")]
    TooLarge(usize),
    #[error("JWT-SVID is not a JWS Compact Serialization: expected 3 dot-separated parts, found {0} (C1)")]
    NotCompact(usize),
    #[error("JWT-SVID {0} is not valid unpadded base64url (C1)")]
    Base64(&'static str),
    #[error("JWT-SVID {part} is not a valid JSON object: {reason}")]
    Json { part: &'static str, reason: String },
    #[error("JWT-SVID header has no alg (C3)")]
    MissingAlg,
    #[error("JWT-SVID alg {0:?} is not allowed; only RS/ES/PS with 256/384/512 are (C3)")]
    DisallowedAlg(String),
    #[error("JWT-SVID header parameter {0:?} is not allowed; only alg, kid and typ are (C2)")]
    UnexpectedHeader(String),
    #[error("JWT-SVID header has no kid; a kid is required (C4)")]
    MissingKid,
    #[error("JWT-SVID header kid must be a non-empty string (C4)")]
    InvalidKid,
    #[error("JWT-SVID typ {0:?} is not allowed; only JWT or JOSE are (C5)")]
    InvalidTyp(String),
    #[error("JWT-SVID has no sub claim (C6)")]
    MissingSub,
    #[error("JWT-SVID sub is not a valid SPIFFE ID (C6): {0}")]
    InvalidSub(String),
    #[error("no bundle for trust domain {0}")]
    NoBundle(String),
    #[error("no JWT authority with kid {kid:?} in the bundle of trust domain {trust_domain}")]
    UnknownKid { kid: String, trust_domain: String },
    #[error("JWT authority {kid:?} has a {key} key, which cannot verify alg {alg}")]
    KeyAlgMismatch { kid: String, key: &'static str, alg: &'static str },
    #[error("unsupported key or algorithm: {0}")]
    Unsupported(String),
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("JWT-SVID signature verification failed")]
    BadSignature,
    #[error("the validator's audience must not be empty (C7)")]
    EmptyAudience,
    #[error("JWT-SVID has no aud claim or it is empty (C7)")]
    MissingAud,
    #[error("JWT-SVID aud must be a string or an array of strings (C7)")]
    InvalidAud,
    #[error("JWT-SVID aud does not contain the expected audience {0:?} (C7)")]
    AudienceMismatch(String),
    #[error("JWT-SVID has no exp claim (C8)")]
    MissingExp,
    #[error("JWT-SVID claim {0} must be a number (NumericDate)")]
    InvalidNumericDate(&'static str),
    #[error("JWT-SVID expired at {exp} (now {now}, leeway {CLOCK_LEEWAY_SECS}s) (C8)")]
    Expired { exp: i64, now: i64 },
    #[error("JWT-SVID is not valid before {nbf} (now {now}, leeway {CLOCK_LEEWAY_SECS}s)")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("JWT-SVID was issued in the future: iat {iat} (now {now}, leeway {CLOCK_LEEWAY_SECS}s)")]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("invalid JWT signing key: {0}")]
    SigningKey(String),
    #[error("signing failed")]
    SigningFailed,
    #[error("cannot issue JWT-SVID: {0}")]
    InvalidClaims(String),
}

/// The JWS algorithms JWT-SVIDs may use (C3). Everything else (`none`, `HS*`, ...) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    ES512,
    PS256,
    PS384,
    PS512,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::ES256,
        Self::ES384,
        Self::ES512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
        }
    }

    /// Parses an `alg` value; case-sensitive as in RFC 7515.
    pub fn parse(s: &str) -> Result<Self, JwtError> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| JwtError::DisallowedAlg(s.chars().take(64).collect()))
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = JwtError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Public keys: DER SubjectPublicKeyInfo <-> raw parts
// ---------------------------------------------------------------------------------------------------------

/// Elliptic curves JWT and bundle keys may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
    P521,
}

impl EcCurve {
    /// The JWK `crv` name.
    pub fn jwk_name(&self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    pub fn from_jwk_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            "P-521" => Some(Self::P521),
            _ => None,
        }
    }

    /// Bytes in one coordinate (JWK `x`/`y` are exactly this long, RFC 7518 6.2.1.2).
    pub fn coordinate_len(&self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    /// DER of the named-curve OID.
    fn oid_der(&self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Self::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
        }
    }
}

const OID_EC_PUBLIC_KEY_DER: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION_DER: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const DER_NULL: &[u8] = &[0x05, 0x00];

/// A public key as its raw parts: an EC curve and uncompressed point, or an RSA modulus and exponent
/// (big-endian, without leading zero bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyMaterial {
    Ec { curve: EcCurve, point: Vec<u8> },
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

fn strip_leading_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len() - 1);
        let significant = &bytes[skip..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// A non-negative DER INTEGER from big-endian magnitude bytes.
fn der_uint(magnitude: &[u8]) -> Vec<u8> {
    let mut m = strip_leading_zeros(magnitude);
    if m.first().is_none_or(|&b| b & 0x80 != 0) {
        m.insert(0, 0);
    }
    der_tlv(0x02, &m)
}

fn spki_der(algorithm_identifier_content: &[u8], key_bits: &[u8]) -> Vec<u8> {
    let alg = der_tlv(0x30, algorithm_identifier_content);
    let mut bits = Vec::with_capacity(key_bits.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key_bits);
    let bit_string = der_tlv(0x03, &bits);
    der_tlv(0x30, &[alg, bit_string].concat())
}

impl PublicKeyMaterial {
    /// Reads a DER SubjectPublicKeyInfo (EC P-256/P-384/P-521 with an uncompressed point, or RSA).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JwtError> {
        use x509_parser::oid_registry::{
            OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION,
        };
        use x509_parser::prelude::FromDer as _;
        use x509_parser::x509::SubjectPublicKeyInfo;

        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| JwtError::InvalidPublicKey(e.to_string()))?;
        if !rest.is_empty() {
            return Err(JwtError::InvalidPublicKey("trailing data after SubjectPublicKeyInfo".into()));
        }
        let bits: &[u8] = &spki.subject_public_key.data;
        if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| JwtError::InvalidPublicKey("EC key without a named curve".into()))?;
            let curve = if curve_oid == OID_EC_P256 {
                EcCurve::P256
            } else if curve_oid == OID_NIST_EC_P384 {
                EcCurve::P384
            } else if curve_oid == OID_NIST_EC_P521 {
                EcCurve::P521
            } else {
                return Err(JwtError::Unsupported(format!("EC curve {curve_oid}")));
            };
            if bits.len() != 1 + 2 * curve.coordinate_len() || bits.first() != Some(&0x04) {
                return Err(JwtError::InvalidPublicKey(format!(
                    "{} point is not an uncompressed point",
                    curve.jwk_name()
                )));
            }
            Ok(Self::Ec { curve, point: bits.to_vec() })
        } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                    let n = strip_leading_zeros(rsa.modulus);
                    let e = strip_leading_zeros(rsa.exponent);
                    if n.is_empty() || e.is_empty() {
                        return Err(JwtError::InvalidPublicKey("RSA modulus or exponent is zero".into()));
                    }
                    Ok(Self::Rsa { n, e })
                }
                _ => Err(JwtError::InvalidPublicKey("malformed RSAPublicKey".into())),
            }
        } else {
            Err(JwtError::Unsupported(format!("public key algorithm {}", spki.algorithm.algorithm)))
        }
    }

    /// The DER SubjectPublicKeyInfo of this key.
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            Self::Ec { curve, point } => spki_der(&[OID_EC_PUBLIC_KEY_DER, curve.oid_der()].concat(), point),
            Self::Rsa { n, e } => rsa_spki_from_rsa_public_key(&Self::rsa_public_key_der(n, e)),
        }
    }

    /// A short name of the key type for messages: `EC P-256`, `RSA`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ec { curve: EcCurve::P256, .. } => "EC P-256",
            Self::Ec { curve: EcCurve::P384, .. } => "EC P-384",
            Self::Ec { curve: EcCurve::P521, .. } => "EC P-521",
            Self::Rsa { .. } => "RSA",
        }
    }

    /// RSAPublicKey DER (PKCS#1), the form *ring* verifies with.
    fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
        der_tlv(0x30, &[der_uint(n), der_uint(e)].concat())
    }
}

fn rsa_spki_from_rsa_public_key(rsa_public_key_der: &[u8]) -> Vec<u8> {
    spki_der(&[OID_RSA_ENCRYPTION_DER, DER_NULL].concat(), rsa_public_key_der)
}

// ---------------------------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------------------------

/// A JWT-SVID signing key: EC P-256 (ES256), EC P-384 (ES384) or RSA (RS256).
pub enum JwtSigningKey {
    EcP256(EcdsaKeyPair),
    EcP384(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtSigningKey({})", self.algorithm())
    }
}

impl JwtSigningKey {
    /// Loads a PKCS#8 DER private key: EC P-256, EC P-384 or RSA (2048-8192 bits).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
            return Ok(Self::EcP256(k));
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng) {
            return Ok(Self::EcP384(k));
        }
        match RsaKeyPair::from_pkcs8(der) {
            Ok(k) => Ok(Self::Rsa(k)),
            Err(e) => Err(JwtError::SigningKey(format!("not a PKCS#8 EC P-256, EC P-384 or RSA private key ({e})"))),
        }
    }

    pub fn algorithm(&self) -> JwtAlgorithm {
        match self {
            Self::EcP256(_) => JwtAlgorithm::ES256,
            Self::EcP384(_) => JwtAlgorithm::ES384,
            Self::Rsa(_) => JwtAlgorithm::RS256,
        }
    }

    /// The public key as DER SubjectPublicKeyInfo (what a bundle's [`crate::bundle::JwtAuthority`] holds).
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        match self {
            Self::EcP256(k) => {
                PublicKeyMaterial::Ec { curve: EcCurve::P256, point: k.public_key().as_ref().to_vec() }.to_spki_der()
            }
            Self::EcP384(k) => {
                PublicKeyMaterial::Ec { curve: EcCurve::P384, point: k.public_key().as_ref().to_vec() }.to_spki_der()
            }
            Self::Rsa(k) => rsa_spki_from_rsa_public_key(k.public().as_ref()),
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError> {
        let rng = SystemRandom::new();
        match self {
            Self::EcP256(k) | Self::EcP384(k) => {
                k.sign(&rng, msg).map(|s| s.as_ref().to_vec()).map_err(|_| JwtError::SigningFailed)
            }
            Self::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig).map_err(|_| JwtError::SigningFailed)?;
                Ok(sig)
            }
        }
    }
}

/// The claims Sigil puts into a JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidClaims {
    pub sub: SpiffeId,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Issues a JWT-SVID: compact JWS (C1), header exactly `{"alg","kid","typ":"JWT"}` (C2, C4, C5), claims
/// `sub`, `aud`, `exp`, `iat`. ES* signatures are JOSE fixed-width `r||s`.
pub fn sign_jwt_svid(key: &JwtSigningKey, kid: &str, claims: &JwtSvidClaims) -> Result<String, JwtError> {
    if kid.is_empty() {
        return Err(JwtError::InvalidKid);
    }
    if claims.aud.is_empty() || claims.aud.iter().any(String::is_empty) {
        return Err(JwtError::InvalidClaims("aud needs one or more non-empty values (C7)".into()));
    }
    claims.sub.check_issuable().map_err(|e| JwtError::InvalidClaims(e.to_string()))?;
    if claims.exp <= claims.iat {
        return Err(JwtError::InvalidClaims(format!("exp {} is not after iat {} (C8)", claims.exp, claims.iat)));
    }
    let header = serde_json::json!({ "alg": key.algorithm().as_str(), "kid": kid, "typ": "JWT" });
    let aud = match claims.aud.as_slice() {
        [one] => Value::String(one.clone()),
        many => Value::from(many.to_vec()),
    };
    let body = serde_json::json!({
        "aud": aud,
        "exp": claims.exp,
        "iat": claims.iat,
        "sub": claims.sub.as_str(),
    });
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(body.to_string().as_bytes()));
    let sig = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64(&sig)))
}

// ---------------------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------------------

/// A JWT-SVID that passed [`validate_jwt_svid`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwtSvid {
    pub spiffe_id: SpiffeId,
    /// All claims of the token.
    pub claims: Map<String, Value>,
    /// `exp`, unix seconds.
    pub expires_at: i64,
}

/// A JSON object whose members are unique (serde_json alone keeps the last of duplicates).
struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate member {key:?}")));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode_object(part_b64: &str, part: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part_b64).map_err(|_| JwtError::Base64(part))?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .map(|o| o.0)
        .map_err(|e| JwtError::Json { part, reason: e.to_string() })
}

/// A NumericDate claim as whole seconds (fractions are truncated).
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(Some(f.trunc() as i64))
            } else {
                Err(JwtError::InvalidNumericDate(name))
            }
        }
        Some(_) => Err(JwtError::InvalidNumericDate(name)),
    }
}

fn verify_signature(
    alg: JwtAlgorithm,
    kid: &str,
    spki_der: &[u8],
    signing_input: &[u8],
    sig: &[u8],
) -> Result<(), JwtError> {
    use JwtAlgorithm as A;
    let key = PublicKeyMaterial::from_spki_der(spki_der)?;
    let mismatch = || JwtError::KeyAlgMismatch { kid: kid.to_owned(), key: key.kind(), alg: alg.as_str() };
    let verified = match (&key, alg) {
        (_, A::ES512) => return Err(JwtError::Unsupported("ES512 (P-521) signatures".into())),
        (PublicKeyMaterial::Ec { curve: EcCurve::P256, point }, A::ES256) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(signing_input, sig)
        }
        (PublicKeyMaterial::Ec { curve: EcCurve::P384, point }, A::ES384) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(signing_input, sig)
        }
        (PublicKeyMaterial::Rsa { n, e }, A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512) => {
            let params: &'static signature::RsaParameters = match alg {
                A::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                A::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                A::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                A::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                A::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            let der = PublicKeyMaterial::rsa_public_key_der(n, e);
            signature::UnparsedPublicKey::new(params, der).verify(signing_input, sig)
        }
        _ => return Err(mismatch()),
    };
    verified.map_err(|_| JwtError::BadSignature)
}

/// Validates a JWT-SVID for `audience` at `now_unix` (C1-C8). `bundle_for` returns the bundle of a trust
/// domain; the key is looked up by `kid` in the bundle of the subject's trust domain. Never panics on
/// malformed input.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundle_for: &dyn Fn(&TrustDomain) -> Option<Bundle>,
    now_unix: i64,
) -> Result<ValidatedJwtSvid, JwtError> {
    if audience.is_empty() {
        return Err(JwtError::EmptyAudience);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLarge(token.len()));
    }
    // C1: compact serialization, exactly three parts.
    let parts: Vec<&str> = token.splitn(4, '.').collect();
    let [header_b64, claims_b64, sig_b64] = parts.as_slice() else {
        return Err(JwtError::NotCompact(parts.len()));
    };

    // C3: alg before anything else.
    let header = decode_object(header_b64, "header")?;
    let alg = match header.get("alg") {
        None => return Err(JwtError::MissingAlg),
        Some(Value::String(s)) => JwtAlgorithm::parse(s)?,
        Some(other) => return Err(JwtError::DisallowedAlg(other.to_string().chars().take(64).collect())),
    };
    // C2: only alg, kid, typ.
    if let Some(extra) = header.keys().find(|k| !matches!(k.as_str(), "alg" | "kid" | "typ")) {
        return Err(JwtError::UnexpectedHeader(extra.chars().take(64).collect()));
    }
    // C4: kid required.
    let kid = match header.get("kid") {
        None => return Err(JwtError::MissingKid),
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        Some(_) => return Err(JwtError::InvalidKid),
    };
    // C5: typ JWT or JOSE when present.
    match header.get("typ") {
        None => {}
        Some(Value::String(s)) if s == "JWT" || s == "JOSE" => {}
        Some(Value::String(s)) => return Err(JwtError::InvalidTyp(s.chars().take(64).collect())),
        Some(other) => return Err(JwtError::InvalidTyp(other.to_string().chars().take(64).collect())),
    }

    // C6: sub is a SPIFFE ID; it picks the bundle.
    let claims = decode_object(claims_b64, "claims")?;
    let spiffe_id = match claims.get("sub") {
        None => return Err(JwtError::MissingSub),
        Some(Value::String(s)) => SpiffeId::new(s).map_err(|e| JwtError::InvalidSub(e.to_string()))?,
        Some(_) => return Err(JwtError::InvalidSub("sub is not a string".into())),
    };
    let td = spiffe_id.trust_domain();
    let bundle = bundle_for(&td).ok_or_else(|| JwtError::NoBundle(td.to_string()))?;
    if bundle.trust_domain != td {
        // F5: a bundle stands for its own trust domain only.
        return Err(JwtError::NoBundle(td.to_string()));
    }
    let authority = bundle
        .jwt_authorities
        .iter()
        .find(|a| a.key_id == kid)
        .ok_or_else(|| JwtError::UnknownKid { kid: kid.chars().take(128).collect(), trust_domain: td.to_string() })?;
    let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| JwtError::Base64("signature"))?;
    let signing_input_len = header_b64.len() + 1 + claims_b64.len();
    let signing_input = token.as_bytes().get(..signing_input_len).ok_or(JwtError::NotCompact(parts.len()))?;
    verify_signature(alg, kid, &authority.public_key_spki_der, signing_input, &sig)?;

    // C7: aud contains the validator's audience.
    let auds: Vec<&str> = match claims.get("aud") {
        None => return Err(JwtError::MissingAud),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(values)) => {
            values.iter().map(|v| v.as_str().ok_or(JwtError::InvalidAud)).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(JwtError::InvalidAud),
    };
    if auds.is_empty() {
        return Err(JwtError::MissingAud);
    }
    if !auds.contains(&audience) {
        return Err(JwtError::AudienceMismatch(audience.chars().take(128).collect()));
    }

    // C8: exp present and not past; nbf / iat not in the future.
    let exp = numeric_date(&claims, "exp")?.ok_or(JwtError::MissingExp)?;
    if now_unix > exp.saturating_add(CLOCK_LEEWAY_SECS) {
        return Err(JwtError::Expired { exp, now: now_unix });
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now_unix.saturating_add(CLOCK_LEEWAY_SECS) < nbf
    {
        return Err(JwtError::NotYetValid { nbf, now: now_unix });
    }
    if let Some(iat) = numeric_date(&claims, "iat")?
        && now_unix.saturating_add(CLOCK_LEEWAY_SECS) < iat
    {
        return Err(JwtError::IssuedInFuture { iat, now: now_unix });
    }

    Ok(ValidatedJwtSvid { spiffe_id, claims, expires_at: exp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_uint_adds_sign_byte_and_strips_zeros() {
        assert_eq!(der_uint(&[0x01, 0x00, 0x01]), vec![0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(der_uint(&[0x00, 0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_uint(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn der_len_long_forms() {
        let mut out = Vec::new();
        der_len(0x7f, &mut out);
        der_len(0x80, &mut out);
        der_len(0x1234, &mut out);
        assert_eq!(out, vec![0x7f, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn algorithm_names_round_trip_and_others_are_refused() {
        for alg in JwtAlgorithm::ALL {
            assert_eq!(JwtAlgorithm::parse(alg.as_str()), Ok(alg));
        }
        for bad in ["none", "HS256", "es256", "EdDSA", ""] {
            assert!(matches!(JwtAlgorithm::parse(bad), Err(JwtError::DisallowedAlg(_))), "{bad}");
        }
    }

    #[test]
    fn duplicate_json_members_are_refused() {
        let b = b64(br#"{"alg":"ES256","alg":"none"}"#);
        assert!(matches!(decode_object(&b, "header"), Err(JwtError::Json { .. })));
        let ok = b64(br#"{"alg":"ES256"}"#);
        assert_eq!(decode_object(&ok, "header").unwrap().len(), 1);
    }

    #[test]
    fn ec_spki_round_trips() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let key = JwtSigningKey::from_pkcs8(pkcs8.as_ref()).unwrap();
        assert_eq!(key.algorithm(), JwtAlgorithm::ES384);
        let spki = key.public_key_spki_der();
        let material = PublicKeyMaterial::from_spki_der(&spki).unwrap();
        assert!(matches!(material, PublicKeyMaterial::Ec { curve: EcCurve::P384, ref point } if point.len() == 97));
        assert_eq!(material.to_spki_der(), spki);
    }
}
