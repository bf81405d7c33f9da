//! mTLS with X509-SVIDs in rustls: each side presents its current SVID (picked per handshake, so a rotated
//! SVID is used at once) and verifies the other's chain against the bundle of its trust domain, then
//! authorizes its SPIFFE ID: the client an exact ID, the server any member of its own trust domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, header};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use spiffe::{SpiffeId, X509Svid};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::state::Shared;
use crate::validate::{self, Refusal, Role};

/// Who the verifier accepts once the chain verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorize {
    /// Exactly this SPIFFE ID (the client's view of the server it calls).
    Exactly(SpiffeId),
    /// Any SPIFFE ID of this workload's own trust domain (the server's view of its clients).
    OwnTrustDomain,
}

/// Errors of the mTLS side.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("no X509-SVID to present yet")]
    NoSvid,
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS handshake with {addr}: {source}")]
    HandshakeIo { addr: String, source: std::io::Error },
    #[error("the peer's X509-SVID is refused: {0}")]
    Refused(Refusal),
    #[error("HTTP exchange with {addr}: {reason}")]
    Http { addr: String, reason: String },
    #[error("{addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
}

impl MtlsError {
    /// A handshake error carrying this side's verifier refusal becomes [`MtlsError::Refused`].
    pub fn classified(self) -> Self {
        match &self {
            MtlsError::HandshakeIo { source, .. } => match refusal_of(source) {
                Some(r) => MtlsError::Refused(r),
                None => self,
            },
            _ => self,
        }
    }
}

/// The verifier's refusal inside a handshake error, if that is what failed.
fn refusal_of(e: &std::io::Error) -> Option<Refusal> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => o.0.downcast_ref::<Refusal>().cloned(),
        _ => None,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(svid: &X509Svid, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let certs = svid.cert_chain().iter().map(|c| CertificateDer::from(c.as_bytes().to_vec())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec()));
    let signing = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Presents the current SVID of [`Shared`].
#[derive(Debug)]
struct SvidResolver {
    shared: Arc<Shared>,
    provider: Arc<CryptoProvider>,
}

impl SvidResolver {
    fn key(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self.shared.current_svid()?;
        certified_key(&svid, &self.provider).ok()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl rustls::client::ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a peer's X509-SVID against the current bundles of [`Shared`] and authorizes its ID.
#[derive(Debug)]
struct SpiffeVerifier {
    shared: Arc<Shared>,
    authorize: Authorize,
    algs: WebPkiSupportedAlgorithms,
}

fn refuse(r: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

impl SpiffeVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<(), rustls::Error> {
        let bundles = self.shared.current_bundles().ok_or_else(|| {
            refuse(Refusal::Chain { td: "(none)".into(), reason: "no trust bundle from the Workload API yet".into() })
        })?;
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let id = validate::verify_chain(&chain, &bundles, now, role).map_err(refuse)?;
        match &self.authorize {
            Authorize::Exactly(want) => validate::authorize(&id, want).map_err(refuse),
            Authorize::OwnTrustDomain => {
                let own = self.shared.current_svid().map(|s| s.spiffe_id().trust_domain().clone());
                match own {
                    Some(td) if id.is_member_of(&td) => Ok(()),
                    own => Err(refuse(Refusal::ForeignTrustDomain {
                        peer: id.trust_domain_name().to_owned(),
                        ours: own.map(|t| t.to_string()).unwrap_or_else(|| "(no SVID yet)".into()),
                    })),
                }
            }
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, Role::Server).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, Role::Client).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The server side: presents this SVID, requires a client SVID of its own trust domain.
pub fn server_config(shared: Arc<Shared>) -> Result<rustls::ServerConfig, MtlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeVerifier {
        shared: shared.clone(),
        authorize: Authorize::OwnTrustDomain,
        algs: provider.signature_verification_algorithms,
    });
    let resolver = Arc::new(SvidResolver { shared, provider: provider.clone() });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client side: presents this SVID, accepts only the server `peer_id`.
pub fn client_config(shared: Arc<Shared>, peer_id: SpiffeId) -> Result<rustls::ClientConfig, MtlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeVerifier {
        shared: shared.clone(),
        authorize: Authorize::Exactly(peer_id),
        algs: provider.signature_verification_algorithms,
    });
    let resolver = Arc::new(SvidResolver { shared, provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The SPIFFE ID of a peer's verified leaf.
fn peer_id_of(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certs?.first()?;
    spiffe::cert::spiffe_id_from_der(leaf).ok()
}

/// The verified SPIFFE ID of the client of a request on the mTLS listener.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub SpiffeId);

/// Serves `router` on `listener` over mTLS, each request carrying the client's [`PeerIdentity`].
pub async fn serve(listener: TcpListener, config: rustls::ServerConfig, router: Router) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("spiffe-demo: mTLS accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return eprintln!("spiffe-demo: mTLS handshake from {from} refused: {e}"),
                Err(_) => return eprintln!("spiffe-demo: mTLS handshake from {from} timed out"),
            };
            let Some(peer) = peer_id_of(tls.get_ref().1.peer_certificates()) else {
                return eprintln!("spiffe-demo: mTLS client {from} has no SPIFFE ID");
            };
            let svc = TowerToHyperService::new(router.layer(axum::Extension(PeerIdentity(peer))));
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await {
                eprintln!("spiffe-demo: mTLS connection from {from}: {e}");
            }
        });
    }
}

/// A peer's mTLS address, from `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUrl {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for PeerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("https://").ok_or_else(|| format!("{s:?}: the peer URL is https://host:port"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{s:?}: no port"))?;
        let port = port.parse().map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("{s:?}: bad host"));
        }
        Ok(Self { host: host.to_owned(), port })
    }
}

impl std::fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// What a call over mTLS returns.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// The server's SPIFFE ID as verified in the handshake.
    pub server_id: String,
    pub status: u16,
    pub body: serde_json::Value,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// GET `path` on `peer` over mTLS with this SVID, accepting only `peer_id`, with an optional bearer token.
pub async fn call(
    shared: Arc<Shared>,
    peer: &PeerUrl,
    peer_id: SpiffeId,
    path: &str,
    bearer: Option<&str>,
) -> Result<CallResult, MtlsError> {
    let addr = peer.to_string();
    match tokio::time::timeout(CALL_TIMEOUT, call_inner(shared, peer, peer_id, path, bearer)).await {
        Ok(r) => r,
        Err(_) => Err(MtlsError::Timeout { addr, secs: CALL_TIMEOUT.as_secs() }),
    }
}

async fn call_inner(
    shared: Arc<Shared>,
    peer: &PeerUrl,
    peer_id: SpiffeId,
    path: &str,
    bearer: Option<&str>,
) -> Result<CallResult, MtlsError> {
    if shared.current_svid().is_none() {
        return Err(MtlsError::NoSvid);
    }
    let addr = peer.to_string();
    let config = client_config(shared, peer_id)?;
    let tcp = TcpStream::connect((peer.host.as_str(), peer.port))
        .await
        .map_err(|e| MtlsError::Connect { addr: addr.clone(), reason: e.to_string() })?;
    let name = ServerName::try_from(peer.host.clone())
        .map_err(|e| MtlsError::Connect { addr: addr.clone(), reason: e.to_string() })?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| MtlsError::HandshakeIo { addr: addr.clone(), source })?;
    let server_id = peer_id_of(tls.get_ref().1.peer_certificates()).map(|i| i.to_string()).unwrap_or_default();
    let http = |e: &dyn std::fmt::Display| MtlsError::Http { addr: addr.clone(), reason: e.to_string() };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header(header::HOST, peer.host.as_str());
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Body::empty()).map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20).await.map_err(|e| http(&e))?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(CallResult { server_id, status, body })
}

/// Binds a TCP listener (the error names the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::extract::Extension;
    use axum::routing::get;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    use spiffe::{TrustDomain, X509Bundle, X509BundleSet};

    /// A trust domain's CA: (name, params, key, DER).
    struct Ca(String, CertificateParams, KeyPair, Vec<u8>);

    fn ca(td: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, format!("{td} CA"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = p.self_signed(&key).unwrap().der().to_vec();
        Ca(td.to_owned(), p, key, der)
    }

    fn svid(ca: &Ca, path: &str) -> X509Svid {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(format!("spiffe://{}{path}", ca.0).try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = p.signed_by(&key, &Issuer::from_params(&ca.1, &ca.2)).unwrap();
        X509Svid::parse_from_der(leaf.der(), &key.serialize_der()).unwrap()
    }

    /// A [`Shared`] holding `svid` and trusting `cas`.
    fn shared(svid: X509Svid, cas: &[&Ca]) -> Arc<Shared> {
        let mut set = X509BundleSet::new();
        for c in cas {
            set.add_bundle(X509Bundle::from_x509_authorities(TrustDomain::new(&c.0).unwrap(), &[&c.3]).unwrap());
        }
        let s = Shared::new("unix:///test".into());
        s.update(Some(Arc::new(svid)), Arc::new(set));
        s
    }

    /// The server side answers the client's SPIFFE ID as it verified it.
    async fn server(s: Arc<Shared>) -> PeerUrl {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let router = Router::new().route(
            "/spiffe/peer/hello",
            get(|Extension(PeerIdentity(id)): Extension<PeerIdentity>| async move { id.to_string() }),
        );
        tokio::spawn(serve(l, server_config(s).unwrap(), router));
        PeerUrl { host: "127.0.0.1".into(), port }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[tokio::test]
    async fn mtls_verifies_and_authorizes_both_sides() {
        let (ex, other) = (ca("example.org"), ca("other.org"));
        // The server trusts both (federated) but admits clients of its own trust domain only.
        let peer = server(shared(svid(&ex, "/b"), &[&ex, &other])).await;
        let hello = "/spiffe/peer/hello";

        let a = shared(svid(&ex, "/a"), &[&ex]);
        let r = call(a.clone(), &peer, id("spiffe://example.org/b"), hello, None).await.unwrap();
        assert_eq!((r.status, r.server_id.as_str()), (200, "spiffe://example.org/b"));
        assert_eq!(r.body, serde_json::json!("spiffe://example.org/a"), "the server saw the client's ID");

        let e = call(a, &peer, id("spiffe://example.org/x"), hello, None).await.unwrap_err().classified();
        assert_eq!(
            e.to_string(),
            "the peer's X509-SVID is refused: peer is spiffe://example.org/b, not the authorized spiffe://example.org/x"
        );

        // A client of another trust domain: its handshake or request fails, the handler is not reached.
        let foreign = shared(svid(&other, "/a"), &[&ex, &other]);
        let e = call(foreign, &peer, id("spiffe://example.org/b"), hello, None).await.unwrap_err();
        assert!(matches!(e, MtlsError::HandshakeIo { .. } | MtlsError::Http { .. }), "{e}");

        // A client trusting only its own domain refuses the server: no bundle for example.org.
        let lonely = shared(svid(&other, "/a"), &[&other]);
        let e = call(lonely, &peer, id("spiffe://example.org/b"), hello, None).await.unwrap_err().classified();
        assert_eq!(
            e.to_string(),
            "the peer's X509-SVID is refused: trust domain example.org is not trusted (bundles held for: other.org)"
        );
    }

    /// (URL, Ok((host, port)) or Err(part of the message)).
    type Case = (&'static str, Result<(&'static str, u16), &'static str>);

    #[test]
    fn peer_urls() {
        let cases: &[Case] = &[
            ("https://demo-b:8443", Ok(("demo-b", 8443))),
            ("https://127.0.0.1:9000/", Ok(("127.0.0.1", 9000))),
            ("https://[::1]:9000", Ok(("::1", 9000))),
            ("http://demo-b:8443", Err("the peer URL is https://host:port")),
            ("https://demo-b", Err("no port")),
            ("https://demo-b:x", Err("bad port")),
            ("https://:1", Err("bad host")),
        ];
        for (s, want) in cases {
            match (s.parse::<PeerUrl>(), want) {
                (Ok(u), Ok((h, p))) => {
                    assert_eq!((u.host.as_str(), u.port), (*h, *p), "{s}");
                    assert_eq!(u.to_string().trim_end_matches('/'), s.trim_end_matches('/'));
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{s}: {e}"),
                (got, want) => panic!("{s}: got {got:?}, want {want:?}"),
            }
        }
    }
}
