//! Fetching foreign bundles between two real Sigil servers in one process (issue 12 item 2): `a.test`
//! federates with `b.test`, whose bundle endpoint is item 1's. Bootstrap with `bundle set`, status in the
//! admin API, CLI and metrics, CA rotation picked up within the refresh bound, the peer down and back,
//! a wrong endpoint ID and another trust domain's bundle refused, https_web with a test CA, and relationships
//! made and deleted through the admin API taking effect without a restart. Faults a real peer cannot make
//! are in federation_fetch_faults.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod fed_support;

use std::time::{Duration, Instant};

use common::*;
use fed_support::*;
use sigil_server::state::{Change, now_unix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_spiffe_config_relationship_bootstrap_fetch_status_cli_metrics() {
    let b = TestServer::start_td(B, &spiffe_endpoint(0, "2s")).await;
    let b_url = endpoint_url(&b);
    let a = TestServer::start_td(A, &federates_spiffe(B, &b_url, &server_id(B))).await;

    // No local copy of b.test's bundle yet: SPIRE's error, in the status and the admin API; nothing stored.
    let spire_words = "can't perform SPIFFE Authentication: local copy of bundle not found";
    let (s, took) = wait_for_error(&a, B, spire_words, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "first fetch at start, took {took:?}");
    assert!(s.waiting_for_local_bundle);
    assert!(stored(&a, B).is_none());
    let api = api_status(&a, B).await.unwrap();
    assert_eq!((api.source.as_str(), api.bundle_endpoint_profile.as_str()), ("config", "https_spiffe"));
    assert_eq!(api.endpoint_spiffe_id, "spiffe://b.test/spire/server");
    assert!(api.last_error.contains("bundle set -id spiffe://b.test"), "says what to do: {}", api.last_error);
    assert!(!api.has_bundle);

    // The operator bootstraps as in SPIRE: b's `bundle show -format spiffe` into a's `bundle set`.
    let (ok, doc, err) = cli(&b, &["bundle", "show", "-format", "spiffe"]).await;
    assert!(ok, "{err}");
    let path = a.dir.path().join("b.json");
    std::fs::write(&path, doc).unwrap();
    let set_at = Instant::now();
    let (ok, _, err) =
        cli(&a, &["bundle", "set", "-id", "spiffe://b.test", "-format", "spiffe", "-path", path.to_str().unwrap()])
            .await;
    assert!(ok, "{err}");
    // The stored bundle wakes the fetcher at once (not at its next retry), and the fetch succeeds.
    let (s, _) = wait_for("a fetches b's bundle", Duration::from_secs(5), || {
        status(&a, B).filter(|s| s.last_success_at > 0 && s.consecutive_failures == 0)
    })
    .await;
    assert!(set_at.elapsed() < Duration::from_secs(3), "woken by bundle set: {:?}", set_at.elapsed());
    let got = stored(&a, B).unwrap();
    assert!(same_keys(&got, &b.bundle()), "a stores b's published keys");
    assert_eq!((got.sequence, got.refresh_hint_secs), (b.bundle().sequence, Some(2)), "the served sequence and hint");
    // Hint 2 s: the next fetch in 1 s (hint / 4, at least 1 s).
    assert!(s.next_refresh_at - s.last_success_at <= 1, "{s:?}");
    assert!(!s.waiting_for_local_bundle);
    assert!(s.last_error.contains(spire_words), "the last error stays visible: {s:?}");

    // CLI: show, list (the config file's relationship, which SPIRE does not list), refresh.
    let (ok, out, err) = cli(&a, &["federation", "show", "-trustDomain", "b.test"]).await;
    assert!(ok, "{err}");
    for line in [
        "Found a federation relationship with trust domain b.test:",
        "Bundle endpoint profile   : https_spiffe",
        "Endpoint SPIFFE ID        : spiffe://b.test/spire/server",
        "Source                    : config file",
        "Fetch status              : ok",
        &format!("Stored bundle             : sequence {}", got.sequence),
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
    let (ok, out, _) = cli(&a, &["federation", "list", "-output", "json"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v = &v["federation_relationships"];
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["trust_domain"], "b.test");
    assert_eq!(v[0]["status"]["source"], "config");
    assert_eq!(v[0]["status"]["consecutive_failures"], 0);
    assert!(v[0]["status"]["last_success_at"].as_i64().unwrap() > 0);
    let (ok, out, err) = cli(&a, &["federation", "refresh", "-id", "spiffe://b.test"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("Bundle refreshed: the bundle of b.test is unchanged (sequence {})", got.sequence));
    let (ok, _, err) = cli(&a, &["federation", "refresh", "-id", "nope.test"]).await;
    assert!(!ok);
    assert_eq!(err.trim(), "error: not found: there is no federation relationship with trust domain nope.test");

    // Metrics: successes and the bootstrap-time failures, by trust domain.
    let text = metrics_text(&a).await;
    let ok_count = metric(&text, "sigil_server_federation_fetches_total{trust_domain=\"b.test\",result=\"ok\"}");
    let err_count = metric(&text, "sigil_server_federation_fetches_total{trust_domain=\"b.test\",result=\"error\"}");
    assert!(ok_count.unwrap() >= 2.0 && err_count.unwrap() >= 1.0, "{text}");
    let last =
        metric(&text, "sigil_server_federation_last_success_timestamp_seconds{trust_domain=\"b.test\"}").unwrap();
    assert!((last - now_unix() as f64).abs() < 10.0, "{last}");
    assert_eq!(metric(&text, "sigil_server_federation_consecutive_failures{trust_domain=\"b.test\"}"), Some(0.0));
    a.server.shutdown().await;
    b.server.shutdown().await;
}

/// b.test rotates its CA (ca_ttl 1m: a new CA and JWT key are published 30 s in, the old ones dropped
/// when they expire) and serves hint 1 s; every new b.test bundle reaches a.test's store, and a.test
/// announces it to the agents' streams (`Change::FederatedBundles`), within the refresh bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_ca_rotation_reaches_the_fetching_side_within_the_refresh_bound() {
    let b = TestServer::start_td(
        B,
        &format!(
            "ca_ttl = \"1m\"\ndefault_x509_svid_ttl = \"30s\"\ndefault_jwt_svid_ttl = \"30s\"\n{}",
            spiffe_endpoint(0, "1s")
        ),
    )
    .await;
    let a = TestServer::start_td(A, "").await;
    // The operator's way: the relationship with its bootstrap bundle, in one admin API call.
    let mut rel = relationship(B, &endpoint_url(&b), Some(&server_id(B)));
    rel.trust_domain_bundle = Some(sigil_server::api::convert::bundle_to_pb(&b.bundle()));
    create_relationships(&a, vec![rel]).await;
    wait_for("first fetch", Duration::from_secs(5), || status(&a, B).filter(|s| s.last_success_at > 0)).await;

    let mut announced = a.server.state.subscribe();
    let mut b_bundles = b.server.state.bundle_watch();
    b_bundles.borrow_and_update();
    let mut delays = vec![];
    let deadline = Instant::now() + Duration::from_secs(100);
    while delays.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, b_bundles.changed()).await.expect("b.test's bundle changes").unwrap();
        let published = Instant::now();
        let new = b_bundles.borrow_and_update().clone();
        let (_, took) = wait_for("a.test stores b.test's new bundle", Duration::from_secs(5), || {
            stored(&a, B).filter(|s| s.sequence >= new.sequence && same_keys(s, &new))
        })
        .await;
        // Hint 1 s: a poll every second, plus the fetch.
        assert!(took < Duration::from_secs(3), "b.test sequence {} reached a.test after {took:?}", new.sequence);
        // The store was announced (what the agents' sync streams and, later, the Workload API follow).
        let mut seen = false;
        while let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(10), announced.recv()).await {
            seen |= c == Change::FederatedBundles;
        }
        assert!(seen, "no FederatedBundles announcement for b.test sequence {}", new.sequence);
        delays.push((new.sequence, new.x509_authorities.len(), published.elapsed()));
    }
    let s = status(&a, B).unwrap();
    assert!(s.last_change_at > 0 && s.consecutive_failures == 0, "{s:?}");
    eprintln!("b.test bundle changes (sequence, CAs, delay to a.test): {delays:?}");
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_down_keeps_last_bundle_reports_error_and_recovers() {
    // A fixed port, so b.test comes back where a.test looks for it.
    let b = TestServer::start_td(B, &spiffe_endpoint(0, "2s")).await;
    let port = b.server.bundle_endpoint_addr.unwrap().port();
    let b = b.restart(B, &spiffe_endpoint(port, "2s")).await;
    let url = endpoint_url(&b);
    let a = TestServer::start_td(A, &federates_spiffe(B, &url, &server_id(B))).await;
    bootstrap(&a, &b.bundle()).await;
    wait_for("first fetch", Duration::from_secs(5), || status(&a, B).filter(|s| s.last_success_at > 0)).await;
    let last_good = stored(&a, B).unwrap();

    let TestServer { dir, server } = b;
    server.shutdown().await;
    let (s, took) = wait_for_error(&a, B, &format!("cannot connect to 127.0.0.1:{port}"), Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Retries back off but never wait longer than a healthy poll (1 s for hint 2 s).
    assert!(s.next_refresh_at - s.last_error_at <= 1, "{s:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = status(&a, B).unwrap();
    assert!(s.consecutive_failures >= 2, "kept retrying: {s:?}");
    assert_eq!(stored(&a, B).unwrap(), last_good, "the last good bundle stays in use");
    let (_, out, _) = cli(&a, &["federation", "show", "-trustDomain", "b.test"]).await;
    assert!(out.contains("Fetch status              : failing ("), "{out}");
    assert!(out.contains(&format!("Last error                : cannot connect to 127.0.0.1:{port}")), "{out}");
    let text = metrics_text(&a).await;
    assert!(metric(&text, "sigil_server_federation_consecutive_failures{trust_domain=\"b.test\"}").unwrap() >= 2.0);
    assert!(
        metric(&text, "sigil_server_federation_fetches_total{trust_domain=\"b.test\",result=\"error\"}").unwrap()
            >= 2.0
    );

    // b.test back on the same port with the same CA: a.test recovers on its own.
    let back_at = now_unix();
    let server = sigil_server::run::start(config_td(dir.path(), B, &spiffe_endpoint(port, "2s"))).await.unwrap();
    let b = TestServer { dir, server };
    let (_, took) = wait_for("recovery", Duration::from_secs(5), || {
        status(&a, B).filter(|s| s.consecutive_failures == 0 && s.last_success_at >= back_at)
    })
    .await;
    assert!(took < Duration::from_secs(3), "recovered after {took:?}");
    assert!(same_keys(&stored(&a, B).unwrap(), &b.bundle()));
    let text = metrics_text(&a).await;
    assert_eq!(metric(&text, "sigil_server_federation_consecutive_failures{trust_domain=\"b.test\"}"), Some(0.0));
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_endpoint_id_and_another_trust_domains_bundle_are_refused() {
    let b = TestServer::start_td(B, &spiffe_endpoint(0, "2s")).await;
    let url = endpoint_url(&b);
    let a = TestServer::start_td(A, "").await;
    let bootstrap_bundle = b.bundle();
    bootstrap(&a, &bootstrap_bundle).await;
    let created = Instant::now();
    create_relationships(
        &a,
        vec![
            relationship(B, &url, Some("spiffe://b.test/not-the-server")),
            // b.test's real endpoint named as the endpoint of other.test: it serves b.test's bundle.
            relationship("other.test", &url, Some(&server_id(B))),
        ],
    )
    .await;
    let (_, took) = wait_for_error(
        &a,
        B,
        "the endpoint presented an X509-SVID for spiffe://b.test/spire/server, but endpoint_spiffe_id is spiffe://b.test/not-the-server",
        Duration::from_secs(5),
    )
    .await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (s, _) = wait_for_error(
        &a,
        "other.test",
        "the bundle is of trust domain b.test, not other.test: X.509 authority 0 carries SPIFFE ID spiffe://b.test",
        Duration::from_secs(5),
    )
    .await;
    assert!(s.last_error.starts_with("the bundle served by https://127.0.0.1:"), "{}", s.last_error);
    assert!(created.elapsed() < Duration::from_secs(3));
    assert!(stored(&a, "other.test").is_none(), "nothing stored for other.test");
    assert_eq!(stored(&a, B).unwrap(), *bootstrap_bundle, "b.test's bundle untouched");
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_web_peer_with_a_ca_made_by_the_test() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(None);
    let other_ca = TestCa::new(None);
    let (_, _, leaf_pem, key_pem) = ca.host(&["localhost"]);
    std::fs::write(certs.path().join("tls.crt"), leaf_pem).unwrap();
    std::fs::write(certs.path().join("tls.key"), key_pem).unwrap();
    std::fs::write(certs.path().join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(certs.path().join("other-ca.pem"), &other_ca.pem).unwrap();
    let b = TestServer::start_td(
        B,
        &format!(
            "[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = 0\nrefresh_hint = \"2s\"\nprofile = \"https_web\"\n\
             [federation.bundle_endpoint.serving_cert_file]\ncert_file_path = \"{}\"\nkey_file_path = \"{}\"\n",
            certs.path().join("tls.crt").display(),
            certs.path().join("tls.key").display()
        ),
    )
    .await;
    let port = b.server.bundle_endpoint_addr.unwrap().port();
    let web = |td: &str, host: &str, ca_file: &str| {
        format!(
            "[federation.federates_with.\"{td}\"]\nbundle_endpoint_url = \"https://{host}:{port}/\"\nbundle_endpoint_profile = \"https_web\"\nca_file_path = \"{}\"\n",
            certs.path().join(ca_file).display()
        )
    };
    let a = TestServer::start_td(
        A,
        &format!(
            "{}{}{}",
            web(B, "localhost", "ca.pem"),
            web("c.test", "localhost", "other-ca.pem"),
            web("d.test", "127.0.0.1", "ca.pem")
        ),
    )
    .await;
    // No bootstrap needed: the Web PKI (here the test's CA) authenticates the endpoint.
    let (s, took) = wait_for("https_web fetch", Duration::from_secs(5), || {
        status(&a, B).filter(|s| s.last_success_at > 0 && s.consecutive_failures == 0)
    })
    .await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(s.last_error.is_empty(), "{s:?}");
    assert!(same_keys(&stored(&a, B).unwrap(), &b.bundle()));
    assert_eq!(api_status(&a, B).await.unwrap().bundle_endpoint_profile, "https_web");
    // Another CA: unknown issuer. The right CA but the URL's host not in the certificate: the name check.
    let (s, _) = wait_for_error(&a, "c.test", "UnknownIssuer", Duration::from_secs(5)).await;
    assert!(s.last_error.starts_with(&format!("TLS handshake with localhost:{port} failed")), "{}", s.last_error);
    let (s, _) =
        wait_for_error(&a, "d.test", "certificate not valid for name \"127.0.0.1\"", Duration::from_secs(5)).await;
    assert!(!s.last_error.contains("https_spiffe"), "no SPIFFE ID, no hint: {}", s.last_error);
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[tokio::test]
async fn unusable_ca_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let toml = format!(
        "[federation.federates_with.\"b.test\"]\nbundle_endpoint_url = \"https://b.test/\"\nbundle_endpoint_profile = \"https_web\"\nca_file_path = \"{}\"\n",
        missing.display()
    );
    let err = sigil_server::run::start(config_td(dir.path(), A, &toml)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "config field `federation.federates_with.\"b.test\".ca_file_path`: ca_file_path {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

/// The operator's path: a relationship created through the admin API is fetched at once, without a
/// restart (SPIRE re-reads every 10 s), and a deleted one stops being fetched at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_relationship_starts_fetching_without_restart_and_delete_stops_it() {
    let b = TestServer::start_td(B, &spiffe_endpoint(0, "1s")).await;
    let a = TestServer::start_td(A, "").await;
    let (ok, doc, _) = cli(&b, &["bundle", "show", "-format", "spiffe"]).await;
    assert!(ok);
    let path = a.dir.path().join("b.json");
    std::fs::write(&path, doc).unwrap();
    let url = endpoint_url(&b);
    let created = Instant::now();
    let (ok, _, err) = cli(
        &a,
        &[
            "federation",
            "create",
            "-trustDomain",
            "b.test",
            "-bundleEndpointURL",
            &url,
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://b.test/spire/server",
            "-trustDomainBundlePath",
            path.to_str().unwrap(),
            "-trustDomainBundleFormat",
            "spiffe",
        ],
    )
    .await;
    assert!(ok, "{err}");
    wait_for("fetch after create", Duration::from_secs(3), || status(&a, B).filter(|s| s.last_success_at > 0)).await;
    assert!(created.elapsed() < Duration::from_secs(2), "{:?}", created.elapsed());
    assert_eq!(api_status(&a, B).await.unwrap().source, "api");
    let (_, out, _) = cli(&a, &["federation", "show", "-trustDomain", "b.test"]).await;
    assert!(out.contains("Source                    : admin API"), "{out}");
    // Polled every second (hint 1 s).
    let served = |b: &TestServer| b.server.state.metrics.bundle_endpoint_requests_of(200);
    let before = served(&b);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(served(&b) >= before + 2, "{} -> {}", before, served(&b));

    let (ok, _, err) = cli(&a, &["federation", "delete", "-id", "b.test"]).await;
    assert!(ok, "{err}");
    wait_for("fetcher gone", Duration::from_secs(1), || status(&a, B).is_none().then_some(())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_delete = served(&b);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served(&b), after_delete, "no fetch after the delete");
    assert!(stored(&a, B).is_some(), "the bundle stays, as in SPIRE");
    let text = metrics_text(&a).await;
    assert!(
        !text.contains("federation_fetches_total{trust_domain=\"b.test\""),
        "series of a deleted relationship:\n{text}"
    );
    assert_eq!(api_status(&a, B).await.unwrap_err().code(), tonic::Code::NotFound);
    let (ok, _, err) = cli(&a, &["federation", "refresh", "-id", "b.test"]).await;
    assert!(!ok && err.contains("there is no federation relationship with trust domain b.test"), "{err}");
    a.server.shutdown().await;
    b.server.shutdown().await;
}
