//! Digests committed before this node's copy of them arrived: the late copy
//! is acknowledged on arrival instead of being held (or proposed) again.
//!
//! One tombstone per commit, kept for the dedupe window and at most
//! `pending_messages_max` of them. When one has to be dropped for room
//! rather than age, a copy without a tombstone may still be of a committed
//! message until the dedupe window has passed since: the core then asks the
//! store's dedupe records ([`Tombstones::evicted_recently`]).
//!
//! A copy uses up the oldest tombstone of its digest, which then leaves
//! both indexes: it neither counts against the bound nor, when its time
//! would have come, expires a newer tombstone of the same digest.

use std::collections::{BTreeMap, HashMap, VecDeque};

pub(super) struct Tombstones {
    /// The live tombstones by id (ids grow with time: the first is the
    /// oldest), with their digest and when they were added (monotonic ms).
    by_id: BTreeMap<u64, ([u8; 16], u64)>,
    /// The ids of each digest's live tombstones, oldest first.
    by_digest: HashMap<[u8; 16], VecDeque<u64>>,
    next_id: u64,
    /// When one was last dropped for room.
    evicted_at_ms: Option<u64>,
    count_max: usize,
    window_ms: u64,
}

impl Tombstones {
    pub(super) fn new(count_max: u64, window_ms: u64) -> Self {
        Tombstones {
            by_id: BTreeMap::new(),
            by_digest: HashMap::new(),
            next_id: 0,
            evicted_at_ms: None,
            count_max: usize::try_from(count_max).unwrap_or(usize::MAX),
            window_ms,
        }
    }

    /// Remembers one commit of `digest`; returns how many tombstones were
    /// dropped for room.
    pub(super) fn add(&mut self, digest: [u8; 16], now_ms: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_id.insert(id, (digest, now_ms));
        self.by_digest.entry(digest).or_default().push_back(id);
        let mut evicted = 0;
        while self.by_id.len() > self.count_max {
            self.drop_oldest();
            self.evicted_at_ms = Some(now_ms);
            evicted += 1;
        }
        evicted
    }

    /// Uses up the oldest tombstone of `digest`, if there is one.
    pub(super) fn take(&mut self, digest: &[u8; 16]) -> bool {
        let Some(ids) = self.by_digest.get_mut(digest) else {
            return false;
        };
        let id = ids.pop_front();
        if ids.is_empty() {
            self.by_digest.remove(digest);
        }
        match id {
            Some(id) => self.by_id.remove(&id).is_some(),
            None => false,
        }
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
            .by_id
            .first_key_value()
            .is_some_and(|(_, (_, at))| now_ms.saturating_sub(*at) > self.window_ms)
        {
            self.drop_oldest();
        }
    }

    /// Drops the oldest live tombstone; being the oldest overall, it is
    /// also the oldest of its digest.
    fn drop_oldest(&mut self) {
        let Some((id, (digest, _))) = self.by_id.pop_first() else {
            return;
        };
        if let Some(ids) = self.by_digest.get_mut(&digest) {
            debug_assert_eq!(ids.front(), Some(&id), "per-digest ids are oldest first");
            ids.pop_front();
            if ids.is_empty() {
                self.by_digest.remove(&digest);
            }
        }
    }
}
