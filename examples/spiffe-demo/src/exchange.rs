//! `spiffe-demo svid-exchange`: two services each fetch their X509-SVID, publish the certificate in a shared
//! directory, and validate the other's against their own trust bundle.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, WorkloadApiClient, X509Context};

use crate::validate::{self, Refusal, Role, now_unix};

#[derive(Debug, Clone)]
pub struct ExchangeOptions {
    /// `a` or `b`: this service (`service-a`), the peer is the other.
    pub name: String,
    pub dir: PathBuf,
    /// The Workload API endpoint (`unix:///path`).
    pub endpoint: String,
    /// Bound on the SVID fetch and, separately, on the wait for the peer's certificate.
    pub timeout: Duration,
}

/// Each failure is one line (printed after `[a] `).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("unknown service {0:?}: the services are a and b")]
    Name(String),
    #[error("no X509-SVID from the Workload API at {endpoint} within {secs} s: {last}")]
    NoSvid { endpoint: String, secs: u64, last: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("peer {peer} did not write {path} within {secs} s")]
    PeerTimeout { peer: String, path: PathBuf, secs: u64 },
    #[error("reading {path}: {reason}")]
    ReadPeer { path: PathBuf, reason: String },
    #[error("Peer {peer} refused: {refusal}")]
    Refused { peer: String, refusal: Refusal },
    #[error("output: {0}")]
    Output(std::io::Error),
}

/// The other service of the pair.
pub fn peer_of(name: &str) -> Result<&'static str, ExchangeError> {
    match name {
        "a" => Ok("b"),
        "b" => Ok("a"),
        other => Err(ExchangeError::Name(other.to_owned())),
    }
}

/// Where service `name` publishes its certificate.
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("svid-{name}.pem"))
}

/// Fetches the X.509 context, retrying until `timeout` (the agent may be starting; a workload without an
/// entry never gets one and ends with the last reason).
pub async fn fetch_context(endpoint: &str, timeout: Duration) -> Result<X509Context, ExchangeError> {
    let deadline = Instant::now() + timeout;
    let mut last = "no attempt".to_owned();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExchangeError::NoSvid { endpoint: endpoint.to_owned(), secs: timeout.as_secs(), last });
        }
        let attempt = async {
            let c = WorkloadApiClient::connect_to(endpoint).await.map_err(|e| e.to_string())?;
            c.fetch_x509_context().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(ctx)) if ctx.default_svid().is_some() => return Ok(ctx),
            Ok(Ok(_)) => last = "the Workload API returned no SVID".into(),
            Ok(Err(e)) => last = e,
            Err(_) => last = "the Workload API sent nothing".into(),
        }
        tokio::time::sleep(Duration::from_millis(300).min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Writes `text` to `path` atomically (temporary file, then rename), readable by the peer's uid.
fn publish(path: &Path, text: &str) -> Result<(), ExchangeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension(format!("pem.tmp.{}", std::process::id()));
    let w = |source| ExchangeError::Write { path: path.to_owned(), source };
    std::fs::write(&tmp, text).map_err(w)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(w)?;
    std::fs::rename(&tmp, path).map_err(w)
}

/// Waits for the peer's file, then parses its chain.
async fn read_peer(path: &Path, peer: &str, timeout: Duration) -> Result<Vec<CertificateDer<'static>>, ExchangeError> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return validate::parse_pem_chain(&text)
                    .map_err(|r| ExchangeError::ReadPeer { path: path.to_owned(), reason: r.to_string() });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ExchangeError::ReadPeer { path: path.to_owned(), reason: e.to_string() }),
        }
        if Instant::now() >= deadline {
            return Err(ExchangeError::PeerTimeout {
                peer: format!("service-{peer}"),
                path: path.to_owned(),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole exchange, printing its progress on `out`. Returns the peer's SPIFFE ID.
pub async fn run(o: &ExchangeOptions, out: &mut impl Write) -> Result<SpiffeId, ExchangeError> {
    let peer = peer_of(&o.name)?;
    let tag = format!("[{}]", o.name);
    let ctx = fetch_context(&o.endpoint, o.timeout).await?;
    let svid = ctx.default_svid().ok_or_else(|| ExchangeError::NoSvid {
        endpoint: o.endpoint.clone(),
        secs: o.timeout.as_secs(),
        last: "the Workload API returned no SVID".into(),
    })?;
    writeln!(out, "{tag} Got SPIFFE ID: {}", svid.spiffe_id()).map_err(ExchangeError::Output)?;
    let mine = cert_path(&o.dir, &o.name);
    publish(&mine, &crate::svid::chain_pem(svid))?;
    writeln!(out, "{tag} Wrote {}", mine.display()).map_err(ExchangeError::Output)?;
    let theirs = cert_path(&o.dir, peer);
    writeln!(out, "{tag} Waiting for service-{peer}'s certificate at {}", theirs.display())
        .map_err(ExchangeError::Output)?;
    out.flush().map_err(ExchangeError::Output)?;
    let chain = read_peer(&theirs, peer, o.timeout).await?;
    let id = validate::verify_chain(&chain, ctx.bundle_set(), now_unix(), Role::Client)
        .map_err(|refusal| ExchangeError::Refused { peer: format!("service-{peer}"), refusal })?;
    writeln!(out, "{tag} Peer service-{peer} identity valid \u{2713}").map_err(ExchangeError::Output)?;
    writeln!(out, "{tag} Peer SPIFFE ID: {id}").map_err(ExchangeError::Output)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pairs_and_paths() {
        assert_eq!(peer_of("a").unwrap(), "b");
        assert_eq!(peer_of("b").unwrap(), "a");
        assert_eq!(peer_of("c").unwrap_err().to_string(), "unknown service \"c\": the services are a and b");
        assert_eq!(cert_path(Path::new("/tmp/x"), "a"), PathBuf::from("/tmp/x/svid-a.pem"));
    }

    #[test]
    fn publish_is_atomic_and_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = cert_path(d.path(), "a");
        publish(&p, "x").unwrap();
        publish(&p, "y").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "y");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[tokio::test]
    async fn peer_wait_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let e = read_peer(&cert_path(d.path(), "b"), "b", Duration::from_millis(300)).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(e.to_string().starts_with("peer service-b did not write"), "{e}");
    }

    #[tokio::test]
    async fn svid_fetch_is_bounded() {
        let t0 = Instant::now();
        let e = fetch_context("unix:///nonexistent/api.sock", Duration::from_millis(500)).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(
            e.to_string().starts_with("no X509-SVID from the Workload API at unix:///nonexistent/api.sock within 0 s"),
            "{e}"
        );
    }
}
