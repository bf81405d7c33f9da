//! The SPIFFE Workload API on a Unix socket (checklist D and E).
//!
//! Every accepted connection is tied to its peer at once: SO_PEERCRED gives the pid and the connect-time
//! uid/gid, and the process is recorded before the first request is read ([`PeerConn`],
//! [`ProcHandle::open`]). Each RPC attests the caller from that accept-time record and checks that the
//! pid still is that process: PID reuse, an exec or changed credentials -> `Unauthenticated` (see
//! `crate::attest`).
//!
//! Status codes: missing `workload.spiffe.io: true` header -> `InvalidArgument`; agent not synced yet ->
//! `Unavailable`; no matching entry -> `PermissionDenied` (also for the bundle streams, as SPIRE does
//! without `allow_unauthenticated_verifiers`); ValidateJWTSVID needs no identity. Streams send the full
//! state first and then again whenever the caller's view changed (never an unchanged repeat).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use sigil_core::bundle::Bundle;
use sigil_core::{Selector, SpiffeId, TrustDomain};
use sigil_proto::workload as pb;
use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attest::{AttestError, ProcHandle, WorkloadAttestor, attest_process};
use crate::manager::{ManagerHandle, now_unix};
use crate::metrics::Metrics;
use crate::pacing::Pacer;
use crate::state::{Snapshot, View, WorkloadView};

/// The metadata key every Workload API request must carry with the value `true` (E2).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Errors setting up the Workload API endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("Workload API {0}")]
    Dir(#[from] sigil_tls::SocketDirError),
    #[error("binding Workload API socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("setting permissions on {path}: {source}")]
    Permissions { path: PathBuf, source: io::Error },
}

/// Mints JWT-SVIDs for entries (the manager does it through the server; tests fake it).
#[async_trait::async_trait]
pub trait JwtSource: Send + Sync {
    async fn jwt_svid(&self, entry_id: &str, audience: &[String]) -> Result<String, Status>;
}

#[async_trait::async_trait]
impl JwtSource for ManagerHandle {
    async fn jwt_svid(&self, entry_id: &str, audience: &[String]) -> Result<String, Status> {
        ManagerHandle::jwt_svid(self, entry_id, audience).await
    }
}

/// What the server knows about the peer of a Workload API connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// The process handle opened on accept, or why it could not be opened.
    pub process: Result<Arc<ProcHandle>, String>,
}

/// An accepted Unix connection with its peer, identified at accept time.
#[derive(Debug)]
pub struct PeerConn {
    /// Client bytes pass through the `:authority` fix so grpcio clients (py-spiffe) are served too.
    stream: sigil_tls::AuthorityFixStream<UnixStream>,
    info: PeerInfo,
}

impl PeerConn {
    pub fn new(stream: UnixStream) -> Self {
        let cred = stream.peer_cred().ok();
        let pid = cred.and_then(|c| c.pid());
        let process = match (cred, pid) {
            (Some(c), Some(pid)) => ProcHandle::open(pid, c.uid(), c.gid()).map(Arc::new).map_err(|e| e.to_string()),
            _ => Err(AttestError::NoPeerCredentials.to_string()),
        };
        let stream = sigil_tls::AuthorityFixStream::new(stream);
        Self { stream, info: PeerInfo { uid: cred.map(|c| c.uid()), pid, process } }
    }
}

impl tonic::transport::server::Connected for PeerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Binds the Workload API socket: the directory is created with mode 0755 (an existing one must be safe:
/// see [`sigil_tls::socket_dir`]), a stale socket is replaced, and the socket gets mode 0777 so any local
/// process can connect (identity is checked per call).
pub fn bind_socket(path: &Path) -> Result<UnixListener, EndpointError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        sigil_tls::prepare_socket_dir(dir, false)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(EndpointError::Bind { path: path.to_owned(), source }),
    }
    let listener = UnixListener::bind(path).map_err(|source| EndpointError::Bind { path: path.to_owned(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|source| EndpointError::Permissions { path: path.to_owned(), source })?;
    Ok(listener)
}

/// Accepted connections, each tied to its peer process at once.
pub fn incoming(listener: UnixListener) -> ReceiverStream<io::Result<PeerConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok((stream, _)) => Ok(PeerConn::new(stream)),
                Err(e) => {
                    tracing::warn!(error = %e, "Workload API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.send(conn).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The Workload API service.
#[derive(Clone)]
pub struct WorkloadApi {
    state: watch::Receiver<Arc<Snapshot>>,
    attestors: Arc<[Arc<dyn WorkloadAttestor>]>,
    jwt: Arc<dyn JwtSource>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi").field("attestors", &self.attestors).finish_non_exhaustive()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unavailable() -> Status {
    Status::unavailable("the agent has not synchronized with the server yet; retry shortly")
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// E2: `workload.spiffe.io: true` must be present.
pub fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER).and_then(|v| v.to_str().ok()) {
        Some("true") => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

/// The cached DER is shared, not copied: a message for 1,000 SVIDs allocates little more than its list.
fn x509_response(v: &WorkloadView) -> pb::X509svidResponse {
    let bundle = bytes::Bytes::from(v.bundle.x509_authorities_der_concat());
    pb::X509svidResponse {
        svids: v
            .svids
            .iter()
            .map(|(e, s)| pb::X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: match s.chain_der.as_slice() {
                    [leaf] => leaf.clone(),
                    chain => chain.concat().into(),
                },
                x509_svid_key: s.key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: e.hint.clone(),
            })
            .collect(),
        crl: vec![],
        federated_bundles: v
            .federated
            .iter()
            .map(|(td, b)| (td.id_string(), b.x509_authorities_der_concat()))
            .collect(),
    }
}

/// The own bundle and the federated bundles of the caller's entries, or the status to answer with.
fn bundles_of(snap: &Snapshot, selectors: &BTreeSet<Selector>) -> Result<Vec<Arc<Bundle>>, Status> {
    let Some(own) = snap.bundle.clone().filter(|_| snap.synced) else {
        return Err(unavailable());
    };
    let ids = snap.identities(selectors);
    if ids.is_empty() {
        return Err(no_identity());
    }
    let tds: BTreeSet<&TrustDomain> = ids.iter().flat_map(|e| e.federates_with.iter()).collect();
    let mut out = vec![own];
    out.extend(tds.into_iter().filter_map(|td| snap.federated_bundles.get(td).cloned()));
    Ok(out)
}

fn x509_bundles_response(bundles: &[Arc<Bundle>]) -> pb::X509BundlesResponse {
    pb::X509BundlesResponse {
        crl: vec![],
        bundles: bundles.iter().map(|b| (b.trust_domain.id_string(), b.x509_authorities_der_concat())).collect(),
    }
}

fn jwt_bundles_response(bundles: &[Arc<Bundle>]) -> pb::JwtBundlesResponse {
    pb::JwtBundlesResponse {
        bundles: bundles.iter().map(|b| (b.trust_domain.id_string(), b.jwt_jwks_json().into_bytes())).collect(),
    }
}

/// JSON to `google.protobuf.Value`.
pub fn json_to_prost(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.iter().map(json_to_prost).collect() })
        }
        serde_json::Value::Object(o) => Kind::StructValue(json_object_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_object_to_struct(o: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_to_prost(v))).collect::<BTreeMap<_, _>>() }
}

impl WorkloadApi {
    pub fn new(
        state: watch::Receiver<Arc<Snapshot>>,
        attestors: Vec<Arc<dyn WorkloadAttestor>>,
        jwt: Arc<dyn JwtSource>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { state, attestors: attestors.into(), jwt, metrics, shutdown: watch::channel(false).1 }
    }

    /// Ends open streams (with `Unavailable`) once `shutdown` turns true, so a graceful stop is quick.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The service, to be served on [`incoming`] (the Fetch* streams framed by [`crate::lean_stream`]).
    pub fn into_service(self) -> crate::lean_stream::WorkloadService {
        crate::lean_stream::WorkloadService::new(self)
    }

    /// Header check and caller attestation: the selectors, and the process handle that streams check again
    /// before each later message.
    async fn caller<T>(&self, req: &Request<T>) -> Result<(BTreeSet<Selector>, Arc<ProcHandle>), Status> {
        check_header(req)?;
        let info = req
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| Status::unauthenticated("no peer information on this connection"))?;
        let process =
            info.process.as_ref().map_err(|e| Status::unauthenticated(format!("cannot identify caller: {e}")))?;
        match attest_process(&self.attestors, process).await {
            Ok(s) => {
                tracing::debug!(pid = process.pid(), selectors = ?s.iter().map(ToString::to_string).collect::<Vec<_>>(), "workload attested");
                Ok((s, process.clone()))
            }
            Err(e) if e.is_unauthenticated() => Err(Status::unauthenticated(e.to_string())),
            Err(e) => {
                tracing::warn!(pid = process.pid(), error = %e, "workload attestation failed");
                Err(Status::internal(format!("workload attestation failed: {e}")))
            }
        }
    }

    fn counted<T>(&self, method: &str, r: Result<T, Status>) -> Result<T, Status> {
        self.metrics.count_call(method, r.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code()));
        r
    }

    /// The stream of one open Fetch* call: `first`, then the caller's view again whenever it changed, paced
    /// by [`pacing`]: computed from the snapshot current when the transport asks for the next message (so a
    /// client that reads slowly never gets a queue of stale states) and, after each message, not before a
    /// gap that grows with its size (a burst of changes is merged). No task: the stream ends with the call.
    fn watch_stream<T, F>(&self, process: Arc<ProcHandle>, first: T, compute: F) -> BoxStream<T>
    where
        T: Send + Sync + prost::Message + 'static,
        F: Fn(&Snapshot) -> Option<Result<T, Status>> + Send + 'static,
    {
        struct Watch<F> {
            rx: watch::Receiver<Arc<Snapshot>>,
            stop: watch::Receiver<bool>,
            process: Arc<ProcHandle>,
            compute: F,
            // A digest of the last message, not the message: with 1,000 SVIDs that is 1.2 MB per open stream.
            last: [u8; 32],
            pacer: Pacer,
            // Check the snapshot before the first wait: it may have changed since `first` was computed.
            fresh: bool,
            done: bool,
        }
        let mut pacer = Pacer::default();
        pacer.sent(Instant::now(), first.encoded_len());
        let state = Watch {
            rx: self.state.clone(),
            stop: self.shutdown.clone(),
            process,
            compute,
            last: digest(&first),
            pacer,
            fresh: true,
            done: false,
        };
        let rest = futures::stream::unfold(state, |mut w| async move {
            if w.done {
                return None;
            }
            loop {
                if !w.fresh {
                    // Wake on a new snapshot, at shutdown, or when a cached SVID expires (so an expired SVID
                    // leaves the view even if nothing else happens). The manager keeps the earliest expiry; a
                    // snapshot made elsewhere (tests) has none, and its SVIDs are looked at.
                    let expiry = {
                        let snap = w.rx.borrow();
                        snap.next_expiry.or_else(|| snap.svids.values().map(|s| s.not_after).min())
                    }
                    .filter(|t| *t > now_unix());
                    let wait = expiry.map(|t| u64::try_from(t - now_unix() + 1).unwrap_or(1)).unwrap_or(3600);
                    let mut stopping = tokio::select! {
                        r = w.rx.changed() => if r.is_err() { return None } else { false },
                        () = stopped(&mut w.stop) => true,
                        () = tokio::time::sleep(Duration::from_secs(wait)) => false,
                    };
                    // Merge what else changes during the gap: the state is read only after it.
                    if let Some(hold) = w.pacer.hold(Instant::now()).filter(|_| !stopping) {
                        stopping = tokio::select! {
                            () = tokio::time::sleep(hold) => false,
                            () = stopped(&mut w.stop) => true,
                        };
                    }
                    if stopping {
                        w.done = true;
                        return Some((Err(Status::unavailable("the agent is shutting down")), w));
                    }
                }
                w.fresh = false;
                let snap = w.rx.borrow_and_update().clone();
                match (w.compute)(&snap) {
                    Some(Ok(msg)) => {
                        let d = digest(&msg);
                        if d == w.last {
                            continue;
                        }
                        // Rotated keys go only to the process that opened the stream, as it was then.
                        if let Err(e) = w.process.verify() {
                            w.done = true;
                            return Some((Err(Status::unauthenticated(e.to_string())), w));
                        }
                        w.pacer.sent(Instant::now(), msg.encoded_len());
                        w.last = d;
                        return Some((Ok(msg), w));
                    }
                    Some(Err(status)) => {
                        w.done = true;
                        return Some((Err(status), w));
                    }
                    None => {}
                }
            }
        });
        // The first message goes out directly.
        let head = futures::stream::once(std::future::ready(Ok(first)));
        Box::pin(futures::StreamExt::chain(head, rest))
    }

    /// The first X509 response: waits (for a snapshot change) while the view is `Waiting`.
    async fn first_x509(&self, selectors: &BTreeSet<Selector>) -> Result<pb::X509svidResponse, Status> {
        let mut rx = self.state.clone();
        loop {
            let view = rx.borrow_and_update().view(selectors, now_unix(), true);
            match view {
                View::NotReady => return Err(unavailable()),
                View::NoIdentity => return Err(no_identity()),
                View::Ready(v) => return Ok(x509_response(&v)),
                View::Waiting => {
                    if rx.changed().await.is_err() {
                        return Err(unavailable());
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let r = async {
            let (selectors, process) = self.caller(&req).await?;
            let first = self.first_x509(&selectors).await?;
            Ok(self.watch_stream(process, first, move |snap| match snap.view(&selectors, now_unix(), false) {
                View::Ready(v) => Some(Ok(x509_response(&v))),
                View::NoIdentity => Some(Err(no_identity())),
                View::NotReady | View::Waiting => None,
            }))
        }
        .await;
        self.counted("FetchX509SVID", r).map(Response::new)
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let r = async {
            let (selectors, process) = self.caller(&req).await?;
            let first = x509_bundles_response(&bundles_of(&self.state.borrow(), &selectors)?);
            Ok(self.watch_stream(process, first, move |snap| {
                Some(bundles_of(snap, &selectors).map(|b| x509_bundles_response(&b)))
            }))
        }
        .await;
        self.counted("FetchX509Bundles", r).map(Response::new)
    }

    async fn fetch_jwtsvid(&self, req: Request<pb::JwtsvidRequest>) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let r = async {
            check_header(&req)?;
            let audience: Vec<String> = req.get_ref().audience.iter().filter(|a| !a.is_empty()).cloned().collect();
            if audience.is_empty() {
                return Err(Status::invalid_argument("audience must be specified"));
            }
            let wanted = match req.get_ref().spiffe_id.as_str() {
                "" => None,
                s => Some(
                    SpiffeId::new(s)
                        .map_err(|e| Status::invalid_argument(format!("invalid requested SPIFFE ID: {e}")))?,
                ),
            };
            let (selectors, _) = self.caller(&req).await?;
            let snap = self.state.borrow().clone();
            if !snap.synced {
                return Err(unavailable());
            }
            let ids: Vec<_> = snap
                .identities(&selectors)
                .into_iter()
                .filter(|e| wanted.as_ref().is_none_or(|w| w == &e.spiffe_id))
                .collect();
            if ids.is_empty() {
                return Err(no_identity());
            }
            let mut svids = Vec::with_capacity(ids.len());
            for e in ids {
                let token = self.jwt.jwt_svid(&e.id, &audience).await?;
                svids.push(pb::Jwtsvid { spiffe_id: e.spiffe_id.to_string(), svid: token, hint: e.hint.clone() });
            }
            Ok(pb::JwtsvidResponse { svids })
        }
        .await;
        self.counted("FetchJWTSVID", r).map(Response::new)
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let r = async {
            let (selectors, process) = self.caller(&req).await?;
            let first = jwt_bundles_response(&bundles_of(&self.state.borrow(), &selectors)?);
            Ok(self.watch_stream(process, first, move |snap| {
                Some(bundles_of(snap, &selectors).map(|b| jwt_bundles_response(&b)))
            }))
        }
        .await;
        self.counted("FetchJWTBundles", r).map(Response::new)
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let r = async {
            check_header(&req)?;
            if req.get_ref().audience.is_empty() {
                return Err(Status::invalid_argument("audience must be specified"));
            }
            if req.get_ref().svid.is_empty() {
                return Err(Status::invalid_argument("svid must be specified"));
            }
            let (selectors, _) = self.caller(&req).await?;
            let snap = self.state.borrow().clone();
            if !snap.synced || snap.bundle.is_none() {
                return Err(unavailable());
            }
            let lookup = |td: &TrustDomain| snap.validation_bundle(&selectors, td);
            let v =
                sigil_core::jwt::validate_jwt_svid(&req.get_ref().svid, &req.get_ref().audience, &lookup, now_unix())
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok(pb::ValidateJwtsvidResponse {
                spiffe_id: v.spiffe_id.to_string(),
                claims: Some(json_object_to_struct(&v.claims)),
            })
        }
        .await;
        self.counted("ValidateJWTSVID", r).map(Response::new)
    }
}

/// SHA-256 of a message's encoding: what a stream remembers of its last message. The encoding is hashed
/// as it is produced, 4 KiB at a time: held whole it would be one more 1 MB allocation per message with
/// 1,000 SVIDs (and one more hole in the heap after it).
fn digest(msg: &impl prost::Message) -> [u8; 32] {
    use sha2::Digest;
    let mut sink = HashSink { hasher: sha2::Sha256::new(), buf: [0; HashSink::SIZE], len: 0 };
    // Only fails when the buffer has too little room, and the sink's room is unbounded.
    let _ = msg.encode(&mut sink);
    sink.hasher.update(&sink.buf[..sink.len]);
    sink.hasher.finalize().into()
}

/// A `BufMut` that hashes what is written to it.
struct HashSink {
    hasher: sha2::Sha256,
    buf: [u8; HashSink::SIZE],
    len: usize,
}

impl HashSink {
    const SIZE: usize = 4096;

    fn flush_if_full(&mut self) {
        use sha2::Digest;
        if self.len == Self::SIZE {
            self.hasher.update(self.buf);
            self.len = 0;
        }
    }
}

// BufMut is an unsafe trait because callers write through `chunk_mut` and then trust `advance_mut`; this
// sink hands out only its own initialized array and never counts past it.
#[allow(unsafe_code)]
unsafe impl bytes::BufMut for HashSink {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        self.len = (self.len + cnt).min(Self::SIZE);
        self.flush_if_full();
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.flush_if_full();
        bytes::buf::UninitSlice::new(&mut self.buf[self.len..])
    }
}

/// Resolves when `stop` turns true; never when its sender is gone (a `WorkloadApi` without
/// [`WorkloadApi::with_shutdown`]): `wait_for` would then return at once, and a select on it would spin.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC reflection setup: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("Workload API server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the Workload API and gRPC reflection (v1 and v1alpha) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    api: WorkloadApi,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sigil_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sigil_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    sigil_tls::unix_server()
        .add_service(api.into_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_digest_is_the_digest_of_the_encoding() {
        use sha2::Digest;
        // Sizes around the sink's 4 KiB piece: empty, small, exactly one piece, and many pieces.
        for n in [0usize, 1, 3, 40, 400] {
            let msg = pb::X509svidResponse {
                svids: (0..n)
                    .map(|i| pb::X509svid {
                        spiffe_id: format!("spiffe://example.org/w{i}"),
                        x509_svid: vec![u8::try_from(i % 251).unwrap_or(0); 700].into(),
                        x509_svid_key: vec![7; 138].into(),
                        bundle: vec![9; 500].into(),
                        hint: String::new(),
                    })
                    .collect(),
                crl: vec![],
                federated_bundles: Default::default(),
            };
            let want: [u8; 32] = sha2::Sha256::digest(prost::Message::encode_to_vec(&msg)).into();
            assert_eq!(digest(&msg), want, "{n} SVIDs");
        }
        let one = pb::X509BundlesResponse { crl: vec![], bundles: [("a".into(), vec![1; 4096 - 9])].into() };
        let want: [u8; 32] = sha2::Sha256::digest(prost::Message::encode_to_vec(&one)).into();
        assert_eq!(digest(&one), want);
    }

    #[test]
    fn header_table() {
        let cases: &[(Option<&str>, bool)] =
            &[(Some("true"), true), (Some("false"), false), (Some("TRUE"), false), (Some(""), false), (None, false)];
        for (value, ok) in cases {
            let mut req = Request::new(());
            if let Some(v) = value {
                req.metadata_mut().insert(SECURITY_HEADER, v.parse().unwrap());
            }
            let got = check_header(&req);
            assert_eq!(got.is_ok(), *ok, "{value:?}");
            if let Err(s) = got {
                assert_eq!(s.code(), tonic::Code::InvalidArgument);
                assert_eq!(s.message(), "security header missing from request");
            }
        }
    }

    #[test]
    fn json_claims_convert() {
        let v: serde_json::Value =
            serde_json::json!({"sub": "spiffe://td/a", "aud": ["x", "y"], "exp": 10, "nested": {"b": true, "n": null}});
        let s = json_object_to_struct(v.as_object().unwrap());
        use prost_types::value::Kind;
        assert_eq!(s.fields["sub"].kind, Some(Kind::StringValue("spiffe://td/a".into())));
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(10.0)));
        let Some(Kind::ListValue(l)) = &s.fields["aud"].kind else { panic!("aud") };
        assert_eq!(l.values.len(), 2);
        let Some(Kind::StructValue(n)) = &s.fields["nested"].kind else { panic!("nested") };
        assert_eq!(n.fields["b"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(n.fields["n"].kind, Some(Kind::NullValue(0)));
    }
}
