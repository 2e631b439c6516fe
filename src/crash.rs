//! Crash points for tests: with the `crash-points` feature and
//! `WALSHIP_CRASH_AT=POINT:N`, the process aborts (as a power cut or
//! `kill -9` would stop it) the Nth time it reaches POINT. Points: `append`
//! (records written, not yet durable), `flush` (durable, not yet
//! acknowledged), `cursor` (a cursor about to be persisted), `ship` (an
//! entry applied at a target, cursor not yet advanced). Without the feature
//! this compiles to nothing.

/// Aborts here if `WALSHIP_CRASH_AT` names this point and its count is up.
#[inline]
pub(crate) fn point(name: &'static str) {
    #[cfg(feature = "crash-points")]
    imp::hit(name);
    #[cfg(not(feature = "crash-points"))]
    let _ = name;
}

#[cfg(feature = "crash-points")]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Plan {
        point: String,
        at: u64,
        hits: AtomicU64,
    }

    fn plan() -> Option<&'static Plan> {
        static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
        PLAN.get_or_init(|| {
            let v = std::env::var("WALSHIP_CRASH_AT").ok()?;
            let (point, at) = v.split_once(':')?;
            Some(Plan {
                point: point.to_string(),
                at: at.parse().ok()?,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
    }

    pub(super) fn hit(name: &'static str) {
        if let Some(p) = plan()
            && p.point == name
            && p.hits.fetch_add(1, Ordering::Relaxed) + 1 == p.at
        {
            eprintln!("walship: crash point {name} reached (WALSHIP_CRASH_AT); aborting");
            std::process::abort();
        }
    }
}
