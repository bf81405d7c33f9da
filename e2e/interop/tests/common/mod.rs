//! Runs the real binaries: a sigil-server and a sigil-agent attested with a join token, on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TD: &str = "example.org";

/// target/<profile>/ (the test binary lives in target/<profile>/deps/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(p.exists(), "{} not built: run `cargo build --bins` first (scripts/test.sh does)", p.display());
    p
}

/// A port for a child process to listen on. Not `bind(0)`: that hands out a port of the kernel's ephemeral
/// range (32768-60999), the range every outgoing connection also takes its source port from, so between
/// this call and the child's bind another test's connection could take it (a federation test failed so,
/// once). Ports below that range, distinct within this process and spread by pid across processes, are
/// only ever taken by an explicit bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 40) * 300;
    for _ in 0..300 {
        let port = u16::try_from(base + NEXT.fetch_add(1, Ordering::Relaxed) % 300).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + 300);
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub server: Option<Child>,
    pub agent: Option<Child>,
    pub token: String,
    pub agent_id: String,
}

impl Stack {
    pub fn server_sock(&self) -> PathBuf {
        self.dir.path().join("server/api.sock")
    }
    pub fn agent_sock(&self) -> PathBuf {
        self.dir.path().join("agent/public/api.sock")
    }
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.agent_sock().display())
    }

    pub fn server_cli(&self, args: &[&str]) -> Output {
        run(Command::new(bin("sigil-server")).args(args).arg("-socketPath").arg(self.server_sock()))
    }

    pub fn agent_cli(&self, args: &[&str]) -> Output {
        run(Command::new(bin("sigil-agent")).args(args).arg("-socketPath").arg(self.agent_sock()))
    }

    pub fn start_server(&mut self) {
        self.start_server_with(&[]);
    }

    /// [`Stack::start_server`] with more command-line arguments (e.g. `-config FILE`).
    pub fn start_server_with(&mut self, extra: &[&std::ffi::OsStr]) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(bin("sigil-server"))
            .args(["run", "-trustDomain", TD, "-bindAddress", "127.0.0.1", "-healthPort", "0"])
            .arg("-serverPort")
            .arg(self.port.to_string())
            .arg("-dataDir")
            .arg(self.dir.path().join("server/data"))
            .arg("-socketPath")
            .arg(self.server_sock())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        wait_for("server healthcheck", Duration::from_secs(30), || self.server_cli(&["healthcheck"]).status.success());
    }

    /// Starts the agent; with `token` it attests, without it must resume from its data dir.
    pub fn start_agent(&mut self, token: Option<&str>) {
        self.start_agent_with(token, &[]);
    }

    /// [`Stack::start_agent`] with more command-line arguments (e.g. `-config FILE`).
    pub fn start_agent_with(&mut self, token: Option<&str>, extra: &[&std::ffi::OsStr]) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let mut cmd = Command::new(bin("sigil-agent"));
        cmd.args(["run", "-trustDomain", TD, "-serverAddress", "127.0.0.1", "-insecureBootstrap"])
            .arg("-serverPort")
            .arg(self.port.to_string())
            .arg("-dataDir")
            .arg(self.dir.path().join("agent/data"))
            .arg("-socketPath")
            .arg(self.agent_sock())
            .arg("-healthPort")
            .arg("0");
        if let Some(t) = token {
            cmd.arg("-joinToken").arg(t);
        }
        cmd.args(extra);
        self.agent = Some(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    }

    pub fn kill_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Registers an entry for a uid under this agent and returns its entry ID.
    pub fn register(&self, spiffe_path: &str, uid: u32, x509_ttl: Option<u32>) -> String {
        let id = format!("spiffe://{TD}{spiffe_path}");
        let sel = format!("unix:uid:{uid}");
        let ttl = x509_ttl.map(|t| t.to_string());
        let mut args = vec!["entry", "create", "-parentID", &self.agent_id, "-spiffeID", &id, "-selector", &sel];
        if let Some(t) = &ttl {
            args.extend(["-x509SVIDTTL", t]);
        }
        let out = ok(self.server_cli(&args));
        out.lines().find_map(|l| l.strip_prefix("Entry ID         : ")).unwrap().trim().to_owned()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.kill_agent();
        self.kill_server();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running server with a join token generated (and the agent ID it will give), no agent yet.
pub fn server_only() -> Stack {
    server_only_with(&[])
}

/// [`server_only`] with more arguments for the server.
pub fn server_only_with(server_args: &[&std::ffi::OsStr]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        Stack { dir, port: free_port(), server: None, agent: None, token: String::new(), agent_id: String::new() };
    s.start_server_with(server_args);
    s.token = s.generate_token();
    s.agent_id = format!("spiffe://{TD}/spire/agent/join_token/{}", s.token);
    s
}

impl Stack {
    /// `token generate`: a new join token.
    pub fn generate_token(&self) -> String {
        let out = ok(self.server_cli(&["token", "generate"]));
        out.trim().strip_prefix("Token: ").unwrap().to_owned()
    }
}

/// Server + agent, with the current uid registered as `spiffe://example.org/workload` (optionally a short TTL).
pub fn stack(x509_ttl: Option<u32>) -> Stack {
    stack_with(x509_ttl, &[])
}

/// [`stack`] with more arguments for the agent.
pub fn stack_with(x509_ttl: Option<u32>, agent_args: &[&std::ffi::OsStr]) -> Stack {
    stack_with_args(x509_ttl, &[], agent_args)
}

/// [`stack`] with more arguments for the server and the agent.
pub fn stack_with_args(
    x509_ttl: Option<u32>,
    server_args: &[&std::ffi::OsStr],
    agent_args: &[&std::ffi::OsStr],
) -> Stack {
    let mut s = server_only_with(server_args);
    let uid = nix::unistd::getuid().as_raw();
    s.register("/workload", uid, x509_ttl);
    let token = s.token.clone();
    s.start_agent_with(Some(&token), agent_args);
    wait_for("agent serving the workload's SVID", Duration::from_secs(60), || {
        s.agent_cli(&["api", "fetch", "x509"]).status.success()
    });
    s
}

pub fn make_world_reachable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut cur = Some(p);
    while let Some(dir) = cur {
        if dir == Path::new("/") || dir == Path::new("/tmp") {
            break;
        }
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o711)).unwrap();
        cur = dir.parent();
    }
}
