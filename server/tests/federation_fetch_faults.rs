//! Bundle endpoints that misbehave, made by the test (a real Sigil peer cannot make these faults): each is
//! refused with a clear error within the fetch bound, the last good bundle is never touched, and the server
//! keeps serving. The peers present X509-SVIDs of a test CA for `c.test`, whose bundle a.test stores
//! first, so the https_spiffe checks pass and the fault under test is the one reached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod fed_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fed_support::*;

const C: &str = "c.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_endpoints_are_refused_with_clear_errors_within_the_bound() {
    let ca = TestCa::new(Some(C));
    let good = ca.bundle(C, 5, Some(3600)).to_jwks_json();
    let big = vec![b' '; 2 * 1024 * 1024];
    let handler: Handler = Arc::new(move |path: &str| match path {
        "/bundle" => response("200 OK", "application/json", good.as_bytes(), true),
        "/old" => redirect("301 Moved Permanently", "/bundle"),
        "/garbage" => response("200 OK", "application/json", b"\x00\x01\x02 not json at all", true),
        "/html" => response(
            "200 OK",
            "text/html; charset=utf-8",
            b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>",
            true,
        ),
        "/big" => response("200 OK", "application/json", &big, true),
        "/bigstream" => response("200 OK", "application/json", &big, false),
        "/loop" => redirect("302 Found", "/loop"),
        "/hang" => Reply::Hang,
        _ => response("404 Not Found", "text/plain", b"not here\n", true),
    });
    let (chain, key) = ca.svid("spiffe://c.test/spire/server");
    let peer = https_peer(chain, key, handler).await;
    // A second host presenting another SVID of the same CA, and redirects to it and to plain http.
    let (chain, key) = ca.svid("spiffe://c.test/impostor");
    let impostor =
        https_peer(chain, key, Arc::new(|_: &str| response("200 OK", "application/json", b"{\"keys\":[]}", true)))
            .await;
    let (chain, key) = ca.svid("spiffe://c.test/spire/server");
    let redirector = https_peer(
        chain,
        key,
        Arc::new(move |path: &str| match path {
            "/elsewhere" => redirect("307 Temporary Redirect", &format!("https://127.0.0.1:{}/", impostor.port())),
            _ => redirect("301 Moved Permanently", &format!("http://127.0.0.1:{}/bundle", peer.port())),
        }),
    )
    .await;
    let silent = silent_tcp_peer().await;

    // https_web pointed at an SVID (with its CA as the trusted root, so the name check is what fails).
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca.pem).unwrap();
    let a = TestServer::start_td(
        A,
        &format!(
            "[federation.federates_with.\"hint.test\"]\nbundle_endpoint_url = \"https://127.0.0.1:{}/bundle\"\nbundle_endpoint_profile = \"https_web\"\nca_file_path = \"{}\"\n",
            peer.port(),
            ca_file.path().display()
        ),
    )
    .await;
    let bootstrap_bundle = ca.bundle(C, 1, None);
    bootstrap(&a, &bootstrap_bundle).await;

    let endpoint = Some("spiffe://c.test/spire/server");
    let at = |port: u16, path: &str| format!("https://127.0.0.1:{port}{path}");
    let cases: Vec<(&str, String, &str, Duration)> = vec![
        (
            "garbage.test",
            at(peer.port(), "/garbage"),
            "is not a SPIFFE bundle: bundle is not valid JSON",
            Duration::from_secs(3),
        ),
        (
            "html.test",
            at(peer.port(), "/html"),
            "is not a SPIFFE bundle: it is an HTML page (Content-Type text/html; charset=utf-8)",
            Duration::from_secs(3),
        ),
        ("big.test", at(peer.port(), "/big"), "is larger than 1048576 bytes (1 MiB); refused", Duration::from_secs(3)),
        (
            "bigstream.test",
            at(peer.port(), "/bigstream"),
            "is larger than 1048576 bytes (1 MiB); refused",
            Duration::from_secs(3),
        ),
        ("notfound.test", at(peer.port(), "/missing"), "answered HTTP 404: not here", Duration::from_secs(3)),
        ("loop.test", at(peer.port(), "/loop"), "redirected more than 3 times", Duration::from_secs(3)),
        (
            "plain.test",
            at(redirector.port(), "/plain"),
            "answered HTTP 301 without a usable Location: Location \"http://127.0.0.1:",
            Duration::from_secs(3),
        ),
        (
            "elsewhere.test",
            at(redirector.port(), "/elsewhere"),
            "the endpoint presented an X509-SVID for spiffe://c.test/impostor, but endpoint_spiffe_id is spiffe://c.test/spire/server",
            Duration::from_secs(3),
        ),
        ("hang-tls.test", at(peer.port(), "/hang"), "no complete answer within 10s", Duration::from_secs(13)),
        ("hang-tcp.test", at(silent.port(), "/"), "no complete answer within 10s", Duration::from_secs(13)),
    ];
    let mut rels: Vec<_> = cases.iter().map(|(td, url, _, _)| relationship(td, url, endpoint)).collect();
    // A redirect to the real bundle, with the same checks: followed.
    rels.push(relationship(C, &at(peer.port(), "/old"), endpoint));
    let created = Instant::now();
    create_relationships(&a, rels).await;

    let (s, _) =
        wait_for("c.test via a redirect", Duration::from_secs(3), || status(&a, C).filter(|s| s.last_success_at > 0))
            .await;
    assert_eq!(s.consecutive_failures, 0);
    let c = stored(&a, C).unwrap();
    assert_eq!((c.sequence, c.refresh_hint_secs), (5, Some(3600)), "the redirect target's bundle");

    let (s, _) = wait_for_error(&a, "hint.test", "maybe use https_spiffe", Duration::from_secs(3)).await;
    assert!(
        s.last_error.contains(
            "the certificate carries SPIFFE ID spiffe://c.test/spire/server: maybe use https_spiffe (bundle_endpoint_profile = \"https_spiffe\", endpoint_spiffe_id = \"spiffe://c.test/spire/server\")"
        ),
        "{}",
        s.last_error
    );
    assert!(s.last_error.contains("certificate not valid for name \"127.0.0.1\""), "{}", s.last_error);

    for (td, _, part, limit) in &cases {
        let (s, _) = wait_for_error(&a, td, part, *limit).await;
        let took = created.elapsed();
        eprintln!("{td}: refused after <= {took:?}: {}", s.last_error);
        if part.starts_with("no complete answer") {
            assert!(s.last_error_at - s.last_attempt_at >= 9, "timed out after the full 10 s: {s:?}");
        }
        assert!(stored(&a, td).is_none(), "{td}: nothing stored");
        assert!(s.last_success_at == 0, "{td}");
    }
    // The last good bundle was never touched by the faults, and the server still answers.
    assert_eq!(stored(&a, C).unwrap(), c);
    let text = metrics_text(&a).await;
    for (td, _, _, _) in &cases {
        let errors =
            metric(&text, &format!("sigil_server_federation_fetches_total{{trust_domain=\"{td}\",result=\"error\"}}"));
        assert!(errors.unwrap_or(0.0) >= 1.0, "{td}: {errors:?}");
    }
    let (ok, out, err) = cli(&a, &["federation", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("Found 12 federation relationships"), "{out}");
    a.server.shutdown().await;
}
