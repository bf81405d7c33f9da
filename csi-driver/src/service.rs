//! The gRPC services: CSI Identity, Node, Controller (capability query only) and the kubelet plugin
//! Registration service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sigil_proto::csi::v1 as csi;
use sigil_proto::csi::v1::controller_server::Controller;
use sigil_proto::csi::v1::identity_server::Identity;
use sigil_proto::csi::v1::node_server::Node;
use sigil_proto::pluginregistration as reg;
use sigil_proto::pluginregistration::registration_server::Registration;
use tonic::{Request, Response, Status};

use crate::identity::{self, IdentityWait, Outcome};
use crate::mounter::{MountError, Mounter, Published};
use crate::validate::{self, RequestError};

/// The CSI version the driver serves, as the kubelet's registration expects it.
pub const CSI_VERSION: &str = "1.0.0";

/// Counters exposed on /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Successful publishes (new mounts and idempotent repeats).
    pub publish_ok: AtomicU64,
    /// Refused or failed publishes.
    pub publish_err: AtomicU64,
    /// Successful unpublishes.
    pub unpublish_ok: AtomicU64,
    /// Refused or failed unpublishes.
    pub unpublish_err: AtomicU64,
    /// Identity waits that ended with the pod's identity ready.
    pub identity_ready: AtomicU64,
    /// Identity waits that ended at the timeout without it.
    pub identity_timeout: AtomicU64,
    /// Identity waits skipped because the agent's admin socket could not be used.
    pub identity_unavailable: AtomicU64,
    /// Total time spent in identity waits, microseconds.
    pub identity_wait_micros: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, ok, err) in [
            ("sigil_csi_publish_total", "NodePublishVolume calls by result.", &self.publish_ok, &self.publish_err),
            (
                "sigil_csi_unpublish_total",
                "NodeUnpublishVolume calls by result.",
                &self.unpublish_ok,
                &self.unpublish_err,
            ),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            out.push_str(&format!("{name}{{result=\"ok\"}} {}\n", ok.load(Ordering::Relaxed)));
            out.push_str(&format!("{name}{{result=\"error\"}} {}\n", err.load(Ordering::Relaxed)));
        }
        let name = "sigil_csi_identity_wait_total";
        out.push_str(&format!(
            "# HELP {name} NodePublishVolume waits for the pod's identity (-wait-for-identity) by result.\n# TYPE {name} counter\n"
        ));
        for (result, n) in [
            ("ready", &self.identity_ready),
            ("timeout", &self.identity_timeout),
            ("unavailable", &self.identity_unavailable),
        ] {
            out.push_str(&format!("{name}{{result=\"{result}\"}} {}\n", n.load(Ordering::Relaxed)));
        }
        let name = "sigil_csi_identity_wait_seconds_total";
        out.push_str(&format!(
            "# HELP {name} Time NodePublishVolume spent waiting for pod identities.\n# TYPE {name} counter\n{name} {:.6}\n",
            self.identity_wait_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out
    }
}

/// Driver settings shared by the services.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// CSI driver name (`csi.spiffe.io` by default).
    pub name: String,
    /// Node ID reported by NodeGetInfo.
    pub node_id: String,
    /// The agent's Workload API socket directory (bind-mount source).
    pub socket_dir: PathBuf,
    /// The kubelet root directory (targets must be in its `pods/`).
    pub kubelet_dir: PathBuf,
    /// Wait for the pod's identity before mounting (`-wait-for-identity`); `None` = mount at once.
    pub identity_wait: Option<IdentityWait>,
}

/// The CSI driver (Identity, Node, Controller services share it).
#[derive(Debug, Clone)]
pub struct Driver {
    cfg: Arc<DriverConfig>,
    mounter: Mounter,
    lock: Arc<tokio::sync::Mutex<()>>,
    metrics: Arc<Metrics>,
}

fn invalid(e: RequestError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn mount_status(e: MountError) -> Status {
    match e {
        MountError::Escapes { .. } => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

impl Driver {
    /// A driver with these settings.
    pub fn new(cfg: DriverConfig, metrics: Arc<Metrics>) -> Self {
        let mounter = Mounter::new(cfg.socket_dir.clone(), cfg.kubelet_dir.join("pods"));
        Self { cfg: Arc::new(cfg), mounter, lock: Arc::new(tokio::sync::Mutex::new(())), metrics }
    }

    fn pods_dir(&self) -> &Path {
        self.mounter.pods_dir()
    }

    async fn publish(&self, req: &csi::NodePublishVolumeRequest) -> Result<Published, Status> {
        let target = validate::validate_publish(req, self.pods_dir(), &self.cfg.name).map_err(invalid)?;
        // Outside the lock: one pod's wait must not hold up another's publish. A target that is already
        // mounted (a repeated publish) is answered at once, as is one the mounter will refuse.
        if let Some(wait) = &self.cfg.identity_wait
            && let Some(uid) = req.volume_context.get(identity::POD_UID_KEY).filter(|u| !u.is_empty())
            && matches!(self.mounter.is_mounted(&target), Ok(false))
        {
            self.wait_for_identity(wait, uid, req).await;
        }
        let _guard = self.lock.lock().await;
        self.mounter.publish(&target).map_err(mount_status)
    }

    /// Waits (bounded) until the agent holds the pod's identity; logs and counts how it ended. Never fails.
    async fn wait_for_identity(&self, wait: &IdentityWait, uid: &str, req: &csi::NodePublishVolumeRequest) {
        let ctx = |k: &str| req.volume_context.get(k).map(String::as_str).unwrap_or_default().to_owned();
        let (namespace, name) = (ctx(identity::POD_NAMESPACE_KEY), ctx(identity::POD_NAME_KEY));
        let start = std::time::Instant::now();
        let outcome = wait.wait(uid).await;
        let waited_ms = identity::millis_since(start);
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.identity_wait_micros.fetch_add(micros, Ordering::Relaxed);
        match outcome {
            Outcome::Ready(ids) => {
                self.metrics.identity_ready.fetch_add(1, Ordering::Relaxed);
                tracing::info!(pod_namespace = %namespace, pod_name = %name, pod_uid = %uid, identity_ready = true,
                    waited_ms, spiffe_ids = ?ids, "pod identity ready; mounting");
            }
            Outcome::NotReady(reason) => {
                self.metrics.identity_timeout.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pod_namespace = %namespace, pod_name = %name, pod_uid = %uid, identity_ready = false,
                    waited_ms, timeout_ms = wait.timeout.as_millis(), reason,
                    "pod identity not ready at the timeout; mounting anyway (its containers may start before it)");
            }
            Outcome::Unavailable(error) => {
                self.metrics.identity_unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pod_namespace = %namespace, pod_name = %name, pod_uid = %uid, identity_ready = false,
                    waited_ms, error, "cannot ask the agent about the pod's identity; mounting without waiting");
            }
        }
    }

    async fn unpublish(&self, req: &csi::NodeUnpublishVolumeRequest) -> Result<(), Status> {
        let target = validate::validate_unpublish(req, self.pods_dir()).map_err(invalid)?;
        let _guard = self.lock.lock().await;
        self.mounter.unpublish(&target).map_err(mount_status)
    }
}

fn rpc_cap(t: csi::node_service_capability::rpc::Type) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(csi::node_service_capability::Type::Rpc(csi::node_service_capability::Rpc { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Identity for Driver {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.cfg.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // Node-only: no CONTROLLER_SERVICE, no topology, no expansion.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Controller for Driver {
    /// The driver advertises no CONTROLLER_SERVICE, so no CO calls this; it answers with a single
    /// `UNKNOWN` entry (a capability every CO ignores) because csi-sanity's Node suite calls it
    /// unconditionally and treats an empty list as a failure.
    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let unknown = csi::ControllerServiceCapability {
            r#type: Some(csi::controller_service_capability::Type::Rpc(csi::controller_service_capability::Rpc {
                r#type: csi::controller_service_capability::rpc::Type::Unknown as i32,
            })),
        };
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse { capabilities: vec![unknown] }))
    }
}

#[tonic::async_trait]
impl Node for Driver {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeStageVolume: the driver has no STAGE_UNSTAGE_VOLUME capability"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeUnstageVolume: the driver has no STAGE_UNSTAGE_VOLUME capability"))
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        match self.publish(&req).await {
            Ok(how) => {
                self.metrics.publish_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(volume_id = %req.volume_id, target = %req.target_path, result = ?how, "published");
                Ok(Response::new(csi::NodePublishVolumeResponse {}))
            }
            Err(status) => {
                self.metrics.publish_err.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(volume_id = %req.volume_id, target = %req.target_path, code = ?status.code(),
                    error = status.message(), "publish refused");
                Err(status)
            }
        }
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        match self.unpublish(&req).await {
            Ok(()) => {
                self.metrics.unpublish_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(volume_id = %req.volume_id, target = %req.target_path, "unpublished");
                Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
            }
            Err(status) => {
                self.metrics.unpublish_err.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(volume_id = %req.volume_id, target = %req.target_path, code = ?status.code(),
                    error = status.message(), "unpublish refused");
                Err(status)
            }
        }
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid(RequestError::MissingVolumeId));
        }
        if req.volume_path.is_empty() {
            return Err(Status::invalid_argument("volume_path is required"));
        }
        let not_found = || Status::not_found(format!("no volume published at {:?}", req.volume_path));
        // Paths outside the pods directory are never ours: NotFound, without probing them.
        let target = validate::check_target_path(&req.volume_path, self.pods_dir()).map_err(|_| not_found())?;
        let condition = self.mounter.condition(&target).map_err(mount_status)?.ok_or_else(not_found)?;
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage: vec![],
            volume_condition: Some(csi::VolumeCondition { abnormal: condition.abnormal, message: condition.message }),
        }))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume: the driver has no EXPAND_VOLUME capability"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::rpc::Type;
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![rpc_cap(Type::VolumeCondition), rpc_cap(Type::GetVolumeStats)],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

/// The kubelet plugin Registration service (replaces the node-driver-registrar sidecar).
#[derive(Debug, Clone)]
pub struct Registrar {
    /// The driver name.
    pub name: String,
    /// The driver's CSI socket as the kubelet sees it.
    pub endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<reg::InfoRequest>) -> Result<Response<reg::PluginInfo>, Status> {
        tracing::info!(name = %self.name, endpoint = %self.endpoint, "kubelet asked for plugin info");
        Ok(Response::new(reg::PluginInfo {
            r#type: "CSIPlugin".to_owned(),
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![CSI_VERSION.to_owned()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!(name = %self.name, "registered with the kubelet");
        } else {
            tracing::error!(name = %self.name, error = %s.error, "the kubelet refused the registration");
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}
