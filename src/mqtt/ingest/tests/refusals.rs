//! Rows on proposals that do not commit: an unknown outcome, a batch the
//! leader refused before proposing it, no quorum, a refusal by the applier,
//! and the NOSPACE alarm (checked before proposing, or raised meanwhile).

use super::*;

/// A copy of an owned device proposed at 5 ms, then `answer`.
fn proposed_then(answer: Answer) -> Vec<Step> {
    let (a, _) = devices();
    vec![
        owners(1, &[1]),
        recv(a(1), 1),
        At(5),
        Proposed(0, 1, vec![(a(1), New)]),
        Answer(0, answer),
    ]
}

fn then(mut steps: Vec<Step>, more: Vec<Step>) -> Vec<Step> {
    steps.extend(more);
    steps
}

#[test]
fn failed_proposals_are_held_and_proposed_again() {
    let (a, _) = devices();
    run(vec![
        row(
            "outcome unknown: proposed again after the pause, as redelivered",
            then(
                proposed_then(Answer::OutcomeUnknown),
                vec![
                    At(104),
                    Proposals(1),
                    At(105),
                    Proposed(1, 1, vec![(a(1), Redelivered)]),
                    Acked(vec![]),
                ],
            ),
        ),
        row(
            "refused by the leader before proposing (forwarded, Invalid): proposed again as new",
            then(
                proposed_then(Answer::RefusedByLeader),
                vec![
                    At(104),
                    Proposals(1),
                    At(105),
                    Proposed(1, 1, vec![(a(1), New)]),
                    Pending(1),
                    Acked(vec![]),
                ],
            ),
        ),
        row(
            "no quorum: proposed again as new",
            then(
                proposed_then(Answer::Unavailable),
                vec![At(105), Proposed(1, 1, vec![(a(1), New)])],
            ),
        ),
        row(
            "refused by the applier: counted, proposed again",
            then(
                proposed_then(Answer::RejectedInvalid),
                vec![
                    Count("ingest_batches_refused_total", 1),
                    At(105),
                    Proposed(1, 1, vec![(a(1), New)]),
                ],
            ),
        ),
    ]);
}

#[test]
fn under_an_alarm_copies_are_held_unacknowledged_without_spinning() {
    let (a, _) = devices();
    run(vec![
        row(
            "NOSPACE: held, asked again after pauses doubling from 250 ms to 5 s, proposed after the disarm",
            vec![
                owners(1, &[1]),
                Alarm(true),
                recv(a(1), 1),
                At(4),
                AlarmReads(0),
                At(5),
                AlarmReads(1),
                Proposals(0),
                Count("ingest_alarm_pauses_total", 1),
                At(254),
                AlarmReads(1),
                At(255), // + 250
                AlarmReads(2),
                At(754),
                AlarmReads(2),
                At(755), // + 500
                At(1755),
                At(3755),
                At(7755),
                AlarmReads(6),
                At(12_754), // + 5000, the most
                AlarmReads(6),
                At(12_755),
                AlarmReads(7),
                Count("ingest_alarm_pauses_total", 7),
                Acked(vec![]),
                Pending(1),
                Alarm(false),
                At(17_755),
                AlarmReads(8),
                Proposed(0, 1, vec![(a(1), New)]),
                // A new alarm starts from the shortest pause again.
                Alarm(true),
                recv(a(2), 2),
                At(17_760),
                AlarmReads(9),
                At(18_009),
                AlarmReads(9),
                At(18_010),
                AlarmReads(10),
            ],
        ),
        row(
            "an alarm raised after the check: the refused batch is held and proposed again after the pause, as new",
            then(
                proposed_then(Answer::Alarm),
                vec![
                    Count("ingest_batches_refused_alarm_total", 1),
                    Count("ingest_alarm_pauses_total", 1),
                    At(254),
                    Proposals(1),
                    At(255),
                    Proposed(1, 1, vec![(a(1), New)]),
                    Acked(vec![]),
                ],
            ),
        ),
        row(
            "nothing to propose, nothing read",
            vec![owners(1, &[2]), recv(a(1), 1), At(100), At(200), AlarmReads(0)],
        ),
    ]);
}
