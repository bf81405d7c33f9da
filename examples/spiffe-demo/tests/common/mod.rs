//! The real sigil-server and sigil-agent (join token, loopback) with entries for the demo's uids, the
//! spiffe-demo binary run as those uids, and a minimal HTTP client. Modelled on e2e/interop's helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TD: &str = "example.org";
pub const UID_A: u32 = 1000;
pub const UID_B: u32 = 1001;
/// A uid without an entry.
pub const UID_NONE: u32 = 1002;
pub const ID_A: &str = "spiffe://example.org/service-a";
pub const ID_B: &str = "spiffe://example.org/service-b";

pub const DEMO: &str = env!("CARGO_BIN_EXE_spiffe-demo");

/// target/<profile>/<name> (the test binary lives in target/<profile>/deps/).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(p.exists(), "{} not built: run `cargo build --bins` first (scripts/test.sh does)", p.display());
    p
}

/// A port below the ephemeral range, distinct within this process and spread by pid across processes.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 12_000 + (std::process::id() % 40) * 200;
    for _ in 0..200 {
        let port = u16::try_from(base + NEXT.fetch_add(1, Ordering::Relaxed) % 200).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + 200);
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

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens every directory from `p` up (to /tmp) to others (x), so other uids reach a socket or file in it.
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

/// A directory every uid may write to (sticky, as /tmp).
pub fn shared_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    make_world_reachable(&d);
    d
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub server: Option<Child>,
    pub agent: Option<Child>,
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
        Command::new(bin("sigil-server")).args(args).arg("-socketPath").arg(self.server_sock()).output().unwrap()
    }

    fn start_server(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(bin("sigil-server"))
            .args(["run", "-trustDomain", TD, "-bindAddress", "127.0.0.1", "-healthPort", "0"])
            .arg("-serverPort")
            .arg(self.port.to_string())
            .arg("-dataDir")
            .arg(self.dir.path().join("server/data"))
            .arg("-socketPath")
            .arg(self.server_sock())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        wait_for("server healthcheck", Duration::from_secs(30), || self.server_cli(&["healthcheck"]).status.success());
    }

    /// Starts the agent: with `token` it attests, without it resumes from its data dir.
    pub fn start_agent(&mut self, token: Option<&str>) {
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
        self.agent = Some(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
        wait_for("the agent's socket", Duration::from_secs(30), || self.agent_sock().exists());
        make_world_reachable(self.agent_sock().parent().unwrap());
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// `entry create` for `unix:uid:<uid>` under this agent, with extra flags (e.g. `-x509SVIDTTL 30`).
    pub fn register(&self, spiffe_id: &str, uid: u32, extra: &[&str]) {
        let sel = format!("unix:uid:{uid}");
        let mut args = vec!["entry", "create", "-parentID", &self.agent_id, "-spiffeID", spiffe_id, "-selector", &sel];
        args.extend(extra);
        ok(self.server_cli(&args));
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.kill_agent();
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Server and agent with service-a (uid 1000) and service-b (uid 1001) registered, with `extra` entry
/// flags for both.
pub fn stack(extra: &[&str]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Stack { dir, port: free_port(), server: None, agent: None, agent_id: String::new() };
    s.start_server();
    let out = ok(s.server_cli(&["token", "generate"]));
    let token = out.trim().strip_prefix("Token: ").unwrap().to_owned();
    s.agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
    s.register(ID_A, UID_A, extra);
    s.register(ID_B, UID_B, extra);
    s.start_agent(Some(&token));
    s
}

/// `spiffe-demo <args>` as `uid` (gid the same), talking to `s`'s agent.
pub fn demo_as(s: &Stack, uid: u32, args: &[&str]) -> Command {
    let mut c = Command::new(DEMO);
    c.args(args).env("SPIFFE_ENDPOINT_SOCKET", s.endpoint()).uid(uid).gid(uid).current_dir("/");
    c
}

/// A `spiffe-demo serve` process, killed on drop.
pub struct Serve {
    pub child: Child,
    pub http: u16,
    pub mtls: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` as `uid` on fresh ports, peer `peer` (mTLS port, SPIFFE ID) if given.
pub fn serve(s: &Stack, uid: u32, mtls: u16, peer: Option<(u16, &str)>) -> Serve {
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mtls_listen = format!("127.0.0.1:{mtls}");
    let mut args = vec!["serve", "--listen", &listen, "--mtls-listen", &mtls_listen];
    let peer_url = peer.map(|(p, _)| format!("https://127.0.0.1:{p}"));
    if let (Some(url), Some((_, id))) = (&peer_url, peer) {
        args.extend(["--peer", url, "--peer-id", id]);
    }
    let log = std::fs::File::create(s.dir.path().join(format!("serve-{uid}.log"))).unwrap();
    let child = demo_as(s, uid, &args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let sv = Serve { child, http, mtls };
    wait_for("serve's HTTP listener", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    sv
}

/// One HTTP/1.1 request (Connection: close): status and body.
pub fn http(method: &str, port: u16, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

pub fn get_json(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (st, b) = http("GET", port, path, None);
    (st, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {b}")))
}

pub fn post_json(port: u16, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (st, b) = http("POST", port, path, Some(body));
    (st, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {b}")))
}

/// Waits until `GET /spiffe/status` answers 200 (the service has its SVID).
pub fn wait_ready(port: u16, timeout: Duration) {
    wait_for("the demo's SVID (/spiffe/status 200)", timeout, || get_json(port, "/spiffe/status").0 == 200);
}
