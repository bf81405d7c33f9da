//! Kubernetes objects and tokens for the `k8s_psat` tests, made through a real API server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use sigil_server::config::K8sPsatCluster;

use crate::common::TestServer;

/// The host IP the tests give their pods (the api tier has no kubelet to set one).
pub const HOST_IP: &str = "10.9.8.7";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub fn psat_cluster(allow: &[&str], kube_config_file: Option<PathBuf>) -> K8sPsatCluster {
    K8sPsatCluster {
        service_account_allow_list: allow.iter().map(|s| s.to_string()).collect(),
        audience: vec!["spire-server".into()],
        kube_config_file,
        allowed_node_label_keys: Default::default(),
        allowed_pod_label_keys: Default::default(),
        use_pod_uid_for_agent_id: false,
    }
}

pub fn attestation_count(s: &TestServer, kind: &str, result: &str) -> u64 {
    s.server
        .state
        .metrics
        .attestations
        .get_or_create(&vec![("type".into(), kind.into()), ("result".into(), result.into())])
        .get()
}

/// A loopback address nothing listens on.
pub fn unused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A peer that accepts TCP and never says a word (not even the TLS handshake), and the kubeconfig of a
/// cluster at it. Abort the task to let the connections go.
pub async fn silent_api_server(dir: &Path) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (write_kubeconfig(dir, &format!("https://{addr}")), holder)
}

/// A kubeconfig for `server` (TLS not verified: these API servers never get that far).
pub fn write_kubeconfig(dir: &Path, server: &str) -> String {
    let path = dir.join("test.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: not-a-real-token\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A client of the test cluster named by `KUBECONFIG`.
pub struct Kube {
    pub client: kube::Client,
    pub path: PathBuf,
}

impl Kube {
    /// `None` (the test returns early) without `KUBECONFIG`, except under CI, where a test that needs the
    /// cluster must not pass without one.
    pub async fn from_env() -> Option<Self> {
        let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()).map(PathBuf::from) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but KUBECONFIG is not set: start the test cluster (e2e/cluster/cluster up --tier api)");
            }
            eprintln!("KUBECONFIG is not set: skipped (export KUBECONFIG=$(e2e/cluster/cluster up --tier api))");
            return None;
        };
        let kubeconfig = Kubeconfig::read_from(&path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
        Some(Self { client: kube::Client::try_from(config).unwrap(), path })
    }
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// A namespace with service account `spire-agent`, a node (labels `zone`, `secret`) and a pod of that
/// service account on that node (labels `app`, `secret`; host IP [`HOST_IP`]).
pub struct Fixture {
    pub ns: String,
    pub node: String,
    pub node_uid: String,
    pub pod: String,
    pub pod_uid: String,
    pub sa_uid: String,
}

fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

impl Fixture {
    pub async fn create(k: &Kube) -> Self {
        let id = suffix();
        let ns = format!("sigil-psat-{id}");
        let pp = PostParams::default();
        Api::<Namespace>::all(k.client.clone())
            .create(&pp, &object(serde_json::json!({ "metadata": { "name": ns } })))
            .await
            .unwrap();
        let sa: ServiceAccount = Api::namespaced(k.client.clone(), &ns)
            .create(&pp, &object(serde_json::json!({ "metadata": { "name": "spire-agent" } })))
            .await
            .unwrap();
        let node_name = format!("sigil-psat-node-{id}");
        let node: Node = Api::all(k.client.clone())
            .create(
                &pp,
                &object(serde_json::json!({
                    "metadata": { "name": node_name, "labels": { "zone": "z1", "secret": "s" } }
                })),
            )
            .await
            .unwrap();
        let mut f = Self {
            ns,
            node: node_name,
            node_uid: node.metadata.uid.unwrap(),
            pod: String::new(),
            pod_uid: String::new(),
            sa_uid: sa.metadata.uid.unwrap(),
        };
        (f.pod, f.pod_uid) = f.pod(k, "agent-0", "spire-agent").await;
        f
    }

    /// Creates a pod on the fixture's node (it stays Pending: no kubelet) and gives it a host IP.
    pub async fn pod(&self, k: &Kube, name: &str, sa: &str) -> (String, String) {
        let api: Api<Pod> = Api::namespaced(k.client.clone(), &self.ns);
        let pod: Pod = object(serde_json::json!({
            "metadata": { "name": name, "labels": { "app": "spire-agent", "secret": "s" } },
            "spec": {
                "nodeName": self.node,
                "serviceAccountName": sa,
                "containers": [{ "name": "agent", "image": "sigil.invalid/agent:1" }]
            }
        }));
        // The service account admission plugin may not see a just-created service account at once.
        let mut created = None;
        for _ in 0..50 {
            match api.create(&PostParams::default(), &pod).await {
                Ok(p) => {
                    created = Some(p);
                    break;
                }
                Err(e) => {
                    eprintln!("pod create: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let created = created.expect("pod created");
        let status = serde_json::json!({ "status": { "hostIP": HOST_IP, "hostIPs": [{ "ip": HOST_IP }] } });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
        (name.to_owned(), created.metadata.uid.unwrap())
    }

    /// A token of service account `sa` bound to the pod, from the TokenRequest API (no audiences = the
    /// API server's own).
    pub async fn token(&self, k: &Kube, sa: &str, pod: &str, pod_uid: &str, audiences: &[&str]) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.into()),
                    uid: Some(pod_uid.into()),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(k.client.clone(), &self.ns);
        let answer: TokenRequest = api.create_subresource("token", sa, &PostParams::default(), &request).await.unwrap();
        answer.status.unwrap().token
    }

    /// Claims as the API server writes them for a pod-bound token of `spire-agent` on the fixture's pod.
    pub fn claims(&self, audience: &str, iat: i64, exp: i64) -> serde_json::Value {
        serde_json::json!({
            "aud": [audience],
            "exp": exp,
            "iat": iat,
            "nbf": iat,
            "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": format!("system:serviceaccount:{}:spire-agent", self.ns),
            "kubernetes.io": {
                "namespace": self.ns,
                "node": { "name": self.node, "uid": self.node_uid },
                "pod": { "name": self.pod, "uid": self.pod_uid },
                "serviceaccount": { "name": "spire-agent", "uid": self.sa_uid }
            }
        })
    }

    pub async fn delete_pod(&self, k: &Kube, name: &str) {
        let api: Api<Pod> = Api::namespaced(k.client.clone(), &self.ns);
        api.delete(name, &DeleteParams::default().grace_period(0)).await.unwrap();
        for _ in 0..50 {
            if api.get_opt(name).await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pod {name} still exists");
    }

    /// Best effort: without a controller manager the namespace stays Terminating, which is harmless.
    pub async fn delete(&self, k: &Kube) {
        let _ = Api::<Pod>::namespaced(k.client.clone(), &self.ns)
            .delete(&self.pod, &DeleteParams::default().grace_period(0))
            .await;
        let _ = Api::<Node>::all(k.client.clone()).delete(&self.node, &DeleteParams::default()).await;
        let _ = Api::<Namespace>::all(k.client.clone()).delete(&self.ns, &DeleteParams::default()).await;
    }
}

/// Signs service account tokens with the test cluster's key, as the API server does (RS256).
pub struct SaSigner {
    key: ring::signature::RsaKeyPair,
    kid: String,
}

impl SaSigner {
    /// From `$SIGIL_CLUSTER_DIR/pki` (default `/tmp/sigil-cluster/pki`); `None` when the key is not there,
    /// except under CI.
    pub fn from_cluster_dir() -> Option<Self> {
        let dir =
            std::env::var_os("SIGIL_CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|| "/tmp/sigil-cluster".into());
        let key_path = dir.join("pki/sa.key");
        let Ok(key_pem) = std::fs::read_to_string(&key_path) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but {} is not readable", key_path.display());
            }
            eprintln!("{} is not readable: skipped", key_path.display());
            return None;
        };
        let der = pem::parse(key_pem).unwrap().into_contents();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        // The API server's key ID: base64url(sha256(PKIX public key DER)).
        let public = pem::parse(std::fs::read_to_string(dir.join("pki/sa.pub")).unwrap()).unwrap().into_contents();
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &public));
        Some(Self { key, kid })
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({ "alg": "RS256", "kid": self.kid });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let mut sig = vec![0; self.key.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        self.key.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}
