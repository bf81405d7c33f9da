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
    /// `result` = `ok` (the ConfigMap key was written) or `error` (a sync attempt failed); a sync that
    /// found the key already current writes nothing and counts nothing.
    pub bundle_notifier_writes: Family<Vec<(String, String)>, Counter>,
    /// Requests answered by the federation bundle endpoint, by HTTP status `code` (200, 404, 405, 500).
    pub bundle_endpoint_requests: Family<Vec<(String, String)>, Counter>,
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
        r.register(
            "bundle_notifier_writes",
            "Trust bundle ConfigMap writes of the k8sbundle notifier by result (ok, error)",
            self.bundle_notifier_writes.clone(),
        );
        r.register(
            "bundle_endpoint_requests",
            "Requests answered by the federation bundle endpoint by HTTP status code",
            self.bundle_endpoint_requests.clone(),
        );
    }

    /// Counts one k8sbundle notifier write attempt with `result` "ok" or "error".
    pub fn bundle_notifier_write(&self, result: &'static str) {
        self.bundle_notifier_writes.get_or_create(&vec![("result".to_owned(), result.to_owned())]).inc();
    }

    /// The count of k8sbundle notifier writes with `result` so far.
    pub fn bundle_notifier_writes_of(&self, result: &'static str) -> u64 {
        self.bundle_notifier_writes.get_or_create(&vec![("result".to_owned(), result.to_owned())]).get()
    }

    /// Counts one bundle endpoint request answered with HTTP status `code`.
    pub fn bundle_endpoint_request(&self, code: u16) {
        self.bundle_endpoint_requests.get_or_create(&vec![("code".to_owned(), code.to_string())]).inc();
    }

    /// The count of bundle endpoint requests answered with `code` so far.
    pub fn bundle_endpoint_requests_of(&self, code: u16) -> u64 {
        self.bundle_endpoint_requests.get_or_create(&vec![("code".to_owned(), code.to_string())]).get()
    }
}
