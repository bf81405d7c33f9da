//! Issue 17: the five weaknesses a security review reproduced, each performed again against the real
//! sigil-server and sigil-agent binaries, with an unprivileged uid (setpriv) where the attack needs one.
//! Every test here failed before the fix (see docs/security.md for the threat model and the fixes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use sigil_agent::attestation::NodeAttestor;
use sigil_agent::node::{self, ServerConn, StoredIdentity};
use sigil_core::TrustDomain;
use sigil_tls::ServerCheck;
use tonic::Code;

/// The unprivileged local user of the attacks (no such account needs to exist).
const ATTACKER: u32 = 3000;

fn setpriv(uid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]);
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn create_entry(s: &Stack, path: &str, selectors: &[&str]) {
    let id = format!("spiffe://{TD}{path}");
    let mut args = vec!["entry", "create", "-parentID", &s.agent_id, "-spiffeID", &id];
    for sel in selectors {
        args.extend(["-selector", sel]);
    }
    ok(s.server_cli(&args));
}

/// Runs `sigil-attack-peer exec-after-connect` as the attacker: it connects, hands the connection to a
/// child and exec's `program`; returns what the child then got from the agent on that connection.
fn exec_after_connect(s: &Stack, program: &[&str]) -> String {
    make_world_reachable(s.agent_sock().parent().unwrap());
    let out = setpriv(ATTACKER)
        .arg(bin("sigil-attack-peer"))
        .arg("exec-after-connect")
        .arg(s.agent_sock())
        .args(program)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&out);
    assert!(t.contains("X509 ") && t.contains("JWT "), "the holder never called the agent: {t}");
    t
}

// ----- 1. identity is bound to what connected -----

#[test]
fn exec_of_a_setuid_program_after_connect_does_not_yield_roots_identity() {
    // uid 0 (this test) is registered as /workload; the attacker as /attacker.
    let s = stack(None);
    create_entry(&s, "/attacker", &[&format!("unix:uid:{ATTACKER}")]);
    make_world_reachable(s.agent_sock().parent().unwrap());
    let fetch_as_attacker = || {
        setpriv(ATTACKER)
            .arg(bin("sigil-agent"))
            .args(["api", "fetch", "x509", "-socketPath"])
            .arg(s.agent_sock())
            .output()
            .unwrap()
    };
    wait_for("the attacker's own entry", Duration::from_secs(30), || text(&fetch_as_attacker()).contains("/attacker"));

    // passwd is setuid root: after the exec the connecting pid has euid 0 (and exits to a zombie at once,
    // since uid 3000 has no account), while its child still holds the connection.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/usr/bin/passwd").unwrap().permissions().mode();
    assert!(mode & 0o4000 != 0, "/usr/bin/passwd must be setuid root for this test to mean anything");
    let got = exec_after_connect(&s, &["/usr/bin/passwd"]);
    assert!(!got.contains("spiffe://example.org/workload"), "root's identity leaked: {got}");
    assert!(!got.contains(" OK "), "nothing may be served on that connection: {got}");
    assert!(got.contains("X509 ERR Unauthenticated"), "{got}");
    assert!(got.contains("JWT ERR Unauthenticated"), "{got}");
    assert!(got.contains("no longer what connected"), "{got}");

    // The attacker's own, unchanged process still gets exactly its own identity.
    let own = text(&fetch_as_attacker());
    assert!(own.contains("spiffe://example.org/attacker") && !own.contains("/workload"), "{own}");
}

#[test]
fn an_open_stream_stops_once_its_process_execs_a_setuid_program() {
    let s = stack(None);
    create_entry(&s, "/attacker", &[&format!("unix:uid:{ATTACKER}")]);
    make_world_reachable(s.agent_sock().parent().unwrap());
    wait_for("the attacker's own entry", Duration::from_secs(30), || {
        let o = setpriv(ATTACKER)
            .arg(bin("sigil-agent"))
            .args(["api", "fetch", "x509", "-socketPath"])
            .arg(s.agent_sock())
            .output()
            .unwrap();
        text(&o).contains("/attacker")
    });
    // The child opens its stream legitimately (uid 3000), then the connecting process becomes passwd.
    let mut child = setpriv(ATTACKER)
        .arg(bin("sigil-attack-peer"))
        .arg("stream-then-exec")
        .arg(s.agent_sock())
        .arg("/usr/bin/passwd")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let connecting_pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut read_line = || {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut lines, &mut l).unwrap();
        l
    };
    let mut first = read_line();
    if first.starts_with("HOLDER") {
        first = read_line();
    }
    assert_eq!(first.trim(), "FIRST spiffe://example.org/attacker");
    wait_for("the exec", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{connecting_pid}/comm")).unwrap_or_default().trim() == "passwd"
    });
    // A new SVID for uid 3000 changes the stream's view: the agent would push it now.
    create_entry(&s, "/attacker2", &[&format!("unix:uid:{ATTACKER}")]);
    let next = read_line();
    assert!(next.starts_with("NEXT ERR Unauthenticated"), "the stream went on after the exec: {next}");
    child.wait().unwrap();
}

#[test]
fn exec_of_another_program_after_connect_does_not_yield_its_path_identity() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    // The size limit keeps the agent from hashing the (large, debug) CLI binary on every fetch.
    std::fs::write(&config, "[workload_attestor.unix]\ndiscover_workload_path = true\nworkload_size_limit = 1048576\n")
        .unwrap();
    let s = stack_with(None, &[OsStr::new("-config"), config.as_os_str()]);
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    create_entry(&s, "/sleeper", &[&format!("unix:path:{}", sleep.display())]);
    // Path selectors do work in this agent: the fetch CLI's own binary has an entry too.
    let cli = std::fs::canonicalize(bin("sigil-agent")).unwrap();
    create_entry(&s, "/cli", &[&format!("unix:path:{}", cli.display())]);
    wait_for("the /cli entry by path", Duration::from_secs(30), || {
        text(&s.agent_cli(&["api", "fetch", "x509"])).contains("spiffe://example.org/cli")
    });
    // Entries reach the agent by push within milliseconds; wait for the server to have it, then a little.
    wait_for("the /sleeper entry", Duration::from_secs(30), || {
        text(&s.server_cli(&["entry", "show", "-spiffeID", "spiffe://example.org/sleeper"])).contains("sleeper")
    });
    std::thread::sleep(Duration::from_millis(500));
    // A connection made by another program that then exec's sleep gets nothing.
    let got = exec_after_connect(&s, &[sleep.to_str().unwrap(), "3"]);
    assert!(!got.contains("/sleeper"), "the exec'd program's identity leaked: {got}");
    assert!(got.contains("X509 ERR Unauthenticated") && got.contains("JWT ERR Unauthenticated"), "{got}");
}

// ----- 2. the :authority rewriter is bounded -----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_SIZE_ERROR: u32 = 0x6;
/// What h2 answers to an HPACK decoding failure (RFC 9113 says COMPRESSION_ERROR; see h2_authority.rs).
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend([kind, flags]);
    v.extend(stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One literal with incremental indexing (`value_len` bytes), then `refs` one-byte references to it.
fn reference_bomb(value_len: usize, refs: usize) -> Vec<u8> {
    let mut b = vec![0x40];
    hpack_int(&mut b, 0, 7, 6);
    b.extend_from_slice(b"x-bomb");
    hpack_int(&mut b, 0, 7, value_len);
    b.extend(std::iter::repeat_n(b'a', value_len));
    b.extend(std::iter::repeat_n(0xbe, refs));
    b
}

/// What the server answered on one bomb connection.
#[derive(Debug, Default)]
struct Answer {
    goaway: Option<u32>,
    resets: Vec<(u32, u32)>,
    ping_acked: bool,
    /// Response statuses: (stream, `:status`).
    statuses: Vec<(u32, String)>,
    /// (type, flags, stream, payload length) of every frame, for the failure message.
    frames: Vec<(u8, u8, u32, usize)>,
}

impl Answer {
    /// h2 answered stream 1 with 431 (Request Header Fields Too Large).
    fn refused_with_431(&self) -> bool {
        self.statuses.contains(&(1, "431".to_owned()))
    }
}

/// Sends `bomb` (after the preface and an empty SETTINGS) and a PING, and reads what comes back until the
/// server sends GOAWAY, or has both refused the stream and answered the PING, or closes, or 10 s pass.
fn send_bomb(socket: &std::path::Path, bomb: &[u8]) -> Answer {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend_from_slice(bomb);
    out.extend(frame(0x6, 0, 0, b"stillok?"));
    // The server may close before it read everything: a broken pipe here is expected.
    let _ = c.write_all(&out);
    let mut got = vec![];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let answer = parse_answer(&got);
        if answer.goaway.is_some() || (answer.ping_acked && (!answer.resets.is_empty() || answer.refused_with_431())) {
            break;
        }
    }
    parse_answer(&got)
}

fn parse_answer(mut b: &[u8]) -> Answer {
    let mut a = Answer::default();
    let mut hpack = loona_hpack::Decoder::new();
    while b.len() >= 9 {
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
        if b.len() < 9 + len {
            break;
        }
        let (kind, flags) = (b[3], b[4]);
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
        let p = &b[9..9 + len];
        a.frames.push((kind, flags, stream, len));
        match kind {
            0x7 if p.len() >= 8 => a.goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
            0x3 if p.len() >= 4 => a.resets.push((stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]]))),
            0x6 if flags & 0x1 != 0 && p == b"stillok?" => a.ping_acked = true,
            // h2's responses here fit one HEADERS frame (END_HEADERS), without padding or priority.
            0x1 if flags & 0x4 != 0 => {
                let fields = hpack.decode(p).unwrap_or_default();
                if let Some((_, v)) = fields.iter().find(|(n, _)| n == b":status") {
                    a.statuses.push((stream, String::from_utf8_lossy(v).into_owned()));
                }
            }
            _ => {}
        }
        b = &b[9 + len..];
    }
    a
}

/// Peak resident set size (VmHWM) of a process, in bytes.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[test]
fn hpack_bombs_get_the_right_http2_errors_with_bounded_memory_while_others_are_served() {
    let s = stack(None);
    let agent_pid = s.agent.as_ref().unwrap().id();
    let sock = s.agent_sock();
    let before = vm_hwm(agent_pid).unwrap();

    // The review's bombs first: a 254 KB HEADERS frame (4 KB entry, 250,000 references to it) and a 1 MB
    // one that first raises the dynamic table to 128 MiB.
    let review = frame(0x1, 0x4 | 0x1, 1, &reference_bomb(4_000, 250_000));
    let mut raise = vec![];
    hpack_int(&mut raise, 0x20, 5, 128 << 20);
    raise.extend(reference_bomb(100_000, 0));
    raise.resize(1 << 20, 0xbe);
    let raised = frame(0x1, 0x4 | 0x1, 1, &raise);
    // Within the frame size: the table raise alone, a 48 MB list in 16 KB, a CONTINUATION flood.
    let mut small_raise = vec![];
    hpack_int(&mut small_raise, 0x20, 5, 8_192);
    small_raise.extend(reference_bomb(100, 3));
    let small_raise = frame(0x1, 0x4 | 0x1, 1, &small_raise);
    let in_frame = frame(0x1, 0x4 | 0x1, 1, &reference_bomb(4_000, 12_000));
    let just_over = frame(0x1, 0x4 | 0x1, 1, &reference_bomb(4_000, 9));
    // Literals taking their name from a 4 KB table entry: each costs the decoder a 4 KB copy.
    let mut name_copies = vec![0x40];
    hpack_int(&mut name_copies, 0, 7, 4_000);
    name_copies.extend(std::iter::repeat_n(b'n', 4_000));
    name_copies.push(0x00);
    while name_copies.len() + 3 <= 16_384 {
        name_copies.extend_from_slice(&[0x0f, 47, 0x00]);
    }
    let name_copies = frame(0x1, 0x4 | 0x1, 1, &name_copies);
    let mut flood = frame(0x1, 0, 1, &reference_bomb(4_000, 0));
    for _ in 0..64 {
        flood.extend(frame(0x9, 0, 1, &[0xbe; 2_048]));
    }
    let cases: Vec<(&str, Vec<u8>, Option<u32>)> = vec![
        ("254 KB reference bomb", review, Some(FRAME_SIZE_ERROR)),
        ("1 MB frame raising the table to 128 MiB", raised, Some(FRAME_SIZE_ERROR)),
        ("table raised past 4096", small_raise, Some(PROTOCOL_ERROR)),
        ("CONTINUATION flood", flood, Some(ENHANCE_YOUR_CALM)),
        ("48 MB of references in one 16 KB frame", in_frame, Some(ENHANCE_YOUR_CALM)),
        ("5,000 literals copying a 4 KB name", name_copies, Some(ENHANCE_YOUR_CALM)),
        ("40 KB of header list", just_over, None),
    ];

    // A well-behaved client keeps fetching from another thread the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let bystander = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let sock = sock.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let o = Command::new(bin("sigil-agent"))
                    .args(["api", "fetch", "x509", "-socketPath"])
                    .arg(&sock)
                    .output()
                    .unwrap();
                if o.status.success() && text(&o).contains("spiffe://example.org/workload") {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.lock().unwrap().push(text(&o));
                }
            }
        })
    };

    // At least 3 rounds, and on until the bystander has been served 5 times while the bombs flew.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    while round < 3 || served.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < deadline, "the bystander was served only {} times", served.load(Ordering::SeqCst));
        let answers = std::thread::scope(|scope| {
            let mut handles = vec![];
            for (what, bomb, want) in &cases {
                for _ in 0..4 {
                    let sock = sock.clone();
                    handles.push(scope.spawn(move || (*what, *want, send_bomb(&sock, bomb))));
                }
            }
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        // Memory first: it is what the bombs were for.
        let hwm =
            vm_hwm(agent_pid).unwrap_or_else(|| panic!("the agent died in round {round}: {}", s.log("agent.log")));
        assert!(hwm < 64 << 20, "round {round}: agent peak RSS {} MiB (was {} MiB)", hwm >> 20, before >> 20);
        for (what, want, got) in answers {
            match want {
                Some(code) => assert_eq!(got.goaway, Some(code), "round {round}, {what}: {got:?}"),
                // Over the header list limit: h2 answers that request 431, the connection lives on.
                None => {
                    assert!(got.refused_with_431(), "round {round}, {what}: {got:?}");
                    assert!(got.ping_acked && got.goaway.is_none(), "round {round}, {what}: {got:?}");
                }
            }
        }
        round += 1;
    }
    stop.store(true, Ordering::SeqCst);
    bystander.join().unwrap();
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "a well-behaved client was refused during the attack: {failed:?}");
    let peak = vm_hwm(agent_pid).unwrap();
    println!(
        "agent peak RSS: {:.1} MiB before, {:.1} MiB after {} bomb connections; bystander served {} times",
        mib(before),
        mib(peak),
        round * cases.len() * 4,
        served.load(Ordering::SeqCst)
    );
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

// ----- 3. and 5. agent records: eviction and SVID renewal -----

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn server_addr(s: &Stack) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", s.port).parse().unwrap()
}

/// A connection to the agent API presenting `identity`'s SVID, as an agent (or a thief) would.
fn agent_conn(s: &Stack, identity: &StoredIdentity) -> ServerConn {
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(identity.bundle.clone()));
    let conn = ServerConn::new(server_addr(s), node::server_id(&td()).unwrap(), rx);
    conn.set_identity(identity).unwrap();
    conn
}

async fn attest(s: &Stack, token: &str) -> StoredIdentity {
    let evidence = NodeAttestor::JoinToken(token.to_owned()).evidence().unwrap();
    node::attest(server_addr(s), ServerCheck::InsecureBootstrap, &td(), &evidence).await.unwrap()
}

/// Opens the entry stream with `conn`'s SVID: the status the server answers with.
async fn sync_status(conn: &ServerConn) -> Code {
    match conn.client().unwrap().sync_entries(sigil_proto::agent::SyncEntriesRequest {}).await {
        Ok(resp) => match resp.into_inner().message().await {
            Ok(Some(_)) => Code::Ok,
            Ok(None) => Code::Unknown,
            Err(s) => s.code(),
        },
        Err(s) => s.code(),
    }
}

async fn cli(s: &Arc<Stack>, args: &'static [&'static str], extra: Vec<String>) -> Output {
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(extra.iter().map(String::as_str));
        s.server_cli(&all)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_in_flight_does_not_undo_an_eviction() {
    let s = Arc::new(tokio::task::spawn_blocking(server_only).await.unwrap());
    for round in 0..8 {
        let token = s.generate_token();
        let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
        let identity = Arc::new(attest(&s, &token).await);
        let conn = Arc::new(agent_conn(&s, &identity));
        assert_eq!(sync_status(&conn).await, Code::Ok);
        // Renewals hammer the server from several tasks while the agent is evicted.
        let stop = Arc::new(AtomicBool::new(false));
        let renewed = Arc::new(AtomicU64::new(0));
        let mut tasks = vec![];
        for _ in 0..6 {
            let (conn, identity, stop, renewed) = (conn.clone(), identity.clone(), stop.clone(), renewed.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if conn.renew(&identity, &td()).await.is_ok() {
                        renewed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let evicted = cli(&s, &["agent", "evict", "-spiffeID"], vec![agent_id.clone()]).await;
        assert!(evicted.status.success(), "round {round}: {}", text(&evicted));
        // Let every renewal that was in flight finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        assert!(renewed.load(Ordering::SeqCst) > 0, "round {round}: no renewal went through before the eviction");
        let listed = cli(&s, &["agent", "list"], vec![]).await;
        assert!(!text(&listed).contains(&agent_id), "round {round}: the evicted agent is back: {}", text(&listed));
        assert_eq!(sync_status(&conn).await, Code::PermissionDenied, "round {round}");
        let signed = conn
            .client()
            .unwrap()
            .batch_new_x509_svid(sigil_proto::agent::BatchNewX509SvidRequest { params: vec![] })
            .await;
        assert_eq!(signed.unwrap_err().code(), Code::PermissionDenied, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_svid_stops_working_once_its_renewal_is_in_use() {
    let mut stack = tokio::task::spawn_blocking(server_only).await.unwrap();
    let token = stack.token.clone();
    let first = attest(&stack, &token).await;
    let old = agent_conn(&stack, &first);
    assert_eq!(sync_status(&old).await, Code::Ok);

    // Renewed, but the agent has not switched yet (it may crash before storing the new SVID): the SVID
    // it holds keeps working.
    let second = old.renew(&first, &td()).await.unwrap();
    assert_ne!(second.chain_der[0], first.chain_der[0]);
    assert_eq!(sync_status(&old).await, Code::Ok, "before the switch the old SVID still works");

    // A thief's entry stream, opened with the old SVID while it was still current.
    let mut thief_stream =
        old.client().unwrap().sync_entries(sigil_proto::agent::SyncEntriesRequest {}).await.unwrap().into_inner();
    assert!(thief_stream.message().await.unwrap().is_some());

    // The agent switches: from now on only the new SVID is accepted, and the thief's stream ends.
    let new = agent_conn(&stack, &second);
    assert_eq!(sync_status(&new).await, Code::Ok);
    let ended = tokio::time::timeout(Duration::from_secs(10), thief_stream.message()).await.unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(sync_status(&old).await, Code::PermissionDenied, "a copy of the old SVID must be useless");
    let err = old
        .client()
        .unwrap()
        .batch_new_x509_svid(sigil_proto::agent::BatchNewX509SvidRequest { params: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not the agent's current SVID"), "{}", err.message());
    let err = old.renew(&first, &td()).await.unwrap_err();
    assert!(err.to_string().contains("not the agent's current SVID"), "{err}");

    // The same after a server restart: the record is durable.
    let mut s = tokio::task::spawn_blocking(move || {
        stack.kill_server();
        stack.start_server();
        stack
    })
    .await
    .unwrap();
    let old = agent_conn(&s, &first);
    let new = agent_conn(&s, &second);
    assert_eq!(sync_status(&old).await, Code::PermissionDenied);
    assert_eq!(sync_status(&new).await, Code::Ok);
    s.kill_server();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_agent_renews_its_svid_and_a_copy_of_the_old_one_is_refused() {
    // Agent SVIDs of 30 s (40 s with the backdating): the agent renews about 10 s after attesting, and the
    // first SVID is still valid for 20 s then, so only its serial can make the server refuse it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[server]\nagent_ttl = \"30s\"\n").unwrap();
    let s =
        tokio::task::spawn_blocking(move || stack_with_args(None, &[OsStr::new("-config"), config.as_os_str()], &[]))
            .await
            .unwrap();
    let data = s.dir.path().join("agent/data");
    let stolen = StoredIdentity::load(&data, &td()).unwrap().unwrap();
    let s = Arc::new(s);
    let renewals = |s: &Stack| s.log("agent.log").matches("agent SVID renewed").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while renewals(&s) < 1 {
        assert!(Instant::now() < deadline, "the agent did not renew: {}", s.log("agent.log"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent reconnects with its new SVID at once, which makes it the current one: from then on a copy
    // of the first SVID (say, read off the node's disk earlier) is useless.
    let deadline = Instant::now() + Duration::from_secs(15);
    while sync_status(&agent_conn(&s, &stolen)).await != Code::PermissionDenied {
        assert!(Instant::now() < deadline, "the first SVID is still accepted after the renewal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(stolen.not_after > now + 5, "the first SVID must still be valid for this to mean anything");
    // The agent kept working through the renewal, and was never taken for evicted.
    let s2 = s.clone();
    let fetched = tokio::task::spawn_blocking(move || s2.agent_cli(&["api", "fetch", "x509"])).await.unwrap();
    assert!(text(&fetched).contains("spiffe://example.org/workload"), "{}", text(&fetched));
    assert!(!s.log("agent.log").contains("no longer accepts this agent"), "{}", s.log("agent.log"));
    // The agent's current one works.
    let current = StoredIdentity::load(&data, &td()).unwrap().unwrap();
    assert_ne!(current.chain_der[0], stolen.chain_der[0]);
    assert_eq!(sync_status(&agent_conn(&s, &current)).await, Code::Ok);
}

// ----- 4. socket folders under a shared directory -----

/// A directory like /tmp: world-writable and sticky, reachable by the attacker.
fn shared_tmp(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let shared = dir.join("tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    make_world_reachable(&shared);
    shared
}

/// Runs a service that must refuse to start; returns what it printed.
fn refused(cmd: &mut Command) -> String {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(!status.success(), "{}", text(&out));
            return text(&out);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("the service started instead of refusing its socket directory: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn agent_cmd(socket: &std::path::Path, data: &std::path::Path) -> Command {
    let mut c = Command::new(bin("sigil-agent"));
    c.args(["run", "-trustDomain", TD, "-serverAddress", "127.0.0.1", "-insecureBootstrap", "-joinToken", "x"])
        .arg("-serverPort")
        .arg(free_port().to_string())
        .arg("-healthPort")
        .arg("0")
        .arg("-dataDir")
        .arg(data)
        .arg("-socketPath")
        .arg(socket);
    c
}

fn server_cmd(socket: &std::path::Path, data: &std::path::Path) -> Command {
    let mut c = Command::new(bin("sigil-server"));
    c.args(["run", "-trustDomain", TD, "-bindAddress", "127.0.0.1", "-healthPort", "0"])
        .arg("-serverPort")
        .arg(free_port().to_string())
        .arg("-dataDir")
        .arg(data)
        .arg("-socketPath")
        .arg(socket);
    c
}

#[test]
fn socket_folders_another_user_could_swap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_tmp(dir.path());
    // The attacker creates the default-looking folders first, open to everyone.
    let o = setpriv(ATTACKER)
        .args(["sh", "-c", "umask 0 && mkdir -p \"$1/sigil-agent/public\" \"$1/sigil-server/private\"", "sh"])
        .arg(&shared)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let agent_sock = shared.join("sigil-agent/public/api.sock");
    let msg = refused(&mut agent_cmd(&agent_sock, &dir.path().join("agent-data")));
    assert!(msg.contains(&format!("owned by uid {ATTACKER}")) && msg.contains("sigil-agent"), "{msg}");
    assert!(!agent_sock.exists(), "no socket may be created in the attacker's folder");

    let server_sock = shared.join("sigil-server/private/api.sock");
    let msg = refused(&mut server_cmd(&server_sock, &dir.path().join("server-data")));
    assert!(msg.contains(&format!("owned by uid {ATTACKER}")) && msg.contains("sigil-server"), "{msg}");
    assert!(!server_sock.exists());

    // Root's own folder, but writable by everyone: refused too, with the fix in the message.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let msg = refused(&mut agent_cmd(&open.join("api.sock"), &dir.path().join("agent-data2")));
    assert!(msg.contains("chmod go-w"), "{msg}");
    // A private folder must be private.
    let readable = dir.path().join("readable");
    std::fs::create_dir(&readable).unwrap();
    std::fs::set_permissions(&readable, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let msg = refused(&mut server_cmd(&readable.join("api.sock"), &dir.path().join("server-data2")));
    assert!(msg.contains("chmod 700"), "{msg}");
    // A symlinked folder, even to a good one.
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let link = shared.join("linked");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let msg = refused(&mut agent_cmd(&link.join("api.sock"), &dir.path().join("agent-data3")));
    assert!(msg.contains("symlink"), "{msg}");

    // Fresh folders under the shared sticky directory (what /tmp/sigil-* is on a clean host) are fine.
    let mut s = server_only();
    let fresh = shared.join("fresh/sigil-server/private/api.sock");
    let mut c = server_cmd(&fresh, &s.dir.path().join("fresh-data"));
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the server on a fresh socket folder", Duration::from_secs(30), || {
        Command::new(bin("sigil-server")).args(["healthcheck", "-socketPath"]).arg(&fresh).status().unwrap().success()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    s.kill_server();
}
