//! Writers waiting for cursors to pass their seq, woken only by a move
//! that concerns them.
//!
//! Protocol: a writer registers its seq and the targets whose cursors can
//! decide its answer *before* it first looks at them, then looks, and waits
//! to be woken (a wake that comes between its look and its wait is kept, so
//! none is lost). A shipper whose target's cursor moves from `a` to `b`
//! wakes the writers with a seq in `(a, b]` that are interested in that
//! target; anything else that can change an answer (a state change, a
//! failover) wakes every writer.
//!
//! Invariant: a registered writer is woken at least once after every
//! change that can change its answer. Before this, every cursor move of
//! any target woke every waiting writer: at 16 writers and three targets,
//! about ten wake-ups and quorum evaluations per write where three do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The waiting writers; see the module docs.
#[derive(Default)]
pub(crate) struct Waiters {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// By (seq, id): the targets the writer listens to, and its wake-up.
    by_seq: BTreeMap<(u64, u64), (Interest, Arc<Notify>)>,
}

/// Which targets (by index) a writer listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interest(u128);

impl Interest {
    /// Every target.
    pub(crate) const ALL: Interest = Interest(u128::MAX);

    /// Only the target at `idx` (beyond 127 targets: every one).
    pub(crate) fn only(idx: usize) -> Interest {
        if idx < 128 {
            Interest(1 << idx)
        } else {
            Interest::ALL
        }
    }

    fn has(self, idx: usize) -> bool {
        idx >= 128 || self.0 & (1 << idx) != 0
    }
}

/// One writer's place; it leaves when dropped.
pub(crate) struct Waiting {
    waiters: Arc<Waiters>,
    key: (u64, u64),
    notify: Arc<Notify>,
}

impl Waiters {
    /// Registers a writer of `seq`, listening to `interest`.
    pub(crate) fn register(self: &Arc<Self>, seq: u64, interest: Interest) -> Waiting {
        let notify = Arc::new(Notify::new());
        let mut inner = self.lock();
        let key = (seq, inner.next_id);
        inner.next_id += 1;
        inner.by_seq.insert(key, (interest, notify.clone()));
        Waiting {
            waiters: self.clone(),
            key,
            notify,
        }
    }

    /// Target `idx`'s cursor moved from `from` to `to`: wakes the writers
    /// of the seqs it passed that listen to it.
    pub(crate) fn passed(&self, idx: usize, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let inner = self.lock();
        for (interest, notify) in inner
            .by_seq
            .range((from + 1, 0)..=(to, u64::MAX))
            .map(|(_, v)| v)
        {
            if interest.has(idx) {
                notify.notify_one();
            }
        }
    }

    /// Something that can change any answer happened: wakes every writer.
    pub(crate) fn wake_all(&self) {
        for (_, notify) in self.lock().by_seq.values() {
            notify.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Waiting {
    /// Listens to `interest` from now on (the acting primary may change).
    pub(crate) fn listen(&self, interest: Interest) {
        if let Some(entry) = self.waiters.lock().by_seq.get_mut(&self.key) {
            entry.0 = interest;
        }
    }

    /// Waits for a wake-up (one that came since the last wait counts).
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.lock().by_seq.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(w: &Waiting) -> bool {
        tokio::time::timeout(Duration::from_millis(50), w.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_writer_is_woken_by_a_move_past_its_seq_of_a_target_it_listens_to() {
        let ws = Arc::new(Waiters::default());
        let w5 = ws.register(5, Interest::ALL);
        let w9 = ws.register(9, Interest::only(0));
        // Target 1 moves 0 → 5: passes 5, not 9.
        ws.passed(1, 0, 5);
        assert!(woken(&w5).await);
        assert!(!woken(&w9).await, "9 not passed");
        // Target 1 moves 5 → 9: passes 9, but the writer of 9 listens to
        // target 0 only.
        ws.passed(1, 5, 9);
        assert!(!woken(&w9).await, "not its target");
        ws.passed(0, 8, 12);
        assert!(woken(&w9).await);
        // A move that passes nothing new wakes nobody.
        ws.passed(0, 12, 12);
        ws.passed(0, 3, 4);
        assert!(!woken(&w5).await && !woken(&w9).await);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_wake_all_reaches_everyone() {
        let ws = Arc::new(Waiters::default());
        let w = ws.register(3, Interest::only(2));
        // Woken between its look and its wait: the wait returns at once.
        ws.passed(2, 2, 3);
        assert!(woken(&w).await);
        let other = ws.register(100, Interest::only(7));
        ws.wake_all();
        assert!(woken(&w).await && woken(&other).await);
        // Listening to another target from now on.
        w.listen(Interest::only(0));
        ws.passed(2, 0, 10);
        assert!(!woken(&w).await);
        ws.passed(0, 0, 10);
        assert!(woken(&w).await);
    }

    #[tokio::test]
    async fn a_writer_that_leaves_is_forgotten() {
        let ws = Arc::new(Waiters::default());
        drop(ws.register(1, Interest::ALL));
        assert!(ws.lock().by_seq.is_empty());
    }
}
