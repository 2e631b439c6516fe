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

use crate::config::Mode;

/// What the decision needs to know of one target.
#[derive(Debug, Clone, Copy)]
pub struct TargetView<'a> {
    /// Target name.
    pub name: &'a str,
    /// Whether it is the acting primary.
    pub acting_primary: bool,
    /// Whether `sync` waits for it (not paused, not removed).
    pub waited_for: bool,
    /// Its applied cursor.
    pub cursor: u64,
}

/// The outcome for one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The write is acknowledged.
    pub done: bool,
    /// Required targets that acknowledged.
    pub acked: usize,
    /// Targets required by the mode (the acting primary included).
    pub required: usize,
    /// Every target whose cursor is at or past the seq.
    pub acked_by: Vec<String>,
}

/// Decides whether the write at `seq` is acknowledged under `mode`.
pub fn evaluate(
    mode: Mode,
    min_sync_replicas: usize,
    seq: u64,
    views: &[TargetView<'_>],
) -> Verdict {
    let primary_acked = views.iter().any(|v| v.acting_primary && v.cursor >= seq);
    let replicas = views.iter().filter(|v| !v.acting_primary);
    let needed = match mode {
        Mode::Async => 0,
        Mode::SemiSync => min_sync_replicas,
        Mode::Sync => replicas.clone().filter(|v| v.waited_for).count(),
    };
    let replicas_acked = match mode {
        Mode::Sync => replicas.filter(|v| v.waited_for && v.cursor >= seq).count(),
        _ => replicas.filter(|v| v.cursor >= seq).count(),
    };
    Verdict {
        done: primary_acked && replicas_acked >= needed,
        acked: usize::from(primary_acked) + replicas_acked.min(needed),
        required: 1 + needed,
        acked_by: views
            .iter()
            .filter(|v| v.cursor >= seq)
            .map(|v| v.name.to_string())
            .collect(),
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
