#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `run::start` without a reachable server: startup errors, Unavailable before the first sync, health
//! endpoints, a stored identity that needs no join token, and a quick clean shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sigil_agent::client;
use sigil_agent::config::{AgentConfig, Bootstrap};
use sigil_agent::node::StoredIdentity;
use sigil_agent::run::{self, RunError};
use sigil_agent::testing::TestCa;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::workload as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn config(dir: &Path) -> AgentConfig {
    let mut c = AgentConfig::new(TrustDomain::new("example.org").unwrap(), "127.0.0.1", closed_port());
    c.data_dir = dir.join("data");
    c.socket_path = dir.join("public/api.sock");
    c.health = Some(([127, 0, 0, 1].into(), 0));
    c
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, buf)
}

#[tokio::test]
async fn no_token_and_no_stored_identity_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = run::start(config(dir.path())).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), agent.wait()).await.unwrap().unwrap_err();
    assert!(matches!(err, RunError::NeedJoinToken { .. }), "{err}");
    assert!(err.to_string().contains("-joinToken"), "{err}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn token_without_bootstrap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.join_token = Some("abc".into());
    let mut agent = run::start(c).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), agent.wait()).await.unwrap().unwrap_err();
    assert!(matches!(err, RunError::NeedBootstrap), "{err}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_unavailable_health_and_quick_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.join_token = Some("abc".into());
    c.bootstrap = Bootstrap::Insecure;
    let socket = c.socket_path.clone();
    let agent = run::start(c).await.unwrap();
    let health = agent.health_addr.unwrap();

    let mut wl = client::connect(&socket).await.unwrap();
    let r = wl.fetch_x509svid(pb::X509svidRequest {}).await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::Unavailable));
    assert_eq!(http_get(health, "/live").await.0, 200);
    assert_eq!(http_get(health, "/ready").await.0, 503);
    let (code, body) = http_get(health, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("sigil_agent_synced 0"), "{body}");
    assert!(body.contains("code=\"Unavailable\""), "{body}");

    let t = Instant::now();
    agent.shutdown().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "shutdown took {:?}", t.elapsed());
    assert!(!socket.exists(), "socket removed");
}

#[tokio::test]
async fn stored_identity_needs_no_join_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let ca = TestCa::new("example.org").unwrap();
    let id = SpiffeId::new("spiffe://example.org/spire/agent/join_token/old").unwrap();
    let (chain, key) = ca.issue(&id, 3600).unwrap();
    StoredIdentity::new(chain, key, ca.bundle(), &c.trust_domain).unwrap().save(&c.data_dir).unwrap();
    let mut agent = run::start(c).await.unwrap();
    // Without the stored identity this would end at once with NeedJoinToken; with it the agent keeps
    // trying to reach the server.
    let r = tokio::time::timeout(Duration::from_secs(2), agent.wait()).await;
    assert!(r.is_err(), "agent loop ended: {r:?}");
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_stored_identity_needs_a_join_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let ca = TestCa::new("example.org").unwrap();
    let id = SpiffeId::new("spiffe://example.org/spire/agent/join_token/old").unwrap();
    let (chain, key) = ca.issue(&id, 8).unwrap();
    let ident = StoredIdentity::new(chain, key, ca.bundle(), &c.trust_domain).unwrap();
    ident.save(&c.data_dir).unwrap();
    let mut agent = run::start(c).await.unwrap();
    // Valid for 8 s: used at first (the loop keeps running), then expired -> stops asking for a token.
    let r = tokio::time::timeout(Duration::from_secs(25), agent.wait()).await.unwrap();
    assert!(matches!(r, Err(RunError::SvidExpired)), "{r:?}");
    agent.shutdown().await.unwrap();
}
