//! `sigil-attack-peer`: a hostile local client for the security regression tests
//! (`e2e/interop/tests/security.rs`). Test-only: this crate is never packaged.
//!
//! ```text
//! sigil-attack-peer exec-after-connect SOCKET PROGRAM [ARGS...]
//!     Connects to the Workload API at SOCKET, hands the connection to a child (`hold`), then exec's
//!     PROGRAM. The pid the agent saw connect is now PROGRAM (a setuid binary, or one another entry
//!     names), while the child still holds the connection.
//! sigil-attack-peer stream-then-exec SOCKET PROGRAM [ARGS...]
//!     The same, but the child first opens a FetchX509SVID stream (as what connected, legitimately) and
//!     prints `FIRST <ids>`; only then is PROGRAM exec'd. The child then prints what the stream brings
//!     next: `NEXT OK <ids>` / `NEXT ERR <code> <message>` (within 30 s).
//! sigil-attack-peer hold PID | hold-stream
//!     The child's side (standard input is the connection).
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use sigil_proto::workload as pb;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Endpoint;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("exec-after-connect") if args.len() >= 3 => exec_after_connect(&args[1], &args[2], &args[3..], false),
        Some("stream-then-exec") if args.len() >= 3 => exec_after_connect(&args[1], &args[2], &args[3..], true),
        Some("hold") if args.len() == 2 => hold(args[1].parse().expect("PID")),
        Some("hold-stream") if args.len() == 1 => hold_stream(),
        _ => {
            eprintln!(
                "usage: sigil-attack-peer exec-after-connect|stream-then-exec SOCKET PROGRAM [ARGS...] | hold PID | hold-stream"
            );
            ExitCode::from(2)
        }
    }
}

// The holder is never waited for: this process exec's another program right after starting it.
#[allow(clippy::zombie_processes)]
fn exec_after_connect(socket: &str, program: &str, args: &[String], stream_first: bool) -> ExitCode {
    let conn = std::os::unix::net::UnixStream::connect(socket).expect("connect to the Workload API");
    // The agent accepts (and looks at this pid) right away; give it time before the exec.
    std::thread::sleep(Duration::from_millis(300));
    let me = std::process::id().to_string();
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(conn))).stdout(Stdio::inherit());
    // With a stream first, the holder's stderr is a pipe on which it says when the stream is open.
    let ready = if stream_first {
        let (reader, writer) = std::io::pipe().expect("pipe");
        cmd.arg("hold-stream").stderr(Stdio::from(writer));
        Some(reader)
    } else {
        cmd.args(["hold", &me]).stderr(Stdio::inherit());
        None
    };
    let holder = cmd.spawn().expect("spawn the holder");
    drop(cmd);
    // The holder outlives us; its pid lets the test wait for it.
    println!("HOLDER {}", holder.id());
    std::io::stdout().flush().ok();
    if let Some(mut reader) = ready {
        let mut line = [0u8; 3];
        reader.read_exact(&mut line).expect("the holder's stream never opened");
    }
    let err = Command::new(program).args(args).stdin(Stdio::null()).exec();
    eprintln!("exec {program}: {err}");
    ExitCode::from(1)
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_owned())
}

async fn inherited_client() -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().expect("stdin fd");
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::UnixStream::from_std(std_stream).expect("tokio stream");
    let slot = Arc::new(Mutex::new(Some(stream)));
    let channel =
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let s = slot.lock().ok().and_then(|mut s| s.take());
                async move {
                    s.map(TokioIo::new).ok_or_else(|| std::io::Error::other("the inherited connection is used up"))
                }
            }))
            .await
            .expect("HTTP/2 over the inherited connection");
    SpiffeWorkloadApiClient::new(channel)
}

fn ids(m: &pb::X509svidResponse) -> String {
    m.svids.iter().map(|s| s.spiffe_id.as_str()).collect::<Vec<_>>().join(",")
}

fn hold_stream() -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client = inherited_client().await;
        let mut stream = match client.fetch_x509svid(with_header(pb::X509svidRequest {})).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                println!("FIRST ERR {:?} {}", s.code(), s.message());
                return;
            }
        };
        match stream.message().await {
            Ok(Some(m)) => println!("FIRST {}", ids(&m)),
            other => {
                println!("FIRST ERR {other:?}");
                return;
            }
        }
        std::io::stdout().flush().ok();
        // Tell the parent to exec now.
        let _ = std::io::stderr().write_all(b"go\n");
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        match next {
            Ok(Ok(Some(m))) => println!("NEXT OK {}", ids(&m)),
            Ok(Ok(None)) => println!("NEXT ERR Eof stream ended"),
            Ok(Err(s)) => println!("NEXT ERR {:?} {}", s.code(), s.message()),
            Err(_) => println!("NEXT TIMEOUT"),
        }
    });
    ExitCode::SUCCESS
}

fn hold(parent: u32) -> ExitCode {
    let before = comm(std::process::id()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match comm(parent) {
            Some(c) if c != before => break,
            None => break, // reaped already: its pid is gone either way
            _ if Instant::now() > deadline => {
                println!("HOLD-TIMEOUT parent {parent} never exec'd");
                return ExitCode::from(1);
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client = inherited_client().await;
        let x509 = match client.fetch_x509svid(with_header(pb::X509svidRequest {})).await {
            Ok(resp) => match resp.into_inner().message().await {
                Ok(Some(m)) => format!("X509 OK {}", ids(&m)),
                Ok(None) => "X509 ERR Eof stream ended".to_owned(),
                Err(s) => format!("X509 ERR {:?} {}", s.code(), s.message()),
            },
            Err(s) => format!("X509 ERR {:?} {}", s.code(), s.message()),
        };
        println!("{x509}");
        let jwt = match client
            .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
                audience: vec!["attack".into()],
                spiffe_id: String::new(),
            }))
            .await
        {
            Ok(resp) => format!(
                "JWT OK {}",
                resp.into_inner().svids.iter().map(|s| s.spiffe_id.as_str()).collect::<Vec<_>>().join(",")
            ),
            Err(s) => format!("JWT ERR {:?} {}", s.code(), s.message()),
        };
        println!("{jwt}");
    });
    ExitCode::SUCCESS
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    req
}
