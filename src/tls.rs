//! TLS material: PEM files read once at startup and turned into tonic's
//! server and client configurations.
//!
//! Both binaries use it: `utopiad` for its listener and its connections to
//! peers ([`load_server`]), `utopia` for its connections to servers
//! ([`load_client`]). Every error names the file and what is wrong with it.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsSettings;

/// Longest a TLS handshake may take, on either side: a connection that
/// never completes one does not hold a task forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's TLS: what its two listeners serve, and how it connects to
/// peers.
#[derive(Clone)]
pub struct NodeTls {
    /// The client port: this node's certificate; client certificates from
    /// `ca_file` when required.
    pub server: ServerTlsConfig,
    /// The peer port: this node's certificate, and a certificate from the
    /// peer CA required of every caller.
    pub peer_server: ServerTlsConfig,
    /// Trusts the peer CA and presents this node's certificate.
    pub peer: ClientTlsConfig,
}

/// Reads `path`, which must hold at least one PEM block whose label ends
/// with `label` ("CERTIFICATE", "PRIVATE KEY"). `what` names the setting or
/// flag in messages.
pub fn read_pem(what: &str, path: &Path, label: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("{what} {}: cannot read: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if !found {
        return Err(format!(
            "{what} {}: not a PEM file with a {label} (no \"-----BEGIN ...{label}-----\" line)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The node's TLS from its settings, or `None` when TLS is off. The
/// configurations are built here once so that a certificate that does not
/// match its key, or a CA file without a usable certificate, is reported at
/// startup.
pub fn load_server(settings: &TlsSettings) -> Result<Option<NodeTls>, String> {
    if !settings.enabled() {
        return Ok(None);
    }
    let cert = read_pem("tls.cert_file", &settings.cert_file, "CERTIFICATE")?;
    let key = read_pem("tls.key_file", &settings.key_file, "PRIVATE KEY")?;
    let ca = read_pem("tls.ca_file", &settings.ca_file, "CERTIFICATE")?;
    let peer_ca = if settings.peer_ca_file.as_os_str().is_empty() {
        ca.clone()
    } else {
        read_pem("tls.peer_ca_file", &settings.peer_ca_file, "CERTIFICATE")?
    };
    let identity = Identity::from_pem(&cert, &key);
    let mut server = ServerTlsConfig::new()
        .identity(identity.clone())
        .timeout(HANDSHAKE_TIMEOUT);
    if settings.client_cert_required {
        server = server.client_ca_root(Certificate::from_pem(&ca));
    }
    let files = format!(
        "{} and {}",
        settings.cert_file.display(),
        settings.key_file.display()
    );
    tonic::transport::Server::builder()
        .tls_config(server.clone())
        .map_err(|e| format!("tls: {files}: {}", crate::error_chain(&e)))?;
    let peer_server = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(Certificate::from_pem(&peer_ca))
        .timeout(HANDSHAKE_TIMEOUT);
    let with_peer_ca = |e: tonic::transport::Error| {
        format!(
            "tls: {files} with {}: {}",
            settings.peer_ca().display(),
            crate::error_chain(&e)
        )
    };
    tonic::transport::Server::builder()
        .tls_config(peer_server.clone())
        .map_err(with_peer_ca)?;
    let peer = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&peer_ca))
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
        .tls_config(peer.clone())
        .map_err(with_peer_ca)?;
    Ok(Some(NodeTls {
        server,
        peer_server,
        peer,
    }))
}

/// A client's TLS: trust `ca_file`; present `cert_file` / `key_file` when
/// given (servers that require client certificates ask for one). `flags`
/// names the three inputs in messages, e.g. `["--cacert", "--cert", "--key"]`.
pub fn load_client(
    ca_file: &Path,
    cert: Option<(&Path, &Path)>,
    flags: [&str; 3],
) -> Result<ClientTlsConfig, String> {
    let ca = read_pem(flags[0], ca_file, "CERTIFICATE")?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some((cert_file, key_file)) = cert {
        let cert = read_pem(flags[1], cert_file, "CERTIFICATE")?;
        let key = read_pem(flags[2], key_file, "PRIVATE KEY")?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
        .tls_config(config.clone())
        .map_err(|e| format!("TLS settings: {}", crate::error_chain(&e)))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read_pem("tls.cert_file", &missing, "CERTIFICATE").unwrap_err();
        assert!(
            e.starts_with(&format!(
                "tls.cert_file {}: cannot read: ",
                missing.display()
            )),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = read_pem("--cacert", &junk, "CERTIFICATE").unwrap_err();
        assert!(
            e.starts_with(&format!("--cacert {}: not a PEM file", junk.display())),
            "{e}"
        );
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "-----BEGIN EC PRIVATE KEY-----\nAAAA\n").unwrap();
        assert!(read_pem("k", &key, "PRIVATE KEY").is_ok());
        assert!(read_pem("k", &key, "CERTIFICATE").is_err());
    }

    #[test]
    fn tls_off_loads_nothing() {
        assert!(load_server(&TlsSettings::default()).unwrap().is_none());
    }
}
