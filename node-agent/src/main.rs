//! `sigil-agent`: see `sigil_agent::cli`.

use std::process::ExitCode;

use clap::Parser;
use sigil_agent::cli::{self, ApiCmd, Cli, Command, FetchCmd, RunArgs, ValidateCmd};
use sigil_agent::config::{AgentConfig, FileConfig, Overrides};

async fn run(args: RunArgs) -> anyhow::Result<()> {
    sigil_agent::trim::map_large_allocations();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        trust_domain: args.trust_domain,
        server_address: args.server_address,
        server_port: args.server_port,
        join_token: args.join_token,
        data_dir: args.data_dir,
        socket_path: args.socket_path,
        trust_bundle: args.trust_bundle,
        insecure_bootstrap: args.insecure_bootstrap,
        log_level: args.log_level,
        log_format: args.log_format,
        health_port: args.health_port,
    };
    let config = AgentConfig::resolve(file, overrides)?;
    sigil_telemetry::init_logging(&config.log_level, config.log_format, &[]);
    let mut agent = sigil_agent::run::start(config).await?;
    if let Some(addr) = agent.health_addr {
        tracing::info!(%addr, "health endpoints /live /ready /metrics");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = agent.wait() => {
            // The agent loop ended on its own (evicted, token refused): clean up, then report.
            let _ = agent.shutdown().await;
            r?;
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            agent.shutdown().await?;
            Ok(())
        }
        _ = term.recv() => {
            tracing::info!("terminated; stopping");
            agent.shutdown().await?;
            Ok(())
        }
    }
}

fn print(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Healthcheck(h) => match cli::healthcheck(&h.socket_path).await {
            Ok(()) => {
                if !h.shallow {
                    print("Agent is healthy.\n");
                }
                Ok(())
            }
            Err(e) => {
                if h.verbose {
                    eprintln!("{e}");
                }
                anyhow::bail!("Agent is unhealthy: {e}")
            }
        },
        Command::Api(ApiCmd::Fetch(FetchCmd::X509 { common, write, silent })) => {
            print(&cli::fetch_x509(&common, write.as_deref(), silent).await?);
            Ok(())
        }
        Command::Api(ApiCmd::Fetch(FetchCmd::Jwt { common, audience, spiffe_id })) => {
            print(&cli::fetch_jwt(&common, &audience, spiffe_id.as_deref()).await?);
            Ok(())
        }
        Command::Api(ApiCmd::Validate(ValidateCmd::Jwt { common, audience, svid })) => {
            print(&cli::validate_jwt(&common, &audience, &svid).await?);
            Ok(())
        }
        Command::Api(ApiCmd::Watch(common)) => {
            cli::watch(&common, print).await?;
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(cli::normalize_args(std::env::args())) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
