//! The `k8s_psat` attestor's Kubernetes API calls (TokenReview, GET pod, GET node), one client per
//! configured cluster, and the attestation flow that feeds their answers through [`super::k8s_psat`].
//!
//! Every call is bounded ([`KUBE_API_TIMEOUT`]): an API server that hangs makes attestation fail with
//! Unavailable, never makes it wait forever.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ::kube::api::{Api, PostParams};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use sigil_core::TrustDomain;

use super::k8s_psat::{self, NodeFacts, PodFacts, PsatAttestation, PsatError, TokenReviewFacts};
use crate::config::{K8sPsatCluster, K8sPsatConfig};

pub use crate::kube_client::KUBE_API_TIMEOUT;
use crate::kube_client::{KubeClientError, unreachable};

/// A cluster's client could not be built at start; the server does not start.
#[derive(Debug, thiserror::Error)]
#[error("node_attestor.k8s_psat.clusters.{cluster}: {source}")]
pub struct KubeSetupError {
    pub cluster: String,
    pub source: KubeClientError,
}

/// The Kubernetes API of one cluster, as the attestor uses it.
#[derive(Clone)]
pub struct ClusterApi {
    client: ::kube::Client,
    timeout: Duration,
}

impl fmt::Debug for ClusterApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterApi").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl ClusterApi {
    /// Builds the client of one configured cluster: from its kubeconfig file (current context), or the
    /// in-cluster service account when the file is not set. Nothing is sent to the API server yet.
    pub async fn connect(name: &str, cluster: &K8sPsatCluster) -> Result<Self, KubeSetupError> {
        let client = crate::kube_client::connect(cluster.kube_config_file.as_deref())
            .await
            .map_err(|source| KubeSetupError { cluster: name.to_owned(), source })?;
        Ok(Self::from_client(client))
    }

    /// Wraps an existing client (tests build theirs from `KUBECONFIG`).
    pub fn from_client(client: ::kube::Client) -> Self {
        Self { client, timeout: KUBE_API_TIMEOUT }
    }

    /// A different bound for every call (tests use a short one).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs one API call within the bound.
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, ::kube::Error>>,
        on_error: impl FnOnce(String) -> PsatError,
    ) -> Result<T, PsatError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(PsatError::Unavailable {
                what,
                message: format!("no answer from the Kubernetes API server within {} s", self.timeout.as_secs_f32()),
            }),
            Ok(Err(e)) if unreachable(&e) => {
                Err(PsatError::Unavailable { what, message: format!("the Kubernetes API server is unreachable: {e}") })
            }
            Ok(Err(e)) => Err(on_error(e.to_string())),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Creates a TokenReview (authentication.k8s.io/v1) with `audiences` as `spec.audiences` (none when
    /// empty: the API server's own audiences then apply).
    pub async fn review_token(&self, token: &str, audiences: &[String]) -> Result<TokenReviewFacts, PsatError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let pp = PostParams::default();
        let answered = self.bounded("TokenReview", api.create(&pp, &review), PsatError::TokenReview).await?;
        let status = answered.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        Ok(TokenReviewFacts {
            authenticated: status.authenticated.unwrap_or(false),
            error: status.error.unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            username: user.username.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        })
    }

    /// GET the pod; `None` when it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodFacts>, PsatError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = self.bounded("GET pod", api.get_opt(name), PsatError::GetPod).await?;
        Ok(pod.map(|p| PodFacts {
            uid: p.metadata.uid.unwrap_or_default(),
            node_name: p.spec.and_then(|s| s.node_name).unwrap_or_default(),
            host_ip: p.status.and_then(|s| s.host_ip).unwrap_or_default(),
            labels: p.metadata.labels.unwrap_or_default(),
        }))
    }

    /// GET the node; `None` when it does not exist.
    pub async fn node(&self, name: &str) -> Result<Option<NodeFacts>, PsatError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = self.bounded("GET node", api.get_opt(name), PsatError::GetNode).await?;
        Ok(node.map(|n| NodeFacts {
            uid: n.metadata.uid.unwrap_or_default(),
            labels: n.metadata.labels.unwrap_or_default(),
        }))
    }
}

/// The configured `k8s_psat` attestor: the clusters' settings and their API clients.
#[derive(Debug, Clone)]
pub struct K8sPsatAttestor {
    config: K8sPsatConfig,
    apis: BTreeMap<String, ClusterApi>,
}

impl K8sPsatAttestor {
    /// Builds one client per configured cluster; a cluster whose client cannot be built stops the start.
    pub async fn connect(config: &K8sPsatConfig) -> Result<Self, KubeSetupError> {
        let mut apis = BTreeMap::new();
        for (name, cluster) in &config.clusters {
            apis.insert(name.clone(), ClusterApi::connect(name, cluster).await?);
        }
        Ok(Self { config: config.clone(), apis })
    }

    /// With clients built elsewhere, keyed by cluster name (a configured cluster without a client is
    /// treated as not configured).
    pub fn with_apis(config: K8sPsatConfig, apis: BTreeMap<String, ClusterApi>) -> Self {
        Self { config, apis }
    }

    /// Validates an agent's payload against the cluster it names; returns the agent ID and node selectors.
    pub async fn attest(&self, td: &TrustDomain, payload: &[u8]) -> Result<PsatAttestation, PsatError> {
        let (payload, cluster) = k8s_psat::parse_payload(payload, &self.config)?;
        let api =
            self.apis.get(&payload.cluster).ok_or_else(|| PsatError::ClusterNotConfigured(payload.cluster.clone()))?;
        let review = api.review_token(&payload.token, &cluster.audience).await?;
        let identity = k8s_psat::check_review(&review, &cluster.audience, cluster)?;
        // A token whose pod was deleted normally fails the TokenReview already (bound tokens die with their
        // pod); this covers a deletion between the two calls.
        let pod = api.pod(&identity.namespace, &identity.pod_name).await?.ok_or_else(|| PsatError::PodNotFound {
            namespace: identity.namespace.clone(),
            name: identity.pod_name.clone(),
        })?;
        k8s_psat::check_pod(&identity, &pod)?;
        let node = api.node(&pod.node_name).await?.ok_or_else(|| PsatError::NodeNotFound(pod.node_name.clone()))?;
        k8s_psat::attestation(td, &payload.cluster, cluster, &identity, &pod, &node)
    }
}
