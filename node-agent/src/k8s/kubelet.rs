//! The kubelet's `/pods` endpoint: an HTTP/1.1 client (hyper over a TCP or rustls stream) and a pod-list
//! cache that all attestations share (SPIRE's `kubeletclient.go` and `podlistfetcher.go`).
//!
//! ## Single flight
//! At most one request is in flight. A caller that needs a list newer than the one it looked at queues
//! on one async mutex; whoever holds it fetches, and the callers queued behind it take that result
//! instead of fetching again. Fetch starts are spaced by `poll_retry_interval`, so a burst of calls for
//! a container the kubelet has not reported yet costs one request per interval, not one per call. Each
//! body is parsed once into an indexed [`PodList`] shared through an `Arc`, and a body equal to the
//! previous one is not parsed again.
//!
//! ## Cache hits
//! A container found in a list younger than [`POD_LIST_MAX_AGE`] is answered without a request: container
//! IDs are random and never move between pods, so a hit names the right pod; what may be stale is
//! mutable pod metadata (labels), for at most that long (SPIRE re-fetches whenever it looks a container
//! up; a node agent answering every SVID fetch with a multi-megabyte request is what this avoids). A miss
//! always fetches. Not `reload_interval` (1 m, SPIRE's period for re-reading the kubelet CA and client
//! certificate): a label change must not wait a minute to show in a new call's selectors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode};
use rustls::RootCertStore;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sigil_tls::http1::{BodyLimit, Http1Error};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::cgroup::ContainerInfo;
use super::pod::{Lookup, PodError, PodList};

/// How the agent reaches the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The read-only port: plain HTTP to 127.0.0.1, no authentication.
    ReadOnly,
    /// The secure port.
    Secure { verify: TlsVerify, auth: KubeletAuth },
}

/// How the kubelet's serving certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsVerify {
    /// `skip_kubelet_verification`: anything is accepted (kubeadm/kind serving certificates are not signed
    /// by the cluster CA, kubeadm#1223).
    Skip,
    /// Chain to the CAs in this PEM file; the name is checked against the node name when there is one.
    CaFile(PathBuf),
}

/// How the agent authenticates to the kubelet's secure port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletAuth {
    Anonymous,
    /// `Authorization: Bearer <token>`, the file re-read for every request (the kubelet rotates it).
    Token(PathBuf),
    /// A client certificate and its key (PEM).
    ClientCert {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// The resolved client and polling settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletSettings {
    pub transport: Transport,
    /// Where the secure port is reached and what its certificate must name; `None`: 127.0.0.1, the
    /// chain verified without a name check (hostNetwork agents; serving certificates rarely name an IP).
    pub node_name: Option<String>,
    pub port: u16,
    pub max_poll_attempts: u32,
    pub poll_retry_interval: Duration,
    /// How long a fetched list answers hits, and how often the CA and client certificate are re-read.
    pub reload_interval: Duration,
    /// Per request: connect, TLS, headers and body.
    pub request_timeout: Duration,
    /// Larger bodies are refused (110 pods are a few MB; this bounds a misbehaving endpoint).
    pub max_body_bytes: usize,
}

pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// Why one fetch of the pod list failed (shared by the callers that waited for it, hence `Clone`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve or connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with the kubelet: {0}")]
    Tls(String),
    #[error("{what}: {reason}")]
    File { what: &'static str, reason: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the kubelet answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the pod list is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Parse(#[from] PodError),
}

/// Why an attestation lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// SPIRE's DeadlineExceeded: the kubelet answered, the container was never in its list.
    #[error("no selectors found after max poll attempts ({attempts})")]
    NotFound { attempts: u32 },
    /// SPIRE's Unavailable: the last fetch failed.
    #[error("kubelet unavailable: {0}")]
    Unavailable(FetchError),
    #[error(transparent)]
    Pod(#[from] PodError),
}

/// Request and parse counts (they show that lookups share fetches and parses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KubeletStats {
    /// Requests sent to the kubelet.
    pub requests: u64,
    /// Bodies parsed into a pod list.
    pub parses: u64,
}

/// How long a fetched pod list answers lookups of containers it holds without asking the kubelet again.
pub const POD_LIST_MAX_AGE: Duration = Duration::from_secs(5);

/// The kubelet client with its TLS configuration (rebuilt every `reload_interval`).
#[derive(Debug)]
pub struct KubeletClient {
    settings: KubeletSettings,
    tls: Mutex<Option<(Arc<rustls::ClientConfig>, Instant)>>,
}

impl KubeletClient {
    pub fn new(settings: KubeletSettings) -> Self {
        Self { settings, tls: Mutex::new(None) }
    }

    pub fn settings(&self) -> &KubeletSettings {
        &self.settings
    }

    /// `GET /pods`: the body of a 200 answer.
    pub async fn get_pods(&self) -> Result<Vec<u8>, FetchError> {
        let timeout = self.settings.request_timeout;
        tokio::time::timeout(timeout, self.get_pods_inner()).await.map_err(|_| FetchError::Timeout(timeout))?
    }

    async fn get_pods_inner(&self) -> Result<Vec<u8>, FetchError> {
        let port = self.settings.port;
        let host = match (&self.settings.transport, &self.settings.node_name) {
            (Transport::Secure { .. }, Some(name)) => name.as_str(),
            _ => "127.0.0.1",
        };
        let mut req = Request::get("/pods")
            .header(HOST, format!("{host}:{port}"))
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, "sigil-agent");
        if let Transport::Secure { auth: KubeletAuth::Token(path), .. } = &self.settings.transport {
            let token = crate::attestation::read_token(path)
                .map_err(|e| FetchError::File { what: "token_path", reason: e.to_string() })?;
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| FetchError::File { what: "token_path", reason: "not a valid header value".into() })?;
            req = req.header(AUTHORIZATION, value);
        }
        let req = req.body(String::new()).map_err(|e| FetchError::Http(e.to_string()))?;
        let tcp = connect(host, port).await?;
        match &self.settings.transport {
            Transport::ReadOnly => self.send(tcp, req).await,
            Transport::Secure { .. } => {
                let config = self.tls_config()?;
                let server_name = match &self.settings.node_name {
                    Some(name) => ServerName::try_from(name.clone())
                        .map_err(|e| FetchError::Tls(format!("node name {name:?}: {e}")))?,
                    None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                };
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| FetchError::Tls(e.to_string()))?;
                self.send(tls, req).await
            }
        }
    }

    async fn send<I>(&self, io: I, req: Request<String>) -> Result<Vec<u8>, FetchError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limit = self.settings.max_body_bytes;
        // A short excerpt of an error is enough to tell a 401/403 (RBAC, #3152) from a proxy page.
        let body_limit = |status| match status {
            StatusCode::OK => BodyLimit { limit, truncate: false },
            _ => BodyLimit { limit: 4096, truncate: true },
        };
        let (status, body) = sigil_tls::http1::request(io, req, body_limit).await.map_err(|e| match e {
            Http1Error::TooLarge { limit } => FetchError::TooLarge { limit },
            Http1Error::Http(e) => FetchError::Http(e.to_string()),
        })?;
        if status != StatusCode::OK {
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(FetchError::Status { status: status.as_u16(), body: excerpt.trim().to_owned() });
        }
        Ok(body)
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, FetchError> {
        let mut slot = self.tls.lock().map_err(|_| FetchError::Tls("TLS config lock poisoned".into()))?;
        if let Some((cfg, at)) = slot.as_ref()
            && at.elapsed() < self.settings.reload_interval
        {
            return Ok(cfg.clone());
        }
        let cfg = Arc::new(build_tls_config(&self.settings)?);
        *slot = Some((cfg.clone(), Instant::now()));
        Ok(cfg)
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, FetchError> {
    let addr = format!("{host}:{port}");
    let fail = |reason: String| FetchError::Connect { addr: addr.clone(), reason };
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|e| fail(e.to_string()))?.collect();
    let mut last = "no addresses".to_owned();
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(fail(last))
}

/// Reads a body up to `limit` bytes; over it: an error, or with `truncate` what was read.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_tls_config(settings: &KubeletSettings) -> Result<rustls::ClientConfig, FetchError> {
    let Transport::Secure { verify, auth } = &settings.transport else {
        return Err(FetchError::Tls("the read-only port does not use TLS".into()));
    };
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(e.to_string()))?;
    let builder = match verify {
        TlsVerify::Skip => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoNameVerifier { roots: None, algorithms }))
        }
        TlsVerify::CaFile(path) => {
            let roots = Arc::new(load_roots(path)?);
            match &settings.node_name {
                Some(_) => {
                    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| FetchError::Tls(e.to_string()))?;
                    builder.with_webpki_verifier(v)
                }
                None => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoNameVerifier { roots: Some(roots), algorithms })),
            }
        }
    };
    match auth {
        KubeletAuth::ClientCert { cert, key } => {
            let file = |what, p: &PathBuf| {
                std::fs::read(p).map_err(|e| FetchError::File { what, reason: format!("{}: {e}", p.display()) })
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&file("certificate_path", cert)?)
                .collect::<Result<_, _>>()
                .map_err(|e| FetchError::File { what: "certificate_path", reason: e.to_string() })?;
            let key = PrivateKeyDer::from_pem_slice(&file("private_key_path", key)?)
                .map_err(|e| FetchError::File { what: "private_key_path", reason: e.to_string() })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| FetchError::Tls(e.to_string()))
        }
        KubeletAuth::Anonymous | KubeletAuth::Token(_) => Ok(builder.with_no_client_auth()),
    }
}

fn load_roots(path: &PathBuf) -> Result<RootCertStore, FetchError> {
    let bad = |reason: String| FetchError::File { what: "kubelet_ca_path", reason };
    let pem = std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad(format!("{}: no certificate", path.display())));
    }
    Ok(roots)
}

/// A kubelet certificate check without the name check: the chain to `roots` when given (the agent talks
/// to 127.0.0.1, which serving certificates rarely name: AKS, #6146), or nothing at all
/// (`skip_kubelet_verification`). Handshake signatures are checked either way.
#[derive(Debug)]
struct NoNameVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }
    sigil_tls::handshake_signatures!(algorithms);
}

/// The latest fetch outcome: `seq` counts fetches; `list` is the last good list.
#[derive(Debug, Clone, Default)]
struct Latest {
    seq: u64,
    list: Option<(Arc<PodList>, Instant)>,
    /// Set when fetch `seq` failed.
    error: Option<FetchError>,
}

/// Held by the one caller fetching.
#[derive(Debug, Default)]
struct FetchSlot {
    last_start: Option<Instant>,
    /// The last body parsed, to skip parsing an unchanged list.
    last_body: Vec<u8>,
}

/// The shared, single-flight pod list.
#[derive(Debug)]
pub struct PodCache {
    client: KubeletClient,
    latest: Mutex<Latest>,
    fetch: tokio::sync::Mutex<FetchSlot>,
    requests: AtomicU64,
    parses: AtomicU64,
}

impl PodCache {
    pub fn new(settings: KubeletSettings) -> Self {
        Self {
            client: KubeletClient::new(settings),
            latest: Mutex::new(Latest::default()),
            fetch: tokio::sync::Mutex::new(FetchSlot::default()),
            requests: AtomicU64::new(0),
            parses: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &KubeletSettings {
        self.client.settings()
    }

    pub fn stats(&self) -> KubeletStats {
        KubeletStats { requests: self.requests.load(Ordering::Relaxed), parses: self.parses.load(Ordering::Relaxed) }
    }

    fn latest(&self) -> Latest {
        // A poisoned lock only means a panic elsewhere while cloning; the data is still consistent.
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The selector values for `info`: from the cached list if it is fresh and holds the container,
    /// otherwise from up to `max_poll_attempts` fetches spaced by `poll_retry_interval`, all within one
    /// deadline of `max_poll_attempts x poll_retry_interval` plus one request timeout (SPIRE's ~30 s): a
    /// kubelet that hangs on every request must not hold a Workload API call for attempts x timeout.
    pub async fn lookup(
        &self,
        info: &ContainerInfo,
        disable_container_selectors: bool,
    ) -> Result<Vec<String>, LookupError> {
        let latest = self.latest();
        let mut seen = latest.seq;
        if let Some((list, at)) = &latest.list
            && at.elapsed() < POD_LIST_MAX_AGE.min(self.settings().reload_interval)
            && let Lookup::Found(values) = list.lookup(info, disable_container_selectors)?
        {
            return Ok(values);
        }
        let attempts = self.settings().max_poll_attempts.max(1);
        let deadline = Instant::now()
            + self.settings().poll_retry_interval.saturating_mul(attempts)
            + self.settings().request_timeout;
        let mut last_error = None;
        for attempt in 1..=attempts {
            let Ok((seq, result)) = tokio::time::timeout_at(deadline.into(), self.fetch_after(seen)).await else {
                return Err(LookupError::Unavailable(
                    last_error.unwrap_or(FetchError::Timeout(self.settings().request_timeout)),
                ));
            };
            seen = seq;
            match result {
                Ok(list) => {
                    last_error = None;
                    if let Lookup::Found(values) = list.lookup(info, disable_container_selectors)? {
                        return Ok(values);
                    }
                    tracing::debug!(container_id = %info.container_id, attempt, "container not in the kubelet's pod list yet");
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "kubelet pod list fetch failed");
                    last_error = Some(e);
                }
            }
        }
        Err(match last_error {
            Some(e) => LookupError::Unavailable(e),
            None => LookupError::NotFound { attempts },
        })
    }

    /// A fetch outcome newer than `seen`: one that completed while this caller waited for the slot, or
    /// a new fetch (started no sooner than `poll_retry_interval` after the previous start).
    async fn fetch_after(&self, seen: u64) -> (u64, Result<Arc<PodList>, FetchError>) {
        let mut slot = self.fetch.lock().await;
        let latest = self.latest();
        if latest.seq > seen {
            return (latest.seq, outcome(&latest));
        }
        if let Some(start) = slot.last_start {
            tokio::time::sleep_until((start + self.settings().poll_retry_interval).into()).await;
        }
        let started = Instant::now();
        slot.last_start = Some(started);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = match self.client.get_pods().await {
            Ok(body) if body == slot.last_body && latest.list.is_some() => {
                Ok(latest.list.as_ref().map(|(l, _)| l.clone()).unwrap_or_default())
            }
            Ok(body) => {
                self.parses.fetch_add(1, Ordering::Relaxed);
                // A few MB of JSON: parsed off the async workers.
                let parsed = tokio::task::spawn_blocking(move || PodList::parse(&body).map(|l| (l, body))).await;
                match parsed {
                    Ok(Ok((list, body))) => {
                        slot.last_body = body;
                        Ok(Arc::new(list))
                    }
                    Ok(Err(e)) => Err(FetchError::Parse(e)),
                    Err(e) => Err(FetchError::Http(format!("parse task: {e}"))),
                }
            }
            Err(e) => Err(e),
        };
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.seq += 1;
        match &result {
            Ok(list) => {
                // Fresh from when it was asked for: what changed during the request may be missing.
                latest.list = Some((list.clone(), started));
                latest.error = None;
            }
            Err(e) => latest.error = Some(e.clone()),
        }
        (latest.seq, result)
    }
}

fn outcome(latest: &Latest) -> Result<Arc<PodList>, FetchError> {
    match (&latest.error, &latest.list) {
        (Some(e), _) => Err(e.clone()),
        (None, Some((list, _))) => Ok(list.clone()),
        (None, None) => Err(FetchError::Http("no pod list fetched".into())),
    }
}
