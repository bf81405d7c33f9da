//! `sigil-csi-driver`: see `sigil_csi_driver::cli`.

use std::process::ExitCode;

use clap::Parser;
use sigil_csi_driver::cli::{BOOL_FLAGS, Cli, LogFormat};

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn")));
    // Colours only on a terminal: in a container, `kubectl logs` would show raw escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(sigil_core::cli::normalize_spire_flags(std::env::args(), BOOL_FLAGS)) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_logging(&cli.log_level, cli.log_format);
    let cfg = match cli.run_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sigil-csi-driver: {e}");
            return ExitCode::from(2);
        }
    };
    match sigil_csi_driver::run(cfg, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sigil-csi-driver failed");
            ExitCode::FAILURE
        }
    }
}
