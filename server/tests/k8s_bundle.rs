//! The `k8sbundle` notifier: the server keeps a ConfigMap key holding its trust bundle as PEM.
//!
//! Tests without a cluster run against a small fake of the two ConfigMap calls the notifier makes (GET,
//! merge PATCH with a resourceVersion precondition), so every branch runs here: fill, leave other keys,
//! no rewrite, missing then created, forbidden, conflicts, a silent API server, changes during retries,
//! bursts.
//!
//! `#[ignore]` tests need a real kube-apiserver (`e2e/cluster/cluster up --tier api`):
//!
//! ```sh
//! export KUBECONFIG=$(e2e/cluster/cluster up --tier api)
//! cargo test -p sigil-server --test k8s_bundle -- --ignored
//! ```
//!
//! They create a namespace of their own (and in it the ConfigMap, as the Helm chart would), start a server
//! with `[notifier.k8sbundle] kube_config_file = $KUBECONFIG` and watch the ConfigMap. With `CI=true` and
//! no `KUBECONFIG` they fail instead of passing unrun.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod k8s_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_support::{Kube, silent_api_server, unused_addr, write_kubeconfig};
use kube::api::{Api, DeleteParams, PostParams};
use sigil_core::TrustDomain;
use sigil_core::bundle::Bundle;
use sigil_server::config::K8sBundleConfig;
use sigil_server::metrics::Metrics;
use sigil_server::notifier::k8sbundle::{K8sBundleNotifier, SyncError, Synced};
use tokio::sync::watch;

const KEY: &str = "bundle.crt";

fn notifier_toml(namespace: &str, config_map: &str, kubeconfig: &str) -> String {
    format!(
        "[notifier.k8sbundle]\nnamespace = \"{namespace}\"\nconfig_map = \"{config_map}\"\nconfig_map_key = \"{KEY}\"\nkube_config_file = \"{kubeconfig}\"\n"
    )
}

fn writes(m: &Metrics, result: &'static str) -> u64 {
    m.bundle_notifier_writes_of(result)
}

/// Polls `f` every 100 ms until it is true; false after `bound`.
async fn eventually(bound: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + bound;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ----- a fake of the ConfigMap API -----

#[derive(Default)]
struct FakeState {
    /// `None`: the ConfigMap does not exist.
    data: Option<BTreeMap<String, String>>,
    resource_version: u64,
    forbidden: bool,
    /// The next this many PATCHes answer 409 (as if someone wrote in between).
    conflicts: u32,
    gets: u32,
    /// Every PATCH: its query string and body.
    patches: Vec<(String, serde_json::Value)>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    (StatusCode::from_u16(code).unwrap(), [("content-type", "application/json")], body.to_string()).into_response()
}

impl FakeState {
    fn object(&self, ns: &str, name: &str) -> Response {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": ns, "resourceVersion": self.resource_version.to_string() },
            "data": self.data,
        });
        ([("content-type", "application/json")], body.to_string()).into_response()
    }
}

async fn fake_get(State(f): State<Fake>, UrlPath((ns, name)): UrlPath<(String, String)>) -> Response {
    let mut s = f.0.lock().unwrap();
    s.gets += 1;
    if s.forbidden {
        return status(403, "Forbidden", &format!("configmaps \"{name}\" is forbidden: cannot get"));
    }
    if s.data.is_none() {
        return status(404, "NotFound", &format!("configmaps \"{name}\" not found"));
    }
    s.object(&ns, &name)
}

async fn fake_patch(
    State(f): State<Fake>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut s = f.0.lock().unwrap();
    let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
    s.patches.push((uri.query().unwrap_or_default().to_owned(), patch.clone()));
    if s.forbidden {
        return status(403, "Forbidden", "cannot patch");
    }
    if s.data.is_none() {
        return status(404, "NotFound", &format!("configmaps \"{name}\" not found"));
    }
    if s.conflicts > 0 {
        s.conflicts -= 1;
        s.resource_version += 1;
        return status(409, "Conflict", "the object has been modified");
    }
    let rv = patch["metadata"]["resourceVersion"].as_str().unwrap_or_default();
    if rv != s.resource_version.to_string() {
        return status(409, "Conflict", "the object has been modified");
    }
    let entries = patch["data"].as_object().cloned().unwrap_or_default();
    let data = s.data.get_or_insert_default();
    for (k, v) in entries {
        data.insert(k, v.as_str().unwrap().to_owned());
    }
    s.resource_version += 1;
    s.object(&ns, &name)
}

impl Fake {
    async fn serve() -> (Self, String) {
        let fake = Fake::default();
        fake.0.lock().unwrap().resource_version = 100;
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/configmaps/{name}", get(fake_get).patch(fake_patch))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, format!("http://{addr}"))
    }

    fn create(&self, data: &[(&str, &str)]) {
        let mut s = self.0.lock().unwrap();
        s.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        s.resource_version += 1;
    }

    fn value(&self, key: &str) -> Option<String> {
        self.0.lock().unwrap().data.as_ref().and_then(|d| d.get(key).cloned())
    }

    fn patches(&self) -> usize {
        self.0.lock().unwrap().patches.len()
    }
}

fn bundle_config(kubeconfig: &str) -> K8sBundleConfig {
    K8sBundleConfig {
        namespace: "sigil-system".into(),
        config_map: "sigil-bundle".into(),
        config_map_key: KEY.into(),
        kube_config_file: Some(kubeconfig.into()),
    }
}

async fn fake_notifier(dir: &std::path::Path) -> (Fake, K8sBundleNotifier) {
    let (fake, url) = Fake::serve().await;
    let kubeconfig = write_kubeconfig(dir, &url);
    let n = K8sBundleNotifier::connect(&bundle_config(&kubeconfig)).await.unwrap();
    (fake, n)
}

fn ca(cn: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().to_vec()
}

fn test_bundle(cas: &[&Vec<u8>], sequence: u64) -> Arc<Bundle> {
    Arc::new(Bundle {
        x509_authorities: cas.iter().map(|c| c.to_vec()).collect(),
        sequence,
        ..Bundle::new(TrustDomain::new(TD).unwrap())
    })
}

// ----- without a cluster -----

#[tokio::test]
async fn the_server_fills_the_key_leaves_other_keys_and_does_not_rewrite() {
    let (fake, url) = Fake::serve().await;
    fake.create(&[("other", "keep me")]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &url);
    let s = TestServer::start(&notifier_toml("sigil-system", "sigil-bundle", &kubeconfig)).await;
    let want = s.bundle().to_pem();
    assert!(want.starts_with("-----BEGIN CERTIFICATE-----"), "{want}");
    assert!(eventually(Duration::from_secs(10), async || fake.value(KEY).as_deref() == Some(want.as_str())).await);
    assert_eq!(fake.value("other").as_deref(), Some("keep me"));
    assert_eq!(writes(&s.server.state.metrics, "ok"), 1);
    assert_eq!(writes(&s.server.state.metrics, "error"), 0);
    {
        let st = fake.0.lock().unwrap();
        assert_eq!(st.patches.len(), 1);
        let (query, body) = &st.patches[0];
        assert!(query.contains("fieldManager=sigil-server"), "{query}");
        // Just the key, guarded by the resourceVersion read.
        assert_eq!(body["data"].as_object().unwrap().keys().collect::<Vec<_>>(), [KEY]);
        assert!(body["metadata"]["resourceVersion"].is_string(), "{body}");
    }
    // The metric is exposed under SPIRE-like naming.
    let metrics = reqwest_metrics(s.server.health_addr.unwrap()).await;
    assert!(metrics.contains("sigil_server_bundle_notifier_writes_total{result=\"ok\"} 1"), "{metrics}");
    let TestServer { dir: first_dir, server } = s;
    server.shutdown().await;

    // A restart finds the key current and writes nothing.
    let dir2 = tempfile::tempdir().unwrap();
    let data = first_dir.path().join("data");
    let mut cfg = config(dir2.path(), &notifier_toml("sigil-system", "sigil-bundle", &kubeconfig));
    cfg.data_dir = data;
    let again = sigil_server::run::start(cfg).await.unwrap();
    assert_eq!(again.state.bundle().to_pem(), want, "same CA after restart");
    assert!(eventually(Duration::from_secs(5), async || fake.0.lock().unwrap().gets >= 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.patches(), 1, "no rewrite of an identical key");
    assert_eq!(writes(&again.state.metrics, "ok"), 0);
    again.shutdown().await;
}

/// GET /metrics from the health listener (plain HTTP/1.1 by hand: no HTTP client in the dependencies).
async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn missing_config_map_is_an_error_until_it_is_created_then_it_is_filled() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, n) = fake_notifier(dir.path()).await;
    let (a, b) = (ca("a"), ca("b"));
    let err = n.sync("PEM").await.unwrap_err();
    assert!(matches!(err, SyncError::Missing { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("ConfigMap sigil-system/sigil-bundle does not exist: create it"), "{text}");
    assert!(text.contains("never creates it"), "{text}");
    assert_eq!(fake.patches(), 0, "never created by a PATCH");

    let metrics = Metrics::default();
    let (tx, rx) = watch::channel(test_bundle(&[&a], 1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(n.run(rx, stop_rx, metrics.clone()));
    assert!(eventually(Duration::from_secs(5), async || writes(&metrics, "error") >= 2).await);
    // A change during the retries is not lost: the retry renders the latest bundle.
    tx.send(test_bundle(&[&a, &b], 2)).unwrap();
    fake.create(&[("other", "x")]);
    let want = test_bundle(&[&a, &b], 2).to_pem();
    // Failures so far: at 0 s, 1 s (and maybe 3 s): the next retry is at most 4 s away.
    assert!(eventually(Duration::from_secs(6), async || fake.value(KEY).as_deref() == Some(want.as_str())).await);
    assert_eq!(writes(&metrics, "ok"), 1);
    assert_eq!(fake.value("other").as_deref(), Some("x"));
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn forbidden_names_the_config_map_and_the_rbac_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, n) = fake_notifier(dir.path()).await;
    fake.create(&[]);
    fake.0.lock().unwrap().forbidden = true;
    let err = n.sync("PEM").await.unwrap_err();
    assert!(matches!(err, SyncError::Forbidden { what: "GET", .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("ConfigMap sigil-system/sigil-bundle: GET forbidden"), "{text}");
    assert!(
        text.contains("`get` and `patch` on configmaps with resourceNames [sigil-bundle] in namespace sigil-system"),
        "{text}"
    );
}

#[tokio::test]
async fn conflicts_are_retried_from_a_new_get_and_give_up_after_five() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, n) = fake_notifier(dir.path()).await;
    fake.create(&[]);
    fake.0.lock().unwrap().conflicts = 2;
    assert_eq!(n.sync("PEM-1").await.unwrap(), Synced::Written);
    assert_eq!(fake.value(KEY).as_deref(), Some("PEM-1"));
    assert_eq!(fake.patches(), 3);
    assert_eq!(fake.0.lock().unwrap().gets, 3);
    assert_eq!(n.sync("PEM-1").await.unwrap(), Synced::Unchanged);
    assert_eq!(fake.patches(), 3);

    fake.0.lock().unwrap().conflicts = 100;
    let err = n.sync("PEM-2").await.unwrap_err();
    assert!(matches!(err, SyncError::Conflicts { .. }), "{err:?}");
    assert_eq!(fake.patches(), 8);
}

#[tokio::test]
async fn bundle_changes_are_written_and_a_burst_is_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, n) = fake_notifier(dir.path()).await;
    fake.create(&[]);
    let cas: Vec<Vec<u8>> = (0..6).map(|i| ca(&format!("ca{i}"))).collect();
    let metrics = Metrics::default();
    let (tx, rx) = watch::channel(test_bundle(&[&cas[0]], 1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(n.run(rx, stop_rx, metrics.clone()));
    let first = test_bundle(&[&cas[0]], 1).to_pem();
    assert!(eventually(Duration::from_secs(5), async || fake.value(KEY).as_deref() == Some(first.as_str())).await);
    assert_eq!(fake.patches(), 1);

    // A rotation: the prepared CA joins the bundle.
    let rotated = test_bundle(&[&cas[0], &cas[1]], 2);
    tx.send(rotated.clone()).unwrap();
    assert!(eventually(Duration::from_secs(5), async || fake.value(KEY) == Some(rotated.to_pem())).await);
    assert_eq!(fake.patches(), 2);

    // A burst: one write of the last bundle.
    for i in 2..6 {
        tx.send(test_bundle(&[&cas[i - 1], &cas[i]], i as u64 + 1)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = test_bundle(&[&cas[4], &cas[5]], 6).to_pem();
    assert!(eventually(Duration::from_secs(5), async || fake.value(KEY).as_deref() == Some(last.as_str())).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.patches(), 3, "the burst was written once");
    assert_eq!(writes(&metrics, "ok"), 3);

    // Someone overwrites the key: the next change puts the bundle back (the key is not watched).
    fake.create(&[(KEY, "tampered")]);
    tx.send(test_bundle(&[&cas[4], &cas[5]], 7)).unwrap();
    assert!(eventually(Duration::from_secs(5), async || fake.value(KEY).as_deref() == Some(last.as_str())).await);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_silent_api_server_ends_in_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, holder) = silent_api_server(dir.path()).await;
    let n = K8sBundleNotifier::connect(&bundle_config(&kubeconfig)).await.unwrap().with_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let err = n.sync("PEM").await.unwrap_err();
    assert!(matches!(err, SyncError::Timeout { what: "GET", .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "ConfigMap sigil-system/sigil-bundle: GET: no answer from the Kubernetes API server within 1 s"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    holder.abort();
}

#[tokio::test]
async fn an_unreachable_api_server_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &format!("https://{}", unused_addr()));
    let s = TestServer::start(&notifier_toml("spire", "spire-bundle", &kubeconfig)).await;
    assert!(eventually(Duration::from_secs(5), async || writes(&s.server.state.metrics, "error") >= 1).await);
    // The server serves all the same.
    attest(s.server.agent_addr, &s.join_token().await).await.unwrap();
    s.server.shutdown().await;
}

#[tokio::test]
async fn bad_kubeconfig_stops_the_start_naming_the_section() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.kubeconfig");
    let toml = notifier_toml("spire", "spire-bundle", missing.to_str().unwrap());
    let err = sigil_server::run::start(config(dir.path(), &toml)).await.err().unwrap().to_string();
    assert!(err.starts_with("bundle notifier: notifier.k8sbundle: kube_config_file "), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

// ----- against a real API server -----

/// A namespace of the test's own; deleted at the end (best effort: it may stay Terminating).
async fn namespace(k: &Kube) -> String {
    let ns = format!("sigil-bundle-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let obj: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": ns } })).unwrap();
    Api::<Namespace>::all(k.client.clone()).create(&PostParams::default(), &obj).await.unwrap();
    ns
}

async fn create_config_map(k: &Kube, ns: &str, name: &str, data: &[(&str, &str)]) {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    let obj: ConfigMap =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name }, "data": data })).unwrap();
    Api::<ConfigMap>::namespaced(k.client.clone(), ns).create(&PostParams::default(), &obj).await.unwrap();
}

async fn config_map_data(k: &Kube, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let cm = Api::<ConfigMap>::namespaced(k.client.clone(), ns).get_opt(name).await.unwrap()?;
    Some(cm.data.unwrap_or_default())
}

async fn drop_namespace(k: &Kube, ns: &str) {
    let _ = Api::<Namespace>::all(k.client.clone()).delete(ns, &DeleteParams::default()).await;
}

/// `sigil-server bundle show` (the binary, over the admin socket), as a user would compare.
fn bundle_show(s: &TestServer) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args(["bundle", "show", "-socketPath"])
        .arg(s.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

// Multi-threaded: `bundle show` blocks this thread while the server (same runtime) answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a kube-apiserver: KUBECONFIG"]
async fn real_the_server_fills_an_existing_config_map_with_bundle_show_and_leaves_other_keys() {
    let Some(k) = Kube::from_env().await else { return };
    let ns = namespace(&k).await;
    create_config_map(&k, &ns, "sigil-bundle", &[("other", "keep me")]).await;
    let s = TestServer::start(&notifier_toml(&ns, "sigil-bundle", k.path.to_str().unwrap())).await;
    let want = bundle_show(&s);
    assert!(want.contains("-----BEGIN CERTIFICATE-----"), "{want}");
    let mut data = None;
    let filled = eventually(Duration::from_secs(15), async || {
        data = config_map_data(&k, &ns, "sigil-bundle").await;
        data.as_ref().and_then(|d| d.get(KEY)) == Some(&want)
    })
    .await;
    assert!(filled, "ConfigMap {ns}/sigil-bundle: {data:?}");
    assert_eq!(data.unwrap().get("other").map(String::as_str), Some("keep me"));
    assert_eq!(writes(&s.server.state.metrics, "ok"), 1);
    assert_eq!(writes(&s.server.state.metrics, "error"), 0);
    // The patch was made by our field manager.
    let cm = Api::<ConfigMap>::namespaced(k.client.clone(), &ns).get("sigil-bundle").await.unwrap();
    let managers: Vec<String> =
        cm.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.iter().any(|m| m == "sigil-server"), "{managers:?}");
    s.server.shutdown().await;
    drop_namespace(&k, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a kube-apiserver: KUBECONFIG"]
async fn real_a_ca_rotation_reaches_the_config_map() {
    let Some(k) = Kube::from_env().await else { return };
    let ns = namespace(&k).await;
    create_config_map(&k, &ns, "sigil-bundle", &[]).await;
    // ca_ttl 1m: the next CA is prepared (and joins the bundle) half way, about 30 s after the start.
    let extra = format!("ca_ttl = \"1m\"\n{}", notifier_toml(&ns, "sigil-bundle", k.path.to_str().unwrap()));
    let s = TestServer::start(&extra).await;
    let before = s.bundle();
    assert_eq!(before.x509_authorities.len(), 1);
    let value = async || config_map_data(&k, &ns, "sigil-bundle").await.and_then(|d| d.get(KEY).cloned());
    assert!(eventually(Duration::from_secs(15), async || value().await == Some(before.to_pem())).await);

    let rotated = eventually(Duration::from_secs(50), async || {
        s.bundle().x509_authorities.iter().any(|a| !before.x509_authorities.contains(a))
    })
    .await;
    assert!(rotated, "no new CA in the bundle within 50 s (sequence {})", s.bundle().sequence);
    let rotated_at = Instant::now();
    // Within 10 s the ConfigMap holds the bundle as it is then (it may have moved on again).
    let mut got = None;
    let caught_up = eventually(Duration::from_secs(10), async || {
        got = value().await;
        got == Some(s.bundle().to_pem())
    })
    .await;
    assert!(caught_up, "after {:?}: {got:?}", rotated_at.elapsed());
    let published =
        sigil_core::bundle::Bundle::from_pem(TrustDomain::new(TD).unwrap(), got.unwrap().as_bytes()).unwrap();
    assert!(published.x509_authorities.len() >= 2, "old and new CA: {}", published.x509_authorities.len());
    assert!(writes(&s.server.state.metrics, "ok") >= 2);
    s.server.shutdown().await;
    drop_namespace(&k, &ns).await;
}

#[tokio::test]
#[ignore = "needs a kube-apiserver: KUBECONFIG"]
async fn real_a_missing_config_map_is_counted_then_filled_once_created() {
    let Some(k) = Kube::from_env().await else { return };
    let ns = namespace(&k).await;
    let s = TestServer::start(&notifier_toml(&ns, "sigil-bundle", k.path.to_str().unwrap())).await;
    let metrics = s.server.state.metrics.clone();
    assert!(eventually(Duration::from_secs(10), async || writes(&metrics, "error") >= 1).await);
    assert!(config_map_data(&k, &ns, "sigil-bundle").await.is_none(), "the server never creates it");
    create_config_map(&k, &ns, "sigil-bundle", &[("other", "x")]).await;
    let want = s.bundle().to_pem();
    // Backoff is at most 30 s; it is much less this early.
    let filled = eventually(Duration::from_secs(35), async || {
        config_map_data(&k, &ns, "sigil-bundle").await.and_then(|d| d.get(KEY).cloned()) == Some(want.clone())
    })
    .await;
    assert!(filled);
    assert_eq!(writes(&metrics, "ok"), 1);
    assert_eq!(config_map_data(&k, &ns, "sigil-bundle").await.unwrap().get("other").map(String::as_str), Some("x"));
    s.server.shutdown().await;
    drop_namespace(&k, &ns).await;
}
