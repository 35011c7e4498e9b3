//! utopia: an event-sourced, replicated key-value and document store for
//! device fleets.
//!
//! # Layout
//!
//! - [`config`]: `utopiad.conf` (libconfig syntax) → [`config::Settings`].
//! - [`server`]: process lifecycle — open storage, start Raft, serve gRPC,
//!   start the node's tasks, and on a signal stop them all, drain the
//!   ports, stop Raft and sync the database, within seconds.
//! - [`node`]: the application core, apart from any protocol: [`node::Node`]
//!   validates requests, proposes events, reads, authorizes, keeps the
//!   leader's upkeep and owns every task; it returns [`node::Error`].
//! - [`listener`]: bounds on the gRPC listener: open connections, TCP
//!   keep-alive, deadlines on unary requests, closing connections at
//!   shutdown.
//! - [`api`]: the gRPC edge. Requests are checked and turned into calls on
//!   the core; [`api::status`] is the one place that maps the core's errors
//!   to gRPC status codes.
//! - [`cli`]: the `utopia` command-line client and its benchmark.
//! - [`mqtt`]: broker bridges, device ingest exactly once across the
//!   cluster, device commands.
//! - [`space`]: each node's database size against `limits.db_bytes_max`,
//!   and the NOSPACE alarm.
//! - [`tls`]: certificates and keys read at startup, for the server, its
//!   connections to peers, and the CLI.
//! - [`xmlconf`]: XML configuration files (device classes and schemas):
//!   the embedded XSDs of `schemas/`, validation (libxml2) and the model
//!   read from a valid file (quick-xml). Pure functions, no server state.
//!
//! - [`adapters`]: bridges to the systems seed 000 was built on, each a
//!   cargo feature (off by default): the MongoDB mirror (`mongodb`).
//!
//! The crates beside this one: `utopia-proto` (the gRPC API), `utopia-raft`
//! (consensus and the events in the log) and `utopia-storage` (RocksDB).

pub mod adapters;
pub mod api;
pub mod cli;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod server;
pub mod space;
pub mod tls;
pub mod xmlconf;

/// Milliseconds since the Unix epoch on this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An error and its causes on one line (tonic's own Display is terse, for
/// example just "transport error"); a cause already in the text is skipped.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        source = s.source();
    }
    msg
}
