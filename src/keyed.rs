//! Locks by key: one async mutex per key in use, made when first asked
//! for.
//!
//! Invariant: two holders of one key's lock never overlap, and holders of
//! different keys never wait for each other. The table keeps only weak
//! references: a lock lives while someone holds or awaits it, and once the
//! table is large the entries nobody holds are dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// A lock of one key.
pub(crate) type KeyLock = Arc<tokio::sync::Mutex<()>>;

/// Above this many entries the table drops those nobody holds.
const PRUNE_AT: usize = 1024;

/// The table; see the module docs.
pub(crate) struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Weak<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> KeyedLocks<K> {
    /// The lock of `k` (the same one for as long as anyone holds it).
    pub(crate) fn lock_of(&self, k: &K) -> KeyLock {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = locks.get(k).and_then(Weak::upgrade) {
            return l;
        }
        if locks.len() >= PRUNE_AT {
            locks.retain(|_, l| l.strong_count() > 0);
        }
        let l = KeyLock::default();
        locks.insert(k.clone(), Arc::downgrade(&l));
        l
    }

    /// Waits for `k`'s lock and holds it until the guard is dropped.
    pub(crate) async fn lock(&self, k: &K) -> OwnedMutexGuard<()> {
        self.lock_of(k).lock_owned().await
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_is_held_by_one_holder_and_other_keys_go_on() {
        let locks = KeyedLocks::<u64>::default();
        let a = locks.lock(&1).await;
        assert!(locks.lock_of(&1).try_lock().is_err(), "1 is held");
        let b = locks.lock_of(&2);
        assert!(b.try_lock().is_ok(), "2 does not wait for 1");
        drop(a);
        assert!(locks.lock_of(&1).try_lock().is_ok(), "1 is free again");
    }

    #[tokio::test]
    async fn a_large_table_drops_the_locks_nobody_holds() {
        let locks = KeyedLocks::<u64>::default();
        let held = locks.lock(&0).await;
        for k in 1..PRUNE_AT as u64 {
            drop(locks.lock(&k).await);
        }
        assert_eq!(locks.len(), PRUNE_AT);
        drop(locks.lock(&(PRUNE_AT as u64)).await);
        assert_eq!(locks.len(), 2, "the held one and the new one");
        assert!(locks.lock_of(&0).try_lock().is_err(), "0 is still held");
        drop(held);
    }
}
