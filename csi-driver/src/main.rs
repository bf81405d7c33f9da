//! `sigil-csi-driver`: see `sigil_csi_driver::cli`.

use std::process::ExitCode;

use clap::Parser;
use sigil_csi_driver::cli::{BOOL_FLAGS, Cli};

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
    sigil_telemetry::init_logging(&cli.log_level, cli.log_format, &[]);
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
