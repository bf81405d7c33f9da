//! `sigil-agent run`: wires everything together.
//!
//! [`start`] binds the Workload API socket and the health listener, starts the SVID manager and the
//! agent loop, and returns a [`RunningAgent`] at once; the Workload API answers `Unavailable` until the
//! first entry snapshot arrived. The agent loop:
//! 1. uses the identity stored in `data_dir` if it is still valid, otherwise attests with the configured
//!    node attestor, join token or k8s_psat (connection failures are retried with backoff; refused evidence
//!    stops the agent);
//! 2. opens the server's SyncEntries push stream and feeds the manager; on errors it reconnects with
//!    exponential backoff (1 s doubling to 30 s) while cached SVIDs keep being served;
//! 3. at about half the agent SVID's lifetime gets a new one, stores it and reconnects with it: a join-token
//!    agent renews (RenewAgentSvid); a k8s_psat agent attests again with a fresh token and a new key, as
//!    SPIRE's re-attestable agents do (the server keeps one record per node);
//! 4. when the server answers PermissionDenied (evicted or banned), re-attests if it can (k8s_psat always;
//!    a join token only if configured and not yet used in this run), otherwise stops with a clear log line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sigil_core::bundle::Bundle;
use sigil_tls::ServerCheck;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::attest::{UnixAttestor, WorkloadAttestor};
use crate::config::{AgentConfig, Bootstrap};
use crate::manager::{self, Command, MAX_BACKOFF, ManagerHandle, now_unix, rotation_time};
use crate::metrics::Metrics;
use crate::node::{self, NodeError, ServerConn, StoredIdentity};
use crate::workload::{self, WorkloadApi};

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Endpoint(#[from] workload::EndpointError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("health listener on {addr}: {source}")]
    Health { addr: String, source: std::io::Error },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "no usable agent SVID in {data_dir} and no join token: start with -joinToken (generate one with `sigil-server token generate`)"
    )]
    NeedJoinToken { data_dir: PathBuf },
    #[error(
        "cannot authenticate the server for the first attestation: give -trustBundle PATH (the server's CA bundle) or -insecureBootstrap"
    )]
    NeedBootstrap,
    #[error("the server refused the agent's attestation: {0}")]
    AttestationRefused(String),
    #[error("node attestation: {0}")]
    Evidence(#[from] crate::attestation::EvidenceError),
    #[error("the agent was evicted or banned by the server ({0}); start it again with a new join token")]
    Evicted(String),
    #[error("the agent SVID expired before it could be renewed; start the agent with a new join token")]
    SvidExpired,
    #[error("a task of the agent failed: {0}")]
    Task(String),
    #[error("workload_attestor.k8s: {0}")]
    K8sConfig(String),
}

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// The Workload API socket.
    pub socket_path: PathBuf,
    /// The admin socket (`admin_socket_path`), when enabled.
    pub admin_socket_path: Option<PathBuf>,
    /// Where /live, /ready and /metrics listen (when enabled).
    pub health_addr: Option<SocketAddr>,
    pub manager: ManagerHandle,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    agent_loop: Option<JoinHandle<Result<(), RunError>>>,
    manager_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    /// Waits until the agent loop ends on its own (eviction, refused token, ...). Cancel-safe.
    pub async fn wait(&mut self) -> Result<(), RunError> {
        let Some(h) = self.agent_loop.as_mut() else {
            return std::future::pending().await;
        };
        let r = h.await;
        self.agent_loop = None;
        r.map_err(|e| RunError::Task(e.to_string()))?
    }

    /// Stops everything and removes the socket.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        self.shutdown.send_replace(true);
        let result = match self.agent_loop.take() {
            Some(h) => h.await.map_err(|e| RunError::Task(e.to_string())).and_then(|r| r),
            None => Ok(()),
        };
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // The manager holds no external resources; it ends with the agent.
        self.manager_task.abort();
        let _ = std::fs::remove_file(&self.socket_path);
        if let Some(p) = &self.admin_socket_path {
            let _ = std::fs::remove_file(p);
        }
        result
    }
}

/// Starts the agent (see the module notes).
pub async fn start(config: AgentConfig) -> Result<RunningAgent, RunError> {
    let metrics = Arc::new(Metrics::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listener = workload::bind_socket(&config.socket_path)?;
    let admin_listener = config.admin_socket_path.as_deref().map(crate::admin::bind).transpose()?;

    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(Bundle::new(config.trust_domain.clone())));
    let addr = node::resolve(&config.server_address, config.server_port).await?;
    let conn = Arc::new(ServerConn::new(addr, node::server_id(&config.trust_domain)?, bundle_rx.clone()));
    let (manager, manager_task) = manager::spawn(conn.clone(), Some(bundle_tx.clone()), metrics.clone());

    let mut attestors: Vec<Arc<dyn WorkloadAttestor>> = vec![Arc::new(UnixAttestor::new(config.unix.clone()))];
    if let Some(k8s) = &config.k8s {
        let attestor = crate::k8s::K8sAttestor::new(k8s).map_err(|e| RunError::K8sConfig(e.to_string()))?;
        attestors.push(Arc::new(attestor));
    }
    let api = WorkloadApi::new(manager.subscribe(), attestors, Arc::new(manager.clone()), metrics.clone())
        .with_shutdown(shutdown_rx.clone());
    let mut tasks = vec![];
    let (snapshots, mut sd_trim) = (manager.subscribe(), shutdown_rx.clone());
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            () = crate::trim::trim_after_burst(snapshots) => {}
            _ = sd_trim.wait_for(|s| *s) => {}
        }
    }));
    let mut sd = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = sd.wait_for(|s| *s).await;
        };
        if let Err(e) = workload::serve(listener, api, stop).await {
            tracing::error!(error = %e, "Workload API server stopped");
        }
    }));

    if let Some(l) = admin_listener {
        tasks.push(tokio::spawn(crate::admin::serve(l, manager.subscribe(), metrics.clone(), shutdown_rx.clone())));
    }

    let health_addr = match config.health {
        Some((ip, port)) => {
            let l = tokio::net::TcpListener::bind((ip, port))
                .await
                .map_err(|source| RunError::Health { addr: format!("{ip}:{port}"), source })?;
            let bound = l.local_addr().map_err(|source| RunError::Health { addr: format!("{ip}:{port}"), source })?;
            tasks.push(tokio::spawn(crate::health::serve(l, manager.clone(), metrics.clone(), shutdown_rx.clone())));
            Some(bound)
        }
        None => None,
    };

    tracing::info!(socket = %config.socket_path.display(), server = %addr, trust_domain = %config.trust_domain, "agent starting");
    let socket_path = config.socket_path.clone();
    let admin_socket_path = config.admin_socket_path.clone();
    if let Some(p) = &admin_socket_path {
        tracing::info!(admin_socket = %p.display(), "admin socket serving pod identity readiness");
    }
    let ctx = LoopCtx { config, conn, manager: manager.clone(), bundle_tx, bundle_rx, metrics: metrics.clone() };
    let agent_loop = tokio::spawn(agent_loop(ctx, shutdown_rx));
    Ok(RunningAgent {
        socket_path,
        admin_socket_path,
        health_addr,
        manager,
        metrics,
        shutdown: shutdown_tx,
        agent_loop: Some(agent_loop),
        manager_task,
        tasks,
    })
}

struct LoopCtx {
    config: AgentConfig,
    conn: Arc<ServerConn>,
    manager: ManagerHandle,
    bundle_tx: watch::Sender<Arc<Bundle>>,
    bundle_rx: watch::Receiver<Arc<Bundle>>,
    metrics: Arc<Metrics>,
}

/// Sleeps for `d` unless shutdown is requested first (returns false then).
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

fn renew_at(identity: &StoredIdentity) -> i64 {
    let jitter = rand::random_range(-0.1..=0.1);
    rotation_time(identity.not_before.max(now_unix().min(identity.not_after)), identity.not_after, jitter)
}

impl LoopCtx {
    fn install(&self, identity: &StoredIdentity) -> Result<(), NodeError> {
        // Stored before first use: once the server has seen a renewed SVID it refuses the previous one, so
        // a restart must find the new one on disk.
        identity.save(&self.config.data_dir)?;
        self.bundle_tx.send_replace(Arc::new(identity.bundle.clone()));
        self.conn.set_identity(identity)
    }

    /// Whether the agent can attest (again) now: k8s_psat always, a join token once per run.
    fn can_attest(&self, token_used: bool) -> bool {
        match self.config.node_attestor() {
            Some(a) => a.reattestable() || !token_used,
            None => false,
        }
    }

    /// Attests with the configured node attestor, retrying while the server is unreachable if `retry`
    /// (otherwise the first failure is returned: a re-attestation while the current SVID is still valid
    /// must not hold up the entry stream). The evidence is made again for every try (a k8s_psat token is
    /// re-read: the kubelet rotates it).
    async fn attest(&self, stop: &mut watch::Receiver<bool>, retry: bool) -> Result<Option<StoredIdentity>, RunError> {
        let Some(attestor) = self.config.node_attestor() else {
            return Err(RunError::NeedJoinToken { data_dir: self.config.data_dir.clone() });
        };
        let current = self.bundle_rx.borrow().clone();
        let check = if !current.x509_authorities.is_empty() {
            ServerCheck::SpiffeId {
                expected: node::server_id(&self.config.trust_domain)?,
                bundle: self.bundle_rx.clone(),
            }
        } else {
            match &self.config.bootstrap {
                Bootstrap::TrustBundle(path) => {
                    let b = node::read_trust_bundle(path, &self.config.trust_domain)?;
                    self.bundle_tx.send_replace(Arc::new(b));
                    ServerCheck::SpiffeId {
                        expected: node::server_id(&self.config.trust_domain)?,
                        bundle: self.bundle_rx.clone(),
                    }
                }
                Bootstrap::Insecure => {
                    tracing::warn!("insecure bootstrap: the server is not authenticated for this first attestation");
                    ServerCheck::InsecureBootstrap
                }
                Bootstrap::StoredOnly => return Err(RunError::NeedBootstrap),
            }
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            let evidence = attestor.evidence()?;
            match node::attest(self.conn.addr(), check.clone(), &self.config.trust_domain, &evidence).await {
                Ok(identity) => {
                    self.metrics.attestations.inc();
                    tracing::info!(spiffe_id = %identity.spiffe_id, not_after = identity.not_after, method = attestor.name(), "attested");
                    return Ok(Some(identity));
                }
                Err(NodeError::Rpc(s))
                    if matches!(s.code(), Code::PermissionDenied | Code::InvalidArgument | Code::Unauthenticated) =>
                {
                    return Err(RunError::AttestationRefused(s.message().to_owned()));
                }
                Err(e) if !retry => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_secs = backoff.as_secs(), "attestation failed; retrying");
                    if !sleep_or_stop(backoff, stop).await {
                        return Ok(None);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn agent_loop(ctx: LoopCtx, mut stop: watch::Receiver<bool>) -> Result<(), RunError> {
    let td = ctx.config.trust_domain.clone();
    let stored = match StoredIdentity::load(&ctx.config.data_dir, &td) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the stored agent identity");
            None
        }
    };
    let mut token_used = false;
    let mut identity = match stored {
        Some(s) if !s.is_expired(now_unix() + 5) => {
            tracing::info!(spiffe_id = %s.spiffe_id, not_after = s.not_after, "using the stored agent SVID (no join token needed)");
            s
        }
        other => {
            if other.is_some() {
                tracing::info!("the stored agent SVID has expired; attesting again");
            }
            if let Some(b) = other.map(|s| s.bundle) {
                ctx.bundle_tx.send_replace(Arc::new(b));
            }
            token_used = true;
            match ctx.attest(&mut stop, true).await? {
                Some(i) => i,
                None => return Ok(()),
            }
        }
    };
    ctx.install(&identity)?;
    let mut renew_deadline = renew_at(&identity);
    let mut backoff = Duration::from_secs(1);
    let mut bundle_rx = ctx.bundle_rx.clone();
    bundle_rx.borrow_and_update();

    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if identity.is_expired(now_unix()) {
            if !ctx.can_attest(token_used) {
                tracing::error!(
                    "the agent SVID expired before it could be renewed (server unreachable for too long); stopping. Start the agent with a new join token"
                );
                let _ = std::fs::remove_file(StoredIdentity::path(&ctx.config.data_dir));
                return Err(RunError::SvidExpired);
            }
            tracing::warn!("the agent SVID expired before it could be renewed; attesting again");
            token_used = true;
            identity = match ctx.attest(&mut stop, true).await? {
                Some(i) => i,
                None => return Ok(()),
            };
            ctx.install(&identity)?;
            renew_deadline = renew_at(&identity);
        }
        // Renew first if due (also right after a restart late in the SVID's life). Re-attestable agents
        // attest again instead: their evidence is fresh, and the server refuses them RenewAgentSvid.
        if now_unix() >= renew_deadline && ctx.config.node_attestor().is_some_and(|a| a.reattestable()) {
            match ctx.attest(&mut stop, false).await {
                Ok(Some(new)) => {
                    identity = new;
                    ctx.install(&identity)?;
                    renew_deadline = renew_at(&identity);
                }
                Ok(None) => return Ok(()),
                Err(e) if !identity.is_expired(now_unix()) => {
                    // Refused, unreachable, or no token right now: keep serving with the current SVID (the
                    // entry stream reopens below) and try again after a backoff; an eviction or ban shows on
                    // the stream, and an SVID that runs out leads to the retrying attestation above.
                    tracing::warn!(error = %e, retry_in_secs = backoff.as_secs(), "re-attestation failed; keeping the current agent SVID for now");
                    renew_deadline = now_unix() + i64::try_from(backoff.as_secs()).unwrap_or(30);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        } else if now_unix() >= renew_deadline {
            match ctx.conn.renew(&identity, &td).await {
                Ok(new) => {
                    tracing::info!(spiffe_id = %new.spiffe_id, not_after = new.not_after, "agent SVID renewed");
                    identity = new;
                    ctx.install(&identity)?;
                    renew_deadline = renew_at(&identity);
                }
                Err(NodeError::Rpc(s)) if s.code() == Code::PermissionDenied => {
                    identity = match evicted(&ctx, &mut stop, &mut token_used, s.message()).await? {
                        Some(i) => i,
                        None => return Ok(()),
                    };
                    renew_deadline = renew_at(&identity);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "agent SVID renewal failed; retrying");
                    renew_deadline = now_unix() + i64::try_from(backoff.as_secs()).unwrap_or(30);
                }
            }
        }

        let stream = match ctx.conn.client() {
            Ok(mut c) => c.sync_entries(sigil_proto::agent::SyncEntriesRequest {}).await,
            Err(s) => Err(s),
        };
        let status = match stream {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                ctx.metrics.server_connected.set(1);
                let mut got_any = false;
                let end = loop {
                    let until_renew = u64::try_from(renew_deadline - now_unix()).unwrap_or(0);
                    tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(update)) => {
                                if !got_any {
                                    got_any = true;
                                    backoff = Duration::from_secs(1);
                                    ctx.manager.send(Command::Retry);
                                    tracing::info!("connected to the server's entry stream");
                                }
                                ctx.manager.send(Command::Sync(Box::new(update)));
                            }
                            Ok(None) => break None,
                            Err(s) => break Some(s),
                        },
                        r = bundle_rx.changed() => {
                            if r.is_ok() {
                                let b = bundle_rx.borrow_and_update().clone();
                                if !b.x509_authorities.is_empty() && b.as_ref() != &identity.bundle {
                                    identity.bundle = b.as_ref().clone();
                                    if let Err(e) = identity.save(&ctx.config.data_dir) {
                                        tracing::warn!(error = %e, "cannot store the new bundle");
                                    }
                                }
                            }
                        }
                        () = tokio::time::sleep(Duration::from_secs(until_renew)) => break None,
                        _ = stop.wait_for(|s| *s) => {
                            ctx.metrics.server_connected.set(0);
                            return Ok(());
                        }
                    }
                };
                ctx.metrics.server_connected.set(0);
                end
            }
            Err(s) => Some(s),
        };
        match status {
            None => continue, // stream ended or renewal due: reconnect at once
            Some(s) if s.code() == Code::PermissionDenied => {
                identity = match evicted(&ctx, &mut stop, &mut token_used, s.message()).await? {
                    Some(i) => i,
                    None => return Ok(()),
                };
                renew_deadline = renew_at(&identity);
            }
            Some(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), retry_in_secs = backoff.as_secs(), "server connection lost; serving cached SVIDs");
                if !sleep_or_stop(backoff, &mut stop).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Handles PermissionDenied from the server: re-attest (k8s_psat, or an unused join token), or stop.
async fn evicted(
    ctx: &LoopCtx,
    stop: &mut watch::Receiver<bool>,
    token_used: &mut bool,
    message: &str,
) -> Result<Option<StoredIdentity>, RunError> {
    if !ctx.can_attest(*token_used) {
        tracing::error!(
            reason = message,
            "the server no longer accepts this agent (evicted or banned); stopping. Start the agent with a new join token to attest again"
        );
        let _ = std::fs::remove_file(StoredIdentity::path(&ctx.config.data_dir));
        return Err(RunError::Evicted(message.to_owned()));
    }
    tracing::warn!(reason = message, "the server no longer accepts this agent; attesting again");
    *token_used = true;
    let Some(identity) = ctx.attest(stop, true).await? else { return Ok(None) };
    ctx.install(&identity)?;
    Ok(Some(identity))
}
