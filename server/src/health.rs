//! `/live`, `/ready` and `/metrics` over plain HTTP (bound to loopback by default).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::state::ServerState;

#[derive(Clone)]
struct HealthState {
    server: Arc<ServerState>,
    registry: Arc<Registry>,
}

async fn live() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn ready(State(s): State<HealthState>) -> impl IntoResponse {
    if s.server.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

async fn metrics(State(s): State<HealthState>) -> impl IntoResponse {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &s.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], String::new());
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

/// Serves until the process ends.
pub async fn serve(
    addr: SocketAddr,
    server: Arc<ServerState>,
    registry: Arc<Registry>,
) -> std::io::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(HealthState { server, registry });
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health listener stopped");
        }
    });
    Ok((handle, bound))
}
