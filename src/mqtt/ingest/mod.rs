//! The ingest core: every message any bridge receives waits here until it
//! is in the committed log, and is acknowledged to the broker only then.
//!
//! Every server subscribes to the same device topics, so every server holds
//! a copy of every message. The owner of a message's device (rendezvous
//! hashing over the members agreed in the log, see
//! `utopia_storage::ingest`) batches its copies into `IngestBatch`
//! proposals; every server, on applying a committed batch, matches the
//! batch's digests against the copies it holds and acknowledges them. A
//! digest committed before this server's copy arrived is remembered for the
//! dedupe window, so the late copy is acknowledged on arrival.
//!
//! When ownership moves (a new epoch in the log), the new owner proposes the
//! copies it still holds. A batch proposed under an older epoch is refused
//! by the applier, so the old and the new owner never both commit a
//! message. Copies that may already be committed (the broker's DUP flag, or
//! a proposal whose outcome is unknown) are proposed as redelivered, and
//! the applier suppresses them when their digest was committed within the
//! dedupe window. So are copies a node proposes for a device it did not own
//! when the copy arrived, or under a later epoch than the one it arrived in:
//! the previous owner may have committed them.
//!
//! # Layout
//!
//! - [`core`] (with `core/propose.rs`): the state machine. Inputs and the
//!   time in, [`Action`]s out (`actions.rs`: plain data); no clock, no
//!   tokio, no RocksDB, no network. **Invariant:** everything the core
//!   decides is tested without a runtime, row by row against a simulated
//!   store, broker and Raft (`tests/`).
//! - `driver`: the task that owns the core and performs its actions
//!   (acknowledgements, proposals, store reads on a thread of their own,
//!   counters). **Invariant:** it decides nothing the core could.
//! - `arrival`: what one broker message is (pure); `copies` (the held
//!   copies by digest), `tombstones`, `links` (bridge health and the
//!   ownership weight), `rate` (device rates) and `lag` (the lag
//!   histogram): the core's parts.

mod actions;
mod arrival;
mod copies;
pub mod core;
mod driver;
mod lag;
mod links;
mod rate;
mod tombstones;

#[cfg(test)]
mod tests;

pub use self::core::{Action, Core, CoreConfig, Counted, Gauges, Lookup, Now};
pub use driver::Driver;
pub use lag::{LagHistogram, LAG_BUCKETS_MS};
