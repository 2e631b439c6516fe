//! The states of a target and the events that move it, in one place.
//!
//! ```text
//!             pause                      resync started
//!   Active ───────────▶ Paused ─────────────────────────┐
//!    ▲  │ ◀─────────── resume                             ▼
//!    │  │ ship failed          resync started         Syncing ── resync done ──▶ Active
//!    │  ▼                 ─────────────────────────▶    ▲
//!   Failed ── resume / replay ──▶ Active                 │
//!      └──────────────────────── resync started ─────────┘
//! ```
//!
//! - `Syncing` is left only by its own hand-over (`ResyncDone`): a pause or
//!   resume during a resync is refused, so the hand-over never races them.
//! - `ShipFailed` fails only a shipping (`Active`) target; a target paused
//!   meanwhile stays paused (its error is still recorded).
//! - A no longer configured target (`Removed`) takes no event.
//! - Pausing or resuming a target already in that state changes nothing
//!   and is not an error.
//!
//! `on` is pure: the state an event leads to and the commands that carry
//! it out, in the order they run. `Replicator::change_state` runs them
//! (the record written and synced before anything is published, so a
//! restart never reads back less than was answered), the owner task starts
//! the resync a `StartResync` asks for, and `TargetHandle::transition`
//! applies the state atomically to the published one.

use crate::error::{Error, Result};
use crate::status::TargetState;

/// What happens to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// `walship pause`.
    Pause,
    /// `walship resume`.
    Resume,
    /// A resync begins (by hand, or the log over `max_log_bytes`).
    ResyncStarted,
    /// A resync hands over to the cursor.
    ResyncDone,
    /// The target rejects an entry for good, or the log is corrupt at it.
    ShipFailed,
    /// `walship replay --execute` moved the cursor back.
    Replayed,
}

/// What carries out an event, in the order the commands are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Write the target's record (its kept state, what the event moved:
    /// cursor, replay intent) and sync it.
    PersistRecord,
    /// Publish the new state and what the event moved (cursor, hand-over
    /// point, progress).
    Publish,
    /// Start copying from the acting primary (the owner's first attempt).
    StartResync,
    /// Wake what waits on a target's progress: the shippers, and writers
    /// waiting for their mode's acknowledgements.
    Notify,
}

/// An event taken: the state it leads to, and the commands, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) to: TargetState,
    pub(crate) commands: &'static [Command],
}

impl Step {
    /// Whether running this step starts a resync.
    pub(crate) fn starts_resync(&self) -> bool {
        self.commands.contains(&Command::StartResync)
    }
}

/// What `event` does in `state`, or why it is refused.
pub(crate) fn on(name: &str, state: TargetState, event: Event) -> Result<Step> {
    use Command as C;
    let to = next(name, state, event)?;
    let commands: &'static [Command] = match (state, event) {
        // Already copying: the resync under way goes on.
        (TargetState::Syncing, Event::ResyncStarted) => &[],
        (_, Event::ResyncStarted) => &[C::PersistRecord, C::Publish, C::StartResync, C::Notify],
        // A failure is not kept (a restart ships again and meets it again,
        // or not): the error and the state are published only.
        (_, Event::ShipFailed) => &[C::Publish],
        // Written even when the state stays: what is stored may be behind
        // (a change whose sync failed).
        (_, Event::Pause | Event::Resume | Event::ResyncDone | Event::Replayed) => {
            &[C::PersistRecord, C::Publish, C::Notify]
        }
    };
    Ok(Step { to, commands })
}

/// The state after `event`, or why the event is refused in `state`.
pub(crate) fn next(name: &str, state: TargetState, event: Event) -> Result<TargetState> {
    use Event as E;
    use TargetState as S;
    let refused = |why: String| Err(Error::StateRefused(why));
    match (state, event) {
        (S::Removed, _) => refused(format!(
            "{name} is no longer in the config; add it back to act on it"
        )),
        (S::Syncing, E::Pause | E::Resume) => refused(format!(
            "{name} is being resynced; it ships from the log by itself when the resync is done \
             (pause or resume it after that)"
        )),
        (S::Syncing, E::ResyncStarted) => Ok(S::Syncing),
        (S::Syncing, E::ResyncDone) => Ok(S::Active),
        (S::Syncing, E::ShipFailed) => Ok(S::Syncing),
        (S::Syncing, E::Replayed) => refused(format!(
            "{name} is being resynced; replay it after the resync"
        )),
        (_, E::ResyncDone) => refused(format!(
            "{name} is not being resynced ({state:?}); nothing to hand over"
        )),
        (_, E::Pause) => Ok(S::Paused),
        (_, E::Resume) => Ok(S::Active),
        (_, E::ResyncStarted) => Ok(S::Syncing),
        (S::Active, E::ShipFailed) => Ok(S::Failed),
        (other, E::ShipFailed) => Ok(other),
        (S::Failed, E::Replayed) => Ok(S::Active),
        (other, E::Replayed) => Ok(other),
    }
}

/// The state a restart reads back of `state` (in the target's record), or
/// `None` when it is not kept (the record keeps the state before): a
/// failed target ships again after a restart and meets its fault again (or
/// not), and a removed one is not opened.
pub(crate) fn persisted(state: TargetState) -> Option<TargetState> {
    match state {
        TargetState::Active | TargetState::Paused | TargetState::Syncing => Some(state),
        TargetState::Failed | TargetState::Removed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use TargetState as S;

    const STATES: [S; 5] = [S::Active, S::Paused, S::Syncing, S::Failed, S::Removed];
    const EVENTS: [E; 6] = [
        E::Pause,
        E::Resume,
        E::ResyncStarted,
        E::ResyncDone,
        E::ShipFailed,
        E::Replayed,
    ];

    /// Every (state, event) pair, written out: `None` is refused.
    fn table(s: S, e: E) -> Option<S> {
        Some(match (s, e) {
            (S::Active, E::Pause) => S::Paused,
            (S::Active, E::Resume) => S::Active,
            (S::Active, E::ResyncStarted) => S::Syncing,
            (S::Active, E::ResyncDone) => return None,
            (S::Active, E::ShipFailed) => S::Failed,
            (S::Active, E::Replayed) => S::Active,
            (S::Paused, E::Pause) => S::Paused,
            (S::Paused, E::Resume) => S::Active,
            (S::Paused, E::ResyncStarted) => S::Syncing,
            (S::Paused, E::ResyncDone) => return None,
            (S::Paused, E::ShipFailed) => S::Paused,
            (S::Paused, E::Replayed) => S::Paused,
            (S::Syncing, E::Pause) => return None,
            (S::Syncing, E::Resume) => return None,
            (S::Syncing, E::ResyncStarted) => S::Syncing,
            (S::Syncing, E::ResyncDone) => S::Active,
            (S::Syncing, E::ShipFailed) => S::Syncing,
            (S::Syncing, E::Replayed) => return None,
            (S::Failed, E::Pause) => S::Paused,
            (S::Failed, E::Resume) => S::Active,
            (S::Failed, E::ResyncStarted) => S::Syncing,
            (S::Failed, E::ResyncDone) => return None,
            (S::Failed, E::ShipFailed) => S::Failed,
            (S::Failed, E::Replayed) => S::Active,
            (S::Removed, _) => return None,
        })
    }

    #[test]
    fn every_transition_is_the_table_and_every_refusal_names_the_target() {
        for s in STATES {
            for e in EVENTS {
                match (next("r1", s, e), table(s, e)) {
                    (Ok(got), Some(want)) => assert_eq!(got, want, "{s:?} + {e:?}"),
                    (Err(Error::StateRefused(why)), None) => {
                        assert!(why.contains("r1"), "{s:?} + {e:?}: {why}")
                    }
                    (got, want) => panic!("{s:?} + {e:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    /// The commands of every legal (state, event) pair, written out.
    fn commands(s: S, e: E) -> Vec<Command> {
        use Command as C;
        match (s, e) {
            (S::Syncing, E::ResyncStarted) => vec![],
            (_, E::ResyncStarted) => vec![C::PersistRecord, C::Publish, C::StartResync, C::Notify],
            (_, E::ShipFailed) => vec![C::Publish],
            _ => vec![C::PersistRecord, C::Publish, C::Notify],
        }
    }

    #[test]
    fn every_legal_event_runs_its_commands_and_an_illegal_one_runs_none() {
        for s in STATES {
            for e in EVENTS {
                match (on("r1", s, e), table(s, e)) {
                    (Ok(step), Some(want)) => {
                        assert_eq!(step.to, want, "{s:?} + {e:?}");
                        assert_eq!(step.commands.to_vec(), commands(s, e), "{s:?} + {e:?}");
                        assert_eq!(
                            step.starts_resync(),
                            e == E::ResyncStarted && s != S::Syncing
                        );
                    }
                    (Err(Error::StateRefused(why)), None) => {
                        assert!(why.contains("r1"), "{s:?} + {e:?}: {why}")
                    }
                    (got, want) => panic!("{s:?} + {e:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    /// What a restart reads back is never less than what was answered: a
    /// step whose new state is kept writes and syncs the record before it
    /// publishes anything.
    #[test]
    fn a_kept_state_is_persisted_before_it_is_published() {
        for s in STATES {
            for e in EVENTS {
                let Ok(step) = on("r1", s, e) else { continue };
                let persist = step
                    .commands
                    .iter()
                    .position(|c| *c == Command::PersistRecord);
                let publish = step.commands.iter().position(|c| *c == Command::Publish);
                if step.to != s && persisted(step.to).is_some() {
                    assert!(
                        persist.is_some(),
                        "{s:?} + {e:?} keeps {:?} unwritten",
                        step.to
                    );
                }
                if let (Some(w), Some(p)) = (persist, publish) {
                    assert!(w < p, "{s:?} + {e:?} publishes before it persists");
                }
            }
        }
    }

    #[test]
    fn what_a_restart_reads_back() {
        let kept: Vec<(S, Option<S>)> = STATES.iter().map(|s| (*s, persisted(*s))).collect();
        assert_eq!(
            kept,
            vec![
                (S::Active, Some(S::Active)),
                (S::Paused, Some(S::Paused)),
                (S::Syncing, Some(S::Syncing)),
                (S::Failed, None),
                (S::Removed, None),
            ]
        );
    }

    #[test]
    fn a_resync_is_left_only_by_its_hand_over() {
        for e in EVENTS {
            let after = next("r", S::Syncing, e);
            if e == E::ResyncDone {
                assert_eq!(after.ok(), Some(S::Active));
            } else {
                assert!(matches!(after, Ok(S::Syncing) | Err(_)), "{e:?}: {after:?}");
            }
        }
    }
}
