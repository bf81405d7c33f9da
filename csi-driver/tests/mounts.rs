#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Real bind mounts (needs root) through a real tonic client over the driver's real Unix sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use sigil_csi_driver::service::DriverConfig;
use sigil_csi_driver::{RunConfig, mountinfo, run};
use sigil_proto::csi::v1 as csi;
use sigil_proto::csi::v1::identity_client::IdentityClient;
use sigil_proto::csi::v1::node_client::NodeClient;
use sigil_proto::csi::v1::volume_capability::{AccessType, BlockVolume, MountVolume};
use sigil_proto::pluginregistration as reg;
use sigil_proto::pluginregistration::registration_client::RegistrationClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

impl Drop for Env {
    fn drop(&mut self) {
        self.detach_leftovers();
    }
}

struct Env {
    dir: tempfile::TempDir,
    csi: Channel,
    reg_socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    fn pods(&self) -> PathBuf {
        self.dir.path().join("kubelet/pods")
    }
    fn sockets(&self) -> PathBuf {
        self.dir.path().join("sockets")
    }
    fn target(&self, uid: &str) -> PathBuf {
        self.pods().join(uid).join("volumes/kubernetes.io~csi/spiffe/mount")
    }
    fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.csi.clone())
    }
    /// Lazily detaches every mount left under the temp dir (a failed test must not leak host mounts).
    fn detach_leftovers(&self) {
        let root = self.dir.path().canonicalize().unwrap_or_else(|_| self.dir.path().to_path_buf());
        for _ in 0..16 {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut left: Vec<PathBuf> = mountinfo::parse(&text)
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.mount_point)
                .filter(|m| m.starts_with(&root))
                .collect();
            if left.is_empty() {
                return;
            }
            left.sort();
            for m in left.iter().rev() {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t).await.unwrap().unwrap();
        }
    }
}

/// Root is needed for mount(2). Outside CI a non-root run skips with a message; in CI it fails.
fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "these tests need root (CI=true)");
    eprintln!("skipping: needs root for mount(2)");
    false
}

async fn channel(path: PathBuf) -> Channel {
    for _ in 0..100 {
        if path.exists() {
            let p = path.clone();
            let ch = Endpoint::from_static("http://csi")
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = p.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
                }))
                .await;
            if let Ok(ch) = ch {
                return ch;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no socket at {}", path.display());
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    std::fs::write(sockets.join("agent.sock"), b"stand-in for the agent socket").unwrap();
    std::fs::create_dir_all(dir.path().join("kubelet/pods")).unwrap();
    let csi_socket = dir.path().join("plugin/csi.sock");
    let reg_socket = dir.path().join("kubelet/plugins_registry/csi.spiffe.io-reg.sock");
    let cfg = RunConfig {
        driver: DriverConfig {
            name: "csi.spiffe.io".into(),
            node_id: "node-1".into(),
            socket_dir: sockets,
            kubelet_dir: dir.path().join("kubelet"),
            identity_wait: None,
        },
        csi_socket_path: csi_socket.clone(),
        registration: Some((reg_socket.clone(), "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock".into())),
        health_port: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run(cfg, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let csi = channel(csi_socket).await;
    Env { dir, csi, reg_socket, stop: Some(tx), task: Some(task) }
}

fn publish_req(target: &Path) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: "csi-0123".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
        }),
        readonly: true,
        volume_context: [
            ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
            ("csi.storage.k8s.io/pod.name".to_owned(), "web-0".to_owned()),
        ]
        .into(),
        ..Default::default()
    }
}

fn mounts_at(target: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let entries = mountinfo::parse(&text).unwrap();
    let resolved = target.canonicalize().unwrap_or_else(|_| target.to_path_buf());
    mountinfo::mounts_at(&entries, &resolved).len()
}

#[tokio::test]
async fn publish_is_read_only_idempotent_and_unpublish_cleans_up() {
    if !root_or_skip() {
        return;
    }
    let env = start().await;
    let target = env.target("pod-a");
    let mut node = env.node();

    node.node_publish_volume(publish_req(&target)).await.unwrap();
    assert_eq!(mounts_at(&target), 1);
    assert_eq!(std::fs::read(target.join("agent.sock")).unwrap(), b"stand-in for the agent socket");

    // Read-only: writing through the target fails with EROFS; the source stays writable for the agent.
    let err = std::fs::write(target.join("new-file"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");
    std::fs::write(env.sockets().join("from-agent"), b"y").unwrap();
    assert!(target.join("from-agent").exists());

    // Idempotent: a repeated publish (kubelet restart) stacks nothing.
    for _ in 0..3 {
        node.node_publish_volume(publish_req(&target)).await.unwrap();
    }
    assert_eq!(mounts_at(&target), 1);

    let stats = node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "csi-0123".into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.volume_condition, Some(csi::VolumeCondition { abnormal: false, message: String::new() }));

    let unpub =
        csi::NodeUnpublishVolumeRequest { volume_id: "csi-0123".into(), target_path: target.display().to_string() };
    node.node_unpublish_volume(unpub.clone()).await.unwrap();
    assert!(!target.exists());
    assert_eq!(mounts_at(&target), 0);
    assert!(env.sockets().join("agent.sock").exists(), "unpublish must not touch the socket dir");
    // Idempotent unpublish: a target that is gone is fine.
    node.node_unpublish_volume(unpub).await.unwrap();
    env.stop().await;
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[tokio::test]
async fn unpublish_removes_stacked_mounts_and_unmounted_targets() {
    if !root_or_skip() {
        return;
    }
    let env = start().await;
    let mut node = env.node();
    // Mounts stacked by an older driver (the anchor's kubelet-restart bug): all are removed.
    let stacked = env.target("pod-stacked");
    std::fs::create_dir_all(&stacked).unwrap();
    for _ in 0..3 {
        nix::mount::mount(Some(&env.sockets()), &stacked, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .unwrap();
        // Private, so the next bind on top does not propagate back onto the socket dir through / (rshared).
        nix::mount::mount(None::<&str>, &stacked, None::<&str>, nix::mount::MsFlags::MS_PRIVATE, None::<&str>).unwrap();
    }
    // With shared propagation on / the kernel may add propagated copies: at least 3.
    let stacked_count = mounts_at(&stacked);
    assert!(stacked_count >= 3, "{stacked_count}");
    // A read-write leftover is made read-only by publish, without stacking.
    node.node_publish_volume(publish_req(&stacked)).await.unwrap();
    assert_eq!(mounts_at(&stacked), stacked_count);
    assert!(std::fs::write(stacked.join("x"), b"x").is_err());
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: "v".into(),
        target_path: stacked.display().to_string(),
    })
    .await
    .unwrap();
    assert_eq!(mounts_at(&stacked), 0);
    assert!(!stacked.exists());

    // A plain directory that was never mounted: removed, success.
    let plain = env.target("pod-plain");
    std::fs::create_dir_all(&plain).unwrap();
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: "v".into(),
        target_path: plain.display().to_string(),
    })
    .await
    .unwrap();
    assert!(!plain.exists());
    env.stop().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_with_pod_spec_hints() {
    if !root_or_skip() {
        return;
    }
    let env = start().await;
    let mut node = env.node();
    let target = env.target("pod-b");
    type Edit = Box<dyn Fn(&mut csi::NodePublishVolumeRequest)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("read-write", Box::new(|r| r.readonly = false), "readOnly: true"),
        ("not ephemeral", Box::new(|r| r.volume_context.clear()), "ephemeral inline"),
        (
            "fsType",
            Box::new(|r| {
                r.volume_capability.as_mut().unwrap().access_type =
                    Some(AccessType::Mount(MountVolume { fs_type: "ext4".into(), ..Default::default() }))
            }),
            "remove `fsType`",
        ),
        (
            "mount flags",
            Box::new(|r| {
                r.volume_capability.as_mut().unwrap().access_type =
                    Some(AccessType::Mount(MountVolume { mount_flags: vec!["exec".into()], ..Default::default() }))
            }),
            "mount flags",
        ),
        (
            "block",
            Box::new(|r| r.volume_capability.as_mut().unwrap().access_type = Some(AccessType::Block(BlockVolume {}))),
            "mount access type",
        ),
        ("outside pods dir", Box::new(|r| r.target_path = "/etc/sigil-test/x".into()), "outside the kubelet pods"),
        ("relative", Box::new(|r| r.target_path = "pods/u/x".into()), "absolute"),
        ("dotdot", Box::new(|r| r.target_path.push_str("/../../../../../../../etc")), "normalized"),
        ("no id", Box::new(|r| r.volume_id.clear()), "volume_id"),
        ("no target", Box::new(|r| r.target_path.clear()), "target_path"),
        ("no capability", Box::new(|r| r.volume_capability = None), "volume_capability"),
    ];
    for (name, edit, hint) in cases {
        let mut req = publish_req(&target);
        edit(&mut req);
        let st = node.node_publish_volume(req).await.unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{name}: {st:?}");
        assert!(st.message().contains(hint), "{name}: {:?} lacks {hint:?}", st.message());
    }
    assert!(!target.exists(), "refused requests create nothing");
    assert!(!Path::new("/etc/sigil-test").exists());

    // A symlink inside the pods dir pointing outside is refused after resolution.
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(env.pods().join("pod-link")).unwrap();
    std::os::unix::fs::symlink(&outside, env.pods().join("pod-link/volumes")).unwrap();
    let st = node.node_publish_volume(publish_req(&env.target("pod-link"))).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("resolves to"), "{st:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // Garbage and empty requests: InvalidArgument, never a crash.
    let st = node.node_publish_volume(csi::NodePublishVolumeRequest::default()).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let st = node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest::default()).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let st = node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "v".into(),
            target_path: "/etc/passwd/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let st = node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest::default()).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    let st = node.node_stage_volume(csi::NodeStageVolumeRequest::default()).await.unwrap_err();
    assert_eq!(st.code(), Code::Unimplemented);
    // Raw bytes that are not a valid protobuf message.
    let mut grpc = tonic::client::Grpc::new(env.csi.clone());
    grpc.ready().await.unwrap();
    let st = grpc
        .unary::<Vec<u8>, Vec<u8>, _>(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0x0f, 0x22]),
            http::uri::PathAndQuery::from_static("/csi.v1.Node/NodePublishVolume"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert!(matches!(st.code(), Code::Internal | Code::InvalidArgument), "{st:?}");
    // The driver still serves afterwards.
    node.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn volume_condition_and_identity_and_registration() {
    if !root_or_skip() {
        return;
    }
    let env = start().await;
    let mut node = env.node();
    let target = env.target("pod-c");
    let stats = |path: &Path| csi::NodeGetVolumeStatsRequest {
        volume_id: "v".into(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    };
    // Missing target: NotFound.
    let st = node.node_get_volume_stats(stats(&target)).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    // Outside the pods dir: NotFound, not probed.
    let st = node.node_get_volume_stats(stats(Path::new("/etc"))).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    // Published, then unmounted behind the driver's back: abnormal.
    node.node_publish_volume(publish_req(&target)).await.unwrap();
    nix::mount::umount2(&target, nix::mount::MntFlags::empty()).unwrap();
    let c = node.node_get_volume_stats(stats(&target)).await.unwrap().into_inner().volume_condition.unwrap();
    assert!(c.abnormal);
    assert!(c.message.contains("no longer a mount point"), "{}", c.message);

    let info = node.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-1");
    assert_eq!(info.max_volumes_per_node, 0);
    let caps = node.node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    let types: Vec<i32> = caps
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(csi::node_service_capability::Type::Rpc(r)) => r.r#type,
            None => -1,
        })
        .collect();
    assert_eq!(types, vec![4, 2], "VOLUME_CONDITION, GET_VOLUME_STATS");

    let mut id = IdentityClient::new(env.csi.clone());
    let pi = id.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(pi.name, "csi.spiffe.io");
    assert_eq!(pi.vendor_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(id.probe(csi::ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));
    assert!(
        id.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .is_empty()
    );

    let mut r = RegistrationClient::new(channel(env.reg_socket.clone()).await);
    let info = r.get_info(reg::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        info,
        reg::PluginInfo {
            r#type: "CSIPlugin".into(),
            name: "csi.spiffe.io".into(),
            endpoint: "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock".into(),
            supported_versions: vec!["1.0.0".into()],
        }
    );
    r.notify_registration_status(reg::RegistrationStatus { plugin_registered: true, error: String::new() })
        .await
        .unwrap();
    let reg_socket = env.reg_socket.clone();
    let target_cleanup = target.clone();
    env.stop().await;
    assert!(!reg_socket.exists(), "the registration socket is removed at shutdown (kubelet deregisters)");
    let _ = std::fs::remove_dir(target_cleanup);
}

/// Sends and receives raw bytes, to feed the server garbage.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sockets")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = RunConfig {
        driver: DriverConfig {
            name: "csi.spiffe.io".into(),
            node_id: "node-1".into(),
            socket_dir: dir.path().join("sockets"),
            kubelet_dir: dir.path().join("kubelet"),
            identity_wait: None,
        },
        csi_socket_path: dir.path().join("csi.sock"),
        registration: None,
        health_port: Some(port),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(cfg, async move {
        let _ = rx.await;
    }));
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let mut health = None;
    for _ in 0..100 {
        if let Ok(r) = get("/healthz").await {
            health = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = health.expect("health endpoint never answered");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    let metrics = get("/metrics").await.unwrap();
    assert!(metrics.contains("sigil_csi_publish_total{result=\"ok\"} 0"), "{metrics}");
    // No registration socket without registration.
    assert!(!dir.path().join("kubelet/plugins_registry").exists());
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    assert!(!dir.path().join("csi.sock").exists(), "the CSI socket is removed at shutdown");
}

#[tokio::test]
async fn volume_condition_is_abnormal_when_the_socket_dir_is_gone() {
    if !root_or_skip() {
        return;
    }
    let env = start().await;
    let mut node = env.node();
    let target = env.target("pod-d");
    node.node_publish_volume(publish_req(&target)).await.unwrap();
    let req = csi::NodeGetVolumeStatsRequest {
        volume_id: "v".into(),
        volume_path: target.display().to_string(),
        staging_target_path: String::new(),
    };
    let c = node.node_get_volume_stats(req.clone()).await.unwrap().into_inner().volume_condition.unwrap();
    assert!(!c.abnormal, "{c:?}");
    // The agent's socket directory disappears (e.g. hostPath recreated): the condition says so.
    let moved = env.dir.path().join("sockets-moved");
    std::fs::rename(env.sockets(), &moved).unwrap();
    let c = node.node_get_volume_stats(req.clone()).await.unwrap().into_inner().volume_condition.unwrap();
    assert!(c.abnormal, "{c:?}");
    assert!(c.message.contains("socket directory unreadable"), "{}", c.message);
    std::fs::rename(&moved, env.sockets()).unwrap();
    let c = node.node_get_volume_stats(req).await.unwrap().into_inner().volume_condition.unwrap();
    assert!(!c.abnormal, "{c:?}");
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: "v".into(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    assert_eq!(mounts_at(&target), 0);
    env.stop().await;
}
