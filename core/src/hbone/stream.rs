//! One CONNECT stream, and the copy loop that joins it to a socket.
//!
//! Both directions are driven by one future (no split, no lock): socket → stream reads into a `BytesMut` whose
//! size adapts to the traffic and hands frozen slices to `h2` (no copy); stream → socket writes each received
//! `Bytes` straight out and only then releases its flow-control capacity, which is what pushes back on a fast
//! sender.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::HboneError;

const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 1024 * 1024;
const MIN_SPARE: usize = 4 * 1024;

/// A CONNECT stream in both directions.
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Released when the stream is dropped (the pool counts live streams per connection).
    pub(crate) _guard: Option<Box<dyn Send + Sync>>,
    /// Received data not yet handed to an `AsyncRead` caller.
    pending_read: Bytes,
    read_done: bool,
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            _guard: guard,
            pending_read: Bytes::new(),
            read_done: false,
        }
    }
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .finish()
    }
}

/// Bytes moved by [`copy_bidirectional`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyResult {
    /// From the socket into the stream.
    pub to_h2: u64,
    /// From the stream out to the socket.
    pub from_h2: u64,
}

/// Is this an end of stream rather than an error? (peer END_STREAM arrives as `None`; RST NO_ERROR/CANCEL too.)
fn clean_reset(e: &h2::Error) -> bool {
    matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL)) && e.is_reset()
}

/// socket → stream.
struct Upload {
    buf: BytesMut,
    chunk: Bytes,
    read_size: usize,
    done: bool,
    bytes: u64,
}

impl Upload {
    fn poll<T: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut T,
        send: &mut SendStream<Bytes>,
    ) -> Poll<Result<(), HboneError>> {
        loop {
            if self.chunk.is_empty() {
                // Small reads share one allocation: only grow when little room is left, so a chatty connection
                // allocates once per ~read_size bytes rather than once per read.
                if self.buf.capacity() - self.buf.len() < MIN_SPARE {
                    self.buf.reserve(self.read_size);
                }
                let read = {
                    let spare = self.buf.spare_capacity_mut();
                    let limit = spare.len().min(self.read_size);
                    let mut rb = ReadBuf::uninit(&mut spare[..limit]);
                    match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                        Poll::Ready(r) => Some(r.map(|()| rb.filled().len())),
                        Poll::Pending => None,
                    }
                };
                let Some(read) = read else {
                    // Nothing to read: hold no buffer while waiting (everything read so far was split off), so an
                    // idle connection costs no read buffer and one that moved bulk data keeps no 1 MiB after it.
                    self.buf = BytesMut::new();
                    return Poll::Pending;
                };
                let n = read?;
                if n == 0 {
                    send.send_data(Bytes::new(), true)?;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                let len = self.buf.len();
                advance_filled(&mut self.buf, len + n);
                if n == self.read_size && self.read_size < MAX_READ {
                    self.read_size *= 2;
                } else if n < self.read_size / 4 && self.read_size > MIN_READ {
                    // Traffic that turned chatty after a burst: the next reservation shrinks back toward MIN_READ.
                    self.read_size /= 2;
                }
                self.chunk = self.buf.split().freeze();
            }
            send.reserve_capacity(self.chunk.len());
            match ready!(send.poll_capacity(cx)) {
                None => {
                    return Poll::Ready(Err(HboneError::Io(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream closed",
                    ))));
                }
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                Some(Ok(0)) => continue,
                Some(Ok(cap)) => {
                    let n = cap.min(self.chunk.len());
                    let part = self.chunk.split_to(n);
                    self.bytes += n as u64;
                    send.send_data(part, false)?;
                }
            }
        }
    }
}

/// Extends `buf`'s length to `len` after bytes were written into its spare capacity by a `ReadBuf`.
#[allow(unsafe_code)]
fn advance_filled(buf: &mut BytesMut, len: usize) {
    debug_assert!(len <= buf.capacity());
    // SAFETY: the caller read `len - buf.len()` bytes into the spare capacity through a `ReadBuf`, which reports
    // only initialised bytes as filled.
    unsafe { buf.set_len(len) }
}

/// stream → socket.
struct Download {
    chunk: Bytes,
    unreleased: usize,
    done: bool,
    bytes: u64,
}

impl Download {
    fn poll<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut T,
        recv: &mut RecvStream,
    ) -> Poll<Result<(), HboneError>> {
        loop {
            while !self.chunk.is_empty() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.chunk.advance(n);
                self.bytes += n as u64;
            }
            if self.unreleased > 0 {
                let _ = recv.flow_control().release_capacity(self.unreleased);
                self.unreleased = 0;
            }
            match recv.poll_data(cx) {
                Poll::Pending => {
                    ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(data))) => {
                    self.unreleased = data.len();
                    self.chunk = data;
                }
                Poll::Ready(Some(Err(e))) if !clean_reset(&e) => return Poll::Ready(Err(e.into())),
                Poll::Ready(_) => {
                    ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Copies between `h2` and `other` until both directions have ended.
pub async fn copy_bidirectional<T: AsyncRead + AsyncWrite + Unpin>(
    h2: H2Stream,
    other: &mut T,
) -> Result<CopyResult, HboneError> {
    let H2Stream {
        mut send,
        mut recv,
        _guard,
        ..
    } = h2;
    let mut up = Upload {
        buf: BytesMut::new(),
        chunk: Bytes::new(),
        read_size: MIN_READ,
        done: false,
        bytes: 0,
    };
    let mut down = Download {
        chunk: Bytes::new(),
        unreleased: 0,
        done: false,
        bytes: 0,
    };
    poll_fn(|cx| {
        if !up.done
            && let Poll::Ready(Err(e)) = up.poll(cx, other, &mut send)
        {
            return Poll::Ready(Err(e));
        }
        if !down.done
            && let Poll::Ready(Err(e)) = down.poll(cx, other, &mut recv)
        {
            return Poll::Ready(Err(e));
        }
        if up.done && down.done {
            Poll::Ready(Ok(()))
        } else {
            // Peer reset while we wait: surface it instead of hanging.
            if !up.done
                && let Poll::Ready(Ok(reason)) = send.poll_reset(cx)
            {
                if reason != Reason::NO_ERROR && reason != Reason::CANCEL {
                    return Poll::Ready(Err(HboneError::Reset(reason)));
                }
                up.done = true;
                if down.done {
                    return Poll::Ready(Ok(()));
                }
            }
            Poll::Pending
        }
    })
    .await?;
    drop(_guard);
    Ok(CopyResult {
        to_h2: up.bytes,
        from_h2: down.bytes,
    })
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending_read.is_empty() {
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending_read = data;
                }
                Some(Err(e)) if !clean_reset(&e) => return Poll::Ready(Err(io::Error::other(e))),
                _ => this.read_done = true,
            }
        }
        let n = this.pending_read.len().min(buf.remaining());
        buf.put_slice(&this.pending_read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(data.len());
        match ready!(self.send.poll_capacity(cx)) {
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Some(Err(e)) => Poll::Ready(Err(io::Error::other(e))),
            Some(Ok(cap)) => {
                let n = cap.min(data.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&data[..n]), false)
                    .map_err(io::Error::other)?;
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send
            .send_data(Bytes::new(), true)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(()))
    }
}
