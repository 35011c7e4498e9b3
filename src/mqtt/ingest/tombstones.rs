//! Digests committed before this node's copy of them arrived: the late copy
//! is acknowledged on arrival instead of being held (or proposed) again.
//!
//! One tombstone per commit, kept for the dedupe window and at most
//! `pending_messages_max` of them. When one has to be dropped for room
//! rather than age, a copy without a tombstone may still be of a committed
//! message until the dedupe window has passed since: the core then asks the
//! store's dedupe records ([`Tombstones::evicted_recently`]).

use std::collections::{HashMap, VecDeque};

pub(super) struct Tombstones {
    by_digest: HashMap<[u8; 16], u32>,
    /// In the order they were added, with when (monotonic ms).
    order: VecDeque<([u8; 16], u64)>,
    /// When one was last dropped for room.
    evicted_at_ms: Option<u64>,
    count_max: usize,
    window_ms: u64,
}

impl Tombstones {
    pub(super) fn new(count_max: u64, window_ms: u64) -> Self {
        Tombstones {
            by_digest: HashMap::new(),
            order: VecDeque::new(),
            evicted_at_ms: None,
            count_max: usize::try_from(count_max).unwrap_or(usize::MAX),
            window_ms,
        }
    }

    /// Remembers one commit of `digest`; returns how many tombstones were
    /// dropped for room.
    pub(super) fn add(&mut self, digest: [u8; 16], now_ms: u64) -> u64 {
        *self.by_digest.entry(digest).or_default() += 1;
        self.order.push_back((digest, now_ms));
        let mut evicted = 0;
        while self.order.len() > self.count_max {
            self.drop_oldest();
            self.evicted_at_ms = Some(now_ms);
            evicted += 1;
        }
        evicted
    }

    /// Uses up one tombstone of `digest`, if there is one.
    pub(super) fn take(&mut self, digest: &[u8; 16]) -> bool {
        let Some(n) = self.by_digest.get_mut(digest) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.by_digest.remove(digest);
        }
        true
    }

    /// Whether one was dropped for room within the dedupe window.
    pub(super) fn evicted_recently(&mut self, now_ms: u64) -> bool {
        if self
            .evicted_at_ms
            .is_some_and(|t| now_ms.saturating_sub(t) > self.window_ms)
        {
            self.evicted_at_ms = None;
        }
        self.evicted_at_ms.is_some()
    }

    /// Forgets those older than the dedupe window.
    pub(super) fn expire(&mut self, now_ms: u64) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now_ms.saturating_sub(*at) > self.window_ms)
        {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some((d, _)) = self.order.pop_front() {
            if let Some(n) = self.by_digest.get_mut(&d) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.by_digest.remove(&d);
                }
            }
        }
    }
}
