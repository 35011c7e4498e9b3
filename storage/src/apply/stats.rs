//! Applying statistics (seed 000's `stats` collection): one document per
//! (type, id), `${type}/${id}`, for devices, fellows and configurations.
//!
//! # What is counted
//!
//! Every count is part of an event's apply, with the event's time:
//!
//! | type | counter | counts as | source |
//! | --- | --- | --- | --- |
//! | device | `messages` | attempt | device data (an event, or an ingest item), a command reply |
//! | device | `messages_rejected` | failure | of those, the ones refused (invalid, over a quota or rate, refused by the class) |
//! | device | `commands` | attempt | a command published (`CommandAttempted`) |
//! | device | `commands_failed` | failure | a command given up (`CommandFailed`) |
//! | fellow | `proposals` | attempt | an entry the member appended as leader (its log id) |
//! | fellow | `proposals_rejected` | failure | of those, the ones applied as rejected |
//! | fellow | `elections` | - | the first entry of a term, by that term's leader |
//! | fellow | `messages_ingested` | - | ingest items applied from batches the member proposed |
//! | config | `syncs` | attempt | a member wrote an accepted file (`StatIncremented`) |
//! | config | `syncs_failed` | failure | the write failed |
//!
//! A `StatIncremented` event adds to its type's attempt or failure counter
//! above (device commands, fellow proposals, configuration syncs); of
//! another type, to the attempts or failures alone.
//!
//! # Days and averages
//!
//! The day of an event is its time (`Request::at_ms`) in UTC, never a
//! clock, so every replica computes the same bytes. A document keeps the
//! first day counted and the current day; an event on a later day resets
//! today's counts first, and an event whose time is before the current day
//! (a proposer's clock behind) counts into the current day. An average is
//! the total since the first day over the calendar periods from the first
//! day to the current one, both included, idle ones counted: days, ISO
//! weeks (Monday to Sunday), months and years. The state is bounded: a few
//! totals and today's counts per counter, two days, and
//! [`STATS_USED_MAX`] uses.
//!
//! Within one apply batch a document is read and decoded once and written
//! once (the batch's document cache), and an ingest batch counts each
//! device and its proposer once.

use utopia_raft::event::{Outcome, Request, StatCounter};

use super::documents::CachedBefore;
use super::{Applier, ApplyError, StateRead};
use crate::codec;
use crate::documents::{StatCount, StatPeriods, StatUse, Stats};
use crate::keys::{meta, Cf};

/// Uses kept in a stats document (the newest).
pub const STATS_USED_MAX: usize = 16;
/// Longest command recorded in a use; the rest is cut.
pub const STATS_COMMAND_BYTES_MAX: usize = 128;

const DAY_MS: u64 = 86_400_000;

/// A named counter, and whether it adds to the attempts or the failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counter {
    Messages,
    MessagesRejected,
    Commands,
    CommandsFailed,
    Proposals,
    ProposalsRejected,
    Elections,
    MessagesIngested,
    Syncs,
    SyncsFailed,
    /// `StatIncremented` of a type without named counters.
    Attempts,
    Failures,
}

impl Counter {
    fn name(self) -> Option<&'static str> {
        Some(match self {
            Counter::Messages => "messages",
            Counter::MessagesRejected => "messages_rejected",
            Counter::Commands => "commands",
            Counter::CommandsFailed => "commands_failed",
            Counter::Proposals => "proposals",
            Counter::ProposalsRejected => "proposals_rejected",
            Counter::Elections => "elections",
            Counter::MessagesIngested => "messages_ingested",
            Counter::Syncs => "syncs",
            Counter::SyncsFailed => "syncs_failed",
            Counter::Attempts | Counter::Failures => return None,
        })
    }

    fn is_attempt(self) -> bool {
        matches!(
            self,
            Counter::Messages
                | Counter::Commands
                | Counter::Proposals
                | Counter::Syncs
                | Counter::Attempts
        )
    }

    fn is_failure(self) -> bool {
        matches!(
            self,
            Counter::MessagesRejected
                | Counter::CommandsFailed
                | Counter::ProposalsRejected
                | Counter::SyncsFailed
                | Counter::Failures
        )
    }

    /// The counter a `StatIncremented` of `kind` adds to.
    fn of_event(kind: &str, counter: StatCounter) -> Counter {
        match (kind, counter) {
            ("device", StatCounter::Attempts) => Counter::Commands,
            ("device", StatCounter::Failures) => Counter::CommandsFailed,
            ("fellow", StatCounter::Attempts) => Counter::Proposals,
            ("fellow", StatCounter::Failures) => Counter::ProposalsRejected,
            ("config", StatCounter::Attempts) => Counter::Syncs,
            ("config", StatCounter::Failures) => Counter::SyncsFailed,
            (_, StatCounter::Attempts) => Counter::Attempts,
            (_, StatCounter::Failures) => Counter::Failures,
        }
    }
}

/// What one event (or one ingest batch) adds to one stats document.
#[derive(Debug, Default, Clone)]
pub(super) struct StatDelta {
    counts: Vec<(Counter, u64)>,
    used: Vec<String>,
}

impl StatDelta {
    pub(super) fn add(&mut self, counter: Counter, by: u64) -> &mut Self {
        if by == 0 {
            return self;
        }
        match self.counts.iter_mut().find(|(c, _)| *c == counter) {
            Some((_, n)) => *n = n.saturating_add(by),
            None => self.counts.push((counter, by)),
        }
        self
    }

    /// Records a use; only the newest [`STATS_USED_MAX`] are kept, and a
    /// use the same as the previous one in this delta is not repeated.
    pub(super) fn used(&mut self, command: impl Into<String>) -> &mut Self {
        let command = cut(command.into());
        if self.used.last() != Some(&command) {
            if self.used.len() == STATS_USED_MAX {
                self.used.remove(0);
            }
            self.used.push(command);
        }
        self
    }

    /// [`Self::used`] with `kind` and `what` joined, built only when it is
    /// not the use last recorded (a device's messages are mostly of the
    /// post type its message before had).
    pub(super) fn used_as(&mut self, kind: &str, what: &str) -> &mut Self {
        let repeated = kind.len() + what.len() <= STATS_COMMAND_BYTES_MAX
            && self.used.last().is_some_and(|last| {
                last.len() == kind.len() + what.len()
                    && last.starts_with(kind)
                    && last.ends_with(what)
            });
        if repeated {
            return self;
        }
        self.used([kind, what].concat())
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.used.is_empty()
    }
}

fn cut(mut s: String) -> String {
    if s.len() > STATS_COMMAND_BYTES_MAX {
        let mut end = STATS_COMMAND_BYTES_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub(super) fn apply_stat(
        &mut self,
        at_ms: u64,
        id: &str,
        kind: &str,
        counter: StatCounter,
        by: u64,
    ) -> Result<Outcome, ApplyError> {
        let counter = Counter::of_event(kind, counter);
        let mut delta = StatDelta::default();
        delta.add(counter, by);
        if let Some(name) = counter.name() {
            delta.used(name);
        }
        self.count_stats(at_ms, kind, id, &delta)?;
        Ok(Outcome::Done)
    }

    /// Adds `delta` to the stats document of (`kind`, `id`) at `at_ms`.
    pub(super) fn count_stats(
        &mut self,
        at_ms: u64,
        kind: &str,
        id: &str,
        delta: &StatDelta,
    ) -> Result<(), ApplyError> {
        if delta.is_empty() {
            return Ok(());
        }
        let doc_id = format!("{kind}/{id}");
        // Counted in place in the batch's cache: decoded once, encoded
        // once when the batch finishes. A stats document is bounded by
        // construction (a few counters, `STATS_USED_MAX` uses of at most
        // `STATS_COMMAND_BYTES_MAX` bytes), so it skips the size check.
        let (mut stats, cached) = match self.docs.stats.remove(&doc_id) {
            Some(stats) => (stats, true),
            None => {
                let stats = self.get_doc::<Stats>(&doc_id)?.unwrap_or_else(|| Stats {
                    id: id.to_string(),
                    kind: kind.to_string(),
                    ..Default::default()
                });
                (stats, false)
            }
        };
        if self.journal {
            let before = cached.then(|| stats.clone());
            self.undo
                .docs
                .push(CachedBefore::Stats(doc_id.clone(), before));
        }
        count(&mut stats, at_ms, delta);
        self.docs.stats.insert(doc_id, stats);
        Ok(())
    }

    /// Counts a log entry applied with `response`, written by `leader` in
    /// `term`: a proposal of that member, and its election when it is the
    /// first entry of its term. Terms only grow along a log, so "another
    /// term than the last entry's" is "a new term"; it also holds in a
    /// cluster restored from a backup, whose terms start again while the
    /// restored state remembers the old cluster's last term.
    pub(super) fn count_entry(
        &mut self,
        term: u64,
        leader: u64,
        req: &Request,
        outcome: &Outcome,
    ) -> Result<(), ApplyError> {
        let counted = match self.stats_term {
            Some(term) => term,
            None => self.get_dec(Cf::SmMeta, meta::STATS_TERM)?.unwrap_or(0),
        };
        self.stats_term = Some(term);
        let mut delta = StatDelta::default();
        if term != counted {
            self.put(Cf::SmMeta, meta::STATS_TERM.to_vec(), codec::encode(&term));
            delta
                .add(Counter::Elections, 1)
                .used(format!("election/{term}"));
        }
        delta.add(Counter::Proposals, 1);
        if matches!(outcome, Outcome::Rejected(_)) {
            delta.add(Counter::ProposalsRejected, 1);
        }
        self.count_stats(req.at_ms, "fellow", &leader.to_string(), &delta)
    }
}

/// Adds `delta` at `at_ms`: rolls the day over, adds, recomputes.
fn count(stats: &mut Stats, at_ms: u64, delta: &StatDelta) {
    upgrade(stats);
    let event_day = at_ms / DAY_MS;
    let first = *stats.first_day.get_or_insert(event_day);
    if stats.day < first {
        stats.day = first;
    }
    if event_day > stats.day {
        stats.day = event_day;
        stats.today_attempts = 0;
        stats.today_failures = 0;
        for c in stats.counters.values_mut() {
            c.today = 0;
        }
    }
    for &(counter, by) in &delta.counts {
        if counter.is_attempt() {
            stats.total_attempts = stats.total_attempts.saturating_add(by);
            stats.today_attempts = stats.today_attempts.saturating_add(by);
        }
        if counter.is_failure() {
            stats.total_failures = stats.total_failures.saturating_add(by);
            stats.today_failures = stats.today_failures.saturating_add(by);
        }
        if let Some(name) = counter.name() {
            let c = stats.counters.entry(name.to_string()).or_default();
            c.total = c.total.saturating_add(by);
            c.today = c.today.saturating_add(by);
        }
    }
    for command in &delta.used {
        stats.used.push(StatUse {
            at_ms,
            command: command.clone(),
        });
    }
    let excess = stats.used.len().saturating_sub(STATS_USED_MAX);
    stats.used.drain(..excess);
    stats.used_ms = stats.used_ms.max(at_ms);
    recompute(stats, first);
}

/// A document of a build that kept per-day counts: its days become the
/// totals, its first day the first day, its last day the current one.
fn upgrade(stats: &mut Stats) {
    let Some(days) = stats.days.take() else {
        return;
    };
    stats.total_attempts = days.iter().fold(0u64, |n, d| n.saturating_add(d.attempts));
    stats.total_failures = days.iter().fold(0u64, |n, d| n.saturating_add(d.failures));
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        stats.first_day = Some(first.day);
        stats.day = last.day;
        stats.today_attempts = last.attempts;
        stats.today_failures = last.failures;
    }
}

fn recompute(stats: &mut Stats, first: u64) {
    let p = periods(first, stats.day);
    let avg = |total: u64, n: u64| total as f64 / n.max(1) as f64;
    stats.daily_attempts = avg(stats.total_attempts, p.days);
    stats.weekly_attempts = avg(stats.total_attempts, p.weeks);
    stats.monthly_attempts = avg(stats.total_attempts, p.months);
    stats.yearly_attempts = avg(stats.total_attempts, p.years);
    stats.daily_failures = avg(stats.total_failures, p.days);
    stats.weekly_failures = avg(stats.total_failures, p.weeks);
    stats.monthly_failures = avg(stats.total_failures, p.months);
    stats.yearly_failures = avg(stats.total_failures, p.years);
    // The dates change with the periods (a new day), not with every event.
    if stats.periods != p || stats.since.is_none() || stats.date.is_none() {
        stats.since = Some(date(first));
        stats.date = Some(date(stats.day));
        stats.periods = p;
    }
    for c in stats.counters.values_mut() {
        *c = StatCount {
            today: c.today,
            total: c.total,
            daily: avg(c.total, p.days),
            weekly: avg(c.total, p.weeks),
            monthly: avg(c.total, p.months),
            yearly: avg(c.total, p.years),
        };
    }
}

/// The calendar periods from day `first` to day `last` (days since
/// 1970-01-01, `first <= last`), both included.
pub(crate) fn periods(first: u64, last: u64) -> StatPeriods {
    let (y1, m1, _) = civil(first);
    let (y2, m2, _) = civil(last);
    StatPeriods {
        days: last - first + 1,
        weeks: iso_week(last) - iso_week(first) + 1,
        months: (y2 * 12 + u64::from(m2)) - (y1 * 12 + u64::from(m1)) + 1,
        years: y2 - y1 + 1,
    }
}

/// The number of the ISO week (Monday to Sunday) holding `day`, counted
/// from the week of 1970-01-01 (a Thursday).
fn iso_week(day: u64) -> u64 {
    (day + 3) / 7
}

/// The (year, month, day) of `days` since 1970-01-01 in the proleptic
/// Gregorian calendar (H. Hinnant's `civil_from_days`).
pub(crate) fn civil(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn date(day: u64) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_and_periods() {
        assert_eq!(civil(0), (1970, 1, 1));
        // 2028-02-29, a leap day; 2029-01-01.
        assert_eq!(date(21_243), "2028-02-29");
        assert_eq!(date(21_550), "2029-01-01");
        assert_eq!(date(11_016), "2000-02-29");
        // 1970-01-04 (Sunday) and 01-05 (Monday) are in two ISO weeks.
        assert_eq!(iso_week(3), 0);
        assert_eq!(iso_week(4), 1);
        let p = periods(21_242, 21_244);
        assert_eq!((p.days, p.weeks, p.months, p.years), (3, 1, 2, 1));
    }

    #[test]
    fn uses_in_a_delta_are_bounded_and_cut() {
        let mut d = StatDelta::default();
        for i in 0..40 {
            d.used(format!("c{i}"));
        }
        d.used("x".repeat(300));
        assert_eq!(d.used.len(), STATS_USED_MAX);
        assert_eq!(d.used.last().unwrap().len(), STATS_COMMAND_BYTES_MAX);
    }

    #[test]
    fn a_use_given_in_parts_is_recorded_as_the_joined_use_would_be() {
        let long = "y".repeat(300);
        let uses = [
            ("data/", "temp"),
            ("data/", "temp"),
            ("data/", "hum"),
            ("rejected/", "temp"),
            ("data/", "temp"),
            ("dat", "a/temp"),
            ("data/", long.as_str()),
            ("data/", long.as_str()),
            ("data/", &long[..200]),
        ];
        let (mut parts, mut joined) = (StatDelta::default(), StatDelta::default());
        for (kind, what) in uses {
            parts.used_as(kind, what);
            joined.used(format!("{kind}{what}"));
        }
        assert_eq!(parts.used, joined.used);
        assert_eq!(parts.used.len(), 5, "{:?}", parts.used);
    }
}
