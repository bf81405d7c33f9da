//! Shared test harness: a real server (in-process, real SQLite, real TLS on loopback) and a test agent
//! client that speaks the agent API exactly as an agent does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sigil_core::bundle::Bundle;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::admin::{self as apb, agents_client::AgentsClient, entries_client::EntriesClient};
use sigil_proto::agent::{self as pb, node_client::NodeClient};
use sigil_proto::types as tpb;
use sigil_server::config::{FileConfig, Overrides, ServerConfig};
use sigil_server::run::RunningServer;
use sigil_tls::ServerCheck;
use tokio::sync::watch;
use tonic::transport::Channel;

pub const TD: &str = "example.org";

pub fn config(dir: &Path, extra_toml: &str) -> ServerConfig {
    config_td(dir, TD, extra_toml)
}

/// [`config`] for another trust domain (federation tests run two servers).
pub fn config_td(dir: &Path, td: &str, extra_toml: &str) -> ServerConfig {
    let text = format!(
        "[server]\ntrust_domain = \"{td}\"\nbind_address = \"127.0.0.1\"\nbind_port = 0\n{extra_toml}\n[health_checks]\nbind_address = \"127.0.0.1\"\nbind_port = 0\n"
    );
    let file = FileConfig::parse(&text).unwrap();
    ServerConfig::resolve(
        file,
        Overrides {
            data_dir: Some(dir.join("data")),
            socket_path: Some(dir.join("admin").join("api.sock")),
            ..Default::default()
        },
    )
    .unwrap()
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
}

impl TestServer {
    pub async fn start(extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = sigil_server::run::start(config(dir.path(), extra_toml)).await.unwrap();
        Self { dir, server }
    }

    /// A server of trust domain `td` (federation tests).
    pub async fn start_td(td: &str, extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = sigil_server::run::start(config_td(dir.path(), td, extra_toml)).await.unwrap();
        Self { dir, server }
    }

    /// Stops the server and starts it again on the same data directory (same CA, same datastore) with
    /// `extra_toml`.
    pub async fn restart(self, td: &str, extra_toml: &str) -> Self {
        let Self { dir, server } = self;
        server.shutdown().await;
        let server = sigil_server::run::start(config_td(dir.path(), td, extra_toml)).await.unwrap();
        Self { dir, server }
    }

    pub fn socket(&self) -> PathBuf {
        self.server.state.config.socket_path.clone()
    }

    pub async fn admin(&self) -> Channel {
        sigil_server::cli::admin_channel(&self.socket()).await.unwrap()
    }

    pub async fn join_token(&self) -> String {
        AgentsClient::new(self.admin().await)
            .create_join_token(apb::CreateJoinTokenRequest { ttl: 0, agent_alias_spiffe_id: String::new() })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    pub async fn create_entry(&self, spiffe_id: &str, parent_id: &str, selectors: &[&str]) -> tpb::Entry {
        let entry = tpb::Entry {
            spiffe_id: spiffe_id.into(),
            parent_id: parent_id.into(),
            selectors: selectors
                .iter()
                .map(|s| {
                    let (t, v) = s.split_once(':').unwrap();
                    tpb::Selector { r#type: t.into(), value: v.into() }
                })
                .collect(),
            ..Default::default()
        };
        let resp = EntriesClient::new(self.admin().await)
            .batch_create_entry(apb::BatchCreateEntryRequest { entries: vec![entry] })
            .await
            .unwrap()
            .into_inner();
        let r = resp.results.into_iter().next().unwrap();
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(0), "{:?}", r.status);
        r.entry.unwrap()
    }

    pub fn bundle(&self) -> Arc<Bundle> {
        self.server.state.bundle()
    }
}

pub fn csr() -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap();
    (csr.der().to_vec(), key)
}

/// An agent as the server sees one: attests, then talks mTLS with its SVID.
pub struct TestAgent {
    pub id: SpiffeId,
    pub client: NodeClient<Channel>,
    pub chain: Vec<Vec<u8>>,
    pub key: rcgen::KeyPair,
    pub bundle_tx: watch::Sender<Arc<Bundle>>,
    pub addr: SocketAddr,
}

pub fn bootstrap_channel(addr: SocketAddr) -> Channel {
    let cfg = sigil_tls::client_config(ServerCheck::InsecureBootstrap, None).unwrap();
    sigil_tls::channel(addr, Arc::new(cfg)).unwrap()
}

pub async fn attest(addr: SocketAddr, token: &str) -> Result<TestAgent, tonic::Status> {
    attest_as(addr, "join_token", token.as_bytes().to_vec()).await
}

/// Attests with any attestation type and payload, as an agent does (a fresh key, no client certificate).
pub async fn attest_as(addr: SocketAddr, attestation_type: &str, payload: Vec<u8>) -> Result<TestAgent, tonic::Status> {
    let (csr, key) = csr();
    let mut client = NodeClient::new(bootstrap_channel(addr));
    let resp = client
        .attest(pb::AttestRequest { attestation_type: attestation_type.into(), payload, csr })
        .await?
        .into_inner();
    let svid = resp.svid.unwrap();
    let bundle = pb_bundle(&resp.bundle.unwrap());
    let (bundle_tx, _) = watch::channel(Arc::new(bundle));
    let id = SpiffeId::new(&svid.spiffe_id).unwrap();
    let mut agent = TestAgent { id, client, chain: svid.cert_chain, key, bundle_tx, addr };
    agent.reconnect();
    Ok(agent)
}

pub fn pb_bundle(b: &tpb::Bundle) -> Bundle {
    sigil_server::api::convert::bundle_from_pb(b).unwrap()
}

impl TestAgent {
    /// Rebuilds the mTLS channel with the current SVID, verifying the server's SVID against the bundle.
    pub fn reconnect(&mut self) {
        let td = TrustDomain::new(TD).unwrap();
        let ck = sigil_tls::certified_key(&self.chain, &self.key.serialize_der()).unwrap();
        let check =
            ServerCheck::SpiffeId { expected: td.join("/spire/server").unwrap(), bundle: self.bundle_tx.subscribe() };
        let cfg = sigil_tls::client_config(check, Some(ck)).unwrap();
        self.client =
            NodeClient::new(sigil_tls::channel(self.addr, Arc::new(cfg)).unwrap()).max_decoding_message_size(256 << 20);
    }

    pub async fn sync(&mut self) -> tonic::Streaming<pb::SyncEntriesUpdate> {
        self.client.sync_entries(pb::SyncEntriesRequest {}).await.unwrap().into_inner()
    }
}

pub async fn next_update(stream: &mut tonic::Streaming<pb::SyncEntriesUpdate>) -> pb::SyncEntriesUpdate {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("sync update in time")
        .unwrap()
        .unwrap()
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Writes PEM certificates to a file (for openssl).
pub fn write_pem(path: &Path, ders: &[Vec<u8>]) {
    let text: String = ders.iter().map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone()))).collect();
    std::fs::write(path, text).unwrap();
}
