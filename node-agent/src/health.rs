//! `/live`, `/ready` and `/metrics` over HTTP.
//!
//! `/live` is 200 while the process serves; `/ready` is 200 once the agent has its first entry snapshot
//! from the server (the Workload API can answer), 503 before; `/metrics` is the Prometheus text format.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

use crate::manager::ManagerHandle;
use crate::metrics::Metrics;

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    manager: ManagerHandle,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/live", get(|| async { (StatusCode::OK, "live\n") }))
        .route(
            "/ready",
            get(move || {
                let ready = manager.snapshot().synced;
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready: waiting for the first sync with the server\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "health listener stopped");
    }
}
