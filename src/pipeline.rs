//! A target's shipping pipeline: which planned entries may be sent now,
//! and how far the cursor may pass. Pure bookkeeping, no I/O; the shipper
//! drives it.
//!
//! Stretches of the log are planned one after another as the log grows
//! (`extend`), while earlier ones are still in flight, so a write that
//! lands during a round trip is sent at once instead of after it.
//!
//! Invariants:
//! - **One version of a key in flight** (guarantee 5). An entry offered
//!   while its key is in flight waits; a newer one offered meanwhile takes
//!   its place and covers it (the older is never sent). When the flight
//!   lands, the newest waiting entry of the key is sent next. So the
//!   target ends on the key's newest entry.
//! - **The cursor passes an entry only when it is applied**: when the
//!   entry that covers it (the last of its key in its stretch, or a newer
//!   one that replaced it while waiting) has landed. `advance` pops the
//!   contiguous prefix of such entries, never further.
//! - Planned entries are `front ..= planned_to()`, without gaps.

use std::collections::{HashMap, VecDeque};

use crate::codec::Entry;
use crate::log::Window;

/// An entry to send, and the seqs of older entries of its key it covers.
#[derive(Debug)]
pub(crate) struct Flight {
    pub(crate) entry: Entry,
    pub(crate) covers: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Seq of the entry whose landing applies this one.
    owner: u64,
    size: u32,
    ts_ms: u64,
    /// This entry (as an owner) has landed.
    landed: bool,
}

/// What `advance` passed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Passed {
    /// Entries passed.
    pub(crate) count: u64,
    /// Their stored bytes.
    pub(crate) bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Pipeline {
    /// First seq the cursor has not passed.
    front: u64,
    /// Seqs `front ..`, planned.
    slots: VecDeque<Slot>,
    /// Keys with an entry in flight, and the newest entry waiting behind it.
    busy: HashMap<String, Option<Flight>>,
    /// Value bytes of the entries in flight and waiting.
    held: u64,
    /// Stored bytes of the planned entries (`slots`' sizes).
    planned: u64,
}

impl Pipeline {
    /// A pipeline whose cursor is `cursor`.
    pub(crate) fn new(cursor: u64) -> Self {
        Self {
            front: cursor + 1,
            ..Self::default()
        }
    }

    /// Last planned seq (the cursor when nothing is planned).
    pub(crate) fn planned_to(&self) -> u64 {
        self.front + self.slots.len() as u64 - 1
    }

    /// Planned entries the cursor has not passed.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing planned is left to pass.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a planned stretch; it must start just after `planned_to()`.
    pub(crate) fn extend(&mut self, w: &Window) -> bool {
        if w.base != self.planned_to() + 1 {
            return false;
        }
        for i in 0..w.len() {
            self.planned += u64::from(w.sizes[i]);
            self.slots.push_back(Slot {
                owner: w.base + u64::from(w.owner[i]),
                size: w.sizes[i],
                ts_ms: w.ts_ms[i],
                landed: false,
            });
        }
        true
    }

    /// An entry planned to be applied (the last of its key in its
    /// stretch): what to send now, if anything.
    pub(crate) fn offer(&mut self, entry: Entry) -> Option<Flight> {
        self.held += entry.value.len() as u64;
        let flight = Flight {
            entry,
            covers: Vec::new(),
        };
        match self.busy.get_mut(&flight.entry.key) {
            Some(waiting) => {
                let mut flight = flight;
                if let Some(older) = waiting.take() {
                    self.held -= older.entry.value.len() as u64;
                    flight.covers = older.covers;
                    flight.covers.push(older.entry.seq);
                }
                *waiting = Some(flight);
                None
            }
            None => {
                self.busy.insert(flight.entry.key.clone(), None);
                Some(flight)
            }
        }
    }

    /// A flight landed (its value was `bytes` long): its entry and those it
    /// covers are applied. Returns the key's next entry to send, if one is
    /// waiting.
    pub(crate) fn landed(
        &mut self,
        seq: u64,
        key: &str,
        covers: &[u64],
        bytes: u64,
    ) -> Option<Flight> {
        self.held = self.held.saturating_sub(bytes);
        for s in std::iter::once(seq).chain(covers.iter().copied()) {
            if let Some(slot) = s
                .checked_sub(self.front)
                .and_then(|i| self.slots.get_mut(i as usize))
            {
                slot.landed = true;
            }
        }
        match self.busy.get_mut(key).map(Option::take) {
            Some(Some(next)) => Some(next),
            Some(None) => {
                self.busy.remove(key);
                None
            }
            None => None,
        }
    }

    /// Passes the contiguous prefix of applied entries, calling `each` with
    /// the seq and append time of every entry passed.
    pub(crate) fn advance(&mut self, mut each: impl FnMut(u64, u64)) -> Passed {
        let mut passed = Passed::default();
        while let Some(slot) = self.slots.front().copied() {
            // The owner is this entry or a later one, so it is still held.
            let landed = self
                .slots
                .get((slot.owner - self.front) as usize)
                .is_some_and(|o| o.landed);
            if !landed {
                break;
            }
            each(self.front, slot.ts_ms);
            passed.count += 1;
            passed.bytes += u64::from(slot.size);
            self.planned -= u64::from(slot.size);
            self.slots.pop_front();
            self.front += 1;
        }
        passed
    }

    /// Stored bytes of the entries planned and not passed: the cursor's
    /// offset plus these is `planned_to()`'s.
    pub(crate) fn planned_bytes(&self) -> u64 {
        self.planned
    }

    /// Value bytes held in flight and waiting.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held
    }

    /// The cursor: the last seq passed.
    pub(crate) fn cursor(&self) -> u64 {
        self.front - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Op;

    fn entry(seq: u64, key: &str) -> Entry {
        Entry {
            seq,
            ts_ms: seq * 10,
            op: Op::Put,
            key: key.into(),
            value: bytes::Bytes::new(),
            meta: None,
        }
    }

    /// A stretch from `base` with these keys, coalesced as `Log::plan` does.
    fn window(base: u64, keys: &[&str]) -> Window {
        let owner = (0..keys.len())
            .map(|i| (i..keys.len()).rfind(|&j| keys[j] == keys[i]).unwrap_or(i) as u32)
            .collect();
        Window {
            base,
            owner,
            sizes: vec![100; keys.len()],
            ts_ms: (0..keys.len() as u64).map(|i| (base + i) * 10).collect(),
            ..Window::default()
        }
    }

    #[test]
    fn planned_bytes_are_those_planned_and_not_passed() {
        let mut p = Pipeline::new(0);
        assert_eq!(p.planned_bytes(), 0);
        assert!(p.extend(&window(1, &["a", "b"])));
        assert!(p.extend(&window(3, &["c"])));
        assert_eq!(p.planned_bytes(), 300);
        let fa = p.offer(entry(1, "a")).expect("a free");
        p.landed(fa.entry.seq, "a", &fa.covers, 0);
        p.advance(|_, _| {});
        assert_eq!(p.planned_bytes(), 200, "1 passed, 2 and 3 planned");
    }

    #[test]
    fn passes_only_a_contiguous_applied_prefix() {
        let mut p = Pipeline::new(0);
        assert!(p.extend(&window(1, &["a", "b", "c"])));
        let fa = p.offer(entry(1, "a")).expect("a free");
        let fb = p.offer(entry(2, "b")).expect("b free");
        let fc = p.offer(entry(3, "c")).expect("c free");
        assert_eq!(
            p.landed(fc.entry.seq, "c", &fc.covers, 0)
                .map(|f| f.entry.seq),
            None
        );
        assert_eq!(
            p.advance(|_, _| {}),
            Passed::default(),
            "1 and 2 not applied"
        );
        assert!(p.landed(fa.entry.seq, "a", &fa.covers, 0).is_none());
        let mut seen = Vec::new();
        assert_eq!(
            p.advance(|s, ts| seen.push((s, ts))),
            Passed {
                count: 1,
                bytes: 100
            }
        );
        assert_eq!(seen, vec![(1, 10)]);
        p.landed(fb.entry.seq, "b", &fb.covers, 0);
        assert_eq!(p.advance(|_, _| {}).count, 2);
        assert_eq!(p.cursor(), 3);
        assert!(p.is_empty());
    }

    #[test]
    fn an_entry_passes_when_the_last_of_its_key_in_the_stretch_lands() {
        let mut p = Pipeline::new(4);
        p.extend(&window(5, &["a", "b", "a"]));
        // Only 6 (b) and 7 (a) are offered: 5 is superseded by 7.
        let fb = p.offer(entry(6, "b")).expect("b");
        let fa = p.offer(entry(7, "a")).expect("a");
        p.landed(fb.entry.seq, "b", &fb.covers, 0);
        assert_eq!(p.advance(|_, _| {}).count, 0, "5 waits for 7");
        p.landed(fa.entry.seq, "a", &fa.covers, 0);
        assert_eq!(p.advance(|_, _| {}).count, 3);
        assert_eq!(p.cursor(), 7);
    }

    #[test]
    fn a_key_in_flight_keeps_its_next_version_waiting_and_newer_ones_replace_it() {
        let mut p = Pipeline::new(0);
        p.extend(&window(1, &["k"]));
        let first = p.offer(entry(1, "k")).expect("k free");
        // Two later stretches, planned while 1 is in flight.
        p.extend(&window(2, &["k", "x"]));
        assert!(p.offer(entry(2, "k")).is_none(), "k is in flight");
        let fx = p.offer(entry(3, "x")).expect("x free");
        p.extend(&window(4, &["k"]));
        assert!(p.offer(entry(4, "k")).is_none(), "k is in flight");
        p.landed(fx.entry.seq, "x", &fx.covers, 0);
        assert_eq!(p.advance(|_, _| {}).count, 0, "1 is in flight");
        // 1 lands: the newest waiting version (4) goes next, covering 2.
        let next = p
            .landed(first.entry.seq, "k", &first.covers, 0)
            .expect("4 waits");
        assert_eq!(next.entry.seq, 4);
        assert_eq!(next.covers, vec![2]);
        assert_eq!(
            p.advance(|_, _| {}).count,
            1,
            "2 waits for 4, which covers it"
        );
        assert!(p.offer(entry(5, "k")).is_none(), "4 is in flight now");
        assert!(
            p.landed(next.entry.seq, "k", &next.covers, 0).is_some(),
            "5 waits"
        );
        assert_eq!(p.advance(|_, _| {}).count, 3);
        assert_eq!(p.cursor(), 4);
    }

    #[test]
    fn the_key_is_free_again_once_nothing_waits() {
        let mut p = Pipeline::new(0);
        p.extend(&window(1, &["k"]));
        let f = p.offer(entry(1, "k")).expect("free");
        assert!(p.landed(1, "k", &f.covers, 0).is_none());
        p.extend(&window(2, &["k"]));
        assert!(p.offer(entry(2, "k")).is_some(), "nothing in flight for k");
    }

    #[test]
    fn held_bytes_count_what_is_in_flight_and_waiting_once_per_key() {
        let mut p = Pipeline::new(0);
        let e = |seq: u64, key: &str, len: usize| Entry {
            value: bytes::Bytes::from(vec![0u8; len]),
            ..entry(seq, key)
        };
        p.extend(&window(1, &["a", "b"]));
        let fa = p.offer(e(1, "a", 100)).expect("a");
        p.offer(e(2, "b", 10)).expect("b");
        assert_eq!(p.held_bytes(), 110);
        p.extend(&window(3, &["a"]));
        assert!(p.offer(e(3, "a", 7)).is_none());
        p.extend(&window(4, &["a"]));
        assert!(p.offer(e(4, "a", 5)).is_none(), "replaces 3 behind a");
        assert_eq!(p.held_bytes(), 115);
        let next = p.landed(1, "a", &fa.covers, 100).expect("4 waits");
        assert_eq!(p.held_bytes(), 15);
        p.landed(next.entry.seq, "a", &next.covers, 5);
        assert_eq!(p.held_bytes(), 10);
    }

    #[test]
    fn a_stretch_that_does_not_follow_is_refused() {
        let mut p = Pipeline::new(10);
        assert!(!p.extend(&window(12, &["a"])));
        assert!(p.extend(&window(11, &["a", "b"])));
        assert_eq!(p.planned_to(), 12);
        assert!(!p.extend(&window(12, &["c"])));
        assert_eq!(p.len(), 2);
    }
}
