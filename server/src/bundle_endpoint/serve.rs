//! The bundle endpoint's HTTPS server: rustls (TLS 1.2 and 1.3, no client certificate requested) and
//! hyper's HTTP/1.1, every resource bounded.
//!
//! Bounds, because the endpoint faces other organisations and often the internet:
//! - at most [`MAX_CONNECTIONS`] connections at once; past that, new ones wait in the listen backlog;
//! - TLS handshake within [`HANDSHAKE_TIMEOUT`], each request head within [`HEADER_READ_TIMEOUT`] (which
//!   also closes idle keep-alive connections), request heads of at most [`MAX_HEAD_BYTES`];
//! - a connection lives at most [`MAX_CONNECTION_LIFETIME`], then is closed after its current answer;
//! - request bodies are never read (hyper discards what is already buffered and closes the connection).
//!
//! HTTP/2 is not offered: the body is one small document fetched every few minutes, and ALPN advertises
//! `http/1.1` so clients that offer both pick it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sigil_tls::ServerCertSlot;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::Handler;
use crate::config::BundleEndpointConfig;
use crate::state::ServerState;

pub const MAX_CONNECTIONS: usize = 256;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// hyper's read buffer, which bounds a request head (its minimum is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a connection past its lifetime (or at shutdown) may take to finish its current answer.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BundleEndpointError {
    #[error("bundle endpoint listener {addr}: {source}")]
    Listener { addr: SocketAddr, source: std::io::Error },
    #[error("bundle endpoint TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("bundle endpoint serving_cert_file: {0}")]
    CertFile(#[from] super::cert_file::CertFileError),
}

/// Resolves once shutdown is requested (the watch guard is dropped here, so callers' futures stay `Send`).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn tls_config(certs: Arc<ServerCertSlot>) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        // SPIFFE Federation s5: the endpoint must not require client authentication; it does not even ask.
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds the listener and serves until `shutdown`; returns the bound address (the port is random when the
/// configured one is 0) and the accept task.
pub async fn start(
    config: &BundleEndpointConfig,
    certs: Arc<ServerCertSlot>,
    state: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BundleEndpointError> {
    let addr = SocketAddr::new(config.address, config.port);
    let listener = TcpListener::bind(addr).await.map_err(|source| BundleEndpointError::Listener { addr, source })?;
    let bound = listener.local_addr().map_err(|source| BundleEndpointError::Listener { addr, source })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(certs)?));
    let handler = Arc::new(Handler::new(state, config.refresh_hint.as_secs()));
    let task = tokio::spawn(accept_loop(listener, acceptor, handler, shutdown));
    Ok((bound, task))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Arc<Handler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Waiting for a permit before accepting leaves excess connections in the kernel's backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped(&mut shutdown) => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "bundle endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(tcp, peer, acceptor, handler, shutdown).await;
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Arc<Handler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bundle endpoint TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "bundle endpoint TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(respond(&handler, &req, peer)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "bundle endpoint connection ended with an error");
            }
            return;
        }
        _ = tokio::time::sleep(MAX_CONNECTION_LIFETIME) => {}
        _ = stopped(&mut shutdown) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}

fn respond(handler: &Handler, req: &Request<Incoming>, peer: SocketAddr) -> Response<String> {
    let reply = handler.answer(req.method(), req.uri().path());
    tracing::debug!(%peer, method = %req.method(), path = req.uri().path(), status = reply.status.as_u16(), "bundle endpoint request");
    let mut resp = Response::new(reply.body);
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static(reply.content_type));
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110 15.5.6: a 405 names the methods that are allowed.
        resp.headers_mut().insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}
