//! The `k8s` workload attestor (SPIRE's `pkg/agent/plugin/workloadattestor/k8s`).
//!
//! A caller's `cgroup` file, read through its accept-time [`ProcHandle`], names its container (and
//! usually its pod); the kubelet's `/pods` list then gives the pod and container selectors (type `k8s`).
//! A process in no container (a host process) gets no `k8s` selectors and no error, so the `unix`
//! attestor alone applies to it. `/proc/<pid>/mountinfo` is not consulted: a container can forge it.
//!
//! ```toml
//! [workload_attestor.k8s]
//! kubelet_secure_port = 10250          # or kubelet_read_only_port = 10255 (plain HTTP), not both
//! skip_kubelet_verification = false
//! kubelet_ca_path = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
//! token_path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
//! # certificate_path = "...", private_key_path = "..."   (a pair; instead of the token)
//! use_anonymous_authentication = false
//! node_name_env = "MY_NODE_NAME"       # node_name = "..." wins; neither: https://127.0.0.1
//! max_poll_attempts = 60
//! poll_retry_interval = "500ms"
//! reload_interval = "1m"
//! disable_container_selectors = false
//! ```

pub mod cgroup;
pub mod kubelet;
pub mod pod;

use std::path::PathBuf;
use std::time::Duration;

use sigil_core::Selector;
use sigil_core::duration::parse_go_duration;

use crate::attest::{AttestError, ProcHandle, WorkloadAttestor};
use kubelet::{KubeletAuth, KubeletSettings, KubeletStats, PodCache, TlsVerify, Transport};

pub use cgroup::{ContainerInfo, parse_cgroup};

pub const DEFAULT_SECURE_PORT: u16 = 10250;
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const DEFAULT_NODE_NAME_ENV: &str = "MY_NODE_NAME";
pub const DEFAULT_MAX_POLL_ATTEMPTS: u32 = 60;
pub const DEFAULT_POLL_RETRY_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// `[workload_attestor.k8s]`, SPIRE's keys. Unknown keys are refused; SPIRE's keys for features this
/// attestor does not have (`sigstore`, `experimental`, `enable_namespace_labels`, `disable_kubelet_client`)
/// are unknown keys here.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct K8sAttestorConfig {
    /// Default 10250; 0 = unset (as in SPIRE's HCL).
    pub kubelet_secure_port: Option<u16>,
    pub kubelet_read_only_port: Option<u16>,
    pub skip_kubelet_verification: bool,
    pub kubelet_ca_path: Option<PathBuf>,
    pub token_path: Option<PathBuf>,
    pub certificate_path: Option<PathBuf>,
    pub private_key_path: Option<PathBuf>,
    pub use_anonymous_authentication: bool,
    pub node_name_env: Option<String>,
    pub node_name: Option<String>,
    /// Default 60; 0 = unset.
    pub max_poll_attempts: Option<u32>,
    /// Go duration, default `500ms`.
    pub poll_retry_interval: Option<String>,
    /// Go duration, default `1m`.
    pub reload_interval: Option<String>,
    pub disable_container_selectors: bool,
    /// SPIRE's default, `true`, is the only locator here; `false` is refused.
    pub use_new_container_locator: Option<bool>,
    /// Accepted for SPIRE configs; the locator logs at debug level.
    pub verbose_container_locator_logs: bool,
}

/// A `[workload_attestor.k8s]` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct K8sConfigError {
    pub key: &'static str,
    pub reason: String,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> K8sConfigError {
    K8sConfigError { key, reason: reason.into() }
}

impl K8sAttestorConfig {
    /// The node name: `node_name`, else the variable named by `node_name_env`, else none (127.0.0.1).
    pub fn node_name(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        let from_env = || env(self.node_name_env.as_deref().unwrap_or(DEFAULT_NODE_NAME_ENV));
        self.node_name.clone().filter(|n| !n.is_empty()).or_else(from_env).filter(|n| !n.is_empty())
    }

    /// Checks the keys and resolves defaults; `env` reads environment variables (the node name).
    pub fn settings(&self, env: impl Fn(&str) -> Option<String>) -> Result<KubeletSettings, K8sConfigError> {
        if self.use_new_container_locator == Some(false) {
            return Err(invalid("use_new_container_locator", "only the new container locator is implemented"));
        }
        let secure = self.kubelet_secure_port.filter(|p| *p != 0);
        let read_only = self.kubelet_read_only_port.filter(|p| *p != 0);
        let (transport, port) = match (secure, read_only) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "kubelet_read_only_port",
                    "cannot use both the read-only and the secure port (kubelet_secure_port)",
                ));
            }
            (_, Some(p)) => (Transport::ReadOnly, p),
            (s, None) => {
                let verify = if self.skip_kubelet_verification {
                    TlsVerify::Skip
                } else {
                    TlsVerify::CaFile(self.kubelet_ca_path.clone().unwrap_or_else(|| DEFAULT_CA_PATH.into()))
                };
                let auth = match (&self.certificate_path, &self.private_key_path) {
                    (Some(_), None) => {
                        return Err(invalid("private_key_path", "is required with certificate_path"));
                    }
                    (None, Some(_)) => {
                        return Err(invalid("certificate_path", "is required with private_key_path"));
                    }
                    _ if self.use_anonymous_authentication => KubeletAuth::Anonymous,
                    (Some(cert), Some(key)) => KubeletAuth::ClientCert { cert: cert.clone(), key: key.clone() },
                    (None, None) => {
                        KubeletAuth::Token(self.token_path.clone().unwrap_or_else(|| DEFAULT_TOKEN_PATH.into()))
                    }
                };
                (Transport::Secure { verify, auth }, s.unwrap_or(DEFAULT_SECURE_PORT))
            }
        };
        let duration = |key, v: &Option<String>, default| match v.as_deref() {
            None | Some("") => Ok(default),
            Some(text) => parse_go_duration(text).map_err(|e| invalid(key, e.to_string())),
        };
        let poll_retry_interval =
            duration("poll_retry_interval", &self.poll_retry_interval, DEFAULT_POLL_RETRY_INTERVAL)?;
        let reload_interval = duration("reload_interval", &self.reload_interval, DEFAULT_RELOAD_INTERVAL)?;
        Ok(KubeletSettings {
            transport,
            node_name: self.node_name(env),
            port,
            max_poll_attempts: self.max_poll_attempts.filter(|n| *n != 0).unwrap_or(DEFAULT_MAX_POLL_ATTEMPTS),
            poll_retry_interval,
            reload_interval,
            request_timeout: kubelet::DEFAULT_REQUEST_TIMEOUT,
            max_body_bytes: kubelet::DEFAULT_MAX_BODY_BYTES,
        })
    }
}

/// The `k8s` workload attestor.
#[derive(Debug)]
pub struct K8sAttestor {
    cache: PodCache,
    disable_container_selectors: bool,
}

impl K8sAttestor {
    /// From the configuration, the node name read from the environment. No file is read yet: the CA, the
    /// token and a client certificate are read when the kubelet is first asked (and re-read later).
    pub fn new(config: &K8sAttestorConfig) -> Result<Self, K8sConfigError> {
        let settings = config.settings(|name| std::env::var(name).ok())?;
        tracing::info!(
            node_name = settings.node_name.as_deref().unwrap_or("127.0.0.1"),
            port = settings.port,
            "k8s workload attestor configured"
        );
        Ok(Self::with_settings(settings, config.disable_container_selectors))
    }

    pub fn with_settings(settings: KubeletSettings, disable_container_selectors: bool) -> Self {
        Self { cache: PodCache::new(settings), disable_container_selectors }
    }

    /// Kubelet requests and pod-list parses so far.
    pub fn stats(&self) -> KubeletStats {
        self.cache.stats()
    }

    /// The selectors for a process whose `cgroup` file reads `cgroup`; none for a host process.
    pub async fn attest_cgroup(&self, cgroup: &str) -> Result<Vec<Selector>, AttestError> {
        let fail = |reason: String| AttestError::Attestor { attestor: "k8s", reason };
        let Some(info) = parse_cgroup(cgroup).map_err(|e| fail(e.to_string()))? else {
            return Ok(vec![]);
        };
        let values = self.cache.lookup(&info, self.disable_container_selectors).await.map_err(|e| {
            fail(format!("container {} (pod {}): {e}", info.container_id, info.pod_uid.as_deref().unwrap_or("?")))
        })?;
        values
            .iter()
            .map(|v| {
                Selector::new("k8s", v).map_err(|e| AttestError::Selector { attestor: "k8s", reason: e.to_string() })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl WorkloadAttestor for K8sAttestor {
    fn name(&self) -> &'static str {
        "k8s"
    }

    async fn attest(&self, process: &ProcHandle) -> Result<Vec<Selector>, AttestError> {
        // Through the accept-time handle: a reused PID fails here, and `attest_process` verifies the
        // process again after the attestors ran.
        let cgroup = process.read_to_string("cgroup")?;
        self.attest_cgroup(&cgroup).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::{Arc, Mutex};

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use serde_json::json;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn config_defaults_and_errors() {
        let parse = |t: &str| toml::from_str::<K8sAttestorConfig>(t).map_err(|e| e.to_string());
        let none = |_: &str| None;
        let s = parse("").unwrap().settings(none).unwrap();
        assert_eq!(s.port, 10250);
        assert_eq!(
            s.transport,
            Transport::Secure {
                verify: TlsVerify::CaFile(DEFAULT_CA_PATH.into()),
                auth: KubeletAuth::Token(DEFAULT_TOKEN_PATH.into())
            }
        );
        assert_eq!(
            (s.max_poll_attempts, s.poll_retry_interval, s.reload_interval),
            (60, Duration::from_millis(500), Duration::from_secs(60))
        );
        assert_eq!(s.node_name, None);
        let s = parse("kubelet_read_only_port = 10255\nmax_poll_attempts = 3\npoll_retry_interval = \"1.5s\"\nreload_interval = \"10s\"")
            .unwrap()
            .settings(none)
            .unwrap();
        assert_eq!((s.transport, s.port, s.max_poll_attempts), (Transport::ReadOnly, 10255, 3));
        assert_eq!((s.poll_retry_interval, s.reload_interval), (Duration::from_millis(1500), Duration::from_secs(10)));
        let s = parse("skip_kubelet_verification = true\ncertificate_path = \"c.pem\"\nprivate_key_path = \"k.pem\"")
            .unwrap()
            .settings(none)
            .unwrap();
        assert_eq!(
            s.transport,
            Transport::Secure {
                verify: TlsVerify::Skip,
                auth: KubeletAuth::ClientCert { cert: "c.pem".into(), key: "k.pem".into() }
            }
        );
        let s = parse("use_anonymous_authentication = true\nkubelet_secure_port = 0").unwrap().settings(none).unwrap();
        assert!(matches!(s.transport, Transport::Secure { auth: KubeletAuth::Anonymous, .. }));
        assert_eq!(s.port, 10250);
        let errors = [
            ("kubelet_secure_port = 10250\nkubelet_read_only_port = 10255", "kubelet_read_only_port"),
            ("certificate_path = \"c.pem\"", "private_key_path"),
            ("private_key_path = \"k.pem\"", "certificate_path"),
            ("poll_retry_interval = \"5\"", "poll_retry_interval"),
            ("reload_interval = \"soon\"", "reload_interval"),
            ("use_new_container_locator = false", "use_new_container_locator"),
        ];
        for (text, key) in errors {
            let err = parse(text).unwrap().settings(none).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
        for unknown in ["kubelet_port = 1", "sigstore = {}", "enable_namespace_labels = true"] {
            assert!(parse(unknown).is_err(), "{unknown}");
        }
    }

    #[test]
    fn agent_config_file_section() {
        use crate::config::{AgentConfig, FileConfig, Overrides};
        let text = "[agent]\ntrust_domain = \"example.org\"\nserver_address = \"s\"\n\n[workload_attestor.k8s]\nskip_kubelet_verification = true\nnode_name = \"n1\"\n";
        let c = AgentConfig::resolve(FileConfig::parse(text).unwrap(), Overrides::default()).unwrap();
        let k8s = c.k8s.unwrap();
        assert!(k8s.skip_kubelet_verification);
        assert_eq!(k8s.node_name.as_deref(), Some("n1"));
        assert!(K8sAttestor::new(&k8s).is_ok());
        let plain = text.split("\n\n").next().unwrap();
        assert!(AgentConfig::resolve(FileConfig::parse(plain).unwrap(), Overrides::default()).unwrap().k8s.is_none());
        let err = FileConfig::parse(&text.replace("node_name =", "nodename =")).unwrap_err();
        assert!(err.contains("nodename"), "{err}");
    }

    #[test]
    fn node_name_precedence() {
        let env = |name: &str| (name == "MY_NODE_NAME").then(|| "from-env".to_owned());
        let c = |t: &str| toml::from_str::<K8sAttestorConfig>(t).unwrap();
        assert_eq!(c("").node_name(env).as_deref(), Some("from-env"));
        assert_eq!(c("node_name = \"n1\"").node_name(env).as_deref(), Some("n1"));
        assert_eq!(c("node_name = \"\"").node_name(env).as_deref(), Some("from-env"));
        assert_eq!(c("node_name_env = \"OTHER\"").node_name(env), None);
        assert_eq!(c("").node_name(|_| Some(String::new())), None);
    }

    // A kubelet stand-in, only for what a real kubelet will not do on demand: fail, hang, send garbage or
    // too much, present another CA, count requests.

    #[derive(Clone)]
    enum Reply {
        Json(String),
        Slow(Duration, String),
        Status(u16, &'static str),
        Hang,
        /// A 200 without Content-Length: the body ends when the connection closes.
        Unsized(Vec<u8>),
    }

    type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

    struct Fake {
        port: u16,
        log: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Fake {
        fn requests(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    async fn fake_kubelet(tls: Option<Arc<rustls::ServerConfig>>, script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(vec![]));
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            while let Ok((tcp, _)) = listener.accept().await {
                let (script, log, acceptor) = (script.clone(), log2.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve_one(s, &script, &log).await
                            }
                        }
                        None => serve_one(tcp, &script, &log).await,
                    }
                });
            }
        });
        Fake { port, log, task }
    }

    async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, script: &Script, log: &Mutex<Vec<String>>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let n = {
            let mut l = log.lock().unwrap();
            l.push(String::from_utf8_lossy(&head).to_lowercase());
            l.len() - 1
        };
        let ok = |body: &str| {
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                .into_bytes()
        };
        let out = match script(n) {
            Reply::Json(body) => ok(&body),
            Reply::Slow(d, body) => {
                tokio::time::sleep(d).await;
                ok(&body)
            }
            Reply::Status(code, body) => {
                format!("HTTP/1.1 {code} Nope\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                    .into_bytes()
            }
            Reply::Unsized(body) => [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".as_slice(), &body].concat(),
            Reply::Hang => return std::future::pending().await,
        };
        let _ = s.write_all(&out).await;
        let _ = s.shutdown().await;
    }

    fn cid(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn uid(n: u8) -> String {
        format!("{n:08x}-0000-4000-8000-{n:012x}")
    }

    fn pod(n: u8, containers: &[u8]) -> serde_json::Value {
        let statuses: Vec<_> = containers
            .iter()
            .map(|c| {
                json!({"name": format!("c{c}"), "image": "app:1", "imageID": "app@sha256:00",
                       "containerID": format!("containerd://{}", cid(*c)), "ready": true})
            })
            .collect();
        json!({
            "metadata": {"name": format!("pod-{n}"), "namespace": "ns", "uid": uid(n), "labels": {"app": "a"}},
            "spec": {"serviceAccountName": "sa", "nodeName": "node-1"},
            "status": {"phase": "Running", "containerStatuses": statuses}
        })
    }

    fn list(pods: &[serde_json::Value]) -> String {
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods}).to_string()
    }

    fn cgroup_of(pod: u8, container: u8) -> String {
        format!(
            "12:pids:/kubepods/besteffort/pod{}/{}\n4:memory:/kubepods/besteffort/pod{}/{}\n0::/\n",
            uid(pod),
            cid(container),
            uid(pod),
            cid(container)
        )
    }

    fn settings(port: u16, transport: Transport) -> KubeletSettings {
        KubeletSettings {
            transport,
            node_name: None,
            port,
            max_poll_attempts: 5,
            poll_retry_interval: Duration::from_millis(20),
            reload_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
        }
    }

    fn always(reply: Reply) -> Script {
        Arc::new(move |_| reply.clone())
    }

    fn has(sels: &[Selector], v: &str) -> bool {
        sels.iter().any(|s| s.kind() == "k8s" && s.to_string() == format!("k8s:{v}"))
    }

    #[tokio::test]
    async fn read_only_port_then_cache_hits() {
        let fake = fake_kubelet(None, always(Reply::Json(list(&[pod(1, &[1, 2]), pod(2, &[3])])))).await;
        let a = K8sAttestor::with_settings(settings(fake.port, Transport::ReadOnly), false);
        let sels = a.attest_cgroup(&cgroup_of(1, 2)).await.unwrap();
        for v in ["pod-name:pod-1", "ns:ns", "sa:sa", "node-name:node-1", "container-name:c2", "pod-label:app:a"] {
            assert!(has(&sels, v), "{v}: {sels:?}");
        }
        assert_eq!(a.stats(), KubeletStats { requests: 1, parses: 1 });
        for _ in 0..50 {
            assert_eq!(a.attest_cgroup(&cgroup_of(1, 2)).await.unwrap(), sels);
            a.attest_cgroup(&cgroup_of(2, 3)).await.unwrap();
        }
        assert_eq!(a.stats(), KubeletStats { requests: 1, parses: 1 }, "cache hits send no request");
        let reqs = fake.requests();
        assert!(reqs[0].starts_with("get /pods http/1.1\r\n"), "{}", reqs[0]);
        assert!(!reqs[0].contains("authorization"), "the read-only port gets no token");
    }

    #[tokio::test]
    async fn host_process_gets_no_selectors_and_no_request() {
        let a = K8sAttestor::with_settings(settings(1, Transport::ReadOnly), false);
        for cg in ["0::/\n", "1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n0::/user.slice\n"] {
            assert_eq!(a.attest_cgroup(cg).await.unwrap(), vec![]);
        }
        assert_eq!(a.stats().requests, 0);
        let err = a.attest_cgroup(&format!("{}\n3:cpu:/kubepods/pod{}/{}", cgroup_of(1, 1), uid(2), cid(1))).await;
        assert!(err.unwrap_err().to_string().contains("two pod UIDs"));
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_reported() {
        let fake = fake_kubelet(None, always(Reply::Status(500, "etcd is sad"))).await;
        let mut s = settings(fake.port, Transport::ReadOnly);
        s.max_poll_attempts = 3;
        let a = K8sAttestor::with_settings(s, false);
        let err = a.attest_cgroup(&cgroup_of(1, 1)).await.unwrap_err().to_string();
        assert!(err.contains("kubelet unavailable") && err.contains("500") && err.contains("etcd is sad"), "{err}");
        assert_eq!(a.stats(), KubeletStats { requests: 3, parses: 0 });
    }

    #[tokio::test]
    async fn a_hanging_kubelet_times_out() {
        let fake = fake_kubelet(None, always(Reply::Hang)).await;
        let mut s = settings(fake.port, Transport::ReadOnly);
        (s.max_poll_attempts, s.request_timeout) = (1, Duration::from_millis(200));
        let a = K8sAttestor::with_settings(s, false);
        let t = std::time::Instant::now();
        let err = a.attest_cgroup(&cgroup_of(1, 1)).await.unwrap_err().to_string();
        assert!(err.contains("no answer within"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn garbage_and_oversized_bodies_are_refused() {
        let big = list(&(0..40).map(|n| pod(n, &[n])).collect::<Vec<_>>());
        let cases: Vec<(Reply, &str)> = vec![
            (Reply::Json("<html>502 Bad Gateway</html>".into()), "not valid JSON"),
            (Reply::Json("{\"items\": 7}".into()), "not valid JSON"),
            (Reply::Json(big.clone()), "larger than 4096 bytes"),
            (Reply::Unsized(big.into_bytes()), "larger than 4096 bytes"),
        ];
        for (reply, want) in cases {
            let fake = fake_kubelet(None, always(reply)).await;
            let mut s = settings(fake.port, Transport::ReadOnly);
            (s.max_poll_attempts, s.max_body_bytes) = (1, 4096);
            let a = K8sAttestor::with_settings(s, false);
            let err = a.attest_cgroup(&cgroup_of(1, 1)).await.unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[tokio::test]
    async fn a_container_appearing_on_the_third_fetch_is_found() {
        let script: Script =
            Arc::new(|n| Reply::Json(list(&if n < 2 { vec![pod(1, &[1])] } else { vec![pod(1, &[1, 2])] })));
        let fake = fake_kubelet(None, script).await;
        let a = K8sAttestor::with_settings(settings(fake.port, Transport::ReadOnly), false);
        let t = std::time::Instant::now();
        let sels = a.attest_cgroup(&cgroup_of(1, 2)).await.unwrap();
        assert!(has(&sels, "container-name:c2"));
        // Three requests, spaced by poll_retry_interval; the first two bodies are equal: parsed once.
        assert_eq!(a.stats(), KubeletStats { requests: 3, parses: 2 });
        assert!(t.elapsed() >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn never_listed_gives_up_after_max_poll_attempts() {
        let fake = fake_kubelet(None, always(Reply::Json(list(&[pod(1, &[1])])))).await;
        let a = K8sAttestor::with_settings(settings(fake.port, Transport::ReadOnly), false);
        let err = a.attest_cgroup(&cgroup_of(1, 9)).await.unwrap_err().to_string();
        assert!(err.contains("no selectors found after max poll attempts"), "{err}");
        assert_eq!(a.stats(), KubeletStats { requests: 5, parses: 1 });
        // disable_container_selectors: the pod is known, its selectors come at once.
        let a = K8sAttestor::with_settings(settings(fake.port, Transport::ReadOnly), true);
        let sels = a.attest_cgroup(&cgroup_of(1, 9)).await.unwrap();
        assert!(has(&sels, "pod-name:pod-1") && !sels.iter().any(|s| s.value().starts_with("container-")));
        assert_eq!(a.stats().requests, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_share_one_request() {
        let pods: Vec<_> = (1..=10).map(|n| pod(n, &[n])).collect();
        let fake = fake_kubelet(None, always(Reply::Slow(Duration::from_millis(100), list(&pods)))).await;
        let a = Arc::new(K8sAttestor::with_settings(settings(fake.port, Transport::ReadOnly), false));
        let calls: Vec<_> = (0..40u8)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move { a.attest_cgroup(&cgroup_of(i % 10 + 1, i % 10 + 1)).await })
            })
            .collect();
        for c in calls {
            assert!(!c.await.unwrap().unwrap().is_empty());
        }
        assert_eq!(a.stats(), KubeletStats { requests: 1, parses: 1 });
    }

    struct Pki {
        dir: tempfile::TempDir,
        server: Arc<rustls::ServerConfig>,
    }

    fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        (p, key, pem)
    }

    fn leaf(ca: &(CertificateParams, KeyPair, String), sans: &[&str]) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &Issuer::from_params(&ca.0, &ca.1)).unwrap();
        (cert.der().clone(), key)
    }

    /// A kubelet CA, a serving certificate naming only `localhost` (no IP SAN, as on AKS #6146), another
    /// CA, a client certificate; `require_client_cert` makes the server ask for one.
    fn pki(require_client_cert: bool) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let kubelet_ca = ca("kubelet-ca");
        let other_ca = ca("other-ca");
        std::fs::write(dir.path().join("ca.pem"), &kubelet_ca.2).unwrap();
        std::fs::write(dir.path().join("other.pem"), &other_ca.2).unwrap();
        std::fs::write(dir.path().join("token"), "t1\n").unwrap();
        let (client_cert, client_key) = leaf(&kubelet_ca, &["spire-agent"]);
        std::fs::write(dir.path().join("client.pem"), pem::encode(&pem::Pem::new("CERTIFICATE", client_cert.to_vec())))
            .unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        let (cert, key) = leaf(&kubelet_ca, &["localhost"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(kubelet_ca.2.as_bytes()).unwrap()).unwrap();
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
            )
        } else {
            b.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Pki { server: Arc::new(b.with_single_cert(vec![cert], key).unwrap()), dir }
    }

    use rustls::pki_types::pem::PemObject;

    #[tokio::test]
    async fn secure_port_verification_modes() {
        let pki = pki(false);
        let fake = fake_kubelet(Some(pki.server.clone()), always(Reply::Json(list(&[pod(1, &[1])])))).await;
        let path = |f: &str| pki.dir.path().join(f);
        let secure = |verify| Transport::Secure { verify, auth: KubeletAuth::Anonymous };
        let cases: Vec<(TlsVerify, Option<&str>, Result<(), &str>)> = vec![
            // 127.0.0.1: the chain is verified, the name is not (the certificate names only localhost).
            (TlsVerify::CaFile(path("ca.pem")), None, Ok(())),
            // A node name is checked against the certificate.
            (TlsVerify::CaFile(path("ca.pem")), Some("localhost"), Ok(())),
            (TlsVerify::CaFile(path("ca.pem")), Some("127.0.0.1"), Err("certificate")),
            // Another CA is refused, with and without a node name.
            (TlsVerify::CaFile(path("other.pem")), None, Err("certificate")),
            (TlsVerify::CaFile(path("other.pem")), Some("localhost"), Err("certificate")),
            (TlsVerify::CaFile(path("missing.pem")), None, Err("kubelet_ca_path")),
            // skip_kubelet_verification.
            (TlsVerify::Skip, None, Ok(())),
        ];
        for (verify, node, want) in cases {
            let mut s = settings(fake.port, secure(verify.clone()));
            (s.node_name, s.max_poll_attempts) = (node.map(str::to_owned), 1);
            let got = K8sAttestor::with_settings(s, false).attest_cgroup(&cgroup_of(1, 1)).await;
            match (want, got) {
                (Ok(()), Ok(sels)) => assert!(has(&sels, "pod-name:pod-1")),
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{verify:?} {node:?}: {e}"),
                (w, g) => panic!("{verify:?} {node:?}: want {w:?}, got {g:?}"),
            }
        }
        assert!(fake.requests().iter().all(|r| !r.contains("authorization")), "anonymous sends no token");
    }

    #[tokio::test]
    async fn bearer_token_is_reread_for_each_request() {
        let pki = pki(false);
        let script: Script =
            Arc::new(|n| Reply::Json(list(&(1..=n as u8 + 1).map(|p| pod(p, &[p])).collect::<Vec<_>>())));
        let fake = fake_kubelet(Some(pki.server.clone()), script).await;
        let token = pki.dir.path().join("token");
        let s =
            settings(fake.port, Transport::Secure { verify: TlsVerify::Skip, auth: KubeletAuth::Token(token.clone()) });
        let a = K8sAttestor::with_settings(s, false);
        a.attest_cgroup(&cgroup_of(1, 1)).await.unwrap();
        std::fs::write(&token, "t2").unwrap();
        a.attest_cgroup(&cgroup_of(2, 2)).await.unwrap();
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 2);
        assert!(reqs[0].contains("\r\nauthorization: bearer t1\r\n"), "{}", reqs[0]);
        assert!(reqs[1].contains("\r\nauthorization: bearer t2\r\n"), "{}", reqs[1]);
        std::fs::write(&token, "").unwrap();
        let err = a.attest_cgroup(&cgroup_of(3, 3)).await.unwrap_err().to_string();
        assert!(err.contains("token_path") && err.contains("empty"), "{err}");
    }

    #[tokio::test]
    async fn client_certificate_authentication() {
        let pki = pki(true);
        let fake = fake_kubelet(Some(pki.server.clone()), always(Reply::Json(list(&[pod(1, &[1])])))).await;
        let p = |f: &str| pki.dir.path().join(f);
        let with_auth = |auth| {
            let mut s = settings(fake.port, Transport::Secure { verify: TlsVerify::CaFile(p("ca.pem")), auth });
            s.max_poll_attempts = 1;
            K8sAttestor::with_settings(s, false)
        };
        let a = with_auth(KubeletAuth::ClientCert { cert: p("client.pem"), key: p("client.key") });
        assert!(has(&a.attest_cgroup(&cgroup_of(1, 1)).await.unwrap(), "pod-uid:00000001-0000-4000-8000-000000000001"));
        assert!(with_auth(KubeletAuth::Anonymous).attest_cgroup(&cgroup_of(1, 1)).await.is_err());
    }

    #[tokio::test]
    async fn attests_through_the_process_handle() {
        let fake = fake_kubelet(None, always(Reply::Json(list(&[pod(1, &[1])])))).await;
        let a = K8sAttestor::with_settings(settings(fake.port, Transport::ReadOnly), false);
        // A /proc stand-in: the handle reads `cgroup` below the directory it opened.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("4242");
        std::fs::create_dir(&dir).unwrap();
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        std::fs::write(dir.join("stat"), "4242 (app) S 1 4242 4242 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 777 1000 200 0")
            .unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\nGroups:\t\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/bin/sh", dir.join("exe")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup_of(1, 1)).unwrap();
        let handle = ProcHandle::open_in(root.path().to_str().unwrap(), 4242, uid, gid).unwrap();
        let attestors: Vec<Arc<dyn WorkloadAttestor>> = vec![Arc::new(a)];
        assert_eq!(attestors[0].name(), "k8s");
        let sels = crate::attest::attest_process(&attestors, &handle).await.unwrap();
        assert!(sels.contains(&Selector::new("k8s", "container-name:c1").unwrap()), "{sels:?}");
        std::fs::write(dir.join("cgroup"), "0::/\n").unwrap();
        assert!(crate::attest::attest_process(&attestors, &handle).await.unwrap().is_empty());
    }
}
