//! One task per target owns what changes it: its commands arrive in a
//! mailbox and run one at a time, in the order sent, and the task
//! supervises the target's children.
//!
//! Invariant: a target's state, its hand-over point (`resync_floor`) and
//! the cursor moves a command makes are changed only by its owner task
//! (and by `Replicator::open`, before the owner starts). So a pause or a
//! resume cannot race a resync's hand-over, and a moved hand-over point
//! cannot race the hand-over's check of it: each is a command or a step
//! of this one loop. The shipper publishes the cursor as it ships; the
//! epoch (`TargetHandle::reset`) keeps it from publishing over a cursor a
//! command moved.
//!
//! ```text
//!   mailbox ──▶ ┌──────────── owner (one per target) ────────────┐
//!  pause, resume│ commands, in order: change_state (persist, sync,│
//!  resync,      │ then publish)                                   │
//!  replay, move │                                                 │
//!  the floor    │ children: shipper ── panicked/ended ─▶ restarted│
//!               │           resync attempt ── copied ─▶ hand-over │
//!               │                         └─ failed ─▶ retried    │
//!               └─────────────────────────────────────────────────┘
//! ```
//!
//! A command that panics (a bug) is cut short there: its caller gets an
//! error that says so (not `ShuttingDown`), the target's error shows it,
//! and the owner takes the next command. So one bad command never leaves a
//! target that no later pause, resume or resync can reach.
//!
//! Commands for different targets run concurrently; what spans targets
//! (the acting primary, failover) is the manager's (`Replicator::manage`).
//! A pause or a resync, which the acting primary may not take, is decided
//! under `Acting::unless_acting`, so a promotion never lands between its
//! check and its change (`crate::acting`).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::Replicator;
use crate::error::{Error, Result};
use crate::shipper::Shipper;
use crate::status::TargetState;
use crate::target_state::TargetHandle;

/// Commands waiting for an owner at most; a sender waits beyond that.
pub(super) const MAILBOX: usize = 64;
/// Longest pause before a child is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First pause before a child is started again.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// First pause before a failed resync attempt is retried.
const RESYNC_FIRST_BACKOFF: Duration = Duration::from_millis(200);

type Reply<T> = oneshot::Sender<Result<T>>;

/// What a target's owner is asked to do.
pub(super) enum Command {
    /// `walship pause`.
    Pause(Reply<TargetState>),
    /// `walship resume`.
    Resume(Reply<TargetState>),
    /// `walship resync`, a lost marker, or the log over `max_log_bytes`:
    /// answers the hand-over point.
    StartResync(Reply<u64>),
    /// `walship replay --execute`, planned: the cursor moves back to
    /// `seq - 1`, and entries up to `head` are written over the target.
    Replay {
        seq: u64,
        head: u64,
        reply: Reply<()>,
    },
    /// The log passed `max_log_bytes` during a resync: its hand-over point
    /// moves to `to`, and the copy starts over there.
    MoveResyncFloor { to: u64, reply: Reply<()> },
    /// Panics on the owner, as a bug in a command would (tests only).
    #[cfg(feature = "testing")]
    Panic(Reply<()>),
}

impl Replicator {
    /// Sends a command to `t`'s owner and waits for its answer.
    pub(super) async fn ask<T>(
        &self,
        t: &TargetHandle,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.owners[t.idx]
            .send(command(tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| {
            if self.cancel.is_cancelled() {
                Error::ShuttingDown
            } else {
                // The owner lives on (see `run`); this command did not.
                Error::io(
                    format!("a command on target {}", t.name()),
                    std::io::Error::other(
                        "it failed unexpectedly (a panic, in the sidecar's log) and may not have been carried out; \
                         look with `walship cursors`, and try again: the target's other commands still run",
                    ),
                )
            }
        })?
    }

    /// Makes `name`'s owner panic in a command, as a bug would (tests only).
    #[cfg(feature = "testing")]
    pub async fn panic_in_owner(&self, name: &str) -> Result<()> {
        let t = self.target(name)?;
        self.ask(t, Command::Panic).await
    }
}

/// A child task of an owner, and when it was started.
struct Child<T> {
    task: JoinHandle<T>,
    started: Instant,
}

impl<T: Send + 'static> Child<T> {
    fn spawn(f: impl std::future::Future<Output = T> + Send + 'static) -> Child<T> {
        Child {
            task: tokio::spawn(f.instrument(tracing::Span::current())),
            started: Instant::now(),
        }
    }
}

/// The text of a panic's payload.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "it was cancelled".into();
    }
    payload_text(e.into_panic().as_ref())
}

/// A panic's message.
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Waits for an optional child.
async fn ended<T>(child: &mut Option<Child<T>>) -> std::result::Result<T, tokio::task::JoinError> {
    match child {
        Some(c) => (&mut c.task).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until an optional instant.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The owner of one target: runs its commands, keeps its shipper running
/// and its resync going until it hands over. Ends at shutdown, once its
/// children have.
#[tracing::instrument(name = "target", skip_all, fields(target = %t.name()))]
pub(super) async fn run(
    me: Weak<Replicator>,
    t: Arc<TargetHandle>,
    shipper: Shipper,
    mut mailbox: mpsc::Receiver<Command>,
    cancel: CancellationToken,
) {
    let mut shipping = Some(Child::spawn(shipper.clone().run()));
    let mut ship_again: Option<tokio::time::Instant> = None;
    let mut ship_delay = FIRST_BACKOFF;
    // A resync the open began (cut short by a restart, or a target below
    // the oldest kept entry) is copied from the start.
    let mut resync_start = 0;
    let mut resync: Option<Child<Result<bool>>> = match me.upgrade() {
        Some(r) if t.state() == TargetState::Syncing => Some(attempt(&r, &t, &mut resync_start)),
        _ => None,
    };
    let mut resync_again: Option<tokio::time::Instant> = None;
    let mut resync_delay = RESYNC_FIRST_BACKOFF;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            command = mailbox.recv() => {
                let Some(command) = command else { break };
                let Some(r) = me.upgrade() else { break };
                // A command that panics (a bug) ends, its caller is told,
                // and the owner goes on: the target's later commands, its
                // shipper and its resync must not die with it.
                match std::panic::AssertUnwindSafe(r.handle(&t, command)).catch_unwind().await {
                    Ok(true) if resync.is_none() => {
                        resync_again = None;
                        resync_delay = RESYNC_FIRST_BACKOFF;
                        resync = Some(attempt(&r, &t, &mut resync_start));
                    }
                    Ok(_) => {}
                    Err(payload) => {
                        let msg = format!(
                            "a command panicked ({}); the target's owner goes on with the next",
                            payload_text(payload.as_ref())
                        );
                        tracing::error!(target = %t.name(), error = %msg, "command panicked");
                        t.record_failure(&msg);
                    }
                }
            }
            result = ended(&mut shipping) => {
                let ran = shipping.take().map_or(Duration::ZERO, |c| c.started.elapsed());
                if cancel.is_cancelled() {
                    break;
                }
                let what = match result {
                    Ok(()) => "ended early".to_string(),
                    Err(e) => format!("panicked ({})", panic_text(e)),
                };
                let msg = format!("the shipper {what}; restarted from cursor {}", t.cursor());
                tracing::error!(target = %t.name(), error = %msg, "shipper restarted");
                t.record_failure(&msg);
                if ran > MAX_BACKOFF {
                    // It ran a good while: a new fault, not the same one.
                    ship_delay = FIRST_BACKOFF;
                }
                ship_again = Some(tokio::time::Instant::now() + ship_delay);
                ship_delay = (ship_delay * 2).min(MAX_BACKOFF);
            }
            () = until(ship_again) => {
                ship_again = None;
                shipping = Some(Child::spawn(shipper.clone().run()));
            }
            result = ended(&mut resync) => {
                resync = None;
                let Some(r) = me.upgrade() else { break };
                let result = result.unwrap_or_else(|e| {
                    Err(Error::io(
                        "resyncing",
                        std::io::Error::other(format!("the resync task panicked: {}", panic_text(e))),
                    ))
                });
                // The point this attempt copied towards, not the one now:
                // a point moved as the copy ended is copied to again.
                let start = resync_start;
                match result.and_then(|copied| if copied { r.hand_over(&t, start) } else { Ok(false) }) {
                    Ok(true) => resync_delay = RESYNC_FIRST_BACKOFF,
                    Ok(false) => {
                        tracing::info!(target = %t.name(), from = start, "resync starting over from its moved hand-over point");
                        resync = Some(attempt(&r, &t, &mut resync_start));
                    }
                    Err(Error::ShuttingDown) => break,
                    Err(e) => {
                        tracing::warn!(target = %t.name(), error = %e, "resync failed; retrying");
                        t.set_progress(Some(format!("retrying after: {e}")));
                        resync_again = Some(tokio::time::Instant::now() + resync_delay);
                        resync_delay = (resync_delay * 2).min(MAX_BACKOFF);
                    }
                }
            }
            () = until(resync_again) => {
                resync_again = None;
                let Some(r) = me.upgrade() else { break };
                if t.state() == TargetState::Syncing {
                    resync = Some(attempt(&r, &t, &mut resync_start));
                }
            }
        }
    }
    // The children see the same cancellation: wait for them (the shipper
    // saves its cursor on the way out).
    if let Some(c) = shipping {
        let _ = c.task.await;
    }
    if let Some(c) = resync {
        let _ = c.task.await;
    }
}

/// Starts one resync attempt towards the hand-over point as it stands
/// (kept in `start`: the hand-over is made at that point, or not at all).
fn attempt(r: &Arc<Replicator>, t: &Arc<TargetHandle>, start: &mut u64) -> Child<Result<bool>> {
    *start = t.resync_floor.load(std::sync::atomic::Ordering::Acquire);
    Child::spawn(r.clone().run_resync(t.clone(), *start))
}

impl Replicator {
    /// Runs one command on `t`'s owner. Returns whether a resync began
    /// (the owner starts its first attempt).
    async fn handle(&self, t: &Arc<TargetHandle>, command: Command) -> bool {
        match command {
            Command::Pause(reply) => {
                let _ = reply.send(self.pause_now(t));
                false
            }
            Command::Resume(reply) => {
                let _ = reply.send(self.resume_now(t));
                false
            }
            Command::StartResync(reply) => {
                let begun = self.begin_resync(t);
                let started = matches!(begun, Ok((_, true)));
                let _ = reply.send(begun.map(|(start, _)| start));
                started
            }
            Command::Replay { seq, head, reply } => {
                let _ = reply.send(self.replay_now(t, seq, head));
                false
            }
            Command::MoveResyncFloor { to, reply } => {
                self.move_resync_floor(t, to);
                let _ = reply.send(Ok(()));
                false
            }
            #[cfg(feature = "testing")]
            Command::Panic(_reply) => panic!("injected panic in a command on the owner"),
        }
    }
}
