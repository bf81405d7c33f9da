//! `spiffe-demo svid-exchange --name a|b` and `spiffe-demo serve --listen ADDR [--mtls-listen ADDR]
//! [--peer https://host:port --peer-id spiffe://...]`. See the crate README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use spiffe::SpiffeId;
use spiffe_demo::exchange::{self, ExchangeOptions};
use spiffe_demo::serve::{self, ServeOptions, mtls::PeerUrl};

#[derive(Debug, Parser)]
#[command(name = "spiffe-demo", version, about = "SPIFFE flows shown with the spiffe crate and rustls")]
struct Cli {
    /// The Workload API endpoint (unix:///path or unix:/path).
    #[arg(long, global = true, env = spiffe_demo::ENDPOINT_ENV)]
    endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch this service's X509-SVID, publish its certificate, validate the peer's.
    SvidExchange {
        /// This service: a (service-a) or b (service-b).
        #[arg(long, value_parser = ["a", "b"])]
        name: String,
        /// The directory both services share.
        #[arg(long, default_value = "/tmp")]
        dir: PathBuf,
        /// Seconds to wait for the SVID, and then for the peer's certificate.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// The HTTP service showing each SPIFFE flow.
    Serve {
        /// The plain HTTP listener, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: SocketAddr,
        /// The mTLS listener the peer calls (same binary), e.g. 0.0.0.0:8443.
        #[arg(long = "mtls-listen")]
        mtls_listen: Option<SocketAddr>,
        /// The peer's mTLS listener, https://host:port.
        #[arg(long)]
        peer: Option<PeerUrl>,
        /// The SPIFFE ID the peer must present (mTLS authorization; also the JWT audience).
        #[arg(long = "peer-id")]
        peer_id: Option<String>,
    },
}

fn endpoint(e: Option<String>) -> anyhow::Result<String> {
    e.filter(|s| !s.is_empty())
        .with_context(|| format!("no Workload API endpoint: set {} or --endpoint", spiffe_demo::ENDPOINT_ENV))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::SvidExchange { name, dir, timeout } => {
            let tag = format!("[{name}]");
            let o = match endpoint(cli.endpoint) {
                Ok(endpoint) => ExchangeOptions { name, dir, endpoint, timeout: Duration::from_secs(timeout) },
                Err(e) => {
                    eprintln!("{tag} {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut out = std::io::stdout();
            match exchange::run(&o, &mut out).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{tag} {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { listen, mtls_listen, peer, peer_id } => {
            match serve_main(cli.endpoint, listen, mtls_listen, peer, peer_id).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("spiffe-demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve_main(
    endpoint_flag: Option<String>,
    listen: SocketAddr,
    mtls_listen: Option<SocketAddr>,
    peer: Option<PeerUrl>,
    peer_id: Option<String>,
) -> anyhow::Result<()> {
    let peer_id = peer_id.map(|p| SpiffeId::new(&p).with_context(|| format!("--peer-id {p:?}"))).transpose()?;
    let o = ServeOptions { endpoint: endpoint(endpoint_flag)?, listen, mtls_listen, peer, peer_id };
    serve::run(o).await?;
    Ok(())
}
