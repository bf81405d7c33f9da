//! `sigil-server run`: wires the datastore, CA, state and listeners together and keeps the CA rotating.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use sigil_proto::admin::{agents_server, bundles_server, entries_server, svids_server, trust_domains_server};
use sigil_proto::agent::node_server;
use sigil_tls::ServerCertSlot;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::api::admin::{AdminApi, PeerUidCheck};
use crate::api::agent::AgentApi;
use crate::attestor::Attestors;
use crate::bundle_endpoint::cert_file;
use crate::ca::CaManager;
use crate::config::{ServerConfig, ServingProfile};
use crate::metrics::Metrics;
use crate::notifier::k8sbundle::K8sBundleNotifier;
use crate::state::{ServerState, now_unix};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("admin socket {path}: {source}")]
    AdminSocket { path: PathBuf, source: std::io::Error },
    #[error("admin socket: {0}")]
    SocketDir(#[from] sigil_tls::SocketDirError),
    #[error("agent API listener {addr}: {source}")]
    AgentListener { addr: SocketAddr, source: std::io::Error },
    #[error("health listener {addr}: {source}")]
    HealthListener { addr: SocketAddr, source: std::io::Error },
    #[error("datastore: {0}")]
    Datastore(#[from] crate::datastore::DatastoreError),
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("TLS: {0}")]
    Tls(#[from] sigil_tls::TlsError),
    #[error("node attestor: {0}")]
    Attestor(#[from] crate::attestor::KubeSetupError),
    #[error("bundle notifier: {0}")]
    Notifier(#[from] crate::notifier::k8sbundle::NotifierSetupError),
    #[error(transparent)]
    BundleEndpoint(#[from] crate::bundle_endpoint::BundleEndpointError),
    #[error("config field `federation.federates_with.\"{trust_domain}\".ca_file_path`: {message}")]
    FederationCaFile { trust_domain: String, message: String },
}

/// A started server; dropping it does not stop it, [`RunningServer::shutdown`] does.
#[derive(Debug)]
pub struct RunningServer {
    pub state: Arc<ServerState>,
    pub agent_addr: SocketAddr,
    pub health_addr: Option<SocketAddr>,
    /// The federation bundle endpoint's bound address, when `[federation.bundle_endpoint]` is configured.
    pub bundle_endpoint_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Resolves when a shutdown was requested.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

fn ensure_private_dir(path: &Path) -> Result<(), RunError> {
    if path.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| RunError::DataDir { path: path.to_owned(), source })
}

/// Mints the server's own SVID (`spiffe://<td>/spire/server`) for the agent API's TLS.
fn refresh_server_svid(state: &ServerState, slot: &ServerCertSlot) -> Result<i64, RunError> {
    let (issued, key) = state.ca().mint_x509_svid(&state.server_id, &[], None, now_unix())?;
    let expires_at = issued.expires_at;
    slot.set(sigil_tls::certified_key(&issued.chain_der, &key)?);
    Ok(expires_at)
}

/// Starts everything and returns once all listeners are bound.
pub async fn start(config: ServerConfig) -> Result<RunningServer, RunError> {
    ensure_private_dir(&config.data_dir)?;
    let attestors = Arc::new(Attestors::from_config(&config).await?);
    let notifier = match &config.k8sbundle {
        Some(c) => Some(K8sBundleNotifier::connect(c).await?),
        None => None,
    };
    // The https_web certificate files are read before anything starts, so a bad pair stops the start
    // with nothing left running.
    let web_cert = match config.bundle_endpoint.as_ref().map(|b| &b.profile) {
        Some(ServingProfile::HttpsWeb(files)) => {
            let contents = cert_file::read_pair(files).map_err(crate::bundle_endpoint::BundleEndpointError::from)?;
            Some(
                cert_file::Reloader::start(files.clone(), contents)
                    .map_err(crate::bundle_endpoint::BundleEndpointError::from)?,
            )
        }
        _ => None,
    };
    // The config file's https_web CA files are read before anything starts too (and again at every fetch).
    for c in &config.federates_with {
        if let Some(path) = &c.ca_file_path {
            crate::federation::check_ca_file(path).map_err(|message| RunError::FederationCaFile {
                trust_domain: c.relationship.trust_domain.to_string(),
                message,
            })?;
        }
    }
    let ds = crate::datastore::open_sqlite(&config.data_dir.join("datastore.sqlite3")).await?;
    let journal = ds.load_ca_journal().await?;
    let (ca, journal) =
        CaManager::load_or_init(&config.data_dir, crate::ca::config_from(&config), journal, now_unix())?;
    ds.store_ca_journal(journal).await?;

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let state = ServerState::new(config.clone(), ds, ca, metrics).await?;
    state.rotate_ca().await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = vec![];

    // Admin API on the Unix socket.
    let sock = config.socket_path.clone();
    if let Some(parent) = sock.parent() {
        // Nobody but root and the server may be able to replace the socket, or even reach it; a configured
        // shared volume above it may be open to the pod's other containers if it is a mount point.
        sigil_tls::prepare_socket_dir_with(parent, true, config.socket_shared_volume.as_deref())?;
    }
    if sock.exists() {
        std::fs::remove_file(&sock).map_err(|source| RunError::AdminSocket { path: sock.clone(), source })?;
    }
    let uds = UnixListener::bind(&sock).map_err(|source| RunError::AdminSocket { path: sock.clone(), source })?;
    // Access is decided by peer credentials; the mode only keeps other users from connecting at all.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o770))
        .map_err(|source| RunError::AdminSocket { path: sock.clone(), source })?;
    let check = PeerUidCheck { server_uid: nix::unistd::geteuid().as_raw() };
    let admin = AdminApi { state: state.clone() };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sigil_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    let mut rx = shutdown_rx.clone();
    let admin_router = sigil_tls::unix_server()
        .add_service(entries_server::EntriesServer::with_interceptor(admin.clone(), check))
        .add_service(agents_server::AgentsServer::with_interceptor(admin.clone(), check))
        .add_service(bundles_server::BundlesServer::with_interceptor(admin.clone(), check))
        .add_service(svids_server::SvidsServer::with_interceptor(admin.clone(), check))
        .add_service(trust_domains_server::TrustDomainsServer::with_interceptor(admin, check))
        .add_optional_service(reflection);
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = admin_router.serve_with_incoming_shutdown(sigil_tls::unix_incoming(uds), stop).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    }));

    // Agent API on TCP with SPIFFE TLS.
    let slot = Arc::new(ServerCertSlot::default());
    let mut svid_expiry = refresh_server_svid(&state, &slot)?;
    let tls = Arc::new(sigil_tls::server_config(slot.clone(), state.bundle_watch())?);
    let addr = SocketAddr::new(config.bind_address, config.bind_port);
    let listener = TcpListener::bind(addr).await.map_err(|source| RunError::AgentListener { addr, source })?;
    let agent_addr = listener.local_addr().map_err(|source| RunError::AgentListener { addr, source })?;
    let agent_api = AgentApi { state: state.clone(), attestors };
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let result = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(node_server::NodeServer::new(agent_api).max_decoding_message_size(64 * 1024 * 1024))
            .serve_with_incoming_shutdown(sigil_tls::incoming(listener, tls), stop)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "agent API stopped");
        }
    }));

    // The federation bundle endpoint. https_spiffe presents the server's own SVID from the agent API's
    // slot, so it is renewed with it by the rotation task below.
    let mut bundle_endpoint_addr = None;
    if let Some(be) = &config.bundle_endpoint {
        for warning in &be.warnings {
            tracing::warn!("{warning}");
        }
        let certs = match web_cert {
            None => slot.clone(),
            Some((reloader, loaded)) => {
                let web = Arc::new(ServerCertSlot::default());
                web.set(loaded.key);
                tasks.push(tokio::spawn(cert_file::watch(reloader, web.clone(), shutdown_rx.clone())));
                web
            }
        };
        let (addr, task) = crate::bundle_endpoint::start(be, certs, state.clone(), shutdown_rx.clone()).await?;
        tasks.push(task);
        tracing::info!(
            address = %addr,
            profile = be.profile.name(),
            refresh_hint_secs = be.refresh_hint.as_secs(),
            "federation bundle endpoint serving"
        );
        bundle_endpoint_addr = Some(addr);
    }

    // Fetching the bundles of the trust domains this server federates with (config file and admin API).
    tasks.push(tokio::spawn(crate::federation::manager::run(state.clone(), shutdown_rx.clone())));

    // CA rotation and the server's own SVID, checked often enough for short test lifetimes.
    let tick = (config.ca_ttl / 24).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let rot_state = state.clone();
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        let mut seq = rot_state.bundle().sequence;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = rx.wait_for(|s| *s) => return,
            }
            if let Err(e) = rot_state.rotate_ca().await {
                tracing::error!(error = %e, "CA rotation step failed");
            }
            let new_seq = rot_state.bundle().sequence;
            let half_life_passed =
                now_unix() >= svid_expiry - (rot_state.config.default_x509_svid_ttl.as_secs() as i64) / 2;
            if new_seq != seq || half_life_passed {
                match refresh_server_svid(&rot_state, &slot) {
                    Ok(exp) => svid_expiry = exp,
                    Err(e) => tracing::error!(error = %e, "server SVID refresh failed"),
                }
                seq = new_seq;
            }
        }
    }));

    // The k8sbundle notifier: the ConfigMap follows the bundle, from the one published above on.
    if let Some(notifier) = notifier {
        let bundles = state.bundle_watch();
        let metrics = state.metrics.clone();
        tasks.push(tokio::spawn(notifier.run(bundles, shutdown_rx.clone(), metrics)));
    }

    let mut health_addr = None;
    if let Some((ip, port)) = config.health {
        let addr = SocketAddr::new(ip, port);
        let registry = Arc::new(registry);
        let (handle, bound) = crate::health::serve(addr, state.clone(), registry)
            .await
            .map_err(|source| RunError::HealthListener { addr, source })?;
        tasks.push(handle);
        health_addr = Some(bound);
    }

    state.set_ready();
    tracing::info!(
        trust_domain = %config.trust_domain,
        agent_api = %agent_addr,
        admin_socket = %config.socket_path.display(),
        health = ?health_addr,
        bundle_endpoint = ?bundle_endpoint_addr,
        "sigil-server ready"
    );
    Ok(RunningServer { state, agent_addr, health_addr, bundle_endpoint_addr, shutdown, tasks })
}
