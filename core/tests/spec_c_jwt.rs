#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Checklist section C: JWT-SVIDs (`sigil_core::jwt`). C9 (HTTP/gRPC transport) is not a core rule; C10
//! (bundle JWKs) is tested in spec_f_bundle.rs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use serde_json::{Value, json};
use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_core::jwt::{
    CLOCK_LEEWAY_SECS, JwtAlgorithm, JwtError, JwtSigningKey, JwtSvidClaims, MAX_TOKEN_LEN, PublicKeyMaterial,
    sign_jwt_svid, validate_jwt_svid,
};
use sigil_core::{SpiffeId, TrustDomain};

const NOW: i64 = 1_800_000_000;
const SUB: &str = "spiffe://example.org/ns/default/sa/web";
const KID: &str = "key-1";
const AUD: &str = "spiffe://example.org/reports";
const RSA_PKCS8: &[u8] = include_bytes!("fixtures/rsa2048.pk8.der");

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

fn ec256_pkcs8() -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn ec384_pkcs8() -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A signing key plus its PKCS#8 (so tests can also sign by hand with *ring*).
struct Key {
    pkcs8: Vec<u8>,
    key: JwtSigningKey,
}

fn key_from(pkcs8: Vec<u8>) -> Key {
    let key = JwtSigningKey::from_pkcs8(&pkcs8).unwrap();
    Key { pkcs8, key }
}

fn bundle_with(trust_domain: &str, keys: &[(&str, &Key)]) -> Bundle {
    let mut b = Bundle::new(td(trust_domain));
    b.jwt_authorities = keys
        .iter()
        .map(|(kid, k)| JwtAuthority {
            key_id: (*kid).to_owned(),
            public_key_spki_der: k.key.public_key_spki_der(),
            expires_at: 0,
        })
        .collect();
    b
}

fn lookup(bundles: Vec<Bundle>) -> impl Fn(&TrustDomain) -> Option<Bundle> {
    move |t: &TrustDomain| bundles.iter().find(|b| &b.trust_domain == t).cloned()
}

fn claims() -> JwtSvidClaims {
    JwtSvidClaims { sub: SpiffeId::new(SUB).unwrap(), aud: vec![AUD.into()], exp: NOW + 300, iat: NOW }
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn default_header() -> Value {
    json!({"alg": "ES256", "kid": KID, "typ": "JWT"})
}

fn default_claims() -> Value {
    json!({"sub": SUB, "aud": [AUD], "exp": NOW + 300, "iat": NOW})
}

/// Signs `header.claims` by hand with the algorithm the header names (via *ring*), so tests can build
/// tokens Sigil would never issue.
fn hand_signed(header: &Value, claims: &Value, alg: &str, pkcs8: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let rng = SystemRandom::new();
    let sig: Vec<u8> = match alg {
        "ES256" => EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .unwrap()
            .sign(&rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        "ES384" => EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8, &rng)
            .unwrap()
            .sign(&rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        rsa => {
            let enc: &'static dyn signature::RsaEncoding = match rsa {
                "RS256" => &signature::RSA_PKCS1_SHA256,
                "RS384" => &signature::RSA_PKCS1_SHA384,
                "RS512" => &signature::RSA_PKCS1_SHA512,
                "PS256" => &signature::RSA_PSS_SHA256,
                "PS384" => &signature::RSA_PSS_SHA384,
                "PS512" => &signature::RSA_PSS_SHA512,
                other => panic!("no hand signer for {other}"),
            };
            let kp = RsaKeyPair::from_pkcs8(pkcs8).unwrap();
            let mut sig = vec![0; kp.public().modulus_len()];
            kp.sign(enc, &rng, input.as_bytes(), &mut sig).unwrap();
            sig
        }
    };
    format!("{input}.{}", b64(&sig))
}

fn unsigned(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(sig))
}

/// An ES256 key in a bundle for example.org, and a validator over it.
struct Fixture {
    key: Key,
    bundles: Vec<Bundle>,
}

impl Fixture {
    fn new() -> Self {
        let key = key_from(ec256_pkcs8());
        let bundles = vec![bundle_with("example.org", &[(KID, &key)])];
        Fixture { key, bundles }
    }

    fn validate(&self, token: &str) -> Result<sigil_core::jwt::ValidatedJwtSvid, JwtError> {
        self.validate_at(token, AUD, NOW)
    }

    fn validate_at(&self, token: &str, aud: &str, now: i64) -> Result<sigil_core::jwt::ValidatedJwtSvid, JwtError> {
        validate_jwt_svid(token, aud, &lookup(self.bundles.clone()), now)
    }

    fn hand(&self, header: &Value, claims: &Value) -> String {
        hand_signed(header, claims, "ES256", &self.key.pkcs8)
    }
}

fn decode_part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

// ----- C1 -----

#[test]
fn c1_issues_compact_jws_that_validates() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    for p in &parts {
        assert!(!p.is_empty() && !p.contains('=') && !p.contains('+') && !p.contains('/'), "{p}");
    }
    let v = f.validate(&token).unwrap();
    assert_eq!(v.spiffe_id.as_str(), SUB);
    assert_eq!(v.expires_at, NOW + 300);
    assert_eq!(v.claims.get("aud"), Some(&json!(AUD)));
    assert_eq!(v.claims.get("iat"), Some(&json!(NOW)));
    assert_eq!(v.claims.len(), 4);
}

#[test]
fn c1_rejects_non_compact_serializations() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(f.validate(&format!("{}.{}", parts[0], parts[1])), Err(JwtError::NotCompact(2)));
    assert_eq!(f.validate(&format!("{token}.{}", parts[2])), Err(JwtError::NotCompact(4)));
    assert_eq!(f.validate(""), Err(JwtError::NotCompact(1)));
    // JWS JSON serialization.
    let json_form = json!({"payload": parts[1], "protected": parts[0], "signature": parts[2]}).to_string();
    assert_eq!(f.validate(&json_form), Err(JwtError::NotCompact(1)));
}

#[test]
fn c1_rejects_bad_base64() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let cases = [
        (format!("{}=.{}.{}", parts[0], parts[1], parts[2]), "header"),
        (format!("{}.{}*.{}", parts[0], parts[1], parts[2]), "claims"),
        (format!("{}.{}.{}==", parts[0], parts[1], parts[2]), "signature"),
        (format!("{}.{}.{}", parts[0], parts[1], parts[2].replace('-', "+").replace('_', "/") + "+/"), "signature"),
    ];
    for (t, part) in cases {
        assert_eq!(f.validate(&t), Err(JwtError::Base64(part)), "{t}");
    }
    let not_json = format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]);
    assert!(matches!(f.validate(&not_json), Err(JwtError::Json { part: "header", .. })));
    let array = format!("{}.{}.{}", b64(b"[1]"), parts[1], parts[2]);
    assert!(matches!(f.validate(&array), Err(JwtError::Json { part: "header", .. })));
}

// ----- C2 -----

#[test]
fn c2_issued_header_is_exactly_alg_kid_typ() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    assert_eq!(decode_part(&token, 0), json!({"alg": "ES256", "kid": KID, "typ": "JWT"}));
    let body = decode_part(&token, 1);
    assert_eq!(body, json!({"sub": SUB, "aud": AUD, "exp": NOW + 300, "iat": NOW}));
}

#[test]
fn c2_rejects_extra_header_field() {
    let f = Fixture::new();
    for extra in ["jku", "jwk", "x5u", "x5c", "crit", "cty", "b64", "zip", "enc"] {
        let mut h = default_header();
        h[extra] = json!("x");
        let r = f.validate(&f.hand(&h, &default_claims()));
        assert_eq!(r, Err(JwtError::UnexpectedHeader(extra.into())), "{extra}");
    }
    let e = JwtError::UnexpectedHeader("jku".into()).to_string();
    assert!(e.contains("(C2)"), "{e}");
}

#[test]
fn c2_rejects_duplicate_header_members() {
    let f = Fixture::new();
    let header = format!(r#"{{"alg":"ES256","kid":"{KID}","typ":"JWT","alg":"ES256"}}"#);
    let input = format!("{}.{}", b64(header.as_bytes()), b64(default_claims().to_string().as_bytes()));
    let token = format!("{input}.{}", b64(&[0; 64]));
    assert!(matches!(f.validate(&token), Err(JwtError::Json { part: "header", .. })));
}

// ----- C3 -----

#[test]
fn c3_rejects_alg_none() {
    let f = Fixture::new();
    let h = json!({"alg": "none", "kid": KID, "typ": "JWT"});
    assert_eq!(f.validate(&unsigned(&h, &default_claims(), b"")), Err(JwtError::DisallowedAlg("none".into())));
    assert_eq!(f.validate(&unsigned(&h, &default_claims(), b"sig")), Err(JwtError::DisallowedAlg("none".into())));
    let h = json!({"alg": "None", "kid": KID});
    assert_eq!(f.validate(&unsigned(&h, &default_claims(), b"")), Err(JwtError::DisallowedAlg("None".into())));
}

#[test]
fn c3_rejects_hs256() {
    // The classic key-confusion attack: HMAC keyed with the public key bytes.
    let f = Fixture::new();
    let h = json!({"alg": "HS256", "kid": KID, "typ": "JWT"});
    let input = format!("{}.{}", b64(h.to_string().as_bytes()), b64(default_claims().to_string().as_bytes()));
    let hkey = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &f.key.key.public_key_spki_der());
    let tag = ring::hmac::sign(&hkey, input.as_bytes());
    let token = format!("{input}.{}", b64(tag.as_ref()));
    assert_eq!(f.validate(&token), Err(JwtError::DisallowedAlg("HS256".into())));
    for alg in ["HS384", "HS512"] {
        let h = json!({"alg": alg, "kid": KID});
        assert_eq!(f.validate(&unsigned(&h, &default_claims(), b"x")), Err(JwtError::DisallowedAlg(alg.into())));
    }
}

#[test]
fn c3_rejects_unknown_or_missing_alg() {
    let f = Fixture::new();
    for alg in ["EdDSA", "es256", "ES256K", "RSA-OAEP", "", "ES256 "] {
        let h = json!({"alg": alg, "kid": KID});
        assert_eq!(f.validate(&unsigned(&h, &default_claims(), b"x")), Err(JwtError::DisallowedAlg(alg.into())));
    }
    let h = json!({"kid": KID});
    assert_eq!(f.validate(&unsigned(&h, &default_claims(), b"x")), Err(JwtError::MissingAlg));
    let h = json!({"alg": 256, "kid": KID});
    assert!(matches!(f.validate(&unsigned(&h, &default_claims(), b"x")), Err(JwtError::DisallowedAlg(_))));
}

#[test]
fn c3_checks_alg_before_anything_else() {
    let f = Fixture::new();
    // Everything else is wrong too (extra header, no kid, bad typ, claims not JSON, no signature):
    // the alg error comes first.
    let h = json!({"alg": "none", "jku": "https://evil", "typ": "evil"});
    let token = format!("{}.{}.", b64(h.to_string().as_bytes()), b64(b"garbage"));
    assert_eq!(f.validate(&token), Err(JwtError::DisallowedAlg("none".into())));
}

#[test]
fn c3_accepts_every_allowed_algorithm_ring_supports() {
    let ec256 = key_from(ec256_pkcs8());
    let ec384 = key_from(ec384_pkcs8());
    let rsa = key_from(RSA_PKCS8.to_vec());
    assert_eq!(ec256.key.algorithm(), JwtAlgorithm::ES256);
    assert_eq!(ec384.key.algorithm(), JwtAlgorithm::ES384);
    assert_eq!(rsa.key.algorithm(), JwtAlgorithm::RS256);
    let bundles = vec![bundle_with("example.org", &[("ec256", &ec256), ("ec384", &ec384), ("rsa", &rsa)])];
    let cases = [
        ("ES256", "ec256", &ec256),
        ("ES384", "ec384", &ec384),
        ("RS256", "rsa", &rsa),
        ("RS384", "rsa", &rsa),
        ("RS512", "rsa", &rsa),
        ("PS256", "rsa", &rsa),
        ("PS384", "rsa", &rsa),
        ("PS512", "rsa", &rsa),
    ];
    for (alg, kid, key) in cases {
        let h = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let token = hand_signed(&h, &default_claims(), alg, &key.pkcs8);
        let v = validate_jwt_svid(&token, AUD, &lookup(bundles.clone()), NOW);
        assert_eq!(v.map(|v| v.spiffe_id.to_string()), Ok(SUB.to_string()), "{alg}");
    }
}

#[test]
fn c3_es512_is_allowed_but_unsupported() {
    let f = Fixture::new();
    let h = json!({"alg": "ES512", "kid": KID, "typ": "JWT"});
    let r = f.validate(&unsigned(&h, &default_claims(), &[1; 132]));
    assert!(matches!(r, Err(JwtError::Unsupported(_))), "{r:?}");
}

#[test]
fn c3_rejects_alg_that_does_not_fit_the_key() {
    let f = Fixture::new();
    // ES384 header over an ES256 key; RS256 header over an EC key.
    for alg in ["ES384", "RS256", "PS256"] {
        let h = json!({"alg": alg, "kid": KID, "typ": "JWT"});
        let r = f.validate(&f.hand(&h, &default_claims()));
        assert!(matches!(r, Err(JwtError::KeyAlgMismatch { .. })), "{alg}: {r:?}");
    }
    // ES256 header over an RSA key.
    let rsa = key_from(RSA_PKCS8.to_vec());
    let bundles = vec![bundle_with("example.org", &[(KID, &rsa)])];
    let token = hand_signed(&default_header(), &default_claims(), "ES256", &f.key.pkcs8);
    let r = validate_jwt_svid(&token, AUD, &lookup(bundles), NOW);
    assert!(matches!(r, Err(JwtError::KeyAlgMismatch { key: "RSA", alg: "ES256", .. })), "{r:?}");
}

// ----- C4 -----

#[test]
fn c4_issued_tokens_carry_kid() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, "my-kid", &claims()).unwrap();
    assert_eq!(decode_part(&token, 0)["kid"], json!("my-kid"));
    assert_eq!(sign_jwt_svid(&f.key.key, "", &claims()), Err(JwtError::InvalidKid));
}

#[test]
fn c4_rejects_missing_kid() {
    let f = Fixture::new();
    let h = json!({"alg": "ES256", "typ": "JWT"});
    assert_eq!(f.validate(&f.hand(&h, &default_claims())), Err(JwtError::MissingKid));
    for bad in [json!(""), json!(1), json!(null), json!(["key-1"])] {
        let h = json!({"alg": "ES256", "kid": bad, "typ": "JWT"});
        assert_eq!(f.validate(&f.hand(&h, &default_claims())), Err(JwtError::InvalidKid), "{bad}");
    }
}

// ----- C5 -----

#[test]
fn c5_accepts_typ_jwt_jose_or_absent() {
    let f = Fixture::new();
    for h in [
        json!({"alg": "ES256", "kid": KID, "typ": "JWT"}),
        json!({"alg": "ES256", "kid": KID, "typ": "JOSE"}),
        json!({"alg": "ES256", "kid": KID}),
    ] {
        assert!(f.validate(&f.hand(&h, &default_claims())).is_ok(), "{h}");
    }
}

#[test]
fn c5_rejects_other_typ() {
    let f = Fixture::new();
    for typ in ["jwt", "at+jwt", "JWS", ""] {
        let h = json!({"alg": "ES256", "kid": KID, "typ": typ});
        assert_eq!(f.validate(&f.hand(&h, &default_claims())), Err(JwtError::InvalidTyp(typ.into())), "{typ}");
    }
    let h = json!({"alg": "ES256", "kid": KID, "typ": 1});
    assert!(matches!(f.validate(&f.hand(&h, &default_claims())), Err(JwtError::InvalidTyp(_))));
}

// ----- C6 -----

#[test]
fn c6_rejects_sub_not_a_spiffe_id() {
    let f = Fixture::new();
    for sub in ["web", "https://example.org/web", "spiffe://example.org/a?b", "spiffe://Example.org/a", ""] {
        let mut c = default_claims();
        c["sub"] = json!(sub);
        let r = f.validate(&f.hand(&default_header(), &c));
        assert!(matches!(r, Err(JwtError::InvalidSub(_))), "{sub}: {r:?}");
    }
    let mut c = default_claims();
    c["sub"] = json!(7);
    assert!(matches!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::InvalidSub(_))));
    let mut c = default_claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::MissingSub));
}

#[test]
fn c6_key_comes_from_the_bundle_of_the_subs_trust_domain() {
    let f = Fixture::new();
    let other = key_from(ec256_pkcs8());
    let bundles = vec![bundle_with("example.org", &[(KID, &f.key)]), bundle_with("other.org", &[(KID, &other)])];
    // A token for other.org signed with example.org's key: looked up in other.org's bundle, so it fails.
    let mut c = default_claims();
    c["sub"] = json!("spiffe://other.org/web");
    let token = f.hand(&default_header(), &c);
    assert_eq!(validate_jwt_svid(&token, AUD, &lookup(bundles.clone()), NOW), Err(JwtError::BadSignature));
    // Signed with other.org's key: accepted.
    let token = hand_signed(&default_header(), &c, "ES256", &other.pkcs8);
    let v = validate_jwt_svid(&token, AUD, &lookup(bundles), NOW).unwrap();
    assert_eq!(v.spiffe_id.as_str(), "spiffe://other.org/web");
    // No bundle for the trust domain.
    let mut c = default_claims();
    c["sub"] = json!("spiffe://unknown.org/web");
    assert_eq!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::NoBundle("unknown.org".into())));
}

#[test]
fn c6_rejects_a_bundle_of_another_trust_domain() {
    // A lookup that (wrongly) answers with another trust domain's bundle is not trusted (F5).
    let f = Fixture::new();
    let wrong = bundle_with("evil.org", &[(KID, &f.key)]);
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let r = validate_jwt_svid(&token, AUD, &|_: &TrustDomain| Some(wrong.clone()), NOW);
    assert_eq!(r, Err(JwtError::NoBundle("example.org".into())));
}

#[test]
fn c6_rejects_unknown_kid() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, "other-kid", &claims()).unwrap();
    assert_eq!(
        f.validate(&token),
        Err(JwtError::UnknownKid { kid: "other-kid".into(), trust_domain: "example.org".into() })
    );
}

#[test]
fn c6_rejects_bad_signature() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    // Claims swapped for others (aud changed), signature kept.
    let mut c = default_claims();
    c["aud"] = json!(["attacker"]);
    let forged = format!("{}.{}.{}", parts[0], b64(c.to_string().as_bytes()), parts[2]);
    assert_eq!(f.validate_at(&forged, "attacker", NOW), Err(JwtError::BadSignature));
    // Signature bits flipped / truncated / signed by another key.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 0x40;
    assert_eq!(f.validate(&format!("{}.{}.{}", parts[0], parts[1], b64(&sig))), Err(JwtError::BadSignature));
    assert_eq!(f.validate(&format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..63]))), Err(JwtError::BadSignature));
    assert_eq!(f.validate(&format!("{}.{}.", parts[0], parts[1])), Err(JwtError::BadSignature));
    let other = key_from(ec256_pkcs8());
    assert_eq!(f.validate(&sign_jwt_svid(&other.key, KID, &claims()).unwrap()), Err(JwtError::BadSignature));
}

// ----- C7 -----

#[test]
fn c7_rejects_wrong_aud() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    assert_eq!(f.validate_at(&token, "other", NOW), Err(JwtError::AudienceMismatch("other".into())));
    // Prefixes and case variants are not matches.
    assert!(f.validate_at(&token, "spiffe://example.org/report", NOW).is_err());
    assert!(f.validate_at(&token, "SPIFFE://example.org/reports", NOW).is_err());
}

#[test]
fn c7_accepts_aud_string_or_array_with_the_audience() {
    let f = Fixture::new();
    for aud in [json!(AUD), json!([AUD]), json!(["a", AUD, "b"])] {
        let mut c = default_claims();
        c["aud"] = aud.clone();
        assert!(f.validate(&f.hand(&default_header(), &c)).is_ok(), "{aud}");
    }
    let mut many = claims();
    many.aud = vec!["a".into(), AUD.into()];
    let token = sign_jwt_svid(&f.key.key, KID, &many).unwrap();
    assert_eq!(decode_part(&token, 1)["aud"], json!(["a", AUD]));
    assert!(f.validate(&token).is_ok());
}

#[test]
fn c7_rejects_missing_empty_or_malformed_aud() {
    let f = Fixture::new();
    let mut c = default_claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::MissingAud));
    c["aud"] = json!([]);
    assert_eq!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::MissingAud));
    for bad in [json!(1), json!([AUD, 1]), json!({"a": AUD}), json!(null)] {
        c["aud"] = bad.clone();
        assert_eq!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::InvalidAud), "{bad}");
    }
}

#[test]
fn c7_requires_a_non_empty_validator_audience_and_issues_non_empty_aud() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    assert_eq!(f.validate_at(&token, "", NOW), Err(JwtError::EmptyAudience));
    let mut c = claims();
    c.aud.clear();
    assert!(matches!(sign_jwt_svid(&f.key.key, KID, &c), Err(JwtError::InvalidClaims(_))));
    c.aud = vec![String::new()];
    assert!(matches!(sign_jwt_svid(&f.key.key, KID, &c), Err(JwtError::InvalidClaims(_))));
}

// ----- C8 -----

#[test]
fn c8_rejects_expired() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let exp = NOW + 300;
    let late = exp + CLOCK_LEEWAY_SECS + 1;
    assert_eq!(f.validate_at(&token, AUD, late), Err(JwtError::Expired { exp, now: late }));
    assert!(f.validate_at(&token, AUD, exp + CLOCK_LEEWAY_SECS).is_ok(), "within the leeway");
    assert!(f.validate_at(&token, AUD, exp).is_ok());
}

#[test]
fn c8_rejects_missing_or_non_numeric_exp() {
    let f = Fixture::new();
    let mut c = default_claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::MissingExp));
    for bad in [json!("1900000000"), json!(null), json!([1]), json!(1e300)] {
        c["exp"] = bad.clone();
        assert_eq!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::InvalidNumericDate("exp")), "{bad}");
    }
    c["exp"] = json!((NOW + 60) as f64 + 0.5);
    assert_eq!(f.validate(&f.hand(&default_header(), &c)).unwrap().expires_at, NOW + 60);
}

#[test]
fn c8_rejects_not_yet_valid_and_future_iat() {
    let f = Fixture::new();
    let mut c = default_claims();
    c["nbf"] = json!(NOW + CLOCK_LEEWAY_SECS + 10);
    assert!(matches!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::NotYetValid { .. })));
    c["nbf"] = json!(NOW + CLOCK_LEEWAY_SECS);
    assert!(f.validate(&f.hand(&default_header(), &c)).is_ok());
    let mut c = default_claims();
    c["iat"] = json!(NOW + 3600);
    assert!(matches!(f.validate(&f.hand(&default_header(), &c)), Err(JwtError::IssuedInFuture { .. })));
}

#[test]
fn c8_issuance_requires_exp_after_iat() {
    let f = Fixture::new();
    let mut c = claims();
    c.exp = c.iat;
    assert!(matches!(sign_jwt_svid(&f.key.key, KID, &c), Err(JwtError::InvalidClaims(_))));
    c.sub = SpiffeId::new("spiffe://example.org").unwrap();
    c.exp = c.iat + 10;
    assert!(matches!(sign_jwt_svid(&f.key.key, KID, &c), Err(JwtError::InvalidClaims(_))), "no path in sub");
}

// ----- keys and robustness -----

#[test]
fn signing_keys_from_pkcs8_and_their_public_keys() {
    let rsa = key_from(RSA_PKCS8.to_vec());
    let spki = rsa.key.public_key_spki_der();
    let material = PublicKeyMaterial::from_spki_der(&spki).unwrap();
    assert!(matches!(&material, PublicKeyMaterial::Rsa { n, e } if n.len() == 256 && e == &[1, 0, 1]));
    assert_eq!(material.to_spki_der(), spki);
    // The RSA SPKI matches what rcgen (an independent encoder) derives from the same PKCS#8.
    let rc = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(RSA_PKCS8),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&rc), spki);
    // Same for EC P-256.
    let ec = ec256_pkcs8();
    let rc = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(ec.as_slice()),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&rc), key_from(ec).key.public_key_spki_der());

    assert!(matches!(JwtSigningKey::from_pkcs8(b"nope"), Err(JwtError::SigningKey(_))));
    assert!(matches!(PublicKeyMaterial::from_spki_der(b"nope"), Err(JwtError::InvalidPublicKey(_))));
}

#[test]
fn es_signatures_are_fixed_width_r_s() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(token.rsplit('.').next().unwrap()).unwrap();
    assert_eq!(sig.len(), 64);
    let k384 = key_from(ec384_pkcs8());
    let token = sign_jwt_svid(&k384.key, KID, &claims()).unwrap();
    assert_eq!(decode_part(&token, 0)["alg"], json!("ES384"));
    let sig = URL_SAFE_NO_PAD.decode(token.rsplit('.').next().unwrap()).unwrap();
    assert_eq!(sig.len(), 96);
    let rsa = key_from(RSA_PKCS8.to_vec());
    let token = sign_jwt_svid(&rsa.key, KID, &claims()).unwrap();
    assert_eq!(decode_part(&token, 0)["alg"], json!("RS256"));
    let bundles = vec![bundle_with("example.org", &[(KID, &rsa)])];
    assert!(validate_jwt_svid(&token, AUD, &lookup(bundles), NOW).is_ok());
}

#[test]
fn refuses_huge_tokens() {
    let f = Fixture::new();
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(f.validate(&huge), Err(JwtError::TooLarge(MAX_TOKEN_LEN + 1)));
    // A big but allowed claim set still works.
    let mut c = default_claims();
    c["pad"] = json!("x".repeat(30_000));
    assert!(f.validate(&f.hand(&default_header(), &c)).is_ok());
}

#[test]
fn malformed_inputs_never_panic() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    let inputs: Vec<String> = vec![
        "..".into(),
        "...".into(),
        ".".repeat(10_000),
        "\u{0}.\u{0}.\u{0}".into(),
        "é.é.é".into(),
        format!("{}.{}.{}", b64(b"{"), b64(b"{"), b64(b"")),
        format!("{}.{}.x", b64(&[b'['; 5000]), b64(b"{}")),
        format!("{}.{}.x", b64(br#"{"alg":"ES256","kid":"k"}"#), b64(&[0xff, 0xfe])),
        format!("{}.{}.x", b64(br#"{"alg":"ES256","kid":"k"}"#), b64(b"{\"sub\":\"spiffe://example.org/a\"")),
    ];
    for input in &inputs {
        assert!(f.validate(input).is_err(), "{input:.80}");
    }
    // Every prefix of a valid token is refused without panicking.
    for cut in 0..token.len() {
        assert!(f.validate(&token[..cut]).is_err(), "prefix {cut}");
    }
}

// ----- interop with go-jose / go-spiffe (fixtures/go-spiffe/README.md) -----

#[test]
fn c_interop_validates_tokens_made_by_go_jose() {
    let bundle =
        Bundle::from_jwks_json(td("example.org"), include_bytes!("fixtures/go-spiffe/go_jwt_bundle.json")).unwrap();
    let tokens = include_str!("fixtures/go-spiffe/go_tokens.txt");
    let mut algs = Vec::new();
    for token in tokens.lines() {
        let iat = decode_part(token, 1)["iat"].as_i64().unwrap();
        algs.push(decode_part(token, 0)["alg"].as_str().unwrap().to_owned());
        let v = validate_jwt_svid(token, "reports", &lookup(vec![bundle.clone()]), iat + 10).unwrap();
        assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/go");
        assert_eq!(v.expires_at, iat + 300);
        // And the usual refusals still apply to them.
        assert!(matches!(
            validate_jwt_svid(token, "other", &lookup(vec![bundle.clone()]), iat + 10),
            Err(JwtError::AudienceMismatch(_))
        ));
        assert!(matches!(
            validate_jwt_svid(token, "reports", &lookup(vec![bundle.clone()]), iat + 400),
            Err(JwtError::Expired { .. })
        ));
    }
    assert_eq!(algs, vec!["ES256", "ES384", "RS256", "PS256", "RS512"]);
}

/// Every single-character change of a valid token is refused (and nothing panics).
#[test]
fn every_single_character_mutation_is_refused() {
    let f = Fixture::new();
    let token = sign_jwt_svid(&f.key.key, KID, &claims()).unwrap();
    assert!(f.validate(&token).is_ok());
    let alphabet = b"AZaz09-_.=+/ \x00";
    let bytes = token.as_bytes();
    let mut refused = 0;
    for i in 0..bytes.len() {
        for &c in alphabet {
            if bytes[i] == c {
                continue;
            }
            let mut m = bytes.to_vec();
            m[i] = c;
            let m = String::from_utf8(m).unwrap();
            assert!(f.validate(&m).is_err(), "mutation at {i} to {:?} accepted", c as char);
            refused += 1;
        }
    }
    assert!(refused > 1000);
}
