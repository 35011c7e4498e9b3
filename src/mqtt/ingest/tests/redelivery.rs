//! Rows on copies that may already be committed: broker redeliveries (DUP),
//! tombstones, their eviction and settlement from the store, void
//! acknowledgements, and a lagging applied-batch feed.

use super::*;

#[test]
fn redeliveries_and_late_copies_are_settled_once() {
    let (a, _) = devices();
    run(vec![
        row(
            "a DUP redelivery takes over the acknowledgement of its copy from the older connection",
            vec![
                owners(1, &[2]),
                Connect(0, 1, true),
                recv(a(1), 1),
                Connect(0, 2, true),
                dup(a(1), 7),
                Count("mqtt_redeliveries_total", 1),
                Pending(1),
                Lookups(0),
                Apply(vec![a(1)]),
                Acked(vec![7]),
                Pending(0),
            ],
        ),
        row(
            "a DUP redelivery of a message committed before it arrived is settled from the store",
            vec![
                owners(1, &[2]),
                StoreCommits(vec![a(1)]),
                dup(a(1), 1),
                Lookups(1),
                Acked(vec![1]),
                Pending(0),
                Count("ingest_copies_already_committed_total", 1),
                Count("ingest_copies_settled_by_store_total", 0),
            ],
        ),
        row(
            "a DUP redelivery of an owned device is proposed as redelivered, and the applier decides",
            vec![
                owners(1, &[1]),
                StoreCommits(vec![a(1)]),
                dup(a(1), 1),
                Acked(vec![]),
                At(5),
                Proposed(0, 1, vec![(a(1), Redelivered)]),
            ],
        ),
        row(
            "a DUP redelivery the store does not know is held",
            vec![owners(1, &[2]), dup(a(1), 1), Lookups(1), Acked(vec![]), Pending(1)],
        ),
        row(
            "a commit applied while the store is asked settles the copy; the late answer changes nothing",
            vec![
                owners(1, &[2]),
                Hold(Read::Checks),
                dup(a(1), 1),
                Pending(1),
                Apply(vec![a(1)]),
                Acked(vec![1]),
                Pending(0),
                Release(Read::Checks),
                Lookups(1),
                Acked(vec![]),
                Count("ingest_copies_already_committed_total", 0),
            ],
        ),
        row(
            "a commit applied before the copy arrives leaves a tombstone for one copy",
            vec![
                owners(1, &[2]),
                Apply(vec![a(1)]),
                recv(a(1), 1),
                Acked(vec![1]),
                Count("ingest_copies_already_committed_total", 1),
                Lookups(0),
                recv(a(1), 2),
                Acked(vec![]),
                Pending(1),
            ],
        ),
        row(
            "tombstones last the dedupe window",
            vec![
                owners(1, &[2]),
                Apply(vec![a(1), a(2)]),
                At(60_000),
                recv(a(1), 1),
                Acked(vec![1]),
                At(60_001),
                recv(a(2), 2),
                Acked(vec![]),
                Pending(1),
            ],
        ),
        row_with(
            "tombstones evicted for room: copies are settled from the store for the dedupe window",
            |s| s.pending_messages_max = 2,
            vec![
                owners(1, &[2]),
                Apply(vec![a(1), a(2), a(3)]),
                Count("ingest_tombstones_evicted_total", 1),
                recv(a(3), 3),
                Acked(vec![3]),
                Lookups(0),
                recv(a(1), 1),
                Lookups(1),
                Acked(vec![1]),
                Count("ingest_copies_settled_by_store_total", 1),
                Count("ingest_copies_already_committed_total", 2),
                recv(a(4), 4),
                Lookups(2),
                Acked(vec![]),
                Pending(1),
                At(60_001),
                recv(a(5), 5),
                Lookups(2),
                Pending(2),
            ],
        ),
        row_with(
            "an owned device's copy found committed in the store is proposed as redelivered",
            |s| s.pending_messages_max = 2,
            vec![
                owners(1, &[1]),
                Apply(vec![a(1), a(2), a(3)]),
                recv(a(1), 1),
                Lookups(1),
                Acked(vec![]),
                At(5),
                Proposed(0, 1, vec![(a(1), Redelivered)]),
            ],
        ),
        row(
            "a committed copy whose connection is gone: the redelivery finds a tombstone",
            vec![
                owners(1, &[2]),
                Connect(0, 1, true),
                recv(a(1), 1),
                // The bridge reconnected; the core has not heard yet.
                Connect(0, 2, false),
                Apply(vec![a(1)]),
                Acked(vec![]),
                Connect(0, 2, true),
                dup(a(1), 9),
                Acked(vec![9]),
                Count("ingest_copies_already_committed_total", 1),
                Lookups(0),
                Pending(0),
            ],
        ),
        row(
            "the applied-batch feed lagged: copies committed meanwhile are settled from the store",
            vec![
                owners(1, &[2]),
                recv(a(1), 1),
                recv(a(2), 2),
                StoreCommits(vec![a(1)]),
                FeedLagged,
                Acked(vec![1]),
                Pending(1),
                Count("ingest_resyncs_total", 1),
            ],
        ),
    ]);
}
