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
//! rustls runs the handshake. Once a TLS 1.3 handshake is done, the session sends a key
//! update and leaves rustls's connection for a record layer of its own ([`Records`]):
//! rustls's AEAD objects for the negotiated suite seal and open the records, rustls's
//! kernel-connection API (made for kTLS, which this host lacks) derives the next
//! secrets on key updates, and this module frames the records and handles what a TLS 1.3
//! peer may send after the handshake: application data, alerts, `key_update`. That
//! takes an idle session from ~3.9 KB to ~2.2 KB, 1.2 KB of it aws-lc's two AES-GCM
//! contexts (`cargo run --release -p switchboard --example tls_memory`). TLS 1.2
//! sessions stay with rustls.
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

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic};
use rustls::{AlertDescription, ConnectionTrafficSecrets, ContentType, ServerConfig, Tls13CipherSuite};

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
    // A TLS 1.3 session leaves rustls's connection after its handshake (`Session`).
    cfg.enable_secret_extraction = true;
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

/// Largest TLS 1.3 record body on the wire (RFC 8446 5.2: 2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;

/// Empty application-data records accepted in a row (they cost work and carry nothing).
const MAX_EMPTY_RECORDS: u8 = 32;

/// Key updates accepted from the peer between two records of data (each costs a key
/// derivation and a new AEAD context).
const MAX_KEY_UPDATES: u8 = 32;

/// One TLS session over a connection's socket.
pub struct Session {
    state: State,
    /// TLS input not yet processed: a record split across reads. Empty otherwise.
    partial: Vec<u8>,
    /// Ciphertext waiting for the socket (handshake records, alerts, or application data
    /// the socket would not take). Empty when idle.
    pub unsent: Vec<u8>,
    /// A `close_notify` was queued.
    notified: bool,
    /// Full or resumed, once the handshake is done.
    kind: Option<rustls::HandshakeKind>,
}

/// Where the session is. Both live states are boxed, so a session in `Records` does
/// not keep room for the handshake's much larger state.
enum State {
    /// rustls runs the connection: the handshake, and TLS 1.2 sessions for good.
    Rustls(Box<UnbufferedServerConnection>),
    /// A TLS 1.3 session after its handshake (see [`Records`]).
    Records(Box<Records>),
    /// Input failed: the session is dead and rustls must not be called again (its
    /// state may point into input that was not kept).
    Failed,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Rustls(_) => "rustls",
            State::Records(_) => "records",
            State::Failed => "failed",
        };
        f.debug_struct("Session")
            .field("state", &state)
            .field("partial", &self.partial.len())
            .field("unsent", &self.unsent.len())
            .finish()
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
            state: State::Rustls(Box::new(UnbufferedServerConnection::new(cfg)?)),
            partial: Vec::new(),
            unsent: Vec::new(),
            notified: false,
            kind: None,
        })
    }

    /// Processes `data`, TLS bytes just read from the socket (decrypted in place, so it
    /// is the caller's scratch). Appends the plaintext to `plain` and queues what the
    /// session answers (handshake flights, tickets, key updates) in `unsent`. An error
    /// leaves the alert to send in `unsent`; the connection must then be closed.
    ///
    /// What is left after a read (a record split across reads) is carried in `partial`
    /// and handed back first: rustls's unbuffered API wants every call to see the input
    /// it has not discarded yet (a handshake message being joined across records is
    /// tracked by position).
    pub fn read(&mut self, data: &mut [u8], plain: &mut Vec<u8>) -> Result<Input, rustls::Error> {
        let Session { state, partial, unsent, .. } = self;
        let carried = !partial.is_empty();
        let buf: &mut [u8] = if carried {
            partial.extend_from_slice(data);
            partial
        } else {
            &mut *data
        };
        let read = match state {
            State::Rustls(conn) => read_rustls(conn, buf, plain, unsent),
            State::Records(records) => records.read(buf, plain, unsent),
            State::Failed => return Err(rustls::Error::General("TLS session already failed".into())),
        };
        let (used, input) = match read {
            Ok(r) => r,
            Err(e) => {
                self.state = State::Failed;
                return Err(e);
            }
        };
        let left = buf.len() - used;
        if left > MAX_PARTIAL {
            self.state = State::Failed;
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
        if left == 0 && input == Input::More {
            self.leave_rustls()?;
        }
        Ok(input)
    }

    /// Once a TLS 1.3 handshake is done and no input is held, keeps only what the
    /// connection needs from now on: the record keys, sequence numbers and what key
    /// updates need (rustls's kernel-connection API), and drops rustls's connection.
    /// TLS 1.2 sessions stay with rustls.
    fn leave_rustls(&mut self) -> Result<(), rustls::Error> {
        let State::Rustls(conn) = &self.state else { return Ok(()) };
        if conn.is_handshaking() || conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Ok(());
        }
        self.kind = conn.handshake_kind();
        // Our records continue under fresh keys: a key update first (RFC 8446 4.6.3
        // lets either side send one at any time). aws-lc's TLS 1.3 sealing key accepts
        // only a sequence that starts at 0, so it cannot take over the current key
        // mid-stream; after the update the sending sequence starts at 0.
        let mut out = std::mem::take(&mut self.unsent);
        let updated = self.writable(&mut out, |w, _| w.refresh_traffic_keys()).and_then(|r| r);
        // Hand over the key_update record rustls queued.
        let flushed = updated.and_then(|()| self.writable(&mut out, |_, _| ()));
        self.unsent = out;
        if let Err(e) = flushed {
            self.state = State::Failed;
            return Err(e);
        }
        let State::Rustls(conn) = std::mem::replace(&mut self.state, State::Failed) else { return Ok(()) };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        let suite = kernel.negotiated_cipher_suite().tls13().ok_or(rustls::Error::HandshakeNotComplete)?;
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        self.state = State::Records(Box::new(Records {
            enc: encrypter(suite, tx)?,
            dec: decrypter(suite, rx)?,
            tx_seq,
            rx_seq,
            rotate_at: suite.common.confidentiality_limit.saturating_sub(1 << 10),
            suite,
            keys: KeySchedule::Kernel(kernel),
            empty: 0,
            updates: 0,
            answer_update: false,
        }));
        Ok(())
    }

    /// Encrypts `plain` as application data and appends the records to `out`.
    pub fn write(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if plain.is_empty() {
            return Ok(());
        }
        if let State::Records(records) = &mut self.state {
            return plain
                .chunks(MAX_FRAGMENT)
                .try_for_each(|chunk| records.seal(ContentType::ApplicationData, chunk, out));
        }
        self.writable(out, |mut w, out| {
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
        if let State::Records(records) = &mut self.state {
            let alert = [1, u8::from(AlertDescription::CloseNotify)];
            self.notified = records.seal(ContentType::Alert, &alert, out).is_ok();
            return;
        }
        let queued = self.writable(out, |mut w, out| {
            let start = out.len();
            out.resize(start + 64, 0);
            let n = w.queue_close_notify(&mut out[start..]).unwrap_or(0);
            out.truncate(start + n);
        });
        self.notified = queued.is_ok();
    }

    /// Runs `f` once the rustls session may send application data, after appending to
    /// `out` any record rustls has queued first (a key update answer, say).
    fn writable<R>(
        &mut self,
        out: &mut Vec<u8>,
        f: impl FnOnce(WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> R,
    ) -> Result<R, rustls::Error> {
        let Session { state: State::Rustls(conn), partial, .. } = self else {
            return Err(rustls::Error::General("TLS session already failed".into()));
        };
        // Before the handshake is done rustls may be joining a message in input this
        // call would not show it.
        if conn.is_handshaking() {
            return Err(rustls::Error::HandshakeNotComplete);
        }
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
                ConnectionState::WriteTraffic(w) => f.take().map(|f| f(w, out)),
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
        match &self.state {
            State::Rustls(conn) => conn.handshake_kind(),
            _ => self.kind,
        }
    }

    /// The session has left rustls for its own record layer (TLS 1.3 after the
    /// handshake).
    #[cfg(test)]
    fn is_compact(&self) -> bool {
        matches!(self.state, State::Records(_))
    }
}

/// Feeds `buf` to rustls. Returns the bytes it consumed and whether the peer closed.
fn read_rustls(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    unsent: &mut Vec<u8>,
) -> Result<(usize, Input), rustls::Error> {
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
            // BlockedHandshake, WriteTraffic: everything complete has been processed.
            // (Early data is not enabled.)
            Ok(_) => false,
        };
        used += discard;
        if !more {
            break;
        }
    }
    if let Some(e) = failed {
        // rustls queued one fatal alert: hand it over. (One call only: a second would
        // process the input again and fail again.)
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = conn.process_tls_records(&mut buf[used..]).state {
            encode(&mut e, unsent);
        }
        return Err(e);
    }
    Ok((used, input))
}

/// A TLS 1.3 session after its handshake, without rustls's connection: the record
/// layer runs here on rustls's own AEAD objects (`MessageEncrypter`/`MessageDecrypter`
/// from the negotiated suite, which also add and strip the inner content type), and
/// rustls's kernel-connection API derives the next traffic secrets for key updates.
/// What this code does itself is the framing: record headers, the content types a
/// TLS 1.3 peer may send after the handshake (application data, alerts, key updates),
/// and the sequence numbers.
struct Records {
    keys: KeySchedule,
    suite: &'static Tls13CipherSuite,
    enc: Box<dyn MessageEncrypter>,
    dec: Box<dyn MessageDecrypter>,
    tx_seq: u64,
    rx_seq: u64,
    /// Our sending key is replaced (a key update) when `tx_seq` reaches this: below
    /// the suite's confidentiality limit.
    rotate_at: u64,
    /// Empty application-data records in a row.
    empty: u8,
    /// Key updates from the peer since its last record of data.
    updates: u8,
    /// The peer asked for our key update: it goes out before our next record.
    answer_update: bool,
}

impl Records {
    /// Opens every complete record in `buf`. Returns the bytes consumed (whole records)
    /// and whether the peer closed.
    fn read(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        unsent: &mut Vec<u8>,
    ) -> Result<(usize, Input), rustls::Error> {
        let mut used = 0;
        while let [typ, v0, v1, l0, l1, ..] = buf[used..] {
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            if len > MAX_CIPHERTEXT {
                return Err(self.fail(
                    rustls::Error::PeerSentOversizedRecord,
                    AlertDescription::RecordOverflow,
                    unsent,
                ));
            }
            if buf.len() - used < 5 + len {
                break;
            }
            // After the handshake a TLS 1.3 peer sends only protected records, typed
            // application_data on the wire.
            if ContentType::from(typ) != ContentType::ApplicationData {
                let e = rustls::Error::InappropriateMessage {
                    expect_types: vec![ContentType::ApplicationData],
                    got_type: ContentType::from(typ),
                };
                return Err(self.fail(e, AlertDescription::UnexpectedMessage, unsent));
            }
            let version = rustls::ProtocolVersion::from(u16::from_be_bytes([v0, v1]));
            let body = &mut buf[used + 5..used + 5 + len];
            let opened =
                self.dec.decrypt(InboundOpaqueMessage::new(ContentType::ApplicationData, version, body), self.rx_seq);
            let msg = match opened {
                Ok(m) => m,
                Err(e) => return Err(self.fail(e, AlertDescription::BadRecordMac, unsent)),
            };
            self.rx_seq = self.rx_seq.checked_add(1).ok_or(rustls::Error::DecryptError)?;
            used += 5 + len;
            match msg.typ {
                ContentType::ApplicationData if msg.payload.is_empty() => {
                    self.empty += 1;
                    if self.empty > MAX_EMPTY_RECORDS {
                        let e = rustls::Error::General("too many empty records".into());
                        return Err(self.fail(e, AlertDescription::UnexpectedMessage, unsent));
                    }
                }
                ContentType::ApplicationData => {
                    self.empty = 0;
                    self.updates = 0;
                    plain.extend_from_slice(msg.payload);
                }
                ContentType::Alert => match *msg.payload {
                    [_, 0] => return Ok((used, Input::PeerClosed)), // close_notify
                    [1, 90] => {}                                   // user_canceled: a warning
                    [_, d] => return Err(rustls::Error::AlertReceived(AlertDescription::from(d))),
                    _ => {
                        let e = rustls::Error::General("malformed alert".into());
                        return Err(self.fail(e, AlertDescription::DecodeError, unsent));
                    }
                },
                ContentType::Handshake => {
                    let payload = msg.payload.to_vec();
                    if let Err((e, alert)) = self.post_handshake(&payload) {
                        return Err(self.fail(e, alert, unsent));
                    }
                }
                other => {
                    let e = rustls::Error::InappropriateMessage {
                        expect_types: vec![ContentType::ApplicationData, ContentType::Alert, ContentType::Handshake],
                        got_type: other,
                    };
                    return Err(self.fail(e, AlertDescription::UnexpectedMessage, unsent));
                }
            }
        }
        Ok((used, Input::More))
    }

    /// Handshake messages after the handshake: a client may only send `key_update`
    /// (RFC 8446 4.6.3), whole and last in its record (4.6.3 and 5.1).
    fn post_handshake(&mut self, payload: &[u8]) -> Result<(), (rustls::Error, AlertDescription)> {
        let unexpected = |what: &str| (rustls::Error::General(what.into()), AlertDescription::UnexpectedMessage);
        let [typ, a, b, c, ref body @ ..] = *payload else {
            return Err(unexpected("a handshake message split across records"));
        };
        let len = u32::from_be_bytes([0, a, b, c]) as usize;
        if body.len() != len {
            return Err(unexpected("a handshake message split across records or followed by another"));
        }
        const KEY_UPDATE: u8 = 24;
        if typ != KEY_UPDATE {
            return Err(unexpected("a handshake message other than key_update after the handshake"));
        }
        let requested = match *body {
            [0] => false,
            [1] => true,
            _ => return Err((rustls::Error::General("malformed key_update".into()), AlertDescription::DecodeError)),
        };
        self.updates += 1;
        if self.updates > MAX_KEY_UPDATES {
            return Err(unexpected("too many key updates without data"));
        }
        // The peer's following records use its next secret.
        let internal = |e: rustls::Error| (e, AlertDescription::InternalError);
        let (seq, secrets) = self.keys.next_rx().map_err(internal)?;
        self.dec = decrypter(self.suite, secrets).map_err(internal)?;
        self.rx_seq = seq;
        // The answer goes before our next record (RFC 8446 4.6.3), once however many
        // requests came in meanwhile.
        self.answer_update |= requested;
        Ok(())
    }

    /// Sends `key_update` under the current key, then switches to the next one.
    fn update_tx(&mut self, request_peer: bool, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        let msg = [24, 0, 0, 1, u8::from(request_peer)];
        self.seal_raw(ContentType::Handshake, &msg, out)?;
        let (seq, secrets) = self.keys.next_tx()?;
        self.enc = encrypter(self.suite, secrets)?;
        self.tx_seq = seq;
        Ok(())
    }

    /// Appends one protected record of `typ` holding `payload` (at most 16 KiB) to
    /// `out`, after our key update if the peer asked for one or the sending key is near
    /// its limit.
    fn seal(&mut self, typ: ContentType, payload: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        if self.answer_update || self.tx_seq >= self.rotate_at {
            self.answer_update = false;
            self.update_tx(false, out)?;
        }
        self.seal_raw(typ, payload, out)
    }

    fn seal_raw(&mut self, typ: ContentType, payload: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        let msg = OutboundPlainMessage {
            typ,
            version: rustls::ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let sealed = self.enc.encrypt(msg, self.tx_seq)?;
        self.tx_seq += 1;
        out.extend_from_slice(&sealed.encode());
        Ok(())
    }

    /// Queues a fatal alert (best effort) and returns `e`.
    fn fail(&mut self, e: rustls::Error, alert: AlertDescription, out: &mut Vec<u8>) -> rustls::Error {
        let _ = self.seal_raw(ContentType::Alert, &[2, u8::from(alert)], out);
        e
    }
}

/// Where the next traffic secrets come from when a key update moves a direction on.
// Production builds have the `Kernel` variant only; the small `Fixed` one exists in
// fuzzing and test builds, where the size difference costs nothing.
#[cfg_attr(any(fuzzing, test), allow(clippy::large_enum_variant))]
enum KeySchedule {
    /// rustls's kernel-connection API: the TLS 1.3 key schedule of the real handshake.
    Kernel(KernelConnection<ServerConnectionData>),
    /// Fuzzing and tests only: secrets that are a fixed function of the direction and
    /// the generation ([`fixed_secrets`]), so a session can start established without a
    /// handshake (which costs ~60 ms: the record layer could barely be fuzzed).
    #[cfg(any(fuzzing, test))]
    Fixed {
        /// Key updates received so far.
        rx: u32,
        /// Key updates sent so far.
        tx: u32,
    },
}

impl KeySchedule {
    /// The peer's next sending secret, and the sequence number it starts at.
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            KeySchedule::Kernel(k) => k.update_rx_secret(),
            #[cfg(any(fuzzing, test))]
            KeySchedule::Fixed { rx, .. } => {
                *rx += 1;
                Ok((0, fixed_secrets(true, *rx)))
            }
        }
    }

    /// Our next sending secret, and the sequence number it starts at.
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            KeySchedule::Kernel(k) => k.update_tx_secret(),
            #[cfg(any(fuzzing, test))]
            KeySchedule::Fixed { tx, .. } => {
                *tx += 1;
                Ok((0, fixed_secrets(false, *tx)))
            }
        }
    }
}

/// The suite of sessions with fixed keys (fuzzing and tests).
#[cfg(any(fuzzing, test))]
pub fn fixed_suite() -> &'static Tls13CipherSuite {
    match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384 {
        rustls::SupportedCipherSuite::Tls13(s) => s,
        _ => unreachable!("a TLS 1.3 suite"),
    }
}

/// The traffic secret of the client's (`client`) or the server's sending direction
/// after `generation` key updates, in sessions with fixed keys (fuzzing and tests).
#[cfg(any(fuzzing, test))]
pub fn fixed_secrets(client: bool, generation: u32) -> ConnectionTrafficSecrets {
    let mut key = [0x5a; 32];
    key[0] = u8::from(client);
    key[1..5].copy_from_slice(&generation.to_be_bytes());
    let mut iv = [0xa5; 12];
    iv[0] = u8::from(client);
    iv[1..5].copy_from_slice(&generation.to_be_bytes());
    ConnectionTrafficSecrets::Aes256Gcm { key: AeadKey::from(key), iv: Iv::new(iv) }
}

#[cfg(any(fuzzing, test))]
impl Session {
    /// A TLS 1.3 session past its handshake, with keys from [`fixed_secrets`]: what the
    /// record layer is fuzzed from. Never reachable from a listener.
    pub fn established_with_fixed_keys() -> Session {
        let suite = fixed_suite();
        let records = Records {
            enc: encrypter(suite, fixed_secrets(false, 0)).expect("a fixed AES-256-GCM key"),
            dec: decrypter(suite, fixed_secrets(true, 0)).expect("a fixed AES-256-GCM key"),
            tx_seq: 0,
            rx_seq: 0,
            rotate_at: suite.common.confidentiality_limit.saturating_sub(1 << 10),
            suite,
            keys: KeySchedule::Fixed { rx: 0, tx: 0 },
            empty: 0,
            updates: 0,
            answer_update: false,
        };
        Session {
            state: State::Records(Box::new(records)),
            partial: Vec::new(),
            unsent: Vec::new(),
            notified: false,
            kind: Some(rustls::HandshakeKind::Full),
        }
    }
}

/// The record sealer for `secrets` of a TLS 1.3 suite.
fn encrypter(
    suite: &Tls13CipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageEncrypter>, rustls::Error> {
    let (key, iv) = key_iv(secrets)?;
    Ok(suite.aead_alg.encrypter(key, iv))
}

/// The record opener for `secrets` of a TLS 1.3 suite.
fn decrypter(
    suite: &Tls13CipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, rustls::Error> {
    let (key, iv) = key_iv(secrets)?;
    Ok(suite.aead_alg.decrypter(key, iv))
}

fn key_iv(secrets: ConnectionTrafficSecrets) -> Result<(AeadKey, Iv), rustls::Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(rustls::Error::General("unsupported cipher suite".into())),
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Moves the client's TLS output into the session and the session's into the
    /// client; returns the plaintext each side received.
    fn pump(c: &mut rustls::ClientConnection, s: &mut Session) -> (Vec<u8>, Vec<u8>) {
        let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
        for _ in 0..16 {
            let mut out = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut out).unwrap();
            }
            s.read(&mut out, &mut at_server).unwrap();
            let back = std::mem::take(&mut s.unsent);
            let mut b = &back[..];
            while !b.is_empty() {
                c.read_tls(&mut b).unwrap();
                c.process_new_packets().unwrap();
                let _ = c.reader().read_to_end(&mut at_client);
            }
            if out.is_empty() && back.is_empty() {
                break;
            }
        }
        (at_server, at_client)
    }

    fn connected(version: &'static rustls::SupportedProtocolVersion) -> (rustls::ClientConnection, Session) {
        let (server, client) = crate::fuzzing::tls_pair(&[version]);
        let mut c = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        let mut s = Session::new(server).unwrap();
        c.writer().write_all(b"hello").unwrap();
        assert_eq!(pump(&mut c, &mut s).0, b"hello");
        assert!(!c.is_handshaking());
        (c, s)
    }

    /// Server data the client must read intact.
    fn send(c: &mut rustls::ClientConnection, s: &mut Session, data: &[u8]) {
        let mut out = std::mem::take(&mut s.unsent);
        s.write(data, &mut out).unwrap();
        s.unsent = out;
        assert_eq!(pump(c, s).1, data);
    }

    #[test]
    fn a_tls13_session_leaves_rustls_after_its_handshake_and_keeps_working() {
        let (mut c, mut s) = connected(&rustls::version::TLS13);
        assert!(s.is_compact());
        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        send(&mut c, &mut s, &big);
        c.set_buffer_limit(None);
        c.writer().write_all(&big).unwrap();
        assert_eq!(pump(&mut c, &mut s).0, big);
        // A key update asked by the client: answered, and both directions go on.
        c.refresh_traffic_keys().unwrap();
        c.writer().write_all(b"after the update").unwrap();
        assert_eq!(pump(&mut c, &mut s).0, b"after the update");
        send(&mut c, &mut s, b"server, after the update");
        // Several requests in a row get one answer, before the server's next record (a
        // rustls client refuses a run of key updates: TooManyKeyUpdateRequests).
        for _ in 0..MAX_KEY_UPDATES / 2 {
            c.refresh_traffic_keys().unwrap();
            pump(&mut c, &mut s);
        }
        send(&mut c, &mut s, b"after many updates");
        c.writer().write_all(b"client, after many updates").unwrap();
        assert_eq!(pump(&mut c, &mut s).0, b"client, after many updates");
        // close_notify both ways.
        c.send_close_notify();
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        assert_eq!(s.read(&mut out, &mut Vec::new()).unwrap(), Input::PeerClosed);
        let mut alert = Vec::new();
        s.close_notify(&mut alert);
        let mut a = &alert[..];
        c.read_tls(&mut a).unwrap();
        assert!(c.process_new_packets().unwrap().peer_has_closed());
    }

    #[test]
    fn the_server_replaces_its_sending_key_before_the_suite_limit() {
        let (mut c, mut s) = connected(&rustls::version::TLS13);
        let State::Records(r) = &mut s.state else { panic!("not compact") };
        r.rotate_at = r.tx_seq + 3;
        for i in 0..10u8 {
            send(&mut c, &mut s, &[i; 100]);
        }
        let State::Records(r) = &s.state else { panic!("not compact") };
        assert!(r.tx_seq < 10, "the sequence restarted after a key update: {}", r.tx_seq);
    }

    #[test]
    fn a_peer_that_only_updates_keys_is_cut_off() {
        let (mut c, mut s) = connected(&rustls::version::TLS13);
        let mut refused = false;
        for _ in 0..=MAX_KEY_UPDATES {
            c.refresh_traffic_keys().unwrap();
            let mut out = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut out).unwrap();
            }
            if s.read(&mut out, &mut Vec::new()).is_err() {
                refused = true;
                break;
            }
            // The client needs the server's answer before it may ask again.
            let mut answer = Vec::new();
            s.write(b"x", &mut answer).unwrap();
            let mut a = &answer[..];
            while !a.is_empty() {
                c.read_tls(&mut a).unwrap();
                c.process_new_packets().unwrap();
            }
            let _ = c.reader().read_to_end(&mut Vec::new());
        }
        assert!(refused, "{} key updates without data were accepted", MAX_KEY_UPDATES + 1);
    }

    #[test]
    fn a_tls12_session_stays_with_rustls() {
        let (mut c, mut s) = connected(&rustls::version::TLS12);
        assert!(!s.is_compact());
        send(&mut c, &mut s, b"over tls 1.2");
    }

    #[test]
    fn records_a_tls13_peer_may_not_send_close_the_session_with_an_alert() {
        for junk in [
            vec![22, 3, 3, 0, 5, 1, 2, 3, 4, 5],         // a plaintext handshake record
            [&[23, 3, 3, 0, 20][..], &[0; 20]].concat(), // a record that does not open
            vec![23, 3, 3, 0x48, 0x01],                  // a header announcing too much
        ] {
            let (_c, mut s) = connected(&rustls::version::TLS13);
            let mut junk = junk.clone();
            assert!(s.read(&mut junk, &mut Vec::new()).is_err(), "{junk:?} accepted");
            assert!(!s.unsent.is_empty(), "no alert for {junk:?}");
            assert!(s.read(&mut [23, 3, 3, 0, 0], &mut Vec::new()).is_err(), "read after failure");
        }
    }
}
