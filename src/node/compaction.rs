//! Compacting the key history in steps.
//!
//! A compaction is one entry that every member applies at the same moment:
//! it reads the change feed below the new compacted revision and deletes
//! what each change superseded, and every entry committed after it waits
//! for it, on every member. So a compaction across many revisions is
//! proposed as several entries of at most [`COMPACT_STEP_REVISIONS_MAX`]
//! revisions each, each proposed once the one before has been applied.
//! Both the leader's automatic compaction ([`super::housekeeping`]) and a
//! client's `Compact` go this way.

use std::sync::Arc;

use utopia_raft::event::{Event, Rejection, Response};

use super::{Error, Node};

/// Revisions one compaction entry covers, at most: a step of 10,000
/// revisions held every write behind it for 25–100 ms on each member of a
/// three-node cluster under load; 1,000 keep it under about 10 ms.
pub const COMPACT_STEP_REVISIONS_MAX: i64 = 1_000;

/// The revisions to compact to, in order, going from `compacted` to
/// `revision`: steps of at most [`COMPACT_STEP_REVISIONS_MAX`], the last
/// one `revision` itself; none when `revision` is not above `compacted`.
pub fn steps(compacted: i64, revision: i64) -> impl Iterator<Item = i64> {
    let mut done = compacted;
    std::iter::from_fn(move || {
        (done < revision).then(|| {
            done = revision.min(done.saturating_add(COMPACT_STEP_REVISIONS_MAX));
            done
        })
    })
}

impl Node {
    /// Compacts the key history to `revision`, in steps when it spans more
    /// than one, and returns what the last step's entry returned.
    ///
    /// A request the state machine would refuse (at or below the compacted
    /// revision, above the current one, as far as this member knows) is
    /// proposed as it is, so that it is refused without compacting
    /// anything. A step that another compaction has already passed is
    /// skipped. Any other failure ends the steps: the history stays
    /// compacted to the last step applied (`compact_revision` in `utopia
    /// status`), and compacting again goes on from there. The steps run on
    /// a task of their own, so that a client that stops waiting does not
    /// leave them half done.
    pub async fn compact(self: &Arc<Self>, revision: i64) -> Result<Response, Error> {
        let (current, compacted) = match self.reader.revisions() {
            Ok(r) => r,
            Err(e) => return Err(Error::Unavailable(format!("read the revisions: {e}"))),
        };
        if revision > current || revision <= compacted.saturating_add(COMPACT_STEP_REVISIONS_MAX) {
            return self.propose(Event::Compact { revision }).await;
        }
        let node = self.clone();
        let stepping = tokio::spawn(async move {
            let mut last = Err(Error::Unavailable("no compaction step".into()));
            for step in steps(compacted, revision) {
                last = node.propose(Event::Compact { revision: step }).await;
                match &last {
                    Ok(_) => {}
                    Err(Error::Rejected(Rejection::Compacted { .. })) if step < revision => {}
                    Err(_) => break,
                }
            }
            last
        });
        stepping.await.map_err(|e| {
            Error::OutcomeUnknown(format!(
                "compaction to {revision} stopped after an unknown number of steps: {e}"
            ))
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_reach_the_revision_in_pieces_of_at_most_the_step() {
        assert_eq!(steps(0, 2_500).collect::<Vec<_>>(), [1_000, 2_000, 2_500]);
        assert_eq!(steps(500, 1_500).collect::<Vec<_>>(), [1_500]);
        assert_eq!(steps(7, 8).collect::<Vec<_>>(), [8]);
        assert_eq!(steps(8, 8).count(), 0);
        assert_eq!(steps(9, 8).count(), 0);
        assert_eq!(
            steps(i64::MAX - 10, i64::MAX).collect::<Vec<_>>(),
            [i64::MAX]
        );
        assert_eq!(steps(0, 10_000_000).count(), 10_000);
    }
}
