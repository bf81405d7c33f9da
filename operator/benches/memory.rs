//! Where the operator's bytes go per pod, in process (no api tier): a counting global allocator measures the
//! live heap after each stage of what the operator keeps for N pods (the pod as converted from the watch, the
//! world's indexes and rendered entries, the controller's copy of the server's entries) and the transient
//! peak of the initial plan.
//!
//!   cargo bench -p sigil-operator --bench memory            # 10,000 pods; SIGIL_BENCH_PODS to change
//!
//! The pod is what the api tier's kube-apiserver returns for the scale benchmark's pod (defaults filled in,
//! managedFields included), and a larger "realistic" pod (3 containers with env, volumes, probes,
//! owner reference, annotations), so both the benchmark's figure and a production-like figure show.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A global allocator cannot be written without `unsafe`; it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Node as K8sNode, Pod as K8sPod};
use serde_json::json;
use sigil_core::TrustDomain;
use sigil_operator::labels::LabelMatcher;
use sigil_operator::objects::{node_from_k8s, pod_from_k8s};
use sigil_operator::template::Template;
use sigil_operator::world::{self, Namespace, Policy, Rank, ServerCopy, Settings, World};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = LIVE.fetch_add(l.size() as isize, Ordering::Relaxed) + l.size() as isize;
        PEAK.fetch_max(n.max(0) as usize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let n = LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed) + new as isize - l.size() as isize;
        PEAK.fetch_max(n.max(0) as usize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn bench_pod(i: usize, ns: &str, node: &str) -> serde_json::Value {
    json!({
        "metadata": {
            "name": format!("pod-{i}"), "namespace": ns, "uid": format!("c4c917d0-79e7-4e36-b24e-{i:012}"),
            "resourceVersion": "377", "generation": 1, "creationTimestamp": "2026-12-03T13:32:20Z",
            "labels": {"app": "bench", "v": "0"},
            "managedFields": [{"manager": "scale-bench", "operation": "Update", "apiVersion": "v1",
                "time": "2026-12-03T13:32:20Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:v": {}}},
                    "f:spec": {"f:automountServiceAccountToken": {}, "f:containers": {"k:{\"name\":\"app\"}": {
                        ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {},
                        "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}},
                    "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:nodeName": {}, "f:restartPolicy": {},
                    "f:schedulerName": {}, "f:securityContext": {}, "f:serviceAccount": {},
                    "f:serviceAccountName": {}, "f:terminationGracePeriodSeconds": {}}}}]
        },
        "spec": {"automountServiceAccountToken": false, "containers": [{"image": "registry.invalid/app:1",
            "imagePullPolicy": "IfNotPresent", "name": "app", "resources": {},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
            "dnsPolicy": "ClusterFirst", "enableServiceLinks": true, "nodeName": node,
            "preemptionPolicy": "PreemptLowerPriority", "priority": 0, "restartPolicy": "Always",
            "schedulerName": "default-scheduler", "securityContext": {}, "serviceAccount": "default",
            "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}]},
        "status": {"phase": "Pending", "qosClass": "BestEffort"}
    })
}

/// A production-like pod of a Deployment: three containers, env, mounts, probes, the projected token volume.
fn realistic_pod(i: usize, ns: &str, node: &str) -> serde_json::Value {
    let mut p = bench_pod(i, ns, node);
    let container = |name: &str| {
        json!({"name": name, "image": format!("registry.example.com/team/{name}:v1.42.7@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            "imagePullPolicy": "IfNotPresent", "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
            "env": (0..8).map(|k| json!({"name": format!("SETTING_{k}"), "value": format!("value-{k}-for-{name}")})).collect::<Vec<_>>(),
            "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10,
                "failureThreshold": 3, "successThreshold": 1, "timeoutSeconds": 1},
            "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": format!("kube-api-access-{i:05x}"), "readOnly": true},
                {"mountPath": "/etc/config", "name": "config"}],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
    };
    p["spec"]["containers"] = json!([container("app"), container("sidecar"), container("metrics")]);
    p["spec"]["volumes"] = json!([
        {"name": format!("kube-api-access-{i:05x}"), "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}},
            {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}}]}},
        {"name": "config", "configMap": {"name": "app-config", "defaultMode": 420}}]);
    p["metadata"]["generateName"] = json!("web-7d4b9c8f5-");
    p["metadata"]["labels"] = json!({"app": "bench", "v": "0", "pod-template-hash": "7d4b9c8f5", "team": "payments"});
    p["metadata"]["annotations"] = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "8080"});
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f5",
        "uid": "8e0f6c1a-1b2c-4d5e-8f90-123456789abc", "controller": true, "blockOwnerDeletion": true}]);
    p
}

fn settings() -> Settings {
    Settings {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        cluster_name: "bench".into(),
        cluster_domain: "cluster.local".into(),
        parent_id_template: Template::parse(
            "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}",
        )
        .unwrap(),
        ignore_namespaces: vec![],
        class_name: None,
        watch_classless: true,
        entry_id_prefix: "sigil.bench.c.".into(),
    }
}

fn policy() -> Policy {
    Policy {
        name: "bench".into(),
        rank: Rank { created: 1, deleting: false, uid: "policy-uid".into() }.into(),
        class_name: None,
        namespace_selector: LabelMatcher::everything(),
        pod_selector: LabelMatcher::everything(),
        spiffe_id: Template::parse(
            "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}/{{ .PodMeta.Name }}",
        )
        .unwrap(),
        workload_selectors: vec![],
        dns_names: vec![Template::parse("v{{ index .PodMeta.Labels \"v\" }}.{{ .PodMeta.Name }}.example").unwrap()],
        auto_populate_dns_names: false,
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        federates_with: vec![],
        admin: false,
        downstream: false,
        fallback: false,
        hint: String::new(),
    }
}

fn per_pod(bytes: isize, pods: usize) -> String {
    format!("{:>8.0} B/pod ({:.1} MiB)", bytes as f64 / pods as f64, bytes as f64 / 1048576.0)
}

fn run(kind: &str, pods: usize, make: fn(usize, &str, &str) -> serde_json::Value) {
    let namespaces = (pods / 100).max(1);
    let nodes = (pods / 500).max(1);
    println!("{kind} pod, {pods} pods / {namespaces} namespaces / {nodes} nodes:");
    let sample: K8sPod = serde_json::from_value(make(0, "bench-0", "node-0")).unwrap();
    println!("  one pod as Kubernetes JSON: {} B", serde_json::to_string(&sample).unwrap().len());

    let base = live();
    let mut w = World::new(settings());
    for n in 0..namespaces {
        w.upsert_namespace(Namespace {
            name: format!("bench-{n}"),
            labels: [("bench-run".to_string(), "x".to_string())].into_iter().collect(),
        });
    }
    for n in 0..nodes {
        let node: K8sNode = serde_json::from_value(json!({"metadata": {"name": format!("node-{n}"),
            "uid": format!("node-uid-{n}"), "labels": {"kubernetes.io/hostname": format!("node-{n}")}},
            "spec": {"podCIDR": "10.0.0.0/24"}}))
        .unwrap();
        w.upsert_node(node_from_k8s(node).unwrap());
    }
    let before_pods = live();
    for i in 0..pods {
        let p: K8sPod =
            serde_json::from_value(make(i, &format!("bench-{}", i % namespaces), &format!("node-{}", i % nodes)))
                .unwrap();
        w.upsert_pod(pod_from_k8s(p).unwrap());
    }
    println!("  pods as the world keeps them:          {}", per_pod(live() - before_pods, pods));
    let before_policy = live();
    w.upsert_policy(policy());
    drop(w.take_dirty());
    println!("  rendered entries and their indexes:    {}", per_pod(live() - before_policy, pods));
    let current_before = live();
    let current: HashMap<String, ServerCopy> = w
        .declared_ids()
        .filter_map(|id| w.desired(id)?.entry.to_entry())
        .map(|e| (e.id.clone(), ServerCopy::of(&e)))
        .collect();
    println!("  controller's copy of server entries:   {}", per_pod(live() - current_before, pods));
    println!("  total kept:                            {}", per_pod(live() - base, pods));
    PEAK.store(live().max(0) as usize, Ordering::Relaxed);
    let before_plan = live();
    let none = HashMap::new();
    let ids = world::full_plan_ids(&w, &none);
    let plan = world::plan(&w, ids.iter().take(1000).copied(), &none);
    drop(ids);
    println!(
        "  transient: a full pass's ID list and one slice's plan (1,000 creates): {:.1} MiB",
        (PEAK.load(Ordering::Relaxed) as isize - before_plan) as f64 / 1048576.0
    );
    drop(plan);
    drop(current);
    drop(w);
}

fn main() {
    let pods = std::env::var("SIGIL_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    run("bench", pods, bench_pod);
    run("realistic", pods, realistic_pod);
}
