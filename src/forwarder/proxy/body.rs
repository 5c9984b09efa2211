//! The data plane's body types: what goes upstream ([`ReqBody`], with the [`Tee`] that keeps
//! a bounded copy for mirrors and retries) and what goes downstream ([`RespBody`], with the
//! end-of-response bookkeeping of [`UpstreamBody`]).
//!
//! Nothing here ever waits on anyone but the body's own peer: the tee copies chunks by
//! reference count into a buffer capped at the mirror limit and publishes the whole body once
//! it ended, so a slow or dead shadow can never apply back-pressure to the primary.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::watch;

use super::upstream::Finish;
use crate::forwarder::mirror::PrimaryMeasure;

/// The error type of bodies sent downstream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a captured request body is not available to a mirror or a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMiss {
    /// The body is larger than the capture limit (the primary still gets it whole).
    TooLarge,
    /// The body never completed (the client or the primary's upstream gave up mid-body).
    Incomplete,
}

type Captured = Option<Result<Bytes, CaptureMiss>>;

/// The reading side of a request body's bounded copy. Cheap to clone: every mirror of a
/// request and the retry logic hold one.
#[derive(Debug, Clone)]
pub enum Capture {
    /// Known at once (no body, or a body already buffered).
    Ready(Bytes),
    /// Filled by a [`Tee`] when the body ends.
    Pending(watch::Receiver<Captured>),
}

impl Capture {
    /// The body if it is complete and within the limit by now, without waiting.
    pub fn now(&self) -> Option<Result<Bytes, CaptureMiss>> {
        match self {
            Capture::Ready(b) => Some(Ok(b.clone())),
            Capture::Pending(rx) => rx.borrow().clone(),
        }
    }

    /// Wait until the body ended (or can't be captured).
    pub async fn wait(self) -> Result<Bytes, CaptureMiss> {
        match self {
            Capture::Ready(b) => Ok(b),
            Capture::Pending(mut rx) => loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    return r;
                }
                if rx.changed().await.is_err() {
                    // The tee is gone; it always publishes before going, but be safe.
                    return rx.borrow().clone().unwrap_or(Err(CaptureMiss::Incomplete));
                }
            },
        }
    }
}

/// A downstream request body streamed to the primary while a copy (up to `limit` bytes) is
/// kept for mirrors and retries.
#[derive(Debug)]
pub struct Tee {
    inner: Incoming,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    tx: Option<watch::Sender<Captured>>,
}

impl Tee {
    /// Wrap `inner`, keeping a copy of at most `limit` bytes.
    pub fn new(inner: Incoming, limit: usize) -> (Tee, Capture) {
        let (tx, rx) = watch::channel(None);
        (
            Tee {
                inner,
                chunks: Vec::new(),
                len: 0,
                limit,
                tx: Some(tx),
            },
            Capture::Pending(rx),
        )
    }

    fn keep(&mut self, data: &Bytes) {
        if self.tx.is_none() {
            return;
        }
        self.len = self.len.saturating_add(data.len());
        if self.len > self.limit {
            self.chunks = Vec::new();
            self.publish(Err(CaptureMiss::TooLarge));
        } else if !data.is_empty() {
            // A reference-counted copy: no bytes are moved.
            self.chunks.push(data.clone());
        }
    }

    fn finish(&mut self) {
        if self.tx.is_none() {
            return;
        }
        let chunks = std::mem::take(&mut self.chunks);
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity(self.len);
                for c in chunks {
                    buf.extend_from_slice(&c);
                }
                buf.freeze()
            }
        };
        self.publish(Ok(body));
    }

    fn publish(&mut self, value: Result<Bytes, CaptureMiss>) {
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(value));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.publish(Err(CaptureMiss::Incomplete));
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.keep(data);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.publish(Err(CaptureMiss::Incomplete));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body sent upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// A replayed (buffered) body, or none (`Full(None)`).
    Full(Option<Bytes>),
    /// The downstream body, streamed as is.
    Stream(Incoming),
    /// The downstream body, streamed with a bounded copy.
    Tee(Tee),
}

impl ReqBody {
    pub fn empty() -> ReqBody {
        ReqBody::Full(None)
    }

    pub fn full(b: Bytes) -> ReqBody {
        if b.is_empty() {
            ReqBody::Full(None)
        } else {
            ReqBody::Full(Some(b))
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(i) => Pin::new(i).poll_frame(cx),
            ReqBody::Tee(t) => Pin::new(t).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(i) => i.is_end_stream(),
            ReqBody::Tee(t) => t.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream(i) => i.size_hint(),
            ReqBody::Tee(t) => t.size_hint(),
        }
    }
}

/// A response body sent downstream.
#[derive(Debug)]
pub enum RespBody {
    /// A local reply (or an empty body).
    Full(Option<Bytes>),
    /// The upstream's body.
    Upstream(UpstreamBody),
}

impl RespBody {
    pub fn empty() -> RespBody {
        RespBody::Full(None)
    }

    pub fn full(b: impl Into<Bytes>) -> RespBody {
        let b = b.into();
        if b.is_empty() {
            RespBody::Full(None)
        } else {
            RespBody::Full(Some(b))
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream(u) => Pin::new(u).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Upstream(u) => u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}

/// The route timeout expired while the response body was streaming.
#[derive(Debug)]
pub struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream request timeout while streaming the response body")
    }
}

impl std::error::Error for BodyTimeout {}

/// The upstream's response body on its way downstream, with what happens at its end: the
/// upstream connection goes back to its pool (HTTP/1.1, only after a clean end), the
/// cluster's `upstream_rq_time` is recorded, and for a mirrored request the primary's
/// outcome (size, body hash) goes to the pair comparison.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    finish: Option<Finish>,
    measure: Option<PrimaryMeasure>,
    /// The rest of the route timeout (Envoy's route timeout covers the whole response).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        finish: Finish,
        measure: Option<PrimaryMeasure>,
        deadline: Option<tokio::time::Instant>,
    ) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            finish: Some(finish),
            measure,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        };
        if body.inner.is_end_stream() {
            body.end(true);
        }
        body
    }

    fn end(&mut self, clean: bool) {
        let timed_out = !clean && self.deadline_passed();
        if let Some(f) = self.finish.take() {
            f.complete(clean, timed_out);
        }
        if let Some(m) = self.measure.take() {
            m.finish(clean);
        }
        self.deadline = None;
    }

    fn deadline_passed(&self) -> bool {
        self.deadline
            .as_ref()
            .is_some_and(|d| d.deadline() <= tokio::time::Instant::now())
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(m), Some(d)) = (this.measure.as_mut(), frame.data_ref()) {
                    m.data(d);
                }
                if this.inner.is_end_stream() {
                    this.end(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.end(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        this.end(false);
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
