//! Applying compaction: the key history and the change feed below a
//! revision are dropped, keeping what reads at that revision need.

use serde::Deserialize;
use utopia_raft::event::{Bytes, Outcome, Rejection};

use super::{Applier, ApplyError, StateRead};
use crate::codec;
use crate::keys::{self, meta, Cf};

/// What compaction reads of a [`super::ChangeRecord`]: its key, whether it
/// is a deletion and what it superseded. The pair's value (and the rest of
/// it) is skipped, not copied.
#[derive(Deserialize)]
struct ChangeHead {
    deleted: bool,
    kv: KeyOnly,
    #[serde(default)]
    prev_revision: Option<i64>,
}

#[derive(Deserialize)]
struct KeyOnly {
    key: Bytes,
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub(super) fn apply_compact(&mut self, revision: i64) -> Result<Outcome, ApplyError> {
        let compacted = self.get_i64(meta::COMPACT_REVISION)?;
        let current = self.get_i64(meta::REVISION)?;
        if revision <= compacted {
            return Ok(Outcome::Rejected(Rejection::Compacted {
                requested: revision,
                compacted,
            }));
        }
        if revision > current {
            return Ok(Outcome::Rejected(Rejection::FutureRevision {
                requested: revision,
                current,
            }));
        }
        // What stays in the history is each key's newest state at or below
        // `revision` (unless it is a deletion) and everything above it.
        // Every change at or below `revision` drops the record it superseded
        // (by key: no history search per change); every change below
        // `revision` also leaves the change feed, and a deletion's own
        // record goes with it (at `revision` the key is absent, or a later
        // change covers it).
        // Change records carry values: only each record's key and what it
        // superseded are decoded, and only the keys to delete are kept.
        let mut doomed = Vec::new();
        self.scan_each(
            Cf::KvChanges,
            &keys::change_key(compacted, 0),
            Some(&keys::change_key(revision + 1, 0)),
            |ck, cv| {
                let (rev, _) = keys::parse_change_key(ck)?;
                let change: ChangeHead = codec::decode(Cf::KvChanges, ck, cv)?;
                if let Some(prev) = change.prev_revision {
                    doomed.push((Cf::KvHistory, keys::history_key(&change.kv.key, prev)));
                }
                if rev != revision {
                    doomed.push((Cf::KvChanges, ck.to_vec()));
                    if change.deleted {
                        doomed.push((Cf::KvHistory, keys::history_key(&change.kv.key, rev)));
                    }
                }
                Ok(true)
            },
        )?;
        for (cf, key) in doomed {
            self.delete(cf, key);
        }
        self.put(
            Cf::SmMeta,
            meta::COMPACT_REVISION.to_vec(),
            codec::encode(&revision),
        );
        Ok(Outcome::Done)
    }
}
