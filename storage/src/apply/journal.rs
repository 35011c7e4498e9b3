//! The undo journal: what the current event replaced, so that an event
//! (or ingest item) rejected for its content is rolled back to a
//! [`Savepoint`], and nothing else is (see the content-error rule in the
//! module documentation of [`super`]).

use utopia_raft::event::Request;

use super::documents::CachedBefore;
use super::{Applier, StateRead};
use crate::codec;
use crate::keys::{meta, Cf};
use crate::StoreError;

/// What an overlay entry held before a write: `None` if it had no entry.
type OverlayBefore = ((Cf, Vec<u8>), Option<Option<Vec<u8>>>);

/// The previous values of what the current event wrote.
#[derive(Default)]
pub(super) struct Undo {
    pub(super) overlay: Vec<OverlayBefore>,
    pub(super) docs: Vec<CachedBefore>,
}

/// Where to roll back to: lengths of the undo logs and the outputs.
pub(super) struct Savepoint {
    overlay: usize,
    docs: usize,
    changes: usize,
    committed: usize,
    owners_changed: bool,
    commands_changed: bool,
}

impl<S: StateRead + ?Sized> Applier<'_, S> {
    pub(super) fn savepoint(&self) -> Savepoint {
        Savepoint {
            overlay: self.undo.overlay.len(),
            docs: self.undo.docs.len(),
            changes: self.changes.len(),
            committed: self.effects.committed.len(),
            owners_changed: self.effects.owners_changed,
            commands_changed: self.effects.commands_changed,
        }
    }

    /// Undoes everything written since `sp`, newest first.
    pub(super) fn rollback(&mut self, sp: Savepoint) {
        while self.undo.overlay.len() > sp.overlay {
            let Some((key, old)) = self.undo.overlay.pop() else {
                break;
            };
            let (cf, key) = key;
            match old {
                Some(v) => self.overlay.insert(cf, key, v),
                None => self.overlay.remove(cf, &key),
            };
        }
        while self.undo.docs.len() > sp.docs {
            let Some(before) = self.undo.docs.pop() else {
                break;
            };
            self.docs.restore(before);
        }
        self.changes.truncate(sp.changes);
        self.effects.committed.truncate(sp.committed);
        self.effects.owners_changed = sp.owners_changed;
        self.effects.commands_changed = sp.commands_changed;
        // A class record, the quotas or the alarms read since may have been
        // rolled back.
        self.classes.clear();
        self.quotas.set(None);
        self.first_alarm.set(None);
    }

    /// Counts (in replicated state) and logs an event or ingest item
    /// rejected for its content. The log shows the first and then every
    /// power of two, so that a flood cannot drown it.
    pub(super) fn count_rejected(&mut self, req: &Request, reason: &str) -> Result<(), StoreError> {
        let n = self
            .get_dec::<u64>(Cf::SmMeta, meta::EVENTS_REJECTED)?
            .unwrap_or(0)
            .saturating_add(1);
        self.put(
            Cf::SmMeta,
            meta::EVENTS_REJECTED.to_vec(),
            codec::encode(&n),
        );
        if n.is_power_of_two() {
            tracing::warn!(event = %req, rejected_total = n, reason, "event rejected: its content cannot be applied");
        } else {
            tracing::debug!(event = %req, rejected_total = n, reason, "event rejected: its content cannot be applied");
        }
        Ok(())
    }
}
