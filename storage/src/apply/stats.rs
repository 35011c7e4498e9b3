//! Applying statistics: per-day counts in a stats document, and the
//! aggregates seed 000 asks for derived from them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utopia_raft::event::{Outcome, StatCounter};

use super::{content, Applier, ApplyError, StateRead};
use crate::keys::Cf;

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
        let mut stats: StatsDoc = match self.get_doc(Cf::Stats, &doc_id)? {
            Some(m) => match serde_json::from_value(Value::Object(m)) {
                Ok(stats) => stats,
                Err(e) => {
                    return content(format!(
                        "document stats/{doc_id} is not a stats document: {e}"
                    ))
                }
            },
            None => StatsDoc {
                id: id.to_string(),
                kind: kind.to_string(),
                ..Default::default()
            },
        };
        let day = at_ms / 86_400_000;
        match stats.days.last_mut() {
            Some(last) if last.day == day => last.bump(counter, by),
            _ => {
                let mut d = StatDay {
                    day,
                    attempts: 0,
                    failures: 0,
                };
                d.bump(counter, by);
                stats.days.push(d);
                let excess = stats.days.len().saturating_sub(self.limits.stat_days_max);
                stats.days.drain(..excess);
            }
        }
        stats.used_ms = at_ms;
        stats.recompute(day);
        let value = serde_json::to_value(&stats).unwrap_or(Value::Null);
        if let Value::Object(m) = value {
            self.put_doc(Cf::Stats, &doc_id, m)?;
        }
        Ok(Outcome::Done)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StatDay {
    day: u64,
    attempts: u64,
    failures: u64,
}

impl StatDay {
    fn bump(&mut self, counter: StatCounter, by: u64) {
        match counter {
            StatCounter::Attempts => self.attempts = self.attempts.saturating_add(by),
            StatCounter::Failures => self.failures = self.failures.saturating_add(by),
        }
    }
}

/// The stats document: per-day counts, and the aggregates seed 000 asks for
/// derived from them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StatsDoc {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    used_ms: u64,
    today_attempts: u64,
    today_failures: u64,
    daily_attempts: f64,
    daily_failures: f64,
    weekly_attempts: u64,
    weekly_failures: u64,
    monthly_attempts: u64,
    monthly_failures: u64,
    yearly_attempts: u64,
    yearly_failures: u64,
    days: Vec<StatDay>,
}

impl StatsDoc {
    fn recompute(&mut self, today: u64) {
        let sum = |window: u64| {
            self.days
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
        let n = self.days.len().max(1) as f64;
        let (all_a, all_f) = sum(u64::MAX / 2);
        self.today_attempts = ta;
        self.today_failures = tf;
        self.weekly_attempts = wa;
        self.weekly_failures = wf;
        self.monthly_attempts = ma;
        self.monthly_failures = mf;
        self.yearly_attempts = ya;
        self.yearly_failures = yf;
        self.daily_attempts = all_a as f64 / n;
        self.daily_failures = all_f as f64 / n;
    }
}
