//! SPIFFE mTLS for the agent API.
//!
//! The server presents its own X509-SVID (`spiffe://<td>/spire/server`) and *optionally* verifies a client
//! SVID: attestation happens before the agent has one, every other RPC requires it (checked per RPC from the
//! connection's [`PeerIdentity`]). Both sides verify against the **current** bundle, read from a
//! `watch` channel, so CA rotation needs no restart. Verification is `sigil_core::x509::verify_x509_svid`
//! (RFC 5280 path validation plus the SVID rules), not web PKI name checks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::DistinguishedName;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sigil_core::SpiffeId;
use sigil_core::bundle::Bundle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// The live trust bundle of the own trust domain.
pub type BundleWatch = watch::Receiver<Arc<Bundle>>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid certificate or key: {0}")]
    Key(String),
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn now_unix(now: UnixTime) -> i64 {
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

fn chain_of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Vec<Vec<u8>> {
    std::iter::once(end_entity).chain(intermediates).map(|c| c.as_ref().to_vec()).collect()
}

fn bad_cert(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::General(format!("SPIFFE verification failed: {e}"))
}

/// A certificate chain and its private key, ready for rustls.
pub fn certified_key(chain_der: &[Vec<u8>], pkcs8_key_der: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key_der.to_vec()));
    let signing_key = provider().key_provider.load_private_key(key).map_err(|e| TlsError::Key(e.to_string()))?;
    let certs = chain_der.iter().map(|c| CertificateDer::from(c.clone())).collect();
    Ok(Arc::new(CertifiedKey::new(certs, signing_key)))
}

/// The server's current certificate; swapped on rotation without touching live connections.
#[derive(Debug, Default)]
pub struct ServerCertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl ServerCertSlot {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(key);
        }
    }
}

impl ResolvesServerCert for ServerCertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|s| s.clone())
    }
}

/// Accepts any client that presents no certificate, or an X509-SVID valid for the current bundle.
#[derive(Debug)]
struct OptionalSvidClientVerifier {
    bundle: BundleWatch,
    /// Taken from the provider once: building a provider per handshake signature allocates.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for OptionalSvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.bundle.borrow().clone();
        sigil_core::x509::verify_x509_svid(&chain_of(end_entity, intermediates), &bundle, now_unix(now))
            .map_err(bad_cert)?;
        Ok(ClientCertVerified::assertion())
    }
    crate::handshake_signatures!(algorithms);
}

/// How a client checks the server it dials.
#[derive(Debug, Clone)]
pub enum ServerCheck {
    /// The server must present an SVID for exactly this ID, valid for the current bundle.
    SpiffeId { expected: SpiffeId, bundle: BundleWatch },
    /// Bootstrap without a trust bundle (SPIRE's `insecure_bootstrap`): anything is accepted. Only for the
    /// first attestation; the agent then pins the bundle it received.
    InsecureBootstrap,
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    check: ServerCheck,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            ServerCheck::InsecureBootstrap => Ok(ServerCertVerified::assertion()),
            ServerCheck::SpiffeId { expected, bundle } => {
                let bundle = bundle.borrow().clone();
                let got =
                    sigil_core::x509::verify_x509_svid(&chain_of(end_entity, intermediates), &bundle, now_unix(now))
                        .map_err(bad_cert)?;
                if &got != expected {
                    return Err(bad_cert(format!("server presented {got}, expected {expected}")));
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }
    crate::handshake_signatures!(algorithms);
}

#[doc(hidden)]
pub use rustls as __rustls;

/// The handshake-signature methods of a rustls certificate verifier (`ServerCertVerifier` or
/// `ClientCertVerifier`), checked with the provider's algorithms in the named field. Every verifier here
/// decides only whom to trust and checks signatures the standard way, so that part has one home:
/// `impl ServerCertVerifier for V { fn verify_server_cert(..) {..} sigil_tls::handshake_signatures!(algorithms); }`
#[macro_export]
macro_rules! handshake_signatures {
    ($field:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &$crate::__rustls::pki_types::CertificateDer<'_>,
            dss: &$crate::__rustls::DigitallySignedStruct,
        ) -> Result<$crate::__rustls::client::danger::HandshakeSignatureValid, $crate::__rustls::Error> {
            $crate::__rustls::crypto::verify_tls12_signature(message, cert, dss, &self.$field)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &$crate::__rustls::pki_types::CertificateDer<'_>,
            dss: &$crate::__rustls::DigitallySignedStruct,
        ) -> Result<$crate::__rustls::client::danger::HandshakeSignatureValid, $crate::__rustls::Error> {
            $crate::__rustls::crypto::verify_tls13_signature(message, cert, dss, &self.$field)
        }
        fn supported_verify_schemes(&self) -> Vec<$crate::__rustls::SignatureScheme> {
            self.$field.supported_schemes()
        }
    };
}

pub mod h2_authority;
pub mod http1;
pub mod socket_dir;

pub use h2_authority::{AuthorityFixStream, unix_incoming, unix_server};
pub use socket_dir::{SocketDirError, prepare_socket_dir, prepare_socket_dir_with};

/// rustls server config for the agent API.
pub fn server_config(cert: Arc<ServerCertSlot>, bundle: BundleWatch) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(OptionalSvidClientVerifier { bundle, algorithms }))
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// rustls client config; `client_cert` is the agent's SVID once it has one.
pub fn client_config(
    check: ServerCheck,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier { check, algorithms }));
    let mut cfg = match client_cert {
        Some(ck) => builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck))),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// What the server knows about the peer of a connection: its address and, if it presented one, the
/// SPIFFE ID of its (already verified) X509-SVID and the leaf's serial number in hex.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub addr: Option<SocketAddr>,
    pub spiffe_id: Option<SpiffeId>,
    pub serial_hex: Option<String>,
}

/// A server-side TLS connection carrying its [`PeerIdentity`] into tonic handlers.
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow client never blocks others),
/// yielding connections for `tonic::transport::Server::serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "agent API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "agent API TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "agent API TLS handshake timed out");
                        return;
                    }
                };
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
                let (spiffe_id, serial_hex) = match leaf {
                    Some(der) => (sigil_core::x509::leaf_spiffe_id(&der).ok(), serial_hex(&der)),
                    None => (None, None),
                };
                let conn = TlsConn { inner: tls, peer: PeerIdentity { addr: Some(addr), spiffe_id, serial_hex } };
                let _ = conn_tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The certificate serial number as lowercase hex (what the datastore records per agent).
pub fn serial_hex(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex::encode(cert.tbs_certificate.raw_serial()))
}

/// A tonic channel to `addr` over SPIFFE TLS. The URI is only a label; the connector dials `addr`.
pub fn channel(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<tonic::transport::Channel, TlsError> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let endpoint = tonic::transport::Endpoint::from_static("http://sigil-server")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let svc = tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("sigil-server").map_err(|e| io::Error::other(e.to_string()))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(svc))
}
