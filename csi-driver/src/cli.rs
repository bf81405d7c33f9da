//! Command-line flags (SPIFFE CSI driver's names, single or double dash).

use std::path::PathBuf;

use clap::Parser;

use crate::RunConfig;
use crate::identity::{self, IdentityWait};
use crate::service::DriverConfig;

/// Flags that take no value (for the single-dash normalizer).
pub const BOOL_FLAGS: &[&str] = &["no-register"];

pub use sigil_telemetry::LogFormat;

/// `sigil-csi-driver`: bind-mounts the agent's Workload API socket directory into pods.
#[derive(Debug, Parser)]
#[command(name = "sigil-csi-driver", version, about)]
pub struct Cli {
    /// CSI driver name; pods reference it as `volumes[].csi.driver`.
    #[arg(long, default_value = "csi.spiffe.io")]
    pub plugin_name: String,
    /// This node's name (NodeGetInfo); usually from the downward API.
    #[arg(long, env = "MY_NODE_NAME")]
    pub node_id: String,
    /// Where to serve CSI, as this process sees it.
    #[arg(long, default_value = "/spiffe-csi/csi.sock")]
    pub csi_socket_path: PathBuf,
    /// The agent's Workload API socket directory, bind-mounted read-only into pods.
    #[arg(long)]
    pub workload_api_socket_dir: PathBuf,
    /// The kubelet root directory; publish targets must be inside its `pods/` directory. The registration
    /// socket goes in its `plugins_registry/`.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// The CSI socket path as the kubelet sees it (default `<kubelet-dir>/plugins/<plugin-name>/csi.sock`).
    #[arg(long)]
    pub kubelet_registration_path: Option<String>,
    /// Do not register with the kubelet (when running the node-driver-registrar sidecar instead).
    #[arg(long)]
    pub no_register: bool,
    /// The agent's admin socket (its `admin_socket_path`), asked by -wait-for-identity.
    #[arg(long)]
    pub agent_admin_socket: Option<PathBuf>,
    /// Before mounting a pod's volume, wait at most this long (Go duration, at most 30s) until the agent on
    /// this node holds the pod's identity; the volume is mounted afterwards in every case. 0 = off.
    #[arg(long, default_value = "0")]
    pub wait_for_identity: String,
    /// Port for /healthz, /readyz and /metrics on all addresses; 0 turns them off.
    #[arg(long, default_value_t = 0)]
    pub health_port: u16,
    /// Log level (trace, debug, info, warn, error), or a tracing filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Errors in the flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// An empty value where one is required.
    #[error("--{0} must not be empty")]
    Empty(&'static str),
    /// -wait-for-identity is not a usable duration.
    #[error("--wait-for-identity: {0}")]
    WaitForIdentity(String),
    /// -wait-for-identity without -agent-admin-socket.
    #[error("--wait-for-identity needs --agent-admin-socket (the agent's admin_socket_path)")]
    NoAdminSocket,
}

impl Cli {
    /// The run configuration these flags describe.
    pub fn run_config(&self) -> Result<RunConfig, CliError> {
        if self.plugin_name.is_empty() {
            return Err(CliError::Empty("plugin-name"));
        }
        if self.node_id.is_empty() {
            return Err(CliError::Empty("node-id"));
        }
        let registration = (!self.no_register).then(|| {
            let endpoint = self.kubelet_registration_path.clone().unwrap_or_else(|| {
                self.kubelet_dir.join("plugins").join(&self.plugin_name).join("csi.sock").display().to_string()
            });
            let socket = self.kubelet_dir.join("plugins_registry").join(format!("{}-reg.sock", self.plugin_name));
            (socket, endpoint)
        });
        let wait = sigil_core::duration::parse_go_duration(&self.wait_for_identity)
            .map_err(|e| CliError::WaitForIdentity(e.to_string()))?;
        if wait > identity::MAX_WAIT {
            return Err(CliError::WaitForIdentity(format!(
                "{:?} is longer than the agent's maximum wait of 30s",
                self.wait_for_identity
            )));
        }
        let identity_wait = match (&self.agent_admin_socket, wait.is_zero()) {
            (_, true) => None,
            (None, false) => return Err(CliError::NoAdminSocket),
            (Some(p), false) if p.as_os_str().is_empty() => return Err(CliError::Empty("agent-admin-socket")),
            (Some(p), false) => Some(IdentityWait { socket: p.clone(), timeout: wait }),
        };
        Ok(RunConfig {
            driver: DriverConfig {
                name: self.plugin_name.clone(),
                node_id: self.node_id.clone(),
                socket_dir: self.workload_api_socket_dir.clone(),
                kubelet_dir: self.kubelet_dir.clone(),
                identity_wait,
            },
            csi_socket_path: self.csi_socket_path.clone(),
            registration,
            health_port: (self.health_port != 0).then_some(self.health_port),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("sigil-csi-driver").chain(args.iter().copied()).map(str::to_owned);
        Cli::try_parse_from(sigil_core::cli::normalize_spire_flags(argv, BOOL_FLAGS)).unwrap()
    }

    #[test]
    fn defaults_and_registration_paths() {
        let c = parse(&["-node-id", "n1", "-workload-api-socket-dir", "/run/spire/agent-sockets"]);
        let r = c.run_config().unwrap();
        assert_eq!(r.driver.name, "csi.spiffe.io");
        assert_eq!(r.csi_socket_path, PathBuf::from("/spiffe-csi/csi.sock"));
        assert_eq!(
            r.registration,
            Some((
                PathBuf::from("/var/lib/kubelet/plugins_registry/csi.spiffe.io-reg.sock"),
                "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock".to_owned()
            ))
        );
        assert_eq!(r.health_port, None);
        assert_eq!(r.driver.identity_wait, None);
    }

    #[test]
    fn wait_for_identity_flags() {
        let base = ["-node-id", "n", "-workload-api-socket-dir", "/s"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
            parse(&args).run_config().map(|r| r.driver.identity_wait)
        };
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&["-agent-admin-socket", "/run/sigil/agent-admin/admin.sock"]), Ok(None));
        assert_eq!(with(&["-wait-for-identity", "0s", "-agent-admin-socket", "/a.sock"]), Ok(None));
        assert_eq!(
            with(&["-wait-for-identity", "10s", "-agent-admin-socket", "/a.sock"]),
            Ok(Some(IdentityWait { socket: "/a.sock".into(), timeout: std::time::Duration::from_secs(10) }))
        );
        assert_eq!(
            with(&["--wait-for-identity=1.5s", "--agent-admin-socket=/a.sock"]),
            Ok(Some(IdentityWait { socket: "/a.sock".into(), timeout: std::time::Duration::from_millis(1500) }))
        );
        assert_eq!(with(&["-wait-for-identity", "10s"]), Err(CliError::NoAdminSocket));
        let err = with(&["-wait-for-identity", "10", "-agent-admin-socket", "/a.sock"]).unwrap_err();
        assert!(err.to_string().contains("--wait-for-identity") && err.to_string().contains("unit"), "{err}");
        let err = with(&["-wait-for-identity", "1m", "-agent-admin-socket", "/a.sock"]).unwrap_err();
        assert!(err.to_string().contains("30s"), "{err}");
    }

    #[test]
    fn overrides_and_no_register() {
        let c = parse(&[
            "--plugin-name=x.example",
            "--node-id=n2",
            "--workload-api-socket-dir=/s",
            "--kubelet-dir=/k",
            "--kubelet-registration-path=/k/plugins/x/csi.sock",
            "--health-port=9809",
        ]);
        let r = c.run_config().unwrap();
        assert_eq!(
            r.registration,
            Some((PathBuf::from("/k/plugins_registry/x.example-reg.sock"), "/k/plugins/x/csi.sock".to_owned()))
        );
        assert_eq!(r.health_port, Some(9809));
        let c = parse(&["-node-id", "n", "-workload-api-socket-dir", "/s", "-no-register"]);
        assert_eq!(c.run_config().unwrap().registration, None);
        let c = parse(&["-node-id", "", "-workload-api-socket-dir", "/s"]);
        assert_eq!(c.run_config().unwrap_err(), CliError::Empty("node-id"));
    }
}
