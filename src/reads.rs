//! Which target serves a read: plain decisions, no I/O.
//!
//! Freshness rule first: a target is eligible for key K only when it is
//! usable (active, not unhealthy) and its cursor is at or past K's latest
//! seq in the log, so no read returns an older version than the last
//! acknowledged write. Then, by preference:
//!
//! - `primary`: the acting primary;
//! - `secondary`: read replicas first, then other replicas, then the primary;
//! - `nearest`: at random among targets whose round-trip time is within
//!   15 ms of the fastest (MongoDB's `localThresholdMS`);
//! - `any`: at random among all.
//!
//! When the preferred kind has no eligible target, any eligible target
//! serves (the acting primary first); when none is eligible, there is no
//! answer (the caller says which seq is missing).

use crate::config::ReadPreference;

/// Latency window of `nearest`.
pub(crate) const LOCAL_THRESHOLD_MS: f64 = 15.0;

/// What a read decision needs to know of a target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ReadCandidate {
    /// Acting primary.
    pub acting_primary: bool,
    /// Configured with `is_read_replica`.
    pub read_replica: bool,
    /// Usable and caught up to the key's latest seq.
    pub eligible: bool,
    /// Moving average round-trip time, if measured.
    pub rtt_ms: Option<f64>,
}

/// Picks the index of the target to read from; `roll` is a random number
/// used to break ties among equals.
pub(crate) fn pick(pref: ReadPreference, c: &[ReadCandidate], roll: u64) -> Option<usize> {
    let eligible: Vec<usize> = (0..c.len()).filter(|&i| c[i].eligible).collect();
    if eligible.is_empty() {
        return None;
    }
    let random = |set: &[usize]| -> Option<usize> {
        (!set.is_empty()).then(|| set[(roll % set.len() as u64) as usize])
    };
    let primary_first = || {
        eligible
            .iter()
            .copied()
            .find(|&i| c[i].acting_primary)
            .or_else(|| eligible.first().copied())
    };
    match pref {
        ReadPreference::Primary => primary_first(),
        ReadPreference::Secondary => {
            let read: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| c[i].read_replica && !c[i].acting_primary)
                .collect();
            let other: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| !c[i].read_replica && !c[i].acting_primary)
                .collect();
            random(&read)
                .or_else(|| random(&other))
                .or_else(primary_first)
        }
        ReadPreference::Nearest => {
            let rtt = |i: usize| c[i].rtt_ms.unwrap_or(f64::INFINITY);
            let fastest = eligible
                .iter()
                .map(|&i| rtt(i))
                .fold(f64::INFINITY, f64::min);
            if fastest.is_infinite() {
                return random(&eligible);
            }
            let near: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| rtt(i) <= fastest + LOCAL_THRESHOLD_MS)
                .collect();
            random(&near)
        }
        ReadPreference::Any => random(&eligible),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(
        acting_primary: bool,
        read_replica: bool,
        eligible: bool,
        rtt: Option<f64>,
    ) -> ReadCandidate {
        ReadCandidate {
            acting_primary,
            read_replica,
            eligible,
            rtt_ms: rtt,
        }
    }

    #[test]
    fn primary_reads_the_acting_primary_unless_it_is_behind() {
        let cs = [c(true, false, true, None), c(false, false, true, None)];
        for roll in 0..10 {
            assert_eq!(pick(ReadPreference::Primary, &cs, roll), Some(0));
        }
        let cs = [c(true, false, false, None), c(false, false, true, None)];
        assert_eq!(pick(ReadPreference::Primary, &cs, 0), Some(1));
        let cs = [c(true, false, false, None), c(false, false, false, None)];
        assert_eq!(pick(ReadPreference::Any, &cs, 0), None);
    }

    #[test]
    fn secondary_prefers_read_replicas_then_replicas_then_primary() {
        let cs = [
            c(true, false, true, None),
            c(false, false, true, None),
            c(false, true, true, None),
        ];
        for roll in 0..10 {
            assert_eq!(pick(ReadPreference::Secondary, &cs, roll), Some(2));
        }
        let cs = [
            c(true, false, true, None),
            c(false, false, true, None),
            c(false, true, false, None),
        ];
        assert_eq!(pick(ReadPreference::Secondary, &cs, 3), Some(1));
        let cs = [c(true, false, true, None), c(false, false, false, None)];
        assert_eq!(pick(ReadPreference::Secondary, &cs, 3), Some(0));
    }

    #[test]
    fn nearest_stays_within_15ms_of_the_fastest() {
        let cs = [
            c(true, false, true, Some(40.0)),
            c(false, false, true, Some(5.0)),
            c(false, false, true, Some(19.0)),
            c(false, false, false, Some(1.0)),
        ];
        let picked: std::collections::BTreeSet<usize> = (0..50)
            .filter_map(|roll| pick(ReadPreference::Nearest, &cs, roll))
            .collect();
        assert_eq!(picked, [1, 2].into_iter().collect());
    }

    #[test]
    fn any_spreads_over_eligible_targets() {
        let cs = [
            c(true, false, true, None),
            c(false, false, true, None),
            c(false, true, false, None),
        ];
        let picked: std::collections::BTreeSet<usize> = (0..50)
            .filter_map(|roll| pick(ReadPreference::Any, &cs, roll))
            .collect();
        assert_eq!(picked, [0, 1].into_iter().collect());
    }
}
