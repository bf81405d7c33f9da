//! Two-trust-domain federation tests: servers that federate, peers made in the test for faults a real
//! peer cannot make, and ways to watch the fetcher (state, admin API, CLI, metrics).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sigil_core::TrustDomain;
use sigil_core::bundle::Bundle;
use sigil_proto::admin::{
    self as apb, bundles_client::BundlesClient, federation_relationship::Profile,
    trust_domains_client::TrustDomainsClient,
};
use sigil_server::federation::FetchStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TestServer;

pub const A: &str = "a.test";
pub const B: &str = "b.test";

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// `[federation.bundle_endpoint]` with https_spiffe on loopback.
pub fn spiffe_endpoint(port: u16, hint: &str) -> String {
    format!(
        "[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = {port}\nrefresh_hint = \"{hint}\"\nprofile = \"https_spiffe\"\n"
    )
}

/// `[federation.federates_with."<td>"]` with https_spiffe.
pub fn federates_spiffe(td: &str, url: &str, endpoint_id: &str) -> String {
    format!(
        "[federation.federates_with.\"{td}\"]\nbundle_endpoint_url = \"{url}\"\nbundle_endpoint_profile = \"https_spiffe\"\nendpoint_spiffe_id = \"{endpoint_id}\"\n"
    )
}

pub fn endpoint_url(s: &TestServer) -> String {
    format!("https://127.0.0.1:{}/", s.server.bundle_endpoint_addr.expect("bundle endpoint").port())
}

pub fn server_id(td: &str) -> String {
    format!("spiffe://{td}/spire/server")
}

/// `bundle set` through the admin API, as an operator bootstraps https_spiffe.
pub async fn bootstrap(on: &TestServer, bundle: &Bundle) {
    BundlesClient::new(on.admin().await)
        .set_federated_bundle(apb::SetFederatedBundleRequest {
            bundle: Some(sigil_server::api::convert::bundle_to_pb(bundle)),
        })
        .await
        .unwrap();
}

pub fn relationship(td: &str, url: &str, endpoint_id: Option<&str>) -> apb::FederationRelationship {
    apb::FederationRelationship {
        trust_domain: td.into(),
        bundle_endpoint_url: url.into(),
        profile: Some(match endpoint_id {
            Some(id) => Profile::HttpsSpiffe(apb::HttpsSpiffeProfile { endpoint_spiffe_id: id.into() }),
            None => Profile::HttpsWeb(apb::HttpsWebProfile {}),
        }),
        ..Default::default()
    }
}

/// Creates relationships through the admin API, as the CLI and the operator do; every one must succeed.
pub async fn create_relationships(on: &TestServer, rels: Vec<apb::FederationRelationship>) {
    let results = TrustDomainsClient::new(on.admin().await)
        .batch_create_federation_relationship(apb::BatchCreateFederationRelationshipRequest {
            federation_relationships: rels,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for r in results {
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(0), "{:?}", r.status);
    }
}

/// The fetcher's status as the admin API reports it.
pub async fn api_status(on: &TestServer, td: &str) -> Result<apb::FederationStatus, tonic::Status> {
    let mut statuses = TrustDomainsClient::new(on.admin().await)
        .list_federation_status(apb::ListFederationStatusRequest { trust_domain: td.into() })
        .await?
        .into_inner()
        .statuses;
    Ok(statuses.remove(0))
}

pub fn status(on: &TestServer, name: &str) -> Option<FetchStatus> {
    on.server.state.federation.status(&td(name)).map(|(_, s)| s)
}

pub fn stored(on: &TestServer, name: &str) -> Option<Bundle> {
    on.server.state.federated_bundle(&td(name))
}

/// Same authorities (as sets), whatever the sequence and hint.
pub fn same_keys(x: &Bundle, y: &Bundle) -> bool {
    let mut a = x.clone();
    let mut b = y.clone();
    for v in [&mut a, &mut b] {
        v.x509_authorities.sort();
        v.jwt_authorities.sort_by(|p, q| p.key_id.cmp(&q.key_id));
        for j in &mut v.jwt_authorities {
            j.expires_at = 0;
        }
    }
    a.x509_authorities == b.x509_authorities && a.jwt_authorities == b.jwt_authorities
}

/// Polls `f` every 50 ms until it gives `Some`, at most `limit`; returns the value and how long it took.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a failure whose text contains `part`; returns the status and how long it took.
pub async fn wait_for_error(on: &TestServer, name: &str, part: &str, limit: Duration) -> (FetchStatus, Duration) {
    let start = Instant::now();
    loop {
        let s = status(on, name);
        if let Some(s) = &s
            && s.consecutive_failures > 0
            && s.last_error.contains(part)
        {
            return (s.clone(), start.elapsed());
        }
        assert!(start.elapsed() < limit, "{name}: no error containing {part:?} within {limit:?}; status {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn metrics_text(s: &TestServer) -> String {
    let tcp = tokio::net::TcpStream::connect(s.server.health_addr.unwrap()).await.unwrap();
    let req = http::Request::get("/metrics").header(http::header::HOST, "t").body(String::new()).unwrap();
    let (status, body) =
        sigil_tls::http1::request(tcp, req, |_| sigil_tls::http1::BodyLimit { limit: 1 << 20, truncate: false })
            .await
            .unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// The value of the metric line starting with `prefix` (name and labels), if present.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Runs the `sigil-server` binary against `on`'s admin socket: (success, stdout, stderr).
pub async fn cli(on: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args(args)
        .arg("-socketPath")
        .arg(on.socket())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ----- peers made by the test -----

/// A CA made by the test. With `spiffe_td`, it is a SPIFFE signing CA (URI SAN `spiffe://<td>`) that
/// issues X509-SVIDs; without, a Web PKI CA that issues host certificates.
pub struct TestCa {
    pub der: Vec<u8>,
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(spiffe_td: Option<&str>) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Distinct names: two CAs with one name make webpki try the wrong one (BadSignature, not UnknownIssuer).
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        p.distinguished_name.push(rcgen::DnType::CommonName, format!("sigil federation test CA {n}"));
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        if let Some(td) = spiffe_td {
            p.subject_alt_names = vec![rcgen::SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
        }
        let cert = p.self_signed(&key).unwrap();
        Self { der: cert.der().to_vec(), pem: cert.pem(), issuer: rcgen::Issuer::new(p, key) }
    }

    /// An X509-SVID for `id` (leaf checks of the X509-SVID spec) and its PKCS#8 key.
    pub fn svid(&self, id: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "svid");
        p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = p.signed_by(&key, &self.issuer).unwrap();
        (vec![leaf.der().to_vec()], key.serialize_der())
    }

    /// A Web PKI host certificate for `names` and its PKCS#8 key.
    pub fn host(&self, names: &[&str]) -> (Vec<Vec<u8>>, Vec<u8>, String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = p.signed_by(&key, &self.issuer).unwrap();
        (vec![leaf.der().to_vec()], key.serialize_der(), leaf.pem(), key.serialize_pem())
    }

    /// The bundle of `td` with this CA as its only X.509 authority.
    pub fn bundle(&self, td_name: &str, sequence: u64, hint: Option<u64>) -> Bundle {
        Bundle {
            trust_domain: td(td_name),
            x509_authorities: vec![self.der.clone()],
            jwt_authorities: vec![],
            sequence,
            refresh_hint_secs: hint,
        }
    }
}

/// What a test peer does with a request for `path`.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These exact bytes (a whole HTTP/1.1 response), then the connection is closed.
    Raw(Vec<u8>),
    /// Nothing: the connection stays open and silent.
    Hang,
}

/// An HTTP/1.1 response; without `content_length` the body ends when the connection closes.
pub fn response(status: &str, content_type: &str, body: &[u8], content_length: bool) -> Reply {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
    if content_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Reply::Raw(out)
}

pub fn redirect(status: &str, location: &str) -> Reply {
    Reply::Raw(
        format!("HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    )
}

pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// An HTTPS peer on loopback presenting `chain` and answering by `handler` (keyed by request path).
pub async fn https_peer(chain: Vec<Vec<u8>>, key_pkcs8: Vec<u8>, handler: Handler) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                match handler(&path) {
                    Reply::Raw(bytes) => {
                        let _ = tls.write_all(&bytes).await;
                        let _ = tls.shutdown().await;
                    }
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(tls);
                    }
                }
            });
        }
    });
    addr
}

/// A peer that accepts TCP connections and never says anything (no TLS either).
pub async fn silent_tcp_peer() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}
