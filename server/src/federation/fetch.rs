//! One bounded HTTPS GET of a foreign bundle endpoint, and turning its answer into a bundle.
//!
//! Bounds, because the endpoint belongs to another organisation and may be slow, wrong or hostile:
//! - [`FETCH_TIMEOUT`] (10 s) for everything together: name resolution, connect, TLS handshake, every
//!   redirect hop, response head and body. A peer that accepts TCP and never answers costs 10 s, no more.
//! - [`MAX_BODY`] (1 MiB) of body: a `Content-Length` above it is refused before reading, a body growing
//!   past it while read is refused then. A real bundle is a few KiB (SPIRE's with ten CAs is ~10 KiB).
//! - At most [`MAX_REDIRECTS`] (3) redirects (301, 302, 303, 307, 308), each to an `https` URL without user
//!   info, each hop with the same TLS checks (https_spiffe: the same endpoint SPIFFE ID and bundle; https_web:
//!   the new host's name), none remembered (SPIFFE Federation 4.2, checklist G6). Go's client, which SPIRE
//!   uses, follows 10; a bundle endpoint has no reason for more than a move or two.
//! - One request per connection (`Connection: close`), TLS 1.2 or 1.3, ALPN `http/1.1`, no client
//!   certificate, no session resumption (every fetch sees and checks the certificate served now).
//! - A non-200 answer is reported with its status and the first [`ERROR_EXCERPT`] bytes of its body.
//!
//! The decisions on an answer ([`next_step`], [`redirect_target`], [`describe_non_bundle`]) are pure and
//! table-tested here.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use http::{Request, StatusCode};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use sigil_core::SpiffeId;
use sigil_core::bundle::Bundle;
use url::{Host, Url};

use super::verify::{FailureNote, SpiffeEndpointVerifier, WebEndpointVerifier};

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_BODY: usize = 1024 * 1024;
pub const MAX_REDIRECTS: usize = 3;
/// How much of a non-200 body is quoted in the error.
pub const ERROR_EXCERPT: usize = 200;

/// Why a fetch failed. Each message says what was wrong and, where it helps, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// SPIRE's words, so searches for them find both.
    #[error(
        "can't perform SPIFFE Authentication: local copy of bundle not found (no stored bundle of trust domain \
         {trust_domain}, the trust domain of endpoint_spiffe_id {endpoint}; bootstrap it once with \
         `sigil-server bundle set -id spiffe://{trust_domain} -format spiffe`, e.g. from the peer's \
         `bundle show -format spiffe`)"
    )]
    NoLocalBundle { trust_domain: String, endpoint: String },
    #[error("https_web trust anchors: {0}")]
    Roots(String),
    #[error("bundle endpoint URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("HTTP exchange with {addr} failed: {reason}")]
    Http { addr: String, reason: String },
    #[error(
        "no complete answer within {}s (name resolution, connect, TLS handshake, redirects, response and body \
         together)",
        FETCH_TIMEOUT.as_secs()
    )]
    Timeout,
    #[error("the answer from {url} is larger than {} bytes (1 MiB); refused without reading it all", MAX_BODY)]
    TooLarge { url: String },
    #[error("{url} answered HTTP {status}{excerpt}")]
    Status { url: String, status: u16, excerpt: String },
    #[error("{url} redirected more than {} times", MAX_REDIRECTS)]
    TooManyRedirects { url: String },
    #[error("{url} answered HTTP {status} without a usable Location: {reason}")]
    BadRedirect { url: String, status: u16, reason: String },
    #[error("the answer from {url} is not a SPIFFE bundle: {description}")]
    NotABundle { url: String, description: String },
    #[error("the bundle served by {url} is refused: {reason}")]
    Refused { url: String, reason: String },
}

/// How the endpoint must authenticate itself.
#[derive(Debug, Clone)]
pub(crate) enum EndpointAuth {
    /// https_spiffe: an X509-SVID for `expected`, valid for `bundle`.
    Spiffe { expected: SpiffeId, bundle: Bundle },
    /// https_web: a certificate chaining to `roots`, valid for the URL's host.
    Web { roots: Arc<RootCertStore> },
}

/// A 200 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The URL that answered (after redirects).
    pub url: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// What to do with a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read the body (at most [`MAX_BODY`]) as the bundle.
    Body,
    /// Follow the `Location`.
    Redirect,
    /// Report the status with an excerpt of the body.
    Fail,
}

/// The decision on a response status.
pub(crate) fn next_step(status: StatusCode) -> Step {
    match status.as_u16() {
        200 => Step::Body,
        301 | 302 | 303 | 307 | 308 => Step::Redirect,
        _ => Step::Fail,
    }
}

/// The URL a redirect leads to: `location` resolved against `current`, which must again be an acceptable
/// bundle endpoint URL (https, a host, no user info).
pub(crate) fn redirect_target(current: &Url, location: Option<&str>) -> Result<Url, String> {
    let location = location.filter(|l| !l.is_empty()).ok_or("no Location header")?;
    let next = current.join(location).map_err(|e| format!("Location {location:?}: {e}"))?;
    sigil_core::federation::check_bundle_endpoint_url(next.as_str())
        .map_err(|e| format!("Location {location:?}: {e}"))?;
    Ok(next)
}

/// Printable text of at most `max` bytes of `body`, other bytes shown as `.`.
fn excerpt(body: &[u8], max: usize) -> String {
    let shown: String = body
        .iter()
        .take(max)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else if b.is_ascii_whitespace() {
                ' '
            } else {
                '.'
            }
        })
        .collect();
    let shown = shown.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > max { format!("{shown}...") } else { shown }
}

/// Why `body` is not a bundle, in words an operator can act on: HTML (a web page, a login portal or the
/// wrong path) is named as such, anything else is quoted briefly.
pub(crate) fn describe_non_bundle(body: &[u8], content_type: Option<&str>, parse_error: &str) -> String {
    let ct = content_type.unwrap_or("none");
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace()).map(|i| &body[i..]).unwrap_or_default();
    let html = ct.to_ascii_lowercase().contains("html") || trimmed.first() == Some(&b'<');
    if html {
        return format!(
            "it is an HTML page (Content-Type {ct}): {parse_error}; is bundle_endpoint_url the bundle endpoint itself \
             (SPIRE and Sigil serve it at path /)?"
        );
    }
    if body.is_empty() {
        return format!("the body is empty (Content-Type {ct}): {parse_error}");
    }
    format!("{parse_error} (Content-Type {ct}; it starts with {:?})", excerpt(body, 60))
}

/// Parses `answer` as the bundle of `trust_domain` and checks it ([`sigil_core::federation::accept`]).
pub(crate) fn bundle_of(trust_domain: &sigil_core::TrustDomain, answer: &Answer) -> Result<Bundle, FetchError> {
    let bundle = Bundle::from_jwks_json(trust_domain.clone(), &answer.body).map_err(|e| FetchError::NotABundle {
        url: answer.url.clone(),
        description: describe_non_bundle(&answer.body, answer.content_type.as_deref(), &e.to_string()),
    })?;
    sigil_core::federation::accept::check_fetched_bundle(&bundle)
        .map_err(|e| FetchError::Refused { url: answer.url.clone(), reason: e.to_string() })?;
    Ok(bundle)
}

/// GETs `url` (following redirects), all within [`FETCH_TIMEOUT`].
pub(crate) async fn get(url: &str, auth: &EndpointAuth) -> Result<Answer, FetchError> {
    match tokio::time::timeout(FETCH_TIMEOUT, get_following(url, auth)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout),
    }
}

async fn get_following(url: &str, auth: &EndpointAuth) -> Result<Answer, FetchError> {
    let mut current = Url::parse(url).map_err(|e| FetchError::Url { url: url.to_owned(), reason: e.to_string() })?;
    let mut redirects = 0;
    loop {
        let head = get_once(&current, auth).await?;
        match next_step(head.status) {
            Step::Body => {
                return Ok(Answer { url: current.to_string(), content_type: head.content_type, body: head.body });
            }
            Step::Fail => {
                let text = excerpt(&head.body, ERROR_EXCERPT);
                let excerpt = if text.is_empty() { String::new() } else { format!(": {text}") };
                return Err(FetchError::Status { url: current.to_string(), status: head.status.as_u16(), excerpt });
            }
            Step::Redirect => {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(FetchError::TooManyRedirects { url: url.to_owned() });
                }
                let next = redirect_target(&current, head.location.as_deref()).map_err(|reason| {
                    FetchError::BadRedirect { url: current.to_string(), status: head.status.as_u16(), reason }
                })?;
                tracing::debug!(from = %current, to = %next, "bundle endpoint redirect");
                current = next;
            }
        }
    }
}

/// What one exchange returned.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    content_type: Option<String>,
    location: Option<String>,
    body: Vec<u8>,
}

fn client_config(auth: &EndpointAuth, note: &FailureNote) -> Result<rustls::ClientConfig, FetchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match auth {
        EndpointAuth::Spiffe { expected, bundle } => Arc::new(SpiffeEndpointVerifier {
            expected: expected.clone(),
            bundle: bundle.clone(),
            algorithms,
            note: note.clone(),
        }),
        EndpointAuth::Web { roots } => Arc::new(
            WebEndpointVerifier::new(roots.clone(), provider.clone(), note.clone()).map_err(FetchError::Roots)?,
        ),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| FetchError::Roots(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

async fn connect(host: &Host<&str>, port: u16, shown: &str) -> Result<tokio::net::TcpStream, FetchError> {
    let err = |reason: String| FetchError::Connect { addr: shown.to_owned(), reason };
    let tcp = match host {
        Host::Domain(d) => tokio::net::TcpStream::connect((*d, port)).await,
        Host::Ipv4(ip) => tokio::net::TcpStream::connect(SocketAddr::new((*ip).into(), port)).await,
        Host::Ipv6(ip) => tokio::net::TcpStream::connect(SocketAddr::new((*ip).into(), port)).await,
    }
    .map_err(|e| err(e.to_string()))?;
    // Small request, small answer: no reason to wait for Nagle.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn get_once(url: &Url, auth: &EndpointAuth) -> Result<Head, FetchError> {
    let bad_url = |reason: &str| FetchError::Url { url: url.to_string(), reason: reason.to_owned() };
    let host = url.host().ok_or_else(|| bad_url("no host"))?;
    let port = url.port_or_known_default().ok_or_else(|| bad_url("no port"))?;
    let host_text = url.host_str().ok_or_else(|| bad_url("no host"))?;
    let shown = format!("{host_text}:{port}");
    let server_name = match &host {
        Host::Domain(d) => ServerName::try_from((*d).to_owned()).map_err(|e| bad_url(&e.to_string()))?,
        Host::Ipv4(ip) => ServerName::IpAddress(std::net::IpAddr::V4(*ip).into()),
        Host::Ipv6(ip) => ServerName::IpAddress(std::net::IpAddr::V6(*ip).into()),
    };
    let note = FailureNote::default();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(auth, &note)?));
    let tcp = connect(&host, port, &shown).await?;
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| FetchError::Tls { addr: shown.clone(), reason: note.take().unwrap_or_else(|| e.to_string()) })?;

    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let authority = match url.port() {
        Some(p) => format!("{host_text}:{p}"),
        None => host_text.to_owned(),
    };
    let req = Request::get(path)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("sigil-server/", env!("CARGO_PKG_VERSION")))
        .header(CONNECTION, "close")
        .body(String::new())
        .map_err(|e| bad_url(&e.to_string()))?;
    exchange(tls, req, url).await.map_err(|e| match e {
        Exchange::Http(reason) => FetchError::Http { addr: shown, reason },
        Exchange::TooLarge => FetchError::TooLarge { url: url.to_string() },
    })
}

enum Exchange {
    Http(String),
    TooLarge,
}

/// Sends `req` and reads the head and, under the bounds of [`next_step`], the body. The connection future is
/// driven here, next to the exchange, so the caller's timeout ends both.
async fn exchange<I>(io: I, req: Request<String>, url: &Url) -> Result<Head, Exchange>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| Exchange::Http(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, String>(TokioIo::new(io)).await.map_err(http)?;
    let work = async move {
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let header =
            |name| resp.headers().get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::to_owned);
        let content_type = header(CONTENT_TYPE);
        let location = header(LOCATION);
        let (limit, truncate) = match next_step(status) {
            Step::Body => (MAX_BODY, false),
            // A redirect's body is not needed; an error's is quoted briefly.
            Step::Redirect => (0, true),
            Step::Fail => (ERROR_EXCERPT + 1, true),
        };
        let declared = header(CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if !truncate && declared.is_some_and(|n| n > limit as u64) {
            return Err(Exchange::TooLarge);
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while out.len() < limit || !truncate {
            let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await else { break };
            let Ok(data) = frame.map_err(http)?.into_data() else { continue };
            if out.len() + data.len() > limit {
                if truncate {
                    out.extend_from_slice(data.get(..limit - out.len()).unwrap_or_default());
                    break;
                }
                return Err(Exchange::TooLarge);
            }
            out.extend_from_slice(&data);
        }
        Ok(Head { status, content_type, location, body: out })
    };
    let mut conn = std::pin::pin!(conn);
    let mut work = std::pin::pin!(work);
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut work => {
                if let Ok(h) = &r {
                    tracing::trace!(%url, status = h.status.as_u16(), bytes = h.body.len(), "bundle endpoint answered");
                }
                return r;
            }
            c = &mut conn, if !conn_done => {
                conn_done = true;
                c.map_err(http)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_by_status() {
        let cases: &[(u16, Step)] = &[
            (200, Step::Body),
            (301, Step::Redirect),
            (302, Step::Redirect),
            (303, Step::Redirect),
            (307, Step::Redirect),
            (308, Step::Redirect),
            (204, Step::Fail),
            (300, Step::Fail),
            (304, Step::Fail),
            (404, Step::Fail),
            (500, Step::Fail),
            (503, Step::Fail),
        ];
        for (code, want) in cases {
            assert_eq!(next_step(StatusCode::from_u16(*code).unwrap()), *want, "{code}");
        }
    }

    #[test]
    fn redirect_targets() {
        let cur = Url::parse("https://b.test:8443/bundle?x=1").unwrap();
        let cases: &[(Option<&str>, Result<&str, &str>)] = &[
            (Some("https://c.test/b"), Ok("https://c.test/b")),
            (Some("/moved"), Ok("https://b.test:8443/moved")),
            (Some("moved"), Ok("https://b.test:8443/moved")),
            (Some("//c.test:9443/x"), Ok("https://c.test:9443/x")),
            (Some("http://b.test/"), Err("must use the https scheme")),
            (Some("https://u:p@b.test/"), Err("must not contain user info")),
            (Some("ftp://b.test/"), Err("must use the https scheme")),
            (Some(""), Err("no Location header")),
            (None, Err("no Location header")),
        ];
        for (loc, want) in cases {
            let got = redirect_target(&cur, *loc).map(|u| u.to_string());
            match (got, want) {
                (Ok(u), Ok(w)) => assert_eq!(u, *w, "{loc:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{loc:?}: {e}"),
                (got, want) => panic!("{loc:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn non_bundle_descriptions() {
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (
                b"<!DOCTYPE html><html><body>Login</body></html>",
                Some("text/html; charset=utf-8"),
                "it is an HTML page (Content-Type text/html; charset=utf-8): E; is bundle_endpoint_url the bundle endpoint itself",
            ),
            (b"  \n<html>", None, "it is an HTML page (Content-Type none): E;"),
            (b"{}", Some("text/html"), "it is an HTML page (Content-Type text/html)"),
            (b"", Some("application/json"), "the body is empty (Content-Type application/json): E"),
            (
                b"\x00\x01garbage\xff",
                Some("application/octet-stream"),
                "E (Content-Type application/octet-stream; it starts with \"..garbage.\")",
            ),
            (
                b"{\"keys\": 1}",
                Some("application/json"),
                "E (Content-Type application/json; it starts with \"{\\\"keys\\\": 1}\")",
            ),
        ];
        for (body, ct, want) in cases {
            let got = describe_non_bundle(body, *ct, "E");
            assert!(got.starts_with(want), "{body:?}: {got}");
        }
        let long = vec![b'a'; 500];
        assert!(describe_non_bundle(&long, None, "E").ends_with("...\")"), "long bodies are cut");
    }

    #[test]
    fn excerpts_are_printable_and_short() {
        assert_eq!(excerpt(b"not\n found\r\n", 200), "not found");
        assert_eq!(excerpt(b"abcdef", 3), "abc...");
        assert_eq!(excerpt(b"\x1b[31mred", 200), ".[31mred");
    }
}
