//! `RequestMirror`: a copy of the request goes to another backend and its answer is thrown away. A request with
//! a body is mirrored with that body: [`Tee`] sits under the real request's body and hands each frame to every
//! mirror as it passes, so the body is read once, at the real backend's pace, and never buffered whole.
//!
//! A mirror never slows or fails the real request: each one may queue at most [`MAX_QUEUED`] bytes that its
//! backend has not taken yet; past that (a slow or stuck mirror) its copy is cut off with an error, which aborts
//! only the mirrored request. When the real request stops reading its body early (an early answer, a failure),
//! the mirrors' copies end with an error too, so a backend never takes a truncated body for a complete one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{self};
use http::{Request, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use rand::Rng;
use tracing::debug;

use super::Proxy;
use super::body::RespBody;
use super::headers::strip_hop_by_hop;
use crate::filters::Mirror;
use crate::state::Snapshot;
use crate::upstream::{BoxError, ReqBody};

/// How many bytes one mirror may hold that its backend has not read yet before its copy is cut off.
pub const MAX_QUEUED: usize = 256 * 1024;

/// Starts the mirrored copy of a request when the mirror's sampling says so and its backend has an endpoint.
/// With a body, returns the [`Feed`] that the real request's [`Tee`] fills.
pub fn start(
    proxy: &Arc<Proxy>,
    snap: &Snapshot,
    m: &Mirror,
    parts: &http::request::Parts,
    has_body: bool,
) -> Option<Feed> {
    let Ok(target) = &m.target else { return None };
    if m.percent < 100.0 && rand::rng().random_range(0.0..100.0) >= m.percent {
        return None;
    }
    let Some(picked) = snap
        .backend(&target.hostname, target.port, target.subset.as_deref())
        .and_then(|b| b.pick(None, &[]).map(|(_, p)| p))
    else {
        debug!(backend = %target.hostname, "mirror backend has no endpoint");
        return None;
    };
    let h2 = snap
        .service(&target.hostname)
        .and_then(|s| s.port(target.port))
        .is_some_and(|p| p.protocol.is_h2());
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, false);
    let (feed, body) = if has_body {
        let (feed, body) = channel();
        (Some(feed), body.boxed_unsync())
    } else {
        (None, RespBody::full(Vec::<u8>::new()))
    };
    let mut req = Request::new(body as ReqBody);
    *req.method_mut() = parts.method.clone();
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    if h2 {
        headers.remove(header::HOST);
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"));
    } else {
        *req.uri_mut() = Uri::from(pq);
    }
    *req.headers_mut() = headers;
    let proxy = proxy.clone();
    tokio::spawn(async move {
        match proxy
            .upstream
            .send(&picked.workload, picked.addr, h2, req, None)
            .await
        {
            Ok((resp, release)) => {
                let complete = resp.into_body().collect().await.is_ok();
                if let Some(r) = release
                    && complete
                {
                    r.release();
                }
            }
            Err(e) => debug!(error = %e, "mirrored request failed"),
        }
    });
    feed
}

/// The real request's body, handing every frame to the mirrors as it passes.
pub struct Tee<B> {
    inner: B,
    feeds: Vec<Feed>,
}

impl<B> Tee<B> {
    pub fn new(inner: B, feeds: Vec<Feed>) -> Self {
        Tee { inner, feeds }
    }

    fn cut_all(&mut self, why: &'static str) {
        for f in self.feeds.drain(..) {
            f.cut(why);
        }
    }
}

impl<B> Body for Tee<B>
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
        if self.feeds.is_empty() {
            return r;
        }
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                let mut i = 0;
                while i < self.feeds.len() {
                    if self.feeds[i].push(frame) {
                        i += 1;
                    } else {
                        self.feeds.swap_remove(i).cut("the mirror fell behind");
                    }
                }
                if self.inner.is_end_stream() {
                    self.feeds.drain(..).for_each(Feed::end);
                }
            }
            Poll::Ready(None) => self.feeds.drain(..).for_each(Feed::end),
            Poll::Ready(Some(Err(_))) => self.cut_all("the request body failed"),
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

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        self.cut_all("the request body was not read to its end");
    }
}

/// What one mirror's copy of the body is waiting for.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame<Bytes>>,
    queued: usize,
    /// `Some(None)`: ended normally; `Some(Some(why))`: cut off.
    done: Option<Option<&'static str>>,
    /// The mirrored request is over (answered or failed): nothing more is queued.
    receiver_gone: bool,
    waker: Option<Waker>,
}

/// The [`Tee`]'s side of one mirror's body.
pub struct Feed(Arc<Mutex<Queue>>);

/// The mirrored request's body.
struct Copy(Arc<Mutex<Queue>>);

fn channel() -> (Feed, Copy) {
    let q = Arc::new(Mutex::new(Queue::default()));
    (Feed(q.clone()), Copy(q))
}

impl Feed {
    /// Queues a copy of a frame; `false` when that would pass [`MAX_QUEUED`].
    fn push(&self, frame: &Frame<Bytes>) -> bool {
        let Ok(mut q) = self.0.lock() else {
            return false;
        };
        if q.receiver_gone {
            return false;
        }
        let copy = match (frame.data_ref(), frame.trailers_ref()) {
            (Some(d), _) => Frame::data(d.clone()),
            (None, Some(t)) => Frame::trailers(t.clone()),
            (None, None) => return true,
        };
        let len = frame.data_ref().map_or(0, Bytes::len);
        if q.queued + len > MAX_QUEUED {
            return false;
        }
        q.queued += len;
        q.frames.push_back(copy);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        true
    }

    fn finish(self, how: Option<&'static str>) {
        if let Ok(mut q) = self.0.lock()
            && q.done.is_none()
        {
            q.done = Some(how);
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
    }

    fn end(self) {
        self.finish(None);
    }

    fn cut(self, why: &'static str) {
        debug!(reason = why, "mirrored body cut off");
        self.finish(Some(why));
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        if let Ok(mut q) = self.0.lock() {
            q.frames.clear();
            q.queued = 0;
            q.receiver_gone = true;
        }
    }
}

impl Body for Copy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Ok(mut q) = self.0.lock() else {
            return Poll::Ready(Some(Err("mirror queue poisoned".into())));
        };
        if let Some(f) = q.frames.pop_front() {
            q.queued -= f.data_ref().map_or(0, Bytes::len);
            return Poll::Ready(Some(Ok(f)));
        }
        match q.done {
            Some(None) => Poll::Ready(None),
            Some(Some(why)) => Poll::Ready(Some(Err(why.into()))),
            None => {
                q.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .map(|q| q.frames.is_empty() && q.done == Some(None))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A body of the given chunks, one frame each.
    struct Chunks(VecDeque<&'static [u8]>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(Bytes::from(b)))))
        }
    }

    fn frames(parts: Vec<&'static [u8]>) -> Chunks {
        Chunks(parts.into())
    }

    #[tokio::test]
    async fn every_mirror_gets_the_whole_body() {
        let (f1, c1) = channel();
        let (f2, c2) = channel();
        let tee = Tee::new(frames(vec![b"hel", b"lo ", b"world"]), vec![f1, f2]);
        let real = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&real[..], b"hello world");
        for c in [c1, c2] {
            assert_eq!(&c.collect().await.unwrap().to_bytes()[..], b"hello world");
        }
    }

    #[tokio::test]
    async fn a_mirror_that_falls_behind_is_cut_off_and_the_real_body_is_whole() {
        let big: &'static [u8] = Box::leak(vec![7u8; MAX_QUEUED / 2 + 1].into_boxed_slice());
        let (f, c) = channel();
        let tee = Tee::new(frames(vec![big, big, big]), vec![f]);
        let real = tee.collect().await.unwrap().to_bytes();
        assert_eq!(real.len(), 3 * big.len());
        assert!(c.collect().await.is_err(), "a truncated copy must fail");
    }

    #[tokio::test]
    async fn a_body_not_read_to_its_end_fails_the_copy() {
        let (f, c) = channel();
        let mut tee = Tee::new(frames(vec![b"part", b"rest"]), vec![f]);
        let first = tee.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().as_ref(), b"part");
        drop(tee);
        assert!(c.collect().await.is_err());
    }

    #[tokio::test]
    async fn a_full_body_ends_the_copy_on_its_last_frame() {
        let (f, c) = channel();
        let tee = Tee::new(Full::new(Bytes::from_static(b"x")), vec![f]);
        let _ = tee.collect().await.unwrap();
        assert_eq!(&c.collect().await.unwrap().to_bytes()[..], b"x");
    }

    #[tokio::test]
    async fn a_finished_mirror_refuses_further_frames() {
        let (f, c) = channel();
        drop(c);
        assert!(!f.push(&Frame::data(Bytes::from_static(b"late"))));
    }
}
