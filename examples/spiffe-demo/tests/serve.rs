//! Issue 13, acceptance 2: `spiffe-demo serve` on one host with Sigil. Every endpoint of the table answers
//! as the README documents (asserted on its JSON); the mTLS and JWT-auth calls between two instances
//! (service-a as uid 1000, service-b as uid 1001) succeed and are refused with a clear reason when the
//! peer is not the authorized SPIFFE ID; with the agent stopped every endpoint answers 503, and 200 again
//! once it is back, without restarting the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Every endpoint of the table, with a valid request (`token`: a JWT-SVID for the audience "demo").
fn endpoints(chain_pem: &str, token: &str) -> Vec<(&'static str, String, Option<String>)> {
    vec![
        ("GET", "/spiffe/.well-known/spiffe-bundle".into(), None),
        ("GET", "/spiffe/svid/x509".into(), None),
        ("GET", "/spiffe/svid/x509/chain".into(), None),
        ("GET", "/spiffe/svid/jwt?audience=demo".into(), None),
        ("GET", "/spiffe/svid/info".into(), None),
        ("POST", "/spiffe/validate/jwt".into(), Some(json!({"token": token, "audience": "demo"}).to_string())),
        ("POST", "/spiffe/validate/x509".into(), Some(chain_pem.to_owned())),
        ("GET", "/spiffe/workload".into(), None),
        ("GET", "/spiffe/trust-bundle".into(), None),
        ("POST", "/spiffe/demo/mtls/call".into(), Some(String::new())),
        ("POST", "/spiffe/demo/jwt-auth/call".into(), Some(String::new())),
        ("GET", "/spiffe/demo/rotation".into(), None),
        ("GET", "/spiffe/status".into(), None),
    ]
}

fn aud_contains(aud: &Value, want: &str) -> bool {
    match aud {
        Value::String(s) => s == want,
        Value::Array(a) => a.iter().any(|v| v == want),
        _ => false,
    }
}

#[test]
fn every_endpoint_answers_as_documented_and_the_peer_calls_work() {
    let s = stack(&[]);
    let (ma, mb) = (free_port(), free_port());
    let a = serve(&s, UID_A, ma, Some((mb, ID_B)));
    let b = serve(&s, UID_B, mb, Some((ma, ID_A)));
    wait_ready(a.http, Duration::from_secs(60));
    wait_ready(b.http, Duration::from_secs(60));

    // The bundle as a SPIFFE bundle (JWKS).
    let (st, v) = get_json(a.http, "/spiffe/.well-known/spiffe-bundle");
    assert_eq!(st, 200, "{v}");
    let keys = v["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert!(!x509.is_empty() && x509.iter().all(|k| k["x5c"][0].is_string() && k["kty"].is_string()), "{v}");
    assert!(keys.iter().any(|k| k["use"] == "jwt-svid" && k["kid"].is_string()), "{v}");
    assert!(v["spiffe_sequence"].as_u64().unwrap() >= 1, "{v}");

    // The X509-SVID.
    let (st, v) = get_json(a.http, "/spiffe/svid/x509");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["spiffe_id"], ID_A);
    assert_eq!(v["uri_sans"], json!([ID_A]));
    assert!(v["serial"].as_str().unwrap().chars().all(|c| c.is_ascii_hexdigit()), "{v}");
    assert!(v["not_before"].as_str().unwrap() < v["not_after"].as_str().unwrap(), "{v}");
    assert!(v["chain_length"].as_u64().unwrap() >= 1);

    // The chain as PEM: the leaf is service-a's.
    let (st, chain_a) = http("GET", a.http, "/spiffe/svid/x509/chain", None);
    assert_eq!(st, 200);
    let der = pem::parse_many(&chain_a).unwrap().remove(0).into_contents();
    assert_eq!(spiffe_demo::validate::leaf_facts(&der).unwrap().uris, vec![ID_A.to_owned()]);

    // A JWT-SVID with its header and claims.
    let (st, v) = get_json(a.http, "/spiffe/svid/jwt?audience=spiffe%3A%2F%2Fexample.org%2Fservice-b");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["spiffe_id"], ID_A);
    assert_eq!(v["claims"]["sub"], ID_A);
    assert!(aud_contains(&v["claims"]["aud"], ID_B), "{v}");
    assert!(v["header"]["alg"].is_string() && v["header"]["kid"].is_string(), "{v}");
    assert_eq!(v["token"].as_str().unwrap().split('.').count(), 3);
    let (st, v) = get_json(a.http, "/spiffe/svid/jwt");
    assert_eq!((st, v["error"].as_str()), (400, Some("?audience= is required")));

    // SVID metadata.
    let (st, v) = get_json(a.http, "/spiffe/svid/info");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["spiffe_id"], ID_A);
    let (exp, rot) = (v["expires_in_seconds"].as_i64().unwrap(), v["rotation_in_seconds"].as_i64().unwrap());
    assert!(exp > 0 && rot <= exp, "{v}");

    // JWT validation: service-b's token for service-a, validated by service-a.
    let (_, jb) = get_json(b.http, "/spiffe/svid/jwt?audience=spiffe%3A%2F%2Fexample.org%2Fservice-a");
    let token = jb["token"].as_str().unwrap();
    let (st, v) = post_json(a.http, "/spiffe/validate/jwt", &json!({"token": token, "audience": ID_A}).to_string());
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["valid"].as_bool(), v["spiffe_id"].as_str()), (Some(true), Some(ID_B)));
    assert_eq!(v["claims"]["sub"], ID_B);
    let (st, v) =
        post_json(a.http, "/spiffe/validate/jwt", &json!({"token": token, "audience": "someone-else"}).to_string());
    assert_eq!((st, v["valid"].as_bool()), (401, Some(false)), "{v}");
    assert_eq!(
        v["error"],
        format!("JWT-SVID refused: audience mismatch: the token is for [\"{ID_A}\"], not \"someone-else\""),
        "{v}"
    );
    let (st, v) = post_json(a.http, "/spiffe/validate/jwt", &json!({"token": "x.y", "audience": ID_A}).to_string());
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("malformed JWT"), "{v}");
    let (st, v) = post_json(a.http, "/spiffe/validate/jwt", "{not json");
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("malformed JSON body"), "{v}");

    // X.509 validation: service-b's chain (raw PEM and {"pem"}), a self-signed one, garbage.
    let (_, chain_b) = http("GET", b.http, "/spiffe/svid/x509/chain", None);
    for body in [chain_b.clone(), json!({"pem": chain_b}).to_string()] {
        let (st, v) = post_json(a.http, "/spiffe/validate/x509", &body);
        assert_eq!(st, 200, "{v}");
        assert_eq!((v["valid"].as_bool(), v["spiffe_id"].as_str()), (Some(true), Some(ID_B)));
        assert_eq!(v["trust_domain"], TD);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![rcgen::SanType::URI(ID_B.try_into().unwrap())];
    let selfsigned = p.self_signed(&key).unwrap().pem();
    let (st, v) = post_json(a.http, "/spiffe/validate/x509", &selfsigned);
    assert_eq!((st, v["valid"].as_bool()), (403, Some(false)), "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("self-signed certificate"), "{v}");
    let (st, v) = post_json(a.http, "/spiffe/validate/x509", "not a certificate");
    assert_eq!((st, v["error"].as_str()), (400, Some("no certificate found in the PEM")), "{v}");

    // This workload.
    let (st, v) = get_json(a.http, "/spiffe/workload");
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["spiffe_id"].as_str(), v["trust_domain"].as_str()), (Some(ID_A), Some(TD)));
    assert_eq!(v["endpoint_socket"], s.endpoint());
    assert_eq!((v["uid"].as_u64(), v["peer_id"].as_str()), (Some(u64::from(UID_A)), Some(ID_B)));

    // Bundle info.
    let (st, v) = get_json(a.http, "/spiffe/trust-bundle");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["trust_domain"], TD);
    let td = &v["trust_domains"][0];
    assert_eq!(td["trust_domain"], TD);
    let auth = &td["x509_authorities"][0];
    assert_eq!(auth["sha256"].as_str().unwrap().len(), 64, "{v}");
    assert!(td["jwt_authorities"][0]["key_id"].is_string(), "{v}");
    assert!(v["sequence"].as_u64().unwrap() >= 1);

    // mTLS call a → b: both IDs, as each side verified them.
    let (st, v) = post_json(a.http, "/spiffe/demo/mtls/call", "");
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["client_id"].as_str(), v["server_id"].as_str()),
        (Some(true), Some(ID_A), Some(ID_B))
    );
    assert_eq!(
        (v["peer_response"]["client_id"].as_str(), v["peer_response"]["server_id"].as_str()),
        (Some(ID_A), Some(ID_B))
    );
    // ... and b → a.
    let (st, v) = post_json(b.http, "/spiffe/demo/mtls/call", "");
    assert_eq!(
        (st, v["server_id"].as_str(), v["peer_response"]["client_id"].as_str()),
        (200, Some(ID_A), Some(ID_B)),
        "{v}"
    );
    // Authorizing another ID than the peer's: refused in the handshake.
    let wrong = "spiffe://example.org/not-b";
    let refusal = format!("peer is {ID_B}, not the authorized {wrong}");
    let (st, v) = post_json(a.http, "/spiffe/demo/mtls/call", &json!({"peer_id": wrong}).to_string());
    assert_eq!((st, v["ok"].as_bool()), (403, Some(false)), "{v}");
    assert!(v["error"].as_str().unwrap().contains(&refusal), "{v}");

    // JWT auth a → b: a JWT-SVID for b's ID, validated by b.
    let (st, v) = post_json(a.http, "/spiffe/demo/jwt-auth/call", "");
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["audience"].as_str(), v["server_id"].as_str()),
        (Some(true), Some(ID_B), Some(ID_B))
    );
    assert_eq!(v["peer_response"]["jwt_subject"], ID_A);
    assert_eq!(v["peer_response"]["claims"]["sub"], ID_A);
    let (st, v) = post_json(a.http, "/spiffe/demo/jwt-auth/call", &json!({"peer_id": wrong}).to_string());
    assert_eq!((st, v["ok"].as_bool()), (403, Some(false)), "{v}");
    assert!(v["error"].as_str().unwrap().contains(&refusal), "{v}");
    // A token for another audience: b refuses it.
    let (st, v) =
        post_json(a.http, "/spiffe/demo/jwt-auth/call", &json!({"audience": "spiffe://example.org/other"}).to_string());
    assert_eq!((st, v["ok"].as_bool()), (401, Some(false)), "{v}");
    assert_eq!(
        v["error"],
        format!(
            "the peer refused the JWT-SVID: JWT-SVID refused: audience mismatch: the token is for \
             [\"spiffe://example.org/other\"], not \"{ID_B}\""
        ),
        "{v}"
    );
    let (st, v) = post_json(a.http, "/spiffe/demo/mtls/call", &json!({"peer": "http://x"}).to_string());
    assert_eq!(st, 400, "{v}");

    // Rotation record and status.
    let (st, v) = get_json(a.http, "/spiffe/demo/rotation");
    assert_eq!(st, 200, "{v}");
    let svids = v["svids"].as_array().unwrap();
    assert!(!svids.is_empty() && svids[0]["spiffe_id"] == ID_A, "{v}");
    assert_eq!(v["rotations"].as_u64().unwrap() as usize, svids.len() - 1);
    assert_eq!((v["no_gap"].as_bool(), v["gaps"].as_array().map(Vec::len)), (Some(true), Some(0)));
    let (st, v) = get_json(a.http, "/spiffe/status");
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["agent_reachable"].as_bool(), v["svid_present"].as_bool()),
        (Some("ok"), Some(true), Some(true))
    );
    assert_eq!(v["spiffe_id"], ID_A);

    // Unknown route and wrong method: JSON errors.
    let (st, v) = get_json(a.http, "/spiffe/nope");
    assert_eq!((st, v["error"].is_string()), (404, true), "{v}");
    let (st, v) = post_json(a.http, "/spiffe/status", "");
    assert_eq!((st, v["error"].is_string()), (405, true), "{v}");
}

#[test]
fn agent_down_503_on_every_endpoint_then_200_without_restart() {
    let mut s = stack(&[]);
    let (ma, mb) = (free_port(), free_port());
    let mut a = serve(&s, UID_A, ma, Some((mb, ID_B)));
    let b = serve(&s, UID_B, mb, Some((ma, ID_A)));
    wait_ready(a.http, Duration::from_secs(60));
    wait_ready(b.http, Duration::from_secs(60));
    let (_, chain) = http("GET", a.http, "/spiffe/svid/x509/chain", None);
    let (_, jwt) = get_json(a.http, "/spiffe/svid/jwt?audience=demo");
    let token = jwt["token"].as_str().unwrap().to_owned();

    // A uid without an entry: the agent answers, with no identity for it.
    let none = serve(&s, UID_NONE, free_port(), None);
    wait_for("the no-identity answer", Duration::from_secs(30), || {
        get_json(none.http, "/spiffe/status").1["agent_reachable"] == true
    });
    let (st, v) = get_json(none.http, "/spiffe/svid/x509");
    assert_eq!(st, 503, "{v}");
    let want = format!("the Workload API at {} gives this workload no identity: ", s.endpoint());
    assert!(v["error"].as_str().unwrap().starts_with(&want), "{v}");
    drop(none);

    s.kill_agent();
    wait_for("503 once the agent is gone", Duration::from_secs(30), || get_json(a.http, "/spiffe/status").0 == 503);
    for (method, path, body) in endpoints(&chain, &token) {
        let (st, b) = http(method, a.http, &path, body.as_deref());
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|_| panic!("{path}: {b}"));
        assert_eq!(st, 503, "{method} {path}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with("Workload API unreachable at "), "{path}: {v}");
    }
    let (_, v) = get_json(a.http, "/spiffe/status");
    assert_eq!((v["agent_reachable"].as_bool(), v["status"].as_str()), (Some(false), Some("unavailable")), "{v}");

    s.start_agent(None); // resumes from its data dir
    wait_ready(a.http, Duration::from_secs(60));
    wait_ready(b.http, Duration::from_secs(60));
    for (method, path, body) in endpoints(&chain, &token) {
        let (st, b) = http(method, a.http, &path, body.as_deref());
        assert_eq!(st, 200, "{method} {path}: {b}");
    }
    assert!(a.child.try_wait().unwrap().is_none(), "the service was not restarted");
}
