//! WSS: rustls on each shard's own sockets, through rustls's unbuffered API.
//!
//! A TLS connection carries a boxed [`Session`] in its slab entry. The session owns no
//! I/O buffer while the connection is idle: records are read into the shard's scratch
//! buffer and processed there; only the tail of a record split across reads is kept
//! (in `Session::partial`), and only ciphertext the socket would not take is kept (in
//! `Session::unsent`). Both are empty, with no allocation, between messages. (The
//! buffered `rustls::ServerConnection` keeps a 4 KiB receive buffer per connection for
//! its whole life; that was half of an idle WSS connection's memory.)
//!
//! The plaintext is handed to the same upgrade and WebSocket code as a plain
//! connection. Output is queued as plaintext in `Conn::out` and encrypted at flush time,
//! so the slow-reader bound and frame boundaries work as for plain connections. The TLS
//! handshake runs on the accepting shard's event loop like any other input (it never
//! blocks the shard), and the session (it is `Send`) moves with the socket on handoff.
//!
//! The crypto provider is aws-lc-rs (rustls's default): on this host it did full
//! handshakes ~8 % faster than ring (docs/BENCHMARKS.md).
//!
//! Resumption uses stateless tickets (no shared session cache, so no lock between
//! shards). Certificates come from PEM files, or `--tls-dev` generates a self-signed one
//! for `localhost`/`127.0.0.1` in the data directory. SIGHUP reloads the files; new
//! connections use the new certificate, established ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic};
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
    config_from_pem(&read(cert)?, &read(key)?)
        .map_err(|e| anyhow::anyhow!("{} / {}: {e}", cert.display(), key.display()))
}

/// Builds the rustls configuration from a PEM certificate chain and private key.
pub fn config_from_pem(cert: &[u8], key: &[u8]) -> anyhow::Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert[..]).collect::<Result<_, _>>()?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the chain file");
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut &key[..])?.ok_or_else(|| anyhow::anyhow!("no private key in the key file"))?;
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

/// Most TLS input held for one connection while a record (or, during the handshake, a
/// handshake message up to 64 KiB spread over records) is incomplete.
pub const MAX_PARTIAL: usize = 0x1_0000 + 0x4800;

/// Bytes added to each record of at most 16 KiB of application data: header (5),
/// content type (1), AEAD tag (16).
const RECORD_OVERHEAD: usize = 22;

/// Largest plaintext in one record.
const MAX_FRAGMENT: usize = 16 * 1024;

/// One TLS session over a connection's socket.
pub struct Session {
    conn: UnbufferedServerConnection,
    /// TLS input not yet processed: a record split across reads. Empty otherwise.
    partial: Vec<u8>,
    /// Ciphertext waiting for the socket (handshake records, alerts, or application data
    /// the socket would not take). Empty when idle.
    pub unsent: Vec<u8>,
    /// A `close_notify` was queued.
    notified: bool,
    /// Input failed: the session is dead and rustls must not be called again (its
    /// state may point into input that was not kept).
    failed: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("partial", &self.partial.len()).field("unsent", &self.unsent.len()).finish()
    }
}

/// What reading TLS input found besides plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing more; wait for more bytes.
    More,
    /// The peer sent `close_notify`: no more input will come.
    PeerClosed,
}

impl Session {
    /// A server session that will handshake with `cfg`.
    pub fn new(cfg: Arc<ServerConfig>) -> Result<Session, rustls::Error> {
        Ok(Session {
            conn: UnbufferedServerConnection::new(cfg)?,
            partial: Vec::new(),
            unsent: Vec::new(),
            notified: false,
            failed: false,
        })
    }

    /// Processes `data`, TLS bytes just read from the socket (decrypted in place, so it
    /// is the caller's scratch). Appends the plaintext to `plain` and queues what rustls
    /// answers (handshake flights, tickets, key updates) in `unsent`. An error leaves
    /// the alert to send in `unsent`; the connection must then be closed.
    ///
    /// rustls's unbuffered API wants every call to see the input it has not discarded
    /// yet (a handshake message being joined across records is tracked by position), so
    /// what is left after a read is carried in `partial` and handed back first.
    pub fn read(&mut self, data: &mut [u8], plain: &mut Vec<u8>) -> Result<Input, rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General("TLS session already failed".into()));
        }
        let Session { conn, partial, unsent, failed: dead, .. } = self;
        let carried = !partial.is_empty();
        let buf: &mut [u8] = if carried {
            partial.extend_from_slice(data);
            partial
        } else {
            &mut *data
        };
        let mut used = 0;
        let mut input = Input::More;
        let mut failed = None;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut buf[used..]);
            let more = match state {
                Err(e) => {
                    failed = Some(e);
                    false
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    failed.is_none()
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, unsent);
                    true
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // Sent in order from `unsent` by the caller's next flush.
                    t.done();
                    true
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    input = Input::PeerClosed;
                    false
                }
                // BlockedHandshake, WriteTraffic: everything complete has been
                // processed. (Early data is not enabled.)
                Ok(_) => false,
            };
            used += discard;
            if !more {
                break;
            }
        }
        if let Some(e) = failed {
            // rustls queued one fatal alert: hand it over. (One call only: a second
            // would process the input again and fail again.)
            if let Ok(ConnectionState::EncodeTlsData(mut e)) = conn.process_tls_records(&mut buf[used..]).state {
                encode(&mut e, unsent);
            }
            *dead = true;
            return Err(e);
        }
        let left = buf.len() - used;
        if left > MAX_PARTIAL {
            *dead = true;
            return Err(rustls::Error::General("TLS record or handshake message too large".into()));
        }
        if carried {
            partial.drain(..used);
            if partial.is_empty() {
                *partial = Vec::new();
            }
        } else if left > 0 {
            *partial = data[used..].to_vec();
        }
        Ok(input)
    }

    /// Encrypts `plain` as application data and appends the records to `out`.
    pub fn write(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if plain.is_empty() {
            return Ok(());
        }
        self.writable(out, |w, out| {
            let start = out.len();
            let mut room = plain.len() + plain.len().div_ceil(MAX_FRAGMENT) * RECORD_OVERHEAD;
            loop {
                out.resize(start + room, 0);
                match w.encrypt(plain, &mut out[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        return Ok(());
                    }
                    Err(EncryptError::InsufficientSize(s)) if s.required_size > room => room = s.required_size,
                    Err(e) => {
                        out.truncate(start);
                        return Err(rustls::Error::General(e.to_string()));
                    }
                }
            }
        })?
    }

    /// Appends a `close_notify` alert to `out` (once, and only once the handshake is
    /// done).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if self.notified {
            return;
        }
        let queued = self.writable(out, |w, out| {
            let start = out.len();
            out.resize(start + 64, 0);
            let n = w.queue_close_notify(&mut out[start..]).unwrap_or(0);
            out.truncate(start + n);
        });
        self.notified = queued.is_ok();
    }

    /// Runs `f` once the session may send application data, after appending to `out`
    /// any record rustls has queued first (a key update answer, say).
    fn writable<R>(
        &mut self,
        out: &mut Vec<u8>,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> R,
    ) -> Result<R, rustls::Error> {
        // Before the handshake is done rustls may be joining a message in input this
        // call would not show it; after a failure its state is not to be trusted.
        if self.failed || self.conn.is_handshaking() {
            return Err(rustls::Error::HandshakeNotComplete);
        }
        let Session { conn, partial, .. } = self;
        let mut f = Some(f);
        // Each turn hands over one queued record; a stuck session ends with an error.
        for _ in 0..64 {
            // The carried input, not an empty slice: rustls may be tracking a message
            // being joined in it (an empty slice there makes rustls index past its end).
            let UnbufferedStatus { discard, state } = conn.process_tls_records(partial);
            let done = match state? {
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, out);
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::WriteTraffic(mut w) => f.take().map(|f| f(&mut w, out)),
                _ => return Err(rustls::Error::HandshakeNotComplete),
            };
            partial.drain(..discard);
            if let Some(r) = done {
                return Ok(r);
            }
        }
        Err(rustls::Error::General("TLS session did not become writable".into()))
    }

    /// TLS input held until more arrives (bytes).
    pub fn carried(&self) -> usize {
        self.partial.len()
    }

    /// Full or resumed, once known.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }
}

/// Appends one handshake record rustls hands over to `out`.
fn encode(e: &mut rustls::unbuffered::EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match e.encode(&mut out[start..]) {
            Ok(n) => return out.truncate(start + n),
            Err(EncodeError::InsufficientSize(s)) => room = s.required_size,
            Err(EncodeError::AlreadyEncoded) => return out.truncate(start),
        }
    }
}
