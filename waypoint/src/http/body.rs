//! Bodies that count their bytes, and the response body that finishes a request: when it ends (or is dropped) it
//! records the request's metrics and access log, and gives an HTTP/1.1 connection back to its idle list.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::upstream::{BoxError, Release, ReqBody};

/// A request body that adds the bytes it passes on to a shared counter.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> Counted<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn boxed(inner: B, bytes: Arc<AtomicU64>) -> ReqBody {
        Counted { inner, bytes }.map_err(Into::into).boxed_unsync()
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when the response is over: with the response bytes, the `grpc-status` from trailers if any, and
/// whether the body was read to its end.
pub trait Finish: Send {
    fn finish(self: Box<Self>, response_bytes: u64, grpc_status: Option<String>, complete: bool);
}

/// The response body sent to the client.
pub struct RespBody {
    inner: UnsyncBody,
    bytes: u64,
    grpc_status: Option<String>,
    release: Option<Release>,
    finish: Option<Box<dyn Finish>>,
}

type UnsyncBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

impl RespBody {
    pub fn new(
        inner: UnsyncBody,
        release: Option<Release>,
        finish: Option<Box<dyn Finish>>,
    ) -> RespBody {
        RespBody {
            inner,
            bytes: 0,
            grpc_status: None,
            release,
            finish,
        }
    }

    /// A body with these bytes (synthetic responses).
    pub fn full(b: impl Into<Bytes>) -> UnsyncBody {
        http_body_util::Full::new(b.into())
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    pub fn set_finish(&mut self, f: Box<dyn Finish>) {
        self.finish = Some(f);
    }

    fn done(&mut self, complete: bool) {
        if let Some(r) = self.release.take()
            && complete
        {
            r.release();
        }
        if let Some(f) = self.finish.take() {
            f.finish(self.bytes, self.grpc_status.take(), complete);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref()
                    && let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok())
                {
                    self.grpc_status = Some(s.to_owned());
                }
                if self.inner.is_end_stream() {
                    self.done(true);
                }
            }
            Poll::Ready(None) => self.done(true),
            Poll::Ready(Some(Err(_))) => self.done(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // Empty bodies may never be polled; an unfinished one means the client went away.
        let complete = self.inner.is_end_stream();
        self.done(complete);
    }
}
