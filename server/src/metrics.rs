//! Prometheus metrics (OpenMetrics text on `/metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges the server updates; cheap to clone (shared atomics).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub entries: Gauge,
    pub entry_writes: Counter,
    pub agents_connected: Gauge,
    pub x509_svids_signed: Counter,
    pub jwt_svids_signed: Counter,
    pub attestations: Family<Vec<(String, String)>, Counter>,
    pub admin_requests: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("sigil_server");
        r.register("entries", "Registration entries in the server's index", self.entries.clone());
        r.register("entry_writes", "Entries created, updated or deleted", self.entry_writes.clone());
        r.register("agents_connected", "Agents with an open entry sync stream", self.agents_connected.clone());
        r.register("x509_svids_signed", "X509-SVIDs signed", self.x509_svids_signed.clone());
        r.register("jwt_svids_signed", "JWT-SVIDs signed", self.jwt_svids_signed.clone());
        r.register("attestations", "Node attestations by type and result", self.attestations.clone());
        r.register("admin_requests", "Admin API requests by method and code", self.admin_requests.clone());
    }
}
