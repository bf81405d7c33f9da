//! The `sigil-agent` command line: `run`, `healthcheck`, `api fetch x509|jwt`, `api validate jwt`,
//! `api watch`. Flags are SPIRE-style single-dash camelCase (`-socketPath`); `--socketPath` works too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sigil_proto::workload as pb;

use crate::client;
use crate::config::DEFAULT_SOCKET_PATH;

/// Flags that take no value (everything else single-dash takes the next argument).
const BOOL_FLAGS: &[&str] = &["help", "version", "insecureBootstrap", "shallow", "verbose", "silent"];

/// Rewrites SPIRE-style `-flag` into `--flag` (see [`sigil_core::cli`]).
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    sigil_core::cli::normalize_spire_flags(args, BOOL_FLAGS)
}

#[derive(Debug, Parser)]
#[command(name = "sigil-agent", version, about = "Sigil SPIFFE node agent", disable_help_subcommand = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the agent.
    Run(RunArgs),
    /// Checks that the agent answers on its Workload API socket (exit 0 when ready).
    Healthcheck(HealthArgs),
    /// Workload API client commands.
    #[command(subcommand)]
    Api(ApiCmd),
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Path to the agent config file (TOML; SPIRE-shaped keys). Flags override it.
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// The trust domain this agent belongs to, e.g. example.org.
    #[arg(long = "trustDomain")]
    pub trust_domain: Option<String>,
    /// DNS name or IP address of the server.
    #[arg(long = "serverAddress")]
    pub server_address: Option<String>,
    /// Port of the server's agent API.
    #[arg(long = "serverPort")]
    pub server_port: Option<u16>,
    /// A join token from `sigil-server token generate` (join_token node attestation).
    #[arg(long = "joinToken")]
    pub join_token: Option<String>,
    /// Directory for the agent's SVID and key (created 0700).
    #[arg(long = "dataDir")]
    pub data_dir: Option<PathBuf>,
    /// Path to bind the Workload API socket to.
    #[arg(long = "socketPath")]
    pub socket_path: Option<PathBuf>,
    /// PEM file with the server's CA certificates (to authenticate the server on first attestation).
    #[arg(long = "trustBundle")]
    pub trust_bundle: Option<PathBuf>,
    /// Trust the server without a bundle on first attestation (development only).
    #[arg(long = "insecureBootstrap")]
    pub insecure_bootstrap: bool,
    /// DEBUG, INFO, WARN or ERROR (any case).
    #[arg(long = "logLevel")]
    pub log_level: Option<String>,
    /// text or json.
    #[arg(long = "logFormat")]
    pub log_format: Option<String>,
    /// Port of the /live, /ready and /metrics listener (0 = any free port).
    #[arg(long = "healthPort")]
    pub health_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Args, Clone)]
pub struct ApiCommon {
    /// Path to the Workload API socket (default: SPIFFE_ENDPOINT_SOCKET if it is a unix:// address, else
    /// /tmp/sigil-agent/public/api.sock).
    #[arg(long = "socketPath")]
    pub socket_path: Option<PathBuf>,
    /// Output format.
    #[arg(long = "output", value_enum, default_value_t = Output::Pretty)]
    pub output: Output,
    /// How long to wait for an answer: a Go duration as SPIRE's flag takes it (`5s`, `1m30s`), or a bare
    /// number of seconds.
    #[arg(long = "timeout", default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// `-timeout`: SPIRE's Go duration, or whole seconds (what this CLI took before).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    sigil_core::duration::parse_go_duration(s).map_err(|e| format!("{e} (a Go duration such as 5s or 1m, or seconds)"))
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[arg(long = "socketPath", default_value = DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
    /// Print the reason on failure.
    #[arg(long = "verbose")]
    pub verbose: bool,
    /// Print nothing on success.
    #[arg(long = "shallow")]
    pub shallow: bool,
}

#[derive(Debug, Subcommand)]
pub enum ApiCmd {
    #[command(subcommand)]
    Fetch(FetchCmd),
    #[command(subcommand)]
    Validate(ValidateCmd),
    /// Streams X509-SVID updates and prints each one.
    Watch(ApiCommon),
}

#[derive(Debug, Subcommand)]
pub enum FetchCmd {
    /// Fetches X509-SVIDs and bundles.
    X509 {
        #[command(flatten)]
        common: ApiCommon,
        /// Write svid.N.pem, svid.N.key, bundle.N.pem and federated_bundle.N.M.pem into this directory.
        #[arg(long = "write")]
        write: Option<PathBuf>,
        /// Print nothing (useful with -write).
        #[arg(long = "silent")]
        silent: bool,
    },
    /// Fetches JWT-SVIDs and JWT bundles.
    Jwt {
        #[command(flatten)]
        common: ApiCommon,
        /// Audience (repeat or comma-separate for several).
        #[arg(long = "audience", required = true, value_delimiter = ',')]
        audience: Vec<String>,
        #[arg(long = "spiffeID")]
        spiffe_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ValidateCmd {
    /// Validates a JWT-SVID.
    Jwt {
        #[command(flatten)]
        common: ApiCommon,
        #[arg(long = "audience", required = true)]
        audience: String,
        #[arg(long = "svid", required = true)]
        svid: String,
    },
}

/// The socket path from a `SPIFFE_ENDPOINT_SOCKET` value (checklist E4): `unix:///abs/path` or
/// `unix:/abs/path`. TCP endpoints are not served by the agent.
pub fn socket_from_endpoint(value: &str) -> Result<PathBuf, String> {
    let path = value
        .strip_prefix("unix://")
        .or_else(|| value.strip_prefix("unix:"))
        .ok_or_else(|| format!("SPIFFE_ENDPOINT_SOCKET {value:?}: only unix:///absolute/path is supported here"))?;
    if !path.starts_with('/') {
        return Err(format!("SPIFFE_ENDPOINT_SOCKET {value:?}: the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

impl ApiCommon {
    /// `-socketPath`, else `SPIFFE_ENDPOINT_SOCKET`, else the default path.
    pub fn socket(&self) -> Result<PathBuf, CliError> {
        if let Some(p) = &self.socket_path {
            return Ok(p.clone());
        }
        match std::env::var("SPIFFE_ENDPOINT_SOCKET") {
            Ok(v) if !v.is_empty() => socket_from_endpoint(&v).map_err(CliError::Bad),
            _ => Ok(PathBuf::from(DEFAULT_SOCKET_PATH)),
        }
    }
}

/// Errors of the client commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Connect(#[from] client::ClientError),
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("timed out after {0:?} waiting for the agent")]
    Timeout(Duration),
    #[error("the agent closed the stream without an answer")]
    NoAnswer,
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("unusable answer: {0}")]
    Bad(String),
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

async fn with_timeout<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    let limit = limit.max(Duration::from_millis(100));
    tokio::time::timeout(limit, f).await.map_err(|_| CliError::Timeout(limit))?
}

/// Splits concatenated DER certificates.
pub fn split_der_certs(mut der: &[u8]) -> Result<Vec<Vec<u8>>, CliError> {
    let mut out = vec![];
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).map_err(|e| CliError::Bad(e.to_string()))?;
        let used = der.len() - rest.len();
        out.push(der.get(..used).unwrap_or_default().to_vec());
        der = rest;
    }
    Ok(out)
}

fn pem_certs(der: &[u8]) -> Result<String, CliError> {
    Ok(split_der_certs(der)?
        .into_iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c)))
        .collect::<Vec<_>>()
        .join(""))
}

fn fmt_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn cert_summary(der: &[u8]) -> Option<(String, i64, i64)> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = c.validity();
    Some((hex::encode(c.tbs_certificate.raw_serial()), v.not_before.timestamp(), v.not_after.timestamp()))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let werr = |source| CliError::Write { path: path.to_owned(), source };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    // An existing file keeps its mode on open; set it explicitly.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(werr)
}

/// Writes `svid.N.pem`, `svid.N.key` (0600), `bundle.N.pem` and `federated_bundle.N.M.pem`.
pub fn write_x509(dir: &Path, resp: &pb::X509svidResponse) -> Result<Vec<PathBuf>, CliError> {
    let mut written = vec![];
    std::fs::create_dir_all(dir).map_err(|source| CliError::Write { path: dir.to_owned(), source })?;
    let federated: Vec<&Vec<u8>> = {
        let mut keys: Vec<&String> = resp.federated_bundles.keys().collect();
        keys.sort();
        keys.into_iter().filter_map(|k| resp.federated_bundles.get(k)).collect()
    };
    for (n, s) in resp.svids.iter().enumerate() {
        let files = [
            (format!("svid.{n}.pem"), pem_certs(&s.x509_svid)?.into_bytes(), 0o644),
            (
                format!("svid.{n}.key"),
                pem::encode(&pem::Pem::new("PRIVATE KEY", s.x509_svid_key.clone())).into_bytes(),
                0o600,
            ),
            (format!("bundle.{n}.pem"), pem_certs(&s.bundle)?.into_bytes(), 0o644),
        ];
        for (name, data, mode) in files {
            let p = dir.join(name);
            write_file(&p, &data, mode)?;
            written.push(p);
        }
        for (m, b) in federated.iter().enumerate() {
            let p = dir.join(format!("federated_bundle.{n}.{m}.pem"));
            write_file(&p, pem_certs(b)?.as_bytes(), 0o644)?;
            written.push(p);
        }
    }
    Ok(written)
}

fn x509_json(resp: &pb::X509svidResponse) -> serde_json::Value {
    let svids: Vec<serde_json::Value> = resp
        .svids
        .iter()
        .map(|s| {
            let leaf = split_der_certs(&s.x509_svid).ok().and_then(|c| c.into_iter().next());
            let expires_at = leaf.as_deref().and_then(cert_summary).map(|c| c.2);
            serde_json::json!({
                "spiffe_id": s.spiffe_id,
                "hint": s.hint,
                "expires_at": expires_at,
                "x509_svid": STANDARD.encode(&s.x509_svid),
                "x509_svid_key": STANDARD.encode(&s.x509_svid_key),
                "bundle": STANDARD.encode(&s.bundle),
            })
        })
        .collect();
    let federated: serde_json::Map<String, serde_json::Value> =
        resp.federated_bundles.iter().map(|(k, v)| (k.clone(), STANDARD.encode(v).into())).collect();
    serde_json::json!({ "svids": svids, "federated_bundles": federated })
}

fn x509_pretty(resp: &pb::X509svidResponse, elapsed: Duration) -> String {
    let mut out = format!("Received {} svid after {:?}\n", resp.svids.len(), elapsed);
    for s in &resp.svids {
        let _ = writeln!(out, "\nSPIFFE ID:\t\t{}", s.spiffe_id);
        if !s.hint.is_empty() {
            let _ = writeln!(out, "Hint:\t\t\t{}", s.hint);
        }
        let chain = split_der_certs(&s.x509_svid).unwrap_or_default();
        if let Some((_, nb, na)) = chain.first().and_then(|c| cert_summary(c)) {
            let _ = writeln!(out, "SVID Valid After:\t{}\nSVID Valid Until:\t{}", fmt_time(nb), fmt_time(na));
        }
        for (i, c) in chain.iter().skip(1).enumerate() {
            if let Some((_, nb, na)) = cert_summary(c) {
                let _ = writeln!(
                    out,
                    "Intermediate #{} Valid After:\t{}\nIntermediate #{} Valid Until:\t{}",
                    i + 1,
                    fmt_time(nb),
                    i + 1,
                    fmt_time(na)
                );
            }
        }
        for (i, c) in split_der_certs(&s.bundle).unwrap_or_default().iter().enumerate() {
            if let Some((_, nb, na)) = cert_summary(c) {
                let _ = writeln!(
                    out,
                    "CA #{} Valid After:\t{}\nCA #{} Valid Until:\t{}",
                    i + 1,
                    fmt_time(nb),
                    i + 1,
                    fmt_time(na)
                );
            }
        }
    }
    let mut fed: Vec<&String> = resp.federated_bundles.keys().collect();
    fed.sort();
    for td in fed {
        let _ = writeln!(out, "\nFederated bundle:\t{td}");
    }
    out
}

/// `api fetch x509`.
pub async fn fetch_x509(common: &ApiCommon, write: Option<&Path>, silent: bool) -> Result<String, CliError> {
    let start = Instant::now();
    let resp = with_timeout(common.timeout, async {
        let mut c = client::connect(&common.socket()?).await?;
        let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await?.into_inner();
        stream.message().await?.ok_or(CliError::NoAnswer)
    })
    .await?;
    let elapsed = start.elapsed();
    let mut out = match (silent, common.output) {
        (true, _) => String::new(),
        (false, Output::Json) => format!("{}\n", x509_json(&resp)),
        (false, Output::Pretty) => x509_pretty(&resp, elapsed),
    };
    if let Some(dir) = write {
        let files = write_x509(dir, &resp)?;
        if !silent && common.output == Output::Pretty {
            let _ = writeln!(out);
            for f in files {
                let _ = writeln!(out, "Writing {}", f.display());
            }
        }
    }
    Ok(out)
}

/// `api fetch jwt`.
pub async fn fetch_jwt(common: &ApiCommon, audience: &[String], spiffe_id: Option<&str>) -> Result<String, CliError> {
    let (svids, bundles) = with_timeout(common.timeout, async {
        let mut c = client::connect(&common.socket()?).await?;
        let svids = c
            .fetch_jwtsvid(pb::JwtsvidRequest {
                audience: audience.to_vec(),
                spiffe_id: spiffe_id.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        let bundles = c.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await?.into_inner().message().await?;
        Ok((svids, bundles.unwrap_or_default()))
    })
    .await?;
    let mut bundle_keys: Vec<&String> = bundles.bundles.keys().collect();
    bundle_keys.sort();
    match common.output {
        Output::Json => {
            let b: serde_json::Map<String, serde_json::Value> = bundle_keys
                .iter()
                .map(|k| {
                    let v = bundles
                        .bundles
                        .get(*k)
                        .map(|b| serde_json::from_slice(b).unwrap_or_default())
                        .unwrap_or_default();
                    ((*k).clone(), v)
                })
                .collect();
            let s: Vec<serde_json::Value> = svids
                .svids
                .iter()
                .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
                .collect();
            Ok(format!("{}\n", serde_json::json!({"svids": s, "bundles": b})))
        }
        Output::Pretty => {
            let mut out = String::new();
            for s in &svids.svids {
                let _ = writeln!(out, "token({}):\n\t{}", s.spiffe_id, s.svid);
            }
            for k in bundle_keys {
                let text = bundles.bundles.get(k).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                let _ = writeln!(out, "bundle({k}):\n\t{text}");
            }
            Ok(out)
        }
    }
}

/// `api validate jwt`.
pub async fn validate_jwt(common: &ApiCommon, audience: &str, svid: &str) -> Result<String, CliError> {
    let resp = with_timeout(common.timeout, async {
        let mut c = client::connect(&common.socket()?).await?;
        Ok(c.validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: audience.to_owned(), svid: svid.to_owned() })
            .await?
            .into_inner())
    })
    .await?;
    let claims = resp.claims.as_ref().map(struct_to_json).unwrap_or_default();
    Ok(match common.output {
        Output::Json => format!("{}\n", serde_json::json!({"spiffe_id": resp.spiffe_id, "claims": claims})),
        Output::Pretty => format!("SVID is valid.\nSPIFFE ID : {}\nClaims    : {}\n", resp.spiffe_id, claims),
    })
}

fn prost_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map(serde_json::Value::Number).unwrap_or_default()
            }
        }
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(prost_to_json).collect::<Vec<_>>().into(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), prost_to_json(v))).collect())
}

/// `api watch`: prints every update until the stream ends; marks rotations.
pub async fn watch(common: &ApiCommon, mut print: impl FnMut(&str)) -> Result<(), CliError> {
    let mut c = client::connect(&common.socket()?).await?;
    let mut stream = c.fetch_x509svid(pb::X509svidRequest {}).await?.into_inner();
    let mut last: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let start = Instant::now();
    while let Some(resp) = stream.message().await? {
        let mut lines = vec![];
        let mut json_svids = vec![];
        for s in &resp.svids {
            let leaf = split_der_certs(&s.x509_svid)?.into_iter().next().unwrap_or_default();
            let (serial, _, not_after) = cert_summary(&leaf).unwrap_or_default();
            let event = match last.insert(s.spiffe_id.clone(), serial.clone()) {
                None => "new",
                Some(old) if old != serial => "rotated",
                Some(_) => "unchanged",
            };
            lines.push(format!("  {}  expires {}  serial {}  [{}]", s.spiffe_id, fmt_time(not_after), serial, event));
            json_svids.push(serde_json::json!({"spiffe_id": s.spiffe_id, "expires_at": not_after, "serial": serial, "event": event}));
        }
        let current: std::collections::HashSet<&String> = resp.svids.iter().map(|s| &s.spiffe_id).collect();
        last.retain(|k, _| current.contains(k));
        match common.output {
            Output::Json => print(&format!("{}\n", serde_json::json!({"svids": json_svids}))),
            Output::Pretty => print(&format!(
                "Received {} svid(s) after {:?}\n{}\n",
                resp.svids.len(),
                start.elapsed(),
                lines.join("\n")
            )),
        }
    }
    Ok(())
}

/// `healthcheck`: Ok when the agent answers; an agent with no identity for the caller still counts as
/// healthy (it answered PermissionDenied), `Unavailable` (not synced) does not.
pub async fn healthcheck(socket: &Path) -> Result<(), CliError> {
    with_timeout(Duration::from_secs(5), async {
        let mut c = client::connect(socket).await?;
        match c.fetch_x509_bundles(pb::X509BundlesRequest {}).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(()),
            Err(s) => Err(CliError::Rpc(s)),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: &[&str]) -> Vec<String> {
        normalize_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn timeout_takes_spire_durations_and_seconds() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("5s", Some(Duration::from_secs(5))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("250ms", Some(Duration::from_millis(250))),
            ("10", Some(Duration::from_secs(10))),
            ("-1s", None),
            ("ten", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_timeout(input).ok(), *want, "{input:?}");
        }
        let cli = Cli::try_parse_from(n(&["sigil-agent", "api", "fetch", "x509", "-timeout", "10s"])).unwrap();
        let Command::Api(ApiCmd::Fetch(FetchCmd::X509 { common, .. })) = cli.command else { panic!("{cli:?}") };
        assert_eq!(common.timeout, Duration::from_secs(10));
    }

    #[test]
    fn normalize_table() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["a", "run", "-joinToken", "-abc"], &["a", "run", "--joinToken", "-abc"]),
            (
                &["a", "run", "-insecureBootstrap", "-dataDir", "d"],
                &["a", "run", "--insecureBootstrap", "--dataDir", "d"],
            ),
            (&["a", "api", "fetch", "x509", "-write=/tmp"], &["a", "api", "fetch", "x509", "--write=/tmp"]),
            (&["a", "api", "--socketPath", "-x"], &["a", "api", "--socketPath", "-x"]),
            (&["a", "-h"], &["a", "-h"]),
            (&["a", "run", "-serverPort", "-1"], &["a", "run", "--serverPort", "-1"]),
        ];
        for (input, want) in cases {
            assert_eq!(n(input), want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{input:?}");
        }
    }

    #[test]
    fn parses_spire_style_commands() {
        let cli = Cli::try_parse_from(n(&[
            "sigil-agent",
            "api",
            "fetch",
            "jwt",
            "-audience",
            "a,b",
            "-spiffeID",
            "spiffe://td/x",
            "-output",
            "json",
        ]))
        .unwrap();
        let Command::Api(ApiCmd::Fetch(FetchCmd::Jwt { common, audience, spiffe_id })) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(audience, vec!["a", "b"]);
        assert_eq!(spiffe_id.as_deref(), Some("spiffe://td/x"));
        assert_eq!(common.output, Output::Json);
        assert_eq!(common.socket_path, None);
        let cli = Cli::try_parse_from(n(&[
            "sigil-agent",
            "run",
            "-joinToken",
            "t",
            "-insecureBootstrap",
            "-serverPort",
            "9",
        ]))
        .unwrap();
        let Command::Run(r) = cli.command else { panic!("wrong command") };
        assert_eq!((r.join_token.as_deref(), r.insecure_bootstrap, r.server_port), (Some("t"), true, Some(9)));
        assert!(Cli::try_parse_from(n(&["sigil-agent", "api", "fetch", "jwt"])).is_err(), "audience required");
        assert!(Cli::try_parse_from(n(&["sigil-agent", "api", "validate", "jwt", "-audience", "a"])).is_err());
    }

    #[test]
    fn write_x509_files_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let ca = crate::testing::TestCa::new("example.org").unwrap();
        let partner = crate::testing::TestCa::new("partner.org").unwrap();
        let id = sigil_core::SpiffeId::new("spiffe://example.org/web").unwrap();
        let (chain, key) = ca.issue(&id, 600).unwrap();
        let svid = pb::X509svid {
            spiffe_id: id.to_string(),
            x509_svid: chain.concat().into(),
            x509_svid_key: key.into(),
            bundle: ca.bundle().x509_authorities_der_concat().into(),
            hint: String::new(),
        };
        let resp = pb::X509svidResponse {
            svids: vec![svid.clone(), svid],
            crl: vec![],
            federated_bundles: [("spiffe://partner.org".to_owned(), partner.bundle().x509_authorities_der_concat())]
                .into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let files = write_x509(dir.path(), &resp).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            vec![
                "svid.0.pem",
                "svid.0.key",
                "bundle.0.pem",
                "federated_bundle.0.0.pem",
                "svid.1.pem",
                "svid.1.key",
                "bundle.1.pem",
                "federated_bundle.1.0.pem",
            ]
        );
        let mode = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("svid.0.key"), 0o600);
        assert_eq!(mode("svid.0.pem"), 0o644);
        let pem_text = std::fs::read_to_string(dir.path().join("svid.0.pem")).unwrap();
        let parsed = pem::parse_many(&pem_text).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].contents(), chain[0].as_slice());
        let key_text = std::fs::read_to_string(dir.path().join("svid.0.key")).unwrap();
        assert!(key_text.starts_with("-----BEGIN PRIVATE KEY-----"));
        let pretty = x509_pretty(&resp, Duration::from_millis(3));
        assert!(pretty.contains("SPIFFE ID:\t\tspiffe://example.org/web"), "{pretty}");
        assert!(pretty.contains("CA #1 Valid Until:"), "{pretty}");
    }

    #[test]
    fn endpoint_socket_table() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("unix:///run/spire/api.sock", Ok("/run/spire/api.sock")),
            ("unix:/tmp/a.sock", Ok("/tmp/a.sock")),
            ("unix://relative.sock", Err(())),
            ("tcp://127.0.0.1:8000", Err(())),
            ("/tmp/a.sock", Err(())),
        ];
        for (input, want) in cases {
            let got = socket_from_endpoint(input);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, &PathBuf::from(w), "{input}"),
                (Err(()), Err(_)) => {}
                _ => panic!("{input}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn split_der_rejects_garbage() {
        assert!(split_der_certs(b"nope").is_err());
        assert_eq!(split_der_certs(b"").unwrap().len(), 0);
    }
}
