//! Workload attestation: who is calling the Workload API.
//!
//! The caller is identified by the peer credentials of its Unix socket connection (SO_PEERCRED). To guard
//! against PID reuse, [`ProcHandle::open`] opens `/proc/<pid>` as a directory at once and records the
//! process start time (field 22 of `stat`); every file is then read relative to that directory handle
//! (reads fail with ESRCH once the process is gone), and [`ProcHandle::check_same_process`] compares the
//! start time again after the attestors ran. A mismatch is reported as [`AttestError::PidReused`], which
//! the Workload API answers with `Unauthenticated`.
//!
//! Attestors implement [`WorkloadAttestor`]; the unix attestor is here, a Kubernetes attestor plugs in
//! later behind the same trait.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{OFlag, openat};
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
    #[error("the connection carries no peer credentials")]
    NoPeerCredentials,
    #[error("invalid selector from attestor {attestor}: {reason}")]
    Selector { attestor: &'static str, reason: String },
    #[error("{attestor} attestor failed: {reason}")]
    Attestor { attestor: &'static str, reason: String },
}

/// An open handle on `/proc/<pid>`, taken as soon as the caller connected.
#[derive(Debug)]
pub struct ProcHandle {
    pid: i32,
    dir: OwnedFd,
    start_time: u64,
    /// The credentials the kernel reported for the socket (SO_PEERCRED).
    peer_uid: u32,
    peer_gid: u32,
}

impl ProcHandle {
    /// Opens `/proc/<pid>` and records the start time. `peer_uid`/`peer_gid` come from SO_PEERCRED.
    pub fn open(pid: i32, peer_uid: u32, peer_gid: u32) -> Result<Self, AttestError> {
        Self::open_in("/proc", pid, peer_uid, peer_gid)
    }

    /// Like [`ProcHandle::open`] with another proc root (tests).
    pub fn open_in(proc_root: &str, pid: i32, peer_uid: u32, peer_gid: u32) -> Result<Self, AttestError> {
        let path = format!("{proc_root}/{pid}");
        let dir =
            nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| AttestError::ProcessGone { pid, source: e.into() })?;
        let mut h = Self { pid, dir, start_time: 0, peer_uid, peer_gid };
        h.start_time = h.read_start_time()?;
        Ok(h)
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

    /// Opens a file below the process directory.
    pub fn open_file(&self, name: &str) -> Result<File, AttestError> {
        let fd = openat(self.dir.as_fd(), name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| AttestError::ProcessGone { pid: self.pid, source: e.into() })?;
        Ok(File::from(fd))
    }

    /// Reads a (small) text file below the process directory.
    pub fn read_to_string(&self, name: &str) -> Result<String, AttestError> {
        let mut s = String::new();
        self.open_file(name)?
            .read_to_string(&mut s)
            .map_err(|source| AttestError::ProcessGone { pid: self.pid, source })?;
        Ok(s)
    }

    /// The target of the `exe` link.
    pub fn exe_path(&self) -> Result<String, AttestError> {
        let target = nix::fcntl::readlinkat(self.dir.as_fd(), "exe")
            .map_err(|e| AttestError::ProcessGone { pid: self.pid, source: e.into() })?;
        Ok(target.to_string_lossy().into_owned())
    }

    fn read_start_time(&self) -> Result<u64, AttestError> {
        let stat = self.read_to_string("stat")?;
        parse_stat_start_time(&stat).map_err(|reason| AttestError::Parse { pid: self.pid, file: "stat", reason })
    }

    /// The start time recorded when the handle was opened.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Re-reads the start time; a different value (or a vanished process) means the PID now names another
    /// process, and nothing learned about it may be used.
    pub fn check_same_process(&self) -> Result<(), AttestError> {
        match self.read_start_time() {
            Ok(t) if t == self.start_time => Ok(()),
            _ => Err(AttestError::PidReused { pid: self.pid }),
        }
    }
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

    fn sha256_of_exe(&self, process: &ProcHandle) -> Result<Option<String>, AttestError> {
        let file = process.open_file("exe")?;
        let gone = |source| AttestError::ProcessGone { pid: process.pid(), source };
        let len = file.metadata().map_err(gone)?.len();
        if self.config.workload_size_limit > 0 && len > self.config.workload_size_limit {
            tracing::warn!(pid = process.pid(), len, "workload binary over workload_size_limit: no sha256 selector");
            return Ok(None);
        }
        let mut hasher = Sha256::new();
        let mut reader = std::io::BufReader::new(file);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(gone)?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or_default());
        }
        Ok(Some(hex::encode(hasher.finalize())))
    }
}

#[async_trait::async_trait]
impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    async fn attest(&self, process: &ProcHandle) -> Result<Vec<Selector>, AttestError> {
        let status = process.read_to_string("status")?;
        let ids = parse_status(&status).map_err(|reason| AttestError::Parse {
            pid: process.pid(),
            file: "status",
            reason,
        })?;
        let mut values = unix_id_selectors(&ids, self.names.as_ref());
        if self.config.discover_workload_path {
            values.push(format!("path:{}", process.exe_path()?));
            if let Some(sum) = self.sha256_of_exe(process)? {
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

/// Runs every attestor on an open process handle and checks afterwards that the PID still names the
/// same process.
pub async fn attest_process(
    attestors: &[std::sync::Arc<dyn WorkloadAttestor>],
    process: &ProcHandle,
) -> Result<BTreeSet<Selector>, AttestError> {
    let mut selectors = BTreeSet::new();
    for a in attestors {
        selectors.extend(a.attest(process).await?);
    }
    process.check_same_process()?;
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

    #[tokio::test]
    async fn attests_own_process_and_detects_nothing_wrong() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let handle = ProcHandle::open(pid, me, 0).unwrap();
        assert!(handle.start_time() > 0);
        let attestor: std::sync::Arc<dyn WorkloadAttestor> =
            std::sync::Arc::new(UnixAttestor::new(UnixAttestorConfig {
                discover_workload_path: true,
                workload_size_limit: 0,
            }));
        let sels = attest_process(&[attestor], &handle).await.unwrap();
        assert!(sels.contains(&Selector::new("unix", &format!("uid:{me}")).unwrap()), "{sels:?}");
        let exe = std::env::current_exe().unwrap();
        let path_sel = Selector::new("unix", &format!("path:{}", exe.display())).unwrap();
        assert!(sels.contains(&path_sel), "{sels:?}");
        let sum = hex::encode(Sha256::digest(std::fs::read(&exe).unwrap()));
        assert!(sels.contains(&Selector::new("unix", &format!("sha256:{sum}")).unwrap()));
    }

    #[test]
    fn size_limit_suppresses_sha256_only() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let handle = ProcHandle::open(pid, 0, 0).unwrap();
        let a = UnixAttestor::new(UnixAttestorConfig { discover_workload_path: true, workload_size_limit: 1 });
        assert_eq!(a.sha256_of_exe(&handle).unwrap(), None);
    }

    #[test]
    fn exited_process_is_detected() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let handle = ProcHandle::open(pid, 0, 0).unwrap();
        handle.check_same_process().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(handle.check_same_process(), Err(AttestError::PidReused { .. })));
        assert!(handle.read_to_string("status").is_err());
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
        for _ in 0..n {
            let h = ProcHandle::open(pid, 0, 0).unwrap();
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
