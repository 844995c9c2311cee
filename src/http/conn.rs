//! One HTTP/1 connection on hyper, with the time-outs hyper lacks or
//! merges: a request head must arrive within `http_header_timeout` (408 if
//! it started, a silent close if nothing came), an idle keep-alive
//! connection is closed after `http_idle_timeout` (and so is one whose
//! client stops reading its responses for as long), and request bodies
//! are held to a minimum rate ([`super::pace`]).
//!
//! The socket wrapper ([`Io`]) enforces the head and idle deadlines, since
//! hyper polls its reads whenever it waits for a request; the service
//! ([`Svc`]) tells it when a request starts and when its response is done,
//! through the shared [`Activity`].
//!
//! A head counts from the first byte read after the previous response (or
//! from the accept). Bytes of the next head that arrive with the previous
//! request (pipelined) are read by hyper before that point, so such a head
//! is held to the idle time-out instead: bounded as well, only longer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use super::stream::Stream;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::FutureExt;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::error::ApiError;
use super::pace::{Pace, Paced};

/// The time-outs of every connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub body: Pace,
}

/// What a connection is doing, as far as its deadlines are concerned.
#[derive(Debug)]
struct State {
    /// Requests whose response is not finished (one at a time in HTTP/1).
    active: u32,
    /// When the head of the next request started to count: the accept,
    /// then the first byte after a response.
    head_started: Option<Instant>,
    /// Whether any byte of that head arrived.
    head_bytes: bool,
    /// When the last response finished.
    idle_since: Instant,
}

/// Why the socket wrapper gave up reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head did not arrive in time; `started` if part of it did.
    Head { started: bool },
    /// Nothing came on a keep-alive connection.
    Idle,
}

#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<State>>);

impl Activity {
    pub fn new(accepted: Instant) -> Activity {
        Activity(Arc::new(Mutex::new(State {
            active: 0,
            head_started: Some(accepted),
            head_bytes: false,
            idle_since: accepted,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; survive a poisoned lock anyway.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deadline in force while no request is active, and what it is.
    fn deadline(&self, t: &Timeouts) -> Option<(Instant, Expired)> {
        let s = self.lock();
        if s.active > 0 {
            return None;
        }
        match s.head_started {
            Some(at) => Some((
                at.checked_add(t.header)?,
                Expired::Head {
                    started: s.head_bytes,
                },
            )),
            None => Some((s.idle_since.checked_add(t.idle)?, Expired::Idle)),
        }
    }

    /// Bytes were read: between requests, they start the next head.
    fn saw_bytes(&self) {
        let mut s = self.lock();
        if s.active == 0 {
            s.head_started.get_or_insert_with(Instant::now);
            s.head_bytes = true;
        }
    }

    fn begin_request(&self) -> RequestGuard {
        let mut s = self.lock();
        s.active = s.active.saturating_add(1);
        s.head_started = None;
        s.head_bytes = false;
        RequestGuard(self.clone())
    }
}

/// A request in progress; dropped when its response is finished (or
/// abandoned).
#[derive(Debug)]
struct RequestGuard(Activity);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.active = s.active.saturating_sub(1);
        s.idle_since = Instant::now();
    }
}

/// The connection's socket, holding its slot under the connection cap.
pub struct Io {
    /// Declared before the stream: released before the socket closes, so a
    /// client that sees the close can count on the slot being free.
    permit: Option<OwnedSemaphorePermit>,
    stream: Stream,
    activity: Activity,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    expired: Option<Expired>,
    /// Since when writes have not progressed (the client is not reading),
    /// and the timer that ends the wait.
    write_stalled: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

impl Io {
    pub fn new(
        stream: Stream,
        permit: OwnedSemaphorePermit,
        activity: Activity,
        timeouts: Timeouts,
    ) -> Io {
        Io {
            permit: Some(permit),
            stream,
            activity,
            timeouts,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            expired: None,
            write_stalled: None,
            write_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Why reading was given up, if it was.
    pub fn expired(&self) -> Option<Expired> {
        self.expired
    }

    /// Whether a canned response may be written now: nothing of an earlier
    /// response is stuck half-written.
    pub fn can_write_canned(&self) -> bool {
        self.write_stalled.is_none()
    }

    /// Frees the connection's slot and hands back the socket.
    pub fn into_stream(mut self) -> Stream {
        self.permit.take();
        self.stream
    }

    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        let Some((deadline, why)) = self.activity.deadline(&self.timeouts) else {
            return Poll::Pending;
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(why),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.saw_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(why) => {
                    this.expired = Some(why);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request in time",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Io {
    /// Notes whether a write progressed. One that has not for the idle
    /// time-out fails: a client that reads nothing (say, after pipelining
    /// requests) is as idle as one that sends nothing, and must not keep
    /// its connection for ever.
    fn write_progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_stalled = None;
            return r;
        }
        let since = *self.write_stalled.get_or_insert_with(Instant::now);
        let Some(deadline) = since.checked_add(self.timeouts.idle) else {
            return Poll::Pending;
        };
        if self.write_timer.deadline() != deadline {
            self.write_timer.as_mut().reset(deadline);
        }
        match self.write_timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client reads nothing",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.write_progress(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.write_progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// A no-op on a TCP stream (and TLS writes go out as they are made):
    /// says nothing about the client reading.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router as a hyper service for one connection: adds the peer's
/// address (`ConnectInfo`), paces the request body, tracks the request in
/// [`Activity`], and turns a handler panic into a 500.
#[derive(Clone)]
pub struct Svc {
    pub router: Router,
    pub peer: SocketAddr,
    pub activity: Activity,
    pub timeouts: Timeouts,
}

type SvcFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = SvcFuture;

    fn call(&self, request: Request<Incoming>) -> SvcFuture {
        let guard = self.activity.begin_request();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let body = Body::new(Paced::new(body, self.timeouts.body));
        let request = Request::from_parts(parts, body);
        let router = self.router.clone();
        Box::pin(async move {
            let response = match AssertUnwindSafe(router.oneshot(request))
                .catch_unwind()
                .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::error!("a request handler panicked");
                    ApiError::internal(std::io::Error::other("handler panicked")).into_response()
                }
            };
            Ok(response.map(|body| Tracked {
                body,
                guard: Some(guard),
            }))
        })
    }
}

/// A response body that ends its request when it is finished or dropped.
pub struct Tracked {
    body: Body,
    guard: Option<RequestGuard>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
