//! Waiting for a pod's identity before its volume is mounted (`-wait-for-identity`, off by default).
//!
//! The kubelet publishes a pod's volumes before any of its containers starts. When the operator creates
//! the pod's registration entry (selector `k8s:pod-uid:<uid>`) only after the pod exists, a container that
//! asks the Workload API at once can be faster than the entry. With the wait on, NodePublishVolume asks the
//! agent on this node, through its admin socket (`admin_socket_path`, see `sigil_agent::admin`), to answer
//! when it holds a signed SVID for the pod UID from the volume context (`csi.storage.k8s.io/pod.uid`, set
//! because the CSIDriver has `podInfoOnMount: true`), waiting at most the configured time.
//!
//! The volume is mounted in every case afterwards: a pod that no entry selects must still start (it gets
//! its identity later, or never). An unreachable admin socket or an unusable answer is logged and the mount
//! happens at once.
//!
//! Protocol (one HTTP/1.1 request per connection on the Unix socket):
//! `GET /v1/pods/<uid>/identity?timeout=<ms>ms` -> 200 ready `{"ready":true,"spiffe_ids":[...]}`, 503 not
//! ready at the timeout `{"ready":false,"reason":...}`, 4xx `{"error":...}`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::Request;

/// The volume-context key with the pod's UID (`podInfoOnMount: true`).
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
/// The volume-context key with the pod's name.
pub const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
/// The volume-context key with the pod's namespace.
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
/// The longest `-wait-for-identity` (the agent caps a wait at the same).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Connecting to the admin socket must not take longer than this (it is a local socket).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an unreachable admin socket is tried again within the wait.
const CONNECT_RETRY: Duration = Duration::from_millis(100);
/// Time allowed beyond the wait for the agent's answer to arrive.
const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `-agent-admin-socket` and `-wait-for-identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityWait {
    /// The agent's admin socket.
    pub socket: PathBuf,
    /// The longest wait.
    pub timeout: Duration,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent holds the pod's identity: these SPIFFE IDs.
    Ready(Vec<String>),
    /// Not ready when the wait ended; the agent's reason.
    NotReady(String),
    /// The admin socket could not be reached, or its answer was unusable (no wait beyond that).
    Unavailable(String),
}

impl IdentityWait {
    /// Asks the agent about pod `uid` and waits for its answer, all within the timeout (plus a short grace
    /// for the answer to arrive). An agent that cannot be reached yet (restarting in a rollout, or not yet
    /// started on a booting node) is asked again every [`CONNECT_RETRY`] until the deadline: giving up at
    /// once would start exactly the pods the wait is for without their identity. Never fails: every problem
    /// is an [`Outcome::Unavailable`].
    pub async fn wait(&self, uid: &str) -> Outcome {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let stream = loop {
            let why = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(&self.socket)).await {
                Ok(Ok(s)) => break s,
                Ok(Err(e)) => format!("connect {}: {e}", self.socket.display()),
                Err(_) => format!("connect {}: timed out", self.socket.display()),
            };
            if tokio::time::Instant::now() + CONNECT_RETRY >= deadline {
                return Outcome::Unavailable(why);
            }
            tokio::time::sleep(CONNECT_RETRY).await;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left + ANSWER_GRACE, self.exchange(stream, uid, left)).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => Outcome::Unavailable(e),
            Err(_) => Outcome::Unavailable("the agent did not answer in time".into()),
        }
    }

    async fn exchange(&self, stream: tokio::net::UnixStream, uid: &str, wait: Duration) -> Result<Outcome, String> {
        let req = Request::get(format!("/v1/pods/{uid}/identity?timeout={}ms", wait.as_millis()))
            .header(hyper::header::HOST, "sigil-agent")
            .body(String::new())
            .map_err(|e| e.to_string())?;
        let limit = |_| sigil_tls::http1::BodyLimit { limit: MAX_ANSWER_BYTES, truncate: false };
        let (status, body) = sigil_tls::http1::request(stream, req, limit).await.map_err(|e| e.to_string())?;
        Ok(interpret(status.as_u16(), &body))
    }
}

/// The outcome an answer (status, JSON body) means. I/O-free.
pub fn interpret(status: u16, body: &[u8]) -> Outcome {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    match status {
        200 if json.get("ready").and_then(|v| v.as_bool()) == Some(true) => Outcome::Ready(
            json.get("spiffe_ids")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
        ),
        503 if json.get("ready").and_then(|v| v.as_bool()) == Some(false) => Outcome::NotReady(text("reason")),
        _ => {
            let error = text("error");
            let shown =
                if error.is_empty() { String::from_utf8_lossy(body).chars().take(200).collect() } else { error };
            Outcome::Unavailable(format!("agent answered {status}: {shown}"))
        }
    }
}

/// Milliseconds since `start`, for logs.
pub fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_table() {
        let cases: &[(u16, &str, Outcome)] = &[
            (
                200,
                r#"{"pod_uid":"u","ready":true,"spiffe_ids":["spiffe://td/a","spiffe://td/b"],"waited_ms":3}"#,
                Outcome::Ready(vec!["spiffe://td/a".into(), "spiffe://td/b".into()]),
            ),
            (
                503,
                r#"{"pod_uid":"u","ready":false,"reason":"no entry","waited_ms":5000}"#,
                Outcome::NotReady("no entry".into()),
            ),
            (
                400,
                r#"{"error":"invalid pod UID \"x\""}"#,
                Outcome::Unavailable("agent answered 400: invalid pod UID \"x\"".into()),
            ),
            (200, r#"{"ready":false}"#, Outcome::Unavailable("agent answered 200: {\"ready\":false}".into())),
            (503, "Service Unavailable", Outcome::Unavailable("agent answered 503: Service Unavailable".into())),
            (404, "", Outcome::Unavailable("agent answered 404: ".into())),
        ];
        for (status, body, want) in cases {
            assert_eq!(&interpret(*status, body.as_bytes()), want, "{status} {body}");
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_tried_until_the_deadline_then_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let w = IdentityWait { socket: dir.path().join("none.sock"), timeout: Duration::from_millis(700) };
        let t = Instant::now();
        let o = w.wait("0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b").await;
        assert!(matches!(o, Outcome::Unavailable(ref m) if m.contains("none.sock")), "{o:?}");
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1500), "{took:?}");
    }
}
