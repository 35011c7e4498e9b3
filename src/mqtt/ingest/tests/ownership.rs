//! Rows on who proposes: owner handover, a stale epoch, proposals waiting
//! for the owners read, and the weight a node asks for while its device
//! bridge is down.

use super::*;

#[test]
fn ownership_moves_by_epoch_and_follows_the_device_bridges() {
    let (a, _) = devices();
    run(vec![
        row(
            "owner handover: the new owner proposes the copies it held, those from before as redelivered",
            vec![
                owners(1, &[2]),
                recv(a(1), 1),
                recv(a(2), 2),
                At(10),
                Proposals(0),
                owners(2, &[1]),
                Proposed(0, 2, vec![(a(1), Redelivered), (a(2), Redelivered)]),
                recv(a(3), 3),
                At(15),
                Proposed(1, 2, vec![(a(3), New)]),
                Answer(0, Answer::Ingested),
                Answer(1, Answer::Ingested),
                Apply(vec![a(1), a(2), a(3)]),
                Acked(vec![1, 2, 3]),
                Pending(0),
            ],
        ),
        row(
            "the old owner stops proposing and is settled by the new owner's commit",
            vec![
                owners(1, &[1]),
                recv(a(1), 1),
                At(1),
                owners(2, &[2]),
                At(10),
                Proposals(0),
                Apply(vec![a(1)]),
                Acked(vec![1]),
            ],
        ),
        row(
            "a stale-epoch batch: counted, owners read again, proposed after the pause under the new epoch",
            vec![
                owners(1, &[1]),
                recv(a(1), 1),
                At(5),
                Proposed(0, 1, vec![(a(1), New)]),
                // The log moved on; this node has not applied it yet.
                Owners(2, vec![1], false),
                Answer(0, Answer::Stale { current: 2 }),
                Count("ingest_batches_stale_total", 1),
                At(104),
                Proposals(1),
                At(105),
                Proposed(1, 2, vec![(a(1), Redelivered)]),
                Acked(vec![]),
            ],
        ),
        row(
            "no proposal goes out while the owners asked for are unknown",
            vec![
                owners(1, &[1]),
                recv(a(1), 1),
                Hold(Read::Owners),
                owners(2, &[1]),
                At(10),
                Proposals(0),
                Release(Read::Owners),
                Proposed(0, 2, vec![(a(1), Redelivered)]),
            ],
        ),
        row(
            "a device bridge down for owner_timeout_ms: weight 0 until it is back",
            vec![
                Weights(vec![]),
                Connect(0, 1, true),
                Weights(vec![3]),
                At(100),
                Disconnect(0),
                At(1099),
                Weights(vec![3]),
                At(1100),
                Weights(vec![3, 0]),
                At(5000),
                Connect(0, 2, true),
                Weights(vec![3, 0, 3]),
                Count("mqtt_connects_total", 2),
                Count("mqtt_connection_errors_total", 1),
            ],
        ),
        row(
            "a device bridge down for less than owner_timeout_ms keeps the weight; a cluster bridge does not count",
            vec![
                Connect(1, 1, true),
                At(2000),
                Weights(vec![]),
                Connect(0, 1, true),
                At(2100),
                Disconnect(0),
                At(3000),
                Connect(0, 2, true),
                Disconnect(1),
                At(9000),
                Weights(vec![3]),
            ],
        ),
    ]);
}
