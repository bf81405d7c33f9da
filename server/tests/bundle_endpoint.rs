//! The federation bundle endpoint against real HTTPS clients (rustls + hyper, as a federated peer fetches):
//! https_spiffe checked against the bundle `bundle show` prints (then the latest fetched one, as a
//! self-serving peer does), https_web against a CA made here, file replacement, status codes, bounds, metrics,
//! and CA rotation with new keys published before they sign.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use sigil_core::bundle::Bundle;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::admin::{self as apb, svids_client::SvidsClient};
use sigil_server::state::now_unix;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn server_id() -> SpiffeId {
    SpiffeId::new("spiffe://example.org/spire/server").unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A federated peer's https_spiffe check: the server's chain must be an X509-SVID for exactly `expected`,
/// valid for `trust` (the bootstrap bundle, then the latest fetched one).
#[derive(Debug)]
struct SpiffePeerCheck {
    expected: SpiffeId,
    trust: Arc<Mutex<Bundle>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffePeerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity).chain(intermediates).map(|c| c.to_vec()).collect();
        let trust = self.trust.lock().unwrap().clone();
        let id = sigil_core::x509::verify_x509_svid(&chain, &trust, now.as_secs() as i64)
            .map_err(|e| rustls::Error::General(format!("not an SVID of the trusted bundle: {e}")))?;
        if id != self.expected {
            return Err(rustls::Error::General(format!("endpoint is {id}, expected {}", self.expected)));
        }
        Ok(ServerCertVerified::assertion())
    }
    sigil_tls::handshake_signatures!(algorithms);
}

/// Offers a client certificate it does not have, and remembers whether the server asked for one.
#[derive(Debug, Default)]
struct ClientCertAsked(AtomicBool);

impl ResolvesClientCert for ClientCertAsked {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }
    fn has_certs(&self) -> bool {
        true
    }
}

type Versions = &'static [&'static rustls::SupportedProtocolVersion];
const TLS12: Versions = &[&rustls::version::TLS12];
const BOTH: Versions = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn spiffe_client(
    expected: SpiffeId,
    trust: Arc<Mutex<Bundle>>,
    versions: Versions,
    asked: Arc<ClientCertAsked>,
) -> Arc<rustls::ClientConfig> {
    let p = provider();
    let algorithms = p.signature_verification_algorithms;
    let mut cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffePeerCheck { expected, trust, algorithms }))
        .with_client_cert_resolver(asked);
    // Offered as Go's client does; the server must pick http/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Every fetch a full handshake: a resumed session would skip the certificate being checked.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

fn web_client(roots_der: &[Vec<u8>], versions: Versions) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in roots_der {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every fetch a full handshake, so each one sees the certificate served now.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
    peer_chain: Vec<Vec<u8>>,
    tls_version: Option<rustls::ProtocolVersion>,
    alpn: Option<Vec<u8>>,
}

/// One HTTPS request to `addr` for host `localhost`; a TLS failure is `Err`.
async fn fetch(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, method: &str, path: &str) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let conn_info = tls.get_ref().1;
    let peer_chain = conn_info.peer_certificates().unwrap_or_default().iter().map(|c| c.to_vec()).collect();
    let tls_version = conn_info.protocol_version();
    let alpn = conn_info.alpn_protocol().map(<[u8]>::to_vec);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, String>(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .body(String::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.extend_from_slice(&data);
        }
    }
    Ok(Answer { status, headers, body: out, peer_chain, tls_version, alpn })
}

fn content_type(a: &Answer) -> &str {
    a.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `sigil-server bundle show -format spiffe`, as an operator bootstraps a peer.
async fn bundle_show_spiffe(s: &TestServer) -> Bundle {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args(["bundle", "show", "-format", "spiffe", "-socketPath"])
        .arg(s.socket())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Bundle::from_jwks_json(td(), &out.stdout).unwrap()
}

async fn metrics_text(s: &TestServer) -> String {
    let tcp = tokio::net::TcpStream::connect(s.server.health_addr.unwrap()).await.unwrap();
    let req = http::Request::get("/metrics").header(http::header::HOST, "t").body(String::new()).unwrap();
    let (status, body) =
        sigil_tls::http1::request(tcp, req, |_| sigil_tls::http1::BodyLimit { limit: 1 << 20, truncate: false })
            .await
            .unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

fn endpoint(s: &TestServer) -> SocketAddr {
    s.server.bundle_endpoint_addr.expect("bundle endpoint started")
}

fn uri_sans(cert_der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    let Some(san) = cert.subject_alternative_name().unwrap() else { return vec![] };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

fn same_but_hint(mut a: Bundle, b: &Bundle) -> Bundle {
    a.refresh_hint_secs = b.refresh_hint_secs;
    a
}

const SPIFFE_ENDPOINT: &str = "[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = 0\nrefresh_hint = \"2m\"\nprofile = \"https_spiffe\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_spiffe_serves_bundle_show_content_with_the_server_svid() {
    let s = TestServer::start(SPIFFE_ENDPOINT).await;
    let addr = endpoint(&s);
    let bootstrap = bundle_show_spiffe(&s).await;
    assert!(!bootstrap.x509_authorities.is_empty() && !bootstrap.jwt_authorities.is_empty());
    let trust = Arc::new(Mutex::new(bootstrap.clone()));
    let asked = Arc::new(ClientCertAsked::default());
    let client = spiffe_client(server_id(), trust.clone(), BOTH, asked.clone());

    let a = fetch(addr, client.clone(), "GET", "/").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(content_type(&a), "application/json");
    assert_eq!(a.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(a.tls_version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(!asked.0.load(Ordering::SeqCst), "the endpoint asked for a client certificate");
    // The peer is exactly the server's SVID: one URI SAN, spiffe://<td>/spire/server.
    assert_eq!(uri_sans(&a.peer_chain[0]), ["spiffe://example.org/spire/server"]);

    let served = Bundle::from_jwks_json(td(), &a.body).unwrap();
    assert_eq!(served.refresh_hint_secs, Some(120), "the configured hint, in seconds");
    assert_eq!(same_but_hint(served.clone(), &bootstrap), bootstrap, "the endpoint serves what bundle show prints");
    let doc: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let uses: BTreeSet<&str> = doc["keys"].as_array().unwrap().iter().map(|k| k["use"].as_str().unwrap()).collect();
    assert_eq!(uses, BTreeSet::from(["jwt-svid", "x509-svid"]));
    assert_eq!(doc["spiffe_sequence"].as_u64(), Some(bootstrap.sequence));
    assert_eq!(doc["spiffe_refresh_hint"].as_u64(), Some(120));

    // TLS 1.2 is served too (Mozilla intermediate), still without asking for a client certificate.
    let tls12 = fetch(addr, spiffe_client(server_id(), trust.clone(), TLS12, asked.clone()), "GET", "/").await.unwrap();
    assert_eq!((tls12.status, tls12.tls_version), (200, Some(rustls::ProtocolVersion::TLSv1_2)));
    assert_eq!(tls12.body, a.body);
    assert!(!asked.0.load(Ordering::SeqCst), "the endpoint asked for a client certificate over TLS 1.2");

    // HEAD: the GET answer without its body. The query is not part of the path.
    let head = fetch(addr, client.clone(), "HEAD", "/").await.unwrap();
    assert_eq!((head.status, content_type(&head), head.body.len()), (200, "application/json", 0));
    assert_eq!(head.headers[http::header::CONTENT_LENGTH].to_str().unwrap(), a.body.len().to_string());
    assert_eq!(fetch(addr, client.clone(), "GET", "/?x=1").await.unwrap().body, a.body);

    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/x", 404, "404 page not found\n"),
        ("GET", "/bundle.json", 404, "404 page not found\n"),
        ("POST", "/x", 404, "404 page not found\n"),
        ("POST", "/", 405, "method not allowed\n"),
        ("PUT", "/", 405, "method not allowed\n"),
        ("DELETE", "/", 405, "method not allowed\n"),
    ];
    for (method, path, status, body) in cases {
        let a = fetch(addr, client.clone(), method, path).await.unwrap();
        assert_eq!((a.status, String::from_utf8_lossy(&a.body).as_ref()), (*status, *body), "{method} {path}");
        if *status == 405 {
            assert_eq!(a.headers[http::header::ALLOW], "GET, HEAD");
        }
    }

    // A peer configured with another endpoint SPIFFE ID, or another trust domain's bundle, refuses it.
    let wrong_id = SpiffeId::new("spiffe://example.org/not-the-server").unwrap();
    let err = fetch(addr, spiffe_client(wrong_id, trust.clone(), BOTH, asked.clone()), "GET", "/").await.unwrap_err();
    assert!(err.contains("endpoint is spiffe://example.org/spire/server, expected"), "{err}");
    let other = Arc::new(Mutex::new(Bundle::new(TrustDomain::new("other.test").unwrap())));
    let err = fetch(addr, spiffe_client(server_id(), other, BOTH, asked), "GET", "/").await.unwrap_err();
    assert!(err.contains("not an SVID of the trusted bundle"), "{err}");

    let m = &s.server.state.metrics;
    assert_eq!(
        [200, 404, 405, 500].map(|c| m.bundle_endpoint_requests_of(c)),
        [4, 3, 3, 0],
        "GET, TLS 1.2 GET, HEAD, query GET; three 404; three 405"
    );
    let text = metrics_text(&s).await;
    for line in [
        "sigil_server_bundle_endpoint_requests_total{code=\"200\"} 4",
        "sigil_server_bundle_endpoint_requests_total{code=\"404\"} 3",
        "sigil_server_bundle_endpoint_requests_total{code=\"405\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_not_read_and_silent_clients_are_dropped() {
    let s = TestServer::start(SPIFFE_ENDPOINT).await;
    let addr = endpoint(&s);
    let trust = Arc::new(Mutex::new(bundle_show_spiffe(&s).await));
    let cfg = spiffe_client(server_id(), trust, BOTH, Arc::new(ClientCertAsked::default()));
    let connect = || {
        let cfg = cfg.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        }
    };
    async fn read_to_end_within(
        mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        limit: Duration,
    ) -> (String, Duration) {
        let start = Instant::now();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(limit, tls.read_to_end(&mut out)).await.expect("the server closed the connection");
        (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
    }

    // A POST announcing 100 MB gets its 405 at once, and the connection ends without the body being read.
    let mut post = connect().await;
    post.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\nabc").await.unwrap();
    // Nothing sent: closed after the header read timeout (10 s). Half a request head: the same.
    let silent = connect().await;
    let mut half = connect().await;
    half.write_all(b"GET / HTTP/1.1\r\nHost: local").await.unwrap();
    let (post, silent, half) = tokio::join!(
        read_to_end_within(post, Duration::from_secs(5)),
        read_to_end_within(silent, Duration::from_secs(20)),
        read_to_end_within(half, Duration::from_secs(20)),
    );
    assert!(post.0.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{:?}", post.0);
    assert!(post.1 < Duration::from_secs(3), "{:?}", post.1);
    for (what, (text, took)) in [("silent", silent), ("half head", half)] {
        assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(15), "{what}: closed after {took:?}");
        assert!(!text.contains("200 OK"), "{what}: {text:?}");
    }
    // The endpoint still answers.
    let a = fetch(addr, cfg, "GET", "/").await.unwrap();
    assert_eq!(a.status, 200);
    s.server.shutdown().await;
}

/// A CA and a `localhost` leaf signed by it, as PEM files for `serving_cert_file`.
struct WebPki {
    ca_der: Vec<u8>,
    leaf_der: Vec<u8>,
    leaf_pem: String,
    key_pem: String,
}

fn web_pki(name: &str) -> WebPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} bundle endpoint"));
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    WebPki {
        ca_der: ca_cert.der().to_vec(),
        leaf_der: leaf.der().to_vec(),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

fn web_endpoint(dir: &Path, interval: &str) -> String {
    format!(
        "[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = 0\nprofile = \"https_web\"\n\
         [federation.bundle_endpoint.serving_cert_file]\ncert_file_path = \"{}\"\nkey_file_path = \"{}\"\nfile_sync_interval = \"{interval}\"\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    )
}

fn write_pair(dir: &Path, cert_pem: &str, key_pem: &str) {
    // Written beside and renamed, as cert-manager's Secret volume swaps whole files.
    for (name, text) in [("tls.crt", cert_pem), ("tls.key", key_pem)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// Fetches until the endpoint presents `leaf_der` (within `limit`); returns how long that took.
async fn wait_for_leaf(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    leaf_der: &[u8],
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(a) = fetch(addr, cfg.clone(), "GET", "/").await
            && a.peer_chain.first().map(Vec::as_slice) == Some(leaf_der)
        {
            assert_eq!(a.status, 200);
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "the endpoint did not switch to the new certificate within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_web_serves_the_file_certificate_and_follows_file_changes() {
    let certs = tempfile::tempdir().unwrap();
    let first = web_pki("first");
    let second = web_pki("second");
    write_pair(certs.path(), &first.leaf_pem, &first.key_pem);
    let s = TestServer::start(&web_endpoint(certs.path(), "200ms")).await;
    let addr = endpoint(&s);

    // Web PKI checks (chain to the test CA, name `localhost`), TLS 1.3 and 1.2; the content is `bundle show`'s.
    let bootstrap = bundle_show_spiffe(&s).await;
    let both_roots = web_client(&[first.ca_der.clone(), second.ca_der.clone()], BOTH);
    for (versions, tls_version) in [(BOTH, rustls::ProtocolVersion::TLSv1_3), (TLS12, rustls::ProtocolVersion::TLSv1_2)]
    {
        let a = fetch(addr, web_client(std::slice::from_ref(&first.ca_der), versions), "GET", "/").await.unwrap();
        assert_eq!((a.status, content_type(&a), a.tls_version), (200, "application/json", Some(tls_version)));
        assert_eq!(a.peer_chain[0], first.leaf_der);
        let served = Bundle::from_jwks_json(td(), &a.body).unwrap();
        assert_eq!(served.refresh_hint_secs, Some(300), "default refresh hint 5m");
        assert_eq!(same_but_hint(served, &bootstrap), bootstrap);
    }
    // A client that does not trust the test CA refuses the endpoint.
    let err = fetch(addr, web_client(std::slice::from_ref(&second.ca_der), BOTH), "GET", "/").await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // The certificate replaced but not yet its key: unusable, the old pair stays served.
    std::fs::write(certs.path().join("tls.crt"), &second.leaf_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fetch(addr, both_roots.clone(), "GET", "/").await.unwrap().peer_chain[0], first.leaf_der);
    // Then the key: the new pair is served after the sync interval.
    write_pair(certs.path(), &second.leaf_pem, &second.key_pem);
    let took = wait_for_leaf(addr, &both_roots, &second.leaf_der, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "switched after {took:?} with a 200ms interval");
    // Garbage keeps the last good pair.
    write_pair(certs.path(), "not a certificate", &second.key_pem);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fetch(addr, both_roots.clone(), "GET", "/").await.unwrap().peer_chain[0], second.leaf_der);
    // And a good pair after garbage is picked up again.
    write_pair(certs.path(), &first.leaf_pem, &first.key_pem);
    wait_for_leaf(addr, &both_roots, &first.leaf_der, Duration::from_secs(5)).await;
    s.server.shutdown().await;
}

#[tokio::test]
async fn https_web_unusable_files_stop_the_start_naming_the_file() {
    let certs = tempfile::tempdir().unwrap();
    let p = web_pki("p");
    let q = web_pki("q");
    let crt = certs.path().join("tls.crt");
    let key = certs.path().join("tls.key");
    let cases: Vec<(Option<(&str, &str)>, String)> = vec![
        (None, format!("bundle endpoint serving_cert_file: {}: No such file or directory (os error 2)", crt.display())),
        (
            Some((&p.leaf_pem, &q.key_pem)),
            format!(
                "bundle endpoint serving_cert_file: the private key in {} does not belong to the certificate in {}",
                key.display(),
                crt.display()
            ),
        ),
        (
            Some((&p.leaf_pem, "")),
            format!(
                "bundle endpoint serving_cert_file: {}: no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block",
                key.display()
            ),
        ),
    ];
    for (files, want) in cases {
        let _ = std::fs::remove_file(&crt);
        if let Some((c, k)) = files {
            write_pair(certs.path(), c, k);
        }
        let dir = tempfile::tempdir().unwrap();
        let err = sigil_server::run::start(config(dir.path(), &web_endpoint(certs.path(), "1h"))).await.unwrap_err();
        assert_eq!(err.to_string(), want);
    }
}

/// A federated peer polling the endpoint through CA rotations (ca_ttl 1m: a new CA is prepared after 30 s
/// and activated after 50 s; same for JWT keys). Every SVID and JWT minted verifies against the document the
/// peer fetched before the minting, so new keys were served before they signed; the peer keeps
/// authenticating the endpoint with the latest document it fetched; sequences only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_new_keys_are_served_before_they_sign_with_higher_sequences() {
    let s = TestServer::start(
        "ca_ttl = \"1m\"\ndefault_x509_svid_ttl = \"30s\"\ndefault_jwt_svid_ttl = \"30s\"\n\
         [federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = 0\nrefresh_hint = \"5s\"\nprofile = \"https_spiffe\"\n"
    )
    .await;
    let addr = endpoint(&s);
    let trust = Arc::new(Mutex::new(bundle_show_spiffe(&s).await));
    let client = spiffe_client(server_id(), trust.clone(), BOTH, Arc::new(ClientCertAsked::default()));
    let mut svids = SvidsClient::new(s.admin().await);
    let mut sequences: Vec<u64> = vec![];
    let mut x509_signers: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut jwt_kids: BTreeSet<String> = BTreeSet::new();
    let mut max_authorities = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while x509_signers.len() < 2 || jwt_kids.len() < 2 {
        assert!(Instant::now() < deadline, "no rotation seen: signers {}, kids {jwt_kids:?}", x509_signers.len());
        // Fetch as the peer: authenticated with the previous document, then the new one is the trust.
        let a = fetch(addr, client.clone(), "GET", "/").await.unwrap();
        assert_eq!(a.status, 200);
        let doc = Bundle::from_jwks_json(td(), &a.body).unwrap();
        assert_eq!(doc.refresh_hint_secs, Some(5));
        sequences.push(doc.sequence);
        max_authorities = max_authorities.max(doc.x509_authorities.len());
        *trust.lock().unwrap() = doc.clone();

        let svid = svids
            .mint_x509_svid(apb::MintX509SvidRequest {
                csr: csr().0,
                spiffe_id: "spiffe://example.org/peer-check".into(),
                dns_names: vec![],
                ttl: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .svid
            .unwrap();
        let now = now_unix();
        sigil_core::x509::verify_x509_svid(&svid.cert_chain, &doc, now).unwrap_or_else(|e| {
            panic!("SVID signed by a CA the endpoint had not served before (seq {}): {e}", doc.sequence)
        });
        let leaf = x509_parser::parse_x509_certificate(&svid.cert_chain[0]).unwrap().1;
        let signer = doc
            .x509_authorities
            .iter()
            .find(|ca| {
                leaf.verify_signature(Some(x509_parser::parse_x509_certificate(ca).unwrap().1.public_key())).is_ok()
            })
            .expect("signer among the served authorities");
        x509_signers.insert(signer.clone());

        let jwt = svids
            .mint_jwt_svid(apb::MintJwtSvidRequest {
                spiffe_id: "spiffe://example.org/peer-check".into(),
                audience: vec!["peer".into()],
                ttl: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let lookup = |t: &TrustDomain| (t == &doc.trust_domain).then(|| doc.clone());
        let validated = sigil_core::jwt::validate_jwt_svid(&jwt.token, "peer", &lookup, now)
            .unwrap_or_else(|e| panic!("JWT signed by a key the endpoint had not served before: {e}"));
        assert_eq!(validated.spiffe_id.as_str(), "spiffe://example.org/peer-check");
        let header = jwt.token.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
        )
        .unwrap();
        jwt_kids.insert(header["kid"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(max_authorities >= 2, "the prepared CA was never served beside the active one");
    assert!(sequences.windows(2).all(|w| w[0] <= w[1]), "sequence went backwards: {sequences:?}");
    assert!(sequences.last() > sequences.first(), "sequence never grew: {sequences:?}");
    // The last served document is what the server publishes now (unless it just changed again).
    let last = Bundle::from_jwks_json(td(), &fetch(addr, client, "GET", "/").await.unwrap().body).unwrap();
    assert!(last.sequence >= *sequences.last().unwrap());
    s.server.shutdown().await;
}
