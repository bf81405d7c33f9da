//! `sigil-operator`: reconciles ClusterSPIFFEID, ClusterFederatedTrustDomain and ClusterStaticEntry objects
//! into entries and federation relationships on the Sigil server's admin socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use sigil_operator::config::{FileConfig, OperatorConfig, Overrides};
use sigil_operator::controller::{Controller, Signals, start_watches};
use sigil_operator::metrics::{Health, Metrics, labels};
use sigil_operator::server_client::AdminClient;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Parser)]
#[command(name = "sigil-operator", version, about = "Turns Sigil's CRDs into registration entries")]
struct Cli {
    /// Config file (spire-controller-manager's ControllerManagerConfig YAML keys).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "trustDomain")]
    trust_domain: Option<String>,
    #[arg(long = "clusterName")]
    cluster_name: Option<String>,
    #[arg(long = "clusterDomain")]
    cluster_domain: Option<String>,
    /// The server's admin socket.
    #[arg(long = "serverSocketPath", alias = "spireServerSocketPath")]
    server_socket_path: Option<PathBuf>,
    #[arg(long = "leaderElect")]
    leader_elect: Option<bool>,
    #[arg(long = "leaderElectionNamespace")]
    leader_election_namespace: Option<String>,
    /// host:port, ":port", or "0" to disable.
    #[arg(long = "metricsBindAddress")]
    metrics_bind_address: Option<String>,
    #[arg(long = "healthProbeBindAddress")]
    health_probe_bind_address: Option<String>,
    #[arg(long = "logLevel")]
    log_level: Option<String>,
    #[arg(long = "logFormat")]
    log_format: Option<String>,
}

/// A kube client whose requests are counted by method (`watch` for watch requests).
async fn kube_client(metrics: &Metrics) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.context("kubernetes client configuration")?;
    let counter = metrics.kube_requests.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let watch = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let method = if watch { "WATCH" } else { req.method().as_str() };
        counter.get_or_create(&labels(&[("method", method)])).inc();
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config).context("kubernetes client")?.with_layer(&layer).build())
}

fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "sigil-operator".into());
    format!("{host}_{}", std::process::id())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        trust_domain: cli.trust_domain,
        cluster_name: cli.cluster_name,
        cluster_domain: cli.cluster_domain,
        server_socket_path: cli.server_socket_path,
        leader_elect: cli.leader_elect,
        leader_election_namespace: cli.leader_election_namespace,
        metrics_bind_address: cli.metrics_bind_address,
        health_probe_bind_address: cli.health_probe_bind_address,
        log_level: cli.log_level,
        log_format: cli.log_format,
    };
    let resolv = std::fs::read_to_string("/etc/resolv.conf").ok();
    let config = OperatorConfig::resolve(file, overrides, resolv.as_deref())?;
    sigil_telemetry::init_logging(&config.log_level, config.log_format, &["kube=warn"]);

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let health = Arc::new(Health::default());
    match (config.metrics_addr, config.health_addr) {
        (Some(m), Some(h)) if m == h => {
            sigil_operator::metrics::serve(m, registry.clone(), health.clone(), true, true).await?;
        }
        (m, h) => {
            if let Some(m) = m {
                sigil_operator::metrics::serve(m, registry.clone(), health.clone(), true, false)
                    .await
                    .with_context(|| format!("metrics bind address {m}"))?;
            }
            if let Some(h) = h {
                sigil_operator::metrics::serve(h, registry.clone(), health.clone(), false, true)
                    .await
                    .with_context(|| format!("health bind address {h}"))?;
            }
        }
    }

    let kube = kube_client(&metrics).await?;
    let admin = AdminClient::new(&config.server_socket_path);
    let id = identity();
    let (tx, rx) = mpsc::channel(8192);
    let kinds = start_watches(&kube, &config, &tx, &metrics);
    drop(tx);

    // Leadership: a Lease when asked for, otherwise always the leader.
    let (_always_tx, always_rx) = watch::channel(true);
    let mut lease_task = None;
    let leader_rx = match &config.leader_election {
        None => always_rx,
        Some(le) => {
            let params = kube_lease_manager::LeaseParams::new(
                id.clone(),
                le.lease_duration.as_secs(),
                (le.lease_duration.as_secs() / 3).max(1),
            );
            let manager = kube_lease_manager::LeaseManagerBuilder::new(kube.clone(), le.resource_name.clone())
                .with_namespace(le.resource_namespace.clone())
                .with_parameters(params)
                .build()
                .await
                .context("leader election lease")?;
            let (rx, task) = manager.watch().await;
            lease_task = Some(task);
            rx
        }
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let controller = Controller::new(
        config,
        admin,
        kube,
        metrics,
        health,
        Signals { waiting_for: kinds, leader: leader_rx, identity: id },
    );
    let mut main = tokio::spawn(controller.run(rx, shutdown_rx));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = &mut main => {
            r.context("controller task")?;
            anyhow::bail!("controller stopped");
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = main.await;
    // Dropping the leadership receiver makes the lease task release the lease, so a standby takes over at once.
    if let Some(task) = lease_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = sigil_core::cli::normalize_spire_flags(std::env::args(), &[]);
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: invalid arguments"));
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
