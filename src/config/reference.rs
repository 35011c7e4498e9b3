//! The commented reference `utopiad.conf`: every setting at its default,
//! with its range. README.md holds it verbatim (`tests/docs.rs`), and the
//! config tests check that it parses to `Settings::default()` and names
//! every field.

/// A commented `utopiad.conf` listing every setting at its default.
pub fn reference() -> &'static str {
    r##"# utopiad.conf -- configuration of the utopia server (libconfig syntax).
#
# Every setting is optional: a missing one keeps the default shown here.
# Unknown settings are errors. Syntax: `name = value;`, groups `{ ... }`,
# strings in double quotes, comments with #, // or /* */, and
# @include "other.conf" (relative to this file's directory).

# This node's Raft id (an integer >= 0).
node_id = 1;

# Directory for the node's data (RocksDB and Raft state).
data_dir = "./utopia-data";

# Client port: gRPC listen address for clients, IP:PORT.
listen = "127.0.0.1:7700";

# The address clients reach this node at, IP:PORT, when it is not the
# listen address (behind a proxy or NAT, or listening on 0.0.0.0). Empty:
# the listen address. Published to the other members, which name it to
# clients that must go to the leader.
advertise = "";

# Peer port: where the other members reach this node (the Raft
# transport), IP:PORT. Clients are never served here, and peers never on
# the client port. Without TLS, keep it on a network only the members can
# reach: whoever reaches it can act as a member.
peer_listen = "127.0.0.1:7800";

# The address the other members reach this node at, IP:PORT, when it is
# not peer_listen. Empty: peer_listen. Used when this node starts a
# one-member cluster; the members of a larger one are known by the peer
# addresses in initial_cluster or given to `utopia cluster add`.
peer_advertise = "";

# Name of the cluster this node belongs to.
cluster_name = "utopia";

# The members a new cluster starts with, by peer address:
# "ID=HOST:PORT,ID=HOST:PORT,...".
# Empty: a one-member cluster of this node. Read only when the data
# directory is new; a restarted node rejoins the cluster it belongs to.
initial_cluster = "";

# Request and resource limits (each greater than 0; byte sizes and counts
# at most 4294967295).
limits = {
  key_bytes_max = 4096;              # largest key, in bytes
  value_bytes_max = 1048576;         # largest value, in bytes (1 MiB)
  request_bytes_max = 4194304;       # largest gRPC message, in bytes (4 MiB)
  txn_ops_max = 128;                 # most operations in one transaction
  range_limit_max = 10000;           # most keys one range request returns
  watchers_max = 1024;               # most concurrent watchers
  proposals_in_flight_max = 1024;    # most Raft proposals awaiting commit
  history_revisions_max = 100000;    # key revisions kept for past reads and watches; older ones are compacted
  json_depth_max = 32;               # deepest JSON or CBOR value taken from a device, report or command (1..64)
  document_bytes_max = 1048576;      # largest document a write may leave behind (1 KiB..16 MiB): a document is read and rewritten whole on every update and served whole in one reply
  response_bytes_max = 4194304;      # largest Range response or document page, in bytes (4096..64 MiB); the rest is left for the next page (`more`)
  txn_bytes_max = 16777216;          # most bytes a transaction or delete may read or touch: ranges and range compares count their pairs, deletes their keys, prev_kv the old pairs (1 MiB..64 MiB)
  db_bytes_max = 8589934592;         # state machine size on disk (8 GiB) past which this node raises the NOSPACE alarm: writes that add data are refused until `utopia alarm disarm` (1 MiB..1 PiB)
  memtable_bytes_max = 109051904;    # memory the database's memtables may take, all column families together (104 MiB; 16 MiB..64 GiB): past it every column family's memtable is flushed to table files (and a restart after a crash replays at most this much of the log). Most of a busy member's memory; less costs CPU in more flushes and compactions
  block_cache_bytes_max = 33554432;  # table blocks the database caches in memory, all column families together (32 MiB; 1 MiB..64 GiB); a block not cached is read from its file and decompressed again
  key_cache_bytes_max = 16777216;    # current keys' revisions and leases the applier keeps in memory (16 MiB, about 150,000 keys of 16 bytes; 0..64 GiB): a put of a key it holds, without prev_kv, reads nothing from the store
  connections_max = 1024;            # open gRPC connections on each port (client, peer); more wait to be accepted (1..65536)
  streams_per_connection_max = 256;  # concurrent calls (HTTP/2 streams) on one connection (1..10000)
  keepalive_interval_ms = 30000;     # HTTP/2 PING after this long without one (1000..3600000)
  keepalive_timeout_ms = 10000;      # a connection whose PING is not answered within this is closed (1000..600000)
  tcp_keepalive_ms = 60000;          # TCP keep-alive probes after this long without traffic, then at this interval (1000..7200000)
  request_timeout_ms = 30000;        # a unary request (not Watch or membership changes) answered DEADLINE_EXCEEDED after this (100..3600000)
  devices_per_host_max = 10000;      # devices registered under one host; a new one past it is refused and its MQTT messages dropped and counted (the leader's value applies)
  leases_max = 100000;               # active leases; a grant past it is refused (the leader's value applies)
  commands_pending_max = 10000;      # device commands awaiting a reply; a new one past it is refused (the leader's value applies)
  command_retention_ms = 604800000;  # how long an acknowledged or failed command's record is kept (7 days; 60000..1 year; the leader's value applies)
};

# Raft timing, in milliseconds unless noted (each greater than 0; times at
# most 31536000000 ms, a year; counts at most 4294967295).
# heartbeat_interval_ms < election_timeout_ms_min < election_timeout_ms_max.
raft = {
  heartbeat_interval_ms = 100;       # leader heartbeat period
  election_timeout_ms_min = 400;     # shortest election timeout
  election_timeout_ms_max = 800;     # longest election timeout
  snapshot_log_entries = 100000;     # build a snapshot after this many log entries
  log_entries_kept_after_snapshot = 5000; # entries kept behind a snapshot for lagging peers
  lease_check_interval_ms = 250;     # how often expired leases are reaped
  snapshot_bytes_max = 68719476736;  # largest snapshot accepted from a leader, in bytes (64 GiB); a larger stream is refused before it fills the disk
  forwarded_clock_skew_ms_max = 60000; # a proposal another member forwards must be stamped within this of this node's clock
};

# Logging.
log = {
  level = "info,openraft=warn";      # tracing filter, e.g. "info" or "info,utopia=debug" (RUST_LOG overrides)
  format = "text";                   # "text" or "json"
};

# TLS on both ports (PEM files; relative paths are relative to the working
# directory). No cert_file: plain text on both. Every member of a cluster
# uses TLS or none does: a node reaches its peers over TLS, presenting its
# own certificate, when it has one. The peer port always requires a peer
# certificate (mutual TLS); the client port only with client_cert_required.
tls = {
  cert_file = "";                    # this node's certificate chain; its subject alternative names must cover the addresses clients and members know it by
  key_file = "";                     # the certificate's private key
  ca_file = "";                      # CA certificates that members' certificates (and, when required, clients') are checked against
  client_cert_required = false;      # mutual TLS on the client port: refuse clients without a certificate signed by a CA of ca_file
  peer_ca_file = "";                 # CA certificates peers' certificates must chain to; empty: ca_file (use a CA of its own, or peer_allowed_names, so that a client certificate is not a peer)
  peer_allowed_names = ( );          # DNS names or IP addresses, one of which a peer's certificate must carry as a subject alternative name; empty: any certificate from the peer CA
};

# Authentication (`utopia auth enable`; users and roles are kept in the
# replicated state, not here).
auth = {
  token_ttl_s = 300;                 # lifetime of a token from Authenticate, in seconds (1..86400)
};

# MQTT ingest: connections ("bridges") to MQTT brokers, how the messages
# they deliver are batched into the log, and how device commands are
# published. No bridges: MQTT ingest is off.
mqtt = {
  # Each bridge is a group in this list. An example: only name and host are
  # required; role, protocol, client_id, keep_alive_s, persistent_session and
  # subscriptions are shown at their defaults.
  #   {
  #     name = "devices";                # unique short name for logs and counters
  #     role = "devices";                # "devices" (ingest, commands), "cluster" (server topics) or "all"
  #     host = "broker.example.com";     # the broker's host name or IP address
  #     port = 8883;                     # 1..65535; default 1883, or 8883 with tls
  #     protocol = 4;                    # 4: MQTT 3.1.1, 5: MQTT 5
  #     tls = {                          # omit for plain TCP; relative paths are relative to this file
  #       ca_file = "ca.crt";            # CA certificate(s) the broker's certificate must chain to (PEM)
  #       cert_file = "client.crt";      # client certificate and its key (PEM): both or neither
  #       key_file = "client.key";
  #       server_name = "broker.example.com"; # name the broker's certificate must carry; default: host
  #     };
  #     username = "utopia";             # username and password: both or neither
  #     password = "secret";
  #     client_id = "utopia";            # node id and bridge name are appended: "utopia-1-devices"
  #     keep_alive_s = 30;               # 1..65535
  #     persistent_session = true;       # keep subscriptions and unacknowledged messages across reconnects
  #     subscriptions = (                # topic filters and QoS (0, 1 or 2)
  #       { filter = "#"; qos = 1; }
  #     );
  #   }
  bridges = ( );

  # Ingest bounds (each greater than 0; times at most 31536000000 ms, a
  # year; counts at most 4294967295; payloads at most 1048576 bytes, the
  # largest MQTT packet a bridge takes).
  ingest = {
    payload_bytes_max = 65536;       # largest payload accepted; larger ones are rejected and counted
    batch_messages_max = 256;        # most messages in one Raft proposal
    batch_linger_ms = 2;             # how long a partial batch waits for more messages
    pending_messages_max = 100000;   # most received messages awaiting commit on this node
    dedupe_window_ms = 300000;       # how long a committed message suppresses redelivered copies
    owner_timeout_ms = 1500;         # a member silent this long loses its topics to the others
    weight = 1;                      # this node's share of topics relative to the others (1..1000)
    device_messages_per_s_max = 1000; # messages per second from one device; the excess is rejected and counted
  };

  # Device commands. retry_initial_ms <= retry_max_ms (times at most
  # 31536000000 ms, a year; attempts_max at most 4294967295).
  commands = {
    attempts_max = 5;                # publishes of one command before it is marked failed
    retry_initial_ms = 1000;         # wait for a reply after the first attempt; doubles per attempt
    retry_max_ms = 30000;            # longest wait between attempts
    qos = 1;                         # QoS of command publishes (0, 1 or 2)
  };
};

# XML configuration sync (device classes and schemas, see schemas/).
# Valid files in `dir` are voted on through the log; the accepted version
# of each name is written back into every member's `dir` as NAME.xml.
configs = {
  dir = "";                          # watched directory; empty: none (uploads only)
  scan_interval_ms = 5000;           # full rescan besides change notifications (> 0)
  agreement_window_ms = 2000;        # votes for one version are collected this long (0 to 600000)
  weight = 1.0;                      # this member's weight in agreements (0.001 to 1000)
  file_bytes_max = 262144;           # largest file read, in bytes (1 to 67108864); the
                                     # xml_configs document holding it must fit limits.document_bytes_max
  write_attempts_max = 5;            # write-and-verify attempts before this member is marked failing (1 to 100)
  write_backoff_ms = 100;            # wait after the first failed attempt; doubles per attempt (> 0)
  require_class = false;             # refuse data and commands of classes with no accepted configuration
};

# Backups the leader takes on a schedule (see `utopia snapshot`): named
# utopia-<cluster id>-r<revision>-<UTC time>.utopia, the newest kept.
backups = {
  interval_s = 0;                    # seconds between backups; 0: none (at most 604800)
  dir = "";                          # where they go; empty: <data_dir>/backups
  retention_count = 7;               # how many are kept (1 to 10000)
};

# Prometheus metrics: GET /metrics on this address, IP:PORT (gRPC per
# method, Raft, storage, ingest, and every counter of `utopia status`).
# Empty: no metrics endpoint. Keep it on a network only operators reach.
metrics = {
  listen = "";
};

# ZooKeeper adapter (a build with the `zookeeper` feature; a binary without
# it refuses to start when hosts is set). Each member keeps an ephemeral
# node /utopia/<cluster_name>/fellows/<node_id>; the leader keeps
# /utopia/<cluster_name>/mqtt_servers, db_servers and warnings. No hosts:
# off. Times in milliseconds.
zookeeper = {
  hosts = ( );                       # "HOST:PORT" strings, e.g. ( "zk1:2181", "zk2:2181" ): the client fails over between them (at most 64)
  chroot = "";                       # a path every node lives under, e.g. "/site-a"; empty: the root
  session_timeout_ms = 10000;        # asked of ZooKeeper (1000..600000; the server may narrow it): a silent member's node goes after this
  request_timeout_ms = 5000;         # one connection attempt, and each request (100..600000)
  refresh_interval_ms = 1000;        # how often what ZooKeeper holds is compared and rewritten when it differs (100..600000)
  retry_backoff_ms = 200;            # wait after a failed session; doubles per failure (10..600000)
  retry_backoff_ms_max = 10000;      # longest wait between attempts (10..600000, >= retry_backoff_ms)
  initial_cluster_node = "";         # a node under /utopia/<cluster_name>/ holding "ID=HOST:PORT,...": a new data directory started without initial_cluster or --join starts that cluster; empty: never read
  initial_cluster_wait_ms = 60000;   # how long a new member waits for that node before it refuses to start (0..600000)
};

# MongoDB mirror (cargo feature `mongodb`): while this member leads, it
# copies the documents (and with mirror_kv the keys) into every server of
# the db_servers collection of type mongodb in state ok (`utopia db add
# HOST:PORT`). enabled = true in a utopiad built without the feature is
# an error.
mongodb = {
  enabled = false;                   # run the mirror on this member (while it leads)
  database = "utopia";               # the database the collections are written into (1 to 63 bytes)
  mirror_kv = false;                 # also mirror the key-value pairs (collection kv)
  batch_docs_max = 500;              # most documents in one bulk write (1 to 100000)
  batch_bytes_max = 8388608;         # most document bytes in one bulk write (1024 to 33554432)
  verify_sample_docs = 16;           # documents read back after each batch and per idle audit (0 to 10000)
  verify_attempts_max = 3;           # write-and-verify attempts before the server is marked problematic (1 to 100)
  retry_backoff_ms = 500;            # wait after a failed attempt; doubles up to 30 s (> 0)
  poll_interval_ms = 200;            # how often a caught-up mirror looks for new entries (> 0)
  timeout_ms = 10000;                # connect, server selection and socket timeout (100 to 600000)
  uri_options = "";                  # extra connection string options NAME=VALUE&..., e.g. "tls=true" (at most 1024 bytes)
};
"##
}
