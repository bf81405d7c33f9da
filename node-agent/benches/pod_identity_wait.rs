//! Time from a registration entry's creation (the admin API call that creates it, selector
//! `k8s:pod-uid:<uid>`, parent = the agent) to the return of an admin-socket call that was already waiting
//! for that pod, against a real in-process server and agent: the start-up race the CSI driver's
//! `-wait-for-identity` removes. It includes the server's push of the entry, the agent's key generation and
//! CSR, the server's signature and the agent's cache update.
//!
//! `cargo bench --offline -p sigil-agent --bench pod_identity_wait` (SIGIL_BENCH_PODS, default 50).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use sigil_agent::admin;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pods: usize = std::env::var("SIGIL_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let stack = support::Stack::start().await;
    let mut latencies = Vec::with_capacity(pods);
    for i in 0..pods {
        let uid = support::pod_uid();
        let waiter = {
            let (sock, uid) = (stack.admin_socket.clone(), uid.clone());
            tokio::spawn(async move {
                let r = admin::ask(&sock, &uid, Duration::from_secs(30)).await;
                (r, Instant::now())
            })
        };
        // Let the call reach the agent and start waiting.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let created = Instant::now();
        stack.create_entry(&format!("spiffe://example.org/bench/pod-{i}"), &[format!("k8s:pod-uid:{uid}")]).await;
        let (r, returned) = waiter.await.unwrap();
        let (status, answer) = r.unwrap();
        assert_eq!(status, 200, "{answer:?}");
        latencies.push(returned.duration_since(created));
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "pod_identity_wait: {pods} pods, entry creation -> waiting admin call returns ready: p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms, mean {:.1} ms",
        pct(&latencies, 0.5).as_secs_f64() * 1e3,
        pct(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies[0].as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
    );
    stack.stop().await;
}
