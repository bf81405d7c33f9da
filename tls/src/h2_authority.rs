//! Accept gRPC clients that send a Unix socket path as HTTP/2 `:authority`.
//!
//! grpcio (gRPC C-core: Python, Ruby, C++ ...) and grpc-java send the socket path (`/tmp/x/api.sock`) as
//! `:authority` on Unix sockets. hyper's h2 refuses that as a malformed header and resets the stream
//! (PROTOCOL_ERROR), so py-spiffe could never talk to a tonic server. The Workload API must serve every
//! client, so accepted Unix connections pass through [`AuthorityFix`]: it decodes each client header block
//! (HPACK), replaces an invalid `:authority` with `localhost`, and re-encodes the block as literals without
//! indexing. Every block is re-encoded, so the server's HPACK dynamic table stays empty and the two sides
//! never disagree about it. All other frames pass through untouched; server-to-client bytes are not touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The SETTINGS_MAX_FRAME_SIZE default; the re-encoded block is split to fit it.
const MAX_OUT_FRAME: usize = 16_384;
/// Refuse absurd frames instead of buffering them (the h2 maximum is 2^24 - 1).
const MAX_IN_FRAME: usize = 1 << 24;
/// A header block larger than this (after CONTINUATIONs) closes the connection.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// A HEADERS frame waiting for its CONTINUATIONs.
struct PendingBlock {
    stream: u32,
    /// END_STREAM / PRIORITY flags to carry over.
    keep: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// Rewrites the client-to-server byte stream of one HTTP/2 connection.
pub struct AuthorityFix {
    preface_left: usize,
    inbuf: Vec<u8>,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<PendingBlock>,
    rewrites: u64,
}

impl std::fmt::Debug for AuthorityFix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix").field("buffered", &self.inbuf.len()).field("rewrites", &self.rewrites).finish()
    }
}

impl Default for AuthorityFix {
    fn default() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            inbuf: vec![],
            decoder: loona_hpack::Decoder::new(),
            pending: None,
            rewrites: 0,
        }
    }
}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn encode_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut value: usize) {
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

fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00); // literal header field without indexing, new name
    encode_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    encode_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

impl AuthorityFix {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many `:authority` values were replaced so far.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// Feeds bytes read from the client; appends what the server should read to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut input = input;
        if self.preface_left > 0 {
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.preface_left -= n;
            input = &input[n..];
        }
        self.inbuf.extend_from_slice(input);
        let mut start = 0;
        loop {
            let avail = &self.inbuf[start..];
            if avail.len() < FRAME_HEADER_LEN {
                break;
            }
            let len = u32::from_be_bytes([0, avail[0], avail[1], avail[2]]) as usize;
            if len > MAX_IN_FRAME {
                return Err(protocol_error("HTTP/2 frame too large"));
            }
            if avail.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let kind = avail[3];
            let flags = avail[4];
            let stream = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]) & 0x7fff_ffff;
            let payload = avail[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec();
            let whole = FRAME_HEADER_LEN + len;
            match kind {
                TYPE_HEADERS => self.on_headers(stream, flags, &payload, out)?,
                TYPE_CONTINUATION => self.on_continuation(stream, flags, &payload, out)?,
                _ => {
                    if self.pending.is_some() {
                        return Err(protocol_error("frame interleaved inside a header block"));
                    }
                    out.extend_from_slice(&self.inbuf[start..start + whole]);
                }
            }
            start += whole;
        }
        self.inbuf.drain(..start);
        Ok(())
    }

    fn on_headers(&mut self, stream: u32, flags: u8, payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.pending.is_some() {
            return Err(protocol_error("HEADERS inside a header block"));
        }
        let mut body = payload;
        let mut pad = 0usize;
        if flags & FLAG_PADDED != 0 {
            let (&p, rest) = body.split_first().ok_or_else(|| protocol_error("PADDED HEADERS without pad length"))?;
            pad = p as usize;
            body = rest;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            if body.len() < 5 {
                return Err(protocol_error("HEADERS priority fields truncated"));
            }
            let mut p = [0u8; 5];
            p.copy_from_slice(&body[..5]);
            priority = Some(p);
            body = &body[5..];
        }
        if pad > body.len() {
            return Err(protocol_error("HEADERS padding longer than the frame"));
        }
        let fragment = &body[..body.len() - pad];
        let keep = flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        if flags & FLAG_END_HEADERS != 0 {
            self.emit(stream, keep, priority, fragment, out)
        } else {
            self.pending = Some(PendingBlock { stream, keep, priority, block: fragment.to_vec() });
            Ok(())
        }
    }

    fn on_continuation(&mut self, stream: u32, flags: u8, payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let Some(PendingBlock { stream: pstream, keep, priority, mut block }) = self.pending.take() else {
            return Err(protocol_error("CONTINUATION without HEADERS"));
        };
        if pstream != stream {
            return Err(protocol_error("CONTINUATION on another stream"));
        }
        block.extend_from_slice(payload);
        if block.len() > MAX_HEADER_BLOCK {
            return Err(protocol_error("header block too large"));
        }
        if flags & FLAG_END_HEADERS != 0 {
            self.emit(stream, keep, priority, &block, out)
        } else {
            self.pending = Some(PendingBlock { stream, keep, priority, block });
            Ok(())
        }
    }

    /// Decodes one complete header block and writes it again as HEADERS (+ CONTINUATION) frames.
    fn emit(
        &mut self,
        stream: u32,
        keep: u8,
        priority: Option<[u8; 5]>,
        block: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut encoded = Vec::with_capacity(block.len() + 64);
        let mut rewrites = 0;
        self.decoder
            .decode_with_cb(block, |name, value| {
                if name.as_ref() == b":authority" && http::uri::Authority::try_from(value.as_ref()).is_err() {
                    rewrites += 1;
                    encode_literal(&mut encoded, b":authority", b"localhost");
                } else {
                    encode_literal(&mut encoded, &name, &value);
                }
            })
            .map_err(|e| protocol_error(format!("HPACK: {e:?}")))?;
        self.rewrites += rewrites;
        let mut first = Vec::with_capacity(encoded.len() + 5);
        if let Some(p) = priority {
            first.extend_from_slice(&p);
        }
        let room = MAX_OUT_FRAME - first.len();
        let (head, mut rest) = encoded.split_at(encoded.len().min(room));
        first.extend_from_slice(head);
        let end_headers = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(out, first.len(), TYPE_HEADERS, keep | end_headers, stream);
        out.extend_from_slice(&first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_OUT_FRAME));
            let end = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            frame_header(out, chunk.len(), TYPE_CONTINUATION, end, stream);
            out.extend_from_slice(chunk);
            rest = tail;
        }
        Ok(())
    }
}

/// A server-side stream whose client-to-server bytes pass through [`AuthorityFix`].
#[derive(Debug)]
pub struct AuthorityFixStream<S> {
    inner: S,
    fix: AuthorityFix,
    ready: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
}

impl<S> AuthorityFixStream<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fix: AuthorityFix::new(),
            ready: vec![],
            pos: 0,
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.ready.len() {
                let n = (this.ready.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = rb.filled();
                    if filled.is_empty() {
                        return Poll::Ready(Ok(())); // EOF
                    }
                    let mut out = std::mem::take(&mut this.ready);
                    this.fix.push(filled, &mut out)?;
                    this.ready = out;
                    // Nothing complete yet (a partial frame): read more.
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AuthorityFixStream<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Unix-socket connections for `Server::serve_with_incoming`, each wrapped in [`AuthorityFixStream`].
pub fn unix_incoming(
    listener: tokio::net::UnixListener,
) -> impl tonic::codegen::tokio_stream::Stream<Item = io::Result<AuthorityFixStream<tokio::net::UnixStream>>> {
    use tonic::codegen::tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|r| r.map(AuthorityFixStream::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn hpack_block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        enc.encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = vec![];
        let mut b = bytes;
        while b.len() >= 9 {
            let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            out.push((b[3], b[4], u32::from_be_bytes([b[5], b[6], b[7], b[8]]), b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        out
    }

    fn headers_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![];
        frame_header(&mut v, payload.len(), TYPE_HEADERS, flags, stream);
        v.extend_from_slice(payload);
        v
    }

    fn decode(block: &[u8], dec: &mut loona_hpack::Decoder<'static>) -> Vec<(String, String)> {
        dec.decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::new();
        let mut out = vec![];
        for c in input.chunks(chunk.max(1)) {
            fix.push(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let block = hpack_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
            (":authority", "/tmp/sigil-agent/public/api.sock"),
            ("workload.spiffe.io", "true"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &block));
        let data = [0u8, 0, 0, 0, 0x0, 0x1, 0, 0, 0, 1]; // an empty DATA frame with END_STREAM on stream 1
        input.extend_from_slice(&data[1..]);
        for chunk in [1, 3, 7, 4096] {
            let out = run(&input, chunk);
            assert_eq!(&out[..24], PREFACE, "chunk {chunk}");
            let f = frames(&out[24..]);
            assert_eq!(f.len(), 2, "chunk {chunk}");
            assert_eq!((f[0].0, f[0].1, f[0].2), (TYPE_HEADERS, FLAG_END_HEADERS, 1));
            let got = decode(&f[0].3, &mut loona_hpack::Decoder::new());
            assert_eq!(got[3], (":authority".into(), "localhost".into()));
            assert_eq!(got[2], (":path".into(), "/SpiffeWorkloadAPI/FetchX509SVID".into()));
            assert_eq!(got[4], ("workload.spiffe.io".into(), "true".into()));
            assert_eq!(f[1].0, 0x0, "DATA frame passes through");
        }
    }

    #[test]
    fn valid_authority_is_kept_and_dynamic_table_state_carries_across_blocks() {
        let mut enc = loona_hpack::Encoder::new();
        let h = [(":method", "POST"), (":authority", "localhost"), ("x-custom", "v1")];
        let b1 = enc.encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let b2 = enc.encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))); // uses the dynamic table
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &b1));
        input.extend(headers_frame(3, FLAG_END_HEADERS | FLAG_END_STREAM, &b2));
        let out = run(&input, 5);
        let f = frames(&out[24..]);
        // The server decodes with a fresh decoder: re-encoded blocks never rely on its dynamic table.
        let mut server = loona_hpack::Decoder::new();
        for frame in &f {
            let got = decode(&frame.3, &mut server);
            assert_eq!(got[1], (":authority".into(), "localhost".into()));
            assert_eq!(got[2], ("x-custom".into(), "v1".into()));
        }
        assert_eq!(f[1].1 & FLAG_END_STREAM, FLAG_END_STREAM);
    }

    #[test]
    fn continuation_padding_and_priority_are_handled() {
        let block = hpack_block(&[(":method", "POST"), (":authority", "/run/x.sock"), ("big", &"v".repeat(40_000))]);
        let (a, b) = block.split_at(100);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(5, FLAG_PADDED | FLAG_PRIORITY, &payload));
        let mut cont = vec![];
        frame_header(&mut cont, b.len(), TYPE_CONTINUATION, FLAG_END_HEADERS, 5);
        cont.extend_from_slice(b);
        input.extend(cont);
        let out = run(&input, 999);
        let f = frames(&out[24..]);
        assert!(f.len() >= 3, "40 KB re-encoded needs CONTINUATION frames");
        assert!(f.iter().all(|x| x.3.len() <= MAX_OUT_FRAME));
        assert_eq!(f[0].1 & FLAG_PRIORITY, FLAG_PRIORITY);
        assert_eq!(f[0].1 & FLAG_PADDED, 0);
        assert_eq!(f.last().unwrap().1 & FLAG_END_HEADERS, FLAG_END_HEADERS);
        let mut block = f[0].3[5..].to_vec();
        for c in &f[1..] {
            assert_eq!(c.0, TYPE_CONTINUATION);
            block.extend_from_slice(&c.3);
        }
        let got = decode(&block, &mut loona_hpack::Decoder::new());
        assert_eq!(got[1].1, "localhost");
        assert_eq!(got[2].1.len(), 40_000);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
        let mut fix = AuthorityFix::new();
        assert!(fix.push(&input, &mut vec![]).is_err());
        let mut fix = AuthorityFix::new();
        let mut cont = PREFACE.to_vec();
        frame_header(&mut cont, 1, TYPE_CONTINUATION, FLAG_END_HEADERS, 1);
        cont.push(0);
        assert!(fix.push(&cont, &mut vec![]).is_err());
    }
}
