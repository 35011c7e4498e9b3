//! Seed 000's statistics, applied by the real state machine from log
//! entries: today's counts roll over at UTC midnight of the time carried
//! in the event, and the averages divide the totals by the calendar days,
//! ISO weeks, months and years since the first counted day, idle ones
//! included (README, "Statistics").

use openraft::vote::leader_id_adv::LeaderId;
use serde_json::Value;
use utopia_raft::event::{
    Bytes, DeviceData, Event, IngestBody, IngestItem, IngestMember, Request, StatCounter,
};
use utopia_raft::openraft_api::{EntryOf, EntryPayload, LogIdOf, RaftStateMachine};
use utopia_raft::TypeConfig;
use utopia_storage::keys::Collection;

const DAY_MS: u64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `hh:mm` UTC on a date, in milliseconds since the epoch.
fn at(y: i64, m: i64, d: i64, hh: u64, mm: u64) -> u64 {
    days(y, m, d) as u64 * DAY_MS + (hh * 60 + mm) * 60_000
}

struct Log {
    _dir: tempfile::TempDir,
    store: utopia_storage::OpenedStore,
    index: u64,
}

impl Log {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = utopia_storage::open(dir.path()).unwrap();
        Self {
            _dir: dir,
            store,
            index: 0,
        }
    }

    /// Appends and applies, in one apply call, events written by `leader`
    /// in `term`.
    async fn apply_as(&mut self, term: u64, leader: u64, events: Vec<(u64, Event)>) {
        let entries: Vec<_> = events
            .into_iter()
            .map(|(at_ms, e)| {
                self.index += 1;
                let entry = EntryOf::<TypeConfig> {
                    log_id: LogIdOf::<TypeConfig>::new(
                        LeaderId {
                            term,
                            node_id: leader,
                        },
                        self.index,
                    ),
                    payload: EntryPayload::Normal(Request::new(at_ms, e)),
                };
                Ok((entry, None))
            })
            .collect();
        self.store
            .state_machine
            .apply(futures::stream::iter(entries))
            .await
            .unwrap();
    }

    async fn apply(&mut self, events: Vec<(u64, Event)>) {
        self.apply_as(1, 1, events).await;
    }

    fn stats(&self, kind: &str, id: &str) -> Value {
        let text = self
            .store
            .reader
            .get_document(Collection::Stats, &format!("{kind}/{id}"), 1 << 20)
            .unwrap()
            .unwrap_or_else(|| panic!("no stats document {kind}/{id}"));
        serde_json::from_str(&text).unwrap()
    }
}

fn data(device_id: &str, post: &str) -> DeviceData {
    DeviceData {
        host: "gw".into(),
        zone: "hall".into(),
        class: "thermo".into(),
        device_id: device_id.into(),
        post_type: post.into(),
        path: Vec::new(),
        json: "21.5".into(),
    }
}

fn message(device_id: &str) -> Event {
    Event::DeviceDataUpdated(data(device_id, "temp"))
}

fn stat(kind: &str, id: &str, counter: StatCounter) -> Event {
    Event::StatIncremented {
        id: id.into(),
        kind: kind.into(),
        counter,
        by: 1,
    }
}

/// The fields every test reads: today, the averages, and the dates.
#[track_caller]
fn assert_attempts(s: &Value, today: u64, total: u64, avg: [f64; 4], date: &str) {
    assert_eq!(s["today_attempts"], today, "{s}");
    assert_eq!(s["total_attempts"], total, "{s}");
    let got = [
        s["daily_attempts"].as_f64().unwrap(),
        s["weekly_attempts"].as_f64().unwrap(),
        s["monthly_attempts"].as_f64().unwrap(),
        s["yearly_attempts"].as_f64().unwrap(),
    ];
    // serde_json reads a float back to within an ulp.
    let close = got
        .iter()
        .zip(avg)
        .all(|(g, w)| (g - w).abs() <= w.abs() * 1e-12);
    assert!(
        close,
        "daily, weekly, monthly, yearly {got:?}, want {avg:?}: {s}"
    );
    assert_eq!(s["date"], date, "{s}");
}

#[tokio::test]
async fn a_leap_day_is_a_day_and_idle_days_count() {
    let mut log = Log::new();
    // 2028-02-28 is a Monday: two messages.
    log.apply(vec![
        (at(2028, 2, 28, 9, 0), message("1")),
        (at(2028, 2, 28, 23, 59), message("1")),
    ])
    .await;
    let s = log.stats("device", "gw/thermo/1");
    assert_attempts(&s, 2, 2, [2.0, 2.0, 2.0, 2.0], "2028-02-28");
    assert_eq!(s["since"], "2028-02-28");
    // The leap day: a new day, the same week, month and year.
    log.apply(vec![(at(2028, 2, 29, 0, 0), message("1"))]).await;
    let s = log.stats("device", "gw/thermo/1");
    assert_attempts(&s, 1, 3, [1.5, 3.0, 3.0, 3.0], "2028-02-29");
    // 03-01 is the third day (in 2027 it would be the second), in March.
    log.apply(vec![
        (at(2028, 3, 1, 12, 0), message("1")),
        (at(2028, 3, 1, 12, 1), message("1")),
        (at(2028, 3, 1, 12, 2), message("1")),
    ])
    .await;
    let s = log.stats("device", "gw/thermo/1");
    assert_attempts(&s, 3, 6, [2.0, 6.0, 3.0, 6.0], "2028-03-01");
    assert_eq!(s["counters"]["messages"]["total"], 6, "{s}");
    assert_eq!(s["counters"]["messages"]["today"], 3, "{s}");
    // Sunday 03-05 is the same ISO week; Monday 03-06 the next one. The
    // idle days between count.
    log.apply(vec![(at(2028, 3, 5, 23, 59), message("1"))])
        .await;
    let s = log.stats("device", "gw/thermo/1");
    assert_attempts(&s, 1, 7, [1.0, 7.0, 3.5, 7.0], "2028-03-05");
    log.apply(vec![(at(2028, 3, 6, 0, 0), message("1"))]).await;
    let s = log.stats("device", "gw/thermo/1");
    assert_attempts(&s, 1, 8, [8.0 / 8.0, 4.0, 4.0, 8.0], "2028-03-06");
    assert_eq!(s["today_failures"], 0, "{s}");
    assert_eq!(s["daily_failures"].as_f64(), Some(0.0), "{s}");
}

#[tokio::test]
async fn new_year_rolls_day_week_month_and_year_at_once() {
    let mut log = Log::new();
    // Sunday 2028-12-31, then Monday 2029-01-01: one batch across midnight.
    log.apply(vec![
        (at(2028, 12, 31, 23, 0), message("9")),
        (at(2028, 12, 31, 23, 59), message("9")),
        (at(2028, 12, 31, 23, 59) + 59_999, message("9")),
        (at(2029, 1, 1, 0, 0), message("9")),
    ])
    .await;
    let s = log.stats("device", "gw/thermo/9");
    assert_attempts(&s, 1, 4, [2.0, 2.0, 2.0, 2.0], "2029-01-01");
    assert_eq!(s["since"], "2028-12-31");
    // A year later, on 2030-01-01: 367 days, 54 ISO weeks (2028-W52 ..
    // 2030-W01), 14 months, 3 years.
    log.apply(vec![(at(2030, 1, 1, 8, 0), message("9"))]).await;
    let s = log.stats("device", "gw/thermo/9");
    assert_attempts(
        &s,
        1,
        5,
        [5.0 / 367.0, 5.0 / 54.0, 5.0 / 14.0, 5.0 / 3.0],
        "2030-01-01",
    );
}

#[tokio::test]
async fn month_rollover_and_a_clock_behind_does_not_roll_back() {
    let mut log = Log::new();
    log.apply(vec![
        (
            at(2027, 1, 31, 12, 0),
            stat("config", "thermo", StatCounter::Attempts),
        ),
        (
            at(2027, 1, 31, 12, 0),
            stat("config", "thermo", StatCounter::Failures),
        ),
        (
            at(2027, 2, 1, 0, 0),
            stat("config", "thermo", StatCounter::Attempts),
        ),
    ])
    .await;
    let s = log.stats("config", "thermo");
    // 2027-01-31 is a Sunday, 02-01 a Monday: two weeks, two months.
    assert_attempts(&s, 1, 2, [1.0, 1.0, 1.0, 2.0], "2027-02-01");
    assert_eq!(s["today_failures"], 0, "{s}");
    assert_eq!(s["total_failures"], 1, "{s}");
    assert_eq!(s["daily_failures"].as_f64(), Some(0.5), "{s}");
    assert_eq!(s["counters"]["syncs"]["total"], 2, "{s}");
    assert_eq!(s["counters"]["syncs_failed"]["total"], 1, "{s}");
    // A proposer whose clock is a day behind: counted into the current
    // day, never back into an earlier one.
    log.apply(vec![(
        at(2027, 1, 31, 23, 0),
        stat("config", "thermo", StatCounter::Attempts),
    )])
    .await;
    let s = log.stats("config", "thermo");
    assert_attempts(&s, 2, 3, [1.5, 1.5, 1.5, 3.0], "2027-02-01");
    let used: Vec<&str> = s["used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["command"].as_str().unwrap())
        .collect();
    assert_eq!(used, ["syncs", "syncs_failed", "syncs", "syncs"], "{s}");
}

#[tokio::test]
async fn commands_are_attempts_and_failures_of_their_device_and_used_is_bounded() {
    let mut log = Log::new();
    let t = at(2028, 6, 1, 10, 0);
    log.apply(vec![(t, message("5"))]).await;
    let mut events = Vec::new();
    for id in 1..=20u64 {
        events.push((
            t + id,
            Event::CommandIssued {
                device: "gw/thermo/5".into(),
                post_type: "set".into(),
                json: "1".into(),
                attempts_max: 1,
            },
        ));
        events.push((t + id, Event::CommandAttempted { id, attempt: 1 }));
    }
    events.push((
        t + 100,
        Event::CommandFailed {
            id: 20,
            reason: "no reply".into(),
        },
    ));
    log.apply(events).await;
    let s = log.stats("device", "gw/thermo/5");
    assert_eq!(s["today_attempts"], 21, "{s}");
    assert_eq!(s["today_failures"], 1, "{s}");
    assert_eq!(s["counters"]["commands"]["total"], 20, "{s}");
    assert_eq!(s["counters"]["commands_failed"]["total"], 1, "{s}");
    assert_eq!(s["counters"]["messages"]["total"], 1, "{s}");
    let used = s["used"].as_array().unwrap();
    // `STATS_USED_MAX`.
    assert_eq!(used.len(), 16, "{s}");
    // Newest last: the failure, after the last attempts.
    assert_eq!(used.last().unwrap()["command"], "command/20/failed", "{s}");
    assert_eq!(used.last().unwrap()["at_ms"], t + 100, "{s}");
    assert_eq!(used[used.len() - 2]["command"], "command/20", "{s}");
    // The device document points to this one.
    let device = log
        .store
        .reader
        .get_document(Collection::Devices, "gw/thermo/5", 1 << 20)
        .unwrap()
        .unwrap();
    assert!(
        device.contains(r#""stats":"device/gw/thermo/5""#),
        "{device}"
    );
}

#[tokio::test]
async fn fellows_count_proposals_elections_and_the_messages_they_ingest() {
    let mut log = Log::new();
    let t = at(2028, 2, 29, 12, 0);
    let item = |n: u8, device_id: &str| IngestItem {
        digest: Bytes::from(vec![n; 16]),
        redelivered: false,
        body: IngestBody::Data(data(device_id, "temp")),
    };
    let bad = IngestItem {
        digest: Bytes::from(vec![99; 16]),
        redelivered: false,
        body: IngestBody::Data(DeviceData {
            json: "{not json".into(),
            ..data("3", "temp")
        }),
    };
    // Node 2 leads term 4: its entries are its proposals, its first is its
    // election. Node 1 owns every topic and proposes the batch.
    log.apply_as(
        4,
        2,
        vec![
            (
                t,
                Event::IngestOwnersChanged {
                    epoch: 1,
                    members: vec![IngestMember {
                        node_id: 1,
                        weight: 1,
                    }],
                    dedupe_window_ms: 60_000,
                },
            ),
            (t, message("3")),
            (
                t + 1,
                Event::IngestBatch {
                    epoch: 1,
                    proposer: 1,
                    items: vec![item(1, "3"), item(2, "3"), item(3, "4"), bad],
                },
            ),
        ],
    )
    .await;
    let leader = log.stats("fellow", "2");
    assert_eq!(leader["counters"]["proposals"]["total"], 3, "{leader}");
    assert_eq!(leader["counters"]["elections"]["total"], 1, "{leader}");
    assert_eq!(leader["today_attempts"], 3, "{leader}");
    let owner = log.stats("fellow", "1");
    assert_eq!(
        owner["counters"]["messages_ingested"]["total"], 3,
        "{owner}"
    );
    let d3 = log.stats("device", "gw/thermo/3");
    assert_eq!(d3["counters"]["messages"]["total"], 4, "{d3}");
    assert_eq!(d3["counters"]["messages_rejected"]["total"], 1, "{d3}");
    assert_eq!(d3["today_failures"], 1, "{d3}");
    let d4 = log.stats("device", "gw/thermo/4");
    assert_eq!(d4["counters"]["messages"]["total"], 1, "{d4}");
    // More entries in the same term are no new election; a new term is.
    log.apply_as(4, 2, vec![(t + 2, message("3"))]).await;
    log.apply_as(5, 3, vec![(t + DAY_MS, message("3"))]).await;
    let leader = log.stats("fellow", "2");
    assert_eq!(leader["counters"]["proposals"]["total"], 4, "{leader}");
    assert_eq!(leader["counters"]["elections"]["total"], 1, "{leader}");
    let next = log.stats("fellow", "3");
    assert_eq!(next["counters"]["elections"]["total"], 1, "{next}");
    assert_eq!(next["date"], "2028-03-01", "{next}");
    let used: Vec<&str> = next["used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["command"].as_str().unwrap())
        .collect();
    assert_eq!(used, ["election/5"], "{next}");
    // A cluster restored from a backup starts its terms again, over a
    // state that remembers term 5: its first term is still an election.
    log.apply_as(1, 2, vec![(t + DAY_MS, message("3"))]).await;
    let restored = log.stats("fellow", "2");
    assert_eq!(restored["counters"]["elections"]["total"], 2, "{restored}");
}
