//! One bounded HTTP/1.1 request over an already-connected stream: the agent's kubelet client, the agent's
//! admin-socket client and the CSI driver's identity wait all need exactly this.
//!
//! The connection future is driven here, next to the exchange, instead of in a spawned task: a timeout or a
//! dropped caller then ends both, and no task outlives the request.

use std::future::poll_fn;
use std::pin::Pin;

use http::{Request, StatusCode};
use hyper::body::Body as _;
use hyper::header::CONTENT_LENGTH;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("answer larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// How much of a body to read for a given status: at most `limit` bytes; past it, keep the first `limit`
/// bytes when `truncate` (an error excerpt), or fail with [`Http1Error::TooLarge`].
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub limit: usize,
    pub truncate: bool,
}

/// Sends `req` over `io` and returns the status and the body, read under `limit_for(status)`.
pub async fn request<I>(
    io: I,
    req: Request<String>,
    limit_for: impl FnOnce(StatusCode) -> BodyLimit,
) -> Result<(StatusCode, Vec<u8>), Http1Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, String>(TokioIo::new(io)).await?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let BodyLimit { limit, truncate } = limit_for(status);
        let declared = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if !truncate && declared.is_some_and(|n| n > limit as u64) {
            return Err(Http1Error::TooLarge { limit });
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let Ok(data) = frame?.into_data() else { continue };
            if out.len() + data.len() > limit {
                if truncate {
                    out.extend_from_slice(data.get(..limit - out.len()).unwrap_or_default());
                    break;
                }
                return Err(Http1Error::TooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
        Ok((status, out))
    };
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut exchange => return r,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                c?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that reads the request head and writes `answer` back verbatim.
    async fn answering(answer: &'static str) -> tokio::io::DuplexStream {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
            }
            server.write_all(answer.as_bytes()).await.unwrap();
            server.shutdown().await.unwrap();
        });
        client
    }

    fn get() -> Request<String> {
        Request::get("/x").header(hyper::header::HOST, "t").body(String::new()).unwrap()
    }

    #[tokio::test]
    async fn limits_table() {
        let ok = |limit, truncate| move |_: StatusCode| BodyLimit { limit, truncate };
        type Want = Result<(u16, &'static str), &'static str>;
        let cases: &[(&'static str, usize, bool, Want)] = &[
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", 5, false, Ok((200, "hello"))),
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", 4, false, Err("larger than 4")),
            ("HTTP/1.1 403 Forbidden\r\ncontent-length: 9\r\n\r\nforbidden", 4, true, Ok((403, "forb"))),
            // No content-length: the limit still holds while reading.
            ("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n0123456789", 4, false, Err("larger than 4")),
            ("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n0123456789", 64, false, Ok((200, "0123456789"))),
            ("garbage\r\n\r\n", 64, false, Err("")),
        ];
        for (answer, limit, truncate, want) in cases {
            let got = request(answering(answer).await, get(), ok(*limit, *truncate)).await;
            match (got, want) {
                (Ok((s, body)), Ok((ws, wb))) => {
                    assert_eq!((s.as_u16(), String::from_utf8(body).unwrap().as_str()), (*ws, *wb), "{answer:?}")
                }
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{answer:?}: {e}"),
                (got, _) => panic!("{answer:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
