//! One way to build a Kubernetes client, for every part of the server that talks to an API server (the
//! `k8s_psat` attestor's clusters, the `k8sbundle` notifier): from a kubeconfig file (its current context),
//! or the in-cluster service account when no file is configured. Every call through such a client is
//! bounded: connect, read and write time out after [`KUBE_API_TIMEOUT`], and callers wrap each request in
//! the same bound.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};

/// Bound of each Kubernetes API call (connect, send, answer).
pub const KUBE_API_TIMEOUT: Duration = Duration::from_secs(10);

/// The client could not be built; the caller names the configuration section it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("kube_config_file {}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("in-cluster Kubernetes configuration (kube_config_file is empty): {message}")]
    InCluster { message: String },
    #[error("Kubernetes client: {message}")]
    Client { message: String },
}

/// Builds a client from `kube_config_file`, or the in-cluster configuration when it is `None`. Nothing is
/// sent to the API server yet.
pub async fn connect(kube_config_file: Option<&Path>) -> Result<::kube::Client, KubeClientError> {
    let mut config = match kube_config_file {
        Some(path) => {
            let bad = |message: String| KubeClientError::Kubeconfig { path: path.to_owned(), message };
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            ::kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => ::kube::Config::incluster().map_err(|e| KubeClientError::InCluster { message: e.to_string() })?,
    };
    config.connect_timeout = Some(KUBE_API_TIMEOUT);
    config.read_timeout = Some(KUBE_API_TIMEOUT);
    config.write_timeout = Some(KUBE_API_TIMEOUT);
    ::kube::Client::try_from(config).map_err(|e| KubeClientError::Client { message: e.to_string() })
}

/// Transport failures (nothing answered) rather than an answer from the API server.
pub fn unreachable(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::HyperError(_) | ::kube::Error::Service(_))
}
