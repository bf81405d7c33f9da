//! The Workload API's three Fetch* streams, served with each message encoded into an allocation of its own
//! exact size that is freed once the transport has sent it.
//!
//! Why not tonic's own encoding: tonic encodes all the messages of one call into a single buffer that keeps
//! the capacity of the largest message it ever held (grown by doubling) for as long as the call lasts. A
//! Fetch* stream lasts as long as its workload, so a workload watching 1,000 SVIDs kept ~2 MiB after a burst,
//! as much as the agent's whole cache of those SVIDs, for every such client. Here a message costs memory only
//! while it is on its way.
//!
//! Everything else (the unary calls, reflection, unknown methods) goes to tonic's generated service, and the
//! streams themselves are still produced by [`WorkloadApi`]'s trait methods: only the framing is done here
//! (gRPC length-prefixed messages, then `grpc-status` trailers; a refusal before the first message is a
//! trailers-only response, as tonic sends it).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use sigil_proto::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::workload::WorkloadApi;

/// The largest request message read (the Fetch* requests are empty messages).
const MAX_REQUEST: usize = 64 * 1024;

type MessageStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Workload API service: the Fetch* streams framed here, the rest by tonic.
#[derive(Clone)]
pub struct WorkloadService {
    api: Arc<WorkloadApi>,
    inner: SpiffeWorkloadApiServer<WorkloadApi>,
}

impl std::fmt::Debug for WorkloadService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadService").finish_non_exhaustive()
    }
}

impl WorkloadService {
    pub fn new(api: WorkloadApi) -> Self {
        let api = Arc::new(api);
        Self { inner: SpiffeWorkloadApiServer::from_arc(api.clone()), api }
    }
}

impl NamedService for WorkloadService {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

impl tower::Service<http::Request<Body>> for WorkloadService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let api = self.api.clone();
        match req.uri().path() {
            "/SpiffeWorkloadAPI/FetchX509SVID" => {
                Box::pin(streaming(req, move |r| async move { api.fetch_x509svid(r).await }))
            }
            "/SpiffeWorkloadAPI/FetchX509Bundles" => {
                Box::pin(streaming(req, move |r| async move { api.fetch_x509_bundles(r).await }))
            }
            "/SpiffeWorkloadAPI/FetchJWTBundles" => {
                Box::pin(streaming(req, move |r| async move { api.fetch_jwt_bundles(r).await }))
            }
            _ => {
                let mut inner = self.inner.clone();
                Box::pin(async move { tower::Service::call(&mut inner, req).await })
            }
        }
    }
}

/// One server-streaming call: reads the request message, asks `call` for the stream, frames its messages.
async fn streaming<M, T, F, Fut>(req: http::Request<Body>, call: F) -> Result<http::Response<Body>, Infallible>
where
    M: prost::Message + Default,
    T: prost::Message + 'static,
    F: FnOnce(tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<MessageStream<T>>, Status>>,
{
    let (parts, body) = req.into_parts();
    // No request compression is supported (tonic refuses the same way, naming what it accepts).
    if let Some(encoding) = parts.headers.get("grpc-encoding").filter(|e| e.as_bytes() != b"identity") {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        let mut res = Status::unimplemented(format!("request compression `{encoding}` is not supported")).into_http();
        res.headers_mut().insert("grpc-accept-encoding", http::HeaderValue::from_static("identity"));
        return Ok(res);
    }
    let message = match read_request::<M>(body).await {
        Ok(m) => m,
        Err(status) => return Ok(status.into_http()),
    };
    match call(tonic::Request::from_http(http::Request::from_parts(parts, message))).await {
        Err(status) => Ok(status.into_http()),
        Ok(response) => {
            let (metadata, stream, _) = response.into_parts();
            let mut res = http::Response::new(Body::new(Frames { stream: Some(stream) }));
            *res.headers_mut() = metadata.into_headers();
            res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            Ok(res)
        }
    }
}

/// The request message: the whole request body is read (a server-streaming call sends one message and
/// half-closes, and the call starts after that, as tonic's does), at most [`MAX_REQUEST`] bytes.
async fn read_request<M: prost::Message + Default>(mut body: Body) -> Result<M, Status> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > 5 + MAX_REQUEST {
                return Err(Status::out_of_range(format!("request message larger than {MAX_REQUEST} bytes")));
            }
            buf.extend_from_slice(&data);
            // A header announcing too much is refused before the rest arrives.
            message_len(&buf)?;
        }
    }
    match message_len(&buf)? {
        Some(len) if buf.len() >= 5 + len => {
            buf.advance(5);
            M::decode(buf.split_to(len).freeze())
                .map_err(|e| Status::internal(format!("cannot decode the request message: {e}")))
        }
        Some(_) => Err(Status::internal("incomplete request message")),
        None if buf.is_empty() => Err(Status::internal("missing request message")),
        None => Err(Status::internal("incomplete request message")),
    }
}

/// The length of the message a gRPC frame header announces, once the header is in.
fn message_len(buf: &[u8]) -> Result<Option<usize>, Status> {
    let Some(header) = buf.get(..5) else { return Ok(None) };
    match header[0] {
        0 => {}
        // Compressed, although no grpc-encoding other than identity gets this far.
        1 => return Err(Status::internal("compressed request message without a supported grpc-encoding")),
        f => return Err(Status::internal(format!("invalid compression flag {f} in a request message"))),
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_REQUEST {
        return Err(Status::out_of_range(format!("request message larger than {MAX_REQUEST} bytes")));
    }
    Ok(Some(len))
}

/// One message as a gRPC frame: the uncompressed flag, the length, the message, in one exact allocation.
fn frame<T: prost::Message>(message: &T) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| Status::internal("response message too large"))?;
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    message.encode(&mut buf).map_err(|e| Status::internal(format!("encoding a response message: {e}")))?;
    Ok(Bytes::from(buf))
}

/// The response body: a frame per message, then the status as trailers.
struct Frames<T> {
    stream: Option<MessageStream<T>>,
}

impl<T: prost::Message> http_body::Body for Frames<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Some(stream) = self.stream.as_mut() else { return Poll::Ready(None) };
        let status = match stream.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(message))) => match frame(&message) {
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(status) => status,
            },
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.stream = None;
        let mut trailers = http::HeaderMap::new();
        if let Err(unsendable) = status.add_header(&mut trailers) {
            // A message that cannot be a header value: the code alone.
            trailers.clear();
            let _ = Status::new(unsendable.code(), "").add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_frame_is_the_flag_the_length_and_the_message_in_one_exact_allocation() {
        let m = sigil_proto::workload::X509BundlesResponse { crl: vec![vec![1, 2, 3]], bundles: Default::default() };
        let f = frame(&m).unwrap();
        let len = m.encoded_len();
        assert_eq!(f.len(), 5 + len);
        assert_eq!(&f[..5], &[0, 0, 0, 0, u8::try_from(len).unwrap()]);
        assert_eq!(sigil_proto::workload::X509BundlesResponse::decode(&f[5..]).unwrap(), m);
    }

    #[test]
    fn request_headers_are_checked() {
        type Want = Result<Option<usize>, tonic::Code>;
        let cases: &[(&[u8], Want)] = &[
            (&[], Ok(None)),
            (&[0, 0, 0], Ok(None)),
            (&[0, 0, 0, 0, 0], Ok(Some(0))),
            (&[0, 0, 0, 1, 0], Ok(Some(256))),
            (&[1, 0, 0, 0, 0], Err(tonic::Code::Internal)),
            (&[2, 0, 0, 0, 0], Err(tonic::Code::Internal)),
            (&[0, 0, 1, 0, 1], Err(tonic::Code::OutOfRange)),
        ];
        for (buf, want) in cases {
            assert_eq!(message_len(buf).map_err(|s| s.code()), *want, "{buf:?}");
        }
    }

    #[tokio::test]
    async fn a_request_split_over_frames_is_read_and_a_missing_one_refused() {
        let chunks: Vec<Result<Frame<Bytes>, Status>> =
            vec![Ok(Frame::data(Bytes::from_static(&[0, 0]))), Ok(Frame::data(Bytes::from_static(&[0, 0, 0])))];
        let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter(chunks)));
        let m: sigil_proto::workload::X509svidRequest = read_request(body).await.unwrap();
        assert_eq!(m, sigil_proto::workload::X509svidRequest::default());
        let status = read_request::<sigil_proto::workload::X509svidRequest>(Body::empty()).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (tonic::Code::Internal, "missing request message"));
        let cut = Body::new(http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 2, 8])));
        let status = read_request::<sigil_proto::workload::X509svidRequest>(cut).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (tonic::Code::Internal, "incomplete request message"));
    }
}
