//! Messages per device per second (wall-clock second), counted once per
//! copy by arrival: a backlog proposed after a handover is not a flood.

use std::collections::HashMap;

pub(super) struct DeviceRates {
    per_s_max: u64,
    second: u64,
    /// This second's count per device; cleared when the second changes.
    counts: HashMap<String, u64>,
}

impl DeviceRates {
    pub(super) fn new(per_s_max: u64) -> Self {
        DeviceRates {
            per_s_max,
            second: 0,
            counts: HashMap::new(),
        }
    }

    /// Counts one message of `device`; true when it is over the limit.
    pub(super) fn over(&mut self, device: &str, wall_ms: u64) -> bool {
        let second = wall_ms / 1000;
        if second != self.second {
            self.second = second;
            self.counts.clear();
        }
        let n = match self.counts.get_mut(device) {
            Some(n) => n,
            None => self.counts.entry(device.to_string()).or_default(),
        };
        *n += 1;
        *n > self.per_s_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excess_of_one_second_is_over_and_the_next_second_starts_afresh() {
        let mut r = DeviceRates::new(2);
        let at = |r: &mut DeviceRates, device, ms| r.over(device, ms);
        assert!(!at(&mut r, "a", 5_000));
        assert!(!at(&mut r, "a", 5_100));
        assert!(at(&mut r, "a", 5_999), "third in one second");
        assert!(!at(&mut r, "b", 5_999), "another device has its own count");
        assert!(!at(&mut r, "a", 6_000), "a new second");
    }
}
