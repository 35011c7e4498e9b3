//! Concurrent clients against a three-node cluster while a nemesis, in
//! turn, kills and restarts the leader (SIGKILL), pauses and resumes it
//! (SIGSTOP / SIGCONT), and cuts it off from the other two nodes and heals
//! the partition (the nodes talk through fault-injecting proxies, see
//! `common/net.rs`; clients reach every node throughout); the recorded
//! history must be linearizable.
//!
//! The default run is short. Set `UTOPIA_SOAK_SECONDS` for a longer soak;
//! the test prints how many operations and faults it checked.

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{leader_id, start_partitionable_cluster, temp_dir};
use linearizability::{check, Recorder};
use tonic::transport::{Channel, Endpoint};
use utopia_proto::v1 as pb;

const KEYS: [&str; 3] = ["x", "y", "z"];
const CLIENTS: u64 = 4;
/// How long one operation may take, retries included, before its outcome
/// counts as unknown.
const OP_DEADLINE: Duration = Duration::from_secs(3);

/// A client that follows leader hints and fails over between endpoints.
struct ClusterClient {
    channels: Vec<(String, Channel)>,
    current: usize,
}

enum Answer<T> {
    Ok(T),
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

impl ClusterClient {
    fn new(addrs: &[String]) -> Self {
        let channels = addrs
            .iter()
            .map(|a| {
                let ch = Endpoint::from_shared(format!("http://{a}"))
                    .unwrap()
                    .connect_timeout(Duration::from_millis(300))
                    .timeout(Duration::from_secs(1))
                    .connect_lazy();
                (a.clone(), ch)
            })
            .collect();
        Self {
            channels,
            current: 0,
        }
    }

    /// Runs `call` until it answers, following NOT_LEADER redirects. A
    /// write that failed in any other way may have been applied.
    async fn run<T, F, Fut>(&mut self, write: bool, mut call: F) -> Answer<T>
    where
        F: FnMut(pb::kv_client::KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut ambiguous = false;
        while start.elapsed() < OP_DEADLINE {
            let client = pb::kv_client::KvClient::new(self.channels[self.current].1.clone());
            match call(client).await {
                Ok(resp) => return Answer::Ok(resp.into_inner()),
                Err(s) if s.message().starts_with("not the leader") => {
                    let hint = s
                        .metadata()
                        .get("utopia-leader")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match hint.and_then(|h| self.channels.iter().position(|(a, _)| *a == h)) {
                        Some(i) if i != self.current => self.current = i,
                        _ => {
                            self.current = (self.current + 1) % self.channels.len();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                Err(_) => {
                    if write {
                        ambiguous = true;
                        break;
                    }
                    self.current = (self.current + 1) % self.channels.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if write && ambiguous {
            // Rotate so the next operation tries another server.
            self.current = (self.current + 1) % self.channels.len();
            return Answer::Unknown;
        }
        if write {
            Answer::Unknown
        } else {
            Answer::Failed
        }
    }
}

fn txn_cas(key: &str, expect: Option<&str>, new: &str) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let compare = match expect {
        Some(v) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.into(),
            target_union: Some(TargetUnion::Value(v.into())),
            range_end: vec![],
        },
        None => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.into(),
            target_union: Some(TargetUnion::Version(0)),
            range_end: vec![],
        },
    };
    pb::TxnRequest {
        compare: vec![compare],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: new.into(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
}

async fn client_loop(
    id: u64,
    addrs: Vec<String>,
    rec: Recorder,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    let mut c = ClusterClient::new(&addrs);
    let mut seq = 0u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ id;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut last_seen: Option<String> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seq += 1;
        let key = KEYS[(next() % KEYS.len() as u64) as usize];
        let value = format!("c{id}-{seq}");
        match next() % 3 {
            0 => {
                let op = rec.put(id, key, value.clone());
                let req = pb::PutRequest {
                    key: key.into(),
                    value: value.into(),
                    ..Default::default()
                };
                match c
                    .run(true, |mut k| {
                        let req = req.clone();
                        async move { k.put(req).await }
                    })
                    .await
                {
                    Answer::Ok(_) => op.ok(),
                    Answer::Failed => op.discard(),
                    Answer::Unknown => op.unknown(),
                }
            }
            1 => {
                let op = rec.get(id, key);
                let req = pb::RangeRequest {
                    key: key.into(),
                    ..Default::default()
                };
                match c
                    .run(false, |mut k| {
                        let req = req.clone();
                        async move { k.range(req).await }
                    })
                    .await
                {
                    Answer::Ok(r) => {
                        let v = r
                            .kvs
                            .first()
                            .map(|kv| String::from_utf8_lossy(&kv.value).to_string());
                        last_seen = v.clone();
                        op.ok(v)
                    }
                    Answer::Failed | Answer::Unknown => op.discard(),
                }
            }
            _ => {
                let expect = last_seen.clone();
                let op = rec.cas(id, key, expect.clone(), value.clone());
                let req = txn_cas(key, expect.as_deref(), &value);
                match c
                    .run(true, |mut k| {
                        let req = req.clone();
                        async move { k.txn(req).await }
                    })
                    .await
                {
                    Answer::Ok(r) => op.ok(r.succeeded),
                    Answer::Failed => op.discard(),
                    Answer::Unknown => op.unknown(),
                }
            }
        }
    }
    seq as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_leader_faults_is_linearizable() {
    let soak = std::env::var("UTOPIA_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let run_for = Duration::from_secs(soak.unwrap_or(6));
    let dir = temp_dir();
    let (nodes, net) = {
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || start_partitionable_cluster(&dir, 3, &[]))
            .await
            .unwrap()
    };
    // Clients use the members' client ports, which leader hints name; the
    // proxies sit on the peer ports only, so a client's connection is never
    // cut.
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();

    let rec = Recorder::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_loop(id, addrs.clone(), rec.clone(), stop.clone())))
        .collect();

    // The nemesis: crash, pause or isolate the leader, let the others carry
    // on, then undo the fault.
    let nemesis = {
        // The sleeps are the fault schedule (how long a fault lasts and
        // how long the cluster runs healthy), not waits for a condition.
        tokio::task::spawn_blocking(move || {
            let mut nodes = nodes;
            let start = Instant::now();
            let mut faults = [0usize; 3];
            let mut turn = 0;
            // Every kind of fault at least once, however short the run.
            while start.elapsed() < run_for || faults.contains(&0) {
                std::thread::sleep(Duration::from_millis(1000));
                let Some(id) = leader_id(&nodes) else {
                    continue;
                };
                let l = (id - 1) as usize;
                match turn % 3 {
                    0 => {
                        // Crash: the leader's process dies; it restarts later.
                        nodes[l].kill9();
                        std::thread::sleep(Duration::from_millis(1000));
                        nodes[l].restart();
                    }
                    1 => {
                        // Pause: the leader stops answering without dying,
                        // then resumes believing it still leads.
                        nodes[l].signal("STOP");
                        std::thread::sleep(Duration::from_millis(1500));
                        nodes[l].signal("CONT");
                    }
                    _ => {
                        // Partition: the leader keeps running and serving
                        // clients but cannot reach the other two; what it
                        // sent them meanwhile arrives after the heal.
                        net.isolate(id);
                        std::thread::sleep(Duration::from_millis(1500));
                        net.heal();
                    }
                }
                faults[turn % 3] += 1;
                turn += 1;
            }
            (faults, nodes, net)
        })
    };
    let (faults, nodes, net) = nemesis.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut ops = 0;
    for c in clients {
        ops += c.await.unwrap();
    }
    // After healing, one more read of every key: whatever was acknowledged
    // must be reflected in what the cluster now returns.
    let mut last = ClusterClient::new(&addrs);
    for key in KEYS {
        let op = rec.get(CLIENTS, key);
        let req = pb::RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        match last
            .run(false, |mut k| {
                let req = req.clone();
                async move { k.range(req).await }
            })
            .await
        {
            Answer::Ok(r) => op.ok(r
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).to_string())),
            _ => panic!("the healed cluster answers a read of {key}"),
        }
    }
    let history = rec.history();
    let result = check(&history);
    eprintln!(
        "linearizability: {} operations recorded ({} issued, {} with unknown outcome) on {} keys; leader faults: {} SIGKILL, {} SIGSTOP, {} partitions: {}",
        history.len(),
        ops,
        history.iter().filter(|o| o.return_ns.is_none()).count(),
        result.keys_checked,
        faults[0],
        faults[1],
        faults[2],
        if result.ok { "linearizable" } else { "NOT linearizable" }
    );
    result.assert_linearizable();
    drop(nodes);
    drop(net);
}
