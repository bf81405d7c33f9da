//! SPIRE's `Notifier "k8sbundle"`: keeps one key of a Kubernetes ConfigMap holding the server's trust
//! bundle as PEM (see [`super::render_pem`]), at start and after every bundle change. Agents mount that
//! ConfigMap as their bootstrap bundle (`trust_bundle_path`), so they need no `insecure_bootstrap`.
//!
//! Each sync is a GET of the ConfigMap and, only when the key differs, a JSON merge patch of just that key
//! carrying the resourceVersion that was read: a ConfigMap changed in between answers 409 Conflict, and the
//! sync starts over from a new GET. Other keys are never touched. The ConfigMap is never created (as in
//! SPIRE: whoever deploys the server creates it, so the server's RBAC can be `get` and `patch` of that one
//! name); when it is missing or access is forbidden, the error says what to do, and the notifier retries
//! with backoff (1 s doubling to 30 s), always with the bundle current at that moment. Every call is
//! bounded by [`KUBE_API_TIMEOUT`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use k8s_openapi::api::core::v1::ConfigMap;
use sigil_core::bundle::Bundle;
use tokio::sync::watch;

use super::{Backoff, FailureLog, LogAs, RESYNC, SETTLE, needs_write, render_pem};
use crate::config::K8sBundleConfig;
use crate::kube_client::{KUBE_API_TIMEOUT, KubeClientError, unreachable};
use crate::metrics::Metrics;

/// The field manager named in every patch (visible in the ConfigMap's `managedFields`).
pub const FIELD_MANAGER: &str = "sigil-server";

/// GET + PATCH rounds tried when the ConfigMap keeps changing between the two (409 Conflict).
const CONFLICT_ATTEMPTS: u32 = 5;

/// The client could not be built at start; the server does not start.
#[derive(Debug, thiserror::Error)]
#[error("notifier.k8sbundle: {0}")]
pub struct NotifierSetupError(#[from] pub KubeClientError);

/// A failed sync. Messages name the ConfigMap as `namespace/name` and say what to do; they never hold
/// the bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error(
        "ConfigMap {target} does not exist: create it (the Helm chart does; sigil-server never creates it, as SPIRE's k8sbundle notifier does not), for example `kubectl create configmap {name} -n {namespace}`"
    )]
    Missing { target: String, namespace: String, name: String },
    #[error(
        "ConfigMap {target}: {what} forbidden ({message}): grant the server's identity `get` and `patch` on configmaps with resourceNames [{name}] in namespace {namespace} (see server/deploy/rbac.yaml)"
    )]
    Forbidden { target: String, namespace: String, name: String, what: &'static str, message: String },
    #[error("ConfigMap {target}: {what}: no answer from the Kubernetes API server within {secs} s")]
    Timeout { target: String, what: &'static str, secs: u64 },
    #[error("ConfigMap {target}: {what}: the Kubernetes API server is unreachable: {message}")]
    Unreachable { target: String, what: &'static str, message: String },
    #[error("ConfigMap {target}: {what}: {message}")]
    Api { target: String, what: &'static str, message: String },
    #[error(
        "ConfigMap {target}: changed by someone else during each of {CONFLICT_ATTEMPTS} attempts (resourceVersion conflict)"
    )]
    Conflicts { target: String },
}

/// What a successful sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The key was written.
    Written,
    /// The key already held exactly this PEM.
    Unchanged,
}

/// The configured notifier and its client.
#[derive(Clone)]
pub struct K8sBundleNotifier {
    config: K8sBundleConfig,
    api: Api<ConfigMap>,
    timeout: Duration,
}

impl fmt::Debug for K8sBundleNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sBundleNotifier")
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl K8sBundleNotifier {
    /// Builds the client (kubeconfig file or in-cluster); nothing is sent yet.
    pub async fn connect(config: &K8sBundleConfig) -> Result<Self, NotifierSetupError> {
        let client = crate::kube_client::connect(config.kube_config_file.as_deref()).await?;
        Ok(Self::with_client(client, config.clone()))
    }

    /// With a client built elsewhere (tests).
    pub fn with_client(client: ::kube::Client, config: K8sBundleConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        Self { config, api, timeout: KUBE_API_TIMEOUT }
    }

    /// A different bound for every call (tests use a short one).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn target(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.config_map)
    }

    fn classify(&self, what: &'static str, e: ::kube::Error) -> SyncError {
        let target = self.target();
        let namespace = self.config.namespace.clone();
        let name = self.config.config_map.clone();
        match e {
            ::kube::Error::Api(s) if s.code == 404 => SyncError::Missing { target, namespace, name },
            ::kube::Error::Api(s) if s.code == 403 || s.code == 401 => {
                SyncError::Forbidden { target, namespace, name, what, message: s.message.clone() }
            }
            e if unreachable(&e) => SyncError::Unreachable { target, what, message: e.to_string() },
            e => SyncError::Api { target, what, message: e.to_string() },
        }
    }

    /// Runs one call within the bound.
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, ::kube::Error>>,
    ) -> Result<Result<T, ::kube::Error>, SyncError> {
        tokio::time::timeout(self.timeout, call).await.map_err(|_| SyncError::Timeout {
            target: self.target(),
            what,
            secs: self.timeout.as_secs().max(1),
        })
    }

    /// Makes the key hold `pem`: GET, and PATCH only when it differs, guarded by the resourceVersion read.
    pub async fn sync(&self, pem: &str) -> Result<Synced, SyncError> {
        let name = self.config.config_map.as_str();
        let key = self.config.config_map_key.as_str();
        for _ in 0..CONFLICT_ATTEMPTS {
            let cm =
                self.bounded("GET", self.api.get_opt(name)).await?.map_err(|e| self.classify("GET", e))?.ok_or_else(
                    || SyncError::Missing {
                        target: self.target(),
                        namespace: self.config.namespace.clone(),
                        name: name.to_owned(),
                    },
                )?;
            let current = cm.data.as_ref().and_then(|d| d.get(key)).map(String::as_str);
            if !needs_write(current, pem) {
                return Ok(Synced::Unchanged);
            }
            // A merge patch of this one key; the resourceVersion makes it a compare-and-swap (409 when the
            // ConfigMap changed since the GET). `data` is created if the ConfigMap has none.
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": cm.metadata.resource_version },
                "data": { key: pem },
            });
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
            match self.bounded("PATCH", self.api.patch(name, &params, &Patch::Merge(&patch))).await? {
                Ok(_) => return Ok(Synced::Written),
                Err(::kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(self.classify("PATCH", e)),
            }
        }
        Err(SyncError::Conflicts { target: self.target() })
    }

    /// Keeps the ConfigMap in step with `bundles` until `shutdown` turns true: a sync at start, then one
    /// after each change (changes that come while a sync or a retry wait is under way are folded into the
    /// next sync, which always renders the latest bundle). Failures are retried with [`Backoff`].
    pub async fn run(
        self,
        mut bundles: watch::Receiver<Arc<Bundle>>,
        mut shutdown: watch::Receiver<bool>,
        metrics: Metrics,
    ) {
        let mut backoff = Backoff::default();
        let mut log = FailureLog::default();
        let target = self.target();
        let key = self.config.config_map_key.clone();
        loop {
            let bundle = bundles.borrow_and_update().clone();
            let pem = render_pem(&bundle);
            // Raced with shutdown: a silent API server must not hold the server's stop for the call bounds.
            let synced = tokio::select! {
                r = self.sync(&pem) => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let wait = match synced {
                Ok(synced) => {
                    if synced == Synced::Written {
                        metrics.bundle_notifier_write("ok");
                    }
                    let authorities = bundle.x509_authorities.len();
                    match (log.succeeded(), synced) {
                        (LogAs::Recovered(failed), _) => tracing::info!(
                            configmap = %target, %key, sequence = bundle.sequence, authorities, failed,
                            "k8sbundle: ConfigMap key holds the current bundle again after failed attempts"
                        ),
                        (_, Synced::Written) => tracing::info!(
                            configmap = %target, %key, sequence = bundle.sequence, authorities,
                            "k8sbundle: wrote the trust bundle to the ConfigMap key"
                        ),
                        (_, Synced::Unchanged) => tracing::debug!(
                            configmap = %target, %key, sequence = bundle.sequence,
                            "k8sbundle: ConfigMap key already holds the current bundle"
                        ),
                    }
                    backoff.reset();
                    None
                }
                Err(e) => {
                    metrics.bundle_notifier_write("error");
                    let delay = backoff.next_delay();
                    let message = e.to_string();
                    match log.failed(&message) {
                        LogAs::Error => tracing::error!(
                            error = %message, retry_in_s = delay.as_secs(),
                            "k8sbundle: could not update the trust bundle ConfigMap; retrying until it works"
                        ),
                        _ => {
                            tracing::debug!(error = %message, retry_in_s = delay.as_secs(), "k8sbundle: still failing")
                        }
                    }
                    Some(delay)
                }
            };
            match wait {
                // After a failure: retry after the delay (a change meanwhile is picked up by the retry).
                Some(delay) => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
                // In step: wait for the next change (or the periodic re-check), then let a burst settle.
                None => {
                    tokio::select! {
                        changed = bundles.changed() => {
                            if changed.is_err() {
                                return; // the state is gone: the server is stopping
                            }
                        }
                        // The ConfigMap can lose its data without a bundle change (deleted and re-created,
                        // `helm upgrade --force`, a hand edit); new agents could not bootstrap until the
                        // next rotation. A GET every RESYNC repairs that (a PATCH only when it differs).
                        _ = tokio::time::sleep(RESYNC) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(SETTLE) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}
