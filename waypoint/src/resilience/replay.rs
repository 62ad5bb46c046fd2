//! A request body that can be sent again: what lets a request with a body be retried.
//!
//! The first attempt streams the client's body through unchanged while keeping a copy of the data, up to a limit
//! (64 KiB by default, Linkerd's `MAX_BUFFERED_BYTES`). [`ReplayBody::try_clone`] makes the body of the next
//! attempt: it yields the copied chunks, then reads on from the client's body where the previous attempt stopped
//! (a server may answer before it has read the whole body), then the trailers. Once more than the limit has been
//! read, or the client's body failed, no further attempt can be made and `try_clone` gives `None`; a body whose
//! announced length is already over the limit is never buffered at all.
//!
//! Attempts are sequential: the attempt that reads from the client's body holds it and gives it back when it is
//! dropped. An attempt that needs it meanwhile waits (the previous attempt's connection may still be sending); the
//! caller's overall timeout bounds that wait. The shared state is behind a mutex that is never held while the
//! client's body is polled.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::upstream::{BoxError, ReqBody};

/// How much of a request body is kept for a retry, by default.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// One attempt's view of a replayable request body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// The client's body, while this attempt is the one reading it.
    inner: Option<ReqBody>,
    /// How many data chunks, and bytes, this attempt has yielded.
    next_chunk: usize,
    yielded: u64,
    /// Whether this attempt has yielded the trailers (or there are none to yield).
    trailers_done: bool,
}

struct Shared {
    /// The client's body, when no attempt holds it.
    body: Option<ReqBody>,
    /// The data read from the client so far; emptied once the body is not replayable.
    chunks: Vec<Bytes>,
    /// Data chunks and bytes read from the client so far, kept or not.
    read_chunks: usize,
    read: u64,
    trailers: Option<HeaderMap>,
    /// The client's body has ended.
    complete: bool,
    /// More than `max` bytes, or an error from the client: no further attempt can be made.
    unreplayable: bool,
    max: u64,
    /// The client's body's size hint before anything was read.
    initial_hint: SizeHint,
    /// Attempts waiting for the holder to give the client's body back.
    waiting: Vec<Waker>,
}

impl Shared {
    fn wake(&mut self) {
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Nothing panics while holding the lock; if something did, the counters are still consistent enough to
    // finish the attempt.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReplayBody {
    /// Wraps the client's body, keeping up to `max` bytes for replay.
    pub fn new(body: ReqBody, max: usize) -> Self {
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        let initial_hint = body.size_hint();
        let shared = Shared {
            complete: body.is_end_stream(),
            unreplayable: initial_hint.lower() > max,
            body: Some(body),
            chunks: Vec::new(),
            read_chunks: 0,
            read: 0,
            trailers: None,
            max,
            initial_hint,
            waiting: Vec::new(),
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(shared)),
            inner: None,
            next_chunk: 0,
            yielded: 0,
            trailers_done: false,
        }
    }

    /// Whether another attempt can still be made (it may still become impossible while this one streams).
    pub fn is_replayable(&self) -> bool {
        !lock(&self.shared).unreplayable
    }

    /// Whether some attempt (this one or another) is reading the client's body and it has not ended: a clone made
    /// now would wait for that attempt to be dropped before reading past the buffered data. A caller that
    /// prefers not to retry a body that is still streaming (Linkerd's rule) checks this first.
    pub fn is_streaming(&self) -> bool {
        let s = lock(&self.shared);
        !s.complete && s.body.is_none()
    }

    /// The body for the next attempt, or `None` if the body can no longer be replayed.
    pub fn try_clone(&self) -> Option<ReplayBody> {
        if lock(&self.shared).unreplayable {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            inner: None,
            next_chunk: 0,
            yielded: 0,
            trailers_done: false,
        })
    }

    /// Reads one frame from the client's body (which this attempt holds) and records it.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Some(Err("replay body polled without its source".into())));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let mut s = lock(&self.shared);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.complete = true;
                self.trailers_done = true;
                s.wake();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.unreplayable = true;
                s.chunks = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    s.read_chunks += 1;
                    s.read = s.read.saturating_add(len);
                    self.next_chunk += 1;
                    self.yielded = self.yielded.saturating_add(len);
                    if !s.unreplayable {
                        if s.read > s.max {
                            s.unreplayable = true;
                            s.chunks = Vec::new();
                        } else {
                            s.chunks.push(data.clone());
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.complete = true;
                    self.trailers_done = true;
                    s.wake();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        {
            let mut s = lock(&this.shared);
            // First what earlier attempts read and this one has not yielded yet.
            if this.next_chunk < s.read_chunks {
                let Some(chunk) = s.chunks.get(this.next_chunk).cloned() else {
                    return Poll::Ready(Some(Err(
                        "request body outgrew the replay buffer during a retry".into(),
                    )));
                };
                this.next_chunk += 1;
                this.yielded = this.yielded.saturating_add(chunk.len() as u64);
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if s.complete {
                if !this.trailers_done {
                    this.trailers_done = true;
                    if let Some(t) = &s.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                    }
                }
                return Poll::Ready(None);
            }
            // Then on from the client's body, once the previous attempt has let go of it.
            if this.inner.is_none() {
                match s.body.take() {
                    Some(b) => this.inner = Some(b),
                    None => {
                        if !s.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                            s.waiting.push(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                }
            }
        }
        this.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        if self.next_chunk < s.read_chunks {
            return false;
        }
        if s.complete {
            return self.trailers_done || s.trailers.is_none();
        }
        match (&self.inner, &s.body) {
            (Some(b), _) | (None, Some(b)) => b.is_end_stream(),
            (None, None) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        let buffered = s.read.saturating_sub(self.yielded);
        if s.complete {
            return SizeHint::with_exact(buffered);
        }
        let rest = match (&self.inner, &s.body) {
            (Some(b), _) | (None, Some(b)) => b.size_hint(),
            // Held by another attempt: what the client announced, less what has been read.
            (None, None) => match s.initial_hint.exact() {
                Some(n) => SizeHint::with_exact(n.saturating_sub(s.read)),
                None => SizeHint::default(),
            },
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(buffered));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}

impl Drop for ReplayBody {
    /// Gives the client's body back for the next attempt.
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        let mut s = lock(&self.shared);
        if !s.complete {
            s.body = Some(body);
        }
        s.wake();
    }
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.shared);
        f.debug_struct("ReplayBody")
            .field("read", &s.read)
            .field("yielded", &self.yielded)
            .field("complete", &s.complete)
            .field("replayable", &!s.unreplayable)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    type Item = Result<Frame<Bytes>, BoxError>;

    fn full(data: &'static [u8]) -> ReqBody {
        Full::new(Bytes::from_static(data))
            .map_err(|e| match e {})
            .boxed_unsync()
    }

    /// A body of the given frames, with no size hint.
    fn frames(items: Vec<Item>) -> ReqBody {
        StreamBody::new(tokio_stream::iter(items)).boxed_unsync()
    }

    fn chunks(n: usize, size: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size]))))
            .collect()
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t
    }

    /// The whole body and its trailers.
    async fn read_all(b: ReplayBody) -> (Bytes, Option<HeaderMap>) {
        let c = b.collect().await.unwrap();
        let t = c.trailers().cloned();
        (c.to_bytes(), t)
    }

    #[tokio::test]
    async fn small_body_replayed_three_times() {
        let first = ReplayBody::new(full(b"hello, world"), DEFAULT_MAX_REPLAY_BYTES);
        assert_eq!(first.size_hint().exact(), Some(12));
        let second = first.try_clone().unwrap();
        assert_eq!(read_all(first).await.0, "hello, world");
        let third = second.try_clone().unwrap();
        assert!(!second.is_end_stream());
        assert_eq!(second.size_hint().exact(), Some(12));
        assert_eq!(read_all(second).await.0, "hello, world");
        let fourth = third.try_clone().unwrap();
        assert_eq!(read_all(third).await.0, "hello, world");
        assert_eq!(read_all(fourth).await.0, "hello, world");
    }

    #[tokio::test]
    async fn streamed_chunks_replayed_byte_identical() {
        let items = chunks(10, 1000);
        let want: Vec<u8> = (0..10).flat_map(|i| vec![b'a' + i as u8; 1000]).collect();
        let first = ReplayBody::new(frames(items), DEFAULT_MAX_REPLAY_BYTES);
        assert_eq!(first.size_hint().exact(), None);
        let retry = first.try_clone().unwrap();
        assert_eq!(read_all(first).await.0, want);
        assert_eq!(retry.size_hint().exact(), Some(10_000));
        assert_eq!(read_all(retry).await.0, want);
    }

    #[tokio::test]
    async fn over_the_limit_is_not_replayable_but_streams_whole() {
        // Announced as too large: never buffered.
        let big = Bytes::from(vec![7u8; 100_000]);
        let body = Full::new(big.clone())
            .map_err(|e| match e {})
            .boxed_unsync();
        let first = ReplayBody::new(body, DEFAULT_MAX_REPLAY_BYTES);
        assert!(!first.is_replayable());
        assert!(first.try_clone().is_none());
        assert_eq!(read_all(first).await.0, big);

        // Found to be too large while streaming: replayable until the limit is passed.
        let mut first = ReplayBody::new(frames(chunks(10, 1000)), 4096);
        let early = first.try_clone();
        assert!(early.is_some());
        drop(early);
        let mut got = Vec::new();
        while let Some(frame) = first.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(got.len(), 10_000);
        assert!(first.try_clone().is_none());
    }

    #[tokio::test]
    async fn retry_created_before_overflow_fails_cleanly() {
        let mut first = ReplayBody::new(frames(chunks(10, 1000)), 4096);
        let retry = first.try_clone().unwrap();
        while first.frame().await.is_some() {}
        drop(first);
        let err = retry.collect().await.unwrap_err();
        assert!(err.to_string().contains("replay buffer"), "{err}");
    }

    #[tokio::test]
    async fn partial_first_attempt_then_whole_body() {
        let mut items = chunks(5, 100);
        items.push(Ok(Frame::trailers(trailers())));
        let want: Vec<u8> = (0..5).flat_map(|i| vec![b'a' + i as u8; 100]).collect();
        let mut first = ReplayBody::new(frames(items), DEFAULT_MAX_REPLAY_BYTES);
        // The server answered after two chunks; the attempt is dropped.
        for _ in 0..2 {
            first.frame().await.unwrap().unwrap();
        }
        let second = first.try_clone().unwrap();
        assert!(first.is_streaming());
        drop(first);
        assert!(!second.is_streaming(), "given back on drop");
        let third = second.try_clone().unwrap();
        let (data, t) = read_all(second).await;
        assert_eq!(data, want);
        assert_eq!(t, Some(trailers()));
        // Everything is buffered now, trailers included.
        assert_eq!(third.size_hint().exact(), Some(500));
        let (data, t) = read_all(third).await;
        assert_eq!(data, want);
        assert_eq!(t, Some(trailers()));
    }

    #[tokio::test]
    async fn empty_body() {
        let first = ReplayBody::new(Empty::new().map_err(|e| match e {}).boxed_unsync(), 16);
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        let retry = first.try_clone().unwrap();
        assert_eq!(read_all(first).await.0, "");
        assert!(retry.is_end_stream());
        assert_eq!(read_all(retry).await, (Bytes::new(), None));
        // A zero limit still replays an empty body.
        let zero = ReplayBody::new(frames(vec![]), 0);
        let retry = zero.try_clone().unwrap();
        assert_eq!(read_all(zero).await.0, "");
        assert_eq!(read_all(retry).await.0, "");
    }

    #[tokio::test]
    async fn trailers_replayed_and_end_of_stream() {
        let first = ReplayBody::new(
            frames(vec![
                Ok(Frame::data(Bytes::from_static(b"x"))),
                Ok(Frame::trailers(trailers())),
            ]),
            DEFAULT_MAX_REPLAY_BYTES,
        );
        let mut retry = first.try_clone().unwrap();
        assert_eq!(
            read_all(first).await,
            (Bytes::from_static(b"x"), Some(trailers()))
        );
        assert!(!retry.is_end_stream());
        assert_eq!(
            retry.frame().await.unwrap().unwrap().into_data().unwrap(),
            "x"
        );
        assert!(!retry.is_end_stream(), "trailers still to come");
        let t = retry
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(t, trailers());
        assert!(retry.is_end_stream());
        assert!(retry.frame().await.is_none());
    }

    /// A retry polled while the previous attempt still holds the client's body waits for it to be dropped, then
    /// replays what was read and reads on.
    #[tokio::test]
    async fn next_attempt_waits_for_the_previous() {
        let (tx, rx) = mpsc::channel::<Item>(4);
        let body = StreamBody::new(ReceiverStream::new(rx)).boxed_unsync();
        let mut first = ReplayBody::new(body, DEFAULT_MAX_REPLAY_BYTES);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one "))))
            .await
            .unwrap();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "one "
        );

        assert!(first.is_streaming());
        let retry = first.try_clone().unwrap();
        assert!(retry.is_streaming(), "seen from every clone");
        let task = tokio::spawn(read_all(retry));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !task.is_finished(),
            "waits while the first attempt holds the body"
        );

        drop(first);
        tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::trailers(trailers()))).await.unwrap();
        drop(tx);
        let (data, t) = task.await.unwrap();
        assert_eq!(data, "one two");
        assert_eq!(t, Some(trailers()));
    }

    #[tokio::test]
    async fn client_error_ends_replay() {
        let first = ReplayBody::new(
            frames(vec![
                Ok(Frame::data(Bytes::from_static(b"abc"))),
                Err("client went away".into()),
            ]),
            DEFAULT_MAX_REPLAY_BYTES,
        );
        let err = first.collect().await.unwrap_err();
        assert_eq!(err.to_string(), "client went away");
    }

    #[tokio::test]
    async fn client_error_makes_clones_unavailable() {
        let mut first = ReplayBody::new(
            frames(vec![
                Ok(Frame::data(Bytes::from_static(b"abc"))),
                Err("client went away".into()),
            ]),
            DEFAULT_MAX_REPLAY_BYTES,
        );
        first.frame().await.unwrap().unwrap();
        assert!(first.try_clone().is_some());
        assert!(first.frame().await.unwrap().is_err());
        assert!(first.try_clone().is_none());
        assert!(!first.is_replayable());
    }

    /// Send, like the `UnsyncBoxBody` it wraps, so it can be boxed into one again for the upstream client.
    #[test]
    fn is_send() {
        fn check<T: Send + 'static>() {}
        check::<ReplayBody>();
        let _: ReqBody = ReplayBody::new(full(b""), 0).boxed_unsync();
    }
}
