//! `sigil-server`: the binary. Parses flags (SPIRE-style single dash accepted), then either runs the server
//! or performs one admin command over the admin socket. Any failure: one line on stderr, exit code 1.

use std::process::ExitCode;

use clap::Parser;
use sigil_server::cli::args::{Cli, Command, RunArgs, normalize_args};
use sigil_server::config::{FileConfig, Overrides, ServerConfig};

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        trust_domain: args.trust_domain,
        data_dir: args.data_dir,
        bind_address: args.bind_address,
        server_port: args.server_port,
        socket_path: args.socket_path,
        log_level: args.log_level,
        log_format: args.log_format,
        health_port: args.health_port,
    };
    let config = ServerConfig::resolve(file, overrides)?;
    sigil_telemetry::init_logging(&config.log_level, config.log_format, &[]);
    let server = sigil_server::run::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Clap names flags `--flag` (the arguments were rewritten to that form); users type SPIRE's `-flag`, so
/// errors say `-flag`, as SPIRE's do.
fn single_dash_flags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("--") {
        let before_ok = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '-');
        let after_ok = rest[i + 2..].starts_with(|c: char| c.is_ascii_alphabetic());
        out.push_str(&rest[..i]);
        out.push_str(if before_ok && after_ok { "-" } else { "--" });
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args())) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line: clap's first line ("error: ...") without the usage block.
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{}", single_dash_flags(line));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            other => {
                let mut stdout = std::io::stdout();
                sigil_server::cli::run_admin(other, &mut stdout).await.map_err(anyhow::Error::from)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
