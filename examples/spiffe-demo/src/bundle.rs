//! The SPIFFE bundle format (a JWKS: `use` x509-svid keys with `x5c`, `use` jwt-svid keys with `kid`), built
//! from what the Workload API hands a workload.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// A JWK for an X.509 authority (`use: x509-svid`): the public key's parameters and the certificate.
pub fn x509_jwk(der: &[u8]) -> Value {
    let mut key = Map::new();
    if let Ok((_, cert)) = X509Certificate::from_der(der)
        && let Ok(pk) = cert.public_key().parsed()
    {
        match pk {
            PublicKey::EC(p) => {
                let d = p.data();
                let crv = match d.len() {
                    65 => Some("P-256"),
                    97 => Some("P-384"),
                    133 => Some("P-521"),
                    _ => None,
                };
                if let (Some(crv), Some(xy)) = (crv, d.get(1..)) {
                    let (x, y) = xy.split_at(xy.len() / 2);
                    key.insert("kty".into(), json!("EC"));
                    key.insert("crv".into(), json!(crv));
                    key.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(x)));
                    key.insert("y".into(), json!(URL_SAFE_NO_PAD.encode(y)));
                }
            }
            PublicKey::RSA(r) => {
                let strip = |b: &[u8]| -> Vec<u8> { b.iter().skip_while(|x| **x == 0).copied().collect() };
                key.insert("kty".into(), json!("RSA"));
                key.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(strip(r.modulus))));
                key.insert("e".into(), json!(URL_SAFE_NO_PAD.encode(strip(r.exponent))));
            }
            _ => {}
        }
    }
    key.insert("use".into(), json!("x509-svid"));
    key.insert("x5c".into(), json!([STANDARD.encode(der)]));
    Value::Object(key)
}

/// A JWT authority's JWK as the Workload API gives it, marked `use: jwt-svid` (with its `kid`).
pub fn jwt_jwk(kid: &str, jwk_json: &[u8]) -> Value {
    let mut key = match serde_json::from_slice::<Value>(jwk_json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    key.insert("use".into(), json!("jwt-svid"));
    key.entry("kid").or_insert_with(|| json!(kid));
    Value::Object(key)
}

/// The bundle document: `keys`, and `spiffe_sequence` (this workload's count of bundle updates seen: the
/// Workload API does not carry the server's sequence number).
pub fn document(x509: &[Vec<u8>], jwt: &[(String, Vec<u8>)], sequence: u64) -> Value {
    let mut keys: Vec<Value> = x509.iter().map(|d| x509_jwk(d)).collect();
    keys.extend(jwt.iter().map(|(kid, j)| jwt_jwk(kid, j)));
    json!({ "keys": keys, "spiffe_sequence": sequence })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn x509_key_of_an_ec_ca() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = p.self_signed(&kp).unwrap().der().to_vec();
        let k = x509_jwk(&der);
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["use"], "x509-svid");
        assert_eq!(URL_SAFE_NO_PAD.decode(k["x"].as_str().unwrap()).unwrap().len(), 32);
        assert_eq!(STANDARD.decode(k["x5c"][0].as_str().unwrap()).unwrap(), der);
    }

    #[test]
    fn jwt_key_keeps_its_fields_and_is_marked() {
        let k = jwt_jwk("k1", br#"{"kty":"EC","crv":"P-256","x":"AA","y":"BB"}"#);
        assert_eq!(k, json!({"kty":"EC","crv":"P-256","x":"AA","y":"BB","use":"jwt-svid","kid":"k1"}));
        let doc = document(&[], &[("k2".into(), b"not json".to_vec())], 3);
        assert_eq!(doc, json!({"keys":[{"use":"jwt-svid","kid":"k2"}],"spiffe_sequence":3}));
    }
}
