//! Two trust domains on one host for tests/federation.rs and benches/federation.rs: a real sigil-server
//! (config file, bundle endpoint on loopback) and sigil-agent per trust domain, driven through the CLIs and
//! the go-spiffe workload program (e2e/interop/go/cmd/workload, SIGIL_GO_WORKLOAD).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;
use sha2::Digest;

use crate::common::{bin, free_port, ok, run, wait_for};

pub const A: &str = "a.test";
pub const B: &str = "b.test";
pub const A_WEB: &str = "spiffe://a.test/web";
pub const B_ECHO: &str = "spiffe://b.test/echo";

pub fn go_workload() -> PathBuf {
    PathBuf::from(std::env::var("SIGIL_GO_WORKLOAD").expect(
        "SIGIL_GO_WORKLOAD: the go-spiffe workload program (scripts/test.sh builds e2e/interop/go/cmd/workload)",
    ))
}

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

pub fn url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/")
}

/// `[federation.bundle_endpoint]` with https_spiffe on loopback.
pub fn spiffe_endpoint(port: u16, hint: &str) -> String {
    format!(
        "[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = {port}\nrefresh_hint = \"{hint}\"\nprofile = \"https_spiffe\"\n"
    )
}

pub fn federates_spiffe(td: &str, port: u16) -> String {
    format!(
        "[federation.federates_with.\"{td}\"]\nbundle_endpoint_url = \"{}\"\nbundle_endpoint_profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://{td}/spire/server\"\n",
        url(port)
    )
}

/// One trust domain: a sigil-server started with a config file, and its agent.
pub struct Domain {
    pub td: &'static str,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub server: Option<Child>,
    pub agent: Option<Child>,
    pub token: String,
}

impl Domain {
    /// Starts the server; `server_extra` goes into `[server]`, `federation` after it.
    pub fn start(td: &'static str, server_extra: &str, federation: &str) -> Domain {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("server.toml");
        std::fs::write(&config, format!("[server]\ntrust_domain = \"{td}\"\n{server_extra}\n{federation}")).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let server = Command::new(bin("sigil-server"))
            .args(["run", "-trustDomain", td, "-bindAddress", "127.0.0.1", "-healthPort", "0"])
            .arg("-serverPort")
            .arg(port.to_string())
            .arg("-dataDir")
            .arg(dir.path().join("server/data"))
            .arg("-socketPath")
            .arg(dir.path().join("server/api.sock"))
            .arg("-config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Domain { td, dir, port, server: Some(server), agent: None, token: String::new() };
        wait_for(&format!("{td} server healthcheck"), Duration::from_secs(30), || {
            d.cli(&["healthcheck"]).status.success()
        });
        let out = ok(d.cli(&["token", "generate"]));
        d.token = out.trim().strip_prefix("Token: ").unwrap().to_owned();
        d
    }

    pub fn agent_id(&self) -> String {
        format!("spiffe://{}/spire/agent/join_token/{}", self.td, self.token)
    }

    pub fn agent_sock(&self) -> PathBuf {
        self.dir.path().join("agent/public/api.sock")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(bin("sigil-server"))
            .args(args)
            .arg("-socketPath")
            .arg(self.dir.path().join("server/api.sock")))
    }

    pub fn start_agent(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(bin("sigil-agent"))
            .args(["run", "-trustDomain", self.td, "-serverAddress", "127.0.0.1", "-insecureBootstrap"])
            .arg("-serverPort")
            .arg(self.port.to_string())
            .arg("-dataDir")
            .arg(self.dir.path().join("agent/data"))
            .arg("-socketPath")
            .arg(self.agent_sock())
            .args(["-healthPort", "0", "-joinToken", &self.token])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// `entry create` for the current uid under this domain's agent, federated with `federates`.
    pub fn register(&self, id: &str, federates: &str, x509_ttl: Option<u32>) {
        let sel = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
        let fed = format!("spiffe://{federates}");
        let parent = self.agent_id();
        let ttl = x509_ttl.map(|t| t.to_string());
        let mut args =
            vec!["entry", "create", "-parentID", &parent, "-spiffeID", id, "-selector", &sel, "-federatesWith", &fed];
        if let Some(t) = &ttl {
            args.extend(["-x509SVIDTTL", t]);
        }
        ok(self.cli(&args));
    }

    /// `bundle show -format spiffe`.
    pub fn bundle(&self) -> Value {
        serde_json::from_str(&ok(self.cli(&["bundle", "show", "-format", "spiffe"]))).unwrap()
    }

    /// `bundle show -format spiffe` of `from` piped into this server's `bundle set -format spiffe -id`.
    pub fn bundle_set(&self, from: &Domain) {
        let doc = ok(from.cli(&["bundle", "show", "-format", "spiffe"]));
        let id = format!("spiffe://{}", from.td);
        let mut child = Command::new(bin("sigil-server"))
            .args(["bundle", "set", "-format", "spiffe", "-id", &id, "-socketPath"])
            .arg(self.dir.path().join("server/api.sock"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(doc.as_bytes()).unwrap();
        ok(child.wait_with_output().unwrap());
    }

    /// The go-spiffe workload program against this domain's agent.
    pub fn go(&self, args: &[&str]) -> Command {
        let mut c = Command::new(go_workload());
        c.args(args).env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", self.agent_sock().display()));
        c
    }

    pub fn go_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&ok(run(&mut self.go(args)))).unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        for c in [self.agent.take(), self.server.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} server.log\n{}\n---- {} agent.log\n{}",
                self.td,
                self.log("server.log"),
                self.td,
                self.log("agent.log")
            );
        }
    }
}

/// Kills a helper process when the test ends, whatever happens.
pub struct Reaper(pub Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns with stdout piped; lines arrive on the receiver.
pub fn spawn_lines(mut cmd: Command) -> (Reaper, mpsc::Receiver<(f64, String)>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((unix_now(), line)).is_err() {
                break;
            }
        }
    });
    (Reaper(child), rx)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (SHA-256 of every X.509 authority, sorted; every JWT key ID, sorted) of a SPIFFE bundle document.
pub fn authorities(doc: &Value) -> (Vec<String>, Vec<String>) {
    let mut x509 = vec![];
    let mut jwt = vec![];
    for k in doc["keys"].as_array().unwrap() {
        match k["use"].as_str() {
            Some("x509-svid") => {
                let der = base64::engine::general_purpose::STANDARD.decode(k["x5c"][0].as_str().unwrap()).unwrap();
                x509.push(hex(&sha2::Sha256::digest(&der)));
            }
            Some("jwt-svid") => jwt.push(k["kid"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    x509.sort();
    jwt.sort();
    (x509, jwt)
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or(&vec![]).iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

/// The workload's view (go-spiffe `bundles`) has `td`'s bundle with exactly `want`'s authorities.
pub fn sees(d: &Domain, id: &str, td: &str, want: &Value) -> bool {
    let out = run(&mut d.go(&["bundles", "-id", id, "-timeout", "5s"]));
    if !out.status.success() {
        return false;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = format!("spiffe://{td}");
    let (x509, jwt) = authorities(want);
    strings(&v["x509"][&key]) == x509 && strings(&v["jwt"][&key]) == jwt
}

/// A `federation show` line saying the last fetch succeeded at some time.
pub fn fetched(line: &str) -> bool {
    line.starts_with("Last success") && !line.trim_end().ends_with("never")
}

/// `bundle list -id <td> -format spiffe` on `on`, if stored.
pub fn stored(on: &Domain, td: &str) -> Option<Value> {
    let out = on.cli(&["bundle", "list", "-id", &format!("spiffe://{td}"), "-format", "spiffe"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{')?;
    serde_json::from_str(&text[start..]).ok()
}
