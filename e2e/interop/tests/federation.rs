//! Issue 12, acceptance 1, 2, 3 and 5: two trust domains on one host (`a.test`, `b.test`), each a real
//! sigil-server (bundle endpoint on loopback) and a real sigil-agent, federated both ways (the config file's
//! `federates_with` for a.test -> b.test, `federation create` for b.test -> a.test), and go-spiffe workloads
//! in each (e2e/interop/go/cmd/workload) that authenticate each other across the trust domains:
//! - mTLS with workloadapi.X509Source and tlsconfig.AuthorizeID of the other's exact ID;
//! - a JWT-SVID of b.test validated through a.test's agent and by go-spiffe with a.test's JWT bundles;
//! - https_web with a CA made here (`ca_file_path`);
//! - b.test rotating its CA (ca_ttl 1m, hint 1s) twice while the exchange keeps working;
//! - go-spiffe's federation.FetchBundle against Sigil's endpoint, and Sigil against federation.NewHandler.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod fed_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, ok, run, wait_for};
use fed_common::*;
use serde_json::Value;

/// b.test -> a.test through the CLI (`federation create`, https_spiffe), with b.test's copy of a.test's bundle
/// bootstrapped first.
fn federate_b_to_a_by_cli(a: &Domain, b: &Domain, a_bep: u16) {
    b.bundle_set(a);
    let out = ok(b.cli(&[
        "federation",
        "create",
        "-trustDomain",
        A,
        "-bundleEndpointURL",
        &url(a_bep),
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://a.test/spire/server",
    ]));
    assert!(out.contains(A), "{out}");
}

/// Entries federated both ways, agents up, each workload given the other's bundle (as each server stores it:
/// `bundle list -id`), then the go-spiffe exchange: mTLS both authorized by exact ID, and a b.test JWT-SVID
/// validated in a.test.
fn exchange(a: &mut Domain, b: &mut Domain) {
    a.register(A_WEB, B, None);
    b.register(B_ECHO, A, None);
    a.start_agent();
    b.start_agent();
    let b_doc = b.bundle();
    let a_doc = a.bundle();
    wait_for("a.test's workload given b.test's bundle", Duration::from_secs(30), || sees(a, A_WEB, B, &b_doc));
    wait_for("b.test's workload given a.test's bundle", Duration::from_secs(30), || sees(b, B_ECHO, A, &a_doc));

    // mTLS: a.test serves and accepts exactly b.test's echo; b.test dials and accepts exactly a.test's web.
    let listen = format!("127.0.0.1:{}", free_port());
    let (_serve, lines) = spawn_lines(a.go(&["serve", "-id", B_ECHO, "-listen", &listen]));
    let (_, first) = lines.recv_timeout(Duration::from_secs(30)).expect("serve started");
    assert!(first.starts_with("serving mTLS"), "{first}");
    let dial = b.go_json(&["dial", "-id", A_WEB, "-addr", &listen]);
    // The server answers "<the ID it demands> <host> <peer ID it saw>".
    assert_eq!(dial["peer_id"], A_WEB, "{dial}");
    assert_eq!(dial["peer_saw_me_as"], B_ECHO, "{dial}");
    let (_, said) = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(said.starts_with(&format!("peer {B_ECHO} ")), "{said}");

    // The other way round: b.test serves, a.test dials.
    let listen = format!("127.0.0.1:{}", free_port());
    let (_serve_b, lines) = spawn_lines(b.go(&["serve", "-id", A_WEB, "-listen", &listen]));
    lines.recv_timeout(Duration::from_secs(30)).expect("serve started");
    let dial = a.go_json(&["dial", "-id", B_ECHO, "-addr", &listen]);
    assert_eq!((dial["peer_id"].as_str(), dial["peer_saw_me_as"].as_str()), (Some(B_ECHO), Some(A_WEB)), "{dial}");

    // JWT: minted in b.test for a.test's web, validated through a.test's agent and by go-spiffe.
    let minted = b.go_json(&["mint", "-id", B_ECHO, "-audience", A_WEB]);
    assert_eq!(minted["spiffe_id"], B_ECHO);
    let token = minted["token"].as_str().unwrap();
    let v = a.go_json(&["validate", "-id", B_ECHO, "-audience", A_WEB, "-token", token]);
    assert_eq!((v["remote_id"].as_str(), v["local_id"].as_str()), (Some(B_ECHO), Some(B_ECHO)), "{v}");
    assert_eq!(strings(&v["remote_audience"]), vec![A_WEB.to_owned()]);
    assert_eq!(strings(&v["jwt_bundles"]["spiffe://b.test"]), authorities(&b_doc).1, "{v}");
    assert_eq!(strings(&v["jwt_bundles"]["spiffe://a.test"]), authorities(&a_doc).1, "{v}");
    // A token for another audience is refused by both.
    let other = b.go_json(&["mint", "-id", B_ECHO, "-audience", "spiffe://a.test/other"]);
    let out =
        run(&mut a.go(&["validate", "-id", B_ECHO, "-audience", A_WEB, "-token", other["token"].as_str().unwrap()]));
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn federation_https_spiffe_both_ways_go_spiffe_mtls_and_jwt() {
    let t0 = Instant::now();
    let (a_bep, b_bep) = (free_port(), free_port());
    let mut b = Domain::start(B, "", &spiffe_endpoint(b_bep, "5s"));
    let mut a = Domain::start(A, "", &format!("{}{}", spiffe_endpoint(a_bep, "5s"), federates_spiffe(B, b_bep)));
    // SPIRE's bootstrap: bundle show -format spiffe | bundle set -format spiffe -id spiffe://b.test.
    a.bundle_set(&b);
    federate_b_to_a_by_cli(&a, &b, a_bep);
    // Both relationships fetch (config file: a.test; CLI: b.test).
    wait_for("a.test fetching b.test", Duration::from_secs(15), || {
        ok(a.cli(&["federation", "show", "-trustDomain", B])).lines().any(fetched)
    });
    let shown = ok(a.cli(&["federation", "show", "-trustDomain", B]));
    assert!(shown.contains(&url(b_bep)) && shown.contains("spiffe://b.test/spire/server"), "{shown}");
    wait_for("b.test fetching a.test", Duration::from_secs(15), || {
        ok(b.cli(&["federation", "show", "-trustDomain", A])).lines().any(fetched)
    });
    assert_eq!(authorities(&stored(&a, B).unwrap()), authorities(&b.bundle()));
    assert_eq!(authorities(&stored(&b, A).unwrap()), authorities(&a.bundle()));
    exchange(&mut a, &mut b);
    eprintln!("https_spiffe both ways: {:?}", t0.elapsed());
}

/// A CA and a `localhost` leaf signed by it: (CA PEM, leaf PEM, key PEM).
fn web_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "federation test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "bundle endpoint");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// Writes the PKI into `dir` and returns (ca path, cert path, key path).
fn write_pki(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, crt, key) = web_pki();
    let paths = (dir.join("ca.pem"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&paths.0, ca).unwrap();
    std::fs::write(&paths.1, crt).unwrap();
    std::fs::write(&paths.2, key).unwrap();
    paths
}

#[test]
fn federation_https_web_with_test_ca_go_spiffe_mtls_and_jwt() {
    let t0 = Instant::now();
    let pki = tempfile::tempdir().unwrap();
    let (ca, crt, key) = write_pki(pki.path());
    let (a_bep, b_bep) = (free_port(), free_port());
    let b_endpoint = format!(
        "[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = {b_bep}\nrefresh_hint = \"5s\"\nprofile = \"https_web\"\n\
         [federation.bundle_endpoint.serving_cert_file]\ncert_file_path = \"{}\"\nkey_file_path = \"{}\"\n",
        crt.display(),
        key.display()
    );
    let mut b = Domain::start(B, "", &b_endpoint);
    let a_fed = format!(
        "{}[federation.federates_with.\"{B}\"]\nbundle_endpoint_url = \"https://localhost:{b_bep}/\"\nbundle_endpoint_profile = \"https_web\"\nca_file_path = \"{}\"\n",
        spiffe_endpoint(a_bep, "5s"),
        ca.display()
    );
    let mut a = Domain::start(A, "", &a_fed);
    // https_web needs no bootstrap: a.test has b.test's bundle from the first fetch.
    let (got, _) = {
        let start = Instant::now();
        let mut got = None;
        wait_for("a.test fetching b.test over https_web", Duration::from_secs(15), || {
            got = stored(&a, B);
            got.is_some()
        });
        (got.unwrap(), start.elapsed())
    };
    assert_eq!(authorities(&got), authorities(&b.bundle()));
    federate_b_to_a_by_cli(&a, &b, a_bep);
    wait_for("b.test fetching a.test", Duration::from_secs(15), || {
        ok(b.cli(&["federation", "show", "-trustDomain", A])).lines().any(fetched)
    });
    exchange(&mut a, &mut b);
    eprintln!("https_web: {:?}", t0.elapsed());
}

#[test]
fn federation_rotation_of_b_ca_twice_mtls_keeps_working() {
    let t0 = Instant::now();
    let (a_bep, b_bep) = (free_port(), free_port());
    // ca_ttl 1m (the least the server takes): a CA is prepared (and published) at 30 s and signs from 50 s,
    // so two rotations take ~100 s after start; hint 1 s => a.test fetches every second.
    let mut b = Domain::start(B, "ca_ttl = \"1m\"\n", &spiffe_endpoint(b_bep, "1s"));
    let mut a = Domain::start(A, "", &format!("{}{}", spiffe_endpoint(a_bep, "5s"), federates_spiffe(B, b_bep)));
    a.bundle_set(&b);
    federate_b_to_a_by_cli(&a, &b, a_bep);
    a.register(A_WEB, B, None);
    // b.test's workload SVID lives 10 s: it is signed by each new CA within ~5 s of its activation.
    b.register(B_ECHO, A, Some(10));
    a.start_agent();
    b.start_agent();
    let b_doc = b.bundle();
    wait_for("a.test's workload given b.test's bundle", Duration::from_secs(30), || sees(&a, A_WEB, B, &b_doc));
    wait_for("b.test's workload SVID", Duration::from_secs(30), || {
        run(&mut b.go(&["check", "-id", B_ECHO, "-jwt=false", "-timeout", "5s"])).status.success()
    });

    // a.test's workload watches its X.509 bundles; it serves mTLS to exactly b.test's echo.
    let (_watch, updates) = spawn_lines(a.go(&["watchbundles", "-id", A_WEB, "-for", "170s"]));
    let listen = format!("127.0.0.1:{}", free_port());
    let (_serve, lines) = spawn_lines(a.go(&["serve", "-id", B_ECHO, "-listen", &listen]));
    lines.recv_timeout(Duration::from_secs(30)).expect("serve started");

    // b.test dials every ~second until its SVIDs have come from three CAs (two rotations), every dial must work.
    let mut dials: Vec<(f64, String)> = vec![]; // (time, issuing CA's key ID)
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let started = unix_now();
        let d = b.go_json(&["dial", "-id", A_WEB, "-addr", &listen, "-timeout", "10s"]);
        assert_eq!((d["peer_id"].as_str(), d["peer_saw_me_as"].as_str()), (Some(A_WEB), Some(B_ECHO)), "{d}");
        dials.push((started, d["my_authority_key_id"].as_str().unwrap().to_owned()));
        let cas: BTreeSet<&String> = dials.iter().map(|(_, k)| k).collect();
        if cas.len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "only {} CAs in 150 s: {dials:?}", cas.len());
        std::thread::sleep(Duration::from_millis(700));
    }

    // When each b.test CA first reached a.test's workload (its subject key ID in the b.test bundle).
    let mut first_seen: BTreeMap<String, f64> = BTreeMap::new();
    let mut b_bundles = 0;
    while let Ok((_, line)) = updates.try_recv() {
        let v: Value = serde_json::from_str(&line).unwrap();
        let at = v["received"].as_f64().unwrap();
        b_bundles += 1;
        for k in strings(&v["skids"]["spiffe://b.test"]) {
            first_seen.entry(k).or_insert(at);
        }
    }
    let mut first_used: Vec<(String, f64)> = vec![];
    for (at, k) in &dials {
        if first_used.iter().all(|(x, _)| x != k) {
            first_used.push((k.clone(), *at));
        }
    }
    assert_eq!(first_used.len(), 3);
    for (k, used) in &first_used[1..] {
        let seen =
            first_seen.get(k).unwrap_or_else(|| panic!("CA {k} never reached a.test's workload: {first_seen:?}"));
        assert!(seen < used, "CA {k} used by b.test at {used}, reached a.test's workload only at {seen}");
        eprintln!("b.test CA {k}: at a.test's workload {:.1} s before b.test's workload used it", used - seen);
    }
    assert!(b_bundles >= 3, "{b_bundles} bundle updates");
    eprintln!("rotation: {} dials, all good, {:?}", dials.len(), t0.elapsed());
}

#[test]
fn go_spiffe_federation_fetch_bundle_and_new_handler_interop() {
    let t0 = Instant::now();
    // go-spiffe's client against Sigil's https_spiffe endpoint.
    let b_bep = free_port();
    let b = Domain::start(B, "", &spiffe_endpoint(b_bep, "2m"));
    let doc = b.bundle();
    let local = b.dir.path().join("b.json");
    std::fs::write(&local, doc.to_string()).unwrap();
    let mut fetch = Command::new(go_workload());
    fetch.args(["fetchbundle", "-id", "spiffe://b.test/spire/server", "-url", &url(b_bep), "-bundle"]).arg(&local);
    let got: Value = serde_json::from_str(&ok(run(&mut fetch))).unwrap();
    let (x509, jwt) = authorities(&doc);
    assert_eq!(got["trust_domain"], "spiffe://b.test");
    assert_eq!(strings(&got["x509"]), x509);
    assert_eq!(strings(&got["jwt"]), jwt);
    assert_eq!(got["sequence"], doc["spiffe_sequence"]);
    assert_eq!(got["refresh_hint"].as_f64(), Some(120.0));
    // A wrong endpoint ID is refused by go-spiffe.
    let mut wrong = Command::new(go_workload());
    wrong.args(["fetchbundle", "-id", "spiffe://b.test/not-the-server", "-url", &url(b_bep), "-bundle"]).arg(&local);
    let out = run(&mut wrong);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spiffe://b.test/spire/server"), "{out:?}");

    // Sigil's client against go-spiffe's handler (https_web, a CA made here, ca_file_path).
    let pki = tempfile::tempdir().unwrap();
    let (ca, crt, key) = write_pki(pki.path());
    let peer_port = free_port();
    let mut serve = Command::new(go_workload());
    serve
        .args(["bundleserve", "-id", "spiffe://c.test", "-listen", &format!("127.0.0.1:{peer_port}"), "-cert"])
        .arg(&crt)
        .arg("-key")
        .arg(&key);
    let (_peer, lines) = spawn_lines(serve);
    let (_, served) = lines.recv_timeout(Duration::from_secs(10)).expect("go-spiffe bundle endpoint");
    let served: Value = serde_json::from_str(&served).unwrap();
    let fed = format!(
        "[federation.federates_with.\"c.test\"]\nbundle_endpoint_url = \"https://localhost:{peer_port}/\"\nbundle_endpoint_profile = \"https_web\"\nca_file_path = \"{}\"\n",
        ca.display()
    );
    let a = Domain::start(A, "", &fed);
    let mut got = None;
    wait_for("a.test fetching c.test from go-spiffe's handler", Duration::from_secs(15), || {
        got = stored(&a, "c.test");
        got.is_some()
    });
    let got = got.unwrap();
    let (x509, jwt) = authorities(&got);
    assert_eq!(x509, strings(&served["x509"]));
    assert_eq!(jwt, strings(&served["jwt"]));
    assert_eq!(jwt, vec!["go-peer-key-1".to_owned()]);
    assert_eq!(got["spiffe_sequence"], 7, "{got}");
    let shown = ok(a.cli(&["federation", "show", "-trustDomain", "c.test"]));
    assert!(shown.lines().any(fetched), "{shown}");
    eprintln!("go-spiffe interop: {:?}", t0.elapsed());
}
