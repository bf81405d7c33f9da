//! The directory a service's Unix socket lives in.
//!
//! Whoever can write to that directory, or to any directory above it that is not sticky, can replace the
//! socket with one of their own, and clients (root's CLI among them) then talk to them. SPIRE's default
//! paths are under `/tmp`, where any local user can create `/tmp/sigil-agent` first. So before binding, a
//! service checks the whole path ([`prepare_socket_dir`]) and refuses, with a message that says what to
//! do, when:
//! - the socket's directory is a symlink, or is owned by anyone but root or the service's own uid, or is
//!   writable by group or others (a private directory must not be open to them at all);
//! - a directory above it is owned by anyone else, or is writable by group or others without the sticky
//!   bit (`/tmp` itself, root's and sticky, is fine);
//! - a symlink on the way is owned by anyone else (it could be pointed elsewhere).
//!
//! Missing directories are created with the directory's mode, so a fresh default path always passes.
//!
//! One exception, for pods ([`prepare_socket_dir_with`]): a *shared volume* named by the service's
//! configuration may be writable by others although it is not sticky, if it is a mount point. A Kubernetes
//! emptyDir that a server shares with a sidecar is root-owned mode 0777; it is a volume only that pod's
//! containers see, so "others" are the pod's own containers. The socket's directory below it is still
//! created by the service and checked as usual (0700 for a private socket), and every other directory on
//! the path is checked as before. The pod's containers are trusted not to rename that directory away; a
//! directory of the same name on a host (not a mount point) is refused as before.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Who may own a socket directory and the directories above it: root and the service itself.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Why a socket directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum SocketDirError {
    #[error("socket directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "socket directory {path} is a symlink: refusing it (another user may control where it points); use a real directory"
    )]
    Symlink { path: PathBuf },
    #[error("socket path {path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "socket directory {path} is owned by uid {owner}, not by root or this service (uid {me}): that user could replace the socket. Remove it, or choose another socket path"
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "socket directory {path} has mode {mode:04o}: {who} could replace the socket. Run `chmod {fix} {path}`, or remove it and let the service create it"
    )]
    Mode { path: PathBuf, mode: u32, who: &'static str, fix: &'static str },
    #[error(
        "shared socket volume {path} is not a mount point (not listed in {MOUNTINFO}): only a volume mounted for this pod (an emptyDir) may be writable by others. Mount the volume there, or remove socket_shared_volume from the configuration"
    )]
    SharedVolumeNotMounted { path: PathBuf },
    #[error("shared socket volume {path}: {source}")]
    SharedVolume { path: PathBuf, source: io::Error },
    #[error(
        "shared socket volume {volume} is not above the socket directory {dir}: put the socket in a directory below the volume (for example {volume}/private/api.sock)"
    )]
    SharedVolumeNotAbove { volume: PathBuf, dir: PathBuf },
}

/// Creates `dir` (and what is missing above it) if needed, with mode 0700 when `private` (only the service
/// may even reach the socket) or 0755, and then checks the whole path (see the module documentation).
pub fn prepare_socket_dir(dir: &Path, private: bool) -> Result<(), SocketDirError> {
    prepare_socket_dir_with(dir, private, None)
}

/// [`prepare_socket_dir`], with `shared_volume` (a mount point strictly above `dir`) accepted although
/// others may write to it (see the module documentation). The volume is checked before anything is
/// created, so a missing or unmounted volume is never made up as a plain directory.
pub fn prepare_socket_dir_with(dir: &Path, private: bool, shared_volume: Option<&Path>) -> Result<(), SocketDirError> {
    // `api.sock` alone lives in the working directory.
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let shared = shared_volume.map(SharedVolume::open).transpose()?;
    let io_err = |source| SocketDirError::Io { path: dir.to_owned(), source };
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mode = if private { 0o700 } else { 0o755 };
            std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(io_err)?;
        }
        Err(e) => return Err(io_err(e)),
    }
    check_dir(dir, private, shared.as_ref())
}

/// Checks an existing socket directory and the path to it (see the module documentation).
pub fn check_socket_dir(dir: &Path, private: bool) -> Result<(), SocketDirError> {
    check_socket_dir_with(dir, private, None)
}

/// [`check_socket_dir`] with a shared volume (see [`prepare_socket_dir_with`]).
pub fn check_socket_dir_with(dir: &Path, private: bool, shared_volume: Option<&Path>) -> Result<(), SocketDirError> {
    let shared = shared_volume.map(SharedVolume::open).transpose()?;
    check_dir(dir, private, shared.as_ref())
}

/// A shared volume that was found to be a mount point, known by device and inode so that it is recognised
/// on the path as written and on the real path alike.
#[derive(Debug)]
struct SharedVolume {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SharedVolume {
    fn open(path: &Path) -> Result<Self, SocketDirError> {
        let err = |source| SocketDirError::SharedVolume { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(err)?;
        if !meta.is_dir() {
            return Err(SocketDirError::NotADirectory { path: path.to_owned() });
        }
        if !is_mount_point(path).map_err(err)? {
            return Err(SocketDirError::SharedVolumeNotMounted { path: path.to_owned() });
        }
        Ok(Self { path: path.to_owned(), dev: meta.dev(), ino: meta.ino() })
    }

    fn is(&self, meta: &std::fs::Metadata) -> bool {
        meta.dev() == self.dev && meta.ino() == self.ino
    }
}

/// Whether `path` is a mount point: its real path is listed in `/proc/self/mountinfo`.
///
/// Why mountinfo and not "its `st_dev` differs from its parent's": a bind mount of a directory from the
/// same filesystem (which is what a kubelet emptyDir is, a directory of the node's disk) keeps the
/// parent's `st_dev` whenever the container's root is on that filesystem too, so that check would refuse a
/// real volume; and a btrfs subvolume, which an unprivileged user may create, has its own `st_dev`
/// without being a mount, so that check would accept what nobody mounted. Mountinfo lists exactly the
/// mounts of this process's mount namespace, relative to its root, and only a privileged process (here:
/// the kubelet and the container runtime) can add one.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let real = std::fs::canonicalize(path)?;
    let text = std::fs::read_to_string(MOUNTINFO)?;
    Ok(mount_points(&text).any(|m| m == real))
}

/// The mount points (5th field) of `/proc/self/mountinfo` text, with the kernel's octal escapes (`\040`
/// for a space, `\011`, `\012`, `\134`) undone.
fn mount_points(text: &str) -> impl Iterator<Item = PathBuf> + '_ {
    text.lines().filter_map(|line| line.split(' ').nth(4)).map(|field| PathBuf::from(unescape_mountinfo(field)))
}

fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                // Values above 0o377 are not escapes the kernel writes; keep the text as it is.
                match u8::try_from(v) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 4;
                    }
                    Err(_) => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

fn check_dir(dir: &Path, private: bool, shared: Option<&SharedVolume>) -> Result<(), SocketDirError> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SocketDirError::Io { path, source }
    };
    let me = nix::unistd::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if meta.file_type().is_symlink() {
        return Err(SocketDirError::Symlink { path: dir.to_owned() });
    }
    if !meta.is_dir() {
        return Err(SocketDirError::NotADirectory { path: dir.to_owned() });
    }
    check_owner_and_mode(dir, &meta, me, if private { Strictness::Private } else { Strictness::Socket })?;
    if let Some(v) = shared
        && v.is(&meta)
    {
        // Not reached for an open volume (refused above as the socket's directory), but a closed one must
        // not be named as shared either: the socket lives in a directory of its own below it.
        return Err(SocketDirError::SharedVolumeNotAbove { volume: v.path.clone(), dir: dir.to_owned() });
    }
    let ancestor = |path: &Path, m: &std::fs::Metadata, seen: &mut bool| {
        let how = match shared {
            Some(v) if v.is(m) => {
                *seen = true;
                Strictness::SharedVolume
            }
            _ => Strictness::Ancestor,
        };
        check_owner_and_mode(path, m, me, how)
    };
    let mut seen_written = false;
    let mut seen_real = false;

    // The way as written: a symlink could be re-pointed by its owner, and replaced by whoever may write to
    // the directory holding it, so those directories count as ancestors too.
    let absolute =
        if dir.is_absolute() { dir.to_owned() } else { std::env::current_dir().map_err(io_err(dir))?.join(dir) };
    let mut prefix = PathBuf::new();
    for c in absolute.components() {
        if matches!(c, Component::CurDir) {
            continue;
        }
        if !prefix.as_os_str().is_empty() && prefix != absolute {
            let m = std::fs::metadata(&prefix).map_err(io_err(&prefix))?;
            ancestor(&prefix, &m, &mut seen_written)?;
        }
        prefix.push(c);
        let m = std::fs::symlink_metadata(&prefix).map_err(io_err(&prefix))?;
        if m.file_type().is_symlink() && !trusted(m.uid()) {
            return Err(SocketDirError::Owner { path: prefix, owner: m.uid(), me });
        }
    }
    // The directories the path really goes through.
    let real = std::fs::canonicalize(dir).map_err(io_err(dir))?;
    for dir_above in real.ancestors().skip(1) {
        let m = std::fs::metadata(dir_above).map_err(io_err(dir_above))?;
        ancestor(dir_above, &m, &mut seen_real)?;
    }
    if let Some(v) = shared
        && !(seen_written && seen_real)
    {
        return Err(SocketDirError::SharedVolumeNotAbove { volume: v.path.clone(), dir: dir.to_owned() });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Above the socket's directory: writable by others only with the sticky bit.
    Ancestor,
    /// The socket's directory: nobody else may write to it.
    Socket,
    /// A private socket's directory: nobody else may even enter it.
    Private,
    /// The configured shared volume above the socket's directory, a mount point: others may write to it.
    SharedVolume,
}

fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata, me: u32, how: Strictness) -> Result<(), SocketDirError> {
    if !trusted(meta.uid()) {
        return Err(SocketDirError::Owner { path: path.to_owned(), owner: meta.uid(), me });
    }
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let writable_by_others = mode & 0o022 != 0;
    let mode_err = |who, fix| SocketDirError::Mode { path: path.to_owned(), mode, who, fix };
    match how {
        Strictness::Ancestor if writable_by_others && !sticky => Err(mode_err("other users", "o-w,g-w")),
        Strictness::Socket if writable_by_others => Err(mode_err("other users", "go-w")),
        Strictness::Private if mode & 0o077 != 0 => Err(mode_err("other users (a private socket directory)", "700")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn missing_directories_are_created_with_the_right_mode_and_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let public = tmp.path().join("a/b/public");
        prepare_socket_dir(&public, false).unwrap();
        assert_eq!(std::fs::metadata(&public).unwrap().mode() & 0o777, 0o755);
        let private = tmp.path().join("c/private");
        prepare_socket_dir(&private, true).unwrap();
        assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        // A second start finds them and accepts them.
        prepare_socket_dir(&public, false).unwrap();
        prepare_socket_dir(&private, true).unwrap();
    }

    #[test]
    fn open_modes_and_symlinks_are_refused_with_a_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("sock");
        std::fs::create_dir(&d).unwrap();
        chmod(&d, 0o777);
        let e = check_socket_dir(&d, false).unwrap_err();
        assert!(matches!(e, SocketDirError::Mode { mode: 0o777, .. }), "{e}");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        chmod(&d, 0o1777);
        assert!(matches!(check_socket_dir(&d, false), Err(SocketDirError::Mode { .. })), "sticky is no excuse here");
        chmod(&d, 0o755);
        check_socket_dir(&d, false).unwrap();
        let e = check_socket_dir(&d, true).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
        chmod(&d, 0o700);
        check_socket_dir(&d, true).unwrap();

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(matches!(check_socket_dir(&link, false), Err(SocketDirError::Symlink { .. })));
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(check_socket_dir(&file, false), Err(SocketDirError::NotADirectory { .. })));
    }

    #[test]
    fn a_symlink_in_a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good");
        prepare_socket_dir(&good, false).unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::os::unix::fs::symlink(&good, open.join("link")).unwrap();
        check_socket_dir(&open.join("link").join("."), false).unwrap();
        chmod(&open, 0o777);
        let e = check_socket_dir(&open.join("link").join("."), false).unwrap_err();
        assert!(matches!(&e, SocketDirError::Mode { path, .. } if path == &open), "{e}");
    }

    #[test]
    fn an_ancestor_writable_by_others_is_refused_unless_sticky() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        let d = shared.join("sigil/public");
        prepare_socket_dir(&d, false).unwrap();
        chmod(&shared, 0o777);
        let e = check_socket_dir(&d, false).unwrap_err();
        assert!(matches!(&e, SocketDirError::Mode { path, .. } if path == &shared), "{e}");
        chmod(&shared, 0o1777);
        check_socket_dir(&d, false).unwrap();
        // Relative paths are checked as the absolute path they stand for.
        let here = std::env::current_dir().unwrap();
        let rel = pathdiff(&d, &here);
        check_socket_dir(&rel, false).unwrap();
    }

    #[test]
    fn a_directory_or_link_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can hand a directory to another uid; CI runs as root
        }
        let other = Some(nix::unistd::Uid::from_raw(3000));
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("public");
        prepare_socket_dir(&d, false).unwrap();
        nix::unistd::chown(&d, other, None).unwrap();
        let e = check_socket_dir(&d, false).unwrap_err();
        assert!(matches!(e, SocketDirError::Owner { owner: 3000, .. }), "{e}");
        assert!(e.to_string().contains("owned by uid 3000"), "{e}");
        assert!(prepare_socket_dir(&d, false).is_err(), "an existing directory is never taken over");

        let parent = tmp.path().join("parent");
        let below = parent.join("public");
        prepare_socket_dir(&below, false).unwrap();
        nix::unistd::chown(&parent, other, None).unwrap();
        assert!(matches!(check_socket_dir(&below, false), Err(SocketDirError::Owner { owner: 3000, .. })));

        let good = tmp.path().join("good");
        prepare_socket_dir(&good, false).unwrap();
        let link = tmp.path().join("via");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        check_socket_dir(&link.join("good"), false).unwrap();
        nix::unistd::fchownat(nix::fcntl::AT_FDCWD, &link, other, None, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .unwrap();
        let e = check_socket_dir(&link.join("good"), false).unwrap_err();
        assert!(matches!(&e, SocketDirError::Owner { path, owner: 3000, .. } if path == &link), "{e}");
    }

    #[test]
    fn mountinfo_mount_points_are_read_with_escapes_undone() {
        let text = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    90 27 0:50 / /run/sigil/admin rw,relatime shared:5 - tmpfs tmpfs rw\n\
                    91 27 0:51 /x /var/with\\040space rw - ext4 /dev/vdb rw\n\
                    92 27 0:52 / /a\\134b\\011c rw - ext4 /dev/vdc rw\n\
                    93 27 0:53 / /odd\\9z\\777 rw - ext4 /dev/vdd rw\n\
                    short line\n";
        let got: Vec<PathBuf> = mount_points(text).collect();
        let want: Vec<PathBuf> = ["/proc", "/", "/run/sigil/admin", "/var/with space", "/a\\b\tc", "/odd\\9z\\777"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_mount_point_predicate() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        let cases: &[(&Path, bool)] = &[(Path::new("/proc"), true), (Path::new("/"), true), (&plain, false)];
        for (path, want) in cases {
            assert_eq!(is_mount_point(path).unwrap(), *want, "{}", path.display());
        }
        // The real path counts: a symlink to a mount point names that mount point.
        let link = tmp.path().join("to-proc");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        assert!(is_mount_point(&link).unwrap());
        assert!(is_mount_point(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn a_shared_volume_that_is_not_a_mount_point_is_still_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = tmp.path().join("admin");
        std::fs::create_dir(&volume).unwrap();
        chmod(&volume, 0o777); // what an emptyDir looks like
        let dir = volume.join("private");
        let e = prepare_socket_dir_with(&dir, true, Some(&volume)).unwrap_err();
        assert!(matches!(&e, SocketDirError::SharedVolumeNotMounted { path } if path == &volume), "{e}");
        let text = e.to_string();
        assert!(text.contains("is not a mount point (not listed in /proc/self/mountinfo)"), "{text}");
        assert!(text.contains("remove socket_shared_volume"), "{text}");
        assert!(!dir.exists(), "nothing is created below a refused volume");
        // Without naming it, the open directory is refused as any other.
        let e = prepare_socket_dir(&dir, true).unwrap_err();
        assert!(matches!(&e, SocketDirError::Mode { path, .. } if path == &volume), "{e}");
        // A missing volume is not made up as a plain directory.
        let missing = tmp.path().join("missing");
        let e = prepare_socket_dir_with(&missing.join("private"), true, Some(&missing)).unwrap_err();
        assert!(matches!(&e, SocketDirError::SharedVolume { source, .. } if source.kind() == io::ErrorKind::NotFound));
        assert!(!missing.exists());
    }

    #[test]
    fn a_shared_volume_must_be_above_the_socket_directory() {
        // /dev/shm is a mount point (a tmpfs, root's, sticky) wherever /dev is set up as usual.
        let shm = Path::new("/dev/shm");
        if !is_mount_point(shm).unwrap_or(false) || !nix::unistd::geteuid().is_root() {
            eprintln!("/dev/shm is not a mount point here, or not running as root: skipped");
            return;
        }
        let below = tempfile::tempdir_in(shm).unwrap();
        let dir = below.path().join("private");
        prepare_socket_dir_with(&dir, true, Some(shm)).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        check_socket_dir_with(&dir, true, Some(shm)).unwrap();
        // The socket directory must still be private below the volume.
        chmod(&dir, 0o770);
        let e = check_socket_dir_with(&dir, true, Some(shm)).unwrap_err();
        assert!(matches!(&e, SocketDirError::Mode { path, .. } if path == &dir), "{e}");
        chmod(&dir, 0o700);

        let elsewhere = tempfile::tempdir().unwrap();
        let e = prepare_socket_dir_with(&elsewhere.path().join("private"), true, Some(shm)).unwrap_err();
        assert!(matches!(e, SocketDirError::SharedVolumeNotAbove { .. }), "{e}");
        assert!(e.to_string().contains("is not above the socket directory"), "{e}");
        // The volume itself is not a socket directory.
        let e = check_socket_dir_with(shm, false, Some(shm)).unwrap_err();
        assert!(matches!(e, SocketDirError::Mode { .. } | SocketDirError::SharedVolumeNotAbove { .. }), "{e}");
    }

    /// The emptyDir case end to end: an open (0777, not sticky) directory that is a mount point is accepted
    /// as the shared volume. Needs a mount, so it runs only when told where one is, for example:
    ///
    /// ```sh
    /// unshare -m sh -c 'mkdir -p /tmp/vol && chmod 777 /tmp/vol && mount --bind /tmp/vol /tmp/vol &&
    ///   SIGIL_TEST_SHARED_VOLUME=/tmp/vol cargo test -p sigil-tls -- --ignored open_mounted'
    /// ```
    ///
    /// (A bind mount of a directory onto itself keeps its parent's `st_dev`: mountinfo still lists it.)
    #[test]
    #[ignore = "needs an open mount point: SIGIL_TEST_SHARED_VOLUME"]
    fn an_open_mounted_shared_volume_is_accepted() {
        let Some(volume) = std::env::var_os("SIGIL_TEST_SHARED_VOLUME").map(PathBuf::from) else {
            panic!("set SIGIL_TEST_SHARED_VOLUME to an open (0777) mount point");
        };
        assert!(is_mount_point(&volume).unwrap());
        assert_eq!(std::fs::metadata(&volume).unwrap().mode() & 0o1777, 0o777, "an open, not sticky, volume");
        let dir = volume.join(format!("private-{}", std::process::id()));
        let e = prepare_socket_dir(&dir, true).unwrap_err();
        assert!(matches!(&e, SocketDirError::Mode { path, .. } if path == &volume), "refused unless named: {e}");
        prepare_socket_dir_with(&dir, true, Some(&volume)).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Through a symlink to the volume too (the real path is checked as well as the written one).
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("vol");
        std::os::unix::fs::symlink(&volume, &link).unwrap();
        check_socket_dir_with(&link.join(dir.file_name().unwrap()), true, Some(&volume)).unwrap();
        // Deeper below the volume is fine; the directories in between are checked as usual.
        let deeper = volume.join(format!("mid-{}", std::process::id())).join("private");
        prepare_socket_dir_with(&deeper, true, Some(&volume)).unwrap();
        std::fs::remove_dir(&deeper).unwrap();
        std::fs::remove_dir(deeper.parent().unwrap()).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }

    /// `target` relative to `base` (both absolute), through `..` as far as needed.
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let ups = base.components().count() - 1;
        let mut p = PathBuf::new();
        for _ in 0..ups {
            p.push("..");
        }
        p.join(target.strip_prefix("/").unwrap())
    }
}
