//! Applying statistics: per-day counts in a stats document, and the
//! aggregates seed 000 asks for derived from them.

use utopia_raft::event::{Outcome, StatCounter};

use super::{Applier, ApplyError, StateRead};
use crate::documents::{OtherFields, StatDay, Stats};

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub(super) fn apply_stat(
        &mut self,
        at_ms: u64,
        id: &str,
        kind: &str,
        counter: StatCounter,
        by: u64,
    ) -> Result<Outcome, ApplyError> {
        let doc_id = format!("{kind}/{id}");
        let mut stats = self.get_doc::<Stats>(&doc_id)?.unwrap_or_else(|| Stats {
            id: id.to_string(),
            kind: kind.to_string(),
            ..Default::default()
        });
        let day = at_ms / 86_400_000;
        match stats.days.last_mut() {
            Some(last) if last.day == day => bump(last, counter, by),
            _ => {
                let mut d = StatDay {
                    day,
                    attempts: 0,
                    failures: 0,
                    other: OtherFields::new(),
                };
                bump(&mut d, counter, by);
                stats.days.push(d);
                let excess = stats.days.len().saturating_sub(self.limits.stat_days_max);
                stats.days.drain(..excess);
            }
        }
        stats.used_ms = at_ms;
        recompute(&mut stats, day);
        self.put_doc(&doc_id, stats)?;
        Ok(Outcome::Done)
    }
}

fn bump(day: &mut StatDay, counter: StatCounter, by: u64) {
    match counter {
        StatCounter::Attempts => day.attempts = day.attempts.saturating_add(by),
        StatCounter::Failures => day.failures = day.failures.saturating_add(by),
    }
}

/// The aggregates, from the days kept, as of day `today`.
fn recompute(stats: &mut Stats, today: u64) {
    let sum = |window: u64| {
        stats
            .days
            .iter()
            .filter(|d| d.day + window > today)
            .fold((0u64, 0u64), |acc, d| {
                (
                    acc.0.saturating_add(d.attempts),
                    acc.1.saturating_add(d.failures),
                )
            })
    };
    let (ta, tf) = sum(1);
    let (wa, wf) = sum(7);
    let (ma, mf) = sum(30);
    let (ya, yf) = sum(365);
    let n = stats.days.len().max(1) as f64;
    let (all_a, all_f) = sum(u64::MAX / 2);
    stats.today_attempts = ta;
    stats.today_failures = tf;
    stats.weekly_attempts = wa;
    stats.weekly_failures = wf;
    stats.monthly_attempts = ma;
    stats.monthly_failures = mf;
    stats.yearly_attempts = ya;
    stats.yearly_failures = yf;
    stats.daily_attempts = all_a as f64 / n;
    stats.daily_failures = all_f as f64 / n;
}
