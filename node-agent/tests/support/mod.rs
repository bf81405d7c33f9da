//! A real sigil-server (in-process: real SQLite, real TLS on loopback) and a real sigil-agent attested to it
//! with a join token, with the agent's admin socket on. Shared by tests/admin_socket.rs and
//! benches/pod_identity_wait.rs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sigil_agent::config::{AgentConfig, Bootstrap};
use sigil_agent::run::{self, RunningAgent};
use sigil_agent::state::Snapshot;
use sigil_core::TrustDomain;
use sigil_proto::admin::{self as apb, agents_client::AgentsClient, entries_client::EntriesClient};
use sigil_proto::types as tpb;
use sigil_server::config::{FileConfig, Overrides, ServerConfig};
use sigil_server::run::RunningServer;
use tonic::transport::Channel;

pub const TD: &str = "example.org";

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub agent: RunningAgent,
    /// The agent's SPIFFE ID (parent of the test entries).
    pub agent_id: String,
    pub admin_socket: PathBuf,
    admin: Channel,
}

impl Stack {
    /// Starts a server and an agent, and waits until the agent has synced its entries.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\ntrust_domain = \"{TD}\"\nbind_address = \"127.0.0.1\"\nbind_port = 0\n[health_checks]\nlistener_enabled = false\n"
        );
        let cfg = ServerConfig::resolve(
            FileConfig::parse(&text).unwrap(),
            Overrides {
                data_dir: Some(dir.path().join("server-data")),
                socket_path: Some(dir.path().join("server-admin/api.sock")),
                ..Default::default()
            },
        )
        .unwrap();
        let server = sigil_server::run::start(cfg).await.unwrap();
        let admin = sigil_server::cli::admin_channel(&server.state.config.socket_path).await.unwrap();
        let token = AgentsClient::new(admin.clone())
            .create_join_token(apb::CreateJoinTokenRequest { ttl: 0, agent_alias_spiffe_id: String::new() })
            .await
            .unwrap()
            .into_inner()
            .token;
        let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");

        let port = server.agent_addr.port();
        let mut c = AgentConfig::new(TrustDomain::new(TD).unwrap(), "127.0.0.1", port);
        c.data_dir = dir.path().join("agent-data");
        c.socket_path = dir.path().join("public/api.sock");
        let admin_socket = dir.path().join("agent-admin/admin.sock");
        c.admin_socket_path = Some(admin_socket.clone());
        c.join_token = Some(token);
        c.bootstrap = Bootstrap::Insecure;
        c.health = None;
        let agent = run::start(c).await.unwrap();
        let mut rx = agent.manager.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s: &Arc<Snapshot>| s.synced))
            .await
            .expect("agent did not sync within 30 s")
            .unwrap();
        Self { dir, server, agent, agent_id, admin_socket, admin }
    }

    /// Creates an entry under the agent with `selectors` (`type:value`); returns its id.
    pub async fn create_entry(&self, spiffe_id: &str, selectors: &[String]) -> String {
        let entry = tpb::Entry {
            spiffe_id: spiffe_id.into(),
            parent_id: self.agent_id.clone(),
            selectors: selectors
                .iter()
                .map(|s| {
                    let (t, v) = s.split_once(':').unwrap();
                    tpb::Selector { r#type: t.into(), value: v.into() }
                })
                .collect(),
            ..Default::default()
        };
        let resp = EntriesClient::new(self.admin.clone())
            .batch_create_entry(apb::BatchCreateEntryRequest { entries: vec![entry] })
            .await
            .unwrap()
            .into_inner();
        let r = resp.results.into_iter().next().unwrap();
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(0), "{:?}", r.status);
        r.entry.unwrap().id
    }

    pub async fn stop(self) {
        self.agent.shutdown().await.unwrap();
        self.server.shutdown().await;
    }
}

/// A fresh pod UID in the Kubernetes form (std only: the CSI driver's tests include this file too).
pub fn pod_uid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let h = format!("{:016x}{:016x}", nanos ^ (u64::from(std::process::id()) << 40), n);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
