//! What ingest does about a member that cannot hold a class's accepted
//! configuration ([`Event::ConfigSyncState`], recorded on the version and
//! in the member's fellows document by `xmlconf_sync`): while it fails, it
//! owns none of the class's devices ([`IngestOwners::excluded`], a new
//! owners epoch, so that batches proposed under the old ownership are
//! refused); once it verifies the file it owns them again.
//!
//! [`Event::ConfigSyncState`]: utopia_raft::event::Event::ConfigSyncState
//! [`IngestOwners::excluded`]: super::IngestOwners::excluded

use utopia_raft::event::Outcome;

use super::{Applier, ApplyError, StateRead};
use crate::codec;
use crate::keys::{self, Cf};

impl<S: StateRead + ?Sized> Applier<'_, S> {
    /// Excludes `node` from owning devices of class `class` (`failing`),
    /// or lets it own them again. Called once the sync state is recorded
    /// (the version is the accepted one).
    pub(super) fn apply_class_exclusion(
        &mut self,
        node: u64,
        class: &str,
        failing: bool,
    ) -> Result<Outcome, ApplyError> {
        let mut owners = self.ingest_owners()?;
        let excluded = owners.excluded.entry(class.to_string()).or_default();
        let changed = match (failing, excluded.binary_search(&node)) {
            (true, Err(i)) => {
                excluded.insert(i, node);
                true
            }
            (false, Ok(i)) => {
                excluded.remove(i);
                true
            }
            _ => false,
        };
        if excluded.is_empty() {
            owners.excluded.remove(class);
        }
        if changed {
            owners.epoch += 1;
            self.put(
                Cf::Ingest,
                keys::ingest::OWNERS.to_vec(),
                codec::encode(&owners),
            );
            self.effects.owners_changed = true;
        }
        Ok(Outcome::Done)
    }
}
