//! Sigil beside SPIRE on this machine, in one run: `scripts/bench-vs-spire.sh` (builds SPIRE v1.13.3 from its
//! Go module and the go-spiffe watcher, then runs this with `SIGIL_SPIRE_BIN` and `SIGIL_GO_WORKLOAD` set).
//! Without `SIGIL_SPIRE_BIN` only Sigil runs.
//!
//! Each product runs as its release binaries on loopback: a server (SQLite), an agent attested with a join
//! token, the unix workload attestor. The same things drive both: each product's own `entry create` /
//! `entry delete` CLI run once per entry (as a script of single creates does; the flags are the same for
//! both), and one watching workload, go-spiffe's generated Workload API client reading the raw
//! FetchX509SVID stream (`workload x509stream`), which reports every message it receives. Figures:
//! - single change: `entry create` started -> the watcher has the new SVID (p50/p99 over N changes)
//! - burst: 1,000 single-entry creates for the watching workload: messages and bytes it receives, agent
//!   and server CPU, until it has them all
//! - agent memory per cached SVID: RSS with ~1,000 more SVIDs, divided by 1,000
//! - churn: agent RSS after each of 6 cycles of 200 creates + 200 deletes (same SVID count after each)
//! - server RSS at the end (~1,020 entries) and server CPU per create
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{TD, free_port, wait_for};
use procstat::{cpu_seconds, rss_kib};

/// One product under test: a running server and agent, and its CLI.
struct Product {
    name: &'static str,
    /// The server binary whose `entry create|delete` subcommands drive it.
    server_cli: PathBuf,
    server_sock: PathBuf,
    agent_sock: PathBuf,
    agent_id: String,
    server_pid: u32,
    agent_pid: u32,
    /// Kept alive for the run (Sigil's [`common::Stack`] kills its processes on drop).
    _keep: Box<dyn std::any::Any>,
}

impl Product {
    fn entry_cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.server_cli)
            .args(["entry"])
            .args(args)
            .arg("-socketPath")
            .arg(&self.server_sock)
            .args(["-output", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{} entry {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `entry create` of one entry for workloads running as `uid`; returns its entry ID.
    fn create(&self, spiffe_id: &str, uid: u32) -> String {
        let sel = format!("unix:uid:{uid}");
        let v = self.entry_cli(&["create", "-parentID", &self.agent_id, "-spiffeID", spiffe_id, "-selector", &sel]);
        let r = &v["results"][0];
        assert_eq!(r["status"]["code"], 0, "{}: {v}", self.name);
        r["entry"]["id"].as_str().unwrap().to_owned()
    }

    fn delete(&self, entry_id: &str) {
        let v = self.entry_cli(&["delete", "-entryID", entry_id]);
        assert_eq!(v["results"][0]["status"]["code"], 0, "{}: {v}", self.name);
    }
}

fn sigil() -> Product {
    let s = common::stack(None);
    Product {
        name: "Sigil",
        server_cli: common::bin("sigil-server"),
        server_sock: s.server_sock(),
        agent_sock: s.agent_sock(),
        agent_id: s.agent_id.clone(),
        server_pid: s.server.as_ref().unwrap().id(),
        agent_pid: s.agent.as_ref().unwrap().id(),
        _keep: Box::new(s),
    }
}

/// SPIRE's server and agent with the plugins that match Sigil's setup: SQLite, in-memory keys, join token,
/// unix workload attestor.
struct Spire {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for Spire {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spire(bin_dir: &Path) -> Product {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    for sub in ["server/data", "agent/data", "agent/public"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let port = free_port();
    let server_sock = d.join("server/api.sock");
    let agent_sock = d.join("agent/public/api.sock");
    std::fs::write(
        d.join("server.conf"),
        format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{sock}"
  trust_domain = "{TD}"
  data_dir = "{data}"
  log_level = "WARN"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
}}
"#,
            sock = server_sock.display(),
            data = d.join("server/data").display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("agent.conf"),
        format!(
            r#"agent {{
  data_dir = "{data}"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{sock}"
  trust_domain = "{TD}"
  insecure_bootstrap = true
}}
plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#,
            sock = agent_sock.display(),
            data = d.join("agent/data").display()
        ),
    )
    .unwrap();
    let server_bin = bin_dir.join("spire-server");
    let agent_bin = bin_dir.join("spire-agent");
    let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
    let server = Command::new(&server_bin)
        .args(["run", "-config"])
        .arg(d.join("server.conf"))
        .stdout(log("server.out"))
        .stderr(log("server.log"))
        .spawn()
        .unwrap();
    let server_pid = server.id();
    let mut keep = Spire { _dir: dir, children: vec![server] };
    wait_for("spire-server healthcheck", Duration::from_secs(60), || {
        Command::new(&server_bin)
            .args(["healthcheck", "-socketPath"])
            .arg(&server_sock)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let out = Command::new(&server_bin).args(["token", "generate", "-socketPath"]).arg(&server_sock).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // "Token: <uuid>", then a warning line when no -spiffeID is given.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.lines().find_map(|l| l.strip_prefix("Token: ")).unwrap().trim().to_owned();
    let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
    let agent = Command::new(&agent_bin)
        .args(["run", "-config"])
        .arg(d.join("agent.conf"))
        .args(["-joinToken", &token])
        .stdout(log("agent.out"))
        .stderr(log("agent.log"))
        .spawn()
        .unwrap();
    let agent_pid = agent.id();
    keep.children.push(agent);
    let p = Product {
        name: "SPIRE v1.13.3",
        server_cli: server_bin,
        server_sock,
        agent_sock,
        agent_id,
        server_pid,
        agent_pid,
        _keep: Box::new(()),
    };
    p.create(&format!("spiffe://{TD}/workload"), nix::unistd::getuid().as_raw());
    wait_for("spire-agent serving the workload's SVID", Duration::from_secs(60), || {
        Command::new(&agent_bin)
            .args(["api", "fetch", "x509", "-socketPath"])
            .arg(&p.agent_sock)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    Product { _keep: Box::new(keep), ..p }
}

/// What the watching workload has received so far.
#[derive(Default)]
struct Seen {
    messages: u64,
    bytes: u64,
    svids: usize,
    /// SPIFFE ID -> when a message first had it (unix ns).
    added: HashMap<String, u128>,
    failed: Option<String>,
}

/// The go-spiffe watcher (`workload x509stream`) and what it has reported.
struct Watcher {
    child: Child,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Watcher {
    fn start(go_workload: &Path, agent_sock: &Path) -> Watcher {
        let mut child = Command::new(go_workload)
            .args(["x509stream", "-id", &format!("spiffe://{TD}/workload")])
            .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", agent_sock.display()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.splitn(4, ' ').collect();
                let (lock, cv) = &*shared;
                let mut s = lock.lock().unwrap();
                match f.as_slice() {
                    ["msg", _, svids, bytes] => {
                        s.messages += 1;
                        s.bytes += bytes.parse::<u64>().unwrap();
                        s.svids = svids.parse().unwrap();
                    }
                    ["add", t, id] => {
                        s.added.entry((*id).to_owned()).or_insert(t.parse().unwrap());
                    }
                    ["del", ..] => {}
                    _ => s.failed = Some(line.clone()),
                }
                cv.notify_all();
            }
            let (lock, cv) = &*shared;
            lock.lock().unwrap().failed.get_or_insert_with(|| "the watcher's stream ended".into());
            cv.notify_all();
        });
        Watcher { child, seen }
    }

    /// Waits until `done` holds of what was seen; returns what `f` takes from it then.
    fn until<T>(&self, what: &str, timeout: Duration, done: impl Fn(&Seen) -> bool, f: impl Fn(&Seen) -> T) -> T {
        let (lock, cv) = &*self.seen;
        let deadline = Instant::now() + timeout;
        let mut s = lock.lock().unwrap();
        loop {
            if done(&s) {
                return f(&s);
            }
            assert!(s.failed.is_none(), "watcher: {:?}", s.failed);
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| panic!("timed out: {what}"));
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }

    fn counters(&self) -> (u64, u64, usize) {
        let s = self.seen.0.lock().unwrap();
        (s.messages, s.bytes, s.svids)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One product's figures.
struct Figures {
    single_p50_ms: f64,
    single_p99_ms: f64,
    burst_messages: u64,
    burst_mb: f64,
    burst_s: f64,
    agent_cpu_s: f64,
    server_cpu_per_create_ms: f64,
    svid_kib: f64,
    churn_before_mib: f64,
    churn_after_mib: Vec<f64>,
    server_rss_mib: f64,
    agent_rss_mib: f64,
}

fn measure(p: &Product, go_workload: &Path, singles: usize) -> Figures {
    let uid = nix::unistd::getuid().as_raw();
    let w = Watcher::start(go_workload, &p.agent_sock);
    w.until("the first message", Duration::from_secs(30), |s| s.svids >= 1, |_| ());

    // Single changes, one at a time, 200 ms after the last arrived.
    let mut single = vec![];
    for i in 0..singles {
        std::thread::sleep(Duration::from_millis(200));
        let id = format!("spiffe://{TD}/single/e{i}");
        let t0 = now_ns();
        p.create(&id, uid);
        let seen = w.until(
            &format!("{id} on the stream"),
            Duration::from_secs(60),
            |s| s.added.contains_key(&id),
            |s| s.added[&id],
        );
        single.push((seen.saturating_sub(t0)) as f64 / 1e6);
    }
    single.sort_by(f64::total_cmp);
    std::thread::sleep(Duration::from_secs(2));
    let rss_small = rss_kib(p.agent_pid);

    // The burst.
    let (m0, b0, have) = w.counters();
    let want = have + 1000;
    let (agent0, server0) = (cpu_seconds(p.agent_pid), cpu_seconds(p.server_pid));
    let t0 = Instant::now();
    for i in 0..1000 {
        p.create(&format!("spiffe://{TD}/burst/e{i}"), uid);
    }
    w.until("the burst's SVIDs", Duration::from_secs(300), |s| s.svids >= want, |_| ());
    let burst_s = t0.elapsed().as_secs_f64();
    let (agent_cpu_s, server_cpu) = (cpu_seconds(p.agent_pid) - agent0, cpu_seconds(p.server_pid) - server0);
    let (m1, b1, _) = w.counters();
    std::thread::sleep(Duration::from_secs(3));
    let rss_big = rss_kib(p.agent_pid);

    // Churn: the same SVID count after each cycle.
    let base = want;
    let churn_before_mib = rss_big as f64 / 1024.0;
    let mut churn_after_mib = vec![];
    for cycle in 0..6 {
        let ids: Vec<String> = (0..200).map(|i| p.create(&format!("spiffe://{TD}/churn/c{cycle}/e{i}"), uid)).collect();
        w.until("a churn cycle's creates", Duration::from_secs(120), |s| s.svids == base + 200, |_| ());
        for id in &ids {
            p.delete(id);
        }
        w.until("a churn cycle's deletes", Duration::from_secs(120), |s| s.svids == base, |_| ());
        std::thread::sleep(Duration::from_secs(2));
        churn_after_mib.push(rss_kib(p.agent_pid) as f64 / 1024.0);
    }
    Figures {
        single_p50_ms: pct(&single, 0.5),
        single_p99_ms: pct(&single, 0.99),
        burst_messages: m1 - m0,
        burst_mb: (b1 - b0) as f64 / 1e6,
        burst_s,
        agent_cpu_s,
        // CPU seconds over 1,000 creates are milliseconds per create.
        server_cpu_per_create_ms: server_cpu,
        svid_kib: rss_big.saturating_sub(rss_small) as f64 / 1000.0,
        churn_before_mib,
        churn_after_mib,
        server_rss_mib: rss_kib(p.server_pid) as f64 / 1024.0,
        agent_rss_mib: rss_kib(p.agent_pid) as f64 / 1024.0,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let go_workload = PathBuf::from(std::env::var("SIGIL_GO_WORKLOAD").expect(
        "SIGIL_GO_WORKLOAD: the go-spiffe workload program (scripts/bench-vs-spire.sh builds it; see the header)",
    ));
    let singles: usize = std::env::var("SIGIL_SIDE_SINGLES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let only = std::env::var("SIGIL_SIDE_ONLY").unwrap_or_default();
    let mut results = vec![];
    if only != "spire" {
        let s = sigil();
        results.push((s.name, measure(&s, &go_workload, singles)));
        print_table(&results, singles);
    }
    if only != "sigil" {
        match std::env::var_os("SIGIL_SPIRE_BIN") {
            Some(dir) => {
                let p = spire(Path::new(&dir));
                results.push((p.name, measure(&p, &go_workload, singles)));
                print_table(&results, singles);
            }
            None => println!("SIGIL_SPIRE_BIN not set: Sigil only (scripts/bench-vs-spire.sh runs both)"),
        }
    }
}

fn print_table(results: &[(&str, Figures)], singles: usize) {
    println!("\nthe same run, the same go-spiffe watcher, each product's own `entry create` CLI per entry:");
    let row = |label: &str, f: &dyn Fn(&Figures) -> String| {
        print!("| {label:<62} |");
        for (_, r) in results {
            print!(" {:>22} |", f(r));
        }
        println!();
    };
    print!("| {:<62} |", "");
    for (name, _) in results {
        print!(" {name:>22} |");
    }
    println!();
    println!("|{}|{}", "-".repeat(64), "------------------------|".repeat(results.len()));
    row(&format!("entry create -> workload has the SVID, p50 ({singles} changes)"), &|f| {
        format!("{:.1} ms", f.single_p50_ms)
    });
    row("entry create -> workload has the SVID, p99", &|f| format!("{:.1} ms", f.single_p99_ms));
    row("1,000 single creates: messages to the watching workload", &|f| f.burst_messages.to_string());
    row("1,000 single creates: bytes to the watching workload", &|f| format!("{:.1} MB", f.burst_mb));
    row("1,000 single creates: until the workload has them all", &|f| format!("{:.1} s", f.burst_s));
    row("1,000 single creates: agent CPU", &|f| format!("{:.2} s", f.agent_cpu_s));
    row("server CPU per single-entry create (CLI call included)", &|f| format!("{:.2} ms", f.server_cpu_per_create_ms));
    row("agent memory per cached SVID (RSS delta / 1,000)", &|f| format!("{:.1} KiB", f.svid_kib));
    row("agent RSS with ~1,030 SVIDs, before churn", &|f| format!("{:.1} MiB", f.churn_before_mib));
    row("agent RSS after 6 churn cycles (200 creates + 200 deletes)", &|f| {
        format!("{:.1} MiB ({:+.0}%)", f.churn_after_mib[5], (f.churn_after_mib[5] / f.churn_before_mib - 1.0) * 100.0)
    });
    row("agent RSS, churn peak of the 6 cycles", &|f| {
        format!("{:.1} MiB", f.churn_after_mib.iter().copied().fold(0.0, f64::max))
    });
    row("server RSS at the end (~1,030 entries)", &|f| format!("{:.1} MiB", f.server_rss_mib));
    row("agent RSS at the end", &|f| format!("{:.1} MiB", f.agent_rss_mib));
}
