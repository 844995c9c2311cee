//! Admission to the backlog: an instance's bytes are counted before it is
//! taken, so the backlog's bounds hold whatever arrives at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backlog, Error, Result, State};

/// Bytes counted in the backlog for an instance not yet enqueued; dropping
/// it gives them back.
#[must_use = "the bytes count in the backlog until this is enqueued or dropped"]
pub struct Admitted {
    backlog: Arc<Backlog>,
    len: u64,
}

impl Admitted {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stops counting the reservation (under the caller's lock of `state`).
    pub(super) fn consume(self, state: &mut State) {
        state.reserved = state.reserved.saturating_sub(self.len);
        std::mem::forget(self);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.backlog.lock();
        state.reserved = state.reserved.saturating_sub(self.len);
        self.backlog.publish(&state);
        drop(state);
        self.backlog.wake_admitters();
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Admitted({} bytes)", self.len)
    }
}

/// The longest `admit` waits, whatever it is asked (a deadline computed
/// from a huge patience would overflow the clock).
const MAX_PATIENCE: Duration = Duration::from_secs(24 * 3600);

impl Backlog {
    /// Counts `len` bytes in the backlog for an instance about to be
    /// taken: at once while the backlog is at most `wait`, after waiting
    /// (at most `patience`) for uploads while it is above; refused at once
    /// when it would pass `max`. Dropping the future reserves nothing.
    pub async fn admit(self: &Arc<Self>, len: u64, patience: Duration) -> Result<Admitted> {
        let patience = patience.min(MAX_PATIENCE);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check, so a release in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(admitted) = self.try_admit(&mut self.lock(), len)? {
                return Ok(admitted);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // One last look: the deadline and a release may coincide.
                return self
                    .try_admit(&mut self.lock(), len)?
                    .ok_or(Error::Busy { waited: patience });
            }
        }
    }

    /// Counts `len` bytes whatever the bounds: for what was acknowledged
    /// before a restart (the journal's replay, the pending copies found at
    /// start), which must be queued again however large the backlog is.
    pub fn admit_replayed(self: &Arc<Self>, len: u64) -> Admitted {
        let mut state = self.lock();
        state.reserved = state.reserved.saturating_add(len);
        self.publish(&state);
        Admitted {
            backlog: Arc::clone(self),
            len,
        }
    }

    /// [`Backlog::admit`] for a blocking thread.
    pub fn admit_blocking(self: &Arc<Self>, len: u64, patience: Duration) -> Result<Admitted> {
        let patience = patience.min(MAX_PATIENCE);
        let deadline = Instant::now() + patience;
        let mut state = self.lock();
        loop {
            if let Some(admitted) = self.try_admit(&mut state, len)? {
                return Ok(admitted);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Busy { waited: patience });
            }
            state = self
                .freed_sync
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// `Ok(None)`: wait.
    fn try_admit(self: &Arc<Self>, state: &mut State, len: u64) -> Result<Option<Admitted>> {
        let backlog = state.bytes();
        let max = self.settings.max;
        if backlog.checked_add(len).is_none_or(|total| total > max) {
            return Err(Error::Full { backlog, len, max });
        }
        if backlog > self.settings.wait {
            return Ok(None);
        }
        state.reserved = state.reserved.saturating_add(len);
        self.publish(state);
        Ok(Some(Admitted {
            backlog: Arc::clone(self),
            len,
        }))
    }
}
