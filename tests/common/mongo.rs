//! A real MongoDB wire-protocol server for the mirror's tests: nx-27017
//! (NeoSQLite behind the MongoDB wire protocol, from PyPI), which
//! `tests/run` installs in a virtualenv under `$HOME/.cache/utopia/`. It
//! runs on an ephemeral loopback port with its data in a temporary
//! directory, and is killed when its handle drops. Without it the tests
//! fail and say how to install it; they are never skipped.
//!
//! nx-27017 is not MongoDB: it answers
//! the commands the mirror uses (bulk `update` with upserts, `delete`,
//! `find`, unique indexes), at about 1,200 operations a second. Production
//! targets MongoDB itself.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::Document;

/// How long the server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The nx-27017 executable: `$NX_27017`, or the virtualenv `tests/run`
/// makes.
pub fn executable() -> PathBuf {
    if let Some(p) = std::env::var_os("NX_27017") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/utopia/nx-venv/bin/nx-27017")
}

pub struct MongoServer {
    child: Option<Child>,
    pub port: u16,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: tempfile::TempDir,
}

impl MongoServer {
    /// Starts nx-27017 on a free loopback port; panics with the reason
    /// (and how to install it) when it cannot.
    pub fn start() -> MongoServer {
        let exe = executable();
        assert!(
            exe.exists(),
            "the MongoDB wire-protocol server nx-27017 is not installed at {}: run tests/run \
             (it makes the virtualenv), or `python3 -m venv $HOME/.cache/utopia/nx-venv && \
             $HOME/.cache/utopia/nx-venv/bin/pip install nx-27017`, or set NX_27017",
            exe.display()
        );
        let dir = super::temp_dir();
        let addr = super::free_addr();
        let port: u16 = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("a port");
        let log = std::fs::File::create(dir.path().join("nx.stderr")).expect("create the log");
        let child = Command::new(&exe)
            .args(["--host", "127.0.0.1", "-p", &port.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            // Its defaults are shared files in /tmp: keep each server's own.
            .arg("--pid-file")
            .arg(dir.path().join("nx.pid"))
            .arg("--log-file")
            .arg(dir.path().join("nx.log"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let mut server = MongoServer {
            child: Some(child),
            port,
            addr: addr.clone(),
            dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                panic!(
                    "nx-27017 exited with {status} before accepting connections: {}",
                    server.log()
                );
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "nx-27017 did not accept connections on {addr} within {READY_DEADLINE:?}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("nx.stderr"), read("nx.log"))
    }

    /// A client of the server (the official driver, as utopiad uses).
    pub async fn client(&self) -> mongodb::Client {
        let uri = format!("mongodb://{}/?directConnection=true", self.addr);
        mongodb::Client::with_uri_str(&uri)
            .await
            .expect("a MongoDB client")
    }

    /// Every document of `collection` in database `db`.
    pub async fn all(&self, db: &str, collection: &str) -> Vec<Document> {
        use futures::TryStreamExt;
        let client = self.client().await;
        let coll = client.database(db).collection::<Document>(collection);
        let cursor = coll
            .find(mongodb::bson::doc! {})
            .await
            .expect("find documents");
        cursor.try_collect().await.expect("read documents")
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
