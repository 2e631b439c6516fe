//! The acting primary: the target every write waits for, reads prefer and
//! resyncs copy from.
//!
//! Invariant: it changes only by [`Acting::promote`] (the manager's
//! failover and failback), and a change the acting primary may not take (a
//! pause, a resync) runs under [`Acting::unless_acting`], under the same
//! lock. So no target is promoted between the check that it is not the
//! acting primary and the state change that relied on it, and no state
//! change lands between a promotion's reading of the targets' states and
//! its store. Reading it (`get`, `is`) takes no lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Which target is the acting primary (by index; the configured primary
/// is 0).
#[derive(Debug, Default)]
pub(crate) struct Acting {
    idx: AtomicUsize,
    change: Mutex<()>,
}

impl Acting {
    /// The acting primary's index.
    pub(crate) fn get(&self) -> usize {
        self.idx.load(Ordering::Acquire)
    }

    /// Whether target `idx` is the acting primary.
    pub(crate) fn is(&self, idx: usize) -> bool {
        self.get() == idx
    }

    /// Runs `change` while target `idx` is not the acting primary and
    /// cannot become it; `refused()` when it is. `change` must not wait on
    /// anything async (it holds a std lock): a state change and its sync.
    pub(crate) fn unless_acting<T>(
        &self,
        idx: usize,
        refused: impl FnOnce() -> Error,
        change: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _held = self.change.lock().unwrap_or_else(|p| p.into_inner());
        if self.is(idx) {
            return Err(refused());
        }
        change()
    }

    /// Promotes the target `decide` names, given the acting primary (none:
    /// no change); `(from, to)` when it changed.
    pub(crate) fn promote(
        &self,
        decide: impl FnOnce(usize) -> Option<usize>,
    ) -> Option<(usize, usize)> {
        let _held = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let from = self.get();
        match decide(from) {
            Some(to) if to != from => {
                self.idx.store(to, Ordering::Release);
                Some((from, to))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn refused() -> Error {
        Error::StateRefused("acting".into())
    }

    #[test]
    fn the_acting_primary_is_refused_and_another_target_changes() {
        let a = Acting::default();
        assert!(matches!(
            a.unless_acting(0, refused, || Ok(())),
            Err(Error::StateRefused(_))
        ));
        assert_eq!(a.unless_acting(1, refused, || Ok(7)).ok(), Some(7));
        assert_eq!(a.promote(Some), None, "no change");
        assert_eq!(a.promote(|_| None), None);
        assert_eq!(a.promote(|_| Some(2)), Some((0, 2)));
        assert!(a.is(2));
        assert!(a.unless_acting(2, refused, || Ok(())).is_err());
        assert!(a.unless_acting(0, refused, || Ok(())).is_ok());
    }

    /// A promotion waits for a change that checked its target was not
    /// acting: it decides on the state that change left.
    #[test]
    fn a_promotion_waits_for_a_change_under_way() {
        let a = Arc::new(Acting::default());
        let inside = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let changer = {
            let (a, inside, done) = (a.clone(), inside.clone(), done.clone());
            std::thread::spawn(move || {
                a.unless_acting(1, refused, || {
                    inside.store(true, Ordering::Release);
                    std::thread::sleep(Duration::from_millis(200));
                    done.store(true, Ordering::Release);
                    Ok(())
                })
            })
        };
        while !inside.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let saw_done = a.promote(|_| Some(1).filter(|_| done.load(Ordering::Acquire)));
        assert_eq!(saw_done, Some((0, 1)), "decided before the change ended");
        assert!(changer.join().expect("changer").is_ok());
    }
}
