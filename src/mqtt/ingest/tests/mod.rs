//! Table-driven tests of the ingest core: each row is a script of inputs
//! (messages, commits, owners, answers, time) and of what must hold after
//! them (proposals, acknowledgements, counters, the weight), run against a
//! simulated store, broker connection and Raft (`sim.rs`).

mod sim;

use sim::{device_owned_by, Answer, Item, Read, Sim};

use crate::config::mqtt::IngestSettings;
use crate::mqtt::bridge::BridgeEvent;

#[derive(Debug, Clone)]
enum Step {
    /// Time moves to this monotonic ms (the wall clock alike); a tick.
    At(u64),
    /// New owners in the store; `applied`: their event is applied here
    /// (else this node has not applied it yet).
    Owners(u64, Vec<u64>, bool),
    /// New owners, applied here, whose second list is excluded from the
    /// devices' class.
    OwnersExcluding(u64, Vec<u64>, Vec<u64>),
    /// Bridge, generation, and whether the core has heard of it yet.
    Connect(usize, u64, bool),
    Disconnect(usize),
    /// A device message by number, its packet id, and the DUP flag.
    Recv(u32, u16, bool),
    RecvRaw(&'static str, &'static [u8], u16),
    /// A batch committing these messages is applied here.
    Apply(Vec<u32>),
    ApplyCommands,
    /// The store records these commits; this node has not seen them.
    StoreCommits(Vec<u32>),
    Answer(usize, Answer),
    Alarm(bool),
    FeedLagged,
    Hold(Read),
    Release(Read),
    // ---- what must hold now
    /// Proposal `i`: its epoch and items.
    Proposed(usize, u64, Vec<(u32, Item)>),
    /// How many proposals so far.
    Proposals(usize),
    /// The acknowledgements that reached the broker since the last check.
    Acked(Vec<u16>),
    Count(&'static str, u64),
    Pending(u64),
    Room(bool),
    /// Every weight asked for so far.
    Weights(Vec<u32>),
    AlarmReads(u64),
    /// Digests looked up in the store's dedupe records so far.
    Lookups(u64),
    CommandsChanged(u64),
}
use Step::*;

use Item::{Dropped, New, Redelivered};

fn recv(m: u32, pkid: u16) -> Step {
    Recv(m, pkid, false)
}

fn dup(m: u32, pkid: u16) -> Step {
    Recv(m, pkid, true)
}

fn owners(epoch: u64, ids: &[u64]) -> Step {
    Owners(epoch, ids.to_vec(), true)
}

fn settings() -> IngestSettings {
    IngestSettings {
        payload_bytes_max: 1024,
        batch_messages_max: 4,
        batch_linger_ms: 5,
        pending_messages_max: 64,
        dedupe_window_ms: 60_000,
        owner_timeout_ms: 1_000,
        weight: 3,
        device_messages_per_s_max: 1_000,
    }
}

struct Row {
    name: &'static str,
    settings: IngestSettings,
    steps: Vec<Step>,
}

fn row(name: &'static str, steps: Vec<Step>) -> Row {
    Row {
        name,
        settings: settings(),
        steps,
    }
}

fn row_with(name: &'static str, change: impl FnOnce(&mut IngestSettings), steps: Vec<Step>) -> Row {
    let mut s = settings();
    change(&mut s);
    Row {
        name,
        settings: s,
        steps,
    }
}

fn run(rows: Vec<Row>) {
    for r in rows {
        let mut sim = Sim::new(r.settings.clone());
        let mut weights = Vec::new();
        for (i, step) in r.steps.iter().enumerate() {
            let at = format!("row {:?}, step {i} ({step:?})", r.name);
            let before = sim.weight;
            match step.clone() {
                At(ms) => sim.at(ms),
                Owners(epoch, ids, applied) => sim.set_owners(epoch, &ids, applied),
                OwnersExcluding(epoch, ids, excluded) => {
                    sim.set_owners_excluding(epoch, &ids, &excluded, true)
                }
                Connect(bridge, generation, told) => sim.connect(bridge, generation, told),
                Disconnect(bridge) => sim.bridge_event(BridgeEvent::Disconnected {
                    bridge,
                    error: "connection reset".into(),
                }),
                Recv(m, pkid, dup) => sim.receive_m(m, pkid, dup),
                RecvRaw(topic, payload, pkid) => {
                    sim.receive(topic.into(), payload.to_vec(), pkid, false)
                }
                Apply(ms) => sim.apply(&ms, false, false),
                ApplyCommands => sim.apply(&[], false, true),
                StoreCommits(ms) => sim.store_commits(&ms),
                Answer(p, a) => sim.answer(p, a),
                Alarm(active) => sim.alarm = active,
                FeedLagged => sim.feed_lagged(),
                Hold(read) => sim.holding.push(read),
                Release(read) => sim.release(read),
                Proposed(p, epoch, items) => {
                    assert_eq!(sim.proposal(p), Some((epoch, items)), "{at}")
                }
                Proposals(n) => assert_eq!(sim.proposals.len(), n, "{at}"),
                Acked(pkids) => assert_eq!(std::mem::take(&mut sim.acked), pkids, "{at}"),
                Count(name, n) => assert_eq!(sim.counter(name), n, "{at}: {:?}", sim.counters),
                Pending(n) => assert_eq!(sim.core.gauges().pending_messages, n, "{at}"),
                Room(room) => assert_eq!(sim.core.has_room(), room, "{at}"),
                Weights(w) => assert_eq!(weights, w, "{at}"),
                AlarmReads(n) => assert_eq!(sim.alarm_reads, n, "{at}"),
                Lookups(n) => assert_eq!(sim.lookups, n, "{at}"),
                CommandsChanged(n) => assert_eq!(sim.commands_changed, n, "{at}"),
            }
            if sim.weight != before {
                weights.push(sim.weight);
            }
        }
    }
}

/// Messages of a device this node owns when members 1 and 2 share the
/// devices (`a(1)`, `a(2)`, ...), and of one node 2 owns then.
fn devices() -> (impl Fn(u32) -> u32, impl Fn(u32) -> u32) {
    let a = device_owned_by(1, &[1, 2]);
    let b = device_owned_by(2, &[1, 2]);
    (move |k| a * 100 + k, move |k| b * 100 + k)
}

#[test]
fn owned_copies_are_batched_proposed_and_acknowledged_only_once_applied() {
    let (a, _) = devices();
    let mut many = vec![owners(1, &[1])];
    for k in 1..=20 {
        many.push(recv(a(k), k as u16));
    }
    many.extend([
        Proposals(4),
        Pending(20),
        Answer(0, Answer::Ingested),
        Proposals(5),
        Proposed(4, 1, (17..=20).map(|k| (a(k), New)).collect()),
        Acked(vec![]),
        Apply(vec![a(1), a(2), a(3), a(4)]),
        Acked(vec![1, 2, 3, 4]),
        Pending(16),
        Count("ingest_batches_total", 5),
        Count("ingest_batch_messages_total", 20),
    ]);
    run(vec![
        row(
            "a partial batch waits batch_linger_ms; acknowledged once applied, not once answered",
            vec![
                owners(1, &[1]),
                Connect(0, 1, true),
                recv(a(1), 1),
                At(4),
                Proposals(0),
                At(5),
                Proposed(0, 1, vec![(a(1), New)]),
                Answer(0, Answer::Ingested),
                Acked(vec![]),
                Pending(1),
                Apply(vec![a(1)]),
                Acked(vec![1]),
                Pending(0),
                Count("mqtt_messages_received_total", 1),
            ],
        ),
        row(
            "a full batch goes at once; at most four are unanswered",
            many,
        ),
        row(
            "only the owner proposes; the others hold their copies until the commit",
            {
                let (a, b) = devices();
                vec![
                    owners(1, &[1, 2]),
                    recv(a(1), 1),
                    recv(b(1), 2),
                    At(5),
                    Proposed(0, 1, vec![(a(1), New)]),
                    Proposals(1),
                    Pending(2),
                    Apply(vec![b(1)]),
                    Acked(vec![2]),
                    Pending(1),
                ]
            },
        ),
        row(
            "a member excluded from a class proposes none of its devices; another takes them",
            {
                let (a, b) = devices();
                vec![
                    OwnersExcluding(1, vec![1, 2], vec![2]),
                    recv(a(1), 1),
                    recv(b(1), 2),
                    At(5),
                    Proposed(0, 1, vec![(a(1), New), (b(1), New)]),
                    Proposals(1),
                ]
            },
        ),
        row(
            "this member excluded: it holds every copy until another commits it",
            {
                let (a, b) = devices();
                vec![
                    OwnersExcluding(1, vec![1, 2], vec![1]),
                    recv(a(1), 1),
                    recv(b(1), 2),
                    At(5),
                    Proposals(0),
                    Pending(2),
                    Apply(vec![a(1)]),
                    Acked(vec![1]),
                ]
            },
        ),
        row(
            "every member excluded: ownership as without exclusions",
            {
                let (a, b) = devices();
                vec![
                    OwnersExcluding(1, vec![1, 2], vec![1, 2]),
                    recv(a(1), 1),
                    recv(b(1), 2),
                    At(5),
                    Proposed(0, 1, vec![(a(1), New)]),
                    Proposals(1),
                ]
            },
        ),
        row_with(
            "the pending bound: no room at pending_messages_max, room again after a commit",
            |s| s.pending_messages_max = 3,
            vec![
                owners(1, &[2]),
                recv(a(1), 1),
                recv(a(2), 2),
                Room(true),
                recv(a(3), 3),
                Room(false),
                Pending(3),
                Apply(vec![a(2)]),
                Acked(vec![2]),
                Room(true),
                Pending(2),
            ],
        ),
        row_with(
            "a device over its rate: the owner records the excess as dropped, every node counts it",
            |s| s.device_messages_per_s_max = 2,
            vec![
                owners(1, &[1]),
                recv(a(1), 1),
                recv(a(2), 2),
                recv(a(3), 3),
                recv(a(4), 4),
                Proposed(
                    0,
                    1,
                    vec![(a(1), New), (a(2), New), (a(3), Dropped), (a(4), Dropped)],
                ),
                Count("mqtt_rejected_total{reason=\"device_rate\"}", 2),
                At(1000),
                recv(a(5), 5),
                At(1005),
                Proposed(1, 1, vec![(a(5), New)]),
                Count("mqtt_rejected_total{reason=\"device_rate\"}", 2),
            ],
        ),
        row(
            "cluster topics, commands and bad messages are acknowledged at once; valid traffic beside them is held",
            vec![
                owners(1, &[2]),
                RecvRaw("/utopia/host1", b"hello", 1),
                RecvRaw("/h/z/c/1/cmd/reboot", b"{}", 2),
                RecvRaw("/h/z/c/1/t", b"{bad", 3),
                RecvRaw("/h/z/c", b"1", 4),
                RecvRaw("/h/z/c/1/t", b"21.5", 5),
                Acked(vec![1, 2, 3, 4]),
                Pending(1),
                Count("mqtt_messages_received_total", 5),
                Count("mqtt_cluster_messages_total", 1),
                Count("mqtt_rejected_total{reason=\"bad_json\"}", 1),
                Count("mqtt_rejected_total{reason=\"topic_too_few_levels\"}", 1),
            ],
        ),
        row(
            "a batch that changed commands wakes the command driver",
            vec![ApplyCommands, CommandsChanged(1)],
        ),
    ]);
}

mod ownership;
mod redelivery;
mod refusals;
