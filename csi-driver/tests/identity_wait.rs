#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! NodePublishVolume with `-wait-for-identity` against a REAL agent's admin socket (a real sigil-server and
//! sigil-agent in-process, the agent attested with a join token) and real bind mounts (needs root):
//! - a pod no entry selects is mounted after the bound (never refused);
//! - a pod whose entry is created while its publish waits is mounted promptly once the SVID is signed;
//! - a repeated publish of a mounted target and a request without a pod UID are answered at once; an
//!   unreachable admin socket is tried again until the bound, then the volume is mounted; invalid requests
//!   stay InvalidArgument without waiting.

#[path = "../../node-agent/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sigil_csi_driver::identity::IdentityWait;
use sigil_csi_driver::mountinfo;
use sigil_csi_driver::service::{Driver, DriverConfig, Metrics};
use sigil_proto::csi::v1 as csi;
use sigil_proto::csi::v1::node_server::Node;
use sigil_proto::csi::v1::volume_capability::{AccessType, MountVolume};
use tonic::Request;

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "these tests need root (CI=true)");
    eprintln!("skipping: needs root for mount(2)");
    false
}

fn driver(dir: &Path, wait: Option<IdentityWait>) -> (Driver, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let cfg = DriverConfig {
        name: "csi.spiffe.io".into(),
        node_id: "node-1".into(),
        socket_dir: dir.join("sockets"),
        kubelet_dir: dir.join("kubelet"),
        identity_wait: wait,
    };
    (Driver::new(cfg, metrics.clone()), metrics)
}

fn target(dir: &Path, uid: &str) -> String {
    dir.join("kubelet/pods").join(uid).join("volumes/kubernetes.io~csi/spiffe/mount").display().to_string()
}

fn publish_req(target: &str, uid: Option<&str>) -> csi::NodePublishVolumeRequest {
    let mut ctx: std::collections::HashMap<String, String> = [
        ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
        ("csi.storage.k8s.io/pod.name".to_owned(), "web-0".to_owned()),
        ("csi.storage.k8s.io/pod.namespace".to_owned(), "default".to_owned()),
        ("csi.storage.k8s.io/serviceAccount.name".to_owned(), "web".to_owned()),
    ]
    .into();
    if let Some(uid) = uid {
        ctx.insert("csi.storage.k8s.io/pod.uid".into(), uid.into());
    }
    csi::NodePublishVolumeRequest {
        volume_id: "csi-0123".into(),
        target_path: target.into(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
        }),
        readonly: true,
        volume_context: ctx,
        ..Default::default()
    }
}

fn mounted(target: &str) -> bool {
    let entries = mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()).unwrap();
    let t = Path::new(target);
    !mountinfo::mounts_at(&entries, &t.canonicalize().unwrap_or_else(|_| t.to_path_buf())).is_empty()
}

async fn publish_timed(d: &Driver, req: csi::NodePublishVolumeRequest) -> Duration {
    let t = Instant::now();
    d.node_publish_volume(Request::new(req)).await.unwrap();
    t.elapsed()
}

async fn unpublish(d: &Driver, target: &str) {
    let req = csi::NodeUnpublishVolumeRequest { volume_id: "csi-0123".into(), target_path: target.into() };
    d.node_unpublish_volume(Request::new(req)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_for_the_pods_identity_at_the_real_agent() {
    if !root_or_skip() {
        return;
    }
    let stack = support::Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sockets")).unwrap();
    std::fs::create_dir_all(dir.path().join("kubelet/pods")).unwrap();
    let bound = Duration::from_secs(3);
    let (d, metrics) = driver(dir.path(), Some(IdentityWait { socket: stack.admin_socket.clone(), timeout: bound }));
    let mut targets = vec![];

    // No entry selects pod A: mounted after the bound, not refused.
    let a = support::pod_uid();
    let ta = target(dir.path(), &a);
    let took = publish_timed(&d, publish_req(&ta, Some(&a))).await;
    assert!(mounted(&ta));
    assert!(took >= bound && took < bound + Duration::from_secs(2), "{took:?}");
    targets.push(ta.clone());
    // Already mounted: success at once, no second wait.
    let took = publish_timed(&d, publish_req(&ta, Some(&a))).await;
    assert!(took < Duration::from_millis(500), "idempotent publish took {took:?}");

    // Pod B's entry is created while its publish waits: mounted promptly after that.
    let b = support::pod_uid();
    let tb = target(dir.path(), &b);
    let pending = {
        let (d, req) = (d.clone(), publish_req(&tb, Some(&b)));
        tokio::spawn(async move {
            d.node_publish_volume(Request::new(req)).await.unwrap();
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished() && !mounted(&tb), "B is not mounted before its identity exists");
    let created = Instant::now();
    stack.create_entry("spiffe://example.org/ns/default/sa/web", &[format!("k8s:pod-uid:{b}")]).await;
    let done = pending.await.unwrap();
    let latency = done.duration_since(created);
    eprintln!("entry creation -> NodePublishVolume returned: {latency:?}");
    assert!(latency < Duration::from_millis(1500), "{latency:?}");
    assert!(mounted(&tb));
    targets.push(tb);

    // No pod UID in the volume context (podInfoOnMount off): at once.
    let tc = target(dir.path(), "pod-without-uid");
    let took = publish_timed(&d, publish_req(&tc, None)).await;
    assert!(took < Duration::from_millis(500), "{took:?}");
    targets.push(tc);

    // Invalid requests: InvalidArgument first, without a wait.
    let mut bad = publish_req(&target(dir.path(), &support::pod_uid()), Some(&a));
    bad.readonly = false;
    let t = Instant::now();
    let st = d.node_publish_volume(Request::new(bad)).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert!(t.elapsed() < Duration::from_millis(500));

    let text = metrics.render();
    assert!(text.contains("sigil_csi_identity_wait_total{result=\"ready\"} 1"), "{text}");
    assert!(text.contains("sigil_csi_identity_wait_total{result=\"timeout\"} 1"), "{text}");
    assert!(text.contains("sigil_csi_identity_wait_total{result=\"unavailable\"} 0"), "{text}");

    // An admin socket nobody serves (the agent restarting): asked again until the bound, then mounted.
    let short = Duration::from_millis(800);
    let (d2, m2) =
        driver(dir.path(), Some(IdentityWait { socket: dir.path().join("no-agent/admin.sock"), timeout: short }));
    let e = support::pod_uid();
    let te = target(dir.path(), &e);
    let took = publish_timed(&d2, publish_req(&te, Some(&e))).await;
    assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(2500), "{took:?}");
    assert!(mounted(&te));
    assert!(m2.render().contains("sigil_csi_identity_wait_total{result=\"unavailable\"} 1"));
    targets.push(te);

    for t in &targets {
        unpublish(&d, t).await;
        assert!(!mounted(t));
    }
    stack.stop().await;
}
