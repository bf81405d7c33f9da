//! SPIRE-style flags: `-parentID x` and `-parentID=x` mean `--parentID x`. Clap only knows `--long`, so
//! single-dash multi-letter flags are rewritten before parsing. Values are never rewritten: an argument that
//! follows a flag needing a value is passed through even when it starts with '-'.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Flags that take no value (so the next argument is not theirs).
const BOOL_FLAGS: &[&str] =
    &["admin", "downstream", "node", "help", "version", "shallow", "verbose", "once", "insecureBootstrap"];

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
    /// X509-SVIDs.
    #[command(subcommand)]
    X509(X509Cmd),
    /// JWT-SVIDs.
    #[command(subcommand)]
    Jwt(JwtCmd),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    #[arg(long = "trustDomain")]
    pub trust_domain: Option<String>,
    #[arg(long = "dataDir")]
    pub data_dir: Option<PathBuf>,
    #[arg(long = "bindAddress")]
    pub bind_address: Option<String>,
    #[arg(long = "serverPort")]
    pub server_port: Option<u16>,
    #[arg(long = "socketPath")]
    pub socket_path: Option<PathBuf>,
    #[arg(long = "logLevel")]
    pub log_level: Option<String>,
    #[arg(long = "logFormat")]
    pub log_format: Option<String>,
    /// Port of the /live, /ready and /metrics listener.
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
        #[command(flatten)]
        fields: EntryFields,
        #[arg(long = "output", value_enum, default_value = "pretty")]
        output: Output,
    },
    Update {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "entryID")]
        entry_id: String,
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
        #[arg(long = "format", value_enum, default_value = "pem")]
        format: BundleFormat,
    },
    /// Lists federated bundles.
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long = "id")]
        id: Option<String>,
        #[arg(long = "format", value_enum, default_value = "pem")]
        format: BundleFormat,
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
    fn unknown_flag_is_an_error() {
        assert!(Cli::try_parse_from(norm(&["sigil-server", "entry", "create", "-bogus", "x"])).is_err());
    }
}
