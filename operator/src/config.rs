//! Operator configuration: a YAML file in spire-controller-manager's `ControllerManagerConfig` shape (so an
//! existing file carries over) plus flag overrides, resolved into validated [`Settings`](crate::world::Settings)
//! and the process-level knobs. Errors name the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sigil_core::TrustDomain;
use sigil_core::entry::is_entry_id_char;

use crate::template::Template;
use crate::world::Settings;
use sigil_core::duration::parse_go_duration;

pub const DEFAULT_PARENT_ID_TEMPLATE: &str =
    "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}";
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/sigil-server/private/api.sock";
pub const DEFAULT_IGNORE_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "sigil-system"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Field { field, reason: reason.to_string() }
}

/// The file, with spire-controller-manager's key names. Unknown keys are refused so typos don't go unnoticed.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub trust_domain: Option<String>,
    pub cluster_name: Option<String>,
    pub cluster_domain: Option<String>,
    pub class_name: Option<String>,
    pub watch_classless: Option<bool>,
    pub ignore_namespaces: Option<Vec<String>>,
    #[serde(rename = "parentIDTemplate")]
    pub parent_id_template: Option<String>,
    #[serde(rename = "entryIDPrefix")]
    pub entry_id_prefix: Option<String>,
    /// Full resync period, a Go duration ("30s").
    pub gc_interval: Option<String>,
    #[serde(alias = "spireServerSocketPath")]
    pub server_socket_path: Option<PathBuf>,
    pub reconcile: Option<ReconcileConfig>,
    pub leader_election: Option<LeaderElectionConfig>,
    pub metrics: Option<BindConfig>,
    pub health: Option<HealthConfig>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconcileConfig {
    #[serde(rename = "clusterSPIFFEIDs")]
    pub cluster_spiffe_ids: Option<bool>,
    pub cluster_federated_trust_domains: Option<bool>,
    pub cluster_static_entries: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElectionConfig {
    pub leader_elect: Option<bool>,
    pub resource_name: Option<String>,
    pub resource_namespace: Option<String>,
    /// Seconds.
    pub lease_duration: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindConfig {
    pub bind_address: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthConfig {
    pub health_probe_bind_address: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: shown.clone(), reason: e.to_string() })?;
        serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse { path: shown, reason: e.to_string() })
    }
}

/// Flag values; `None` keeps the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub trust_domain: Option<String>,
    pub cluster_name: Option<String>,
    pub cluster_domain: Option<String>,
    pub server_socket_path: Option<PathBuf>,
    pub leader_elect: Option<bool>,
    pub leader_election_namespace: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub health_probe_bind_address: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

pub use sigil_telemetry::LogFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconcile {
    pub cluster_spiffe_ids: bool,
    pub cluster_federated_trust_domains: bool,
    pub cluster_static_entries: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub resource_name: String,
    pub resource_namespace: String,
    pub lease_duration: Duration,
}

/// Everything the operator needs, validated.
#[derive(Debug)]
pub struct OperatorConfig {
    pub settings: Settings,
    pub server_socket_path: PathBuf,
    pub gc_interval: Duration,
    pub reconcile: Reconcile,
    /// `None`: leader election is off (a single replica).
    pub leader_election: Option<LeaderElection>,
    pub metrics_addr: Option<SocketAddr>,
    pub health_addr: Option<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
}

fn bind(name: &'static str, v: Option<String>, default: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = v.unwrap_or_else(|| default.to_string());
    // spire-controller-manager uses "0" to switch an endpoint off.
    if v == "0" || v.is_empty() {
        return Ok(None);
    }
    let v = if v.starts_with(':') { format!("0.0.0.0{v}") } else { v };
    v.parse().map(Some).map_err(|e| field(name, format!("{v:?}: {e}")))
}

impl OperatorConfig {
    /// `resolv_conf` is the text of /etc/resolv.conf, used to detect the cluster domain when it is not set.
    pub fn resolve(file: FileConfig, o: Overrides, resolv_conf: Option<&str>) -> Result<Self, ConfigError> {
        let td = o.trust_domain.or(file.trust_domain).ok_or_else(|| field("trustDomain", "required"))?;
        let trust_domain = TrustDomain::new(&td).map_err(|e| field("trustDomain", e))?;
        let cluster_name = o.cluster_name.or(file.cluster_name).ok_or_else(|| field("clusterName", "required"))?;
        if cluster_name.is_empty() || cluster_name.contains('/') {
            return Err(field("clusterName", format!("{cluster_name:?} must be non-empty and contain no '/'")));
        }
        let cluster_domain = match o.cluster_domain.or(file.cluster_domain) {
            Some(d) => d,
            None => resolv_conf.and_then(detect_cluster_domain).unwrap_or_else(|| "cluster.local".to_string()),
        };
        if !sigil_core::entry::is_valid_dns_name(&cluster_domain) {
            return Err(field("clusterDomain", format!("{cluster_domain:?} is not a DNS name")));
        }
        let parent = file.parent_id_template.unwrap_or_else(|| DEFAULT_PARENT_ID_TEMPLATE.to_string());
        let parent_id_template = Template::parse(&parent).map_err(|e| field("parentIDTemplate", e))?;
        let patterns =
            file.ignore_namespaces.unwrap_or_else(|| DEFAULT_IGNORE_NAMESPACES.iter().map(|s| s.to_string()).collect());
        let ignore_namespaces = patterns
            .iter()
            .map(|p| regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| field("ignoreNamespaces", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let class_name = file.class_name.filter(|c| !c.is_empty());
        // Cluster and class both go into the default prefix: two operators writing to one server (two clusters,
        // or two classes in one cluster) must never see each other's entries as their own.
        let entry_id_prefix = match file.entry_id_prefix {
            Some(p) => p,
            None => {
                let clean = |s: &str| s.chars().map(|c| if is_entry_id_char(c) { c } else { '_' }).collect::<String>();
                match &class_name {
                    None => format!("sigil.{}.", clean(&cluster_name)),
                    Some(class) => format!("sigil.{}.{}.", clean(&cluster_name), clean(class)),
                }
            }
        };
        if entry_id_prefix.is_empty() {
            return Err(field("entryIDPrefix", "must not be empty: it is how the operator knows its own entries"));
        }
        if let Some(c) = entry_id_prefix.chars().find(|c| !is_entry_id_char(*c)) {
            return Err(field("entryIDPrefix", format!("{c:?} is not allowed in entry IDs (A-Z a-z 0-9 - . _)")));
        }
        if entry_id_prefix.len() > 200 {
            return Err(field("entryIDPrefix", "longer than 200 bytes"));
        }
        let gc_interval = match file.gc_interval {
            Some(s) => parse_go_duration(&s).map_err(|e| field("gcInterval", e))?,
            None => Duration::from_secs(30),
        };
        if gc_interval < Duration::from_secs(1) {
            return Err(field("gcInterval", "must be at least 1s"));
        }
        let r = file.reconcile.unwrap_or_default();
        let reconcile = Reconcile {
            cluster_spiffe_ids: r.cluster_spiffe_ids.unwrap_or(true),
            cluster_federated_trust_domains: r.cluster_federated_trust_domains.unwrap_or(true),
            cluster_static_entries: r.cluster_static_entries.unwrap_or(true),
        };
        let le = file.leader_election.unwrap_or_default();
        let leader_election = if o.leader_elect.or(le.leader_elect).unwrap_or(false) {
            let lease_duration = le.lease_duration.unwrap_or(15);
            if !(2..=300).contains(&lease_duration) {
                return Err(field("leaderElection.leaseDuration", "must be between 2 and 300 seconds"));
            }
            Some(LeaderElection {
                resource_name: le.resource_name.unwrap_or_else(|| "sigil-operator-leader".to_string()),
                resource_namespace: o
                    .leader_election_namespace
                    .or(le.resource_namespace)
                    .ok_or_else(|| field("leaderElection.resourceNamespace", "required when leaderElect is true"))?,
                lease_duration: Duration::from_secs(lease_duration),
            })
        } else {
            None
        };
        let metrics_addr =
            bind("metrics.bindAddress", o.metrics_bind_address.or(file.metrics.and_then(|m| m.bind_address)), ":8082")?;
        let health_addr = bind(
            "health.healthProbeBindAddress",
            o.health_probe_bind_address.or(file.health.and_then(|h| h.health_probe_bind_address)),
            ":8083",
        )?;
        let log_format = LogFormat::parse(o.log_format.or(file.log_format).as_deref().unwrap_or("text"))
            .map_err(|e| field("logFormat", e.to_string()))?;
        Ok(Self {
            settings: Settings {
                trust_domain,
                cluster_name,
                cluster_domain,
                parent_id_template,
                ignore_namespaces,
                watch_classless: file.watch_classless.unwrap_or(class_name.is_none()),
                class_name,
                entry_id_prefix,
            },
            server_socket_path: o
                .server_socket_path
                .or(file.server_socket_path)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
            gc_interval,
            reconcile,
            leader_election,
            metrics_addr,
            health_addr,
            log_level: o.log_level.or(file.log_level).unwrap_or_else(|| "info".to_string()),
            log_format,
        })
    }
}

/// The cluster domain from resolv.conf's search list (`<ns>.svc.<domain> svc.<domain> <domain>`), as
/// spire-controller-manager detects it.
pub fn detect_cluster_domain(resolv_conf: &str) -> Option<String> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .flat_map(|rest| rest.split_whitespace())
        .find_map(|d| d.strip_prefix("svc.").map(|d| d.trim_end_matches('.').to_string()))
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> FileConfig {
        FileConfig { trust_domain: Some("example.org".into()), cluster_name: Some("demo".into()), ..Default::default() }
    }

    #[test]
    fn spire_controller_manager_file_is_accepted() {
        let yaml = r#"
apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metrics:
  bindAddress: 127.0.0.1:8082
health:
  healthProbeBindAddress: 127.0.0.1:8083
leaderElection:
  leaderElect: true
  resourceName: 98c9c988.spiffe.io
  resourceNamespace: spire-system
clusterName: demo-cluster
trustDomain: example.org
ignoreNamespaces:
  - kube-system
  - kube-public
  - spire-system
  - local-path-storage
spireServerSocketPath: /run/spire/server-sockets/api.sock
className: spire-spire
watchClassless: false
parentIDTemplate: "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}"
entryIDPrefix: demo.
gcInterval: 10s
reconcile:
  clusterSPIFFEIDs: true
  clusterFederatedTrustDomains: false
  clusterStaticEntries: true
"#;
        let file: FileConfig = serde_yaml::from_str(yaml).unwrap();
        let c = OperatorConfig::resolve(file, Overrides::default(), None).unwrap();
        assert_eq!(c.settings.cluster_name, "demo-cluster");
        assert_eq!(c.settings.class_name.as_deref(), Some("spire-spire"));
        assert!(!c.settings.watch_classless);
        assert_eq!(c.settings.entry_id_prefix, "demo.");
        assert_eq!(c.server_socket_path, PathBuf::from("/run/spire/server-sockets/api.sock"));
        assert_eq!(c.gc_interval, Duration::from_secs(10));
        assert!(!c.reconcile.cluster_federated_trust_domains);
        let le = c.leader_election.unwrap();
        assert_eq!((le.resource_name.as_str(), le.resource_namespace.as_str()), ("98c9c988.spiffe.io", "spire-system"));
        assert_eq!(c.metrics_addr, Some("127.0.0.1:8082".parse().unwrap()));
        assert!(c.settings.is_ignored_namespace("local-path-storage"));
        assert!(!c.settings.is_ignored_namespace("kube-system-2"));
    }

    #[test]
    fn default_prefix_names_cluster_and_class() {
        let mut f = minimal();
        f.class_name = Some("team a".into());
        let c = OperatorConfig::resolve(f, Overrides::default(), None).unwrap();
        assert_eq!(c.settings.entry_id_prefix, "sigil.demo.team_a.");
    }

    #[test]
    fn defaults() {
        let c = OperatorConfig::resolve(minimal(), Overrides::default(), None).unwrap();
        assert_eq!(c.settings.cluster_domain, "cluster.local");
        assert_eq!(c.settings.entry_id_prefix, "sigil.demo.");
        assert!(c.settings.watch_classless);
        assert!(c.leader_election.is_none());
        assert_eq!(c.gc_interval, Duration::from_secs(30));
        assert!(c.settings.is_ignored_namespace("sigil-system"));
        assert_eq!(c.metrics_addr, Some("0.0.0.0:8082".parse().unwrap()));
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides {
            trust_domain: Some("other.org".into()),
            cluster_domain: Some("corp.internal".into()),
            metrics_bind_address: Some("0".into()),
            ..Default::default()
        };
        let c = OperatorConfig::resolve(minimal(), o, None).unwrap();
        assert_eq!(c.settings.trust_domain.name(), "other.org");
        assert_eq!(c.settings.cluster_domain, "corp.internal");
        assert_eq!(c.metrics_addr, None);
    }

    #[test]
    fn cluster_domain_is_detected_from_resolv_conf() {
        let resolv =
            "search default.svc.k8s.example svc.k8s.example k8s.example\nnameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(detect_cluster_domain(resolv).as_deref(), Some("k8s.example"));
        assert_eq!(detect_cluster_domain("nameserver 1.1.1.1\n"), None);
        let c = OperatorConfig::resolve(minimal(), Overrides::default(), Some(resolv)).unwrap();
        assert_eq!(c.settings.cluster_domain, "k8s.example");
    }

    #[test]
    fn bad_values_name_the_field() {
        type Mutate = Box<dyn Fn(&mut FileConfig)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|f| f.trust_domain = None), "trustDomain: required"),
            (Box::new(|f| f.trust_domain = Some("Bad Domain".into())), "trustDomain:"),
            (Box::new(|f| f.cluster_name = None), "clusterName: required"),
            (Box::new(|f| f.parent_id_template = Some("{{ .Foo ".into())), "parentIDTemplate:"),
            (Box::new(|f| f.ignore_namespaces = Some(vec!["(".into()])), "ignoreNamespaces:"),
            (Box::new(|f| f.entry_id_prefix = Some("a/b".into())), "entryIDPrefix:"),
            (Box::new(|f| f.entry_id_prefix = Some(String::new())), "entryIDPrefix:"),
            (Box::new(|f| f.gc_interval = Some("10".into())), "gcInterval:"),
            (Box::new(|f| f.gc_interval = Some("10ms".into())), "gcInterval: must be at least 1s"),
            (Box::new(|f| f.log_format = Some("xml".into())), "logFormat:"),
            (
                Box::new(|f| {
                    f.leader_election = Some(LeaderElectionConfig { leader_elect: Some(true), ..Default::default() })
                }),
                "leaderElection.resourceNamespace: required",
            ),
            (Box::new(|f| f.metrics = Some(BindConfig { bind_address: Some("nope".into()) })), "metrics.bindAddress:"),
        ];
        for (mutate, want) in cases {
            let mut f = minimal();
            mutate(&mut f);
            let err = OperatorConfig::resolve(f, Overrides::default(), None).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_yaml::from_str::<FileConfig>("trustDomain: a\nclusterNmae: x\n").unwrap_err().to_string();
        assert!(err.contains("clusterNmae"), "{err}");
    }
}
