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

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

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
}

/// Creates `dir` (and what is missing above it) if needed, with mode 0700 when `private` (only the service
/// may even reach the socket) or 0755, and then checks the whole path (see the module documentation).
pub fn prepare_socket_dir(dir: &Path, private: bool) -> Result<(), SocketDirError> {
    // `api.sock` alone lives in the working directory.
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let io_err = |source| SocketDirError::Io { path: dir.to_owned(), source };
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mode = if private { 0o700 } else { 0o755 };
            std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(io_err)?;
        }
        Err(e) => return Err(io_err(e)),
    }
    check_socket_dir(dir, private)
}

/// Checks an existing socket directory and the path to it (see the module documentation).
pub fn check_socket_dir(dir: &Path, private: bool) -> Result<(), SocketDirError> {
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
            check_owner_and_mode(&prefix, &m, me, Strictness::Ancestor)?;
        }
        prefix.push(c);
        let m = std::fs::symlink_metadata(&prefix).map_err(io_err(&prefix))?;
        if m.file_type().is_symlink() && !trusted(m.uid()) {
            return Err(SocketDirError::Owner { path: prefix, owner: m.uid(), me });
        }
    }
    // The directories the path really goes through.
    let real = std::fs::canonicalize(dir).map_err(io_err(dir))?;
    for ancestor in real.ancestors().skip(1) {
        let m = std::fs::metadata(ancestor).map_err(io_err(ancestor))?;
        check_owner_and_mode(ancestor, &m, me, Strictness::Ancestor)?;
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
