#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Checklist section F (trust domain and bundle) plus the bundle rules of B9, B10 and C10
//! (`sigil_core::bundle`).

#[path = "fixtures/pki.rs"]
mod pki;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pki::{Ca, ca_params, ec_key, rsa_key, td};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use serde_json::{Value, json};
use sigil_core::bundle::{Bundle, BundleError, JwtAuthority};
use sigil_core::jwt::{EcCurve, JwtSigningKey, PublicKeyMaterial};

const TD: &str = "example.org";

fn ec_jwt_spki(alg: &'static signature::EcdsaSigningAlgorithm) -> Vec<u8> {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
    JwtSigningKey::from_pkcs8(pkcs8.as_ref()).unwrap().public_key_spki_der()
}

fn jwt_authority(kid: &str, spki: Vec<u8>) -> JwtAuthority {
    JwtAuthority { key_id: kid.into(), public_key_spki_der: spki, expires_at: 0 }
}

/// A bundle with an EC and an RSA root and P-256, P-384 and RSA JWT keys.
fn full_bundle() -> Bundle {
    let mut b = Bundle::new(td(TD));
    b.x509_authorities.push(Ca::root(TD).der);
    b.x509_authorities.push(Ca::root_with(ca_params("rsa root", Some("spiffe://example.org")), rsa_key()).der);
    b.jwt_authorities.push(jwt_authority("p256", ec_jwt_spki(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)));
    b.jwt_authorities.push(jwt_authority("p384", ec_jwt_spki(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)));
    b.jwt_authorities
        .push(jwt_authority("rsa", JwtSigningKey::from_pkcs8(pki::RSA_PKCS8).unwrap().public_key_spki_der()));
    b.sequence = 7;
    b.refresh_hint_secs = Some(300);
    b
}

fn parse(json: &Value) -> Result<Bundle, BundleError> {
    Bundle::from_jwks_json(td(TD), json.to_string().as_bytes())
}

fn doc(b: &Bundle) -> Value {
    serde_json::from_str(&b.to_jwks_json()).unwrap()
}

fn x509_jwk(der: &[u8]) -> Value {
    let mut jwk = doc(&{
        let mut b = Bundle::new(td(TD));
        b.x509_authorities.push(der.to_vec());
        b
    })["keys"][0]
        .clone();
    jwk.as_object_mut().unwrap().remove("spiffe_sequence");
    jwk
}

// ----- F1 -----

#[test]
fn f1_keys_are_always_published() {
    let b = Bundle::new(td(TD));
    assert_eq!(doc(&b), json!({"keys": [], "spiffe_sequence": 0}));
    assert_eq!(b.jwt_jwks_json(), r#"{"keys":[]}"#);
}

#[test]
fn f1_rejects_bundles_without_keys() {
    assert_eq!(parse(&json!({})), Err(BundleError::MissingKeys));
    assert_eq!(parse(&json!({"keys": {}})), Err(BundleError::MissingKeys));
    assert_eq!(parse(&json!({"keys": null})), Err(BundleError::MissingKeys));
    assert_eq!(parse(&json!([])), Err(BundleError::NotObject));
    assert!(matches!(Bundle::from_jwks_json(td(TD), b"{\"keys\":["), Err(BundleError::Json(_))));
    assert!(matches!(Bundle::from_jwks_json(td(TD), b""), Err(BundleError::Json(_))));
    assert_eq!(parse(&json!({"keys": [1]})), Err(BundleError::KeyNotObject(0)));
}

#[test]
fn f1_accepts_empty_keys() {
    let b = parse(&json!({"keys": []})).unwrap();
    assert_eq!(b, Bundle::new(td(TD)));
}

// ----- F2 / F3 -----

#[test]
fn f2_sequence_is_published_and_read() {
    let mut b = Bundle::new(td(TD));
    b.sequence = u64::MAX;
    assert_eq!(doc(&b)["spiffe_sequence"], json!(u64::MAX));
    assert_eq!(Bundle::from_jwks_json(td(TD), b.to_jwks_json().as_bytes()).unwrap().sequence, u64::MAX);
    assert_eq!(parse(&json!({"keys": []})).unwrap().sequence, 0, "absent reads as 0");
    for bad in [json!(-1), json!("1"), json!(1.5), json!(null)] {
        assert_eq!(
            parse(&json!({"keys": [], "spiffe_sequence": bad})),
            Err(BundleError::InvalidField("spiffe_sequence"))
        );
    }
}

#[test]
fn f3_refresh_hint_is_published_only_when_set() {
    let mut b = Bundle::new(td(TD));
    assert!(doc(&b).get("spiffe_refresh_hint").is_none());
    b.refresh_hint_secs = Some(300);
    assert_eq!(doc(&b)["spiffe_refresh_hint"], json!(300));
    let back = Bundle::from_jwks_json(td(TD), b.to_jwks_json().as_bytes()).unwrap();
    assert_eq!(back.refresh_hint_secs, Some(300));
    assert_eq!(parse(&json!({"keys": []})).unwrap().refresh_hint_secs, None);
    assert_eq!(
        parse(&json!({"keys": [], "spiffe_refresh_hint": "5m"})),
        Err(BundleError::InvalidField("spiffe_refresh_hint"))
    );
}

// ----- F4 -----

#[test]
fn f4_ignores_unknown_kty() {
    let ca = Ca::root(TD);
    let mut jwk = x509_jwk(&ca.der);
    for kty in [json!("OKP"), json!("oct"), json!("ec"), json!(1)] {
        jwk["kty"] = kty.clone();
        let b = parse(&json!({"keys": [jwk.clone()]})).unwrap();
        assert!(b.x509_authorities.is_empty(), "{kty}");
    }
    jwk.as_object_mut().unwrap().remove("kty");
    assert!(parse(&json!({"keys": [jwk]})).unwrap().x509_authorities.is_empty(), "missing kty");
    // An unknown kty on a jwt-svid entry (even without kid) is ignored, not an error.
    let okp = json!({"kty": "OKP", "crv": "Ed25519", "use": "jwt-svid", "x": "AAAA"});
    assert_eq!(parse(&json!({"keys": [okp]})).unwrap().jwt_authorities, vec![]);
}

#[test]
fn f4_ignores_unknown_use() {
    let ca = Ca::root(TD);
    let mut jwk = x509_jwk(&ca.der);
    for u in [json!("sig"), json!("enc"), json!("X509-SVID"), json!("x509_svid"), json!(null)] {
        jwk["use"] = u.clone();
        assert!(parse(&json!({"keys": [jwk.clone()]})).unwrap().x509_authorities.is_empty(), "{u}");
    }
    jwk.as_object_mut().unwrap().remove("use");
    assert!(parse(&json!({"keys": [jwk.clone()]})).unwrap().x509_authorities.is_empty(), "missing use");
    // Known entries next to ignored ones are still read.
    let good = x509_jwk(&ca.der);
    let b = parse(&json!({"keys": [jwk, good]})).unwrap();
    assert_eq!(b.x509_authorities, vec![ca.der.clone()]);
}

#[test]
fn f4_ignores_unknown_top_level_members() {
    let b = parse(&json!({"keys": [], "spiffe_sequence": 3, "x_vendor": {"a": 1}})).unwrap();
    assert_eq!(b.sequence, 3);
}

// ----- F5 -----

#[test]
fn f5_bundle_keeps_the_trust_domain_it_was_read_for() {
    let b = full_bundle();
    let json = b.to_jwks_json();
    let other = Bundle::from_jwks_json(td("other.org"), json.as_bytes()).unwrap();
    assert_eq!(other.trust_domain, td("other.org"));
    assert_eq!(Bundle::from_jwks_json(td(TD), json.as_bytes()).unwrap().trust_domain, td(TD));
}

// ----- B9 -----

#[test]
fn b9_one_jwk_per_ca_with_use_x5c_and_no_kid() {
    let b = full_bundle();
    let d = doc(&b);
    let keys = d["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 2, "one JWK per CA");
    for (jwk, der) in x509.iter().zip(&b.x509_authorities) {
        assert!(jwk.get("kid").is_none(), "x509-svid JWKs have no kid: {jwk}");
        let x5c = jwk["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1, "exactly one certificate");
        assert_eq!(STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(), *der, "standard base64 DER");
    }
    // Key members match the certificate's key.
    let ec = x509[0];
    assert_eq!(ec["kty"], "EC");
    assert_eq!(ec["crv"], "P-256");
    let spki = sigil_core::x509::spki_der_of_cert(&b.x509_authorities[0]).unwrap();
    let Ok(PublicKeyMaterial::Ec { curve: EcCurve::P256, point }) = PublicKeyMaterial::from_spki_der(&spki) else {
        panic!("EC key expected");
    };
    assert_eq!(URL_SAFE_NO_PAD.decode(ec["x"].as_str().unwrap()).unwrap(), point[1..33]);
    assert_eq!(URL_SAFE_NO_PAD.decode(ec["y"].as_str().unwrap()).unwrap(), point[33..]);
    let rsa = x509[1];
    assert_eq!(rsa["kty"], "RSA");
    assert_eq!(rsa["e"], "AQAB");
    assert_eq!(URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap().len(), 256);
    assert!(rsa.get("crv").is_none());
}

#[test]
fn b9_unpublishable_authorities_are_left_out_or_reported() {
    // An Ed25519 CA has no EC/RSA JWK form.
    let ed = Ca::root_with(
        ca_params("ed root", Some("spiffe://example.org")),
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
    );
    let ec = Ca::root(TD);
    let mut b = Bundle::new(td(TD));
    b.x509_authorities = vec![ed.der.clone(), ec.der.clone()];
    let keys = doc(&b)["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(STANDARD.decode(keys[0]["x5c"][0].as_str().unwrap()).unwrap(), ec.der);
    assert!(matches!(b.try_to_jwks_json(), Err(BundleError::UnpublishableX509 { index: 0, .. })));
    b.x509_authorities = vec![ec.der.clone()];
    assert_eq!(b.try_to_jwks_json().unwrap(), b.to_jwks_json());
}

// ----- B10 -----

#[test]
fn b10_ignores_x509_entries_without_x5c() {
    let ca = Ca::root(TD);
    let mut jwk = x509_jwk(&ca.der);
    jwk["x5c"] = json!([]);
    assert!(parse(&json!({"keys": [jwk.clone()]})).unwrap().x509_authorities.is_empty());
    jwk.as_object_mut().unwrap().remove("x5c");
    assert!(parse(&json!({"keys": [jwk]})).unwrap().x509_authorities.is_empty());
}

#[test]
fn b10_uses_only_the_first_x5c_value() {
    let ca1 = Ca::root(TD);
    let ca2 = Ca::root(TD);
    let mut jwk = x509_jwk(&ca1.der);
    jwk["x5c"] = json!([STANDARD.encode(&ca1.der), STANDARD.encode(&ca2.der), "not even base64 !"]);
    let b = parse(&json!({"keys": [jwk]})).unwrap();
    assert_eq!(b.x509_authorities, vec![ca1.der.clone()]);
}

#[test]
fn b10_rejects_malformed_first_x5c_value() {
    let ca = Ca::root(TD);
    let mut jwk = x509_jwk(&ca.der);
    for bad in [json!(["%%%"]), json!([STANDARD.encode(b"not a certificate")]), json!([1]), json!("abc")] {
        jwk["x5c"] = bad.clone();
        let r = parse(&json!({"keys": [jwk.clone()]}));
        assert!(matches!(r, Err(BundleError::InvalidKey { index: 0, key_use: "x509-svid", .. })), "{bad}: {r:?}");
    }
}

// ----- C10 -----

#[test]
fn c10_jwt_authority_jwks_have_use_and_kid() {
    let b = full_bundle();
    let d = doc(&b);
    let jwt: Vec<&Value> = d["keys"].as_array().unwrap().iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!(jwt.len(), 3);
    let kids: Vec<&str> = jwt.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, vec!["p256", "p384", "rsa"]);
    for k in &jwt {
        assert!(k.get("x5c").is_none());
    }
    assert_eq!(jwt[0]["crv"], "P-256");
    assert_eq!(jwt[1]["crv"], "P-384");
    assert_eq!(URL_SAFE_NO_PAD.decode(jwt[1]["x"].as_str().unwrap()).unwrap().len(), 48);
    assert_eq!(jwt[2]["kty"], "RSA");
}

/// Decision: a jwt-svid entry without `kid` makes the bundle invalid (as in go-spiffe).
#[test]
fn c10_rejects_jwt_entries_without_kid() {
    let b = full_bundle();
    let mut d = doc(&b);
    let keys = d["keys"].as_array_mut().unwrap();
    let i = keys.iter().position(|k| k["use"] == "jwt-svid").unwrap();
    keys[i].as_object_mut().unwrap().remove("kid");
    assert_eq!(parse(&d), Err(BundleError::MissingKid { index: i }));
    d["keys"][i]["kid"] = json!("");
    assert_eq!(parse(&d), Err(BundleError::MissingKid { index: i }));
    // An empty kid is never published either.
    let mut bad = Bundle::new(td(TD));
    bad.jwt_authorities.push(jwt_authority("", ec_jwt_spki(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)));
    assert!(matches!(bad.try_to_jwks_json(), Err(BundleError::UnpublishableJwt { .. })));
    assert_eq!(bad.jwt_jwks_json(), r#"{"keys":[]}"#);
}

#[test]
fn c10_rejects_malformed_jwt_keys() {
    let base = json!({"kty": "EC", "use": "jwt-svid", "kid": "k", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
    assert_eq!(parse(&json!({"keys": [base.clone()]})).unwrap().jwt_authorities.len(), 1);
    let mut cases = Vec::new();
    for (field, value) in [
        ("crv", json!("P-192")),
        ("crv", json!(null)),
        ("x", json!(URL_SAFE_NO_PAD.encode([1u8; 31]))),
        ("y", json!("AAAA=")),
        ("x", json!(1)),
    ] {
        let mut k = base.clone();
        k[field] = value;
        cases.push(k);
    }
    cases.push(json!({"kty": "RSA", "use": "jwt-svid", "kid": "r", "n": "AA", "e": "AQAB"}));
    cases.push(json!({"kty": "RSA", "use": "jwt-svid", "kid": "r", "e": "AQAB"}));
    for k in cases {
        let r = parse(&json!({"keys": [k.clone()]}));
        assert!(matches!(r, Err(BundleError::InvalidKey { key_use: "jwt-svid", .. })), "{k}: {r:?}");
    }
}

#[test]
fn jwt_keys_of_all_curves_round_trip_through_jwk() {
    // P-521 cannot be generated with ring; a syntactically valid JWK is enough for the conversion.
    let x = [3u8; 66];
    let y = [4u8; 66];
    let jwk = json!({"kty": "EC", "use": "jwt-svid", "kid": "p521", "crv": "P-521",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
    let b = parse(&json!({"keys": [jwk.clone()]})).unwrap();
    let spki = &b.jwt_authorities[0].public_key_spki_der;
    let Ok(PublicKeyMaterial::Ec { curve: EcCurve::P521, point }) = PublicKeyMaterial::from_spki_der(spki) else {
        panic!("P-521 key expected");
    };
    assert_eq!(point.len(), 133);
    assert_eq!(point[1..67], x);
    assert_eq!(doc(&b)["keys"][0], jwk);
}

#[test]
fn duplicate_authorities() {
    let b = full_bundle();
    let mut d = doc(&b);
    let keys = d["keys"].as_array_mut().unwrap();
    let copy = keys.clone();
    keys.extend(copy);
    assert_eq!(parse(&d).unwrap(), { b.clone() }, "exact duplicates are kept once");
    let mut d = doc(&b);
    let keys = d["keys"].as_array_mut().unwrap();
    let mut twin = keys.iter().find(|k| k["kid"] == "p256").unwrap().clone();
    twin["x"] = json!(URL_SAFE_NO_PAD.encode([9u8; 32]));
    keys.push(twin);
    assert_eq!(parse(&d), Err(BundleError::DuplicateKid("p256".into())));
}

// ----- round trips and Workload API forms -----

#[test]
fn jwks_round_trip() {
    let b = full_bundle();
    let back = Bundle::from_jwks_json(td(TD), b.to_jwks_json().as_bytes()).unwrap();
    assert_eq!(back, b);
    assert_eq!(back.to_jwks_json(), b.to_jwks_json());
}

#[test]
fn reads_a_spire_style_bundle_document() {
    // The shape SPIRE / go-spiffe publish: x509-svid with x5c and key members, jwt-svid with kid.
    let ca = Ca::root(TD);
    let key = ec_jwt_spki(&signature::ECDSA_P256_SHA256_FIXED_SIGNING);
    let PublicKeyMaterial::Ec { point, .. } = PublicKeyMaterial::from_spki_der(&key).unwrap() else { panic!() };
    let x509 = x509_jwk(&ca.der);
    let text = format!(
        r#"{{
    "keys": [
        {{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": {x}, "y": {y}, "x5c": {x5c}}},
        {{"use": "jwt-svid", "kty": "EC", "kid": "C6vs25welZOx6WksNYfbMfiw9l96pMnD", "crv": "P-256",
          "x": "{jx}", "y": "{jy}"}}
    ],
    "spiffe_sequence": 1,
    "spiffe_refresh_hint": 2419200
}}"#,
        x = x509["x"],
        y = x509["y"],
        x5c = x509["x5c"],
        jx = URL_SAFE_NO_PAD.encode(&point[1..33]),
        jy = URL_SAFE_NO_PAD.encode(&point[33..]),
    );
    let b = Bundle::from_jwks_json(td(TD), text.as_bytes()).unwrap();
    assert_eq!(b.x509_authorities, vec![ca.der.clone()]);
    assert_eq!(b.jwt_authorities, vec![jwt_authority("C6vs25welZOx6WksNYfbMfiw9l96pMnD", key)]);
    assert_eq!((b.sequence, b.refresh_hint_secs), (1, Some(2_419_200)));
}

#[test]
fn workload_api_forms() {
    let b = full_bundle();
    let jwt: Value = serde_json::from_str(&b.jwt_jwks_json()).unwrap();
    let obj = jwt.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["keys"]);
    assert_eq!(jwt["keys"].as_array().unwrap().len(), 3);
    assert!(jwt["keys"].as_array().unwrap().iter().all(|k| k["use"] == "jwt-svid" && k["kid"].is_string()));
    let concat = b.x509_authorities_der_concat();
    assert_eq!(concat, [b.x509_authorities[0].clone(), b.x509_authorities[1].clone()].concat());
}

#[test]
fn spiffe_crate_reads_what_we_publish() {
    let b = full_bundle();
    let jwt = spiffe::JwtBundle::from_jwt_authorities(b.trust_domain.as_spiffe().clone(), b.jwt_jwks_json().as_bytes())
        .unwrap();
    for kid in ["p256", "p384", "rsa"] {
        let a = jwt.find_jwt_authority(kid).unwrap_or_else(|| panic!("{kid} missing"));
        let jwk: Value = serde_json::from_slice(a.jwk_json()).unwrap();
        assert_eq!(jwk["use"], "jwt-svid");
    }
    let x509 = spiffe::X509Bundle::parse_from_der(b.trust_domain.as_spiffe().clone(), &b.x509_authorities_der_concat())
        .unwrap();
    assert_eq!(x509.authorities().len(), 2);
    assert_eq!(x509.authorities()[1].as_ref(), b.x509_authorities[1].as_slice());
}

// ----- PEM -----

#[test]
fn pem_round_trip() {
    let b = full_bundle();
    let pem = b.to_pem();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----\n").count(), 2);
    assert!(pem.lines().all(|l| l.len() <= 64), "64-column lines");
    let back = Bundle::from_pem(td(TD), pem.as_bytes()).unwrap();
    assert_eq!(back.x509_authorities, b.x509_authorities);
    assert!(back.jwt_authorities.is_empty());
    // Comments and blank lines between blocks are fine; CRLF too.
    let commented = format!("# root 1\n\n{}", pem.replace('\n', "\r\n"));
    assert_eq!(Bundle::from_pem(td(TD), commented.as_bytes()).unwrap().x509_authorities, b.x509_authorities);
    // Works with rcgen's PEM too.
    let ca = rcgen::CertificateParams::default().self_signed(&ec_key()).unwrap();
    assert_eq!(Bundle::from_pem(td(TD), ca.pem().as_bytes()).unwrap().x509_authorities, vec![ca.der().to_vec()]);
}

#[test]
fn pem_rejects_other_blocks_garbage_and_empty_input() {
    let key = ec_key().serialize_pem();
    assert!(matches!(Bundle::from_pem(td(TD), key.as_bytes()), Err(BundleError::Pem(_))));
    assert_eq!(Bundle::from_pem(td(TD), b""), Err(BundleError::EmptyPem));
    assert_eq!(Bundle::from_pem(td(TD), b"just text\n"), Err(BundleError::EmptyPem));
    let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(matches!(Bundle::from_pem(td(TD), bad.as_bytes()), Err(BundleError::Pem(_))));
    let unterminated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
    assert!(matches!(Bundle::from_pem(td(TD), unterminated.as_bytes()), Err(BundleError::Pem(_))));
    assert_eq!(Bundle::new(td(TD)).to_pem(), "");
}

#[test]
fn hostile_json_never_panics() {
    let deep = "[".repeat(10_000);
    assert!(Bundle::from_jwks_json(td(TD), deep.as_bytes()).is_err());
    let deep_keys = format!("{{\"keys\":[{}]}}", "[".repeat(5000));
    assert!(Bundle::from_jwks_json(td(TD), deep_keys.as_bytes()).is_err());
    let json = full_bundle().to_jwks_json();
    for cut in (0..json.len()).step_by(13) {
        let _ = Bundle::from_jwks_json(td(TD), &json.as_bytes()[..cut]);
    }
    assert!(Bundle::from_jwks_json(td(TD), &[0xff, 0xfe, 0x00]).is_err());
}

// ----- interop with go-spiffe (fixtures/go-spiffe/README.md) -----

#[test]
fn f_interop_go_spiffe_reads_and_remarshals_our_bundle_unchanged() {
    let ours = include_str!("fixtures/go-spiffe/sigil_bundle.json");
    let go = include_str!("fixtures/go-spiffe/sigil_bundle_remarshaled_by_go.json");
    let ours_v: Value = serde_json::from_str(ours).unwrap();
    let go_v: Value = serde_json::from_str(go).unwrap();
    assert_eq!(ours_v, go_v, "go-spiffe re-marshals our bundle to the same JSON (up to member order)");
    let a = Bundle::from_jwks_json(td(TD), ours.as_bytes()).unwrap();
    let b = Bundle::from_jwks_json(td(TD), go.as_bytes()).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.x509_authorities.len(), a.jwt_authorities.len()), (2, 3));
    assert_eq!(serde_json::from_str::<Value>(&a.to_jwks_json()).unwrap(), ours_v, "we re-publish it unchanged");
}

#[test]
fn f_interop_reads_a_go_spiffe_jwt_bundle() {
    let b = Bundle::from_jwks_json(td(TD), include_bytes!("fixtures/go-spiffe/go_jwt_bundle.json")).unwrap();
    let kids: Vec<&str> = b.jwt_authorities.iter().map(|a| a.key_id.as_str()).collect();
    assert_eq!(kids, vec!["go-ec", "go-ec384", "go-rsa"]);
    assert_eq!((b.sequence, b.refresh_hint_secs), (9, Some(60)));
    assert!(b.x509_authorities.is_empty());
}
