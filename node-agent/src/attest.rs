//! Workload attestation: who is calling the Workload API.
//!
//! ## What a connection's identity is bound to
//! The caller is the process that called `connect()`: the kernel records its pid and effective uid/gid in
//! the socket (SO_PEERCRED). Everything else is read once, when the connection is accepted
//! ([`ProcHandle::open`]), into a [`ProcessImage`]: `/proc/<pid>` is opened as a directory (later reads go
//! through that handle and fail with ESRCH once the process is gone), its start time (field 22 of `stat`),
//! its uids/gids/groups (`status`) and its executable (opened, and identified by device and inode). The
//! `status` ids must agree with the kernel's connect-time credentials, or the connection is refused.
//!
//! Attestors derive selectors from that accept-time image, never from what the pid is at the time of the
//! call, and every call checks, once the attestors ran, that the pid still is that image
//! ([`ProcHandle::verify`]; what an attestor read live, such as `cgroup`, was then read from it): same start
//! time (PID reuse), same ids (a setuid/setgid exec, or a privileged process that changed its
//! credentials), same executable (any exec of another binary; a zombie has none). A descriptor inherited
//! by a child, or kept while the connecting process exec'd a setuid program, therefore never yields more
//! than what connected, and yields nothing once the connecting process has turned into something else:
//! [`AttestError::ProcessChanged`], which the Workload API answers with `Unauthenticated`.
//!
//! Attestors implement [`WorkloadAttestor`]; the unix attestor is here, a Kubernetes attestor plugs in
//! behind the same trait and gets the same guarantees (its `cgroup` read is checked by the same
//! [`ProcHandle::verify`] after it ran).

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use sigil_core::Selector;

/// Why a workload could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the caller's process {pid} is gone or not readable: {source}")]
    ProcessGone { pid: i32, source: std::io::Error },
    #[error("cannot parse /proc/{pid}/{file}: {reason}")]
    Parse { pid: i32, file: &'static str, reason: String },
    #[error("process {pid} was replaced during attestation (PID reuse)")]
    PidReused { pid: i32 },
    #[error("process {pid} is no longer what connected ({what}); the connection's identity is gone: connect again")]
    ProcessChanged { pid: i32, what: String },
    #[error("the connection carries no peer credentials")]
    NoPeerCredentials,
    #[error("invalid selector from attestor {attestor}: {reason}")]
    Selector { attestor: &'static str, reason: String },
    #[error("{attestor} attestor failed: {reason}")]
    Attestor { attestor: &'static str, reason: String },
}

impl AttestError {
    /// The caller is not (or no longer) the process that connected: answered with `Unauthenticated`.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::PidReused { .. } | Self::ProcessGone { .. } | Self::ProcessChanged { .. } | Self::NoPeerCredentials
        )
    }
}

/// The executable a process runs, as the filesystem identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeId {
    /// Device and inode of the binary.
    File { dev: u64, ino: u64 },
    /// The agent may not look at this process's executable (it runs unprivileged, and the caller belongs
    /// to another uid). Selectors never name the binary then, and an exec is still seen in the ids.
    NotPermitted,
}

/// What a process was when it connected: everything selectors are derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessImage {
    /// Field 22 of `stat`: clock ticks since boot.
    pub start_time: u64,
    pub ids: StatusIds,
    pub exe: ExeId,
}

/// An open handle on `/proc/<pid>`, taken as soon as the caller connected, with the process's
/// accept-time [`ProcessImage`].
#[derive(Debug)]
pub struct ProcHandle {
    pid: i32,
    dir: OwnedFd,
    /// The credentials the kernel recorded at connect() (SO_PEERCRED: effective uid and gid).
    peer_uid: u32,
    peer_gid: u32,
    image: ProcessImage,
    /// The executable opened at accept: hashing it reads the binary that connected, whatever the pid
    /// runs now. `None` when not permitted.
    exe_file: Option<File>,
    /// Where `exe` pointed at accept.
    exe_path: Option<String>,
    exe_sha256: OnceLock<String>,
}

fn gone(pid: i32) -> impl Fn(Errno) -> AttestError {
    move |e| AttestError::ProcessGone { pid, source: e.into() }
}

impl ProcHandle {
    /// Opens `/proc/<pid>` and records the [`ProcessImage`]. `peer_uid`/`peer_gid` come from SO_PEERCRED;
    /// a process whose effective ids already differ from them is refused.
    pub fn open(pid: i32, peer_uid: u32, peer_gid: u32) -> Result<Self, AttestError> {
        Self::open_in("/proc", pid, peer_uid, peer_gid)
    }

    /// Like [`ProcHandle::open`] with another proc root (tests).
    pub fn open_in(proc_root: &str, pid: i32, peer_uid: u32, peer_gid: u32) -> Result<Self, AttestError> {
        let path = format!("{proc_root}/{pid}");
        let dir =
            nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(gone(pid))?;
        let start_time = read_start_time(&dir, pid)?;
        let (exe_file, exe) = match openat(dir.as_fd(), "exe", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => {
                let st = nix::sys::stat::fstat(&fd).map_err(gone(pid))?;
                (Some(File::from(fd)), ExeId::File { dev: st.st_dev, ino: st.st_ino })
            }
            Err(Errno::EACCES | Errno::EPERM) => (None, ExeId::NotPermitted),
            // ENOENT: no executable, i.e. a zombie (or a kernel thread): nothing that can be attested.
            Err(e) => return Err(gone(pid)(e)),
        };
        let exe_path = match exe {
            ExeId::File { .. } => {
                Some(nix::fcntl::readlinkat(dir.as_fd(), "exe").map_err(gone(pid))?.to_string_lossy().into_owned())
            }
            ExeId::NotPermitted => None,
        };
        let ids = read_ids(&dir, pid)?;
        if (ids.effective_uid(), ids.effective_gid()) != (peer_uid, peer_gid) {
            return Err(AttestError::ProcessChanged {
                pid,
                what: format!(
                    "connected as uid {peer_uid} gid {peer_gid}, now runs as uid {} gid {}",
                    ids.effective_uid(),
                    ids.effective_gid()
                ),
            });
        }
        // An exec between these reads leaves an image that disagrees with the process (say the old exe
        // and the new path): every call verifies the process against the image first, and refuses then.
        Ok(Self {
            pid,
            dir,
            peer_uid,
            peer_gid,
            image: ProcessImage { start_time, ids, exe },
            exe_file,
            exe_path,
            exe_sha256: OnceLock::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn peer_uid(&self) -> u32 {
        self.peer_uid
    }

    pub fn peer_gid(&self) -> u32 {
        self.peer_gid
    }

    /// What the process was when it connected.
    pub fn image(&self) -> &ProcessImage {
        &self.image
    }

    /// The start time recorded when the handle was opened.
    pub fn start_time(&self) -> u64 {
        self.image.start_time
    }

    /// Reads a (small) text file below the process directory (for attestors that read more than the image,
    /// such as `cgroup`; [`attest_process`] verifies the process again after they ran).
    pub fn read_to_string(&self, name: &str) -> Result<String, AttestError> {
        read_proc_file(&self.dir, self.pid, name)
    }

    /// Where the executable was when the process connected, if the agent may see it.
    pub fn exe_path(&self) -> Option<&str> {
        self.exe_path.as_deref()
    }

    /// The size and the SHA-256 (hex) of the executable that connected; the hash is computed once per
    /// connection. `Ok(None)` when the agent may not read it.
    pub fn exe_sha256(&self, size_limit: u64) -> Result<Option<String>, AttestError> {
        let Some(file) = &self.exe_file else { return Ok(None) };
        if let Some(sum) = self.exe_sha256.get() {
            return Ok(Some(sum.clone()));
        }
        let io = |source| AttestError::ProcessGone { pid: self.pid, source };
        let len = file.metadata().map_err(io)?.len();
        if size_limit > 0 && len > size_limit {
            tracing::warn!(pid = self.pid, len, "workload binary over workload_size_limit: no sha256 selector");
            return Ok(None);
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        loop {
            // Positional reads: the handle is shared by every call on the connection.
            let n = file.read_at(&mut buf, offset).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or_default());
            offset += n as u64;
        }
        Ok(Some(self.exe_sha256.get_or_init(|| hex::encode(hasher.finalize())).clone()))
    }

    /// Checks that the pid still is the process that connected: the same start time (else PID reuse or
    /// gone), the same ids and the same executable (else it exec'd or changed credentials).
    pub fn verify(&self) -> Result<(), AttestError> {
        let start_time = read_start_time(&self.dir, self.pid).map_err(|_| AttestError::PidReused { pid: self.pid })?;
        if start_time != self.image.start_time {
            return Err(AttestError::PidReused { pid: self.pid });
        }
        let ids = read_ids(&self.dir, self.pid)?;
        if ids != self.image.ids {
            return Err(AttestError::ProcessChanged {
                pid: self.pid,
                what: format!(
                    "ids were uid {:?} gid {:?} groups {:?}, are uid {:?} gid {:?} groups {:?}",
                    self.image.ids.uids, self.image.ids.gids, self.image.ids.groups, ids.uids, ids.gids, ids.groups
                ),
            });
        }
        let exe = match nix::sys::stat::fstatat(self.dir.as_fd(), "exe", AtFlags::empty()) {
            Ok(st) => ExeId::File { dev: st.st_dev, ino: st.st_ino },
            Err(Errno::EACCES | Errno::EPERM) => ExeId::NotPermitted,
            Err(Errno::ESRCH) => return Err(AttestError::PidReused { pid: self.pid }),
            Err(e) => {
                return Err(AttestError::ProcessChanged {
                    pid: self.pid,
                    what: format!("no executable any more: {e}"),
                });
            }
        };
        if exe != self.image.exe {
            return Err(AttestError::ProcessChanged { pid: self.pid, what: "it exec'd another program".into() });
        }
        Ok(())
    }
}

fn read_proc_file(dir: &OwnedFd, pid: i32, name: &str) -> Result<String, AttestError> {
    let fd = openat(dir.as_fd(), name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(gone(pid))?;
    let mut s = String::new();
    File::from(fd).read_to_string(&mut s).map_err(|source| AttestError::ProcessGone { pid, source })?;
    Ok(s)
}

fn read_start_time(dir: &OwnedFd, pid: i32) -> Result<u64, AttestError> {
    let stat = read_proc_file(dir, pid, "stat")?;
    parse_stat_start_time(&stat).map_err(|reason| AttestError::Parse { pid, file: "stat", reason })
}

fn read_ids(dir: &OwnedFd, pid: i32) -> Result<StatusIds, AttestError> {
    let status = read_proc_file(dir, pid, "status")?;
    parse_status(&status).map_err(|reason| AttestError::Parse { pid, file: "status", reason })
}

/// The start time (field 22, clock ticks since boot) from the contents of `/proc/<pid>/stat`. Field 2,
/// `comm`, is in parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat_start_time(stat: &str) -> Result<u64, String> {
    let close = stat.rfind(')').ok_or("no ')' after comm")?;
    let rest = stat.get(close + 1..).unwrap_or_default();
    // After ")" come fields 3 (state), 4, ...; field 22 is at index 19.
    let field = rest.split_ascii_whitespace().nth(19).ok_or("fewer than 22 fields")?;
    field.parse::<u64>().map_err(|e| format!("starttime {field:?}: {e}"))
}

/// The ids from `/proc/<pid>/status`: real, effective, saved and filesystem uid/gid, and the supplementary
/// groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusIds {
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
}

impl StatusIds {
    pub fn effective_uid(&self) -> u32 {
        self.uids[1]
    }
    pub fn effective_gid(&self) -> u32 {
        self.gids[1]
    }
}

fn parse_id_line(value: &str, what: &str) -> Result<[u32; 4], String> {
    let ids: Vec<u32> = value
        .split_ascii_whitespace()
        .map(|v| v.parse::<u32>().map_err(|e| format!("{what} {v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    <[u32; 4]>::try_from(ids).map_err(|v| format!("{what}: expected 4 values, got {}", v.len()))
}

/// Parses the `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`.
pub fn parse_status(status: &str) -> Result<StatusIds, String> {
    let mut uids = None;
    let mut gids = None;
    let mut groups = None;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key {
            "Uid" => uids = Some(parse_id_line(value, "Uid")?),
            "Gid" => gids = Some(parse_id_line(value, "Gid")?),
            "Groups" => {
                groups = Some(
                    value
                        .split_ascii_whitespace()
                        .map(|v| v.parse::<u32>().map_err(|e| format!("Groups {v:?}: {e}")))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            _ => {}
        }
    }
    Ok(StatusIds {
        uids: uids.ok_or("no Uid line")?,
        gids: gids.ok_or("no Gid line")?,
        groups: groups.unwrap_or_default(),
    })
}

/// Name lookups for uids and gids (injected so the selector logic is testable).
pub trait NameLookup: Send + Sync {
    fn user_name(&self, uid: u32) -> Option<String>;
    fn group_name(&self, gid: u32) -> Option<String>;
}

/// Looks names up in the system databases (`getpwuid_r`, `getgrgid_r`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemNames;

impl NameLookup for SystemNames {
    fn user_name(&self, uid: u32) -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
    }
    fn group_name(&self, gid: u32) -> Option<String> {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name)
    }
}

/// The `unix` selector values (without the `unix:` type) for a process's ids: `uid`, `gid`, `user` and
/// `group` from the effective ids, `supplementary_gid` and `supplementary_group` for each group in
/// `Groups`. Names that do not resolve are left out.
pub fn unix_id_selectors(ids: &StatusIds, names: &dyn NameLookup) -> Vec<String> {
    let mut out = vec![format!("uid:{}", ids.effective_uid())];
    if let Some(n) = names.user_name(ids.effective_uid()) {
        out.push(format!("user:{n}"));
    }
    out.push(format!("gid:{}", ids.effective_gid()));
    if let Some(n) = names.group_name(ids.effective_gid()) {
        out.push(format!("group:{n}"));
    }
    for g in &ids.groups {
        out.push(format!("supplementary_gid:{g}"));
        if let Some(n) = names.group_name(*g) {
            out.push(format!("supplementary_group:{n}"));
        }
    }
    out
}

/// A workload attestor: turns a caller process into selectors.
#[async_trait::async_trait]
pub trait WorkloadAttestor: Send + Sync + fmt::Debug {
    /// The selector type this attestor produces (`unix`, `k8s`).
    fn name(&self) -> &'static str;
    async fn attest(&self, process: &ProcHandle) -> Result<Vec<Selector>, AttestError>;
}

/// Options of the unix attestor.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnixAttestorConfig {
    /// Emit `unix:path:<exe>` and, unless `workload_size_limit` forbids it, `unix:sha256:<hex>`.
    pub discover_workload_path: bool,
    /// Largest binary hashed for `sha256` (bytes); 0 = no limit. Larger binaries get no sha256 selector.
    pub workload_size_limit: u64,
}

/// The `unix` workload attestor.
pub struct UnixAttestor {
    config: UnixAttestorConfig,
    names: Box<dyn NameLookup>,
}

impl fmt::Debug for UnixAttestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixAttestor").field("config", &self.config).finish_non_exhaustive()
    }
}

impl UnixAttestor {
    pub fn new(config: UnixAttestorConfig) -> Self {
        Self { config, names: Box::new(SystemNames) }
    }

    pub fn with_names(config: UnixAttestorConfig, names: Box<dyn NameLookup>) -> Self {
        Self { config, names }
    }
}

#[async_trait::async_trait]
impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    async fn attest(&self, process: &ProcHandle) -> Result<Vec<Selector>, AttestError> {
        // The ids and the binary of the accept-time image: what connected, not what the pid runs now.
        let mut values = unix_id_selectors(&process.image().ids, self.names.as_ref());
        if self.config.discover_workload_path {
            let path = process.exe_path().ok_or_else(|| AttestError::Attestor {
                attestor: "unix",
                reason: "discover_workload_path needs the agent to read the caller's executable (run it as root)"
                    .into(),
            })?;
            values.push(format!("path:{path}"));
            if let Some(sum) = process.exe_sha256(self.config.workload_size_limit)? {
                values.push(format!("sha256:{sum}"));
            }
        }
        values
            .iter()
            .map(|v| {
                Selector::new("unix", v).map_err(|e| AttestError::Selector { attestor: "unix", reason: e.to_string() })
            })
            .collect()
    }
}

/// Runs every attestor on an open process handle, then checks that the pid still is the process that
/// connected ([`ProcHandle::verify`]). Once, after: the changes it looks for (a new start time, new ids,
/// another executable, no executable) do not undo themselves, so one that came before or during the
/// attestors is still there.
pub async fn attest_process(
    attestors: &[std::sync::Arc<dyn WorkloadAttestor>],
    process: &ProcHandle,
) -> Result<BTreeSet<Selector>, AttestError> {
    let mut selectors = BTreeSet::new();
    for a in attestors {
        selectors.extend(a.attest(process).await?);
    }
    process.verify()?;
    Ok(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const STATUS: &str = "Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\n\
Uid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\nFDSize:\t256\nGroups:\t4 24 27 \nNStgid:\t42\n";

    #[test]
    fn parse_status_table() {
        let cases: &[(&str, Result<StatusIds, ()>)] = &[
            (
                STATUS,
                Ok(StatusIds { uids: [1000, 1001, 1002, 1003], gids: [100, 101, 102, 103], groups: vec![4, 24, 27] }),
            ),
            (
                "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n",
                Ok(StatusIds { uids: [0; 4], gids: [0; 4], groups: vec![] }),
            ),
            ("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", Ok(StatusIds { uids: [0; 4], gids: [0; 4], groups: vec![] })),
            ("Gid:\t0\t0\t0\t0\n", Err(())),
            ("Uid:\t0\t0\t0\nGid:\t0\t0\t0\t0\n", Err(())),
            ("Uid:\t0\tx\t0\t0\nGid:\t0\t0\t0\t0\n", Err(())),
            ("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t1 -2\n", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_status(input);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{input:?}"),
                (Err(()), Err(_)) => {}
                _ => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    fn stat_line(comm: &str, start: &str) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        // cutime cstime priority nice num_threads itrealvalue starttime vsize ...
        format!(
            "4242 ({comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 200 18446744073709551615"
        )
    }

    #[test]
    fn parse_stat_start_time_table() {
        let cases: Vec<(String, Result<u64, ()>)> = vec![
            (stat_line("bash", "123456"), Ok(123456)),
            (stat_line("a b c", "77"), Ok(77)),
            (stat_line("evil) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 999 (", "55"), Ok(55)),
            (stat_line(")", "8"), Ok(8)),
            (stat_line("x", "notanumber"), Err(())),
            ("4242 (bash) S 1 2".into(), Err(())),
            ("no parens at all".into(), Err(())),
            (String::new(), Err(())),
        ];
        for (input, want) in cases {
            let got = parse_stat_start_time(&input);
            match (&want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{input:?}"),
                (Err(()), Err(_)) => {}
                _ => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    struct FakeNames(HashMap<u32, &'static str>, HashMap<u32, &'static str>);
    impl NameLookup for FakeNames {
        fn user_name(&self, uid: u32) -> Option<String> {
            self.0.get(&uid).map(|s| s.to_string())
        }
        fn group_name(&self, gid: u32) -> Option<String> {
            self.1.get(&gid).map(|s| s.to_string())
        }
    }

    #[test]
    fn unix_id_selectors_table() {
        let names = FakeNames(HashMap::from([(1001, "alice")]), HashMap::from([(101, "staff"), (24, "cdrom")]));
        let ids = parse_status(STATUS).unwrap();
        assert_eq!(
            unix_id_selectors(&ids, &names),
            vec![
                "uid:1001",
                "user:alice",
                "gid:101",
                "group:staff",
                "supplementary_gid:4",
                "supplementary_gid:24",
                "supplementary_group:cdrom",
                "supplementary_gid:27",
            ]
        );
        let unnamed = StatusIds { uids: [7; 4], gids: [8; 4], groups: vec![] };
        assert_eq!(unix_id_selectors(&unnamed, &names), vec!["uid:7", "gid:8"]);
    }

    fn my_ids() -> (u32, u32) {
        (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
    }

    fn open_child(child: &std::process::Child) -> ProcHandle {
        let (uid, gid) = my_ids();
        ProcHandle::open(i32::try_from(child.id()).unwrap(), uid, gid).unwrap()
    }

    fn comm(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn attests_own_process_and_detects_nothing_wrong() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let (me, my_gid) = my_ids();
        let handle = ProcHandle::open(pid, me, my_gid).unwrap();
        assert!(handle.start_time() > 0);
        assert!(matches!(handle.image().exe, ExeId::File { .. }));
        let attestor: std::sync::Arc<dyn WorkloadAttestor> =
            std::sync::Arc::new(UnixAttestor::new(UnixAttestorConfig {
                discover_workload_path: true,
                workload_size_limit: 0,
            }));
        let sels = attest_process(std::slice::from_ref(&attestor), &handle).await.unwrap();
        assert!(sels.contains(&Selector::new("unix", &format!("uid:{me}")).unwrap()), "{sels:?}");
        assert!(sels.contains(&Selector::new("unix", &format!("gid:{my_gid}")).unwrap()), "{sels:?}");
        let exe = std::env::current_exe().unwrap();
        let path_sel = Selector::new("unix", &format!("path:{}", exe.display())).unwrap();
        assert!(sels.contains(&path_sel), "{sels:?}");
        let sum = hex::encode(Sha256::digest(std::fs::read(&exe).unwrap()));
        assert!(sels.contains(&Selector::new("unix", &format!("sha256:{sum}")).unwrap()));
        // A second call on the same connection gives the same answer (the hash is computed once).
        assert_eq!(attest_process(&[attestor], &handle).await.unwrap(), sels);
    }

    #[test]
    fn size_limit_suppresses_sha256_only() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let (uid, gid) = my_ids();
        let handle = ProcHandle::open(pid, uid, gid).unwrap();
        assert_eq!(handle.exe_sha256(1).unwrap(), None);
        assert!(handle.exe_path().is_some());
    }

    #[test]
    fn credentials_other_than_the_kernels_are_refused_at_accept() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let (uid, gid) = my_ids();
        for (u, g) in [(uid.wrapping_add(1), gid), (uid, gid.wrapping_add(1))] {
            let err = ProcHandle::open(pid, u, g).unwrap_err();
            assert!(matches!(err, AttestError::ProcessChanged { .. }), "{err}");
            assert!(err.is_unauthenticated());
        }
    }

    #[test]
    fn exited_process_is_detected() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let handle = open_child(&child);
        handle.verify().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(handle.verify(), Err(AttestError::PidReused { .. })));
        assert!(handle.read_to_string("status").is_err());
    }

    #[test]
    fn exec_of_another_program_is_detected() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let handle = open_child(&child);
        handle.verify().unwrap();
        let sh_path = handle.exe_path().unwrap().to_owned();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        wait_until("sh to exec sleep", || comm(child.id()) == "sleep");
        let err = handle.verify().unwrap_err();
        assert!(matches!(err, AttestError::ProcessChanged { .. }), "{err}");
        assert!(err.is_unauthenticated());
        // The accept-time image is unchanged: it still names the shell.
        assert_eq!(handle.exe_path(), Some(sh_path.as_str()));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_zombie_is_refused_whether_it_died_before_or_after_accept() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let handle = open_child(&child);
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = || std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        wait_until("a zombie", || status().contains("State:\tZ"));
        let err = handle.verify().unwrap_err();
        assert!(matches!(err, AttestError::ProcessChanged { .. }), "{err}");
        // Accepted only after it died: there is nothing to attest.
        let (uid, gid) = my_ids();
        let err = ProcHandle::open(i32::try_from(child.id()).unwrap(), uid, gid).unwrap_err();
        assert!(matches!(err, AttestError::ProcessGone { .. }), "{err}");
        child.wait().unwrap();
    }

    #[test]
    fn missing_process_fails_to_open() {
        assert!(matches!(ProcHandle::open(i32::MAX, 0, 0), Err(AttestError::ProcessGone { .. })));
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    #[tokio::test]
    #[ignore]
    async fn attestation_cost() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let a: std::sync::Arc<dyn WorkloadAttestor> =
            std::sync::Arc::new(UnixAttestor::new(UnixAttestorConfig::default()));
        let n = 2000;
        let t = std::time::Instant::now();
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        for _ in 0..n {
            let h = ProcHandle::open(pid, uid, gid).unwrap();
            attest_process(std::slice::from_ref(&a), &h).await.unwrap();
        }
        println!("attest: {:?} per call", t.elapsed() / n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            let _ = SystemNames.user_name(0);
            let _ = SystemNames.group_name(0);
        }
        println!("names: {:?} per pair", t.elapsed() / n);
    }
}
