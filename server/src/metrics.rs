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
    /// Foreign bundle fetches by `trust_domain` and `result` (`ok`, `error`).
    pub federation_fetches: Family<Vec<(String, String)>, Counter>,
    /// Fetched foreign bundles that differed from the stored one (and were stored), by `trust_domain`.
    pub federation_bundle_updates: Family<Vec<(String, String)>, Counter>,
    /// Unix time of the last successful fetch, by `trust_domain`.
    pub federation_last_success: Family<Vec<(String, String)>, Gauge>,
    /// Failed fetches in a row (0 = the last one succeeded), by `trust_domain`.
    pub federation_consecutive_failures: Family<Vec<(String, String)>, Gauge>,
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
        r.register(
            "federation_fetches",
            "Foreign trust bundle fetches by trust domain and result (ok, error)",
            self.federation_fetches.clone(),
        );
        r.register(
            "federation_bundle_updates",
            "Fetched foreign trust bundles that changed the stored bundle, by trust domain",
            self.federation_bundle_updates.clone(),
        );
        r.register(
            "federation_last_success_timestamp_seconds",
            "Unix time of the last successful foreign bundle fetch, by trust domain",
            self.federation_last_success.clone(),
        );
        r.register(
            "federation_consecutive_failures",
            "Failed foreign bundle fetches in a row (0 when the last one succeeded), by trust domain",
            self.federation_consecutive_failures.clone(),
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

    fn td_label(td: &str) -> Vec<(String, String)> {
        vec![("trust_domain".to_owned(), td.to_owned())]
    }

    fn fetch_label(td: &str, result: &str) -> Vec<(String, String)> {
        vec![("trust_domain".to_owned(), td.to_owned()), ("result".to_owned(), result.to_owned())]
    }

    /// Records one foreign bundle fetch of `td`: its result, and on success the time and whether it changed
    /// the stored bundle; `failures` is the count of failures in a row after it.
    pub fn federation_fetch(&self, td: &str, ok: bool, changed: bool, now_unix: i64, failures: u32) {
        self.federation_fetches.get_or_create(&Self::fetch_label(td, if ok { "ok" } else { "error" })).inc();
        if ok {
            self.federation_last_success.get_or_create(&Self::td_label(td)).set(now_unix);
        }
        if changed {
            self.federation_bundle_updates.get_or_create(&Self::td_label(td)).inc();
        }
        self.federation_consecutive_failures.get_or_create(&Self::td_label(td)).set(i64::from(failures));
    }

    /// The count of fetches of `td` with `result` ("ok" or "error") so far.
    pub fn federation_fetches_of(&self, td: &str, result: &str) -> u64 {
        self.federation_fetches.get_or_create(&Self::fetch_label(td, result)).get()
    }

    /// Drops the series of a trust domain whose relationship is gone.
    pub fn federation_forget(&self, td: &str) {
        for result in ["ok", "error"] {
            self.federation_fetches.remove(&Self::fetch_label(td, result));
        }
        self.federation_bundle_updates.remove(&Self::td_label(td));
        self.federation_last_success.remove(&Self::td_label(td));
        self.federation_consecutive_failures.remove(&Self::td_label(td));
    }
}
