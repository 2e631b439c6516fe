//! Target health: plain decisions, no I/O.
//!
//! - `unhealthy`: `max_retry_attempts` shipping requests failed in a row,
//!   or two health probes in a row;
//! - `degraded`: otherwise, when the age of the oldest unapplied entry is
//!   over `max_replication_lag_ms` (lag is cursor distance, never the
//!   duration of the last request);
//! - `healthy`: otherwise, once a probe or a request has succeeded;
//! - `unknown`: nothing has been heard from the target yet.
//!
//! Round-trip time is a moving average of probe times (for `nearest`).

use crate::status::Health;

/// What health is decided from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HealthInputs {
    /// Health probes failed in a row.
    pub probe_failures: u32,
    /// Shipping requests failed in a row.
    pub ship_failures: u32,
    /// The target's `max_retry_attempts`.
    pub max_failures: u32,
    /// Failed probes in a row that make a target unhealthy.
    pub probe_limit: u32,
    /// Age of the oldest unapplied entry.
    pub lag_ms: u64,
    /// `max_replication_lag_ms`.
    pub max_lag_ms: f64,
    /// A probe or a request has succeeded since start.
    pub heard_from: bool,
}

/// Decides a target's health.
pub(crate) fn decide(i: HealthInputs) -> Health {
    if i.probe_failures >= i.probe_limit.max(1) || i.ship_failures >= i.max_failures.max(1) {
        Health::Unhealthy
    } else if !i.heard_from {
        Health::Unknown
    } else if i.lag_ms as f64 > i.max_lag_ms {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

/// Weight of a new sample in the round-trip average.
const RTT_ALPHA: f64 = 0.3;

/// Moving average of round-trip times in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Rtt(Option<f64>);

impl Rtt {
    /// Adds a sample.
    pub(crate) fn add(&mut self, ms: f64) {
        self.0 = Some(match self.0 {
            None => ms,
            Some(avg) => avg + RTT_ALPHA * (ms - avg),
        });
    }

    /// The average, once there is one.
    pub(crate) fn ms(&self) -> Option<f64> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HealthInputs {
        HealthInputs {
            probe_failures: 0,
            ship_failures: 0,
            max_failures: 3,
            probe_limit: 3,
            lag_ms: 0,
            max_lag_ms: 5000.0,
            heard_from: true,
        }
    }

    #[test]
    fn health_rules() {
        assert_eq!(decide(base()), Health::Healthy);
        assert_eq!(
            decide(HealthInputs {
                heard_from: false,
                ..base()
            }),
            Health::Unknown
        );
        assert_eq!(
            decide(HealthInputs {
                lag_ms: 5001,
                ..base()
            }),
            Health::Degraded
        );
        assert_eq!(
            decide(HealthInputs {
                probe_failures: 2,
                ..base()
            }),
            Health::Healthy
        );
        assert_eq!(
            decide(HealthInputs {
                probe_failures: 3,
                ..base()
            }),
            Health::Unhealthy
        );
        assert_eq!(
            decide(HealthInputs {
                ship_failures: 3,
                lag_ms: 9999,
                ..base()
            }),
            Health::Unhealthy
        );
        assert_eq!(
            decide(HealthInputs {
                ship_failures: 5,
                heard_from: false,
                ..base()
            }),
            Health::Unhealthy
        );
    }

    #[test]
    fn rtt_moves_towards_samples() {
        let mut r = Rtt::default();
        assert_eq!(r.ms(), None);
        r.add(10.0);
        assert_eq!(r.ms(), Some(10.0));
        r.add(20.0);
        assert_eq!(r.ms(), Some(13.0));
    }
}
