//! The HTTP accept loop: at most a capped number of connections at once
//! (one more is answered a canned 503 and closed, without reading its
//! request), each served by hyper with bounded request heads and the
//! time-outs of [`super::conn`], and a graceful shutdown: stop accepting,
//! let requests in flight finish for the grace period, then drop them.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{Activity, Expired, Io, Svc, Timeouts};
use super::error::ApiError;
use super::stream::Stream;

/// Largest request head (request line and headers); larger gets 431.
pub const MAX_HEAD: usize = 32 * 1024;

/// hyper's read buffer per connection (it must hold a whole head). Bounds
/// what a connection costs before its request is understood.
const READ_BUFFER: usize = 64 * 1024;

/// Connections beyond the cap that are still given an answer (503), and
/// closing connections still drained so the client reads the answer:
/// bounded apart from the cap, past it a socket is just closed.
pub const SPARE_SLOTS: usize = 64;

/// After an answer that ends a connection, how much of what the client
/// still sends is read and dropped (and for how long), so that the close
/// does not reset the connection before the client has read the answer.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// How long a canned answer may take to write.
const CANNED_WRITE_TIME: Duration = Duration::from_secs(2);

/// Everything the accept loop shares with its connections.
pub struct Server {
    pub router: Router,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    /// HTTPS: each connection's TLS handshake, within the head time-out.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Server {
    pub async fn run(self, listener: TcpListener, cancel: CancellationToken, grace: Duration) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let spare = Arc::new(Semaphore::new(SPARE_SLOTS));
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let shared = Arc::new(self);
        let mut warned_full: Option<Instant> = None;
        let mut warned_accept: Option<Instant> = None;
        loop {
            let (stream, peer) = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_failed(&e, &mut warned_accept).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                if warned_full.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = shared.max_connections,
                        "HTTP connection limit reached: answering 503 to new connections"
                    );
                    warned_full = Some(Instant::now());
                }
                // A TLS client cannot read a plaintext 503: just close.
                if let (None, Ok(spare)) = (&shared.tls, Arc::clone(&spare).try_acquire_owned()) {
                    tracker.spawn(refuse(Stream::Plain(stream), spare, hard_stop.clone()));
                }
                continue;
            };
            let connection = Connection {
                server: Arc::clone(&shared),
                spare: Arc::clone(&spare),
                cancel: cancel.clone(),
                hard_stop: hard_stop.clone(),
            };
            tracker.spawn(connection.run(stream, peer, slot));
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("HTTP requests still running after the grace period; dropping them");
            hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
        }
    }
}

/// A failed `accept`: out of descriptors or memory is waited out (the
/// pending connections stay in the backlog); anything else concerns one
/// connection only. Warned about once a minute at most.
async fn accept_failed(e: &std::io::Error, warned: &mut Option<Instant>) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(error = %e, "cannot accept HTTP connections for now");
                *warned = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        _ => tracing::debug!(error = %e, "HTTP accept failed"),
    }
}

struct Connection {
    server: Arc<Server>,
    spare: Arc<Semaphore>,
    cancel: CancellationToken,
    hard_stop: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let timeouts = self.server.timeouts;
        let activity = Activity::new(Instant::now());
        let stream = match &self.server.tls {
            None => Stream::Plain(stream),
            // The handshake counts against the head time-out: a client
            // that stalls it holds its slot no longer than a slow head.
            Some(acceptor) => {
                let handshake = tokio::select! {
                    r = tokio::time::timeout(timeouts.header, acceptor.accept(stream)) => r,
                    () = self.hard_stop.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not done within the head time-out");
                        return;
                    }
                }
            }
        };
        let io = Io::new(stream, slot, activity.clone(), timeouts);
        let service = Svc {
            router: self.server.router.clone(),
            peer,
            activity,
            timeouts,
        };
        // hyper's own head time-out is only a backstop (ours fire first):
        // configuring one makes hyper poll for the next head as soon as a
        // response is done, which is when ours starts counting.
        let backstop = timeouts
            .header
            .saturating_add(timeouts.idle)
            .saturating_add(Duration::from_secs(1));
        let mut conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(backstop)
            .max_buf_size(READ_BUFFER)
            .max_header_size(MAX_HEAD)
            .serve_connection(TokioIo::new(io), service);
        let mut closing = false;
        let ended = loop {
            tokio::select! {
                ended = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break ended,
                () = self.cancel.cancelled(), if !closing => {
                    closing = true;
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                }
                () = self.hard_stop.cancelled() => return,
            }
        };
        if let Err(e) = &ended {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
        let io = conn.into_parts().io.into_inner();
        let canned = match io.expired() {
            Some(Expired::Head { started: true }) if io.can_write_canned() => {
                tracing::debug!(%peer, "request head not received in time: 408");
                Some(ApiError::RequestTimeout.raw_http1())
            }
            Some(why) => {
                // Nothing to answer, nothing to drain: just close.
                let what = match why {
                    Expired::Idle => "closing an idle keep-alive HTTP connection",
                    Expired::Head { started: false } => {
                        "closing an HTTP connection that sent no request"
                    }
                    Expired::Head { started: true } => {
                        "closing an HTTP connection whose request head came too slowly"
                    }
                };
                tracing::debug!(%peer, "{what}");
                return;
            }
            None => None,
        };
        if !io.can_write_canned() {
            // The client reads nothing: there is nobody to linger for.
            tracing::debug!(%peer, "closing an HTTP connection whose client stopped reading");
            return;
        }
        let stream = io.into_stream();
        close(stream, canned.as_deref(), &self.spare, &self.hard_stop).await;
    }
}

/// The connection cap is reached: a canned 503, then close.
async fn refuse(stream: Stream, spare: OwnedSemaphorePermit, hard_stop: CancellationToken) {
    let reply = ApiError::TooManyConnections.raw_http1();
    tokio::select! {
        () = hard_stop.cancelled() => {}
        () = finish(stream, Some(&reply)) => {}
    }
    drop(spare);
}

/// Writes `reply` if any, then closes the way [`finish`] does when a spare
/// slot allows; otherwise at once.
async fn close(
    stream: Stream,
    reply: Option<&[u8]>,
    spare: &Arc<Semaphore>,
    hard_stop: &CancellationToken,
) {
    let Ok(_slot) = Arc::clone(spare).try_acquire_owned() else {
        return;
    };
    tokio::select! {
        () = hard_stop.cancelled() => {}
        () = finish(stream, reply) => {}
    }
}

/// Writes `reply`, shuts the sending side, and reads (and drops) what the
/// client still sends, for a bounded time and amount: closing a socket
/// with unread data resets the connection, and the client may lose the
/// answer.
async fn finish(mut stream: Stream, reply: Option<&[u8]>) {
    let deadline = Instant::now() + LINGER_TIME;
    if let Some(reply) = reply {
        let wrote = tokio::time::timeout(CANNED_WRITE_TIME, stream.write_all(reply)).await;
        if !matches!(wrote, Ok(Ok(()))) {
            return;
        }
    }
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 8192];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}
