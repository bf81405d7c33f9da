//! The workload's view of the Workload API: the current X509-SVID and bundles, kept by a watch that
//! reconnects on its own, and the history of the SVIDs seen (the rotation record).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use serde::Serialize;
use spiffe::{WorkloadApiClient, X509BundleSet, X509Svid};

use crate::svid::{SvidSummary, summarize};
use crate::validate::{now_unix, rfc3339};

/// How many SVIDs the rotation history keeps (the oldest go first).
pub const HISTORY_CAP: usize = 200;

/// One SVID as it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    #[serde(flatten)]
    pub svid: SvidSummary,
    pub received_at: String,
    #[serde(skip)]
    pub received_unix: i64,
}

/// The SVIDs seen, in arrival order, one per serial.
#[derive(Debug, Clone, Default)]
pub struct RotationHistory {
    seen: Vec<Seen>,
}

/// A new SVID that arrived only after the previous one had expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub previous_serial: String,
    pub previous_not_after: String,
    pub next_serial: String,
    pub next_received_at: String,
}

impl RotationHistory {
    /// Records `svid` received at `at` (unix seconds). The same serial again (a reconnect re-sends the
    /// current SVID) is not a rotation. Returns whether it was new.
    pub fn record(&mut self, svid: SvidSummary, at: i64) -> bool {
        if self.seen.iter().any(|s| s.svid.serial == svid.serial) {
            return false;
        }
        self.seen.push(Seen { svid, received_at: rfc3339(at), received_unix: at });
        if self.seen.len() > HISTORY_CAP {
            self.seen.remove(0);
        }
        true
    }

    pub fn seen(&self) -> &[Seen] {
        &self.seen
    }

    /// Rotations: SVIDs after the first.
    pub fn rotations(&self) -> usize {
        self.seen.len().saturating_sub(1)
    }

    /// Every place where the next SVID came at or after the previous one's notAfter.
    pub fn gaps(&self) -> Vec<Gap> {
        self.seen
            .windows(2)
            .filter(|w| w[1].received_unix >= w[0].svid.not_after_unix)
            .map(|w| Gap {
                previous_serial: w[0].svid.serial.clone(),
                previous_not_after: w[0].svid.not_after.clone(),
                next_serial: w[1].svid.serial.clone(),
                next_received_at: w[1].received_at.clone(),
            })
            .collect()
    }

    pub fn last_rotation(&self) -> Option<&Seen> {
        if self.seen.len() > 1 { self.seen.last() } else { None }
    }
}

/// What the watch knows now.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub svid: Option<Arc<X509Svid>>,
    pub bundles: Option<Arc<X509BundleSet>>,
    /// The client of the live connection (for JWT-SVIDs and JWT bundles).
    pub client: Option<WorkloadApiClient>,
    pub agent_reachable: bool,
    /// The X.509 stream is live (the agent answers and gives this workload an identity).
    pub streaming: bool,
    pub last_error: Option<String>,
    /// Bundle updates seen (a changed set of authorities counts once).
    pub bundle_sequence: u64,
    bundle_fingerprint: Vec<Vec<u8>>,
    pub history: RotationHistory,
}

/// Why the service cannot answer a `/spiffe/...` request now (HTTP 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("Workload API unreachable at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the Workload API at {endpoint} gives this workload no identity: {reason}")]
    NoIdentity { endpoint: String, reason: String },
    #[error("no X509-SVID from the Workload API yet")]
    NoSvid,
}

/// The state shared by the HTTP handlers and the watch.
#[derive(Debug)]
pub struct Shared {
    pub endpoint: String,
    inner: RwLock<Snapshot>,
}

/// The material a handler works with: present only while the agent is reachable and has given an SVID.
#[derive(Debug, Clone)]
pub struct Ready {
    pub svid: Arc<X509Svid>,
    pub bundles: Arc<X509BundleSet>,
    pub client: WorkloadApiClient,
}

impl Shared {
    pub fn new(endpoint: String) -> Arc<Self> {
        Arc::new(Self { endpoint, inner: RwLock::new(Snapshot::default()) })
    }

    fn read<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        match self.inner.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut Snapshot) -> T) -> T {
        match self.inner.write() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// The current SVID, bundles and client, or why not.
    pub fn ready(&self) -> Result<Ready, Unavailable> {
        self.read(|s| {
            if !s.agent_reachable {
                return Err(Unavailable::Unreachable {
                    endpoint: self.endpoint.clone(),
                    reason: s.last_error.clone().unwrap_or_else(|| "not connected yet".into()),
                });
            }
            if !s.streaming {
                return Err(Unavailable::NoIdentity {
                    endpoint: self.endpoint.clone(),
                    reason: s.last_error.clone().unwrap_or_else(|| "no answer yet".into()),
                });
            }
            match (&s.svid, &s.bundles, &s.client) {
                (Some(svid), Some(bundles), Some(client)) => {
                    Ok(Ready { svid: svid.clone(), bundles: bundles.clone(), client: client.clone() })
                }
                _ => Err(Unavailable::NoSvid),
            }
        })
    }

    /// The current SVID whatever the agent's state (the mTLS listener keeps serving the last one it has).
    pub fn current_svid(&self) -> Option<Arc<X509Svid>> {
        self.read(|s| s.svid.clone())
    }

    pub fn current_bundles(&self) -> Option<Arc<X509BundleSet>> {
        self.read(|s| s.bundles.clone())
    }

    pub fn with<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        self.read(f)
    }

    fn connected(&self, client: WorkloadApiClient) {
        self.write(|s| s.client = Some(client));
    }

    /// A new X.509 context from the Workload API (also how the in-process TLS tests feed SVIDs).
    pub(crate) fn update(&self, svid: Option<Arc<X509Svid>>, bundles: Arc<X509BundleSet>) {
        let summary = svid.as_deref().and_then(|s| summarize(s).ok());
        let fingerprint: Vec<Vec<u8>> = {
            let mut v: Vec<Vec<u8>> =
                bundles.iter().flat_map(|(_, b)| b.authorities().iter().map(|a| a.as_bytes().to_vec())).collect();
            v.sort();
            v
        };
        self.write(|s| {
            if let Some(sum) = summary {
                s.history.record(sum, now_unix());
            }
            if s.bundle_fingerprint != fingerprint {
                s.bundle_fingerprint = fingerprint;
                s.bundle_sequence += 1;
            }
            s.svid = svid;
            s.bundles = Some(bundles);
            s.agent_reachable = true;
            s.streaming = true;
            s.last_error = None;
        });
    }

    /// The stream ended or never started. `reachable`: the agent answered, but with no identity for this
    /// workload (its handlers still cannot work: 503 with that reason).
    fn lost(&self, reason: String, reachable: bool) {
        self.write(|s| {
            s.agent_reachable = reachable;
            s.streaming = false;
            if !reachable {
                s.client = None;
            }
            s.last_error = Some(reason);
        });
    }
}

/// Watches the Workload API for ever: connect, stream X.509 contexts, and on any error or end of stream
/// mark the agent unreachable and try again (every `retry`).
pub async fn watch(shared: Arc<Shared>, retry: Duration) {
    loop {
        let (reason, reachable) = match WorkloadApiClient::connect_to(&shared.endpoint).await {
            Err(e) => classify(&e),
            Ok(client) => match client.stream_x509_contexts().await {
                Err(e) => classify(&e),
                Ok(mut stream) => {
                    shared.connected(client);
                    loop {
                        match stream.next().await {
                            Some(Ok(ctx)) => shared.update(ctx.default_svid().cloned(), ctx.bundle_set().clone()),
                            Some(Err(e)) => break classify(&e),
                            None => break ("the Workload API closed the stream".to_owned(), false),
                        }
                    }
                }
            },
        };
        shared.lost(reason, reachable);
        tokio::time::sleep(retry).await;
    }
}

/// The reason, and whether the agent answered (it did when it refuses this workload an identity).
fn classify(e: &spiffe::WorkloadApiError) -> (String, bool) {
    use spiffe::WorkloadApiError as E;
    (e.to_string(), matches!(e, E::NoIdentityIssued | E::PermissionDenied(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(serial: &str, nb: i64, na: i64) -> SvidSummary {
        SvidSummary {
            spiffe_id: "spiffe://example.org/a".into(),
            serial: serial.into(),
            not_before: rfc3339(nb),
            not_after: rfc3339(na),
            not_before_unix: nb,
            not_after_unix: na,
            uri_sans: vec![],
            dns_sans: vec![],
            subject: String::new(),
            issuer: String::new(),
            chain_length: 1,
            hint: None,
        }
    }

    #[test]
    fn history_counts_rotations_and_gaps() {
        // (serial, notBefore, notAfter, received) → (new?, rotations, gaps)
        let steps: &[(&str, i64, i64, i64, bool, usize, usize)] = &[
            ("01", 0, 30, 0, true, 0, 0),
            ("01", 0, 30, 5, false, 0, 0),    // re-sent after a reconnect: not a rotation
            ("02", 15, 45, 15, true, 1, 0),   // before 01 expired
            ("03", 30, 60, 44, true, 2, 0),   // just before 02 expired
            ("04", 60, 90, 60, true, 3, 1),   // at 03's notAfter: a gap
            ("05", 100, 130, 95, true, 4, 2), // after 04 expired
        ];
        let mut h = RotationHistory::default();
        for (serial, nb, na, at, new, rot, gaps) in steps {
            assert_eq!(h.record(svid(serial, *nb, *na), *at), *new, "{serial}");
            assert_eq!((h.rotations(), h.gaps().len()), (*rot, *gaps), "after {serial}@{at}");
        }
        let g = h.gaps();
        assert_eq!((g[0].previous_serial.as_str(), g[0].next_serial.as_str()), ("03", "04"));
        assert_eq!(h.last_rotation().map(|s| s.svid.serial.as_str()), Some("05"));
    }

    #[test]
    fn history_is_capped() {
        let mut h = RotationHistory::default();
        for i in 0..(HISTORY_CAP + 5) {
            h.record(svid(&format!("{i:04}"), 0, 10), 0);
        }
        assert_eq!(h.seen().len(), HISTORY_CAP);
        assert_eq!(h.seen()[0].svid.serial, "0005");
    }

    #[test]
    fn no_rotation_without_a_second_svid() {
        let mut h = RotationHistory::default();
        assert!(h.last_rotation().is_none());
        h.record(svid("01", 0, 30), 0);
        assert!(h.last_rotation().is_none());
        assert_eq!(h.rotations(), 0);
    }

    #[test]
    fn unavailable_until_the_first_update() {
        let s = Shared::new("unix:///nowhere".into());
        assert_eq!(
            s.ready().map(|_| ()).unwrap_err().to_string(),
            "Workload API unreachable at unix:///nowhere: not connected yet"
        );
        s.lost("connection refused".into(), false);
        assert_eq!(
            s.ready().map(|_| ()).unwrap_err().to_string(),
            "Workload API unreachable at unix:///nowhere: connection refused"
        );
        s.lost("no identity issued".into(), true);
        assert_eq!(
            s.ready().map(|_| ()).unwrap_err().to_string(),
            "the Workload API at unix:///nowhere gives this workload no identity: no identity issued"
        );
        assert!(s.with(|s| s.agent_reachable));
    }
}
