//! Shared by the api-tier tests and the scale benchmark: a real `sigil-server`, real `sigil-operator`
//! processes, and Kubernetes objects on the real API server named by `$KUBECONFIG`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sigil_core::RegistrationEntry;
use sigil_operator::server_client::AdminClient;

pub const TRUST_DOMAIN: &str = "example.org";

/// The directory holding the workspace's built binaries (sigil-operator's, so sigil-server must be built too).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sigil-operator")).parent().unwrap().to_path_buf()
}

pub fn server_bin() -> PathBuf {
    let p = std::env::var_os("SIGIL_SERVER_BIN").map(PathBuf::from).unwrap_or_else(|| bin_dir().join("sigil-server"));
    assert!(p.exists(), "{} is missing: build it first (cargo build -p sigil-server)", p.display());
    p
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn kubectl() -> PathBuf {
    let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sigil-e2e/bin/kubectl");
    if cached.exists() { cached } else { PathBuf::from("kubectl") }
}

/// A short random suffix so runs and tests never share object names.
pub fn suffix() -> String {
    let n: u32 = rand_u32();
    format!("{n:08x}")
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).unwrap();
    u32::from_le_bytes(b)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Server {
    child: Child,
    pub socket: PathBuf,
    pub client: AdminClient,
}

impl Server {
    pub async fn spawn(dir: &Path) -> Server {
        Self::spawn_as(dir, TRUST_DOMAIN, None).await
    }

    /// A server of `trust_domain`, with `config_toml` (e.g. a bundle endpoint) as its config file if given.
    pub async fn spawn_as(dir: &Path, trust_domain: &str, config_toml: Option<&str>) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("admin/api.sock");
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut cmd = Command::new(server_bin());
        if let Some(toml) = config_toml {
            let path = dir.join("server.toml");
            std::fs::write(&path, toml).unwrap();
            cmd.arg("run").arg("-config").arg(path);
        } else {
            cmd.arg("run");
        }
        let child = cmd
            .args(["-trustDomain", trust_domain, "-bindAddress", "127.0.0.1", "-serverPort", "0", "-healthPort", "0"])
            .arg("-dataDir")
            .arg(dir.join("data"))
            .arg("-socketPath")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let client = AdminClient::new(&socket);
        let s = Server { child, socket, client };
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.client.list_entries_where(|_| true).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "sigil-server did not come up; see {}",
                dir.join("server.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's entries whose ID starts with `prefix`.
    pub async fn entries(&self, prefix: &str) -> HashMap<String, RegistrationEntry> {
        self.client.list_entries_where(|id| id.starts_with(prefix)).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Operator {
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `sigil-operator` with this YAML config (the socket path, metrics and health ports are added).
    pub fn spawn(dir: &Path, name: &str, server: &Server, config_yaml: &str) -> Operator {
        Self::spawn_env(dir, name, server, config_yaml, &[])
    }

    /// As [`Operator::spawn`], with extra environment (e.g. another KUBECONFIG).
    pub fn spawn_env(dir: &Path, name: &str, server: &Server, config_yaml: &str, env: &[(&str, &str)]) -> Operator {
        let metrics_port = free_port();
        let config = dir.join(format!("{name}.yaml"));
        let yaml = format!(
            "{config_yaml}\nserverSocketPath: {}\nmetrics:\n  bindAddress: 127.0.0.1:{metrics_port}\nhealth:\n  healthProbeBindAddress: \"0\"\n",
            server.socket.display()
        );
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sigil-operator"))
            .arg("-config")
            .arg(&config)
            .env("RUST_LOG", "info,sigil_operator=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Operator { child: Some(child), metrics_port, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The value of a metric line starting with `name` (labels included in `name` if given), or None.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.metrics_port, "/metrics").await?;
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    }

    pub async fn is_leader(&self) -> bool {
        self.metric("sigil_operator_leader ").await == Some(1.0)
    }

    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (the operator releases its lease on the way out).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    Some(buf.split_once("\r\n\r\n")?.1.to_string())
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn kube() -> kube::Client {
    assert!(std::env::var_os("KUBECONFIG").is_some(), "KUBECONFIG must name the api tier's kubeconfig");
    kube::Client::try_default().await.unwrap()
}

/// `kubectl apply -f crds/` and wait until the CRDs are established.
pub fn install_crds() {
    let crds = workspace_root().join("crds");
    let out = Command::new(kubectl()).arg("apply").arg("-f").arg(&crds).output().unwrap();
    assert!(out.status.success(), "kubectl apply crds: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(kubectl())
        .args(["wait", "--for=condition=Established", "--timeout=60s"])
        .args([
            "crd/clusterspiffeids.sigil.dev",
            "crd/clusterstaticentries.sigil.dev",
            "crd/clusterfederatedtrustdomains.sigil.dev",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl wait crds: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A namespace with its `default` ServiceAccount (the api tier runs no controller-manager to make it).
pub async fn create_namespace(k: &kube::Client, name: &str, l: &[(&str, &str)]) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels(l)}})).unwrap();
    Api::<Namespace>::all(k.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    Api::<ServiceAccount>::namespaced(k.clone(), name).create(&PostParams::default(), &sa).await.unwrap();
}

pub async fn set_namespace_labels(k: &kube::Client, name: &str, l: &[(&str, &str)]) {
    let patch = json!({"metadata": {"labels": labels(l)}});
    Api::<Namespace>::all(k.clone()).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// A Node object (no kubelet behind it); returns its UID.
pub async fn create_node(k: &kube::Client, name: &str) -> String {
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"sigil-test": "true"}}})).unwrap();
    let n = Api::<Node>::all(k.clone()).create(&PostParams::default(), &node).await.unwrap();
    n.metadata.uid.unwrap()
}

pub async fn delete_node(k: &kube::Client, name: &str) {
    let _ = Api::<Node>::all(k.clone()).delete(name, &DeleteParams::default()).await;
}

pub fn pod_object(name: &str, node: &str, l: &[(&str, &str)], sa: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels(l)},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        }
    }))
    .unwrap()
}

/// Creates a pod bound to `node` (nodeName set: no scheduler needed); returns its UID.
pub async fn create_pod(k: &kube::Client, ns: &str, name: &str, node: &str, l: &[(&str, &str)]) -> String {
    let p = Api::<Pod>::namespaced(k.clone(), ns)
        .create(&PostParams::default(), &pod_object(name, node, l, "default"))
        .await;
    p.unwrap().metadata.uid.unwrap()
}

pub async fn set_pod_labels(k: &kube::Client, ns: &str, name: &str, l: &[(&str, &str)]) {
    let patch = json!({"metadata": {"labels": labels(l)}});
    Api::<Pod>::namespaced(k.clone(), ns).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// Deletes a pod at once (grace period 0: no kubelet will confirm a graceful deletion at this tier).
pub async fn delete_pod_now(k: &kube::Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(k.clone(), ns)
        .delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .unwrap();
}

/// Applies a manifest with kubectl (stdin), asserting success.
pub fn kubectl_apply(yaml: &str) {
    use std::io::Write;
    let mut child = Command::new(kubectl())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `kubectl <args>` with `yaml` on stdin: whether it succeeded, and what it printed (stdout and stderr).
pub fn kubectl_stdin(args: &[&str], yaml: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(kubectl())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn kubectl_delete(kind: &str, name: &str) {
    let out =
        Command::new(kubectl()).args(["delete", kind, name, "--ignore-not-found", "--wait=false"]).output().unwrap();
    assert!(out.status.success(), "kubectl delete {kind} {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `kubectl get -o json` of one object.
pub fn kubectl_get_json(kind: &str, name: &str) -> serde_json::Value {
    let out = Command::new(kubectl()).args(["get", kind, name, "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "kubectl get {kind} {name}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kubectl` output (stdout) of a command that must succeed.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = Command::new(kubectl()).args(args).output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A kubeconfig for the same API server that authenticates with a bearer token (a ServiceAccount's).
pub fn token_kubeconfig(dir: &Path, token: &str) -> PathBuf {
    let server = kubectl_ok(&["config", "view", "--raw", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"]);
    let ca_data = kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let ca = if ca_data.is_empty() {
        let path = kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ]);
        format!("certificate-authority: {path}")
    } else {
        format!("certificate-authority-data: {ca_data}")
    };
    let path = dir.join("sa.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    path
}

/// The identity of an entry, as the server's uniqueness rule sees it.
pub fn identity(e: &RegistrationEntry) -> (String, String, Vec<String>) {
    let mut s: Vec<String> = e.selectors.iter().map(|s| s.to_string()).collect();
    s.sort();
    (e.spiffe_id.to_string(), e.parent_id.to_string(), s)
}
