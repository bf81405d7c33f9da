//! The mount side of the driver: bind-mounting the agent socket directory onto pod targets (syscalls via
//! `nix::mount`, never a shelled-out `mount`).
//!
//! Choices:
//! - The bind is remounted read-only on the host too (`MS_BIND|MS_REMOUNT|MS_RDONLY`), so neither the
//!   workload nor anything else reaching the target through the pod's volume directory can write to the
//!   agent's socket directory. (Connecting to a Unix socket needs no write permission on the mount.)
//!   The anchor kept the host-side bind read-write so SELinux relabeling of the volume could succeed; on
//!   SELinux hosts label the agent socket directory for container access instead (e.g. `container_file_t`).
//! - Idempotent publish: a target that is already a mount point (per `/proc/self/mountinfo`) is not mounted
//!   again (the anchor once stacked mounts after kubelet restarts); a read-write leftover is made read-only.
//! - Unpublish unmounts every mount stacked on the target (so leftovers of older drivers go too), with a
//!   plain `umount2`, falling back to a lazy detach (`MNT_DETACH`) when the target is busy: the pod is
//!   already gone when the kubelet unpublishes, and a detached bind holds no resources once the last user
//!   closes it. Then the (now empty) target directory is removed with `rmdir`, never recursively.
//! - Targets are checked twice: lexically (see `validate`), then after resolving symlinks of the nearest
//!   existing ancestor, so a symlink inside the pods directory cannot redirect a mount elsewhere.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::mountinfo::{self, MountEntry};

/// At most this many stacked mounts are removed from one target.
const MAX_STACKED: usize = 64;

/// Errors of mount operations.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// A mount syscall failed.
    #[error("{op} {path}: {errno}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: String,
        /// The errno.
        errno: Errno,
    },
    /// mountinfo could not be parsed.
    #[error(transparent)]
    MountInfo(#[from] mountinfo::MountInfoError),
    /// The target resolves (through symlinks) outside the pods directory.
    #[error("target path {path} resolves to {resolved}, outside the kubelet pods directory {pods_dir}")]
    Escapes {
        /// The requested path.
        path: String,
        /// Where it resolves.
        resolved: String,
        /// The pods directory.
        pods_dir: String,
    },
    /// Unmounting left mounts on the target.
    #[error("{path} is still a mount point after {MAX_STACKED} unmounts")]
    StillMounted {
        /// The target.
        path: String,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.display().to_string();
    move |source| MountError::Io { op, path, source }
}

fn sys_err(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> MountError {
    let path = path.display().to_string();
    move |errno| MountError::Sys { op, path, errno }
}

/// What publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// A new read-only bind mount was made.
    Mounted,
    /// The target was already mounted; nothing was stacked.
    AlreadyMounted,
}

/// The health of a published volume, for NodeGetVolumeStats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// True when the volume is unusable.
    pub abnormal: bool,
    /// Why (empty when healthy).
    pub message: String,
}

/// Bind-mounts one socket directory onto targets inside one pods directory.
#[derive(Debug, Clone)]
pub struct Mounter {
    socket_dir: PathBuf,
    pods_dir: PathBuf,
}

impl Mounter {
    /// A mounter for `socket_dir` (the agent's Workload API socket directory) and the kubelet `pods_dir`.
    pub fn new(socket_dir: PathBuf, pods_dir: PathBuf) -> Self {
        Self { socket_dir, pods_dir }
    }

    /// The kubelet pods directory targets must be inside.
    pub fn pods_dir(&self) -> &Path {
        &self.pods_dir
    }

    /// Current mounts of this process's mount namespace.
    pub fn mounts() -> Result<Vec<MountEntry>, MountError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
        Ok(mountinfo::parse(&text)?)
    }

    /// Resolves symlinks of `target`'s nearest existing ancestor (or of `target` itself) and checks the
    /// result is inside the pods directory. Returns the resolved target path (for mountinfo comparison).
    fn resolve_inside(&self, target: &Path) -> Result<PathBuf, MountError> {
        let pods = self.pods_dir.canonicalize().map_err(io_err("resolve", &self.pods_dir))?;
        let mut existing = target.to_path_buf();
        let mut rest = vec![];
        while std::fs::symlink_metadata(&existing).is_err() {
            match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut resolved = existing.canonicalize().map_err(io_err("resolve", &existing))?;
        for name in rest.into_iter().rev() {
            resolved.push(name);
        }
        if resolved.strip_prefix(&pods).map(|r| r.components().count() >= 2).unwrap_or(false) {
            Ok(resolved)
        } else {
            Err(MountError::Escapes {
                path: target.display().to_string(),
                resolved: resolved.display().to_string(),
                pods_dir: pods.display().to_string(),
            })
        }
    }

    /// Whether `target` (already lexically validated) is a mount point now.
    pub fn is_mounted(&self, target: &Path) -> Result<bool, MountError> {
        let resolved = self.resolve_inside(target)?;
        Ok(!mountinfo::mounts_at(&Self::mounts()?, &resolved).is_empty())
    }

    /// Bind-mounts the socket directory read-only onto `target` (already lexically validated).
    pub fn publish(&self, target: &Path) -> Result<Published, MountError> {
        let resolved = self.resolve_inside(target)?;
        let mounts = Self::mounts()?;
        if let Some(top) = mountinfo::mounts_at(&mounts, &resolved).last() {
            if !top.read_only() {
                remount_read_only(&resolved)?;
            }
            return Ok(Published::AlreadyMounted);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&resolved)
            .map_err(io_err("create directory", &resolved))?;
        nix::mount::mount(Some(&self.socket_dir), &resolved, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(sys_err("bind mount onto", &resolved))?;
        if let Err(e) = remount_read_only(&resolved) {
            // Never leave a writable bind behind.
            let _ = nix::mount::umount2(&resolved, MntFlags::MNT_DETACH);
            return Err(e);
        }
        Ok(Published::Mounted)
    }

    /// Unmounts everything on `target` and removes the directory. A missing or unmounted target is fine.
    pub fn unpublish(&self, target: &Path) -> Result<(), MountError> {
        match std::fs::symlink_metadata(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("stat", target)(e)),
            Ok(_) => {}
        }
        let resolved = self.resolve_inside(target)?;
        let mut unmounted = 0;
        while !mountinfo::mounts_at(&Self::mounts()?, &resolved).is_empty() {
            if unmounted >= MAX_STACKED {
                return Err(MountError::StillMounted { path: resolved.display().to_string() });
            }
            match nix::mount::umount2(&resolved, MntFlags::empty()) {
                Ok(()) => {}
                Err(Errno::EBUSY) => {
                    nix::mount::umount2(&resolved, MntFlags::MNT_DETACH).map_err(sys_err("lazy unmount", &resolved))?
                }
                Err(Errno::EINVAL) => break,
                Err(e) => return Err(sys_err("unmount", &resolved)(e)),
            }
            unmounted += 1;
        }
        match std::fs::remove_dir(&resolved) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove directory", &resolved)(e)),
            _ => Ok(()),
        }
    }

    /// The condition of a published target: `None` when no such target exists.
    pub fn condition(&self, target: &Path) -> Result<Option<Condition>, MountError> {
        if std::fs::symlink_metadata(target).is_err() {
            return Ok(None);
        }
        let Ok(resolved) = self.resolve_inside(target) else {
            return Ok(None);
        };
        if mountinfo::mounts_at(&Self::mounts()?, &resolved).is_empty() {
            return Ok(Some(Condition {
                abnormal: true,
                message: format!("{} is no longer a mount point", target.display()),
            }));
        }
        for dir in [&resolved, &self.socket_dir] {
            if let Err(e) = std::fs::read_dir(dir) {
                return Ok(Some(Condition {
                    abnormal: true,
                    message: format!("socket directory unreadable at {}: {e}", dir.display()),
                }));
            }
        }
        Ok(Some(Condition { abnormal: false, message: String::new() }))
    }
}

fn remount_read_only(target: &Path) -> Result<(), MountError> {
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys_err("remount read-only", target))
}
