//! Who is acting primary: plain decisions, no I/O.
//!
//! - Failover: when the acting primary is unhealthy (and `enable_failover`
//!   is on), the healthy, active, non-read replica with the lowest
//!   `priority` (ties: the highest cursor) becomes acting primary, but only
//!   once its cursor has reached the acting primary's: every acknowledged
//!   write was applied at the acting primary, so a replica at or past its
//!   cursor holds every acknowledged write (it catches up from the log
//!   meanwhile). No acknowledged write disappears from reads.
//! - Failback: when the configured primary is healthy, active and at or
//!   past the acting primary's cursor, it takes its place back.

use crate::status::{Health, TargetState};

/// What the decision needs to know of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailoverView {
    /// Configured with `is_read_replica`.
    pub read_replica: bool,
    /// Current health.
    pub health: Health,
    /// Current state.
    pub state: TargetState,
    /// Failover order, lower first.
    pub priority: u32,
    /// Applied cursor.
    pub cursor: u64,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing.
    Stay,
    /// Make this target the acting primary (a failover, or a failback when
    /// it is the configured primary, index 0).
    Promote(usize),
    /// The acting primary is unhealthy and this replica will take over once
    /// it has caught up to the acting primary's cursor.
    Waiting(usize),
}

/// Decides who should be acting primary. Index 0 is the configured primary.
pub(crate) fn decide(acting: usize, t: &[FailoverView], enabled: bool) -> Decision {
    let ok = |v: &FailoverView| v.health == Health::Healthy && v.state == TargetState::Active;
    if acting != 0 && ok(&t[0]) && t[0].cursor >= t[acting].cursor {
        return Decision::Promote(0);
    }
    if !enabled || t[acting].health != Health::Unhealthy {
        return Decision::Stay;
    }
    let best = (0..t.len())
        .filter(|&i| i != acting && (i == 0 || !t[i].read_replica) && ok(&t[i]))
        .min_by(|&a, &b| {
            // The configured primary comes back before any replica.
            let rank = |i: usize| (i != 0, t[i].priority, std::cmp::Reverse(t[i].cursor));
            rank(a).cmp(&rank(b))
        });
    match best {
        Some(i) if t[i].cursor >= t[acting].cursor => Decision::Promote(i),
        Some(i) => Decision::Waiting(i),
        None => Decision::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(health: Health, priority: u32, cursor: u64) -> FailoverView {
        FailoverView {
            read_replica: false,
            health,
            state: TargetState::Active,
            priority,
            cursor,
        }
    }

    #[test]
    fn healthy_primary_stays() {
        let t = [v(Health::Healthy, 1, 10), v(Health::Healthy, 1, 10)];
        assert_eq!(decide(0, &t, true), Decision::Stay);
        let t = [v(Health::Degraded, 1, 10), v(Health::Healthy, 1, 10)];
        assert_eq!(decide(0, &t, true), Decision::Stay);
    }

    #[test]
    fn unhealthy_primary_fails_over_to_lowest_priority_then_most_caught_up() {
        let t = [
            v(Health::Unhealthy, 1, 10),
            v(Health::Healthy, 2, 10),
            v(Health::Healthy, 1, 9),
            v(Health::Healthy, 1, 10),
        ];
        assert_eq!(decide(0, &t, true), Decision::Promote(3));
        assert_eq!(decide(0, &t, false), Decision::Stay);
    }

    #[test]
    fn read_replicas_unhealthy_paused_targets_are_never_promoted() {
        let mut read = v(Health::Healthy, 1, 10);
        read.read_replica = true;
        let mut paused = v(Health::Healthy, 1, 10);
        paused.state = TargetState::Paused;
        let t = [
            v(Health::Unhealthy, 1, 10),
            read,
            paused,
            v(Health::Unhealthy, 1, 10),
        ];
        assert_eq!(decide(0, &t, true), Decision::Stay);
    }

    #[test]
    fn a_replica_behind_the_primary_waits_until_caught_up() {
        let t = [v(Health::Unhealthy, 1, 10), v(Health::Healthy, 1, 7)];
        assert_eq!(decide(0, &t, true), Decision::Waiting(1));
        let t = [v(Health::Unhealthy, 1, 10), v(Health::Healthy, 1, 10)];
        assert_eq!(decide(0, &t, true), Decision::Promote(1));
    }

    #[test]
    fn failback_once_the_configured_primary_is_healthy_and_caught_up() {
        let t = [v(Health::Healthy, 1, 8), v(Health::Healthy, 1, 10)];
        assert_eq!(decide(1, &t, true), Decision::Stay);
        let t = [v(Health::Healthy, 1, 10), v(Health::Healthy, 1, 10)];
        assert_eq!(decide(1, &t, true), Decision::Promote(0));
        // Failback happens even with failover disabled afterwards.
        assert_eq!(decide(1, &t, false), Decision::Promote(0));
        // A second failover from the acting replica may go to another one.
        let t = [
            v(Health::Unhealthy, 1, 10),
            v(Health::Unhealthy, 1, 10),
            v(Health::Healthy, 3, 10),
        ];
        assert_eq!(decide(1, &t, true), Decision::Promote(2));
    }
}
