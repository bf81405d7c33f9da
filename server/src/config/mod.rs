//! Server configuration: a TOML file plus command-line overrides.
//!
//! Field names follow SPIRE's server configuration (`trust_domain`, `bind_port`, `ca_ttl`, ...) so an
//! operator can carry settings over. Unknown keys are refused, and every error names the field it is about.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sigil_core::TrustDomain;

pub mod federates_with;
pub mod federation;

pub use federates_with::ConfiguredRelationship;
pub use federation::{BundleEndpointConfig, ServingCertFile, ServingProfile};

/// A configuration problem, always naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: &'static str, message: String },
    /// A field of one `[node_attestor.k8s_psat.clusters.<cluster>]` table.
    #[error("config field `node_attestor.k8s_psat.clusters.{cluster}.{field}`: {message}")]
    ClusterField { cluster: String, field: &'static str, message: String },
    /// A field whose path holds a name from the file, e.g. `federation.federates_with."b.test".bundle_endpoint_url`.
    #[error("config field `{field}`: {message}")]
    DynField { field: String, message: String },
}

fn field(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field { field, message: message.into() }
}

/// The file layout. Everything is optional here; [`ServerConfig::resolve`] applies defaults and checks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub upstream_authority: Option<UpstreamSection>,
    #[serde(default)]
    pub health_checks: HealthSection,
    #[serde(default)]
    pub node_attestor: NodeAttestorSection,
    #[serde(default)]
    pub notifier: NotifierSection,
    #[serde(default)]
    pub federation: federation::FederationSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub trust_domain: Option<String>,
    pub bind_address: Option<String>,
    pub bind_port: Option<u16>,
    pub socket_path: Option<PathBuf>,
    /// See [`ServerConfig::socket_shared_volume`].
    pub socket_shared_volume: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub ca_key_type: Option<String>,
    pub jwt_key_type: Option<String>,
    pub ca_ttl: Option<String>,
    pub default_x509_svid_ttl: Option<String>,
    pub default_jwt_svid_ttl: Option<String>,
    pub agent_ttl: Option<String>,
    pub join_token_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub disk: Option<UpstreamDisk>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamDisk {
    pub cert_file_path: PathBuf,
    pub key_file_path: PathBuf,
    pub bundle_file_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub listener_enabled: Option<bool>,
    pub bind_address: Option<String>,
    pub bind_port: Option<u16>,
}

/// `[node_attestor]`: attestors besides join tokens (which need no configuration).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestorSection {
    pub k8s_psat: Option<K8sPsatSection>,
}

/// `[node_attestor.k8s_psat]`, SPIRE's `NodeAttestor "k8s_psat"` plugin data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatSection {
    #[serde(default)]
    pub clusters: BTreeMap<String, K8sPsatClusterSection>,
}

/// `[node_attestor.k8s_psat.clusters.<name>]`: SPIRE's per-cluster keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatClusterSection {
    pub service_account_allow_list: Option<Vec<String>>,
    /// Absent means `["spire-server"]`; an explicit `[]` means "the API server's own audiences".
    pub audience: Option<Vec<String>>,
    pub kube_config_file: Option<String>,
    pub allowed_node_label_keys: Option<Vec<String>>,
    pub allowed_pod_label_keys: Option<Vec<String>>,
    pub use_pod_uid_for_agent_id: Option<bool>,
}

/// `[notifier]`: plugins told about every change of the own trust bundle.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierSection {
    pub k8sbundle: Option<K8sBundleSection>,
}

/// `[notifier.k8sbundle]`, SPIRE's `Notifier "k8sbundle"` plugin data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sBundleSection {
    pub namespace: Option<String>,
    pub config_map: Option<String>,
    pub config_map_key: Option<String>,
    pub kube_config_file: Option<String>,
}

/// Flag overrides (`-trustDomain`, `-dataDir`, ...); `None` keeps the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub trust_domain: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub bind_address: Option<String>,
    pub server_port: Option<u16>,
    pub socket_path: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub health_port: Option<u16>,
}

pub use sigil_telemetry::LogFormat;

/// Resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub trust_domain: TrustDomain,
    pub bind_address: IpAddr,
    pub bind_port: u16,
    pub socket_path: PathBuf,
    /// `[server] socket_shared_volume`: a volume mounted for this pod only (a Kubernetes emptyDir shared
    /// with the operator sidecar) above the admin socket's directory. That one directory may be writable by
    /// others (an emptyDir is root-owned 0777, not sticky), but only if it is a mount point; the socket's
    /// own directory below it is still created 0700 and checked as private. `None`: every directory above
    /// the socket must be closed to others (or sticky), as on a host.
    pub socket_shared_volume: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    pub ca_key_type: String,
    pub jwt_key_type: String,
    pub ca_ttl: Duration,
    pub default_x509_svid_ttl: Duration,
    pub default_jwt_svid_ttl: Duration,
    pub agent_ttl: Duration,
    pub join_token_ttl: Duration,
    pub upstream: Option<UpstreamDisk>,
    pub health: Option<(IpAddr, u16)>,
    /// `None` when there is no `[node_attestor.k8s_psat]` section: the attestation type is then refused.
    pub k8s_psat: Option<K8sPsatConfig>,
    /// `None` when there is no `[notifier.k8sbundle]` section: no ConfigMap is kept up to date.
    pub k8sbundle: Option<K8sBundleConfig>,
    /// `None` when there is no `[federation.bundle_endpoint]` section: the bundle is not served.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// `[federation.federates_with."<td>"]`: the config file's federation relationships, in trust domain
    /// order. They override admin API relationships with the same trust domain.
    pub federates_with: Vec<ConfiguredRelationship>,
}

/// The resolved `k8sbundle` notifier configuration: which ConfigMap key holds the bundle's PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sBundleConfig {
    pub namespace: String,
    pub config_map: String,
    pub config_map_key: String,
    /// `None` = in-cluster configuration (the server runs in that cluster).
    pub kube_config_file: Option<PathBuf>,
}

/// SPIRE's defaults for the `k8sbundle` notifier.
pub const DEFAULT_K8SBUNDLE_NAMESPACE: &str = "spire";
pub const DEFAULT_K8SBUNDLE_CONFIG_MAP: &str = "spire-bundle";
pub const DEFAULT_K8SBUNDLE_CONFIG_MAP_KEY: &str = "bundle.crt";

/// The resolved `k8s_psat` attestor configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sPsatConfig {
    /// Keyed by the logical cluster name agents send. Empty is allowed (as in SPIRE): every attestation
    /// then fails with "not configured for cluster".
    pub clusters: BTreeMap<String, K8sPsatCluster>,
}

/// One cluster agents may attest from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatCluster {
    /// `"<namespace>:<service account>"` of the agents' service accounts; never empty.
    pub service_account_allow_list: BTreeSet<String>,
    /// Sent as TokenReview `spec.audiences`; empty = none sent (the API server's default audiences).
    pub audience: Vec<String>,
    /// `None` = in-cluster configuration (the server runs in that cluster).
    pub kube_config_file: Option<PathBuf>,
    pub allowed_node_label_keys: BTreeSet<String>,
    pub allowed_pod_label_keys: BTreeSet<String>,
    pub use_pod_uid_for_agent_id: bool,
}

/// SPIRE's default audience for projected agent tokens.
pub const DEFAULT_PSAT_AUDIENCE: &str = "spire-server";

pub const DEFAULT_SOCKET_PATH: &str = "/tmp/sigil-server/private/api.sock";
pub const DEFAULT_SERVER_PORT: u16 = 8081;
pub const DEFAULT_HEALTH_PORT: u16 = 8080;

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned() + &span_note(text, e.span()))
    }
}

fn span_note(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let line = text.get(..span.start).map(|s| s.lines().count().max(1)).unwrap_or(1);
    format!(" (line {line})")
}

impl ServerConfig {
    /// Applies defaults and overrides, and validates every field.
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Self, ConfigError> {
        let s = file.server;
        let td_raw = o
            .trust_domain
            .or(s.trust_domain)
            .ok_or_else(|| field("trust_domain", "is required (or pass -trustDomain)"))?;
        let trust_domain = TrustDomain::new(&td_raw).map_err(|e| field("trust_domain", e.to_string()))?;
        let bind_address = parse_ip("bind_address", o.bind_address.or(s.bind_address).as_deref().unwrap_or("0.0.0.0"))?;
        let log_format = LogFormat::parse(o.log_format.or(s.log_format).as_deref().unwrap_or("text"))
            .map_err(|e| field("log_format", e.to_string()))?;
        let log_level = sigil_telemetry::parse_log_level(o.log_level.or(s.log_level).as_deref().unwrap_or("info"))
            .map_err(|e| field("log_level", e.to_string()))?
            .to_owned();
        let key_types = ["ec-p256", "ec-p384", "rsa-2048"];
        let ca_key_type = s.ca_key_type.unwrap_or_else(|| "ec-p256".into());
        if !key_types.contains(&ca_key_type.as_str()) {
            return Err(field("ca_key_type", format!("{ca_key_type:?} is not one of {}", key_types.join(", "))));
        }
        let jwt_key_type = s.jwt_key_type.unwrap_or_else(|| "ec-p256".into());
        if !key_types.contains(&jwt_key_type.as_str()) {
            return Err(field("jwt_key_type", format!("{jwt_key_type:?} is not one of {}", key_types.join(", "))));
        }
        let dur = |name: &'static str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(text) => {
                    let d = parse_duration(&text).map_err(|m| field(name, m))?;
                    if d.is_zero() {
                        return Err(field(name, "must be greater than zero"));
                    }
                    Ok(d)
                }
            }
        };
        let ca_ttl = dur("ca_ttl", s.ca_ttl, Duration::from_secs(24 * 3600))?;
        let default_x509_svid_ttl = dur("default_x509_svid_ttl", s.default_x509_svid_ttl, Duration::from_secs(3600))?;
        let default_jwt_svid_ttl = dur("default_jwt_svid_ttl", s.default_jwt_svid_ttl, Duration::from_secs(300))?;
        let agent_ttl = dur("agent_ttl", s.agent_ttl, default_x509_svid_ttl)?;
        let join_token_ttl = dur("join_token_ttl", s.join_token_ttl, Duration::from_secs(600))?;
        if ca_ttl < Duration::from_secs(60) {
            return Err(field("ca_ttl", "must be at least 1m"));
        }
        let upstream = match file.upstream_authority {
            None => None,
            Some(UpstreamSection { disk: Some(d) }) => Some(d),
            Some(UpstreamSection { disk: None }) => {
                return Err(field("upstream_authority", "only the `disk` upstream authority is supported"));
            }
        };
        let h = file.health_checks;
        let health = if h.listener_enabled.unwrap_or(true) {
            let addr = parse_ip("health_checks.bind_address", h.bind_address.as_deref().unwrap_or("127.0.0.1"))?;
            Some((addr, o.health_port.or(h.bind_port).unwrap_or(DEFAULT_HEALTH_PORT)))
        } else {
            None
        };
        let socket_path = o.socket_path.or(s.socket_path).unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
        let socket_shared_volume = s.socket_shared_volume.map(|v| check_shared_volume(&socket_path, v)).transpose()?;
        let mut federation = file.federation;
        let federates_with = federates_with::resolve(&trust_domain, std::mem::take(&mut federation.federates_with))?;
        Ok(Self {
            trust_domain,
            bind_address,
            bind_port: o.server_port.or(s.bind_port).unwrap_or(DEFAULT_SERVER_PORT),
            socket_path,
            socket_shared_volume,
            data_dir: o.data_dir.or(s.data_dir).unwrap_or_else(|| "./.data".into()),
            log_level,
            log_format,
            ca_key_type,
            jwt_key_type,
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_ttl,
            join_token_ttl,
            upstream,
            health,
            k8s_psat: file.node_attestor.k8s_psat.map(resolve_k8s_psat).transpose()?,
            k8sbundle: file.notifier.k8sbundle.map(resolve_k8sbundle).transpose()?,
            bundle_endpoint: federation::resolve(federation, ca_ttl)?,
            federates_with,
        })
    }
}

/// `socket_shared_volume` must be an absolute path strictly above the socket's directory: the socket's own
/// directory is created below it, private, so the volume's openness never reaches the socket itself.
/// (Whether it really is a mount point is checked when the socket directory is prepared.)
fn check_shared_volume(socket_path: &std::path::Path, volume: PathBuf) -> Result<PathBuf, ConfigError> {
    let name = "socket_shared_volume";
    if !volume.is_absolute() || volume.parent().is_none() {
        return Err(field(name, format!("{} must be an absolute path other than /", volume.display())));
    }
    let socket_dir = socket_path.parent().unwrap_or(std::path::Path::new(""));
    if socket_dir == volume || !socket_dir.starts_with(&volume) {
        return Err(field(
            name,
            format!(
                "{} must be a directory above the admin socket's own directory (socket_path {}), for example socket_path = \"{}/private/api.sock\"",
                volume.display(),
                socket_path.display(),
                volume.display()
            ),
        ));
    }
    Ok(volume)
}

fn resolve_k8sbundle(section: K8sBundleSection) -> Result<K8sBundleConfig, ConfigError> {
    let namespace = section.namespace.unwrap_or_else(|| DEFAULT_K8SBUNDLE_NAMESPACE.into());
    if !is_dns_label(&namespace) {
        return Err(field(
            "notifier.k8sbundle.namespace",
            format!(
                "{namespace:?} is not a Kubernetes namespace name (lower case letters, digits and '-', at most 63)"
            ),
        ));
    }
    let config_map = section.config_map.unwrap_or_else(|| DEFAULT_K8SBUNDLE_CONFIG_MAP.into());
    if !is_dns_subdomain(&config_map) {
        return Err(field(
            "notifier.k8sbundle.config_map",
            format!("{config_map:?} is not a ConfigMap name (lower case letters, digits, '-' and '.', at most 253)"),
        ));
    }
    let config_map_key = section.config_map_key.unwrap_or_else(|| DEFAULT_K8SBUNDLE_CONFIG_MAP_KEY.into());
    let key_ok = !config_map_key.is_empty()
        && config_map_key.len() <= 253
        && config_map_key != "."
        && config_map_key != ".."
        && config_map_key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !key_ok {
        return Err(field(
            "notifier.k8sbundle.config_map_key",
            format!("{config_map_key:?} is not a ConfigMap key (letters, digits, '-', '_' and '.')"),
        ));
    }
    Ok(K8sBundleConfig {
        namespace,
        config_map,
        config_map_key,
        kube_config_file: section.kube_config_file.filter(|p| !p.is_empty()).map(PathBuf::from),
    })
}

/// RFC 1123 label, as Kubernetes checks namespace names.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// RFC 1123 subdomain, as Kubernetes checks most object names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn resolve_k8s_psat(section: K8sPsatSection) -> Result<K8sPsatConfig, ConfigError> {
    let mut clusters = BTreeMap::new();
    for (name, c) in section.clusters {
        check_cluster_name(&name)?;
        let err =
            |field: &'static str, message: String| ConfigError::ClusterField { cluster: name.clone(), field, message };
        let allow = c.service_account_allow_list.unwrap_or_default();
        if allow.is_empty() {
            return Err(err(
                "service_account_allow_list",
                "must name at least one service account as \"namespace:name\" (the agents' service account)".into(),
            ));
        }
        for sa in &allow {
            let ok =
                sa.split_once(':').is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'));
            if !ok {
                return Err(err(
                    "service_account_allow_list",
                    format!("{sa:?} is not \"namespace:serviceaccount\" (for example \"spire:spire-agent\")"),
                ));
            }
        }
        let audience = c.audience.unwrap_or_else(|| vec![DEFAULT_PSAT_AUDIENCE.to_owned()]);
        if audience.iter().any(String::is_empty) {
            return Err(err(
                "audience",
                "an audience must not be empty (use `audience = []` for the API server's default)".into(),
            ));
        }
        let keys = |field: &'static str, v: Option<Vec<String>>| -> Result<BTreeSet<String>, ConfigError> {
            let v = v.unwrap_or_default();
            if v.iter().any(String::is_empty) {
                return Err(err(field, "a label key must not be empty".into()));
            }
            Ok(v.into_iter().collect())
        };
        let cluster = K8sPsatCluster {
            service_account_allow_list: allow.into_iter().collect(),
            audience,
            kube_config_file: c.kube_config_file.filter(|p| !p.is_empty()).map(PathBuf::from),
            allowed_node_label_keys: keys("allowed_node_label_keys", c.allowed_node_label_keys)?,
            allowed_pod_label_keys: keys("allowed_pod_label_keys", c.allowed_pod_label_keys)?,
            use_pod_uid_for_agent_id: c.use_pod_uid_for_agent_id.unwrap_or(false),
        };
        clusters.insert(name, cluster);
    }
    Ok(K8sPsatConfig { clusters })
}

/// The cluster name becomes a path segment of agent IDs (`/spire/agent/k8s_psat/<cluster>/...`), so it
/// must be one: refusing it here beats every attestation failing later.
fn check_cluster_name(name: &str) -> Result<(), ConfigError> {
    let segment_ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if segment_ok {
        return Ok(());
    }
    Err(field(
        "node_attestor.k8s_psat.clusters",
        format!("cluster name {name:?} must be a SPIFFE ID path segment: letters, digits, '.', '-' and '_'"),
    ))
}

fn parse_ip(name: &'static str, v: &str) -> Result<IpAddr, ConfigError> {
    v.parse().map_err(|_| field(name, format!("{v:?} is not an IP address")))
}

/// Parses Go-style durations as SPIRE configs write them: `24h`, `5m`, `90s`, `1h30m`, `500ms`.
/// A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration like 90s, 5m, 24h or 1h30m"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => {
                return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h, d)"));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table: &[(&str, Option<u64>)] = &[
            ("24h", Some(86400)),
            ("5m", Some(300)),
            ("90s", Some(90)),
            ("1h30m", Some(5400)),
            ("600", Some(600)),
            ("500ms", Some(0)),
            ("", None),
            ("h", None),
            ("5x", None),
            ("-5s", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_duration(text).ok().map(|d| d.as_secs()), *want, "{text}");
        }
    }

    #[test]
    fn defaults_match_spire() {
        let c = ServerConfig::resolve(
            FileConfig::default(),
            Overrides { trust_domain: Some("example.org".into()), ..Default::default() },
        )
        .unwrap();
        assert_eq!(c.bind_port, 8081);
        assert_eq!(c.socket_path, PathBuf::from("/tmp/sigil-server/private/api.sock"));
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.join_token_ttl, Duration::from_secs(600));
        assert_eq!(c.ca_key_type, "ec-p256");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("[server]\ntrust_domain = \"Bad Domain\"\n", "trust_domain"),
            ("[server]\ntrust_domain = \"td\"\nca_ttl = \"forever\"\n", "ca_ttl"),
            ("[server]\ntrust_domain = \"td\"\nca_key_type = \"dsa\"\n", "ca_key_type"),
            ("[server]\ntrust_domain = \"td\"\nlog_format = \"xml\"\n", "log_format"),
            ("[server]\ntrust_domain = \"td\"\nbind_address = \"nowhere\"\n", "bind_address"),
            ("[server]\n", "trust_domain"),
        ];
        for (text, name) in cases {
            let file = FileConfig::parse(text).unwrap();
            let err = ServerConfig::resolve(file, Overrides::default()).unwrap_err().to_string();
            assert!(err.contains(name), "{text:?} -> {err}");
        }
    }

    /// SPIRE's configs spell these in upper case (`log_format = "JSON"`); the rule itself is table-tested in
    /// sigil_telemetry.
    #[test]
    fn spire_log_spellings_are_taken() {
        let file =
            FileConfig::parse("[server]\ntrust_domain = \"td\"\nlog_format = \"JSON\"\nlog_level = \"WARNING\"\n")
                .unwrap();
        let c = ServerConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!((c.log_format, c.log_level.as_str()), (LogFormat::Json, "warn"));
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = FileConfig::parse("[server]\ntrust_domian = \"td\"\n").unwrap_err();
        assert!(err.contains("trust_domian"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let file = FileConfig::parse("[server]\ntrust_domain = \"a.org\"\nbind_port = 9000\n").unwrap();
        let c = ServerConfig::resolve(
            file,
            Overrides { trust_domain: Some("b.org".into()), server_port: Some(9100), ..Default::default() },
        )
        .unwrap();
        assert_eq!(c.trust_domain.name(), "b.org");
        assert_eq!(c.bind_port, 9100);
    }

    fn resolve_text(text: &str) -> Result<ServerConfig, String> {
        let file = FileConfig::parse(&format!("[server]\ntrust_domain = \"td\"\n{text}"))?;
        ServerConfig::resolve(file, Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn k8s_psat_absent_means_not_configured() {
        assert_eq!(resolve_text("").unwrap().k8s_psat, None);
        // A section without clusters configures the type; every attestation then names the unknown cluster.
        assert_eq!(resolve_text("[node_attestor.k8s_psat]\n").unwrap().k8s_psat, Some(K8sPsatConfig::default()));
    }

    #[test]
    fn k8s_psat_defaults_match_spire() {
        let c = resolve_text(
            "[node_attestor.k8s_psat.clusters.demo]\nservice_account_allow_list = [\"spire:spire-agent\"]\n",
        )
        .unwrap();
        let cluster = &c.k8s_psat.unwrap().clusters["demo"];
        assert_eq!(
            *cluster,
            K8sPsatCluster {
                service_account_allow_list: ["spire:spire-agent".to_owned()].into(),
                audience: vec!["spire-server".into()],
                kube_config_file: None,
                allowed_node_label_keys: BTreeSet::new(),
                allowed_pod_label_keys: BTreeSet::new(),
                use_pod_uid_for_agent_id: false,
            }
        );
    }

    #[test]
    fn k8s_psat_values() {
        type Check = fn(&K8sPsatCluster) -> bool;
        let sa = "service_account_allow_list = [\"ns:sa\"]\n";
        let cases: &[(&str, Check)] = &[
            ("audience = []\n", |c| c.audience.is_empty()),
            ("audience = [\"a\", \"b\"]\n", |c| c.audience == ["a", "b"]),
            ("kube_config_file = \"\"\n", |c| c.kube_config_file.is_none()),
            ("kube_config_file = \"/etc/k.conf\"\n", |c| c.kube_config_file == Some(PathBuf::from("/etc/k.conf"))),
            ("allowed_node_label_keys = [\"zone\", \"zone\"]\n", |c| c.allowed_node_label_keys.len() == 1),
            ("allowed_pod_label_keys = [\"app\"]\n", |c| c.allowed_pod_label_keys.contains("app")),
            ("use_pod_uid_for_agent_id = true\n", |c| c.use_pod_uid_for_agent_id),
        ];
        for (extra, check) in cases {
            let c = resolve_text(&format!("[node_attestor.k8s_psat.clusters.c1]\n{sa}{extra}")).unwrap();
            let cfg = c.k8s_psat.unwrap();
            assert!(check(&cfg.clusters["c1"]), "{extra}: {cfg:?}");
        }
    }

    #[test]
    fn k8s_psat_errors_name_the_field() {
        let head = "[node_attestor.k8s_psat.clusters.c1]\n";
        let sa = "service_account_allow_list = [\"ns:sa\"]\n";
        let cases: &[(String, &str)] = &[
            (head.to_owned(), "`node_attestor.k8s_psat.clusters.c1.service_account_allow_list`: must name"),
            (format!("{head}service_account_allow_list = []\n"), "c1.service_account_allow_list`"),
            (format!("{head}service_account_allow_list = [\"nocolon\"]\n"), "\"nocolon\" is not"),
            (format!("{head}service_account_allow_list = [\":sa\"]\n"), "\":sa\" is not"),
            (format!("{head}service_account_allow_list = [\"ns:\"]\n"), "\"ns:\" is not"),
            (format!("{head}service_account_allow_list = [\"a:b:c\"]\n"), "\"a:b:c\" is not"),
            (format!("{head}{sa}audience = [\"\"]\n"), "c1.audience`"),
            (format!("{head}{sa}allowed_pod_label_keys = [\"\"]\n"), "c1.allowed_pod_label_keys`"),
            (format!("{head}{sa}allowed_node_label_keys = [\"\"]\n"), "c1.allowed_node_label_keys`"),
            (format!("{head}{sa}service_account_allowlist = []\n"), "service_account_allowlist"),
            (format!("{head}{sa}audience = \"spire-server\"\n"), "invalid type"),
            (format!("{head}{sa}use_pod_uid_for_agent_id = \"yes\"\n"), "invalid type"),
            (format!("[node_attestor.k8s_psat.clusters.\"a/b\"]\n{sa}"), "cluster name \"a/b\""),
            (format!("[node_attestor.k8s_psat.clusters.\"..\"]\n{sa}"), "cluster name \"..\""),
            ("[node_attestor.k8s_psat]\ncluster = {}\n".to_owned(), "cluster"),
            ("[node_attestor.k8s_sat]\n".to_owned(), "k8s_sat"),
        ];
        for (text, want) in cases {
            let err = resolve_text(text).unwrap_err();
            assert!(err.contains(want), "{text:?} -> {err}");
        }
    }

    #[test]
    fn k8sbundle_absent_defaults_and_values() {
        assert_eq!(resolve_text("").unwrap().k8sbundle, None);
        let defaults = K8sBundleConfig {
            namespace: "spire".into(),
            config_map: "spire-bundle".into(),
            config_map_key: "bundle.crt".into(),
            kube_config_file: None,
        };
        let cases: &[(&str, K8sBundleConfig)] = &[
            ("", defaults.clone()),
            ("kube_config_file = \"\"\n", defaults.clone()),
            (
                "namespace = \"sigil-system\"\nconfig_map = \"sigil.bundle\"\nconfig_map_key = \"ca_bundle.pem\"\nkube_config_file = \"/k\"\n",
                K8sBundleConfig {
                    namespace: "sigil-system".into(),
                    config_map: "sigil.bundle".into(),
                    config_map_key: "ca_bundle.pem".into(),
                    kube_config_file: Some("/k".into()),
                },
            ),
        ];
        for (body, want) in cases {
            let c = resolve_text(&format!("[notifier.k8sbundle]\n{body}")).unwrap();
            assert_eq!(c.k8sbundle.as_ref(), Some(want), "{body}");
        }
    }

    #[test]
    fn k8sbundle_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("namespace = \"\"\n", "`notifier.k8sbundle.namespace`: \"\" is not"),
            ("namespace = \"Spire\"\n", "`notifier.k8sbundle.namespace`: \"Spire\" is not"),
            ("namespace = \"a.b\"\n", "`notifier.k8sbundle.namespace`"),
            ("namespace = \"-a\"\n", "`notifier.k8sbundle.namespace`"),
            ("config_map = \"a_b\"\n", "`notifier.k8sbundle.config_map`: \"a_b\" is not"),
            ("config_map = \"a..b\"\n", "`notifier.k8sbundle.config_map`"),
            ("config_map_key = \"\"\n", "`notifier.k8sbundle.config_map_key`"),
            ("config_map_key = \"a/b\"\n", "`notifier.k8sbundle.config_map_key`: \"a/b\" is not"),
            ("config_map_key = \"..\"\n", "`notifier.k8sbundle.config_map_key`"),
            ("configmap = \"x\"\n", "unknown field `configmap`"),
            ("namespace = 1\n", "invalid type"),
        ];
        for (body, want) in cases {
            let err = resolve_text(&format!("[notifier.k8sbundle]\n{body}")).unwrap_err();
            assert!(err.contains(want), "{body:?} -> {err}");
        }
        let err = resolve_text("[notifier.k8s_bundle]\n").unwrap_err();
        assert!(err.contains("k8s_bundle"), "{err}");
    }

    #[test]
    fn socket_shared_volume_must_be_absolute_and_above_the_socket_directory() {
        let sock = |p: &str| format!("socket_path = \"{p}\"\n");
        let cases: &[(String, Result<Option<&str>, &str>)] = &[
            (String::new(), Ok(None)),
            (
                sock("/run/sigil/admin/private/api.sock") + "socket_shared_volume = \"/run/sigil/admin\"\n",
                Ok(Some("/run/sigil/admin")),
            ),
            (
                sock("/run/sigil/admin/a/b/api.sock") + "socket_shared_volume = \"/run/sigil/admin\"\n",
                Ok(Some("/run/sigil/admin")),
            ),
            (
                sock("/run/sigil/admin/api.sock") + "socket_shared_volume = \"/run/sigil/admin\"\n",
                Err(
                    "`socket_shared_volume`: /run/sigil/admin must be a directory above the admin socket's own directory",
                ),
            ),
            (
                sock("/run/sigil/adminx/p/api.sock") + "socket_shared_volume = \"/run/sigil/admin\"\n",
                Err("must be a directory above"),
            ),
            (sock("/tmp/x/api.sock") + "socket_shared_volume = \"/run/sigil\"\n", Err("must be a directory above")),
            (sock("/run/a/api.sock") + "socket_shared_volume = \"run\"\n", Err("must be an absolute path")),
            (sock("/run/a/api.sock") + "socket_shared_volume = \"/\"\n", Err("other than /")),
        ];
        for (text, want) in cases {
            let got = resolve_text(text).map(|c| c.socket_shared_volume);
            match (got, want) {
                (Ok(v), Ok(w)) => assert_eq!(v, w.map(PathBuf::from), "{text}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{text} -> {e}"),
                (got, _) => panic!("{text} -> {got:?}"),
            }
        }
    }

    #[test]
    fn in_cluster_example_file_is_valid() {
        let file = FileConfig::parse(include_str!("../../examples/server-in-cluster.toml")).unwrap();
        let c = ServerConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.socket_shared_volume, Some(PathBuf::from("/run/sigil/admin")));
        assert_eq!(c.socket_path, PathBuf::from("/run/sigil/admin/private/api.sock"));
        assert_eq!(
            c.k8sbundle,
            Some(K8sBundleConfig {
                namespace: "sigil-system".into(),
                config_map: "sigil-bundle".into(),
                config_map_key: "bundle.crt".into(),
                kube_config_file: None,
            })
        );
    }

    #[test]
    fn k8s_psat_example_file_is_valid() {
        let file = FileConfig::parse(include_str!("../../examples/server-k8s-psat.toml")).unwrap();
        let c = ServerConfig::resolve(file, Overrides::default()).unwrap();
        let psat = c.k8s_psat.unwrap();
        assert_eq!(psat.clusters.keys().collect::<Vec<_>>(), ["demo", "other"]);
        assert_eq!(psat.clusters["demo"].kube_config_file, Some(PathBuf::from("/etc/sigil/demo.kubeconfig")));
        assert_eq!(psat.clusters["other"].kube_config_file, None);
    }
}
