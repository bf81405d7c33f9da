//! `/live`, `/ready` and `/metrics` over real HTTP on the configured port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn live_ready_and_metrics() {
    let s = TestServer::start("").await;
    let addr = s.server.health_addr.unwrap();
    assert_eq!(get(addr, "/live").await.0, 200);
    assert_eq!(get(addr, "/ready").await.0, 200);
    s.create_entry("spiffe://example.org/m", "spiffe://example.org/host", &["unix:uid:1"]).await;
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("sigil_server_entries 1"), "{body}");
    assert!(body.contains("sigil_server_entry_writes_total 1"), "{body}");
    assert_eq!(get(addr, "/nope").await.0, 404);
}
