//! Prometheus metrics of the agent.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The agent's metrics; cheap to clone handles, one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Workload X509-SVIDs currently cached.
    pub cached_svids: Gauge,
    /// Workload X509-SVIDs signed (first issue and rotations).
    pub svids_signed: Counter,
    /// Failed signing attempts (per entry or per batch call).
    pub sign_failures: Counter,
    /// 1 once the first entry snapshot arrived.
    pub synced: Gauge,
    /// 1 while the sync stream to the server is open.
    pub server_connected: Gauge,
    /// Workload API calls by method and gRPC code.
    pub workload_calls: Family<Labels, Counter>,
    /// Successful node attestations (first, and every re-attestation of a k8s_psat agent).
    pub attestations: Counter,
    /// Admin-socket pod identity calls by result: `ready`, `timeout` (not ready when the wait ended),
    /// `refused` (malformed request, too many waiters).
    pub pod_waits: Family<Labels, Counter>,
    /// How long admin-socket pod identity calls waited (ready or not), seconds.
    pub pod_wait_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sigil_agent");
        let m = Self {
            registry: Registry::default(),
            cached_svids: Gauge::default(),
            svids_signed: Counter::default(),
            sign_failures: Counter::default(),
            synced: Gauge::default(),
            server_connected: Gauge::default(),
            workload_calls: Family::default(),
            attestations: Counter::default(),
            pod_waits: Family::default(),
            // 1 ms .. ~33 s (the longest wait is 30 s).
            pod_wait_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        registry.register("cached_svids", "Workload X509-SVIDs cached", m.cached_svids.clone());
        registry.register("svids_signed", "Workload X509-SVIDs signed", m.svids_signed.clone());
        registry.register("sign_failures", "Failed X509-SVID signing attempts", m.sign_failures.clone());
        registry.register("synced", "1 once the first entry snapshot arrived", m.synced.clone());
        registry.register("server_connected", "1 while the sync stream is open", m.server_connected.clone());
        registry.register("workload_api_calls", "Workload API calls by method and code", m.workload_calls.clone());
        registry.register("node_attestations", "Successful node attestations", m.attestations.clone());
        registry.register("pod_identity_waits", "Admin-socket pod identity calls by result", m.pod_waits.clone());
        registry.register(
            "pod_identity_wait_seconds",
            "Time admin-socket pod identity calls waited",
            m.pod_wait_seconds.clone(),
        );
        Self { registry, ..m }
    }

    pub fn count_call(&self, method: &str, code: tonic::Code) {
        self.workload_calls
            .get_or_create(&vec![("method".to_owned(), method.to_owned()), ("code".to_owned(), format!("{code:?}"))])
            .inc();
    }

    pub fn count_pod_wait(&self, result: &str) {
        self.pod_waits.get_or_create(&vec![("result".to_owned(), result.to_owned())]).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let m = Metrics::new();
        m.cached_svids.set(3);
        m.count_call("FetchX509SVID", tonic::Code::Ok);
        m.count_pod_wait("ready");
        m.pod_wait_seconds.observe(0.25);
        let text = m.encode();
        assert!(text.contains("sigil_agent_pod_identity_waits_total{result=\"ready\"} 1"), "{text}");
        assert!(text.contains("sigil_agent_pod_identity_wait_seconds_count 1"), "{text}");
        assert!(text.contains("sigil_agent_cached_svids 3"), "{text}");
        assert!(
            text.contains("sigil_agent_workload_api_calls_total{method=\"FetchX509SVID\",code=\"Ok\"} 1"),
            "{text}"
        );
    }
}
