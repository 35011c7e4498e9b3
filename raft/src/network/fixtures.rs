//! Log ids and AppendEntries requests the transport's tests build entries
//! into: every entry by leader 2 of its term.

use openraft::entry::RaftEntry;
use openraft::raft::AppendEntriesRequest;

use crate::TypeConfig;

type Entry = openraft::alias::EntryOf<TypeConfig>;

pub(super) fn log_id(term: u64, index: u64) -> openraft::alias::LogIdOf<TypeConfig> {
    let leader = openraft::vote::leader_id_adv::LeaderId { term, node_id: 2 };
    openraft::alias::LogIdOf::<TypeConfig>::new(leader, index)
}

/// A request of term 3 carrying `entries`, following the entry before the
/// first, with the leader's commit at index `commit`.
pub(super) fn request(
    entries: Vec<Entry>,
    commit: Option<u64>,
) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: openraft::alias::VoteOf::<TypeConfig>::new_committed(3, 2),
        prev_log_id: entries.first().map(|e| log_id(3, e.index() - 1)),
        entries,
        leader_commit: commit.map(|c| log_id(3, c)),
    }
}
