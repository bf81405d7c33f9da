//! Issue 13, acceptance 1: `spiffe-demo svid-exchange` on one host with Sigil. service-a (uid 1000) and
//! service-b (uid 1001) fetch their SVIDs and validate each other's; a peer certificate from another trust
//! domain, expired, self-signed or signed by an impostor CA is refused with its one-line reason and exit
//! code 1; a uid without an entry fails within its --timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

/// A CA of `td` (its own key), for signing the test's peer certificates.
fn ca(td: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = dn(&format!("{td} test CA"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
    (p, key)
}

/// A leaf with one URI SAN, valid from `from` to `to` (offsets from now), signed by `issuer` or by itself.
fn leaf(id: &str, from: i64, to: i64, issuer: Option<&(CertificateParams, KeyPair)>) -> String {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = dn("peer");
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::seconds(from);
    p.not_after = now + time::Duration::seconds(to);
    match issuer {
        Some((ip, ik)) => {
            let ca_pem = ip.self_signed(ik).unwrap().pem();
            let cert = p.signed_by(&key, &Issuer::from_params(ip, ik)).unwrap();
            cert.pem() + &ca_pem
        }
        None => p.self_signed(&key).unwrap().pem(),
    }
}

/// Runs service `name` as `uid` in `dir` and returns (exit code, stdout, stderr).
fn exchange(s: &Stack, uid: u32, name: &str, dir: &Path, timeout: u32) -> (i32, String, String) {
    let o = demo_as(
        s,
        uid,
        &["svid-exchange", "--name", name, "--dir", dir.to_str().unwrap(), "--timeout", &timeout.to_string()],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn service_a_and_b_exchange_and_validate_each_other() {
    let s = stack(&[]);
    let dir = shared_dir(s.dir.path(), "exchange");
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| exchange(&s, UID_A, "a", &dir, 60));
        let b = sc.spawn(|| exchange(&s, UID_B, "b", &dir, 60));
        (a.join().unwrap(), b.join().unwrap())
    });
    for ((code, out, err), me, peer, my_id, peer_id) in [(a, "a", "b", ID_A, ID_B), (b, "b", "a", ID_B, ID_A)] {
        assert_eq!(code, 0, "[{me}] stdout: {out}\nstderr: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("[{me}] Got SPIFFE ID: {my_id}"), "{out}");
        assert!(lines.contains(&format!("[{me}] Peer service-{peer} identity valid ✓").as_str()), "{out}");
        assert_eq!(lines.last().copied(), Some(format!("[{me}] Peer SPIFFE ID: {peer_id}").as_str()), "{out}");
        assert_eq!(err, "", "[{me}] stderr");
        // The published certificate is the service's own X509-SVID.
        let pem = std::fs::read_to_string(dir.join(format!("svid-{me}.pem"))).unwrap();
        let der = pem::parse_many(&pem).unwrap().remove(0).into_contents();
        let facts = spiffe_demo::validate::leaf_facts(&der).unwrap();
        assert_eq!(facts.uris, vec![my_id.to_owned()]);
    }
}

#[test]
fn bad_peer_certificates_are_refused_with_one_line_and_exit_1() {
    let s = stack(&[]);
    let other = ca("other.org");
    let impostor = ca(TD);
    let hour = 3600;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "foreign",
            leaf("spiffe://other.org/service-b", -60, hour, Some(&other)),
            "[a] Peer service-b refused: trust domain other.org is not trusted (bundles held for: example.org)",
        ),
        (
            "expired",
            leaf(ID_B, -2 * hour, -hour, Some(&impostor)),
            "[a] Peer service-b refused: certificate expired at ",
        ),
        (
            "self-signed",
            leaf(ID_B, -60, hour, None),
            "[a] Peer service-b refused: self-signed certificate: not issued by an authority of the trust bundle",
        ),
        (
            "impostor CA",
            leaf(ID_B, -60, hour, Some(&impostor)),
            "[a] Peer service-b refused: chain does not verify against the example.org bundle: not issued by any of its authorities",
        ),
    ];
    std::thread::scope(|sc| {
        for (name, pem, want) in &cases {
            let s = &s;
            sc.spawn(move || {
                let dir = shared_dir(s.dir.path(), &name.replace(' ', "-"));
                std::fs::write(dir.join("svid-b.pem"), pem).unwrap();
                let (code, out, err) = exchange(s, UID_A, "a", &dir, 60);
                assert_eq!(code, 1, "{name}: stdout {out} stderr {err}");
                assert!(out.starts_with(&format!("[a] Got SPIFFE ID: {ID_A}\n")), "{name}: {out}");
                assert!(!out.contains("identity valid"), "{name}: {out}");
                assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
                assert!(err.starts_with(want), "{name}: {err}");
            });
        }
    });
    // The expired case names the date the certificate expired (an hour ago, RFC 3339).
    let (_, pem, _) = &cases[1];
    let der = pem::parse_many(pem).unwrap().remove(0).into_contents();
    let f = spiffe_demo::validate::leaf_facts(&der).unwrap();
    assert!(f.not_after < spiffe_demo::validate::now_unix());
}

#[test]
fn a_uid_without_an_entry_fails_within_its_timeout() {
    let s = stack(&[]);
    let dir = shared_dir(s.dir.path(), "none");
    let t0 = Instant::now();
    let (code, out, err) = exchange(&s, UID_NONE, "a", &dir, 3);
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let want = format!("[a] no X509-SVID from the Workload API at {} within 3 s: ", s.endpoint());
    assert!(err.starts_with(&want), "{err}");
    assert!(!dir.join("svid-a.pem").exists());
}
