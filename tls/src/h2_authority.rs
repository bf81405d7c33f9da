//! Accept gRPC clients that send a Unix socket path as HTTP/2 `:authority`.
//!
//! grpcio (gRPC C-core: Python, Ruby, C++ ...) and grpc-java send the socket path (`/tmp/x/api.sock`) as
//! `:authority` on Unix sockets. hyper's h2 refuses that as a malformed header and resets the stream
//! (PROTOCOL_ERROR), so py-spiffe could never talk to a tonic server. The Workload API must serve every
//! client, so accepted Unix connections pass through [`AuthorityFix`]: it decodes each client header block
//! (HPACK), replaces an invalid `:authority` with `localhost`, and re-encodes the block as literals without
//! indexing. Every block is re-encoded, so the server's HPACK dynamic table stays empty and the two sides
//! never disagree about it. All other frames pass through untouched; server-to-client bytes are not touched.
//!
//! ## Bounded by the limits of the server behind it
//! The rewriter sits in front of an unauthenticated socket (any local uid, any pod with the CSI volume), and
//! HPACK lets a few bytes stand for a large header list (one 4 KB table entry, then one-byte references to
//! it). So it holds itself to exactly what the HTTP/2 server behind it advertises (built with
//! [`unix_server`]): frames of at most [`MAX_FRAME_SIZE`], a dynamic table of at most [`HEADER_TABLE_SIZE`],
//! header lists of at most [`MAX_HEADER_LIST_SIZE`]. Nothing it buffers or writes grows past a few times
//! those sizes, whatever the client sends.
//!
//! Limits are enforced the way the server behind would have enforced them, by that server itself: the
//! rewriter never writes to the client (the server owns that direction), so on a connection error it hands
//! the server a frame that the server must answer with the same error (see [`ConnectionError`]), and then
//! ends the client's input. A header list over the limit is forwarded just past the limit, so the server
//! refuses that one stream (431, REFUSED_STREAM) as it refuses any over-size list, and the connection lives on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// SETTINGS_MAX_FRAME_SIZE of the servers behind the rewriter (HTTP/2's default; [`unix_server`] sets it).
pub const MAX_FRAME_SIZE: usize = 16_384;
/// SETTINGS_MAX_HEADER_LIST_SIZE of the servers behind the rewriter (hyper's default; [`unix_server`] sets
/// it). Sizes count as in RFC 7541 4.1: name + value + 32 per field.
pub const MAX_HEADER_LIST_SIZE: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE of the servers behind the rewriter: HTTP/2's default, never raised, so a
/// client may not grow the HPACK dynamic table past it.
pub const HEADER_TABLE_SIZE: usize = 4_096;
/// The largest encoded header block (HEADERS + CONTINUATIONs) buffered. Every HPACK field encodes in fewer
/// bytes than its RFC 7541 size, so a longer block can only decode to an over-size list (or be padding of
/// table-size updates); it is a CONTINUATION flood and closes the connection, as h2 does.
pub const MAX_HEADER_BLOCK: usize = MAX_HEADER_LIST_SIZE + 1_024;
/// A block that decodes to more than this closes the connection (ENHANCE_YOUR_CALM), as h2 does past four
/// times its list limit: decoding is bounded per block, and an abusive client pays a connection per block.
pub const MAX_DECODED_BLOCK: usize = 4 * MAX_HEADER_LIST_SIZE;

/// How much rewritten output one [`AuthorityFix::push`] produces before it leaves the remaining input
/// buffered (the output of one block may add up to about twice [`MAX_HEADER_LIST_SIZE`] more).
const OUT_BUDGET: usize = 64 * 1024;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why the rewriter closed a connection: an HTTP/2 connection error (RFC 9113 7).
///
/// The rewriter cannot write GOAWAY itself without interleaving with the server's own frames, so it writes,
/// in place of the offending input, a frame that any conforming server must answer with this error code
/// ([`ConnectionError::trigger`]). The server then sends GOAWAY with that code and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionError {
    /// A frame longer than [`MAX_FRAME_SIZE`] (FRAME_SIZE_ERROR, 0x6).
    FrameSize,
    /// A header block that does not decode under the advertised HPACK limits, e.g. a dynamic table size
    /// update over [`HEADER_TABLE_SIZE`] or an index out of range. RFC 9113 4.3 calls this
    /// COMPRESSION_ERROR; h2, the server behind, answers every HPACK decoding failure with PROTOCOL_ERROR
    /// (0x1), so that is what the client gets, with or without the rewriter.
    Hpack,
    /// Frames out of sequence: CONTINUATION without HEADERS, other frames inside a header block, padding
    /// longer than the frame (PROTOCOL_ERROR, 0x1).
    Protocol,
    /// A header block longer than [`MAX_HEADER_BLOCK`], or decoding to more than [`MAX_DECODED_BLOCK`]
    /// (ENHANCE_YOUR_CALM, 0xb, h2's answer to a CONTINUATION flood and to a way too large list).
    EnhanceYourCalm,
}

impl ConnectionError {
    /// The HTTP/2 error code the client receives in GOAWAY.
    pub fn code(self) -> u32 {
        match self {
            Self::Protocol | Self::Hpack => 0x1,
            Self::FrameSize => 0x6,
            Self::EnhanceYourCalm => 0xb,
        }
    }

    /// Writes the frame(s) the server must answer with this error.
    fn trigger(self, out: &mut Vec<u8>) {
        match self {
            // A frame header announcing one byte more than the server's SETTINGS_MAX_FRAME_SIZE (RFC 9113
            // 4.2): rejected from the header alone, so no payload follows.
            Self::FrameSize => frame_header(out, MAX_FRAME_SIZE + 1, 0x0, 0, 1),
            // Index 0 is never valid (RFC 7541 6.1).
            Self::Hpack => {
                frame_header(out, 1, TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1);
                out.push(0x80);
            }
            // CONTINUATION with no HEADERS before it (RFC 9113 6.10).
            Self::Protocol => frame_header(out, 0, TYPE_CONTINUATION, FLAG_END_HEADERS, 1),
            // More CONTINUATION frames than any list within the limit needs.
            Self::EnhanceYourCalm => {
                frame_header(out, 0, TYPE_HEADERS, 0, 1);
                for _ in 0..(2 * MAX_HEADER_LIST_SIZE / MAX_FRAME_SIZE + 8) {
                    frame_header(out, 0, TYPE_CONTINUATION, 0, 1);
                }
            }
        }
    }
}

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
    closed: Option<ConnectionError>,
}

impl std::fmt::Debug for AuthorityFix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("buffered", &self.inbuf.len())
            .field("rewrites", &self.rewrites)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Default for AuthorityFix {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self { preface_left: PREFACE_LEN, inbuf: vec![], decoder, pending: None, rewrites: 0, closed: None }
    }
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

    /// Why the connection was closed, once it was: from then on input is discarded.
    pub fn closed(&self) -> Option<ConnectionError> {
        self.closed
    }

    /// Feeds bytes read from the client (or none, to go on with input left buffered) and appends what the
    /// server should read to `out`. Stops after about [`OUT_BUDGET`] bytes of output; call again with no
    /// input before reading more. On a connection error `out` ends with the frame that makes the server
    /// close the connection (see [`ConnectionError`]).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.closed.is_some() {
            return;
        }
        if let Err(e) = self.process(input, out) {
            tracing::debug!(error = ?e, "HTTP/2 client broke the limits of the Unix socket; closing the connection");
            e.trigger(out);
            self.closed = Some(e);
            self.inbuf = Vec::new();
            self.pending = None;
        }
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        let mut input = input;
        if self.preface_left > 0 {
            let n = self.preface_left.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.preface_left -= n;
            input = &input[n..];
        }
        self.inbuf.extend_from_slice(input);
        let mut start = 0;
        let result = loop {
            // A small block can stand for a 4 KB field: stop once enough is ready for the server and
            // continue with the rest of the input when that has been read.
            if out.len() >= OUT_BUDGET {
                break Ok(());
            }
            let avail = &self.inbuf[start..];
            if avail.len() < FRAME_HEADER_LEN {
                break Ok(());
            }
            let len = u32::from_be_bytes([0, avail[0], avail[1], avail[2]]) as usize;
            // Refused from the header alone: an over-size frame is never buffered.
            if len > MAX_FRAME_SIZE {
                break Err(ConnectionError::FrameSize);
            }
            if avail.len() < FRAME_HEADER_LEN + len {
                break Ok(());
            }
            let kind = avail[3];
            let flags = avail[4];
            let stream = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]) & 0x7fff_ffff;
            let whole = FRAME_HEADER_LEN + len;
            let step = match kind {
                TYPE_HEADERS => {
                    let payload = avail[FRAME_HEADER_LEN..whole].to_vec();
                    self.on_headers(stream, flags, &payload, out)
                }
                TYPE_CONTINUATION => {
                    let payload = avail[FRAME_HEADER_LEN..whole].to_vec();
                    self.on_continuation(stream, flags, &payload, out)
                }
                _ if self.pending.is_some() => Err(ConnectionError::Protocol),
                _ => {
                    out.extend_from_slice(&avail[..whole]);
                    Ok(())
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
            start += whole;
        };
        self.inbuf.drain(..start);
        result
    }

    fn on_headers(&mut self, stream: u32, flags: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        if self.pending.is_some() {
            return Err(ConnectionError::Protocol);
        }
        let mut body = payload;
        let mut pad = 0usize;
        if flags & FLAG_PADDED != 0 {
            let (&p, rest) = body.split_first().ok_or(ConnectionError::Protocol)?;
            pad = p as usize;
            body = rest;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            if body.len() < 5 {
                return Err(ConnectionError::Protocol);
            }
            let mut p = [0u8; 5];
            p.copy_from_slice(&body[..5]);
            priority = Some(p);
            body = &body[5..];
        }
        if pad > body.len() {
            return Err(ConnectionError::Protocol);
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

    fn on_continuation(
        &mut self,
        stream: u32,
        flags: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ConnectionError> {
        let Some(PendingBlock { stream: pstream, keep, priority, mut block }) = self.pending.take() else {
            return Err(ConnectionError::Protocol);
        };
        if pstream != stream {
            return Err(ConnectionError::Protocol);
        }
        if block.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(ConnectionError::EnhanceYourCalm);
        }
        block.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS != 0 {
            self.emit(stream, keep, priority, &block, out)
        } else {
            self.pending = Some(PendingBlock { stream, keep, priority, block });
            Ok(())
        }
    }

    /// Decodes one complete header block and writes it again as HEADERS (+ CONTINUATION) frames.
    ///
    /// The whole block is always decoded, so the decoder's table stays in step with the client's encoder,
    /// but fields are re-encoded only until the forwarded list reaches [`MAX_HEADER_LIST_SIZE`]: the field
    /// that reaches it is the last one forwarded, so the server sees a list at or over its limit and
    /// refuses the stream (431), and the output stays under twice the limit. A block that decodes to more
    /// than [`MAX_DECODED_BLOCK`] closes the connection instead.
    fn emit(
        &mut self,
        stream: u32,
        keep: u8,
        priority: Option<[u8; 5]>,
        block: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ConnectionError> {
        let mut encoded = Vec::with_capacity(block.len().min(MAX_HEADER_LIST_SIZE) + 64);
        let mut rewrites = 0;
        let mut list_size = 0usize;
        let mut decoded = 0usize;
        self.decoder
            .decode_with_cb(block, |name, value| {
                decoded += name.len() + value.len() + 32;
                if list_size >= MAX_HEADER_LIST_SIZE {
                    return;
                }
                // Sizes count what is forwarded, so the server's verdict matches the rewriter's.
                let (name, value): (&[u8], &[u8]) =
                    if name.as_ref() == b":authority" && http::uri::Authority::try_from(value.as_ref()).is_err() {
                        rewrites += 1;
                        (b":authority", b"localhost")
                    } else {
                        (&name, &value)
                    };
                list_size += name.len() + value.len() + 32;
                encode_literal(&mut encoded, name, value);
            })
            .map_err(|_| ConnectionError::Hpack)?;
        if decoded > MAX_DECODED_BLOCK {
            return Err(ConnectionError::EnhanceYourCalm);
        }
        self.rewrites += rewrites;
        let mut first = Vec::with_capacity(encoded.len().min(MAX_FRAME_SIZE) + 5);
        if let Some(p) = priority {
            first.extend_from_slice(&p);
        }
        let room = MAX_FRAME_SIZE - first.len();
        let (head, mut rest) = encoded.split_at(encoded.len().min(room));
        first.extend_from_slice(head);
        let end_headers = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(out, first.len(), TYPE_HEADERS, keep | end_headers, stream);
        out.extend_from_slice(&first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
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
            if this.fix.closed().is_some() {
                // The server has been handed the frame that makes it close the connection; the client's
                // further input is never read.
                return Poll::Ready(Ok(()));
            }
            // Input left buffered by the output budget goes first; read more only when it yields nothing.
            let mut out = std::mem::take(&mut this.ready);
            this.fix.push(&[], &mut out);
            this.ready = out;
            if !this.ready.is_empty() {
                continue;
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
                    this.fix.push(filled, &mut out);
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

/// A gRPC server builder for Unix sockets served through [`unix_incoming`] or [`AuthorityFixStream`]: it
/// advertises exactly the limits the rewriter enforces ([`MAX_FRAME_SIZE`], [`MAX_HEADER_LIST_SIZE`]), so
/// the two never disagree about what a client may send.
pub fn unix_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_frame_size(Some(MAX_FRAME_SIZE as u32))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_SIZE as u32))
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

    fn continuation_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![];
        frame_header(&mut v, payload.len(), TYPE_CONTINUATION, flags, stream);
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

    /// Feeds `input` in chunks, draining buffered input as the stream does.
    fn feed(fix: &mut AuthorityFix, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = vec![];
        for c in input.chunks(chunk.max(1)) {
            fix.push(c, &mut out);
            loop {
                let before = out.len();
                fix.push(&[], &mut out);
                if out.len() == before {
                    break;
                }
            }
        }
        out
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::new();
        let out = feed(&mut fix, input, chunk);
        assert_eq!(fix.closed(), None);
        out
    }

    /// A literal with incremental indexing and a new name (RFC 7541 6.2.1), then `refs` one-byte references
    /// to it (index 62, the newest dynamic entry): the HPACK bomb the security review used.
    fn reference_bomb(value_len: usize, refs: usize) -> Vec<u8> {
        let mut block = vec![0x40];
        encode_int(&mut block, 0, 7, 6);
        block.extend_from_slice(b"x-bomb");
        encode_int(&mut block, 0, 7, value_len);
        block.extend(std::iter::repeat_n(b'a', value_len));
        block.extend(std::iter::repeat_n(0xbe, refs));
        block
    }

    /// The header-block fragments of the HEADERS/CONTINUATION frames in `out`, joined per stream, in order.
    fn blocks(out: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut v: Vec<(u32, Vec<u8>)> = vec![];
        for (kind, _, stream, payload) in frames(out) {
            match kind {
                TYPE_HEADERS => v.push((stream, payload)),
                TYPE_CONTINUATION => v.last_mut().unwrap().1.extend_from_slice(&payload),
                _ => {}
            }
        }
        v
    }

    fn list_size(fields: &[(String, String)]) -> usize {
        fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
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
        let block = hpack_block(&[(":method", "POST"), (":authority", "/run/x.sock"), ("big", &"v".repeat(12_000))]);
        let (a, b) = block.split_at(100);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(5, FLAG_PADDED | FLAG_PRIORITY, &payload));
        let (b1, b2) = b.split_at(5_000);
        input.extend(continuation_frame(5, 0, b1));
        input.extend(continuation_frame(5, FLAG_END_HEADERS, b2));
        let out = run(&input, 999);
        let f = frames(&out[24..]);
        assert_eq!(f.len(), 1, "12 KB fits one frame again");
        assert_eq!(f[0].1 & FLAG_PRIORITY, FLAG_PRIORITY);
        assert_eq!(f[0].1 & FLAG_PADDED, 0);
        assert_eq!(f[0].1 & FLAG_END_HEADERS, FLAG_END_HEADERS);
        let got = decode(&f[0].3[5..], &mut loona_hpack::Decoder::new());
        assert_eq!(got[1].1, "localhost");
        assert_eq!(got[2].1.len(), 12_000);
    }

    #[test]
    fn reference_bomb_is_cut_just_past_the_header_list_limit_and_the_connection_goes_on() {
        // 4,000-byte entry + 9 references: 40 KB of header list, between the limit and four times it.
        let bomb = reference_bomb(4_000, 9);
        assert!(bomb.len() <= MAX_FRAME_SIZE);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS | FLAG_END_STREAM, &bomb));
        // The next request refers to the table the bomb built: the decoder must still be in step.
        let mut next = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
        next.push(0xbe); // x-bomb: a*4000, from the dynamic table
        input.extend(headers_frame(3, FLAG_END_HEADERS | FLAG_END_STREAM, &next));
        let mut fix = AuthorityFix::new();
        let out = feed(&mut fix, &input, 16 * 1024);
        assert_eq!(fix.closed(), None);
        assert!(out.len() < 2 * MAX_HEADER_LIST_SIZE + 1024, "output {} bytes", out.len());
        let b = blocks(&out[24..]);
        assert_eq!(b.len(), 2);
        let mut server = loona_hpack::Decoder::new();
        let first = decode(&b[0].1, &mut server);
        let size = list_size(&first);
        // At or past the limit (the server refuses the stream), by at most the one field that crossed it.
        assert!((MAX_HEADER_LIST_SIZE..MAX_HEADER_LIST_SIZE + 4_100).contains(&size), "forwarded list {size}");
        assert!(first.iter().all(|(n, v)| n == "x-bomb" && v.len() == 4_000));
        assert_eq!(first.len(), 5, "the fifth field crosses 16 KiB");
        let second = decode(&b[1].1, &mut server);
        assert_eq!(second.len(), 4);
        assert_eq!(second[3], ("x-bomb".into(), "a".repeat(4_000)));
    }

    #[test]
    fn the_reviewed_bombs_close_the_connection_without_being_buffered() {
        // (input, the error, what the trigger frame must look like)
        let mut huge = reference_bomb(4_000, 250_000); // 254 KB HEADERS frame
        let mut big_frame = PREFACE.to_vec();
        big_frame.extend(headers_frame(1, FLAG_END_HEADERS, &huge));
        // 1 MB frame whose block first raises the table to 128 MiB.
        let mut raise = vec![];
        encode_int(&mut raise, 0x20, 5, 128 << 20);
        raise.append(&mut huge);
        raise.resize(1 << 20, 0xbe);
        let mut table_raise_big = PREFACE.to_vec();
        table_raise_big.extend(headers_frame(1, FLAG_END_HEADERS, &raise));
        // The same table raise in a frame within the size limit.
        let mut small = vec![];
        encode_int(&mut small, 0x20, 5, HEADER_TABLE_SIZE + 1);
        small.extend(reference_bomb(100, 10));
        let mut table_raise = PREFACE.to_vec();
        table_raise.extend(headers_frame(1, FLAG_END_HEADERS, &small));
        // A CONTINUATION flood: 2 KB fragments without END_HEADERS.
        let mut flood = PREFACE.to_vec();
        flood.extend(headers_frame(1, 0, &[0x82]));
        for _ in 0..64 {
            flood.extend(continuation_frame(1, 0, &[0xbe; 2048]));
        }
        let mut interleaved = PREFACE.to_vec();
        interleaved.extend(headers_frame(1, 0, &[0x82]));
        interleaved.extend_from_slice(&[0, 0, 0, 0x0, 0x1, 0, 0, 0, 1]);
        let mut orphan = PREFACE.to_vec();
        orphan.extend(continuation_frame(1, FLAG_END_HEADERS, &[0x82]));
        let mut bad_index = PREFACE.to_vec();
        bad_index.extend(headers_frame(1, FLAG_END_HEADERS, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
        // 48 MB of references in one 16 KB frame, and the costlier kind: literals that copy a 4 KB name.
        let mut many_refs = PREFACE.to_vec();
        many_refs.extend(headers_frame(1, FLAG_END_HEADERS, &reference_bomb(4_000, 12_000)));
        // A 4,000-byte name (empty value) into the table, then literals without indexing that take their
        // name from it (dynamic index 62 in 4 prefix bits: 0x0f, 47) with an empty value.
        let mut name_copies = vec![0x40];
        encode_int(&mut name_copies, 0, 7, 4_000);
        name_copies.extend(std::iter::repeat_n(b'n', 4_000));
        name_copies.push(0x00);
        while name_copies.len() + 3 <= MAX_FRAME_SIZE {
            name_copies.extend_from_slice(&[0x0f, 47, 0x00]);
        }
        let mut name_copy_bomb = PREFACE.to_vec();
        name_copy_bomb.extend(headers_frame(1, FLAG_END_HEADERS, &name_copies));
        let cases: Vec<(&str, Vec<u8>, ConnectionError)> = vec![
            ("48 MB of references", many_refs, ConnectionError::EnhanceYourCalm),
            ("5,000 literals naming a 4 KB entry", name_copy_bomb, ConnectionError::EnhanceYourCalm),
            ("254 KB HEADERS", big_frame, ConnectionError::FrameSize),
            ("1 MB HEADERS raising the table", table_raise_big, ConnectionError::FrameSize),
            ("table raised past 4096", table_raise, ConnectionError::Hpack),
            ("CONTINUATION flood", flood, ConnectionError::EnhanceYourCalm),
            ("DATA inside a header block", interleaved, ConnectionError::Protocol),
            ("CONTINUATION without HEADERS", orphan, ConnectionError::Protocol),
            ("index out of range", bad_index, ConnectionError::Hpack),
        ];
        for (what, input, want) in cases {
            for chunk in [7, 16 * 1024] {
                let mut fix = AuthorityFix::new();
                let out = feed(&mut fix, &input, chunk);
                assert_eq!(fix.closed(), Some(want), "{what}, chunk {chunk}");
                assert!(fix.inbuf.is_empty() && fix.pending.is_none(), "{what}: nothing kept");
                assert_eq!(&out[..24], PREFACE, "{what}");
                let mut trigger = vec![];
                want.trigger(&mut trigger);
                assert!(out.ends_with(&trigger), "{what}: ends with the trigger frame");
                assert!(out.len() < 24 + 2 * MAX_HEADER_LIST_SIZE, "{what}: output {}", out.len());
                // Input after the error is discarded.
                let mut more = vec![];
                fix.push(&[0u8; 4096], &mut more);
                assert!(more.is_empty(), "{what}");
            }
        }
    }

    #[test]
    fn trigger_frames_are_what_the_server_must_refuse() {
        let mut f = vec![];
        ConnectionError::FrameSize.trigger(&mut f);
        assert_eq!(f, [0x00, 0x40, 0x01, 0x0, 0x0, 0, 0, 0, 1], "a DATA frame header of 16,385 bytes");
        let mut f = vec![];
        ConnectionError::Hpack.trigger(&mut f);
        assert_eq!(frames(&f), vec![(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, vec![0x80])]);
        assert!(loona_hpack::Decoder::new().decode(&[0x80]).is_err(), "index 0 never decodes");
        let mut f = vec![];
        ConnectionError::Protocol.trigger(&mut f);
        assert_eq!(frames(&f), vec![(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, vec![])]);
        let mut f = vec![];
        ConnectionError::EnhanceYourCalm.trigger(&mut f);
        let fr = frames(&f);
        assert_eq!(fr[0], (TYPE_HEADERS, 0, 1, vec![]));
        assert!(fr.len() > 6 && fr[1..].iter().all(|x| *x == (TYPE_CONTINUATION, 0, 1, vec![])));
        assert_eq!(
            [ConnectionError::Protocol, ConnectionError::FrameSize, ConnectionError::Hpack].map(ConnectionError::code),
            [1, 6, 1]
        );
        assert_eq!(ConnectionError::EnhanceYourCalm.code(), 0xb);
    }

    #[test]
    fn many_small_blocks_are_released_in_budgeted_steps() {
        // 10-byte frames, each one reference to a 4,000-byte entry: 400x amplification per byte.
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS | FLAG_END_STREAM, &reference_bomb(4_000, 0)));
        for i in 0..1_000u32 {
            input.extend(headers_frame(3 + 2 * i, FLAG_END_HEADERS | FLAG_END_STREAM, &[0xbe]));
        }
        let mut fix = AuthorityFix::new();
        let mut out = vec![];
        fix.push(&input, &mut out);
        assert!(out.len() < OUT_BUDGET + 2 * MAX_HEADER_LIST_SIZE, "one push produced {} bytes", out.len());
        let mut total = out.len();
        let mut steps = 1;
        loop {
            let mut more = vec![];
            fix.push(&[], &mut more);
            if more.is_empty() {
                break;
            }
            assert!(more.len() < OUT_BUDGET + 2 * MAX_HEADER_LIST_SIZE);
            total += more.len();
            steps += 1;
        }
        assert!(steps > 10, "released in {steps} steps");
        assert_eq!(fix.closed(), None);
        assert!(total > 1_000 * 4_000, "every request is forwarded in the end ({total} bytes)");
    }

    #[test]
    fn random_input_never_panics_and_output_stays_bounded() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let len = (next() % 600) as usize;
            let mut input = PREFACE.to_vec();
            // Mostly well-framed HEADERS/CONTINUATION with random blocks, sometimes raw garbage.
            while input.len() < len + 24 {
                let n = (next() % 64) as usize;
                let payload: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                let kind = [TYPE_HEADERS, TYPE_CONTINUATION, 0x0, 0x4, (next() % 16) as u8][(next() % 5) as usize];
                let flags = (next() % 64) as u8;
                frame_header(&mut input, n, kind, flags, (next() % 8) as u32);
                input.extend(payload);
            }
            let mut fix = AuthorityFix::new();
            let out = feed(&mut fix, &input, 1 + (next() % 50) as usize);
            // Each frame (9 bytes at least) releases at most one block: the list limit plus the field that
            // crossed it, plus frame headers.
            let frames_in = input.len() / FRAME_HEADER_LEN + 1;
            assert!(
                out.len() <= 24 + frames_in * (2 * MAX_HEADER_LIST_SIZE + 64),
                "{} from {}",
                out.len(),
                input.len()
            );
        }
    }
}
