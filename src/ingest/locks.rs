//! One ingest at a time per object identity (a SOP Instance UID, a media
//! file): two associations sending the same instance at once are stored,
//! indexed and cleaned up after one another, never interleaved. Interleaved,
//! one's clean-up of a "moved" instance could delete the object the other
//! just stored, or the index could describe one upload while the store kept
//! the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Entries at which unreferenced ones are swept.
const SWEEP_AT: usize = 1024;

/// Per-key locks; a key's entry exists only while someone holds or awaits it.
#[derive(Debug, Default)]
pub struct KeyLocks {
    held: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds a key until dropped.
#[derive(Debug)]
pub struct KeyGuard {
    locks: Arc<KeyLocks>,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    fn entry(&self, key: &str) -> Arc<AsyncMutex<()>> {
        let mut held = self.held.lock().expect("key locks");
        // A waiter cancelled before it got its key leaves an entry nobody
        // references; sweep those now and then.
        if held.len() >= SWEEP_AT {
            held.retain(|_, e| Arc::strong_count(e) > 1);
        }
        Arc::clone(held.entry(key.to_owned()).or_default())
    }

    /// Waits for `key`.
    pub async fn lock(self: &Arc<Self>, key: &str) -> KeyGuard {
        let guard = self.entry(key).lock_owned().await;
        self.guard(key, guard)
    }

    /// Waits for `key`, blocking the thread (not for runtime workers).
    pub fn lock_blocking(self: &Arc<Self>, key: &str) -> KeyGuard {
        let guard = self.entry(key).blocking_lock_owned();
        self.guard(key, guard)
    }

    fn guard(self: &Arc<Self>, key: &str, guard: OwnedMutexGuard<()>) -> KeyGuard {
        KeyGuard {
            locks: Arc::clone(self),
            key: key.to_owned(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Under the map's lock nobody can pick the entry up meanwhile: if the
        // map's is the only reference left, nobody holds or awaits the key.
        let mut held = self.locks.held.lock().expect("key locks");
        if held
            .get(&self.key)
            .is_some_and(|e| Arc::strong_count(e) == 1)
        {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_held_by_one_at_a_time_and_forgotten_after() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("1.2.3").await;
        let other = locks.lock("1.2.4").await;
        let waiting = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { locks.lock("1.2.3").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap();
        drop((second, other));
        assert!(locks.held.lock().unwrap().is_empty());
    }
}
