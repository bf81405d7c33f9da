#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The agent's admin socket against a real in-process server and a real agent: a pod UID without an entry
//! times out not-ready after the given bound; an entry created while a call waits (selector
//! `k8s:pod-uid:<uid>`, parent = the agent) makes it return ready promptly with the entry's SPIFFE ID;
//! malformed requests get clear errors; the socket's directory is private.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use sigil_agent::admin::{self, MAX_WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 exchange (for requests the client helper would never send).
async fn raw(socket: &std::path::Path, request: &str) -> String {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_waits_for_a_pods_identity() {
    let stack = support::Stack::start().await;
    let sock = stack.admin_socket.clone();
    let mode = std::fs::metadata(sock.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the admin socket's directory is private");

    // No entry: not ready once the bound has passed (and not much later).
    let uid = support::pod_uid();
    let t = Instant::now();
    let (status, answer) = admin::ask(&sock, &uid, Duration::from_millis(1500)).await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, 503, "{answer:?}");
    assert!(!answer.ready);
    assert_eq!(answer.pod_uid, uid);
    assert!(answer.reason.contains("no registration entry"), "{answer:?}");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(3500), "{took:?}");

    // A waiting call returns ready soon after the entry is created (and its SVID signed).
    let waiter = {
        let (sock, uid) = (sock.clone(), uid.clone());
        tokio::spawn(async move {
            let r = admin::ask(&sock, &uid, Duration::from_secs(20)).await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let spiffe_id = "spiffe://example.org/ns/default/sa/web";
    let created = Instant::now();
    stack.create_entry(spiffe_id, &[format!("k8s:pod-uid:{uid}"), "k8s:ns:default".into()]).await;
    let (r, returned) = tokio::time::timeout(Duration::from_secs(25), waiter).await.unwrap().unwrap();
    let (status, answer) = r.unwrap();
    let latency = returned.duration_since(created);
    eprintln!("entry creation -> ready answer: {latency:?}");
    assert_eq!(status, 200, "{answer:?}");
    assert!(answer.ready);
    assert_eq!(answer.spiffe_ids, vec![spiffe_id.to_owned()]);
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    // The SVID is in the cache at that moment (signed ahead, not on fetch).
    let snap = stack.agent.manager.snapshot();
    assert!(snap.svids.values().any(|s| s.spiffe_id.as_str() == spiffe_id), "SVID cached when ready");
    // Asked again: ready at once.
    let t = Instant::now();
    let (status, _) = admin::ask(&sock, &uid, Duration::from_secs(20)).await.unwrap();
    assert_eq!(status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));

    // Malformed UIDs and requests: clear errors, at once.
    for bad in ["not-a-uid", "0F1E2D3C-4B5A-4978-8A6B-5C4D3E2F1A0B", "0f1e2d3c4b5a49788a6b5c4d3e2f1a0b"] {
        let (status, answer) = admin::ask(&sock, bad, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 400, "{bad}: {answer:?}");
        assert!(answer.error.contains("invalid pod UID") && answer.error.contains("lowercase"), "{answer:?}");
    }
    let r = raw(&sock, &format!("GET /v1/pods/{uid}/identity?timeout=5parsecs HTTP/1.1\r\nHost: a\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("timeout"), "{r}");
    let r = raw(&sock, &format!("GET /v1/pods/{uid}/identity?wait=5s HTTP/1.1\r\nHost: a\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("unknown query parameter"), "{r}");
    let r = raw(&sock, "GET /v1/other HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r =
        raw(&sock, &format!("POST /v1/pods/{uid}/identity HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{{}}")).await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    // A request head larger than the server's buffer is refused, not buffered.
    let big = format!("GET /v1/pods/{uid}/identity HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 * 1024));
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let _ = s.write_all(big.as_bytes()).await;
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap();
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    // A timeout above the cap is cut to it (the answer for a ready pod is immediate anyway).
    let r = raw(&sock, &format!("GET /v1/pods/{uid}/identity?timeout=1h HTTP/1.1\r\nHost: a\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(MAX_WAIT, Duration::from_secs(30));

    let metrics = stack.agent.metrics.encode();
    assert!(metrics.contains("sigil_agent_pod_identity_waits_total{result=\"ready\"} 3"), "{metrics}");
    assert!(metrics.contains("sigil_agent_pod_identity_waits_total{result=\"timeout\"} 1"), "{metrics}");
    assert!(metrics.contains("sigil_agent_pod_identity_wait_seconds_count 4"), "{metrics}");
    stack.stop().await;
    assert!(!sock.exists(), "admin socket removed at shutdown");
}
