//! The `k8s_psat` node attestor's decisions, free of I/O: payload parsing, the TokenReview result checks,
//! the pod checks, and the agent ID and selectors. [`super::kube`] fetches the facts from the Kubernetes API
//! and feeds them through these functions in SPIRE's order (psat.go):
//!
//! 1. payload: JSON `{"cluster","token"}`, both non-empty, cluster configured (InvalidArgument);
//! 2. TokenReview with the configured audiences; not authenticated, or none of the configured audiences
//!    confirmed, => PermissionDenied;
//! 3. username `system:serviceaccount:<ns>:<sa>`, and `<ns>:<sa>` in the allow list (PermissionDenied);
//! 4. exactly one pod name and one pod UID in the token's extra claims (Internal: legacy tokens);
//! 5. the pod exists (PermissionDenied) and has that UID (PermissionDenied), and is on a node;
//! 6. the node has a UID (Internal).
//!
//! Sigil differs from SPIRE in two places, both towards the caller's benefit: a token the API server did
//! not authenticate is PermissionDenied with the API server's reason (SPIRE answers Internal when
//! `status.error` is set, which is the case for every expired or wrong-audience token), and a pod that is
//! gone is PermissionDenied instead of Internal.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sigil_core::{Selector, SpiffeId, TrustDomain};
use tonic::Code;

use crate::config::{K8sPsatCluster, K8sPsatConfig};

/// The attestation type agents send, and the agent record's type.
pub const ATTESTATION_TYPE: &str = "k8s_psat";
/// The type of the node selectors this attestor produces.
pub const SELECTOR_TYPE: &str = "k8s_psat";
/// A projected token is 1-2 KB; the payload bound keeps an unauthenticated caller from making the server
/// forward megabytes to the API server.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";

/// Why a `k8s_psat` attestation was refused. [`code`](Self::code) is the gRPC code; the messages follow
/// SPIRE's wording where SPIRE has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsatError {
    #[error("missing attestation payload")]
    MissingPayload,
    #[error("attestation payload is larger than {MAX_PAYLOAD_BYTES} bytes")]
    PayloadTooLarge,
    #[error("failed to unmarshal data payload: {0}")]
    BadPayload(String),
    #[error("missing cluster in attestation data")]
    MissingCluster,
    #[error("missing token in attestation data")]
    MissingToken,
    #[error("not configured for cluster {0:?}")]
    ClusterNotConfigured(String),
    /// The TokenReview call failed, or answered with an error for a token it authenticated.
    #[error("unable to validate token with TokenReview API: {0}")]
    TokenReview(String),
    #[error("token not authenticated according to TokenReview API: {0}")]
    NotAuthenticated(String),
    #[error("token audiences {got:?} include none of the configured audiences {want:?}")]
    AudienceMismatch { got: Vec<String>, want: Vec<String> },
    #[error("fail to parse username from token review status: {0}")]
    BadUsername(String),
    #[error("{0:?} is not an allowed service account")]
    ServiceAccountNotAllowed(String),
    #[error("fail to get pod name from token review status: {0}")]
    PodName(String),
    #[error("fail to get pod UID from token review status: {0}")]
    PodUid(String),
    #[error("fail to get pod from k8s API server: {0}")]
    GetPod(String),
    #[error("pod {namespace}/{name} not found (deleted since the token was issued?)")]
    PodNotFound { namespace: String, name: String },
    #[error("pod UID mismatch: the token is bound to pod UID {token:?}, pod {namespace}/{name} has UID {pod:?}")]
    PodUidMismatch { namespace: String, name: String, token: String, pod: String },
    #[error("pod {namespace}/{name} is not scheduled on a node")]
    PodNotScheduled { namespace: String, name: String },
    #[error("fail to get node from k8s API server: {0}")]
    GetNode(String),
    #[error("node {0:?} not found")]
    NodeNotFound(String),
    #[error("node UID is empty")]
    EmptyNodeUid,
    #[error("cannot build the agent ID: {0}")]
    AgentId(String),
    /// The API server did not answer in time, or could not be reached.
    #[error("{what}: {message}")]
    Unavailable { what: &'static str, message: String },
}

impl PsatError {
    pub fn code(&self) -> Code {
        use PsatError::*;
        match self {
            MissingPayload
            | PayloadTooLarge
            | BadPayload(_)
            | MissingCluster
            | MissingToken
            | ClusterNotConfigured(_) => Code::InvalidArgument,
            NotAuthenticated(_)
            | AudienceMismatch { .. }
            | ServiceAccountNotAllowed(_)
            | PodNotFound { .. }
            | PodUidMismatch { .. } => Code::PermissionDenied,
            TokenReview(_)
            | BadUsername(_)
            | PodName(_)
            | PodUid(_)
            | GetPod(_)
            | PodNotScheduled { .. }
            | GetNode(_)
            | NodeNotFound(_)
            | EmptyNodeUid
            | AgentId(_) => Code::Internal,
            Unavailable { .. } => Code::Unavailable,
        }
    }

    /// The gRPC status an agent sees; the message names the attestor, as SPIRE's plugin errors do.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code(), format!("k8s_psat: {self}"))
    }

    /// The `result` label of the attestation counter.
    pub fn result_label(&self) -> &'static str {
        match self.code() {
            Code::InvalidArgument => "invalid",
            Code::PermissionDenied => "denied",
            Code::Unavailable => "unavailable",
            _ => "error",
        }
    }
}

/// The agent's payload: which cluster, and the projected service account token (a credential: its `Debug`
/// shows only the cluster).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct PsatPayload {
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub token: String,
}

impl std::fmt::Debug for PsatPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsatPayload").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

/// Step 1: decodes the payload and finds the cluster's configuration.
pub fn parse_payload<'c>(
    payload: &[u8],
    config: &'c K8sPsatConfig,
) -> Result<(PsatPayload, &'c K8sPsatCluster), PsatError> {
    if payload.is_empty() {
        return Err(PsatError::MissingPayload);
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(PsatError::PayloadTooLarge);
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| PsatError::BadPayload(e.to_string()))?;
    // serde would also read a struct from an array (`["c","t"]`); only an object is the agent's format.
    if !value.is_object() {
        return Err(PsatError::BadPayload("expected a JSON object {\"cluster\",\"token\"}".into()));
    }
    let parsed: PsatPayload = serde_json::from_value(value).map_err(|e| PsatError::BadPayload(e.to_string()))?;
    if parsed.cluster.is_empty() {
        return Err(PsatError::MissingCluster);
    }
    if parsed.token.is_empty() {
        return Err(PsatError::MissingToken);
    }
    let cluster =
        config.clusters.get(&parsed.cluster).ok_or_else(|| PsatError::ClusterNotConfigured(parsed.cluster.clone()))?;
    Ok((parsed, cluster))
}

/// What a TokenReview answered (its `status`), in the attestor's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReviewFacts {
    pub authenticated: bool,
    /// `status.error`.
    pub error: String,
    /// `status.audiences`: the requested audiences the token is valid for.
    pub audiences: Vec<String>,
    pub username: String,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Who the token belongs to, once it passed the TokenReview checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// Steps 2-4: the TokenReview answer for a token reviewed with `sent_audiences`.
pub fn check_review(
    review: &TokenReviewFacts,
    sent_audiences: &[String],
    cluster: &K8sPsatCluster,
) -> Result<TokenIdentity, PsatError> {
    if !review.authenticated {
        let reason = if review.error.is_empty() { "no reason given" } else { review.error.as_str() };
        return Err(PsatError::NotAuthenticated(reason.to_owned()));
    }
    if !review.error.is_empty() {
        return Err(PsatError::TokenReview(format!("token review API response contains an error: {}", review.error)));
    }
    // An API server (or webhook authenticator) that ignores spec.audiences answers without them: the token
    // was then not checked against the audience we require (SPIRE PR #5142).
    if !sent_audiences.is_empty() && !review.audiences.iter().any(|a| sent_audiences.contains(a)) {
        return Err(PsatError::AudienceMismatch { got: review.audiences.clone(), want: sent_audiences.to_vec() });
    }
    let (namespace, service_account) = service_account_of(&review.username)?;
    let full = format!("{namespace}:{service_account}");
    if !cluster.service_account_allow_list.contains(&full) {
        return Err(PsatError::ServiceAccountNotAllowed(full));
    }
    let pod_name = single_extra(&review.extra, POD_NAME_KEY, "pod name").map_err(PsatError::PodName)?;
    let pod_uid = single_extra(&review.extra, POD_UID_KEY, "pod UID").map_err(PsatError::PodUid)?;
    Ok(TokenIdentity { namespace, service_account, pod_name, pod_uid })
}

/// `system:serviceaccount:<ns>:<sa>` -> (ns, sa).
fn service_account_of(username: &str) -> Result<(String, String), PsatError> {
    if username.is_empty() {
        return Err(PsatError::BadUsername("empty username".into()));
    }
    match username.split(':').collect::<Vec<_>>()[..] {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => Ok((ns.to_owned(), sa.to_owned())),
        _ => Err(PsatError::BadUsername(format!("unexpected username format: {username:?}"))),
    }
}

/// The one non-empty value of a `user.extra` key. Legacy (secret-based) tokens have no pod claims.
fn single_extra(extra: &BTreeMap<String, Vec<String>>, key: &str, what: &str) -> Result<String, String> {
    let values = extra.get(key).ok_or_else(|| format!("missing {what} (not a pod-bound projected token?)"))?;
    match values.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        [_] => Err(format!("{what} is empty")),
        _ => Err(format!("expected 1 {what} but got {}", values.len())),
    }
}

/// The pod the token is bound to, as the API server has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `status.hostIP`.
    pub host_ip: String,
    pub labels: BTreeMap<String, String>,
}

/// The agent's node, as the API server has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

/// Step 5: the pod still is the one the token was issued for (a pod re-created under the same name has
/// another UID), and it runs on a node.
pub fn check_pod(identity: &TokenIdentity, pod: &PodFacts) -> Result<(), PsatError> {
    if pod.uid != identity.pod_uid {
        return Err(PsatError::PodUidMismatch {
            namespace: identity.namespace.clone(),
            name: identity.pod_name.clone(),
            token: identity.pod_uid.clone(),
            pod: pod.uid.clone(),
        });
    }
    if pod.node_name.is_empty() {
        return Err(PsatError::PodNotScheduled {
            namespace: identity.namespace.clone(),
            name: identity.pod_name.clone(),
        });
    }
    Ok(())
}

/// An attested `k8s_psat` node: the agent ID and its node selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsatAttestation {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
}

/// Step 6 and the result: `spiffe://<td>/spire/agent/k8s_psat/<cluster>/<nodeUID>` (or
/// `.../<cluster>/pod/<podUID>` with `use_pod_uid_for_agent_id`) and SPIRE's selectors, label selectors
/// only for allowed keys (sorted by key, so a record's selectors do not change order between attestations).
pub fn attestation(
    td: &TrustDomain,
    cluster_name: &str,
    cluster: &K8sPsatCluster,
    identity: &TokenIdentity,
    pod: &PodFacts,
    node: &NodeFacts,
) -> Result<PsatAttestation, PsatError> {
    if node.uid.is_empty() {
        return Err(PsatError::EmptyNodeUid);
    }
    let path = if cluster.use_pod_uid_for_agent_id {
        format!("/spire/agent/{ATTESTATION_TYPE}/{cluster_name}/pod/{}", identity.pod_uid)
    } else {
        format!("/spire/agent/{ATTESTATION_TYPE}/{cluster_name}/{}", node.uid)
    };
    let agent_id = td.join(&path).map_err(|e| PsatError::AgentId(e.to_string()))?;
    let mut values = vec![
        format!("cluster:{cluster_name}"),
        format!("agent_ns:{}", identity.namespace),
        format!("agent_sa:{}", identity.service_account),
        format!("agent_pod_name:{}", identity.pod_name),
        format!("agent_pod_uid:{}", identity.pod_uid),
    ];
    // A pod that is scheduled but not started has no host IP yet; a selector with an empty value is
    // useless to match on, so it is left out instead of SPIRE's `agent_node_ip:`.
    if !pod.host_ip.is_empty() {
        values.push(format!("agent_node_ip:{}", pod.host_ip));
    }
    values.push(format!("agent_node_name:{}", pod.node_name));
    values.push(format!("agent_node_uid:{}", node.uid));
    values.extend(allowed_labels(&node.labels, &cluster.allowed_node_label_keys, "agent_node_label"));
    values.extend(allowed_labels(&pod.labels, &cluster.allowed_pod_label_keys, "agent_pod_label"));
    let selectors = values
        .iter()
        .map(|v| Selector::new(SELECTOR_TYPE, v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PsatError::AgentId(e.to_string()))?;
    Ok(PsatAttestation { agent_id, selectors })
}

fn allowed_labels<'a>(
    labels: &'a BTreeMap<String, String>,
    allowed: &'a BTreeSet<String>,
    prefix: &'a str,
) -> impl Iterator<Item = String> + 'a {
    labels.iter().filter(|(k, _)| allowed.contains(*k)).map(move |(k, v)| format!("{prefix}:{k}:{v}"))
}

#[cfg(test)]
#[path = "k8s_psat_tests.rs"]
mod tests;
