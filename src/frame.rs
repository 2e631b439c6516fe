//! Frames: how consecutive records share one value of the log tree.
//!
//! One sled insert per record made sled's per-insert work (a tree descent,
//! a page delta, its share of the flush) the cost of a group commit; one
//! insert per frame of up to [`FRAME_BYTES`] pays it once for dozens of
//! records. A frame is stored under the seq of its first record:
//!
//! ```text
//! +------+------------+----------+------------+----------+-----
//! | 0xF7 | len u32 LE | record 1 | len u32 LE | record 2 | ...
//! +------+------------+----------+------------+----------+-----
//! ```
//!
//! Records keep their own version byte and crc (see `codec`), so a frame
//! adds no checksum: a damaged length shows as a record whose crc fails or
//! as framing that does not add up, both reported as corrupt at that seq.
//! Invariant: a frame holds at least one record, the records of frame `f`
//! are seqs `f, f+1, …`, and the next frame starts right after its last.
//! A value whose first byte is not [`FRAME_MARK`] is a lone record as
//! written by walship before frames (a record's first byte is its format
//! version, never 0xF7), so older data dirs read unchanged.

/// First byte of a frame.
pub const FRAME_MARK: u8 = 0xF7;

/// A frame closes once it holds this many bytes; a larger record gets a
/// frame of its own. Below sled's blob threshold (see `storage`), so
/// frames of small records stay inline in sled's data file.
pub const FRAME_BYTES: usize = 8 * 1024;

const LEN: usize = 4;

/// Builds frames from records in seq order.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    /// (first seq, records, bytes)
    frames: Vec<(u64, u64, Vec<u8>)>,
}

impl FrameBuilder {
    /// Adds the record stored at `seq` (one more than the previous one).
    pub fn push(&mut self, seq: u64, record: &[u8]) {
        let fits = self.frames.last().is_some_and(|(first, n, buf)| {
            buf.len() + LEN + record.len() <= FRAME_BYTES && first + n == seq
        });
        if !fits {
            let mut buf = Vec::with_capacity(FRAME_BYTES.min(1 + LEN + record.len()));
            buf.push(FRAME_MARK);
            self.frames.push((seq, 0, buf));
        }
        if let Some((_, n, buf)) = self.frames.last_mut() {
            buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buf.extend_from_slice(record);
            *n += 1;
        }
    }

    /// The frames: (seq of the first record, bytes).
    pub fn finish(self) -> Vec<(u64, Vec<u8>)> {
        self.frames.into_iter().map(|(s, _, b)| (s, b)).collect()
    }
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Index of the record that could not be cut out.
    pub index: u64,
    /// What was wrong.
    pub reason: String,
}

/// The records of a stored value, in order: one for a lone record, every
/// record of a frame. Stops after the first error.
pub fn records(value: &[u8]) -> Records<'_> {
    match value.first() {
        Some(&FRAME_MARK) => Records {
            rest: &value[1..],
            index: 0,
            lone: false,
            done: false,
        },
        _ => Records {
            rest: value,
            index: 0,
            lone: true,
            done: false,
        },
    }
}

/// Iterator of [`records`].
#[derive(Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    index: u64,
    lone: bool,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.lone {
            self.done = true;
            return Some(Ok(self.rest));
        }
        if self.rest.is_empty() {
            self.done = true;
            return (self.index == 0).then(|| {
                Err(FrameError {
                    index: 0,
                    reason: "the frame holds no record".into(),
                })
            });
        }
        let fail = |me: &mut Self, reason: String| {
            me.done = true;
            Some(Err(FrameError {
                index: me.index,
                reason,
            }))
        };
        let Some(len) = self.rest.get(..LEN) else {
            let n = self.rest.len();
            return fail(
                self,
                format!("the frame ends inside a record length ({n} bytes left)"),
            );
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let body = &self.rest[LEN..];
        if len == 0 || len > body.len() {
            let n = body.len();
            return fail(
                self,
                format!(
                    "a record length of {len} bytes does not fit the {n} bytes left in its frame"
                ),
            );
        }
        let (record, rest) = body.split_at(len);
        self.rest = rest;
        self.index += 1;
        Some(Ok(record))
    }
}

/// How many records a stored value holds, or what is wrong with it.
pub fn count(value: &[u8]) -> Result<u64, FrameError> {
    let mut n = 0;
    for r in records(value) {
        r?;
        n += 1;
    }
    Ok(n)
}

/// A frame holding `records` (for rewriting the part of a frame that a
/// truncation keeps).
pub fn frame_of<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut buf = vec![FRAME_MARK];
    for r in records {
        buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
        buf.extend_from_slice(r);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framing bytes are the on-disk format: pinned.
    #[test]
    fn golden_bytes() {
        let mut b = FrameBuilder::default();
        b.push(7, &[1, 0xAA]);
        b.push(8, &[1, 0xBB, 0xCC]);
        let frames = b.finish();
        assert_eq!(
            frames,
            vec![(
                7,
                vec![0xF7, 2, 0, 0, 0, 1, 0xAA, 3, 0, 0, 0, 1, 0xBB, 0xCC]
            )]
        );
        assert_eq!(frame_of([&[1u8, 0xAA][..], &[1, 0xBB, 0xCC]]), frames[0].1);
    }

    #[test]
    fn frames_close_at_the_size_limit_and_at_a_seq_gap() {
        let rec = vec![1u8; 1000];
        let mut b = FrameBuilder::default();
        for seq in 1..=20 {
            b.push(seq, &rec);
        }
        b.push(40, &rec);
        let big = vec![1u8; FRAME_BYTES * 2];
        b.push(41, &big);
        b.push(42, &rec);
        let frames = b.finish();
        let firsts: Vec<u64> = frames.iter().map(|f| f.0).collect();
        // 8 records of 1004 bytes fit in 8 KiB with the mark.
        assert_eq!(firsts, vec![1, 9, 17, 40, 41, 42]);
        let counts: Vec<u64> = frames.iter().map(|f| count(&f.1).expect("count")).collect();
        assert_eq!(counts, vec![8, 8, 4, 1, 1, 1]);
        assert!(
            frames
                .iter()
                .all(|f| f.1.len() <= FRAME_BYTES || count(&f.1) == Ok(1))
        );
        let all: Vec<&[u8]> = records(&frames[0].1).map(|r| r.expect("record")).collect();
        assert_eq!(all, vec![&rec[..]; 8]);
    }

    #[test]
    fn a_lone_record_from_before_frames_reads_as_one() {
        let rec = [1u8, 2, 3, 4];
        assert_eq!(count(&rec), Ok(1));
        assert_eq!(records(&rec).next(), Some(Ok(&rec[..])));
    }

    #[test]
    fn damaged_framing_names_the_record() {
        let good = frame_of([&[1u8, 2][..], &[1, 3, 4]]);
        // Cut inside the second record.
        let cut = &good[..good.len() - 1];
        let e = count(cut).expect_err("cut");
        assert_eq!(e.index, 1);
        assert!(e.reason.contains("does not fit"), "{}", e.reason);
        // Cut inside a length.
        let e = count(&good[..good.len() - 4]).expect_err("cut");
        assert_eq!(e.index, 1);
        assert!(e.reason.contains("inside a record length"), "{}", e.reason);
        assert!(
            count(&[FRAME_MARK])
                .expect_err("empty")
                .reason
                .contains("no record")
        );
        let zero = [FRAME_MARK, 0, 0, 0, 0];
        assert!(count(&zero).is_err());
    }
}
