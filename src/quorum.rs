//! Which cursors acknowledge a write: plain decisions, no I/O.
//!
//! SPEC guarantee 2: a write at `seq` is acknowledged when the acting
//! primary's cursor is at or past `seq` and, per mode,
//!
//! - `async`: no replica;
//! - `semi_sync`: `min_sync_replicas` replicas;
//! - `sync`: every replica that is not paused or removed.
//!
//! "Required" targets are the acting primary plus the replicas the mode
//! needs; a timeout reports how many of them acknowledged (guarantee 3).
//!
//! Guarantee 3, deadlines: each target a write waits for has its own
//! deadline (its `sync_timeout_seconds` from the append; a target already
//! `unhealthy` when the write starts is past it). A target is *live* while
//! it is inside its deadline. The write has *failed* as soon as the
//! required count can no longer be reached: the acting primary is neither
//! acked nor live, or acked plus live replicas are fewer than needed.

use crate::config::Mode;

/// What the decision needs to know of one target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetView<'a> {
    /// Target name.
    pub name: &'a str,
    /// Whether it is the acting primary.
    pub acting_primary: bool,
    /// Whether `sync` waits for it (not paused, not removed).
    pub waited_for: bool,
    /// Its applied cursor.
    pub cursor: u64,
    /// Still inside its deadline for this write.
    pub live: bool,
}

/// The outcome for one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The write is acknowledged.
    pub done: bool,
    /// Required targets that acknowledged.
    pub acked: usize,
    /// Targets required by the mode (the acting primary included).
    pub required: usize,
    /// Every target whose cursor is at or past the seq.
    pub acked_by: Vec<String>,
    /// The required count can no longer be reached before the deadlines.
    pub failed: bool,
}

/// Decides whether the write at `seq` is acknowledged under `mode`.
pub(crate) fn evaluate(
    mode: Mode,
    min_sync_replicas: usize,
    seq: u64,
    views: &[TargetView<'_>],
) -> Verdict {
    let primary_acked = views.iter().any(|v| v.acting_primary && v.cursor >= seq);
    let primary_live = views.iter().any(|v| v.acting_primary && v.live);
    let replicas = views.iter().filter(|v| !v.acting_primary);
    let counted = |v: &&TargetView<'_>| mode != Mode::Sync || v.waited_for;
    let needed = match mode {
        Mode::Async => 0,
        Mode::SemiSync => min_sync_replicas,
        Mode::Sync => replicas.clone().filter(|v| v.waited_for).count(),
    };
    let replicas_acked = replicas
        .clone()
        .filter(counted)
        .filter(|v| v.cursor >= seq)
        .count();
    let replicas_live = replicas
        .filter(counted)
        .filter(|v| v.cursor < seq && v.live)
        .count();
    Verdict {
        done: primary_acked && replicas_acked >= needed,
        acked: usize::from(primary_acked) + replicas_acked.min(needed),
        required: 1 + needed,
        acked_by: views
            .iter()
            .filter(|v| v.cursor >= seq)
            .map(|v| v.name.to_string())
            .collect(),
        failed: (!primary_acked && !primary_live) || replicas_acked + replicas_live < needed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, primary: bool, waited_for: bool, cursor: u64) -> TargetView<'_> {
        TargetView {
            name,
            acting_primary: primary,
            waited_for,
            cursor,
            live: true,
        }
    }

    fn dead(mut t: TargetView<'_>) -> TargetView<'_> {
        t.live = false;
        t
    }

    #[test]
    fn a_write_fails_once_acked_plus_live_targets_are_too_few() {
        // sync: one replica past its deadline and not acked is enough.
        let views = [
            v("p", true, true, 5),
            v("r1", false, true, 5),
            dead(v("r2", false, true, 4)),
        ];
        let out = evaluate(Mode::Sync, 1, 5, &views);
        assert!(!out.done && out.failed);
        assert_eq!((out.acked, out.required), (2, 3));
        // ... but not when it acked in time, nor while it is still live.
        let views = [
            v("p", true, true, 5),
            v("r1", false, true, 5),
            dead(v("r2", false, true, 5)),
        ];
        assert!(evaluate(Mode::Sync, 1, 5, &views).done);
        let views = [
            v("p", true, true, 5),
            v("r1", false, true, 5),
            v("r2", false, true, 4),
        ];
        let out = evaluate(Mode::Sync, 1, 5, &views);
        assert!(!out.done && !out.failed);
        // A paused replica is not waited for in sync, whatever its deadline.
        let views = [
            v("p", true, true, 5),
            v("r1", false, true, 5),
            dead(v("r2", false, false, 0)),
        ];
        assert!(evaluate(Mode::Sync, 1, 5, &views).done);
        // semi_sync 1 of 2: one dead replica leaves the other to try.
        let views = [
            v("p", true, true, 5),
            dead(v("r1", false, true, 0)),
            v("r2", false, true, 0),
        ];
        let out = evaluate(Mode::SemiSync, 1, 5, &views);
        assert!(!out.done && !out.failed);
        let views = [
            v("p", true, true, 5),
            dead(v("r1", false, true, 0)),
            dead(v("r2", false, true, 0)),
        ];
        assert!(evaluate(Mode::SemiSync, 1, 5, &views).failed);
        // The acting primary past its deadline fails every mode.
        let views = [dead(v("p", true, true, 4)), v("r1", false, true, 5)];
        for mode in [Mode::Async, Mode::SemiSync, Mode::Sync] {
            assert!(evaluate(mode, 1, 5, &views).failed, "{mode:?}");
        }
    }

    #[test]
    fn async_needs_only_the_primary() {
        let views = [
            v("p", true, true, 5),
            v("r1", false, true, 0),
            v("r2", false, true, 0),
        ];
        let out = evaluate(Mode::Async, 1, 5, &views);
        assert!(out.done);
        assert_eq!((out.acked, out.required), (1, 1));
        assert!(!evaluate(Mode::Async, 1, 6, &views).done);
    }

    #[test]
    fn semi_sync_needs_exactly_min_replicas() {
        let views = [
            v("p", true, true, 9),
            v("r1", false, true, 9),
            v("r2", false, true, 3),
            v("r3", false, true, 2),
        ];
        assert!(evaluate(Mode::SemiSync, 1, 9, &views).done);
        let two = evaluate(Mode::SemiSync, 2, 9, &views);
        assert!(!two.done);
        assert_eq!((two.acked, two.required), (2, 3));
        assert_eq!(two.acked_by, vec!["p", "r1"]);
    }

    #[test]
    fn sync_skips_paused_replicas_and_needs_the_rest() {
        let views = [
            v("p", true, true, 4),
            v("r1", false, true, 4),
            v("r2", false, false, 0),
        ];
        assert!(evaluate(Mode::Sync, 1, 4, &views).done);
        let views = [
            v("p", true, true, 4),
            v("r1", false, true, 3),
            v("r2", false, false, 0),
        ];
        let out = evaluate(Mode::Sync, 1, 4, &views);
        assert!(!out.done);
        assert_eq!((out.acked, out.required), (1, 2));
    }

    #[test]
    fn no_mode_acks_without_the_primary() {
        let views = [v("p", true, true, 0), v("r1", false, true, 7)];
        for mode in [Mode::Async, Mode::SemiSync, Mode::Sync] {
            let out = evaluate(mode, 1, 7, &views);
            assert!(!out.done, "{mode:?}");
            assert_eq!(out.acked_by, vec!["r1"]);
        }
    }
}
