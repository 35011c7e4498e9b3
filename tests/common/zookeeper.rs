//! A real ZooKeeper for the tests: Debian's `zookeeper` package (3.8), run
//! standalone (not the system service) on an ephemeral loopback port with
//! its data in a temporary directory, killed when its handle drops.
//!
//! [`Stall`] is a TCP proxy to put between `utopiad` and ZooKeeper: while
//! stalled, no byte passes in either direction and new connections are
//! held unforwarded, so ZooKeeper hears nothing from the client and
//! expires its session after the session timeout, as a network partition
//! would make it do.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The jars of Debian's `zookeeper` package: the server runs standalone
/// from them, not as the system service.
const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar";
/// How long ZooKeeper may take to answer `ruok` after it starts.
const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct ZooKeeper {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, the same across restarts.
    pub addr: String,
    port: u16,
}

impl ZooKeeper {
    /// Starts a standalone ZooKeeper, ready when this returns. Fails the
    /// test with a clear message when the package is not installed.
    pub fn start() -> ZooKeeper {
        assert!(
            Path::new("/usr/share/java/zookeeper.jar").exists()
                && Path::new("/usr/bin/java").exists(),
            "ZooKeeper is not installed: the ZooKeeper tests need Debian's `zookeeper` package \
             (apt-get install zookeeper; tests/run installs it)"
        );
        let dir = super::temp_dir();
        let addr = super::free_addr();
        let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        let mut zk = ZooKeeper {
            child: None,
            dir,
            addr,
            port,
        };
        zk.spawn();
        zk
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(self.data_dir()).expect("create ZooKeeper's data directory");
        let cfg = self.dir.path().join("zoo.cfg");
        // tickTime 500 ms: sessions of 1 to 10 s.
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr,stat,mntr,conf\nmaxClientCnxns=0\n",
                self.data_dir().display(),
                self.port
            ),
        )
        .expect("write zoo.cfg");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("zookeeper.log"))
            .expect("open ZooKeeper's log");
        let child = Command::new("java")
            .args(["-Xmx256m", "-XX:+UseSerialGC"])
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.path().display()))
            .args([
                "-cp",
                CLASSPATH,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(&cfg)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn java for ZooKeeper");
        self.child = Some(child);
        let start = Instant::now();
        while !self.is_ok() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("ZooKeeper exited at start ({status}); log:\n{}", self.log());
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "ZooKeeper did not answer ruok within {READY_DEADLINE:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True when ZooKeeper answers `ruok` with `imok`.
    pub fn is_ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &self.addr.parse().expect("an address"),
            Duration::from_secs(1),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"ruok").is_err() {
            return false;
        }
        let _ = s.shutdown(Shutdown::Write);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer == "imok"
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }

    /// Kills ZooKeeper (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port. With `lose_data`, its data
    /// directory is emptied first: it comes back knowing no node and no
    /// session, as a replaced server would.
    pub fn restart(&mut self, lose_data: bool) {
        self.kill();
        if lose_data {
            let _ = std::fs::remove_dir_all(self.data_dir());
        }
        self.spawn();
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy to `target` that can stop every byte (see the module doc).
pub struct Stall {
    pub addr: String,
    stalled: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Stall {
    pub fn start(target: &str) -> Stall {
        let listener = TcpListener::bind(super::free_addr()).expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let target = target.to_string();
        {
            let (stalled, closed, conns) = (stalled.clone(), closed.clone(), conns.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if closed.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let (stalled, closed, conns, target) = (
                        stalled.clone(),
                        closed.clone(),
                        conns.clone(),
                        target.clone(),
                    );
                    std::thread::spawn(move || {
                        // A connection made while stalled waits, unforwarded.
                        while stalled.load(Ordering::SeqCst) && !closed.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        let Ok(server) = TcpStream::connect(&target) else {
                            return;
                        };
                        if let Ok(mut c) = conns.lock() {
                            for s in [&client, &server] {
                                if let Ok(s) = s.try_clone() {
                                    c.push(s);
                                }
                            }
                        }
                        let pipe =
                            |mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>| {
                                let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                                let mut buf = [0u8; 16384];
                                loop {
                                    if stalled.load(Ordering::SeqCst) {
                                        // Bytes stay in the kernel's buffers.
                                        std::thread::sleep(Duration::from_millis(20));
                                        continue;
                                    }
                                    match from.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(n) => {
                                            if to.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                        }
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                std::io::ErrorKind::WouldBlock
                                                    | std::io::ErrorKind::TimedOut
                                            ) => {}
                                        Err(_) => break,
                                    }
                                }
                                let _ = to.shutdown(Shutdown::Both);
                                let _ = from.shutdown(Shutdown::Both);
                            };
                        let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                            (Ok(c), Ok(s)) => (c, s),
                            _ => return,
                        };
                        let st = stalled.clone();
                        let up = std::thread::spawn(move || pipe(client, server, st));
                        pipe(s2, c2, stalled);
                        let _ = up.join();
                    });
                }
            });
        }
        Stall {
            addr,
            stalled,
            closed,
            conns,
        }
    }

    /// Stops every byte, both ways, until [`Stall::resume`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
        if let Ok(c) = self.conns.lock() {
            for s in c.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Wakes the accept loop so that it sees `closed`.
        let _ = TcpStream::connect(&self.addr);
    }
}
