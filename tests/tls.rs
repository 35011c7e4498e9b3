//! TLS on the gRPC port: a three-node cluster whose members and clients
//! all authenticate with certificates (mutual TLS), server-only TLS, and
//! clear errors for missing or unusable certificate files. The certificates
//! are made by the `openssl` command for each test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{cli, run_with_deadline, start_cluster_each, temp_dir, wait_for, Server};

/// A throwaway public-key infrastructure in one directory.
struct Pki {
    dir: PathBuf,
}

const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[node]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[peer]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:peer.utopia.test,IP:127.0.0.1
";

impl Pki {
    fn new(dir: PathBuf) -> Pki {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONF).unwrap();
        Pki { dir }
    }

    fn openssl(&self, args: &[&str]) {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(&self.dir);
        let out = run_with_deadline(cmd, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A self-signed CA: `NAME.pem`, `NAME.key`.
    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A certificate signed by `ca`: `NAME.pem`, `NAME.key`. `profile` is
    /// `node` (server and client, for 127.0.0.1) or `client`.
    fn cert(&self, name: &str, ca: &str, profile: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-config",
            "openssl.cnf",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "1",
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            profile,
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A `utopiad.conf` with a `tls` group for `name`'s certificate.
    fn node_conf(&self, name: &str, ca: &str, client_cert_required: bool) -> String {
        self.node_conf_with(name, ca, client_cert_required, "")
    }

    /// Like [`Pki::node_conf`], with `extra` settings inside the group.
    fn node_conf_with(
        &self,
        name: &str,
        ca: &str,
        client_cert_required: bool,
        extra: &str,
    ) -> String {
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "tls = {{\n  cert_file = \"{}\";\n  key_file = \"{}\";\n  ca_file = \"{}\";\n  client_cert_required = {client_cert_required};\n  {extra}\n}};\n",
                self.path(&format!("{name}.pem")),
                self.path(&format!("{name}.key")),
                self.path(&format!("{ca}.pem")),
            ),
        )
        .unwrap();
        conf.display().to_string()
    }

    /// A gRPC client's TLS: trust `ca`, present `name`'s certificate.
    fn client_tls(&self, ca: &str, name: Option<&str>) -> tonic::transport::ClientTlsConfig {
        let read = |f: String| std::fs::read(self.dir.join(f)).unwrap();
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read(format!("{ca}.pem"))),
        );
        if let Some(name) = name {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(format!("{name}.pem")),
                read(format!("{name}.key")),
            ));
        }
        tls
    }

    /// CLI flags for a client with `name`'s certificate (None: no
    /// certificate), trusting `ca`.
    fn client_flags(&self, ca: &str, name: Option<&str>) -> Vec<String> {
        let mut flags = vec!["--cacert".to_string(), self.path(&format!("{ca}.pem"))];
        if let Some(name) = name {
            flags.extend([
                "--cert".to_string(),
                self.path(&format!("{name}.pem")),
                "--key".to_string(),
                self.path(&format!("{name}.key")),
            ]);
        }
        flags
    }
}

fn run_cli(endpoints: &str, flags: &[String], args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    cli(endpoints, &all)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_cluster_over_mutual_tls_replicates_and_refuses_clients_without_a_certificate() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path().join("pki"));
    pki.ca("ca");
    for id in 1..=3 {
        pki.cert(&format!("node{id}"), "ca", "node");
    }
    pki.cert("client", "ca", "client");
    pki.ca("other-ca");
    pki.cert("stranger", "other-ca", "client");

    // Peers reach each other only over mutual TLS: every node requires a
    // certificate signed by the CA, so the cluster forms only if each node
    // presents its own to the others.
    let (nodes, addrs) = start_cluster_each(dir.path(), 3, |id| {
        vec![
            "--config".to_string(),
            pki.node_conf(&format!("node{id}"), "ca", true),
        ]
    });
    let endpoints = addrs.join(",");
    let client = pki.client_flags("ca", Some("client"));

    for i in 0..5 {
        let key = format!("tls/{i}");
        let out = run_cli(&endpoints, &client, &["put", &key, "secret"]);
        assert!(out.status.success(), "put {key}: {}", stderr(&out));
    }
    for node in &nodes {
        wait_for(
            "every node to hold every key",
            Duration::from_secs(20),
            || {
                let out = run_cli(
                    &node.addr,
                    &client,
                    &[
                        "get",
                        "tls/",
                        "--prefix",
                        "--count-only",
                        "--consistency",
                        "serializable",
                    ],
                );
                (String::from_utf8_lossy(&out.stdout).trim() == "5").then_some(())
            },
        );
    }
    // Cluster status asks every member over TLS.
    let out = run_cli(
        &endpoints,
        &client,
        &["--output", "json", "cluster", "status"],
    );
    assert!(out.status.success(), "cluster status: {}", stderr(&out));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let roles: Vec<&str> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles.len(), 3, "{view}");
    assert!(!roles.contains(&"unreachable"), "{view}");

    // Refused: a client that trusts the CA but has no certificate, one
    // whose certificate another CA signed, and one speaking plain text.
    for (who, flags) in [
        ("no client certificate", pki.client_flags("ca", None)),
        (
            "a certificate from another CA",
            pki.client_flags("ca", Some("stranger")),
        ),
        ("plain text", Vec::new()),
    ] {
        let out = run_cli(&endpoints, &flags, &["get", "tls/0"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{who}: refused with exit 3; stdout {:?}, stderr {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        eprintln!("{who}: {}", stderr(&out).trim());
    }
}

#[test]
fn server_tls_serves_clients_that_trust_its_ca() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path().join("pki"));
    pki.ca("ca");
    pki.cert("node1", "ca", "node");
    let conf = pki.node_conf("node1", "ca", false);
    let server = Server::start_with(&dir.path().join("data"), &["--config", &conf]);

    let out = run_cli(
        &server.addr,
        &pki.client_flags("ca", None),
        &["put", "k", "v"],
    );
    assert!(out.status.success(), "put over TLS: {}", stderr(&out));
    // An explicit https:// endpoint works as well.
    let out = run_cli(
        &format!("https://{}", server.addr),
        &pki.client_flags("ca", None),
        &["get", "k"],
    );
    assert!(out.status.success(), "get over TLS: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\nv\n");

    let out = run_cli(&server.addr, &[], &["get", "k"]);
    assert_eq!(out.status.code(), Some(3), "plain text is refused");
    // A CA that did not sign the server's certificate: the client refuses
    // the server.
    pki.ca("other-ca");
    let out = run_cli(
        &server.addr,
        &pki.client_flags("other-ca", None),
        &["get", "k"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

fn utopiad(data_dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(common::UTOPIAD);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
        .args(args);
    run_with_deadline(cmd, Duration::from_secs(30))
}

#[test]
fn missing_or_unusable_certificate_files_are_named() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path().join("pki"));
    pki.ca("ca");
    pki.cert("node1", "ca", "node");
    let data = dir.path().join("data");

    // Exit 2 with a message that contains `expected`.
    let refused = |out: std::process::Output, expected: &str| {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    };
    let conf = dir.path().join("tls.conf");
    let start_with = |cert: &str, key: &str| {
        std::fs::write(
            &conf,
            format!(
                "tls = {{ cert_file = \"{cert}\"; key_file = \"{key}\"; ca_file = \"{}\"; }};\n",
                pki.path("ca.pem")
            ),
        )
        .unwrap();
        utopiad(&data, &["--config", conf.to_str().unwrap()])
    };

    // utopiad names the setting and the file.
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    refused(
        start_with(missing, &pki.path("node1.key")),
        &format!("tls.cert_file {missing}: cannot read"),
    );
    // A key file that holds a certificate.
    let cert = pki.path("node1.pem");
    refused(
        start_with(&cert, &cert),
        &format!("tls.key_file {cert}: not a PEM file with a PRIVATE KEY"),
    );

    // The CLI names the flag and the file.
    refused(
        cli("127.0.0.1:1", &["--cacert", missing, "get", "k"]),
        &format!("--cacert {missing}: cannot read"),
    );
    refused(
        cli(
            "127.0.0.1:1",
            &["--cacert", &pki.path("ca.pem"), "--cert", &cert, "get", "k"],
        ),
        "--cert and --key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_not_a_peer() {
    use common::forge::{self, Seen};
    let dir = temp_dir();
    let pki = Pki::new(dir.path().join("pki"));
    pki.ca("ca");
    for id in 1..=3 {
        pki.cert(&format!("node{id}"), "ca", "peer");
    }
    // Signed by the members' own CA, valid for 127.0.0.1, but not a peer.
    pki.cert("client", "ca", "node");
    pki.ca("other-ca");
    pki.cert("stranger", "other-ca", "peer");
    let (nodes, addrs) = start_cluster_each(dir.path(), 3, |id| {
        vec![
            "--config".to_string(),
            pki.node_conf_with(
                &format!("node{id}"),
                "ca",
                true,
                "peer_allowed_names = ( \"peer.utopia.test\" );",
            ),
        ]
    });
    let client = pki.client_flags("ca", Some("client"));
    let endpoints = addrs.join(",");
    let out = run_cli(&endpoints, &client, &["put", "before", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = |node: &Server| -> serde_json::Value {
        let out = run_cli(&node.addr, &client, &["--output", "json", "status"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = status(&nodes[0]);
    let cluster_id = before["cluster_id"].as_u64().unwrap();
    let seen = Seen::from_status(&before);
    let follower = nodes
        .iter()
        .find(|n| status(n)["member_id"].as_u64() != Some(seen.leader))
        .unwrap();
    let endpoint = format!("https://{}", follower.peer_addr);

    // A client certificate of the members' CA: past TLS, refused by name,
    // even with the cluster id.
    let results = forge::send_all(
        &endpoint,
        Some(pki.client_tls("ca", Some("client"))),
        cluster_id,
        seen,
        3,
    )
    .await;
    for (what, r) in &results {
        let s = r.as_ref().expect_err(what);
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{what}: {s:?}");
        assert!(s.message().contains("peer_allowed_names"), "{what}: {s:?}");
    }
    // No certificate, or a peer's certificate from another CA: refused
    // by TLS itself.
    for name in [None, Some("stranger")] {
        let tls = match name {
            None => pki.client_tls("ca", None),
            Some(n) => pki
                .client_tls("ca", None)
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read(dir.path().join(format!("pki/{n}.pem"))).unwrap(),
                    std::fs::read(dir.path().join(format!("pki/{n}.key"))).unwrap(),
                )),
        };
        let results = forge::send_all(&endpoint, Some(tls), cluster_id, seen, 3).await;
        for (what, r) in &results {
            let s = r.as_ref().expect_err(what);
            assert!(
                matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ),
                "{name:?} {what}: {s:?}"
            );
        }
    }

    // Nothing changed, and the cluster goes on.
    for node in &nodes {
        let st = status(node);
        assert_eq!(st["leader"], before["leader"], "{st}");
        assert_eq!(st["raft_term"], before["raft_term"], "{st}");
    }
    let out = run_cli(&endpoints, &client, &["put", "after", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_cli(&endpoints, &client, &["get", "forged/unary"]);
    assert_eq!(out.status.code(), Some(1), "the forged key is absent");
}

#[test]
fn with_auth_on_a_client_certificate_names_the_user() {
    let dir = temp_dir();
    let pki = Pki::new(dir.path().join("pki"));
    pki.ca("ca");
    pki.cert("node1", "ca", "node");
    // Each client certificate's common name is its file name.
    for name in ["root", "alice", "mallory"] {
        pki.cert(name, "ca", "client");
    }
    let conf = pki.node_conf("node1", "ca", true);
    let server = Server::start_with(&dir.path().join("data"), &["--config", &conf]);
    let as_cert = |name: &str, args: &[&str]| {
        run_cli(&server.addr, &pki.client_flags("ca", Some(name)), args)
    };
    let ok = |out: std::process::Output, what: &str| {
        assert!(out.status.success(), "{what}: {}", stderr(&out));
    };
    let refused = |out: std::process::Output, code: &str, what: &str| {
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(code), "{what}: {}", stderr(&out));
    };

    // Users without passwords: only their certificates name them.
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--no-password"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        ok(as_cert("root", args), &format!("{args:?}"));
    }

    ok(
        as_cert("alice", &["put", "app/x", "1"]),
        "alice puts under app/",
    );
    refused(
        as_cert("alice", &["put", "other", "1"]),
        "PERMISSION_DENIED",
        "alice outside app/",
    );
    refused(
        as_cert("alice", &["user", "list"]),
        "PERMISSION_DENIED",
        "alice administers users",
    );
    refused(
        as_cert("mallory", &["get", "app/x"]),
        "UNAUTHENTICATED",
        "a certificate naming no user",
    );
    ok(as_cert("root", &["user", "list"]), "root lists users");
    // No password to log in with.
    refused(
        as_cert("alice", &["--user", "alice:", "get", "app/x"]),
        "UNAUTHENTICATED",
        "a password login for a certificate-only user",
    );
}
