//! WSS: rustls on each shard's own sockets.
//!
//! A TLS connection carries a boxed `rustls::ServerConnection` in its slab entry. Bytes
//! read from the socket go through `read_tls`/`process_new_packets`; the plaintext is
//! handed to the same upgrade and WebSocket code as a plain connection. Output is
//! queued as plaintext in `Conn::out` and encrypted at flush time, so the slow-reader
//! bound and frame boundaries work as for plain connections. The TLS handshake runs on
//! the accepting shard's event loop like any other input (it never blocks the shard),
//! and the session (`ServerConnection` is `Send`) moves with the socket on handoff.
//!
//! The crypto provider is aws-lc-rs (rustls's default): on this host it did full
//! handshakes ~8 % faster than ring (docs/BENCHMARKS.md).
//!
//! Resumption uses stateless tickets (no shared session cache, so no lock between
//! shards). Certificates come from PEM files, or `--tls-dev` generates a self-signed one
//! for `localhost`/`127.0.0.1` in the data directory. SIGHUP reloads the files; new
//! connections use the new certificate, established ones keep theirs.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files (chain, key).
    Files(PathBuf, PathBuf),
}

/// Builds the rustls configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?
        .ok_or_else(|| anyhow::anyhow!("{} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // Two tickets per full handshake: enough for a reconnect, little to send.
    cfg.send_tls13_tickets = 2;
    Ok(Arc::new(cfg))
}

/// Writes (once) a self-signed development certificate for localhost into `dir` and
/// returns the (cert, key) paths. Clients trust `dev-cert.pem` to connect.
pub fn dev_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("dev-cert.pem"), dir.join("dev-key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let c = rcgen::generate_simple_self_signed(names)?;
    std::fs::write(&cert, c.cert.pem())?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&key)?;
        f.write_all(c.key_pair.serialize_pem().as_bytes())?;
    }
    tracing::warn!(cert = %cert.display(), "serving WSS with a self-signed development certificate");
    Ok((cert, key))
}

/// `io::Write` over a non-blocking socket: a full socket buffer is `WouldBlock`.
pub struct FdWriter(pub RawFd);

impl io::Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match crate::reactor::send(self.0, buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
