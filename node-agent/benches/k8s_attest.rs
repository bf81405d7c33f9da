//! The `k8s` workload attestor against a local HTTP kubelet stand-in serving 110 pods (a kubelet's
//! default maximum) with realistic bodies (specs with env, volumes, managed fields).
//!
//! `cargo bench --offline -p sigil-agent --bench k8s_attest` prints:
//! (a) the latency of 1,000 attestations of a cached container (`attest` through a process handle,
//!     so the `cgroup` read is included) and their CPU time (getrusage),
//! (b) the latency when a new container appears (one fetch + parse),
//! (c) kubelet requests and pod-list parses per 100 attestations of 10 pods, with the cache and with
//!     cache hits disabled (`reload_interval = 0`, which is what SPIRE does: a fetch per lookup).
//!
//! With `SIGIL_KUBELET_ADDR` (the node's address the kubelet serves on, also in its certificate),
//! `SIGIL_KUBELET_CA` and `SIGIL_KUBELET_TOKEN` set (e2e/k8s-attest/run.sh does, on the node tier), the same
//! figures are taken against the REAL kubelet's secure port, for real container processes found in /proc.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sigil_agent::attest::{ProcHandle, WorkloadAttestor};
use sigil_agent::k8s::K8sAttestor;
use sigil_agent::k8s::kubelet::{KubeletAuth, KubeletSettings, TlsVerify, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PODS: u32 = 110;

fn cid(pod: u32, c: u32) -> String {
    format!("{:08x}{:056x}", pod * 16 + c, u64::from(pod) * 7919 + u64::from(c))
}

fn uid(pod: u32) -> String {
    format!("{pod:08x}-1b2c-4d3e-8f40-{pod:012x}")
}

/// One pod as the kubelet serializes it, with the spec and status noise that parsing must skip.
fn pod(n: u32) -> serde_json::Value {
    let containers = 1 + n % 3;
    let env: Vec<_> = (0..20).map(|i| json!({"name": format!("ENV_{i}"), "value": format!("value-{n}-{i}")})).collect();
    let spec_containers: Vec<_> = (0..containers)
        .map(|c| {
            json!({"name": format!("c{c}"), "image": format!("registry.example/team{}/svc{n}:1.{c}.0", n % 8),
                   "env": env, "ports": [{"containerPort": 8080 + c, "protocol": "TCP"}],
                   "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m"}},
                   "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                   "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                   "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"})
        })
        .collect();
    let statuses: Vec<_> = (0..containers)
        .map(|c| {
            json!({"name": format!("c{c}"), "state": {"running": {"startedAt": "2026-08-01T09:12:50Z"}}, "lastState": {},
                   "ready": true, "restartCount": 0, "started": true,
                   "image": format!("registry.example/team{}/svc{n}:1.{c}.0", n % 8),
                   "imageID": format!("registry.example/team{}/svc{n}@sha256:{:064x}", n % 8, n * 31 + c),
                   "containerID": format!("containerd://{}", cid(n, c))})
        })
        .collect();
    json!({
        "metadata": {
            "name": format!("svc{n}-7c9f8d6b5-x{n:04}"), "generateName": format!("svc{n}-7c9f8d6b5-"),
            "namespace": format!("team{}", n % 8), "uid": uid(n), "resourceVersion": format!("{}", 40000 + n),
            "creationTimestamp": "2026-08-01T09:12:44Z",
            "labels": {"app": format!("svc{n}"), "team": format!("team{}", n % 8), "pod-template-hash": "7c9f8d6b5", "version": "v1"},
            "annotations": {"kubernetes.io/config.seen": "2026-08-01T09:12:44.301Z", "kubernetes.io/config.source": "api",
                            "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("svc{n}-7c9f8d6b5"),
                                 "uid": format!("{n:08x}-aaaa-4bbb-8ccc-{n:012x}"), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-08-01T09:12:44Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}}},
                                            "f:spec": {"f:containers": {"k:{\"name\":\"c0\"}": {".": {}, "f:env": {}, "f:image": {}}}}}}]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}], "defaultMode": 420}}],
            "containers": spec_containers, "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": format!("svc{n}"), "serviceAccount": format!("svc{n}"),
            "nodeName": "worker-17", "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-08-01T09:12:44Z"},
                           {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-08-01T09:12:51Z"}],
            "hostIP": "10.0.3.17", "hostIPs": [{"ip": "10.0.3.17"}], "podIP": format!("10.244.17.{}", n % 250),
            "startTime": "2026-08-01T09:12:44Z", "containerStatuses": statuses, "qosClass": "Burstable"
        }
    })
}

fn pod_list(pods: u32) -> String {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": (0..pods).map(pod).collect::<Vec<_>>()})
        .to_string()
}

/// A kubelet read-only port stand-in serving `body`, counting requests.
async fn kubelet(body: Arc<Mutex<Arc<String>>>, served: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (body, served) = (body.clone(), served.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                served.fetch_add(1, Ordering::Relaxed);
                let body = body.lock().unwrap().clone();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

fn settings(port: u16) -> KubeletSettings {
    KubeletSettings {
        transport: Transport::ReadOnly,
        node_name: None,
        port,
        max_poll_attempts: 60,
        poll_retry_interval: Duration::from_millis(500),
        reload_interval: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        max_body_bytes: 64 << 20,
    }
}

/// A `/proc/<pid>` stand-in whose `cgroup` puts the process in `pod`'s container `c`.
struct FakeProc {
    root: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

impl FakeProc {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().unwrap(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    fn handle(&self, pid: u32, pod: u32, c: u32) -> ProcHandle {
        let dir = self.root.path().join(pid.to_string());
        let _ = std::fs::create_dir(&dir);
        let (u, g) = (self.uid, self.gid);
        std::fs::write(dir.join("stat"), format!("{pid} (app) S 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 777 1 2 0"))
            .unwrap();
        std::fs::write(dir.join("status"), format!("Uid:\t{u}\t{u}\t{u}\t{u}\nGid:\t{g}\t{g}\t{g}\t{g}\nGroups:\t\n"))
            .unwrap();
        let _ = std::os::unix::fs::symlink("/bin/sh", dir.join("exe"));
        let line = format!("/kubepods/burstable/pod{}/{}", uid(pod), cid(pod, c));
        let cgroup = format!("12:pids:{line}\n11:memory:{line}\n4:cpu,cpuacct:{line}\n1:name=systemd:{line}\n0::/\n");
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        ProcHandle::open_in(self.root.path().to_str().unwrap(), i32::try_from(pid).unwrap(), u, g).unwrap()
    }
}

fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(addr) = std::env::var("SIGIL_KUBELET_ADDR") {
        real_kubelet(&addr).await;
    }
    let body = Arc::new(Mutex::new(Arc::new(pod_list(PODS))));
    let served = Arc::new(AtomicU64::new(0));
    let port = kubelet(body.clone(), served.clone()).await;
    let size = body.lock().unwrap().len();
    println!("k8s attest: kubelet stand-in with {PODS} pods, /pods body {:.2} MB", size as f64 / 1e6);
    let procs = FakeProc::new();

    // (a) cached container.
    let a = K8sAttestor::with_settings(settings(port), false);
    let h = procs.handle(1000, 42, 0);
    let t = Instant::now();
    let sels = a.attest(&h).await.unwrap();
    println!("k8s attest first call (cold cache, 1 fetch + parse): {:?}, {} selectors", t.elapsed(), sels.len());
    let cpu0 = cpu_time();
    let mut lat = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let s = a.attest(&h).await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(s.len(), sels.len());
    }
    let cpu = cpu_time() - cpu0;
    lat.sort();
    println!(
        "k8s attest cached: p50 {:.1} us p99 {:.1} us max {:.1} us (1000 calls)",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6,
        lat[lat.len() - 1].as_secs_f64() * 1e6
    );
    println!(
        "k8s attest cached: CPU {:.2} ms for 1000 calls ({:.1} us/call)",
        cpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3
    );
    println!("k8s attest cached: stats after 1001 calls {:?}", a.stats());
    // The same without the /proc read: cgroup parse, index lookup, selector strings.
    let cgroup = h.read_to_string("cgroup").unwrap();
    let mut lat = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        a.attest_cgroup(&cgroup).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "k8s attest cached, cgroup already read: p50 {:.1} us p99 {:.1} us (1000 calls)",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6
    );

    // (b) a container appearing: the list grows by a pod, the next attestation misses and fetches.
    let mut miss = Vec::new();
    for k in 0..5 {
        *body.lock().unwrap() = Arc::new(pod_list(PODS + 1 + k));
        // Past poll_retry_interval since the last fetch start, so the miss fetches at once.
        tokio::time::sleep(Duration::from_millis(550)).await;
        let h = procs.handle(2000 + k, PODS + k, 0);
        let t = Instant::now();
        a.attest(&h).await.unwrap();
        miss.push(t.elapsed());
    }
    miss.sort();
    println!(
        "k8s attest cache miss (new container, 1 fetch + parse of {}+ pods): p50 {:.2} ms max {:.2} ms (5 runs)",
        PODS + 1,
        pct(&miss, 0.5).as_secs_f64() * 1e3,
        miss[miss.len() - 1].as_secs_f64() * 1e3
    );
    *body.lock().unwrap() = Arc::new(pod_list(PODS));

    // (c) 100 attestations of 10 pods from a cold cache.
    let handles: Vec<_> = (0..10).map(|i| procs.handle(3000 + i, i * 11, 0)).collect();
    for (label, mut s) in
        [("cached", settings(port)), ("no cache hits (reload_interval 0, poll_retry_interval 0)", settings(port))]
    {
        if label.starts_with("no cache") {
            s.reload_interval = Duration::ZERO;
            s.poll_retry_interval = Duration::ZERO;
        }
        let a = K8sAttestor::with_settings(s, false);
        let before = served.load(Ordering::Relaxed);
        let t = Instant::now();
        for i in 0..100 {
            a.attest(&handles[i % 10]).await.unwrap();
        }
        let st = a.stats();
        println!(
            "k8s attest 100 calls / 10 pods, {label}: {} kubelet requests ({} served), {} pod-list parses, {:.1} ms total",
            st.requests,
            served.load(Ordering::Relaxed) - before,
            st.parses,
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    // (c') the same 100 calls at once: single flight.
    let a = Arc::new(K8sAttestor::with_settings(settings(port), false));
    let handles = Arc::new(handles);
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let (a, handles) = (a.clone(), handles.clone());
            tokio::spawn(async move { a.attest(&handles[i % 10]).await.map(|s| s.len()) })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    println!("k8s attest 100 concurrent calls / 10 pods, cold cache: {:?}", a.stats());
}

/// Processes of containers on this host: (pid, uid, gid, the container ID in its cgroup), one per container.
fn container_processes() -> Vec<(i32, u32, u32, String)> {
    let mut seen = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { continue };
        let Ok(Some(info)) = sigil_agent::k8s::cgroup::parse_cgroup(&cg) else { continue };
        // Pod sandboxes (pause) have a container ID the kubelet lists under no container status.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if info.pod_uid.is_none() || comm.trim() == "pause" {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let Ok(ids) = sigil_agent::attest::parse_status(&status) else { continue };
        seen.entry(info.container_id).or_insert((pid, ids.effective_uid(), ids.effective_gid()));
    }
    seen.into_iter().map(|(cid, (pid, u, g))| (pid, u, g, cid)).collect()
}

/// The figures against the real kubelet of the test cluster's node.
async fn real_kubelet(addr: &str) {
    let ca = std::env::var("SIGIL_KUBELET_CA").expect("SIGIL_KUBELET_CA");
    let token = std::env::var("SIGIL_KUBELET_TOKEN").expect("SIGIL_KUBELET_TOKEN");
    let settings = || KubeletSettings {
        transport: Transport::Secure {
            verify: TlsVerify::CaFile(ca.clone().into()),
            auth: KubeletAuth::Token(token.clone().into()),
        },
        // The address the kubelet serves on; its certificate names it, so the name check applies.
        node_name: Some(addr.to_owned()),
        port: 10250,
        max_poll_attempts: 60,
        poll_retry_interval: Duration::from_millis(500),
        reload_interval: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        max_body_bytes: 64 << 20,
    };
    let procs = container_processes();
    println!("real kubelet https://{addr}:10250/pods: {} container processes on this node", procs.len());
    assert!(procs.len() >= 10, "need at least 10 containers running for the 10-pod figure");
    let handles: Vec<ProcHandle> = procs.iter().map(|(pid, u, g, _)| ProcHandle::open(*pid, *u, *g).unwrap()).collect();

    // Cache miss: a new attestor per call, so each one fetches and parses the node's pod list.
    let mut miss = Vec::new();
    for _ in 0..20 {
        let a = K8sAttestor::with_settings(settings(), false);
        let t = Instant::now();
        let sels = a.attest(&handles[0]).await.unwrap();
        miss.push(t.elapsed());
        assert!(sels.iter().any(|s| s.value().starts_with("pod-uid:")), "{sels:?}");
    }
    miss.sort();
    println!(
        "real kubelet, cache miss (TLS connect + GET /pods + parse): p50 {:.2} ms p99 {:.2} ms (20 runs)",
        pct(&miss, 0.5).as_secs_f64() * 1e3,
        pct(&miss, 0.99).as_secs_f64() * 1e3
    );

    // Cached: 1,000 attestations of one container (the /proc cgroup read included).
    let a = K8sAttestor::with_settings(settings(), false);
    a.attest(&handles[0]).await.unwrap();
    let cpu0 = cpu_time();
    let mut lat = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        a.attest(&handles[0]).await.unwrap();
        lat.push(t.elapsed());
    }
    let cpu = cpu_time() - cpu0;
    lat.sort();
    println!(
        "real kubelet, cached pod: p50 {:.1} us p99 {:.1} us (1000 calls), CPU {:.1} ms for the 1000 calls; {:?}",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e3,
        a.stats()
    );

    // 100 attestations of 10 different pods' containers, from a cold cache.
    let pods: Vec<&ProcHandle> = {
        let mut by_pod = std::collections::BTreeMap::new();
        for (h, (_, _, _, _)) in handles.iter().zip(&procs) {
            let cg = h.read_to_string("cgroup").unwrap();
            let info = sigil_agent::k8s::cgroup::parse_cgroup(&cg).unwrap().unwrap();
            by_pod.entry(info.pod_uid.unwrap()).or_insert(h);
        }
        by_pod.into_values().take(10).collect()
    };
    println!("real kubelet: {} different pods", pods.len());
    let a = K8sAttestor::with_settings(settings(), false);
    let t = Instant::now();
    for i in 0..100 {
        a.attest(pods[i % pods.len()]).await.unwrap();
    }
    let st = a.stats();
    println!(
        "real kubelet, 100 calls / {} pods, cold cache: {} kubelet requests, {} pod-list parses, {:.1} ms total",
        pods.len(),
        st.requests,
        st.parses,
        t.elapsed().as_secs_f64() * 1e3
    );
}
