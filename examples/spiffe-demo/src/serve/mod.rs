//! `spiffe-demo serve`: the HTTP API showing each SPIFFE flow, and the mTLS listener the other instance
//! calls.

pub mod jwt;
pub mod mtls;
pub mod routes;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use spiffe::SpiffeId;

use self::mtls::PeerUrl;
use self::routes::App;
use self::state::Shared;

/// How long the Workload API watch waits before reconnecting.
pub const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The Workload API endpoint (`unix:///path`).
    pub endpoint: String,
    pub listen: SocketAddr,
    pub mtls_listen: Option<SocketAddr>,
    pub peer: Option<PeerUrl>,
    pub peer_id: Option<SpiffeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Bind(std::io::Error),
    #[error(transparent)]
    Mtls(#[from] mtls::MtlsError),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// Runs until the HTTP server fails, or until SIGTERM or SIGINT (then it stops at once: as a container's PID 1
/// an unhandled SIGTERM is ignored, and the pod would wait out its whole grace period).
pub async fn run(o: ServeOptions) -> Result<(), ServeError> {
    let shared = Shared::new(o.endpoint.clone());
    tokio::spawn(state::watch(shared.clone(), RETRY));
    let http = mtls::bind(o.listen).await.map_err(ServeError::Bind)?;
    let http_addr = http.local_addr().map_err(ServeError::Bind)?;
    let mtls_listener = match o.mtls_listen {
        Some(a) => Some(mtls::bind(a).await.map_err(ServeError::Bind)?),
        None => None,
    };
    let mtls_addr = mtls_listener.as_ref().and_then(|l| l.local_addr().ok());
    let app =
        App { shared: shared.clone(), peer: o.peer, peer_id: o.peer_id, mtls_listen: mtls_addr.map(|a| a.to_string()) };
    if let Some(l) = mtls_listener {
        let config = mtls::server_config(shared.clone())?;
        tokio::spawn(mtls::serve(l, config, routes::peer_router(app.clone())));
    }
    println!(
        "spiffe-demo: HTTP on http://{http_addr}, mTLS on {}, Workload API at {}",
        mtls_addr.map_or_else(|| "(none)".to_owned(), |a| format!("https://{a}")),
        o.endpoint
    );
    axum::serve(http, routes::router(app)).with_graceful_shutdown(stop_signal()).await.map_err(ServeError::Http)
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
