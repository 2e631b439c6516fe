//! How soon the log tries a failed reopen again.
//!
//! A reopen after a failed write copies sled's files whole
//! (`storage::rebuild_sled`). One that keeps failing after its copy (a
//! device that fails its writes while it shows room, a file sled refuses
//! to open) would copy the whole log again every 500 ms, and again for
//! every group of writes refused meanwhile: a disk kept busy by nothing
//! but failures.
//!
//! Invariant: after a failed try that worked on the disk for `w` (its copy
//! and open of sled's files: `LogStore::reopen_work`), the next one starts
//! no sooner than `max(FLOOR, COST × w)` (at most `CEILING`) after it
//! ended. So failing tries keep the disk busy at most a tenth of the time.
//! A try that did no such work (room still short, which a reopen checks
//! before it waits for sled's lock or copies anything; a lock that did not
//! come) is tried again every `FLOOR` however long it waited, so writes
//! resume soon after room is freed. Writes that arrive before the next
//! try are refused without a try of their own.

use std::time::{Duration, Instant};

/// The soonest a failed reopen is tried again.
pub(crate) const FLOOR: Duration = Duration::from_millis(500);
/// The latest: how long a reopen may wait after its cause is gone.
pub(crate) const CEILING: Duration = Duration::from_secs(60);
/// A failed try that worked `w` is followed by at least `COST × w` of rest.
pub(crate) const COST: u32 = 9;

/// When the next reopen may be tried; owned by the committer.
#[derive(Debug, Default)]
pub(crate) struct ReopenPace {
    next: Option<Instant>,
}

impl ReopenPace {
    /// Whether a reopen may be tried at `now`.
    pub(crate) fn may_try(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// How long until a reopen may be tried (zero when it may now).
    pub(crate) fn wait(&self, now: Instant) -> Duration {
        self.next
            .map_or(Duration::ZERO, |next| next.saturating_duration_since(now))
    }

    /// A try that ended at `ended`, having worked on the disk for `work`,
    /// failed: returns the rest before the next.
    pub(crate) fn failed(&mut self, ended: Instant, work: Duration) -> Duration {
        let rest = work.saturating_mul(COST).clamp(FLOOR, CEILING);
        self.next = Some(ended + rest);
        rest
    }

    /// A try succeeded: the next failure starts afresh.
    pub(crate) fn succeeded(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_failure_is_tried_again_after_the_floor() {
        let mut p = ReopenPace::default();
        let t0 = Instant::now();
        assert!(p.may_try(t0), "nothing failed yet");
        assert_eq!(p.wait(t0), Duration::ZERO);
        let ended = t0 + Duration::from_millis(2);
        assert_eq!(p.failed(ended, Duration::from_millis(2)), FLOOR);
        assert!(!p.may_try(ended));
        assert!(!p.may_try(ended + FLOOR - Duration::from_millis(1)));
        assert!(p.may_try(ended + FLOOR));
        assert_eq!(
            p.wait(ended + Duration::from_millis(100)),
            FLOOR - Duration::from_millis(100)
        );
    }

    #[test]
    fn a_costly_failure_rests_nine_times_its_work_up_to_the_ceiling() {
        let mut p = ReopenPace::default();
        let t0 = Instant::now();
        let ended = t0 + Duration::from_secs(2);
        assert_eq!(
            p.failed(ended, Duration::from_secs(2)),
            Duration::from_secs(18)
        );
        assert!(!p.may_try(ended + Duration::from_secs(17)));
        assert!(p.may_try(ended + Duration::from_secs(18)));
        let later = ended + Duration::from_secs(18);
        let ended = later + Duration::from_secs(20);
        assert_eq!(p.failed(ended, Duration::from_secs(20)), CEILING);
        assert!(!p.may_try(ended + CEILING - Duration::from_millis(1)));
    }

    #[test]
    fn a_failure_before_any_work_rests_the_floor_however_long_it_waited() {
        let mut p = ReopenPace::default();
        let t0 = Instant::now();
        let ended = t0 + Duration::from_secs(3);
        assert_eq!(p.failed(ended, Duration::ZERO), FLOOR);
        assert!(p.may_try(ended + FLOOR));
    }

    #[test]
    fn a_success_lifts_the_rest() {
        let mut p = ReopenPace::default();
        let t0 = Instant::now();
        p.failed(t0 + Duration::from_secs(1), Duration::from_secs(1));
        assert!(!p.may_try(t0 + Duration::from_secs(2)));
        p.succeeded();
        assert!(p.may_try(t0 + Duration::from_secs(2)));
    }
}
