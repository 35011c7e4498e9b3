//! The bridges as the core sees them: which carry device traffic, which
//! are connected and on which connection (generation), and the topic
//! ownership weight this node should announce because of that.
//!
//! A member whose device bridge is down does not receive its devices'
//! messages: after `owner_timeout_ms` it gives its devices up (weight 0)
//! until the bridge is back.

pub(super) struct Links {
    /// Per bridge: it carries device traffic (role `devices` or `all`).
    ingests: Vec<bool>,
    connected: Vec<bool>,
    /// Per bridge: the current connection; acknowledgements of messages
    /// that arrived on an older one are void.
    generations: Vec<u64>,
    /// Since when (monotonic ms) a device bridge has been down.
    down_since_ms: Option<u64>,
    /// The configured weight, asked for while every device bridge is up.
    weight: u32,
    owner_timeout_ms: u64,
    /// The weight last asked for (0 until the device bridges connect).
    announced: u32,
}

impl Links {
    pub(super) fn new(ingests: Vec<bool>, weight: u32, owner_timeout_ms: u64, now_ms: u64) -> Self {
        let n = ingests.len();
        Links {
            ingests,
            connected: vec![false; n],
            generations: vec![0; n],
            down_since_ms: Some(now_ms),
            weight,
            owner_timeout_ms,
            announced: 0,
        }
    }

    pub(super) fn carries_devices(&self, bridge: usize) -> bool {
        self.ingests.get(bridge).copied().unwrap_or(false)
    }

    pub(super) fn generation(&self, bridge: usize) -> Option<u64> {
        self.generations.get(bridge).copied()
    }

    pub(super) fn connected(&mut self, bridge: usize, generation: u64) {
        if let Some(g) = self.generations.get_mut(bridge) {
            *g = generation;
        }
        if let Some(c) = self.connected.get_mut(bridge) {
            *c = true;
        }
    }

    pub(super) fn disconnected(&mut self, bridge: usize) {
        if let Some(c) = self.connected.get_mut(bridge) {
            *c = false;
        }
    }

    /// The weight to announce, when it differs from the one announced.
    pub(super) fn weight_change(&mut self, now_ms: u64) -> Option<u32> {
        let all_up = self
            .connected
            .iter()
            .zip(&self.ingests)
            .all(|(up, ingests)| *up || !*ingests);
        let wanted = if all_up {
            self.down_since_ms = None;
            self.weight
        } else {
            let since = *self.down_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < self.owner_timeout_ms {
                return None;
            }
            0
        };
        (wanted != self.announced).then(|| {
            self.announced = wanted;
            wanted
        })
    }
}
