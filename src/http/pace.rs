//! A request body that must keep arriving: after a grace period, one that
//! comes slower than a minimum average rate fails with [`TooSlow`] (answered
//! 408), so a client trickling an upload or a webhook cannot hold a
//! connection and a spool file for ever.
//!
//! Only the time spent waiting for the client counts: while the handler is
//! busy (writing to disk, committing), the clock stops, so a slow disk is
//! never blamed on the client.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request came slower than the configured minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {rate} bytes/s")]
pub struct TooSlow {
    rate: u64,
}

/// The rule a body is held to.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Bytes per second on average; 0 turns the check off.
    pub min_rate: u64,
    /// Waiting time allowed whatever the rate.
    pub grace: Duration,
}

impl Pace {
    /// How long the client may have kept us waiting in total once it has
    /// sent `received` bytes: the grace, or the time those bytes are worth
    /// at the minimum rate.
    fn allowed_wait(&self, received: u64) -> Duration {
        if self.min_rate == 0 {
            return Duration::MAX;
        }
        let nanos = u128::from(received) * 1_000_000_000 / u128::from(self.min_rate);
        let earned = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        earned.max(self.grace)
    }
}

/// `inner`, held to a [`Pace`].
pub struct Paced<B> {
    inner: B,
    pace: Pace,
    received: u64,
    /// Time spent waiting for the client, up to the current wait.
    waited: Duration,
    /// When the current wait began.
    pending_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Paced<B> {
    pub fn new(inner: B, pace: Pace) -> Paced<B> {
        Paced {
            inner,
            pace,
            received: 0,
            waited: Duration::ZERO,
            pending_since: None,
            timer: None,
        }
    }

    /// The end of a wait that began at `since`: `None` if it never ends.
    fn deadline(&self, since: Instant) -> Option<Instant> {
        let left = self
            .pace
            .allowed_wait(self.received)
            .saturating_sub(self.waited);
        since.checked_add(left)
    }

    /// Called when the client kept us waiting: fails the body once it has
    /// been too slow, else arranges to be woken when it would be.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<TooSlow> {
        if self.pace.min_rate == 0 {
            return Poll::Pending;
        }
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        let Some(deadline) = self.deadline(since) else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(TooSlow {
            rate: self.pace.min_rate,
        })
    }

    /// Data came (or the body ended): the wait, if any, is over.
    fn end_wait(&mut self) {
        if let Some(since) = self.pending_since.take() {
            self.waited = self.waited.saturating_add(since.elapsed());
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.end_wait();
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    let len = data.map_or(0, |d| d.len());
                    this.received = this
                        .received
                        .saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.poll_wait(cx) {
                Poll::Ready(too_slow) => Poll::Ready(Some(Err(Box::new(too_slow)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e`, or an error it wraps, is [`TooSlow`]. The chain is walked
/// a bounded number of steps.
pub fn is_too_slow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    for _ in 0..16 {
        let Some(e) = next else { return false };
        if e.is::<TooSlow>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(min_rate: u64) -> Pace {
        Pace {
            min_rate,
            grace: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_allowed_wait_never_overflows() {
        assert_eq!(pace(1024).allowed_wait(0), Duration::from_secs(1));
        assert_eq!(pace(1024).allowed_wait(10 * 1024), Duration::from_secs(10));
        assert_eq!(
            pace(1).allowed_wait(u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(
            pace(u64::MAX).allowed_wait(u64::MAX),
            Duration::from_secs(1)
        );
        assert_eq!(pace(0).allowed_wait(0), Duration::MAX);
    }

    #[test]
    fn the_deadline_moves_with_the_bytes_received_and_the_time_waited() {
        let mut paced = Paced::new((), pace(1024));
        let start = Instant::now();
        assert_eq!(paced.deadline(start), Some(start + Duration::from_secs(1)));
        paced.received = 4096;
        paced.waited = Duration::from_secs(3);
        assert_eq!(paced.deadline(start), Some(start + Duration::from_secs(1)));
        paced.waited = Duration::from_secs(5);
        assert_eq!(paced.deadline(start), Some(start));
        paced.pace.min_rate = 1;
        paced.received = u64::MAX;
        paced.waited = Duration::ZERO;
        // Beyond what an Instant can hold: no deadline, and no panic.
        let _ = paced.deadline(start);
    }

    #[test]
    fn too_slow_is_found_inside_wrapping_errors() {
        let slow: BoxError = Box::new(TooSlow { rate: 1 });
        let wrapped = axum::Error::new(axum::Error::new(slow));
        assert!(is_too_slow(&wrapped));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!is_too_slow(&other));
    }
}
