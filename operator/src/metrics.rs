//! Prometheus metrics and the health endpoints (`/healthz`, `/readyz` on the health address, `/metrics` on
//! the metrics address), named after spire-controller-manager's ports so probes carry over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// What the operator counts; cheap to clone (shared atomics).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reconcile passes by kind (incremental, full), seconds.
    pub reconcile_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Entry writes by op (create, update, delete) and result (ok, error).
    pub entry_writes: Family<Labels, Counter>,
    /// Entries a full resync found out of line with the cluster and repaired.
    pub drift_repaired: Counter,
    /// Errors by stage (list, write, status, watch).
    pub errors: Family<Labels, Counter>,
    /// Requests the operator sent to the Kubernetes API, by method (a watch counts once when opened).
    pub kube_requests: Family<Labels, Counter>,
    pub pods: Gauge,
    pub entries: Gauge,
    pub leader: Gauge,
    pub render_failures: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconcile_seconds: Family::new_with_constructor(reconcile_histogram),
            entry_writes: Family::default(),
            drift_repaired: Counter::default(),
            errors: Family::default(),
            kube_requests: Family::default(),
            pods: Gauge::default(),
            entries: Gauge::default(),
            leader: Gauge::default(),
            render_failures: Gauge::default(),
        }
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("sigil_operator");
        r.register("reconcile_seconds", "Reconcile pass duration by kind (full: from the listing of the server's entries to the last slice compared, with pod changes written between slices)", self.reconcile_seconds.clone());
        r.register("entry_writes", "Entry writes by op and result", self.entry_writes.clone());
        r.register("drift_repaired", "Entries repaired by a full resync", self.drift_repaired.clone());
        r.register("errors", "Errors by stage", self.errors.clone());
        r.register("kube_requests", "Kubernetes API requests by method", self.kube_requests.clone());
        r.register("pods", "Pods in the operator's cache", self.pods.clone());
        r.register("entries", "Entries the operator owns on the server", self.entries.clone());
        r.register("leader", "1 while this replica holds the leader lease", self.leader.clone());
        r.register("render_failures", "Pod entries that failed to render", self.render_failures.clone());
    }

    pub fn error(&self, stage: &str) {
        self.errors.get_or_create(&labels(&[("stage", stage)])).inc();
    }
}

/// Liveness/readiness flags the controller sets.
#[derive(Debug, Default)]
pub struct Health {
    /// Every watch has delivered its initial list.
    pub synced: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    if encode(&mut body, &s.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], String::new());
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.synced.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the initial lists")
    }
}

/// Binds and serves in the background; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
    with_metrics: bool,
    with_health: bool,
) -> std::io::Result<SocketAddr> {
    let mut app = Router::new();
    if with_metrics {
        app = app.route("/metrics", get(metrics));
    }
    if with_health {
        app = app.route("/healthz", get(healthz)).route("/readyz", get(readyz));
    }
    let app = app.with_state(AppState { registry, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(bound)
}
