//! Sigil's node-only CSI driver: gives pods the agent's Workload API socket directory through an
//! ephemeral inline CSI volume (driver name `csi.spiffe.io` by default, so SPIFFE CSI pod specs work
//! unchanged), and registers itself with the kubelet (no node-driver-registrar sidecar needed).
//!
//! - [`validate`], [`mountinfo`]: pure request/path rules and `/proc/self/mountinfo` parsing.
//! - [`mounter`]: the bind mounts (nix syscalls).
//! - [`identity`]: the optional wait for the pod's identity at the agent (`-wait-for-identity`).
//! - [`service`]: the gRPC services (CSI Identity/Node/Controller, kubelet Registration).
//! - [`run`]: serves everything until shutdown.

pub mod cli;
pub mod identity;
pub mod mounter;
pub mod mountinfo;
pub mod service;
pub mod validate;

use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sigil_proto::csi::v1::controller_server::ControllerServer;
use sigil_proto::csi::v1::identity_server::IdentityServer;
use sigil_proto::csi::v1::node_server::NodeServer;
use sigil_proto::pluginregistration::registration_server::RegistrationServer;

use crate::service::{Driver, DriverConfig, Metrics, Registrar};

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Driver settings.
    pub driver: DriverConfig,
    /// Where to serve CSI (as this process sees it).
    pub csi_socket_path: PathBuf,
    /// Self-registration: the registration socket path and the CSI endpoint as the kubelet sees it.
    pub registration: Option<(PathBuf, String)>,
    /// Port for /healthz and /metrics (0.0.0.0); `None` turns them off.
    pub health_port: Option<u16>,
}

/// Errors starting the driver.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A socket could not be prepared or bound.
    #[error("{op} {path}: {source}")]
    Socket {
        /// What was attempted.
        op: &'static str,
        /// The socket path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The health listener could not be bound.
    #[error("health endpoint on port {port}: {source}")]
    Health {
        /// The port.
        port: u16,
        /// The error.
        source: io::Error,
    },
    /// The socket directory is not a readable directory.
    #[error("workload API socket directory {path}: {reason}")]
    SocketDir {
        /// The configured path.
        path: String,
        /// Why it is unusable.
        reason: String,
    },
    /// A gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds a Unix socket at `path`, replacing a stale socket file (never any other kind of file).
pub fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, RunError> {
    let err = |op| {
        let path = path.display().to_string();
        move |source| RunError::Socket { op, path, source }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err("create parent of"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err("remove stale socket"))?,
        Ok(_) => {
            return Err(RunError::Socket {
                op: "refusing to replace non-socket",
                path: path.display().to_string(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        Err(_) => {}
    }
    tokio::net::UnixListener::bind(path).map_err(err("bind"))
}

async fn health(
    port: u16,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener =
        tokio::net::TcpListener::bind(("0.0.0.0", port)).await.map_err(|source| RunError::Health { port, source })?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route("/metrics", axum::routing::get(move || async move { metrics.render() }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| RunError::Health { port, source })
}

/// Serves CSI (and registration, health) until `shutdown` resolves; removes its sockets afterwards.
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RunError> {
    match std::fs::metadata(&cfg.driver.socket_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(RunError::SocketDir {
                path: cfg.driver.socket_dir.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        Err(e) => {
            return Err(RunError::SocketDir {
                path: cfg.driver.socket_dir.display().to_string(),
                reason: e.to_string(),
            });
        }
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let wait = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let metrics = Arc::new(Metrics::default());
    let driver = Driver::new(cfg.driver.clone(), metrics.clone());
    let csi_listener = bind_unix(&cfg.csi_socket_path)?;
    tracing::info!(socket = %cfg.csi_socket_path.display(), name = %cfg.driver.name, node_id = %cfg.driver.node_id,
        socket_dir = %cfg.driver.socket_dir.display(), "serving CSI");
    match &cfg.driver.identity_wait {
        Some(w) => tracing::info!(agent_admin_socket = %w.socket.display(), timeout_ms = w.timeout.as_millis(),
            "NodePublishVolume waits for the pod's identity at the agent before mounting"),
        None => tracing::info!("NodePublishVolume mounts at once (no -wait-for-identity)"),
    }
    let csi = sigil_tls::unix_server()
        .add_service(IdentityServer::new(driver.clone()))
        .add_service(NodeServer::new(driver.clone()))
        .add_service(ControllerServer::new(driver))
        .serve_with_incoming_shutdown(sigil_tls::unix_incoming(csi_listener), wait());

    let reg = {
        let registration = cfg.registration.clone();
        let shutdown = wait();
        async move {
            let Some((path, endpoint)) = registration else { return Ok(()) };
            let listener = bind_unix(&path)?;
            tracing::info!(socket = %path.display(), %endpoint, "serving kubelet plugin registration");
            let registrar = Registrar { name: cfg.driver.name.clone(), endpoint };
            sigil_tls::unix_server()
                .add_service(RegistrationServer::new(registrar))
                .serve_with_incoming_shutdown(sigil_tls::unix_incoming(listener), shutdown)
                .await
                .map_err(RunError::from)
        }
    };
    let health = {
        let shutdown = wait();
        async move {
            match cfg.health_port {
                Some(port) => health(port, metrics, shutdown).await,
                None => Ok(()),
            }
        }
    };
    let trigger = async move {
        shutdown.await;
        let _ = tx.send(true);
        Ok::<(), RunError>(())
    };
    let result = tokio::try_join!(async { csi.await.map_err(RunError::from) }, reg, health, trigger);
    for path in std::iter::once(&cfg.csi_socket_path).chain(cfg.registration.as_ref().map(|(p, _)| p)) {
        let _ = std::fs::remove_file(path);
    }
    result.map(|_| ())
}
