//! The JSON bodies of the HTTP API that are not already a report type
//! (`status`, `cursors`, `verify`, `replay`), one type each, written by the
//! server and read by the CLI. A field renamed on one side is a compile
//! error on the other, not a CLI that silently prints `?`. The names are
//! SPEC.md's; `tests/library/t70_http.rs` checks them on the wire.

use serde::{Deserialize, Serialize};

use crate::conflict::{ConflictRecord, Keep};
use crate::status::TargetState;

/// `PUT`/`DELETE /v1/objects/{key}`: the write's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WriteAnswer {
    /// The entry's seq.
    pub seq: u64,
    /// Every target that had applied it when it was acknowledged.
    pub acked_by: Vec<String>,
    /// The mode the write waited for.
    pub mode: String,
}

impl From<crate::WriteAck> for WriteAnswer {
    fn from(a: crate::WriteAck) -> Self {
        WriteAnswer {
            seq: a.seq,
            acked_by: a.acked_by,
            mode: a.mode.to_string(),
        }
    }
}

/// Any refused request. A quorum miss also says how far the write got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorAnswer {
    /// What happened and what to do.
    pub error: String,
    /// Quorum miss: the entry's seq (it is in the log and will ship).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Quorum miss: how many acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<usize>,
    /// Quorum miss: how many were needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<usize>,
    /// Quorum miss: which targets acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<Vec<String>>,
}

impl ErrorAnswer {
    /// An error without quorum details.
    pub(crate) fn new(error: impl Into<String>) -> Self {
        ErrorAnswer {
            error: error.into(),
            seq: None,
            acked: None,
            required: None,
            acked_by: None,
        }
    }
}

/// `GET /v1/objects`: one page of live keys in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListAnswer {
    /// The keys of this page.
    pub keys: Vec<ListedKey>,
    /// Whether more keys follow.
    pub truncated: bool,
    /// Pass as `after` for the next page (when truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListedKey {
    /// The key.
    pub key: String,
    /// Seq of its newest entry.
    pub seq: u64,
    /// Size of its value in bytes.
    pub size: u64,
}

/// `POST /v1/targets/{name}/pause|resume|resync`: the target's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateAnswer {
    /// The target.
    pub target: String,
    /// Its state now.
    pub state: TargetState,
    /// Resync: the seq it ships from once the copy is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
}

/// `GET /v1/log` and `walship log --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAnswer {
    /// The oldest kept seq.
    pub first: u64,
    /// The head.
    pub head: u64,
    /// The entries asked for.
    pub entries: Vec<LogEntryRow>,
}

/// One entry of `GET /v1/log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntryRow {
    /// The stored row.
    #[serde(flatten)]
    pub row: crate::log::LogRow,
    /// Its append time, RFC 3339.
    pub time: String,
}

/// `GET /v1/conflicts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConflictsAnswer {
    /// Open manual conflicts, oldest first.
    pub conflicts: Vec<ConflictRecord>,
}

/// `POST /v1/conflicts/{id}/resolve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResolvedAnswer {
    /// The conflict as it was resolved.
    pub resolved: ConflictRecord,
    /// The version kept.
    pub kept: Keep,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire names SPEC.md gives, pinned.
    #[test]
    fn the_bodies_carry_specs_names() {
        let v = serde_json::to_value(ListAnswer {
            keys: vec![ListedKey {
                key: "a".into(),
                seq: 3,
                size: 9,
            }],
            truncated: true,
            next_after: Some("a".into()),
        })
        .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"keys": [{"key": "a", "seq": 3, "size": 9}], "truncated": true, "next_after": "a"})
        );
        let v = serde_json::to_value(StateAnswer {
            target: "r1".into(),
            state: TargetState::Syncing,
            from: Some(7),
        })
        .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"target": "r1", "state": "syncing", "from": 7})
        );
        let v = serde_json::to_value(ErrorAnswer::new("no")).expect("json");
        assert_eq!(v, serde_json::json!({"error": "no"}));
        let v = serde_json::to_value(WriteAnswer {
            seq: 1,
            acked_by: vec!["p".into()],
            mode: "sync".into(),
        })
        .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"seq": 1, "acked_by": ["p"], "mode": "sync"})
        );
        let row = LogEntryRow {
            row: crate::log::LogRow {
                seq: 2,
                ts_ms: 5,
                op: "put".into(),
                key: "k".into(),
                size: 1,
                crc_ok: true,
                error: None,
            },
            time: "t".into(),
        };
        let v = serde_json::to_value(&row).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"seq": 2, "ts_ms": 5, "op": "put", "key": "k", "size": 1, "crc_ok": true, "time": "t"})
        );
        let back: LogEntryRow = serde_json::from_value(v).expect("back");
        assert_eq!(back, row);
    }
}
