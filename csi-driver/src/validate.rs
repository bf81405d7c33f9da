//! Request validation and target-path rules, I/O-free. Every error maps to gRPC `InvalidArgument` and says
//! what to change in the pod spec.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use sigil_proto::csi::v1::volume_capability::AccessType;
use sigil_proto::csi::v1::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};

/// The volume-context key the kubelet sets on ephemeral inline volumes.
pub const EPHEMERAL_CONTEXT_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// A request the driver refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// volume_id is empty.
    #[error("volume_id is required")]
    MissingVolumeId,
    /// target_path is empty.
    #[error("target_path is required")]
    MissingTargetPath,
    /// volume_capability is absent.
    #[error("volume_capability is required")]
    MissingCapability,
    /// Block access type, or no access type.
    #[error(
        "only the mount access type is supported: use the volume as a filesystem volume \
         (an inline `csi:` volume mounted with volumeMounts, not volumeDevices)"
    )]
    NotMountAccess,
    /// fs_type is set.
    #[error("fsType {0:?} is not supported: remove `fsType` from the pod's `volumes[].csi` entry")]
    FsTypeSet(String),
    /// mount_flags are set.
    #[error("mount flags {0:?} are not supported: remove mount options for this volume")]
    MountFlagsSet(Vec<String>),
    /// readonly is false.
    #[error(
        "the volume must be read-only: set `readOnly: true` on the pod's `volumes[].csi` entry \
         (driver {driver})"
    )]
    NotReadOnly {
        /// The driver name, for the message.
        driver: String,
    },
    /// Not an ephemeral inline volume.
    #[error(
        "only ephemeral inline volumes are supported: declare the volume inline in the pod spec \
         (`volumes: [{{name: ..., csi: {{driver: {driver}, readOnly: true}}}}]`), not through a \
         PersistentVolume/PersistentVolumeClaim (volume context {key}={value:?}, want \"true\")"
    )]
    NotEphemeral {
        /// The driver name, for the message.
        driver: String,
        /// The context key.
        key: &'static str,
        /// The value found (empty when absent).
        value: String,
    },
    /// Path not absolute, has `.`/`..`, or has a NUL.
    #[error("target path {0:?} must be an absolute, normalized path (no `.` or `..` components)")]
    NotNormalized(String),
    /// Path outside the kubelet's pods directory.
    #[error("target path {path:?} is outside the kubelet pods directory {pods_dir:?}; refusing to mount there")]
    OutsidePodsDir {
        /// The requested path.
        path: String,
        /// The configured pods directory.
        pods_dir: String,
    },
}

/// Checks that `target` is an absolute, normalized path at least two levels inside `pods_dir`
/// (`<pods>/<pod-uid>/...`). Returns it as a `PathBuf` without trailing slashes.
pub fn check_target_path(target: &str, pods_dir: &Path) -> Result<PathBuf, RequestError> {
    if target.is_empty() {
        return Err(RequestError::MissingTargetPath);
    }
    let path = Path::new(target);
    let normalized = path.is_absolute()
        && !target.contains('\0')
        && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !target.split('/').skip(1).any(|seg| seg == "." || seg == "..");
    if !normalized {
        return Err(RequestError::NotNormalized(target.to_owned()));
    }
    let clean: PathBuf = path.components().collect();
    let inside = clean.strip_prefix(pods_dir).map(|rest| rest.components().count() >= 2).unwrap_or(false);
    if !inside {
        return Err(RequestError::OutsidePodsDir { path: target.to_owned(), pods_dir: pods_dir.display().to_string() });
    }
    Ok(clean)
}

fn check_capability(cap: Option<&VolumeCapability>) -> Result<(), RequestError> {
    let cap = cap.ok_or(RequestError::MissingCapability)?;
    match &cap.access_type {
        Some(AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() {
                return Err(RequestError::FsTypeSet(m.fs_type.clone()));
            }
            if !m.mount_flags.is_empty() {
                return Err(RequestError::MountFlagsSet(m.mount_flags.clone()));
            }
            Ok(())
        }
        Some(AccessType::Block(_)) | None => Err(RequestError::NotMountAccess),
    }
}

fn check_ephemeral(ctx: &HashMap<String, String>, driver: &str) -> Result<(), RequestError> {
    let value = ctx.get(EPHEMERAL_CONTEXT_KEY).cloned().unwrap_or_default();
    if value == "true" {
        Ok(())
    } else {
        Err(RequestError::NotEphemeral { driver: driver.to_owned(), key: EPHEMERAL_CONTEXT_KEY, value })
    }
}

/// Validates a NodePublishVolume request; returns the normalized target path.
/// Order: volume id, target path (presence), capability, read-only, ephemeral, path location.
pub fn validate_publish(
    req: &NodePublishVolumeRequest,
    pods_dir: &Path,
    driver: &str,
) -> Result<PathBuf, RequestError> {
    if req.volume_id.is_empty() {
        return Err(RequestError::MissingVolumeId);
    }
    if req.target_path.is_empty() {
        return Err(RequestError::MissingTargetPath);
    }
    check_capability(req.volume_capability.as_ref())?;
    if !req.readonly {
        return Err(RequestError::NotReadOnly { driver: driver.to_owned() });
    }
    check_ephemeral(&req.volume_context, driver)?;
    check_target_path(&req.target_path, pods_dir)
}

/// Validates a NodeUnpublishVolume request; returns the normalized target path.
pub fn validate_unpublish(req: &NodeUnpublishVolumeRequest, pods_dir: &Path) -> Result<PathBuf, RequestError> {
    if req.volume_id.is_empty() {
        return Err(RequestError::MissingVolumeId);
    }
    check_target_path(&req.target_path, pods_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_proto::csi::v1::volume_capability::{BlockVolume, MountVolume};

    const PODS: &str = "/var/lib/kubelet/pods";
    const TARGET: &str = "/var/lib/kubelet/pods/0d1c/volumes/kubernetes.io~csi/spiffe/mount";

    fn good() -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: TARGET.into(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: None,
            }),
            readonly: true,
            volume_context: [(EPHEMERAL_CONTEXT_KEY.to_owned(), "true".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn publish_table() {
        type Edit = fn(&mut NodePublishVolumeRequest);
        let cases: Vec<(&str, Edit, Result<PathBuf, RequestError>)> = vec![
            ("good", |_| {}, Ok(PathBuf::from(TARGET))),
            ("trailing slash", |r| r.target_path.push('/'), Ok(PathBuf::from(TARGET))),
            ("no id", |r| r.volume_id.clear(), Err(RequestError::MissingVolumeId)),
            ("no target", |r| r.target_path.clear(), Err(RequestError::MissingTargetPath)),
            ("no cap", |r| r.volume_capability = None, Err(RequestError::MissingCapability)),
            (
                "block",
                |r| {
                    r.volume_capability = Some(VolumeCapability {
                        access_type: Some(AccessType::Block(BlockVolume {})),
                        access_mode: None,
                    })
                },
                Err(RequestError::NotMountAccess),
            ),
            (
                "no access type",
                |r| r.volume_capability = Some(VolumeCapability::default()),
                Err(RequestError::NotMountAccess),
            ),
            (
                "fstype",
                |r| {
                    r.volume_capability = Some(VolumeCapability {
                        access_type: Some(AccessType::Mount(MountVolume {
                            fs_type: "ext4".into(),
                            ..Default::default()
                        })),
                        access_mode: None,
                    })
                },
                Err(RequestError::FsTypeSet("ext4".into())),
            ),
            (
                "flags",
                |r| {
                    r.volume_capability = Some(VolumeCapability {
                        access_type: Some(AccessType::Mount(MountVolume {
                            mount_flags: vec!["noexec".into()],
                            ..Default::default()
                        })),
                        access_mode: None,
                    })
                },
                Err(RequestError::MountFlagsSet(vec!["noexec".into()])),
            ),
            ("rw", |r| r.readonly = false, Err(RequestError::NotReadOnly { driver: "csi.spiffe.io".into() })),
            (
                "not ephemeral",
                |r| r.volume_context.clear(),
                Err(RequestError::NotEphemeral {
                    driver: "csi.spiffe.io".into(),
                    key: EPHEMERAL_CONTEXT_KEY,
                    value: String::new(),
                }),
            ),
            (
                "ephemeral false",
                |r| {
                    r.volume_context.insert(EPHEMERAL_CONTEXT_KEY.into(), "false".into());
                },
                Err(RequestError::NotEphemeral {
                    driver: "csi.spiffe.io".into(),
                    key: EPHEMERAL_CONTEXT_KEY,
                    value: "false".into(),
                }),
            ),
            (
                "outside",
                |r| r.target_path = "/etc/x/y".into(),
                Err(RequestError::OutsidePodsDir { path: "/etc/x/y".into(), pods_dir: PODS.into() }),
            ),
            (
                "dotdot",
                |r| r.target_path = "/var/lib/kubelet/pods/u/../../../../etc".into(),
                Err(RequestError::NotNormalized("/var/lib/kubelet/pods/u/../../../../etc".into())),
            ),
        ];
        for (name, edit, want) in cases {
            let mut r = good();
            edit(&mut r);
            assert_eq!(validate_publish(&r, Path::new(PODS), "csi.spiffe.io"), want, "{name}");
        }
    }

    #[test]
    fn target_path_table() {
        let pods = Path::new(PODS);
        for (path, ok) in [
            (TARGET, true),
            ("/var/lib/kubelet/pods/uid/x", true),
            ("/var/lib/kubelet/pods/uid", false),
            ("/var/lib/kubelet/pods", false),
            ("/var/lib/kubelet/pods/", false),
            ("/var/lib/kubelet/podsX/uid/x", false),
            ("/var/lib/kubelet/plugins/x/y", false),
            ("var/lib/kubelet/pods/uid/x", false),
            ("/var/lib/kubelet/pods/uid/./x", false),
            ("/var/lib/kubelet/pods/uid/../x", false),
            ("/var/lib/kubelet/pods/uid/x\0", false),
            ("/", false),
            ("", false),
        ] {
            assert_eq!(check_target_path(path, pods).is_ok(), ok, "{path:?}");
        }
    }

    #[test]
    fn messages_tell_what_to_put_in_the_pod_spec() {
        let ro = RequestError::NotReadOnly { driver: "csi.spiffe.io".into() }.to_string();
        assert!(ro.contains("readOnly: true"), "{ro}");
        let eph =
            RequestError::NotEphemeral { driver: "csi.spiffe.io".into(), key: EPHEMERAL_CONTEXT_KEY, value: "".into() }
                .to_string();
        assert!(eph.contains("driver: csi.spiffe.io, readOnly: true"), "{eph}");
        assert!(RequestError::FsTypeSet("xfs".into()).to_string().contains("remove `fsType`"));
    }

    #[test]
    fn unpublish_table() {
        let pods = Path::new(PODS);
        let ok = NodeUnpublishVolumeRequest { volume_id: "v".into(), target_path: TARGET.into() };
        assert_eq!(validate_unpublish(&ok, pods), Ok(PathBuf::from(TARGET)));
        let no_id = NodeUnpublishVolumeRequest { volume_id: "".into(), target_path: TARGET.into() };
        assert_eq!(validate_unpublish(&no_id, pods), Err(RequestError::MissingVolumeId));
        let no_path = NodeUnpublishVolumeRequest { volume_id: "v".into(), target_path: "".into() };
        assert_eq!(validate_unpublish(&no_path, pods), Err(RequestError::MissingTargetPath));
        let out = NodeUnpublishVolumeRequest { volume_id: "v".into(), target_path: "/tmp/a/b".into() };
        assert!(matches!(validate_unpublish(&out, pods), Err(RequestError::OutsidePodsDir { .. })));
    }
}
