//! Node attestation: which attestation types the server accepts and what each makes of an agent's payload.
//! The agent API ([`crate::api::agent`]) does what all types share: the ban check, signing, recording.
//!
//! - `join_token`: the payload is a single-use token from `token generate`.
//! - `k8s_psat`: the payload is a projected service account token checked with the Kubernetes API of the
//!   cluster it names ([`k8s_psat`] decides, [`kube`] asks). Such agents re-attest instead of renewing.

pub mod k8s_psat;
pub mod kube;

use sigil_core::{Selector, SpiffeId, TrustDomain};
use tonic::Status;

use crate::api::convert::datastore_status;
use crate::config::ServerConfig;
use crate::datastore::JoinTokenOutcome;
use crate::state::{ServerState, now_unix};

pub use self::kube::{K8sPsatAttestor, KubeSetupError};

pub const JOIN_TOKEN: &str = "join_token";

/// Agent ID for a join token, exactly SPIRE's format: `spiffe://<td>/spire/agent/join_token/<token>`.
pub fn join_token_agent_id(td: &TrustDomain, token: &str) -> Result<SpiffeId, Status> {
    if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Status::invalid_argument("join token: malformed (expected the value printed by `token generate`)"));
    }
    td.join(&format!("/spire/agent/join_token/{token}")).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The attestors configured at start.
#[derive(Debug, Clone, Default)]
pub struct Attestors {
    k8s_psat: Option<K8sPsatAttestor>,
}

/// A node that passed attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedNode {
    pub attestation_type: &'static str,
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
}

/// Agents of these types re-attest (a fresh token, a new key) instead of renewing their SVID, as in SPIRE
/// (CanReattest): renewal would let a copied SVID outlive the pod and token it was issued for.
pub fn must_reattest(attestation_type: &str) -> bool {
    attestation_type == k8s_psat::ATTESTATION_TYPE
}

/// A refused attestation: the status for the agent and the `result` label of the attestation counter
/// (`None` for an unsupported type: the caller's type string must not become a metric label).
#[derive(Debug)]
pub struct Refusal {
    pub status: Status,
    pub result: Option<&'static str>,
}

impl Refusal {
    fn new(status: Status, result: &'static str) -> Self {
        Self { status, result: Some(result) }
    }
}

impl Attestors {
    /// Builds every configured attestor (for `k8s_psat`, one Kubernetes client per cluster).
    pub async fn from_config(config: &ServerConfig) -> Result<Self, KubeSetupError> {
        let k8s_psat = match &config.k8s_psat {
            Some(c) => {
                if c.clusters.is_empty() {
                    tracing::warn!("node_attestor.k8s_psat has no clusters: every k8s_psat attestation will fail");
                }
                Some(K8sPsatAttestor::connect(c).await?)
            }
            None => None,
        };
        Ok(Self { k8s_psat })
    }

    /// With a `k8s_psat` attestor built elsewhere (tests).
    pub fn with_k8s_psat(k8s_psat: K8sPsatAttestor) -> Self {
        Self { k8s_psat: Some(k8s_psat) }
    }

    /// The attestation types this server accepts, in the order they are listed to callers.
    pub fn supported_types(&self) -> Vec<&'static str> {
        let mut types = vec![JOIN_TOKEN];
        if self.k8s_psat.is_some() {
            types.push(k8s_psat::ATTESTATION_TYPE);
        }
        types
    }

    /// Validates `payload` as `attestation_type`. Counts nothing and records nothing: the caller does.
    pub async fn attest(
        &self,
        state: &ServerState,
        attestation_type: &str,
        payload: &[u8],
    ) -> Result<AttestedNode, Refusal> {
        match (attestation_type, &self.k8s_psat) {
            (JOIN_TOKEN, _) => attest_join_token(state, payload).await,
            (k8s_psat::ATTESTATION_TYPE, Some(psat)) => match psat.attest(&state.trust_domain, payload).await {
                Ok(a) => Ok(AttestedNode {
                    attestation_type: k8s_psat::ATTESTATION_TYPE,
                    agent_id: a.agent_id,
                    selectors: a.selectors,
                }),
                Err(e) => Err(Refusal::new(e.to_status(), e.result_label())),
            },
            _ => Err(Refusal {
                status: Status::invalid_argument(format!(
                    "attestation_type {attestation_type:?} is not supported (supported: {})",
                    self.supported_types().join(", ")
                )),
                result: None,
            }),
        }
    }
}

async fn attest_join_token(state: &ServerState, payload: &[u8]) -> Result<AttestedNode, Refusal> {
    let token = std::str::from_utf8(payload)
        .map_err(|_| Refusal::new(Status::invalid_argument("join token: not UTF-8"), "invalid"))?
        .trim();
    let agent_id = join_token_agent_id(&state.trust_domain, token).map_err(|s| Refusal::new(s, "invalid"))?;
    // The token is deleted by this call whatever the outcome: single use, replay-safe.
    let outcome =
        state.ds.consume_join_token(token, now_unix()).await.map_err(|e| Refusal::new(datastore_status(e), "error"))?;
    match outcome {
        JoinTokenOutcome::Valid => Ok(AttestedNode { attestation_type: JOIN_TOKEN, agent_id, selectors: vec![] }),
        JoinTokenOutcome::Expired => Err(Refusal::new(Status::permission_denied("join token expired"), "expired")),
        JoinTokenOutcome::NotFound => Err(Refusal::new(
            Status::permission_denied("join token does not exist or has already been used"),
            "unknown",
        )),
    }
}
