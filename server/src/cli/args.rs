//! SPIRE-style flags: `-parentID x` and `-parentID=x` mean `--parentID x`. Clap only knows `--long`, so
//! single-dash multi-letter flags are rewritten before parsing. Values are never rewritten: an argument that
//! follows a flag needing a value is passed through even when it starts with '-'.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Flags that take no value (so the next argument is not theirs).
const BOOL_FLAGS: &[&str] =
    &["admin", "downstream", "storeSVID", "node", "help", "version", "shallow", "verbose", "once", "insecureBootstrap"];

/// Rewrites SPIRE-style `-flag` into `--flag` (see [`sigil_core::cli`]).
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    sigil_core::cli::normalize_spire_flags(args, BOOL_FLAGS)
}

#[derive(Debug, Parser)]
#[command(name = "sigil-server", version, about = "Sigil SPIFFE server", disable_help_subcommand = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct SocketArg {
    /// Path to the server's admin socket.
    #[arg(long = "socketPath", default_value = crate::config::DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the server.
    Run(RunArgs),
    /// Checks that the server answers on its admin socket.
    Healthcheck {
        #[command(flatten)]
        socket: SocketArg,
        /// Accepted for SPIRE compatibility; the check is always the same.
        #[arg(long)]
        shallow: bool,
        #[arg(long)]
        verbose: bool,
    },
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Registration entries.
    #[command(subcommand)]
    Entry(EntryCmd),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Attested agents.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Federation relationships with foreign trust domains.
    #[command(subcommand)]
    Federation(FederationCmd),
    /// X509-SVIDs.
    #[command(subcommand)]
    X509(X509Cmd),
    /// JWT-SVIDs.
    #[command(subcommand)]
    Jwt(JwtCmd),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Path to the server config file (TOML; SPIRE-shaped keys). Flags override it.
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// The trust domain this server belongs to, e.g. example.org.
    #[arg(long = "trustDomain")]
    pub trust_domain: Option<String>,
    /// Directory for the datastore and CA keys (created 0700).
    #[arg(long = "dataDir")]
    pub data_dir: Option<PathBuf>,
    /// IP address the agent API listens on.
    #[arg(long = "bindAddress")]
    pub bind_address: Option<String>,
    /// Port of the agent API (agents connect here).
    #[arg(long = "serverPort")]
    pub server_port: Option<u16>,
    /// Path to bind the admin API socket to.
    #[arg(long = "socketPath")]
    pub socket_path: Option<PathBuf>,
    /// DEBUG, INFO, WARN or ERROR (any case).
    #[arg(long = "logLevel")]
    pub log_level: Option<String>,
    /// text or json.
    #[arg(long = "logFormat")]
    pub log_format: Option<String>,
    /// Port of the /live, /ready and /metrics listener (0 = any free port, logged at start).
    #[arg(long = "healthPort")]
    pub health_port: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Generates a one-time join token.
    Generate {
        #[command(flatten)]
        socket: SocketArg,
        /// Also create an entry with this SPIFFE ID, parented to the agent that uses the token.
        #[arg(long = "spiffeID")]
        spiffe_id: Option<String>,
        /// Token lifetime in seconds.
        #[arg(long = "ttl", default_value_t = 600)]
        ttl: i32,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct EntryFields {
    #[arg(long = "parentID")]
    pub parent_id: Option<String>,
    #[arg(long = "spiffeID")]
    pub spiffe_id: Option<String>,
    /// type:value, repeatable.
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    #[arg(long = "x509SVIDTTL")]
    pub x509_svid_ttl: Option<i32>,
    /// SPIRE's older name of -x509SVIDTTL (accepted by SPIRE for years and still in its tutorials):
    /// the same value, with a deprecation note on stderr. Not combined with -x509SVIDTTL.
    #[arg(long = "ttl", hide = true)]
    pub ttl: Option<i32>,
    #[arg(long = "jwtSVIDTTL")]
    pub jwt_svid_ttl: Option<i32>,
    /// DNS SAN, repeatable.
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Trust domain, repeatable.
    #[arg(long = "federatesWith")]
    pub federates_with: Vec<String>,
    #[arg(long)]
    pub admin: bool,
    #[arg(long)]
    pub downstream: bool,
    /// SPIRE's flag: the entry's SVIDs are to be stored by an SVIDStore plugin. Stored on the entry; Sigil
    /// has no SVID stores, so it has no other effect.
    #[arg(long = "storeSVID")]
    pub store_svid: bool,
    /// A node entry: its parent is the server, its selectors describe nodes.
    #[arg(long)]
    pub node: bool,
    #[arg(long)]
    pub hint: Option<String>,
    /// Unix seconds after which the entry no longer applies.
    #[arg(long = "entryExpiry")]
    pub entry_expiry: Option<i64>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct EntryFilterArgs {
    #[arg(long = "entryID")]
    pub entry_id: Option<String>,
    #[arg(long = "spiffeID")]
    pub spiffe_id: Option<String>,
    #[arg(long = "parentID")]
    pub parent_id: Option<String>,
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// exact, subset, superset or any.
    #[arg(long = "matchSelectorsOn", default_value = "superset")]
    pub match_selectors_on: String,
    #[arg(long)]
    pub hint: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EntryCmd {
    Create {
        #[command(flatten)]
        socket: SocketArg,
        /// Entry ID to use instead of a generated one: at most 255 of A-Z a-z 0-9 - . _ (SPIRE's rule).
        #[arg(long = "entryID")]
        entry_id: Option<String>,
        /// SPIRE's registration JSON file ({"entries":[...]}), '-' for standard input; all its entries go
        /// in one batch. Not combined with the single-entry flags.
        #[arg(long = "data")]
        data: Option<String>,
        #[command(flatten)]
        fields: EntryFields,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    Update {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "entryID")]
        entry_id: Option<String>,
        /// As for create; each entry names its entry_id.
        #[arg(long = "data")]
        data: Option<String>,
        #[command(flatten)]
        fields: EntryFields,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    Show {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        filter: EntryFilterArgs,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    Delete {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "entryID")]
        entry_id: String,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    Count {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        filter: EntryFilterArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BundleFormat {
    Pem,
    Spiffe,
}

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Prints the server's own bundle.
    Show {
        #[command(flatten)]
        socket: SocketArg,
        /// pem or spiffe (pretty output only, as in SPIRE).
        #[arg(long = "format", value_enum, default_value = "pem")]
        format: BundleFormat,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    /// Counts the bundles: the server's own and the federated ones ("N bundles", as SPIRE prints it).
    Count {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Lists federated bundles.
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "id")]
        id: Option<String>,
        /// pem or spiffe (pretty output only, as in SPIRE).
        #[arg(long = "format", value_enum, default_value = "pem")]
        format: BundleFormat,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    /// Creates or replaces a federated bundle, read from -path or standard input.
    Set {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "id")]
        id: String,
        #[arg(long = "path")]
        path: Option<PathBuf>,
        #[arg(long = "format", value_enum, default_value = "pem")]
        format: BundleFormat,
    },
    /// Deletes a federated bundle.
    Delete {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "id")]
        id: String,
        /// What happens to the entries that federate with it: restrict (refuse while any does), dissociate
        /// (remove the trust domain from them) or delete (delete them).
        #[arg(long = "mode", value_enum, default_value = "restrict")]
        mode: BundleDeleteModeArg,
    },
}

/// `bundle delete -mode`, as SPIRE spells it.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BundleDeleteModeArg {
    Restrict,
    Dissociate,
    Delete,
}

/// The fields of a federation relationship, with SPIRE's flag names.
#[derive(Debug, Args, Clone)]
pub struct FederationFields {
    /// Name of the trust domain to federate with (e.g. partner.example).
    #[arg(long = "trustDomain")]
    pub trust_domain: Option<String>,
    /// URL of the SPIFFE bundle endpoint that serves the foreign bundle (https).
    #[arg(long = "bundleEndpointURL")]
    pub bundle_endpoint_url: Option<String>,
    /// https_web or https_spiffe.
    #[arg(long = "bundleEndpointProfile")]
    pub bundle_endpoint_profile: Option<String>,
    /// SPIFFE ID of the bundle endpoint server (https_spiffe only).
    #[arg(long = "endpointSpiffeID")]
    pub endpoint_spiffe_id: Option<String>,
    /// Path to the foreign trust domain's bundle (optional); stored as its federated bundle.
    #[arg(long = "trustDomainBundlePath")]
    pub trust_domain_bundle_path: Option<PathBuf>,
    /// Format of the bundle at -trustDomainBundlePath.
    #[arg(long = "trustDomainBundleFormat", value_enum, default_value = "pem")]
    pub trust_domain_bundle_format: BundleFormat,
}

#[derive(Debug, Subcommand)]
pub enum FederationCmd {
    /// Creates a federation relationship with a foreign trust domain.
    Create {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        fields: FederationFields,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    /// Replaces the bundle endpoint URL and profile of a relationship (and its bundle, when given).
    Update {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        fields: FederationFields,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    /// Lists federation relationships.
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    /// Shows one federation relationship.
    Show {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "trustDomain")]
        trust_domain: String,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    /// Deletes a federation relationship (the foreign bundle stays).
    Delete {
        #[command(flatten)]
        socket: SocketArg,
        /// Trust domain of the relationship.
        #[arg(long = "id")]
        id: String,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    /// Fetches the trust domain's bundle from its bundle endpoint now.
    Refresh {
        #[command(flatten)]
        socket: SocketArg,
        /// Trust domain of the relationship.
        #[arg(long = "id")]
        id: String,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    Show {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "spiffeID")]
        spiffe_id: String,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    Evict {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "spiffeID")]
        spiffe_id: String,
    },
    Ban {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "spiffeID")]
        spiffe_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum X509Cmd {
    /// Mints an X509-SVID (key generated locally; only a CSR goes to the server).
    Mint {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "spiffeID")]
        spiffe_id: String,
        /// Seconds; 0 = server default.
        #[arg(long = "ttl", default_value_t = 0)]
        ttl: i32,
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Write svid.pem, key.pem (0600) and bundle.pem into this directory instead of printing.
        #[arg(long = "write")]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JwtCmd {
    /// Mints a JWT-SVID.
    Mint {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "spiffeID")]
        spiffe_id: String,
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        #[arg(long = "ttl", default_value_t = 0)]
        ttl: i32,
        #[arg(long = "write")]
        write: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn spire_style_entry_create_parses() {
        let cli = Cli::try_parse_from(norm(&[
            "sigil-server",
            "entry",
            "create",
            "-parentID",
            "spiffe://td/agent",
            "-spiffeID",
            "spiffe://td/web",
            "-selector",
            "unix:uid:1000",
            "-selector",
            "unix:gid:1000",
            "-x509SVIDTTL",
            "60",
            "-admin",
        ]))
        .unwrap();
        let Command::Entry(EntryCmd::Create { fields, .. }) = cli.command else { panic!("wrong command") };
        assert_eq!(fields.parent_id.as_deref(), Some("spiffe://td/agent"));
        assert_eq!(fields.selectors, vec!["unix:uid:1000", "unix:gid:1000"]);
        assert_eq!(fields.x509_svid_ttl, Some(60));
        assert!(fields.admin);
    }

    #[test]
    fn spire_tutorial_ttl_flag_parses() {
        let cli = Cli::try_parse_from(norm(&[
            "sigil-server",
            "entry",
            "create",
            "-parentID",
            "spiffe://td/agent",
            "-spiffeID",
            "spiffe://td/web",
            "-selector",
            "unix:uid:1000",
            "-ttl",
            "3600",
        ]))
        .unwrap();
        let Command::Entry(EntryCmd::Create { fields, .. }) = cli.command else { panic!("wrong command") };
        assert_eq!((fields.ttl, fields.x509_svid_ttl), (Some(3600), None));
    }

    #[test]
    fn spire_style_federation_create_parses() {
        let cli = Cli::try_parse_from(norm(&[
            "sigil-server",
            "federation",
            "create",
            "-trustDomain",
            "partner.test",
            "-bundleEndpointURL",
            "https://partner.test:8443",
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://partner.test/spire/server",
            "-trustDomainBundlePath",
            "/tmp/b.json",
            "-trustDomainBundleFormat",
            "spiffe",
        ]))
        .unwrap();
        let Command::Federation(FederationCmd::Create { fields, output, .. }) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(fields.trust_domain.as_deref(), Some("partner.test"));
        assert_eq!(fields.bundle_endpoint_url.as_deref(), Some("https://partner.test:8443"));
        assert_eq!(fields.bundle_endpoint_profile.as_deref(), Some("https_spiffe"));
        assert_eq!(fields.endpoint_spiffe_id.as_deref(), Some("spiffe://partner.test/spire/server"));
        assert_eq!(fields.trust_domain_bundle_path, Some(PathBuf::from("/tmp/b.json")));
        assert_eq!(fields.trust_domain_bundle_format, BundleFormat::Spiffe);
        assert_eq!(output, Output::Pretty);
    }

    #[test]
    fn entry_create_takes_entry_id() {
        let cli = Cli::try_parse_from(norm(&[
            "sigil-server",
            "entry",
            "create",
            "-entryID",
            "my-entry.1",
            "-parentID",
            "spiffe://td/agent",
            "-spiffeID",
            "spiffe://td/web",
            "-selector",
            "unix:uid:1000",
        ]))
        .unwrap();
        let Command::Entry(EntryCmd::Create { entry_id, .. }) = cli.command else { panic!("wrong command") };
        assert_eq!(entry_id.as_deref(), Some("my-entry.1"));
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(Cli::try_parse_from(norm(&["sigil-server", "entry", "create", "-bogus", "x"])).is_err());
    }
}
