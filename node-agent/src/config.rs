//! Agent configuration: a TOML file plus command-line overrides (flags win).
//!
//! ```toml
//! [agent]
//! trust_domain = "example.org"
//! server_address = "127.0.0.1"
//! server_port = 8081
//! join_token = "..."                 # only needed for the first start (or after eviction)
//! data_dir = "./.data"
//! socket_path = "/tmp/sigil-agent/public/api.sock"
//! admin_socket_path = "/run/sigil/agent-admin/admin.sock"  # optional; off when absent (see crate::admin)
//! trust_bundle_path = "bundle.pem"   # or: insecure_bootstrap = true
//! log_level = "info"
//! log_format = "text"                # or "json"
//!
//! [node_attestor.k8s_psat]           # instead of join_token: the pod's projected service-account token
//! cluster = "prod"                   # a key of the server's [node_attestor.k8s_psat.clusters]
//! token_path = "/var/run/secrets/tokens/spire-agent"
//!
//! [workload_attestor.unix]
//! discover_workload_path = false     # adds unix:path and unix:sha256
//! workload_size_limit = 0
//!
//! [health_checks]
//! bind_address = "127.0.0.1"
//! bind_port = 8088                   # 0 = any free port
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sigil_core::TrustDomain;

use crate::attest::UnixAttestorConfig;
use crate::attestation::{K8sPsatConfig, NodeAttestor};

pub const DEFAULT_SOCKET_PATH: &str = "/tmp/sigil-agent/public/api.sock";
pub const DEFAULT_SERVER_PORT: u16 = 8081;
pub const DEFAULT_DATA_DIR: &str = "./.data";
pub const DEFAULT_HEALTH_PORT: u16 = 8088;

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: &'static str, message: String },
}

fn field(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field { field, message: message.into() }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub node_attestor: NodeAttestorSection,
    #[serde(default)]
    pub workload_attestor: AttestorSection,
    #[serde(default)]
    pub health_checks: HealthSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub trust_domain: Option<String>,
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    pub join_token: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    /// SPIRE's key: the private admin socket (pod identity readiness for the CSI driver); off when absent.
    pub admin_socket_path: Option<PathBuf>,
    pub trust_bundle_path: Option<PathBuf>,
    pub insecure_bootstrap: Option<bool>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// `[node_attestor.*]`: at most one method besides the `[agent]` section's `join_token`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestorSection {
    pub k8s_psat: Option<K8sPsatConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestorSection {
    #[serde(default)]
    pub unix: UnixAttestorConfig,
    /// `[workload_attestor.k8s]`: enables the Kubernetes workload attestor.
    #[serde(default)]
    pub k8s: Option<crate::k8s::K8sAttestorConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Set to false to disable the /live, /ready, /metrics listener.
    pub listener_enabled: Option<bool>,
    pub bind_address: Option<String>,
    pub bind_port: Option<u16>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Command-line values (each overrides the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub trust_domain: Option<String>,
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    pub join_token: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub trust_bundle: Option<PathBuf>,
    pub insecure_bootstrap: bool,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub health_port: Option<u16>,
}

pub use sigil_telemetry::LogFormat;

/// How the agent authenticates the server before it has a stored bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A PEM file with the server's trust domain CA certificates.
    TrustBundle(PathBuf),
    /// Trust whatever the server presents for the first attestation (SPIRE's `insecure_bootstrap`).
    Insecure,
    /// Neither given: only a stored bundle from a previous run can be used.
    StoredOnly,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    pub server_address: String,
    pub server_port: u16,
    pub join_token: Option<String>,
    /// `[node_attestor.k8s_psat]`; excludes `join_token`.
    pub k8s_psat: Option<K8sPsatConfig>,
    pub data_dir: PathBuf,
    pub socket_path: PathBuf,
    /// `admin_socket_path`: the private admin socket ([`crate::admin`]); `None` = off.
    pub admin_socket_path: Option<PathBuf>,
    pub bootstrap: Bootstrap,
    pub log_level: String,
    pub log_format: LogFormat,
    pub unix: UnixAttestorConfig,
    /// `[workload_attestor.k8s]`; `None` = no Kubernetes workload attestor.
    pub k8s: Option<crate::k8s::K8sAttestorConfig>,
    /// Where /live, /ready and /metrics listen; `None` = disabled.
    pub health: Option<(IpAddr, u16)>,
}

impl AgentConfig {
    /// A configuration with defaults for everything but the trust domain and server address.
    pub fn new(trust_domain: TrustDomain, server_address: impl Into<String>, server_port: u16) -> Self {
        Self {
            trust_domain,
            server_address: server_address.into(),
            server_port,
            join_token: None,
            k8s_psat: None,
            data_dir: DEFAULT_DATA_DIR.into(),
            socket_path: DEFAULT_SOCKET_PATH.into(),
            admin_socket_path: None,
            bootstrap: Bootstrap::StoredOnly,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            unix: UnixAttestorConfig::default(),
            k8s: None,
            health: Some((IpAddr::from([127, 0, 0, 1]), DEFAULT_HEALTH_PORT)),
        }
    }

    /// The node attestor the configuration picks, if any (none: only a stored identity can be used).
    pub fn node_attestor(&self) -> Option<NodeAttestor> {
        match (&self.k8s_psat, &self.join_token) {
            (Some(p), _) => Some(NodeAttestor::K8sPsat(p.clone())),
            (None, Some(t)) => Some(NodeAttestor::JoinToken(t.clone())),
            (None, None) => None,
        }
    }

    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Self, ConfigError> {
        let a = file.agent;
        let td =
            o.trust_domain.or(a.trust_domain).ok_or_else(|| field("trust_domain", "required (flag -trustDomain)"))?;
        let trust_domain = TrustDomain::new(&td).map_err(|e| field("trust_domain", e.to_string()))?;
        let server_address = o
            .server_address
            .or(a.server_address)
            .ok_or_else(|| field("server_address", "required (flag -serverAddress)"))?;
        if server_address.is_empty() {
            return Err(field("server_address", "must not be empty"));
        }
        let trust_bundle = o.trust_bundle.or(a.trust_bundle_path);
        let insecure = o.insecure_bootstrap || a.insecure_bootstrap.unwrap_or(false);
        let bootstrap = match (trust_bundle, insecure) {
            (Some(_), true) => {
                return Err(field("insecure_bootstrap", "cannot be combined with trust_bundle_path (-trustBundle)"));
            }
            (Some(p), false) => Bootstrap::TrustBundle(p),
            (None, true) => Bootstrap::Insecure,
            (None, false) => Bootstrap::StoredOnly,
        };
        let log_format = LogFormat::parse(o.log_format.or(a.log_format).as_deref().unwrap_or("text"))
            .map_err(|e| field("log_format", e.to_string()))?;
        let log_level = sigil_telemetry::parse_log_level(o.log_level.or(a.log_level).as_deref().unwrap_or("info"))
            .map_err(|e| field("log_level", e.to_string()))?
            .to_owned();
        let join_token = o.join_token.or(a.join_token).filter(|t| !t.is_empty());
        let k8s_psat = file.node_attestor.k8s_psat;
        if let Some(p) = &k8s_psat {
            if join_token.is_some() {
                return Err(field(
                    "node_attestor.k8s_psat",
                    "cannot be combined with join_token (-joinToken): the config picks one node attestor",
                ));
            }
            if p.cluster.is_empty() {
                return Err(field("node_attestor.k8s_psat.cluster", "is required (a cluster name the server knows)"));
            }
            if p.token_path.as_ref().is_some_and(|t| t.as_os_str().is_empty()) {
                return Err(field("node_attestor.k8s_psat.token_path", "must not be empty"));
            }
        }
        let h = file.health_checks;
        let health = if h.listener_enabled.unwrap_or(true) {
            let addr: IpAddr = h
                .bind_address
                .as_deref()
                .unwrap_or("127.0.0.1")
                .parse()
                .map_err(|e| field("health_checks.bind_address", format!("{e}")))?;
            Some((addr, o.health_port.or(h.bind_port).unwrap_or(DEFAULT_HEALTH_PORT)))
        } else {
            None
        };
        let socket_path = o.socket_path.or(a.socket_path).unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
        let admin_socket_path = a.admin_socket_path;
        if let Some(admin) = &admin_socket_path {
            check_admin_socket_path(admin, &socket_path)?;
        }
        Ok(Self {
            trust_domain,
            server_address,
            server_port: o.server_port.or(a.server_port).unwrap_or(DEFAULT_SERVER_PORT),
            join_token,
            k8s_psat,
            data_dir: o.data_dir.or(a.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            socket_path,
            admin_socket_path,
            bootstrap,
            log_level,
            log_format,
            unix: file.workload_attestor.unix,
            k8s: file.workload_attestor.k8s,
            health,
        })
    }
}

/// The admin socket must have a file name, and must not be in the Workload API socket's directory or below
/// it: that directory is public (and the CSI driver mounts it into pods). As SPIRE checks it.
fn check_admin_socket_path(admin: &Path, workload: &Path) -> Result<(), ConfigError> {
    let name = "admin_socket_path";
    if admin.file_name().is_none() || admin.as_os_str().is_empty() {
        return Err(field(name, format!("{:?} names no socket file", admin.display().to_string())));
    }
    let admin_dir = admin.parent().unwrap_or(Path::new(""));
    let workload_dir = workload.parent().unwrap_or(Path::new(""));
    if admin_dir.starts_with(workload_dir) {
        return Err(field(
            name,
            format!(
                "{} is inside the Workload API socket's directory {} (public, and mounted into pods): use a \
                 directory of its own, e.g. /run/sigil/agent-admin/admin.sock",
                admin.display(),
                workload_dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[agent]
trust_domain = "example.org"
server_address = "10.0.0.1"
server_port = 9000
data_dir = "/var/lib/sigil"
trust_bundle_path = "/etc/sigil/bundle.pem"

[workload_attestor.unix]
discover_workload_path = true

[health_checks]
bind_port = 9999
"#;

    #[test]
    fn file_then_flags() {
        let c = AgentConfig::resolve(FileConfig::parse(FILE).unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.trust_domain.name(), "example.org");
        assert_eq!((c.server_address.as_str(), c.server_port), ("10.0.0.1", 9000));
        assert_eq!(c.bootstrap, Bootstrap::TrustBundle("/etc/sigil/bundle.pem".into()));
        assert!(c.unix.discover_workload_path);
        assert_eq!(c.health, Some((IpAddr::from([127, 0, 0, 1]), 9999)));
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        let o = Overrides {
            server_port: Some(1),
            socket_path: Some("/x.sock".into()),
            join_token: Some("tok".into()),
            health_port: Some(0),
            ..Default::default()
        };
        let c = AgentConfig::resolve(FileConfig::parse(FILE).unwrap(), o).unwrap();
        assert_eq!(c.server_port, 1);
        assert_eq!(c.socket_path, PathBuf::from("/x.sock"));
        assert_eq!(c.join_token.as_deref(), Some("tok"));
        assert_eq!(c.health.map(|h| h.1), Some(0));
    }

    #[test]
    fn errors_name_the_field() {
        let base = || Overrides {
            trust_domain: Some("example.org".into()),
            server_address: Some("127.0.0.1".into()),
            ..Default::default()
        };
        let cases: Vec<(Overrides, &str)> = vec![
            (Overrides { trust_domain: None, ..base() }, "trust_domain"),
            (Overrides { trust_domain: Some("Bad TD".into()), ..base() }, "trust_domain"),
            (Overrides { server_address: None, ..base() }, "server_address"),
            (
                Overrides { insecure_bootstrap: true, trust_bundle: Some("b.pem".into()), ..base() },
                "insecure_bootstrap",
            ),
            (Overrides { log_format: Some("xml".into()), ..base() }, "log_format"),
            (Overrides { log_level: Some("loud".into()), ..base() }, "log_level"),
        ];
        for (o, want) in cases {
            let err = AgentConfig::resolve(FileConfig::default(), o).unwrap_err().to_string();
            assert!(err.contains(&format!("`{want}`")), "{want}: {err}");
        }
        let ok = AgentConfig::resolve(FileConfig::default(), Overrides { insecure_bootstrap: true, ..base() }).unwrap();
        assert_eq!(ok.bootstrap, Bootstrap::Insecure);
    }

    #[test]
    fn k8s_psat_is_picked_and_excludes_join_token() {
        let text = "[agent]\ntrust_domain = \"example.org\"\nserver_address = \"s\"\n\n[node_attestor.k8s_psat]\ncluster = \"prod\"\n";
        let c = AgentConfig::resolve(FileConfig::parse(text).unwrap(), Overrides::default()).unwrap();
        assert_eq!(
            c.node_attestor(),
            Some(NodeAttestor::K8sPsat(K8sPsatConfig { cluster: "prod".into(), token_path: None }))
        );
        let o = Overrides { join_token: Some("t".into()), ..Default::default() };
        let err = AgentConfig::resolve(FileConfig::parse(text).unwrap(), o).unwrap_err().to_string();
        assert!(err.contains("`node_attestor.k8s_psat`") && err.contains("join_token"), "{err}");
        let no_cluster = text.replace("cluster = \"prod\"", "token_path = \"/t\"");
        let err = AgentConfig::resolve(FileConfig::parse(&no_cluster).unwrap(), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`node_attestor.k8s_psat.cluster`"), "{err}");
        assert!(FileConfig::parse(&text.replace("cluster =", "clsuter =")).unwrap_err().contains("clsuter"));
        let o = Overrides { join_token: Some("t".into()), ..Default::default() };
        let plain = "[agent]\ntrust_domain = \"example.org\"\nserver_address = \"s\"\n";
        let c = AgentConfig::resolve(FileConfig::parse(plain).unwrap(), o).unwrap();
        assert_eq!(c.node_attestor(), Some(NodeAttestor::JoinToken("t".into())));
    }

    #[test]
    fn admin_socket_path_is_optional_and_kept_out_of_the_public_directory() {
        let base = "[agent]\ntrust_domain = \"example.org\"\nserver_address = \"s\"\nsocket_path = \"/run/spire/agent-sockets/spire-agent.sock\"\n";
        let c = AgentConfig::resolve(FileConfig::parse(base).unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.admin_socket_path, None);
        let ok = format!("{base}admin_socket_path = \"/run/sigil/agent-admin/admin.sock\"\n");
        let c = AgentConfig::resolve(FileConfig::parse(&ok).unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.admin_socket_path, Some(PathBuf::from("/run/sigil/agent-admin/admin.sock")));
        for bad in ["/run/spire/agent-sockets/admin.sock", "/run/spire/agent-sockets/private/admin.sock", "/"] {
            let text = format!("{base}admin_socket_path = \"{bad}\"\n");
            let err = AgentConfig::resolve(FileConfig::parse(&text).unwrap(), Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("`admin_socket_path`"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(FileConfig::parse("[agent]\ntrust_domian = \"x\"\n").unwrap_err().contains("trust_domian"));
    }
}
