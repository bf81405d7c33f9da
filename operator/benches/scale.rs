//! Scale benchmark on the api tier (real kube-apiserver + etcd, real sigil-server, real sigil-operator):
//! 10,000 pods across 100 namespaces and 20 nodes.
//!
//! Prints: time from operator start to all entries set (and when, by the operator's log, its initial lists
//! were in and its initial pass written); time from one pod change to its entry write (p50/p99 over 200
//! changes); operator and server RSS and CPU time; Kubernetes API requests per pod change.
//!
//!   export KUBECONFIG=$(e2e/cluster/cluster up --tier api)
//!   cargo build --release -p sigil-server && cargo bench -p sigil-operator --bench scale
//!
//! Sizes: SIGIL_BENCH_PODS, SIGIL_BENCH_NAMESPACES, SIGIL_BENCH_NODES (the issue-19 table uses 10,000/100/20,
//! 50,000/500/100 and 100,000/1,000/200). The pods are created concurrently (setup, not measured).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use sigil_proto::admin as apb;
use sigil_proto::admin::entries_client::EntriesClient;
use support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// Seconds since midnight of a log line's leading RFC 3339 timestamp.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split_once('T')?.1.trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s) = (it.next()?.parse::<f64>().ok()?, it.next()?.parse::<f64>().ok()?, it.next()?.parse::<f64>().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight (UTC) now, as the operator's log lines tell time.
fn time_of_day() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// When (seconds after `start`, a [`time_of_day`]) the operator logged a line containing `what`.
fn logged_at(log: &str, what: &str, start: f64) -> Option<f64> {
    log.lines().find(|l| l.contains(what)).and_then(log_time).map(|t| t - start)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let pods = env_usize("SIGIL_BENCH_PODS", 10_000);
    let namespaces = env_usize("SIGIL_BENCH_NAMESPACES", 100);
    let nodes = env_usize("SIGIL_BENCH_NODES", 20);
    let changes = env_usize("SIGIL_BENCH_CHANGES", 200);
    let run = suffix();
    let k = kube().await;
    install_crds();
    let dir = tempfile::tempdir().unwrap();
    println!("scale benchmark: {pods} pods, {namespaces} namespaces, {nodes} nodes (run {run})");

    // --- the cluster's objects ---
    let started = Instant::now();
    let ns_names: Vec<String> = (0..namespaces).map(|i| format!("bench-{run}-{i}")).collect();
    let ns_labels = [("bench-run", run.as_str())];
    futures::stream::iter(ns_names.iter().map(|n| create_namespace(&k, n, &ns_labels)))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let node_names: Vec<String> = (0..nodes).map(|i| format!("bench-{run}-node-{i}")).collect();
    for n in &node_names {
        create_node(&k, n).await;
    }
    let specs: Vec<(String, String, String)> = (0..pods)
        .map(|i| (ns_names[i % namespaces].clone(), format!("pod-{i}"), node_names[i % nodes].clone()))
        .collect();
    futures::stream::iter(specs.iter().map(|(ns, name, node)| {
        let api = Api::<Pod>::namespaced(k.clone(), ns);
        async move {
            let p = pod_object(name, node, &[("app", "bench"), ("v", "0")], "default");
            api.create(&PostParams::default(), &p).await.unwrap();
        }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
    println!("created {pods} pods in {:.1} s (setup, not a result)", started.elapsed().as_secs_f64());

    // --- server and policy ---
    let server = Server::spawn(dir.path()).await;
    let class = format!("bench-{run}");
    let cluster = format!("b{run}");
    let prefix = format!("sigil.{cluster}.{class}.");
    kubectl_apply(&format!(
        r#"apiVersion: sigil.dev/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: bench-{run}
spec:
  className: {class}
  spiffeIDTemplate: "spiffe://{{{{ .TrustDomain }}}}/ns/{{{{ .PodMeta.Namespace }}}}/sa/{{{{ .PodSpec.ServiceAccountName }}}}/{{{{ .PodMeta.Name }}}}"
  podSelector:
    matchLabels:
      app: bench
  namespaceSelector:
    matchLabels:
      bench-run: "{run}"
  dnsNameTemplates:
    - "v{{{{ index .PodMeta.Labels \"v\" }}}}.{{{{ .PodMeta.Name }}}}.example"
"#
    ));
    let config =
        format!("trustDomain: {TRUST_DOMAIN}\nclusterName: {cluster}\nclassName: {class}\nwatchClassless: false\n");

    // --- start to all entries set ---
    let mut entries_api = EntriesClient::new(server.client.channel());
    let t0 = Instant::now();
    let t0_of_day = time_of_day();
    // Debug for the controller: its full passes are logged with their duration (shown beside slow changes).
    let op = Operator::spawn_env(
        dir.path(),
        "operator",
        &server,
        &config,
        &[("RUST_LOG", "info,kube=warn,sigil_operator::controller=debug")],
    );
    let mut last = 0;
    loop {
        let n = entries_api.count_entries(apb::CountEntriesRequest { filter: None }).await.unwrap().into_inner().count;
        if n as usize >= pods {
            break;
        }
        if n != last {
            last = n;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "only {n} of {pods} entries after 300 s; see {}",
            op.log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let startup = t0.elapsed();
    println!("operator start -> all {pods} entries set: {:.2} s", startup.as_secs_f64());
    let rss_after_sync = rss_kib(op.pid(), "VmRSS:");
    let (op_cpu_sync, server_cpu_sync) = (cpu_seconds(op.pid()), cpu_seconds(server.pid()));
    let server_rss_sync = rss_kib(server.pid(), "VmRSS:");
    println!(
        "  CPU until all set: operator {op_cpu_sync:.2} s, server {server_cpu_sync:.2} s; server RSS with the {pods} entries {:.1} MiB",
        server_rss_sync as f64 / 1024.0
    );

    // --- one pod change -> its entry write ---
    let by_pod: HashMap<String, String> = server
        .entries(&prefix)
        .await
        .into_values()
        .filter_map(|e| {
            let uid = e.selectors.iter().find_map(|s| s.value().strip_prefix("pod-uid:").map(String::from))?;
            Some((uid, e.id))
        })
        .collect();
    let pod_api = |ns: &str| Api::<Pod>::namespaced(k.clone(), ns);
    let log = op.log_text();
    let at = |what| logged_at(&log, what, t0_of_day).map_or("?".to_string(), |t| format!("{t:.2} s"));
    println!(
        "  by the operator's log: initial lists in at {}, initial pass written at {}",
        at("all initial lists received"),
        at("initial pass")
    );
    let requests_before = op.metric("sigil_operator_kube_requests_total").await.unwrap_or(0.0);
    let writes_before = op.metric("sigil_operator_entry_writes_total").await.unwrap_or(0.0);
    // Full passes (every gcInterval, 30 s) that ran while the changes were measured: a change must not wait
    // for one.
    let full_passes = r#"sigil_operator_reconcile_seconds_count{kind="full"}"#;
    let passes_before = op.metric(full_passes).await.unwrap_or(0.0);
    let changes_started = Instant::now();
    // (latency, when it started): the slowest are shown beside the operator's log lines of that moment.
    let mut started_at = vec![];
    // At least `changes`, and on until 3 full passes ran among them (a pass every gcInterval, 30 s), so that
    // a change waiting for a pass shows in the figures.
    let mut i = 0;
    while i < changes || (op.metric(full_passes).await.unwrap_or(0.0) - passes_before < 3.0 && i < 50 * changes) {
        let (ns, name, _) = &specs[(i * 7919) % pods];
        let uid = pod_api(ns).get(name).await.unwrap().metadata.uid.unwrap();
        let id = by_pod[&uid].clone();
        let want = format!("v{}.{name}.example", i + 1);
        let (t, t_of_day) = (Instant::now(), time_of_day());
        set_pod_labels(&k, ns, name, &[("app", "bench"), ("v", &(i + 1).to_string())]).await;
        loop {
            let e = entries_api.get_entry(apb::GetEntryRequest { id: id.clone() }).await.unwrap().into_inner();
            if e.dns_names.first() == Some(&want) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "entry {id} not updated after 30 s");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        started_at.push((t.elapsed(), t_of_day));
        i += 1;
    }
    let changes = started_at.len();
    let mut latencies: Vec<Duration> = started_at.iter().map(|&(latency, _)| latency).collect();
    latencies.sort();
    let requests_after = op.metric("sigil_operator_kube_requests_total").await.unwrap_or(0.0);
    let writes_after = op.metric("sigil_operator_entry_writes_total").await.unwrap_or(0.0);
    println!(
        "pod change -> entry write ({changes} changes, from the label patch request to the server's entry): p50 {}, p99 {}, max {}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    started_at.sort_by_key(|&(latency, _)| std::cmp::Reverse(latency));
    let log = op.log_text();
    for (latency, at) in started_at.iter().take(3) {
        println!("  slow change: {} at {at:.3} s of the day; the operator's log from 1 s before:", ms(*latency));
        for line in log.lines().filter(|l| log_time(l).is_some_and(|t| t > at - 1.0 && t < at + latency.as_secs_f64()))
        {
            println!("    {line}");
        }
    }
    println!(
        "  {} full passes ran during the {:.1} s of changes",
        op.metric(full_passes).await.unwrap_or(0.0) - passes_before,
        changes_started.elapsed().as_secs_f64()
    );
    println!(
        "Kubernetes API requests per pod change: {:.3} (watch events only); entry writes per pod change: {:.2}",
        (requests_after - requests_before) / changes as f64,
        (writes_after - writes_before) / changes as f64
    );
    println!(
        "operator memory: RSS {:.1} MiB after the initial sync, RSS {:.1} MiB now, peak (VmHWM) {:.1} MiB",
        rss_after_sync as f64 / 1024.0,
        rss_kib(op.pid(), "VmRSS:") as f64 / 1024.0,
        rss_kib(op.pid(), "VmHWM:") as f64 / 1024.0
    );
    println!(
        "server: RSS {:.1} MiB now, peak (VmHWM) {:.1} MiB; CPU {:.2} s in total (operator {:.2} s)",
        rss_kib(server.pid(), "VmRSS:") as f64 / 1024.0,
        rss_kib(server.pid(), "VmHWM:") as f64 / 1024.0,
        cpu_seconds(server.pid()),
        cpu_seconds(op.pid())
    );
    let reqs = op.metric("sigil_operator_kube_requests_total").await.unwrap_or(0.0);
    println!("Kubernetes API requests in total since operator start: {reqs}");
    kubectl_delete("clusterspiffeid", &format!("bench-{run}"));
    // Pods go at once (no kubelet at this tier to confirm a graceful deletion); namespaces stay, since the
    // api tier runs no namespace controller to finish deleting them.
    drop(op);
    futures::stream::iter(ns_names.iter().map(|ns| {
        let api = Api::<Pod>::namespaced(k.clone(), ns);
        async move {
            let dp = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            // Retried: pods left behind would be watched by the next run's operator (and spoil its figures).
            for attempt in 1..=5 {
                match api.delete_collection(&dp, &Default::default()).await {
                    Ok(_) => break,
                    Err(e) if attempt == 5 => eprintln!("the pods of {ns} were not deleted: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
}
