//! One load-generator connection on a glommio executor: TCP from a chosen loopback
//! source address, optional TLS (futures-rustls), the HTTP upgrade with a minted token,
//! then protocol frames in either encoding. Failures are classified by reason so a
//! storm report can say why connections failed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use wire::frame::{ClientFrame, ServerFrame};
use wire::Encoding;

/// How long an upgrade (TCP + TLS + HTTP + `ready`) may take.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// Gateway address (loopback).
    pub addr: SocketAddr,
    /// Source addresses to spread connections over (empty: the kernel's choice).
    pub sources: Vec<IpAddr>,
    /// TLS client configuration for WSS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Frame encoding.
    pub encoding: Encoding,
    /// Token secret (HS256).
    pub secret: String,
    /// Offer permessage-deflate (and compress what this client sends when accepted).
    pub deflate: bool,
}

/// The permessage-deflate offer a browser makes.
pub const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

thread_local! {
    /// One codec per client executor (the gateway's: each message on its own).
    static CODEC: std::cell::RefCell<switchboard::deflate::Codec> = Default::default();
}

/// Inflates a compressed server message (at most 16 MiB).
pub fn inflate(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    CODEC
        .with_borrow_mut(|c| c.inflate(payload, 16 << 20, &mut out))
        .map_err(|e| anyhow::anyhow!("bad compressed frame: {e:?}"))?;
    Ok(out)
}

/// Why a connection failed (the keys of a report's `failures`).
pub fn reason(e: &anyhow::Error) -> String {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connect_refused".into(),
            std::io::ErrorKind::TimedOut => "timeout".into(),
            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable => "no_source_port".into(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "reset".into(),
            std::io::ErrorKind::UnexpectedEof => "closed".into(),
            _ => format!("io_{:?}", io.kind()).to_lowercase(),
        };
    }
    let text = e.to_string();
    if let Some(status) = text.strip_prefix("http ") {
        return format!("http_{}", status.split_whitespace().next().unwrap_or("?"));
    }
    if text.starts_with("tls") {
        return "tls".into();
    }
    if text.contains("timed out") {
        return "timeout".into();
    }
    "other".into()
}

/// Parses `127.0.0.2-127.0.0.40` or `127.0.0.5` (loopback only).
pub fn parse_sources(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi): (Ipv4Addr, Ipv4Addr) = (lo.trim().parse()?, hi.trim().parse()?);
    anyhow::ensure!(lo.is_loopback() && hi.is_loopback(), "source addresses must be in 127.0.0.0/8");
    anyhow::ensure!(u32::from(lo) <= u32::from(hi), "empty source range {s}");
    anyhow::ensure!(u32::from(hi) - u32::from(lo) < 65_536, "source range {s} too large");
    Ok((u32::from(lo)..=u32::from(hi)).map(|a| IpAddr::V4(Ipv4Addr::from(a))).collect())
}

trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}
type Boxed = Pin<Box<dyn Stream>>;

/// An open, upgraded connection.
pub struct Conn {
    /// Incoming frames.
    pub rx: Rx,
    /// Outgoing frames.
    pub tx: Tx,
    /// The TLS handshake resumed an earlier session (always false on plain WS).
    pub resumed: bool,
    /// The negotiated TLS cipher suite (None on plain WS).
    pub suite: Option<rustls::CipherSuite>,
}

/// The read side: decodes server frames, answering nothing by itself.
pub struct Rx {
    r: ReadHalf<Boxed>,
    buf: Vec<u8>,
    encoding: Encoding,
}

/// A frame's payload, inflated if the frame is compressed (RSV1).
fn message<'a>(h: &FrameHeader, payload: &'a [u8]) -> anyhow::Result<std::borrow::Cow<'a, [u8]>> {
    Ok(if h.rsv1 { inflate(payload)?.into() } else { payload.into() })
}

/// What arrived.
pub enum In {
    /// A protocol frame.
    Frame(ServerFrame),
    /// A WebSocket ping (its payload), to be answered with a pong.
    Ping(Vec<u8>),
    /// A close frame (its code).
    Close(u16),
}

impl Rx {
    /// The next frame, ping or close. Reads in 4 KiB steps and frees its buffer when
    /// nothing is pending, so an idle client connection holds no buffer either.
    pub async fn next(&mut self) -> anyhow::Result<In> {
        loop {
            let mut cur = std::io::Cursor::new(&self.buf[..]);
            if let Some((h, len)) = FrameHeader::parse(&mut cur)? {
                let start = cur.position() as usize;
                let end = start + len as usize;
                if self.buf.len() >= end {
                    let payload = &self.buf[start..end];
                    let got = match h.opcode {
                        OpCode::Data(Data::Binary) if self.encoding == Encoding::FlatBuffers => {
                            Some(In::Frame(wire::fb::decode_server(&message(&h, payload)?)?))
                        }
                        OpCode::Data(Data::Text) if self.encoding == Encoding::Json => {
                            Some(In::Frame(wire::json::decode_server(&message(&h, payload)?)?))
                        }
                        OpCode::Control(Control::Ping) => Some(In::Ping(payload.to_vec())),
                        OpCode::Control(Control::Close) => {
                            Some(In::Close(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))))
                        }
                        _ => None,
                    };
                    self.buf.drain(..end);
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                    }
                    match got {
                        Some(g) => return Ok(g),
                        None => continue,
                    }
                }
            }
            let len = self.buf.len();
            self.buf.resize(len + 4096, 0);
            let n = self.r.read(&mut self.buf[len..]).await?;
            self.buf.truncate(len + n);
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// The next protocol frame, skipping pings (the server pings only idle connections).
    pub async fn frame(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            match self.next().await? {
                In::Frame(f) => return Ok(f),
                In::Ping(_) => continue,
                In::Close(code) => anyhow::bail!("closed by server with {code}"),
            }
        }
    }
}

/// The write side.
pub struct Tx {
    w: WriteHalf<Boxed>,
    encoding: Encoding,
    out: Vec<u8>,
    /// permessage-deflate was negotiated: data frames go compressed.
    deflate: bool,
}

/// Appends a masked client frame (`opcode` may carry RSV1, 0x40).
fn masked(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x5a, 0xa5, 0x3c, 0xc3];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

impl Tx {
    /// Queues a protocol frame (sent by [`Tx::flush`]).
    pub fn queue(&mut self, f: &ClientFrame) {
        let (opcode, payload) = match self.encoding {
            Encoding::FlatBuffers => (0x2, wire::fb::encode_client(f)),
            Encoding::Json => (0x1, wire::json::encode_client(f)),
        };
        if self.deflate {
            let mut z = Vec::with_capacity(payload.len());
            CODEC.with_borrow_mut(|c| c.compress(&payload, &mut z));
            masked(0x40 | opcode, &z, &mut self.out);
        } else {
            masked(opcode, &payload, &mut self.out);
        }
    }

    /// Queues a ping or pong.
    pub fn queue_control(&mut self, pong: bool, payload: &[u8]) {
        masked(if pong { 0xA } else { 0x9 }, payload, &mut self.out);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.w.write_all(&self.out).await?;
            self.w.flush().await?;
            self.out.clear();
            if self.out.capacity() > 4096 {
                self.out = Vec::new();
            }
        }
        Ok(())
    }

    /// Sends one frame now.
    pub async fn send(&mut self, f: &ClientFrame) -> anyhow::Result<()> {
        self.queue(f);
        self.flush().await
    }

    /// Sends a close frame (1000) and flushes; the caller then drops the connection.
    pub async fn close(&mut self) {
        masked(0x8, &1000u16.to_be_bytes(), &mut self.out);
        let _ = self.flush().await;
        let _ = self.w.close().await;
    }
}

/// A token for `user`'s `device`, valid for an hour.
pub fn token(secret: &str, user: &str, device: &str) -> String {
    let now = shard::ids::now_ms() / 1000;
    let claims = serde_json::json!({"sub": user, "exp": now + 3600, "iat": now, "device": device});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

async fn tcp(target: &Target, n: usize) -> anyhow::Result<TcpStream> {
    if target.sources.is_empty() {
        let s = TcpStream::connect_timeout(target.addr, UPGRADE_TIMEOUT).await.map_err(std::io::Error::from)?;
        s.set_nodelay(true).map_err(std::io::Error::from)?;
        return Ok(s);
    }
    // Bind to the n-th source address, then connect without blocking: io_uring's
    // socket operations wait for the connection to complete (fast poll) on first use.
    let src = target.sources[n % target.sources.len()];
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_nodelay(true)?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.set_nonblocking(true)?;
    match sock.connect(&target.addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(TcpStream::from(sock))
}

/// Opens connection number `n` (which picks its source address) for `user` (device
/// `bench`) and waits for `ready`. Bounded by [`UPGRADE_TIMEOUT`].
pub async fn open(target: &Target, n: usize, user: &str) -> anyhow::Result<Conn> {
    open_device(target, n, user, "bench").await
}

/// [`open`] as another device of the user (a device's new connection replaces its old one).
pub async fn open_device(target: &Target, n: usize, user: &str, device: &str) -> anyhow::Result<Conn> {
    open_with_token(target, n, &token(&target.secret, user, device)).await
}

/// [`open`] with a token minted beforehand (a device holds its token before it
/// connects; `storm` mints them outside the measured phase).
pub async fn open_with_token(target: &Target, n: usize, token: &str) -> anyhow::Result<Conn> {
    let attempt = open_token(target, n, token);
    let timeout = async {
        glommio::timer::sleep(UPGRADE_TIMEOUT).await;
        Err(anyhow::anyhow!("upgrade timed out"))
    };
    futures_lite::future::or(attempt, timeout).await
}

async fn open_token(target: &Target, n: usize, token: &str) -> anyhow::Result<Conn> {
    let s = tcp(target, n).await?;
    let (mut resumed, mut suite) = (false, None);
    let mut s: Boxed = match &target.tls {
        None => Box::pin(s),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
            let tls = futures_rustls::TlsConnector::from(cfg.clone())
                .connect(name, s)
                .await
                .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
            resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
            Box::pin(tls)
        }
    };
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {}\r\n{}\
         Authorization: Bearer {}\r\n\r\n",
        target.encoding.subprotocol(),
        if target.deflate { DEFLATE_OFFER } else { "" },
        token
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        anyhow::ensure!(buf.len() < 8192, "oversized HTTP response");
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let status = String::from_utf8_lossy(&buf[9..end.min(12)]).into_owned();
        anyhow::bail!("http {status}");
    }
    let deflate = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase().contains("permessage-deflate");
    anyhow::ensure!(deflate == target.deflate, "permessage-deflate offered: {}, accepted: {deflate}", target.deflate);
    let (r, w) = futures_lite::io::split(s);
    let mut rx = Rx { r, buf: buf[end..].to_vec(), encoding: target.encoding };
    let tx = Tx { w, encoding: target.encoding, out: Vec::new(), deflate };
    match rx.frame().await? {
        ServerFrame::Ready { .. } => Ok(Conn { rx, tx, resumed, suite }),
        other => anyhow::bail!("expected ready, got {other:?}"),
    }
}

/// TLS client configuration trusting `ca` (PEM), with session resumption as rustls
/// does by default (`resume: false` disables it, for full handshakes every time).
///
/// The client offers TLS_AES_128_GCM_SHA256 first, as browsers and the TLS stacks of
/// Android and iOS do; the gateway honours the client's order, so this is the suite a
/// fleet of devices mostly negotiates. `rustls_order` keeps rustls's own default
/// (TLS_AES_256_GCM_SHA384 first), whose SHA-384 key schedule costs the server ~10 %
/// more per handshake on this host (docs/BENCHMARKS.md).
pub fn tls_config(ca: &std::path::Path, resume: bool, rustls_order: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(ca)?[..]) {
        roots.add(c?)?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !rustls_order {
        // A stable sort: only TLS_AES_128_GCM_SHA256 moves, to the front.
        provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// `cfg` with a session store of its own, as one device has: a shared store keeps only a
/// few single-use TLS 1.3 tickets per server name, so thousands of simulated devices
/// sharing one would almost never resume.
pub fn own_sessions(cfg: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut c = cfg.clone();
    c.resumption = rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new(1)));
    Arc::new(c)
}
