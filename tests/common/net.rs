//! Network partitions between `utopiad` processes on one machine.
//!
//! Every node listens on its own loopback IP (node `n` on `127.0.0.(10+n)`,
//! see [`node_ip`]); the Raft transport connects to peers from that IP. In
//! front of each node runs a TCP proxy on `127.0.0.1`, and the cluster's
//! membership holds the proxies' addresses, so every connection between two
//! nodes passes through the proxy of the node it goes to. The proxy knows
//! which node a connection comes from by its source IP; connections from
//! any other address (clients such as the CLI) are never interfered with.
//!
//! A blocked link (`from` → `to`) is a black hole: bytes of connections
//! `from` opened to `to` stop flowing in both directions (they stay queued
//! and arrive late, after [`Net::heal`], as TCP would deliver them), and a
//! new connection is accepted but not forwarded until the link opens.
//! Nothing is refused or reset, so a node learns of a partition only by
//! its requests timing out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The loopback IP node `id` listens on.
pub fn node_ip(id: u64) -> IpAddr {
    assert!(
        (1..=200).contains(&id),
        "node ids 1..=200 have loopback IPs"
    );
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8))
}

fn node_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (a == 127 && b == 0 && c == 0 && (11..=210).contains(&d)).then(|| u64::from(d - 10))
        }
        IpAddr::V6(_) => None,
    }
}

/// Ports the harness gives servers: below Linux's ephemeral range
/// (32768..61000 by default), which outgoing connections draw their source
/// ports from. A port picked from that range and bound a moment later may
/// have been taken by a connection meanwhile; one picked here can only
/// collide with another test's pick.
const LISTEN_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port on `ip` that was free a moment ago, outside the ephemeral range.
pub fn free_addr_on(ip: IpAddr) -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PICKS: AtomicU64 = AtomicU64::new(0);
    // Ports handed out by this process: a server binds its port a moment
    // after the pick, so the bind test alone could hand one port to two
    // tests running side by side.
    static GIVEN: std::sync::Mutex<BTreeSet<(IpAddr, u16)>> =
        std::sync::Mutex::new(BTreeSet::new());
    let random = std::collections::hash_map::RandomState::new();
    for _ in 0..1000 {
        let pick = random.hash_one((std::process::id(), PICKS.fetch_add(1, Ordering::Relaxed)));
        let span = u64::from(LISTEN_PORTS.end - LISTEN_PORTS.start);
        let port = LISTEN_PORTS.start + (pick % span) as u16;
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.contains(&(ip, port)) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind((ip, port)) {
            given.insert((ip, port));
            return l.local_addr().expect("local address").to_string();
        }
    }
    panic!("no free port on {ip} in {LISTEN_PORTS:?} after 1000 tries");
}

struct State {
    /// Blocked links: (from, to) by node id.
    blocked: Mutex<BTreeSet<(u64, u64)>>,
    /// Bumped on every change, to wake stalled connections.
    changed: tokio::sync::watch::Sender<u64>,
}

impl State {
    fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.blocked
            .lock()
            .expect("partition state")
            .contains(&(from, to))
    }

    /// Returns once the link from `from` (None: a client) to `to` is open.
    async fn wait_open(&self, from: Option<u64>, to: u64) {
        let Some(from) = from else { return };
        // Subscribe before looking, so that a heal in between is not missed.
        let mut rx = self.changed.subscribe();
        while self.is_blocked(from, to) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut BTreeSet<(u64, u64)>)) {
        f(&mut self.blocked.lock().expect("partition state"));
        self.changed.send_modify(|g| *g += 1);
    }
}

/// The proxies in front of a cluster's nodes and the partitions between
/// them. Dropping it stops the proxies and closes their connections.
pub struct Net {
    state: Arc<State>,
    /// Proxy address (what the membership holds) by node id.
    proxies: BTreeMap<u64, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Net {
    /// Starts one proxy per node, forwarding to the node's real address
    /// (`targets`: id → IP:PORT, on [`node_ip`]).
    pub fn start(targets: &BTreeMap<u64, String>) -> Net {
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let state = Arc::new(State {
            blocked: Mutex::new(BTreeSet::new()),
            changed,
        });
        let listeners: Vec<(u64, std::net::TcpListener, String)> = targets
            .iter()
            .map(|(id, target)| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy");
                l.set_nonblocking(true).expect("nonblocking proxy socket");
                (*id, l, target.clone())
            })
            .collect();
        let proxies = listeners
            .iter()
            .map(|(id, l, _)| (*id, l.local_addr().expect("proxy address").to_string()))
            .collect();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                for (id, l, target) in listeners {
                    let l = TcpListener::from_std(l).expect("proxy listener");
                    tokio::spawn(serve(l, id, target, st.clone()));
                }
                let _ = stopped.await;
            });
        });
        Net {
            state,
            proxies,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address the cluster knows node `id` by (its proxy).
    pub fn addr(&self, id: u64) -> &str {
        &self.proxies[&id]
    }

    /// Every node's proxy address, by id.
    pub fn addrs(&self) -> &BTreeMap<u64, String> {
        &self.proxies
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self.proxies.keys().copied().filter(|o| *o != id).collect();
        self.partition(&[id], &others);
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        self.state.update(|blocked| {
            for x in a {
                for y in b {
                    blocked.insert((*x, *y));
                    blocked.insert((*y, *x));
                }
            }
        });
    }

    /// Opens every link; queued bytes flow again.
    pub fn heal(&self) {
        self.state.update(BTreeSet::clear);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Release stalled connections, then stop the runtime.
        self.heal();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: TcpListener, to: u64, target: String, state: Arc<State>) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let from = node_of(peer.ip());
            state.wait_open(from, to).await;
            // A node that is down: the connection closes, as a refused one would.
            let Ok(outbound) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            forward(inbound, outbound, from, to, &state).await;
        });
    }
}

/// Copies bytes both ways while the link is open; closes both sides when
/// either ends.
async fn forward(
    inbound: TcpStream,
    outbound: TcpStream,
    from: Option<u64>,
    to: u64,
    state: &State,
) {
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = outbound.into_split();
    let up = pump(&mut in_r, &mut out_w, from, to, state);
    let down = pump(&mut out_r, &mut in_w, from, to, state);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn pump(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    from: Option<u64>,
    to: u64,
    state: &State,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        state.wait_open(from, to).await;
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
