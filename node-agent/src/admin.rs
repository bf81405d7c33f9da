//! The agent's private admin endpoint (SPIRE's `admin_socket_path`; off unless configured): one question,
//! asked by the CSI driver before it mounts the Workload API into a pod, "does this agent hold an identity
//! for pod UID X yet?", answered at once or as soon as the answer turns yes, within a caller-given bound.
//!
//! Protocol: HTTP/1.1 on a Unix socket, one request per connection (the server closes after answering).
//!
//! ```text
//! GET /v1/pods/<pod-uid>/identity?timeout=<Go duration>     (timeout optional: 0 = answer now; capped at 30s)
//!
//! 200 {"pod_uid":"…","ready":true,"spiffe_ids":["spiffe://…"],"waited_ms":12}
//! 503 {"pod_uid":"…","ready":false,"reason":"no registration entry selects this pod yet","waited_ms":5000}
//! 400 {"error":"…"}   malformed pod UID or timeout, unknown query parameter
//! 403 {"error":"…"}   the caller is neither root nor the agent's uid
//! 404 / 405 / 413     unknown path / not GET / a request body
//! 429 {"error":"…"}   more than MAX_WAITERS calls are waiting
//! ```
//!
//! `curl --unix-socket /run/sigil/agent-admin/admin.sock -fsS 'http://agent/v1/pods/<uid>/identity?timeout=5s'`
//! exits non-zero while not ready.
//!
//! "Ready" ([`pod_identity`]): the agent has synced, at least one of its entries carries the selector
//! `k8s:pod-uid:<uid>`, and every such entry has a current X509-SVID in the cache. The agent signs SVIDs for
//! all its entries ahead of any fetch (the manager signs each new entry as soon as it arrives), so the wait
//! includes that signature: a container that starts after a "ready" gets its SVID from the cache.
//!
//! Waiting is event-driven: a waiter re-evaluates on every snapshot the manager publishes (its `watch`
//! channel), never on a timer. Access: the socket's directory is created 0700 and checked like the server's
//! admin socket ([`sigil_tls::prepare_socket_dir`] with `private`), and each connection's peer credentials
//! must be uid 0 or the agent's own uid ([`peer_allowed`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use sigil_core::{Selector, SpiffeId};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

use crate::manager::now_unix;
use crate::metrics::Metrics;
use crate::state::Snapshot;

/// The longest a caller may ask to wait; longer requests are cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most calls waiting at once; more get 429.
pub const MAX_WAITERS: usize = 1024;
/// Most open connections (a connection beyond it is closed unanswered).
const MAX_CONNECTIONS: usize = MAX_WAITERS + 64;
/// Request line and headers are read into at most this many bytes (hyper's minimum buffer).
const MAX_HEAD_BYTES: usize = 8192;
/// A client must send its request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer the client reads.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Errors setting up the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin {0}")]
    Dir(#[from] sigil_tls::SocketDirError),
    #[error("admin socket directory {path}: {source}")]
    Tighten { path: PathBuf, source: io::Error },
    #[error("binding admin socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Whether a peer may use the admin socket: root or the agent's own uid (no credentials: no).
pub fn peer_allowed(peer_uid: Option<u32>, agent_uid: u32) -> bool {
    matches!(peer_uid, Some(uid) if uid == 0 || uid == agent_uid)
}

/// Why a pod UID is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid pod UID {0:?}: expected a Kubernetes UID, 36 characters of lowercase hex in the form \
     xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (metadata.uid)"
)]
pub struct BadPodUid(pub String);

/// Checks that `uid` is a Kubernetes object UID: a UUID in its 36-character lowercase form.
pub fn validate_pod_uid(uid: &str) -> Result<(), BadPodUid> {
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    if ok { Ok(()) } else { Err(BadPodUid(uid.chars().take(64).collect())) }
}

/// What the agent holds for one pod UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodIdentity {
    /// No entry snapshot (or no bundle) from the server yet.
    NotSynced,
    /// No entry carries `k8s:pod-uid:<uid>`.
    NoEntry,
    /// Entries carry it, but these SPIFFE IDs have no current SVID yet (being signed, or signing failed).
    Signing(Vec<SpiffeId>),
    /// Every entry carrying it has a current SVID: these SPIFFE IDs (sorted, without repeats).
    Ready(Vec<SpiffeId>),
}

impl PodIdentity {
    /// Why a pod is not ready (empty when it is).
    pub fn reason(&self) -> String {
        match self {
            Self::NotSynced => "the agent has not synchronized with the server yet".into(),
            Self::NoEntry => "no registration entry selects this pod yet (selector k8s:pod-uid)".into(),
            Self::Signing(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                format!("the X509-SVID is not signed yet for {}", ids.join(", "))
            }
            Self::Ready(_) => String::new(),
        }
    }
}

/// Which cached entries make pod `uid` ready at `now` (see the module notes). I/O-free.
pub fn pod_identity(snap: &Snapshot, uid: &str, now: i64) -> PodIdentity {
    if !snap.synced || snap.bundle.is_none() {
        return PodIdentity::NotSynced;
    }
    let Ok(wanted) = Selector::new("k8s", &format!("pod-uid:{uid}")) else {
        return PodIdentity::NoEntry;
    };
    let mut ready = vec![];
    let mut waiting = vec![];
    for e in snap.entries.values().filter(|e| e.selectors.contains(&wanted)) {
        let current = snap.svids.get(e.id.as_str()).is_some_and(|s| s.not_after > now && s.spiffe_id == e.spiffe_id);
        if current { ready.push(e.spiffe_id.clone()) } else { waiting.push(e.spiffe_id.clone()) }
    }
    let sorted = |mut v: Vec<SpiffeId>| {
        v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        v.dedup();
        v
    };
    match (ready.is_empty(), waiting.is_empty()) {
        (true, true) => PodIdentity::NoEntry,
        (_, false) => PodIdentity::Signing(sorted(waiting)),
        (false, true) => PodIdentity::Ready(sorted(ready)),
    }
}

/// The JSON body of every answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default)]
    pub waited_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Binds the admin socket: its directory is made private (0700; an existing directory owned by root or the
/// agent that nobody else can write to, such as a kubelet-created `DirectoryOrCreate` hostPath at 0755, is
/// tightened to 0700 first) and checked with [`sigil_tls::prepare_socket_dir`]; a stale socket is replaced.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The directories above first: once nobody else can write to them, nobody can swap `dir` for a
        // symlink between the look below and the chmod (which follows symlinks).
        if let Some(up) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
            sigil_tls::prepare_socket_dir(up, false)?;
        }
        if let Ok(m) = std::fs::symlink_metadata(dir) {
            let me = nix::unistd::geteuid().as_raw();
            let mode = m.mode() & 0o7777;
            if m.is_dir() && (m.uid() == 0 || m.uid() == me) && mode & 0o022 == 0 && mode & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|source| AdminError::Tighten { path: dir.to_owned(), source })?;
            }
        }
        sigil_tls::prepare_socket_dir(dir, true)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(AdminError::Bind { path: path.to_owned(), source }),
    }
    let listener = UnixListener::bind(path).map_err(|source| AdminError::Bind { path: path.to_owned(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| AdminError::Bind { path: path.to_owned(), source })?;
    Ok(listener)
}

#[derive(Clone)]
struct Ctx {
    state: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    waiters: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// Serves the admin socket until `shutdown` turns true (open connections are dropped then).
pub async fn serve(
    listener: UnixListener,
    state: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let agent_uid = nix::unistd::geteuid().as_raw();
    let ctx = Ctx { state, metrics, waiters: Arc::new(Semaphore::new(MAX_WAITERS)), shutdown: shutdown.clone() };
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(limit = MAX_CONNECTIONS, "admin socket: too many connections; closing a new one");
            continue;
        };
        let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
        let allowed = peer_allowed(peer_uid, agent_uid);
        if !allowed {
            tracing::warn!(peer_uid = ?peer_uid, "admin socket: refusing a caller that is neither root nor the agent's uid");
        }
        let ctx = ctx.clone();
        tasks.spawn(async move {
            serve_connection(stream, ctx, allowed).await;
            drop(permit);
        });
    }
}

async fn serve_connection(stream: UnixStream, ctx: Ctx, allowed: bool) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move {
            let resp = if allowed {
                handle(&req, &ctx).await
            } else {
                error(StatusCode::FORBIDDEN, "only root and the agent's uid may use the admin socket")
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

fn json(status: StatusCode, answer: &Answer) -> Response<String> {
    let body = serde_json::to_string(answer).unwrap_or_default();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<String> {
    json(status, &Answer { error: message.into(), ..Answer::default() })
}

/// The request's pod UID and wait bound, or the answer refusing it.
fn parse_request(req: &Request<Incoming>) -> Result<(String, Duration), Box<Response<String>>> {
    if req.method() != Method::GET {
        return Err(Box::new(error(StatusCode::METHOD_NOT_ALLOWED, "only GET /v1/pods/<pod-uid>/identity")));
    }
    let has_body = req.headers().contains_key(TRANSFER_ENCODING)
        || req.headers().get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(Box::new(error(StatusCode::PAYLOAD_TOO_LARGE, "requests carry no body")));
    }
    let path = req.uri().path();
    let Some(uid) = path.strip_prefix("/v1/pods/").and_then(|r| r.strip_suffix("/identity")) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("unknown path {path:?}: GET /v1/pods/<pod-uid>/identity"),
        )));
    };
    validate_pod_uid(uid).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.to_string())))?;
    let mut timeout = Duration::ZERO;
    for pair in req.uri().query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("timeout", v)) => {
                timeout = sigil_core::duration::parse_go_duration(v)
                    .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("timeout: {e}"))))?
                    .min(MAX_WAIT);
            }
            _ => {
                let shown: String = pair.chars().take(64).collect();
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {shown:?}: only timeout=<Go duration>"),
                )));
            }
        }
    }
    Ok((uid.to_owned(), timeout))
}

async fn handle(req: &Request<Incoming>, ctx: &Ctx) -> Response<String> {
    let (uid, timeout) = match parse_request(req) {
        Ok(r) => r,
        Err(resp) => {
            ctx.metrics.count_pod_wait("refused");
            return *resp;
        }
    };
    let Ok(_permit) = ctx.waiters.try_acquire() else {
        ctx.metrics.count_pod_wait("refused");
        return error(StatusCode::TOO_MANY_REQUESTS, format!("more than {MAX_WAITERS} calls are waiting"));
    };
    let started = Instant::now();
    let outcome = wait_for_pod(ctx.state.clone(), ctx.shutdown.clone(), &uid, started + timeout).await;
    let waited = started.elapsed();
    let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    ctx.metrics.pod_wait_seconds.observe(waited.as_secs_f64());
    match outcome {
        PodIdentity::Ready(ids) => {
            ctx.metrics.count_pod_wait("ready");
            tracing::debug!(pod_uid = %uid, waited_ms, "pod identity ready");
            let spiffe_ids = ids.iter().map(ToString::to_string).collect();
            json(StatusCode::OK, &Answer { pod_uid: uid, ready: true, spiffe_ids, waited_ms, ..Answer::default() })
        }
        other => {
            ctx.metrics.count_pod_wait("timeout");
            let reason = other.reason();
            tracing::debug!(pod_uid = %uid, waited_ms, reason, "pod identity not ready");
            json(StatusCode::SERVICE_UNAVAILABLE, &Answer { pod_uid: uid, reason, waited_ms, ..Answer::default() })
        }
    }
}

/// Waits until pod `uid` is ready or `deadline` (or shutdown) comes, waking on every published snapshot.
async fn wait_for_pod(
    mut state: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
    uid: &str,
    deadline: Instant,
) -> PodIdentity {
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        let snap = state.borrow_and_update().clone();
        let now = pod_identity(&snap, uid, now_unix());
        if matches!(now, PodIdentity::Ready(_)) || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::select! {
            r = state.changed() => if r.is_err() { return now },
            () = tokio::time::sleep_until(deadline) => {
                return pod_identity(&state.borrow().clone(), uid, now_unix());
            }
            _ = shutdown.wait_for(|s| *s) => return now,
        }
    }
}

/// Errors of [`ask`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the agent admin socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("agent admin socket: {0}")]
    Http(String),
    #[error("agent admin socket answered {status} with an unreadable body: {reason}")]
    Body { status: u16, reason: String },
}

/// Asks the admin socket at `socket` about pod `uid`, waiting up to `timeout` on the agent's side. Returns
/// the HTTP status and the answer (200 ready, 503 not ready, 4xx refused with `error` set).
pub async fn ask(socket: &Path, uid: &str, timeout: Duration) -> Result<(u16, Answer), ClientError> {
    let stream =
        UnixStream::connect(socket).await.map_err(|source| ClientError::Connect { path: socket.to_owned(), source })?;
    let uri = format!("/v1/pods/{uid}/identity?timeout={}ms", timeout.as_millis());
    let req = Request::get(uri)
        .header(HOST, "sigil-agent")
        .body(String::new())
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let limit = |_| sigil_tls::http1::BodyLimit { limit: MAX_ANSWER_BYTES, truncate: false };
    let (status, body) = sigil_tls::http1::request(stream, req, limit).await.map_err(|e| match e {
        sigil_tls::http1::Http1Error::TooLarge { .. } => ClientError::Body { status: 0, reason: "too large".into() },
        e => ClientError::Http(e.to_string()),
    })?;
    let status = status.as_u16();
    let answer = serde_json::from_slice(&body).map_err(|e| ClientError::Body { status, reason: e.to_string() })?;
    Ok((status, answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::CachedSvid;
    use crate::state::tests::{entry, svid};
    use sigil_core::TrustDomain;
    use sigil_core::bundle::Bundle;

    const UID: &str = "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b";
    const OTHER: &str = "11111111-2222-4333-8444-555555555555";

    #[test]
    fn pod_uid_table() {
        let cases: &[(&str, bool)] = &[
            (UID, true),
            ("00000000-0000-0000-0000-000000000000", true),
            ("0F1E2D3C-4B5A-4978-8A6B-5C4D3E2F1A0B", false),
            ("0f1e2d3c4b5a49788a6b5c4d3e2f1a0b", false),
            ("0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0", false),
            ("0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0bb", false),
            ("0f1e2d3c-4b5a-4978-8a6b_5c4d3e2f1a0b", false),
            ("0g1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b", false),
            ("../../../../etc/passwd-aaaaaaaaaaaaaa", false),
            ("", false),
        ];
        for (uid, ok) in cases {
            assert_eq!(validate_pod_uid(uid).is_ok(), *ok, "{uid:?}");
        }
        let msg = validate_pod_uid("nope").unwrap_err().to_string();
        assert!(msg.contains("\"nope\"") && msg.contains("36 characters of lowercase hex"), "{msg}");
    }

    #[test]
    fn peer_table() {
        let cases: &[(Option<u32>, u32, bool)] = &[
            (Some(0), 1000, true),
            (Some(1000), 1000, true),
            (Some(1001), 1000, false),
            (Some(0), 0, true),
            (Some(65534), 0, false),
            (None, 0, false),
            (None, 1000, false),
        ];
        for (peer, me, want) in cases {
            assert_eq!(peer_allowed(*peer, *me), *want, "{peer:?} {me}");
        }
    }

    fn synced() -> Snapshot {
        Snapshot {
            synced: true,
            bundle: Some(Arc::new(Bundle::new(TrustDomain::new("td").unwrap()))),
            ..Snapshot::default()
        }
    }

    fn ids(v: &[&str]) -> Vec<SpiffeId> {
        v.iter().map(|s| SpiffeId::new(s).unwrap()).collect()
    }

    #[test]
    fn pod_identity_table() {
        let pod = format!("k8s:pod-uid:{UID}");
        let other = format!("k8s:pod-uid:{OTHER}");
        type Build = Box<dyn Fn() -> Snapshot>;
        let with = |entries: Vec<Arc<sigil_core::RegistrationEntry>>, svids: Vec<Arc<CachedSvid>>| {
            let mut s = synced();
            for e in entries {
                s.entries.insert(e.id.as_str().into(), e);
            }
            for v in svids {
                s.svids.insert(v.entry_id.clone(), v);
            }
            s
        };
        let (p, o) = (pod.clone(), other.clone());
        let cases: Vec<(&str, Build, PodIdentity)> = vec![
            ("nothing synced", Box::new(Snapshot::default), PodIdentity::NotSynced),
            (
                "synced flag without bundle",
                Box::new(|| Snapshot { synced: true, ..Snapshot::default() }),
                PodIdentity::NotSynced,
            ),
            ("synced, no entries", Box::new(synced), PodIdentity::NoEntry),
            (
                "only another pod's entry (signed)",
                Box::new({
                    let o = o.clone();
                    move || with(vec![entry("x", "spiffe://td/x", &[&o], 1, "")], vec![svid("x", "spiffe://td/x", 100)])
                }),
                PodIdentity::NoEntry,
            ),
            (
                "k8s:pod-uid with a different prefix type is not it",
                Box::new(move || {
                    let s = format!("k8s_psat:pod-uid:{UID}");
                    with(vec![entry("x", "spiffe://td/x", &[&s], 1, "")], vec![svid("x", "spiffe://td/x", 100)])
                }),
                PodIdentity::NoEntry,
            ),
            (
                "entry, SVID not signed yet",
                Box::new({
                    let p = p.clone();
                    move || with(vec![entry("a", "spiffe://td/a", &[&p, "k8s:ns:default"], 1, "")], vec![])
                }),
                PodIdentity::Signing(ids(&["spiffe://td/a"])),
            ),
            (
                "entry with more selectors, signed: ready",
                Box::new({
                    let p = p.clone();
                    move || {
                        with(
                            vec![entry("a", "spiffe://td/a", &[&p, "k8s:ns:default"], 1, "")],
                            vec![svid("a", "spiffe://td/a", 100)],
                        )
                    }
                }),
                PodIdentity::Ready(ids(&["spiffe://td/a"])),
            ),
            (
                "expired SVID is not ready",
                Box::new({
                    let p = p.clone();
                    move || with(vec![entry("a", "spiffe://td/a", &[&p], 1, "")], vec![svid("a", "spiffe://td/a", 10)])
                }),
                PodIdentity::Signing(ids(&["spiffe://td/a"])),
            ),
            (
                "SVID for the entry's old SPIFFE ID is not ready",
                Box::new({
                    let p = p.clone();
                    move || {
                        with(vec![entry("a", "spiffe://td/new", &[&p], 1, "")], vec![svid("a", "spiffe://td/old", 100)])
                    }
                }),
                PodIdentity::Signing(ids(&["spiffe://td/new"])),
            ),
            (
                "two entries, one signed: still signing",
                Box::new({
                    let p = p.clone();
                    move || {
                        with(
                            vec![entry("a", "spiffe://td/a", &[&p], 1, ""), entry("b", "spiffe://td/b", &[&p], 2, "")],
                            vec![svid("a", "spiffe://td/a", 100)],
                        )
                    }
                }),
                PodIdentity::Signing(ids(&["spiffe://td/b"])),
            ),
            (
                "two entries both signed, plus an unsigned entry of another pod: ready, sorted",
                Box::new({
                    let (p, o) = (p.clone(), o.clone());
                    move || {
                        with(
                            vec![
                                entry("b", "spiffe://td/b", &[&p], 1, ""),
                                entry("a", "spiffe://td/a", &[&p], 2, ""),
                                entry("o", "spiffe://td/o", &[&o], 2, ""),
                            ],
                            vec![svid("a", "spiffe://td/a", 100), svid("b", "spiffe://td/b", 100)],
                        )
                    }
                }),
                PodIdentity::Ready(ids(&["spiffe://td/a", "spiffe://td/b"])),
            ),
        ];
        for (name, build, want) in cases {
            assert_eq!(pod_identity(&build(), UID, 50), want, "{name}");
        }
        assert!(PodIdentity::NoEntry.reason().contains("k8s:pod-uid"));
        assert!(PodIdentity::Signing(ids(&["spiffe://td/a"])).reason().contains("spiffe://td/a"));
    }

    #[tokio::test]
    async fn bind_tightens_a_0755_directory_but_refuses_one_others_can_write() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("fresh/admin.sock");
        bind(&fresh).unwrap();
        assert_eq!(mode(fresh.parent().unwrap()), 0o700);
        assert_eq!(mode(&fresh), 0o600);
        // As the kubelet creates a DirectoryOrCreate hostPath.
        let kubelet_made = root.path().join("kubelet-made");
        std::fs::create_dir(&kubelet_made).unwrap();
        std::fs::set_permissions(&kubelet_made, std::fs::Permissions::from_mode(0o755)).unwrap();
        bind(&kubelet_made.join("admin.sock")).unwrap();
        assert_eq!(mode(&kubelet_made), 0o700);
        // Others could have planted something in it: left alone and refused.
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&open.join("admin.sock")).unwrap_err();
        assert!(matches!(err, AdminError::Dir(_)), "{err}");
        assert_eq!(mode(&open), 0o777);
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_the_snapshot_that_makes_it_ready() {
        let (tx, rx) = watch::channel(Arc::new(synced()));
        let (_stop_tx, stop) = watch::channel(false);
        let started = Instant::now();
        let waiter = tokio::spawn(async move { wait_for_pod(rx, stop, UID, Instant::now() + MAX_WAIT).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pod = format!("k8s:pod-uid:{UID}");
        let mut s = synced();
        s.entries.insert("a".into(), entry("a", "spiffe://td/a", &[&pod], 1, ""));
        tx.send_replace(Arc::new(s.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "not ready before the SVID is signed");
        s.svids.insert("a".into(), svid("a", "spiffe://td/a", now_unix() + 3600));
        tx.send_replace(Arc::new(s));
        let got = waiter.await.unwrap();
        assert_eq!(got, PodIdentity::Ready(ids(&["spiffe://td/a"])));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
