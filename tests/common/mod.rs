//! Shared end-to-end harness: start the real `switchboard` binary on an ephemeral
//! loopback port, mint tokens with its own `token` command, and talk to it over real
//! WebSocket connections in either encoding.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message as WsMessage, WebSocket};
use wire::frame::{ClientFrame, ConvId, History, ServerFrame};
use wire::Encoding;

pub const SECRET: &str = "e2e-secret-0123456789abcdef";
pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The CQL test cluster's nodes, when the suite runs against one (`CQL_TEST_NODES`,
/// `host:port,...`, set by scripts/test after starting Cassandra).
pub fn cql_nodes() -> Option<Vec<String>> {
    let v = std::env::var("CQL_TEST_NODES").ok().filter(|v| !v.is_empty())?;
    Some(v.split(',').map(str::to_owned).collect())
}

/// The configuration lines that store a server's data in the CQL test cluster, in a
/// keyspace of its own that belongs to `dir` (a restart on the same directory finds the
/// same keyspace); `None` when the suite runs on embedded storage.
fn cql_storage(dir: &Path) -> Option<String> {
    let nodes = cql_nodes()?;
    let file = dir.with_extension("keyspace");
    let keyspace = match std::fs::read_to_string(&file) {
        Ok(k) => k,
        Err(_) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let k = format!("e2e_{}_{}", std::process::id(), nanos % 1_000_000_000_000);
            std::fs::write(&file, &k).unwrap();
            k
        }
    };
    let list = nodes.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    let mut lines = format!(
        "storage = \"cql\"\ncql_nodes = [{list}]\ncql_keyspace = \"{keyspace}\"\ncql_replication_factor = {}\n",
        nodes.len().min(3)
    );
    // CQL_TEST_CREDENTIALS=user:password when the node checks passwords.
    if let Some((user, pass)) = std::env::var("CQL_TEST_CREDENTIALS").ok().as_deref().and_then(|c| c.split_once(':')) {
        lines.push_str(&format!("cql_username = \"{user}\"\ncql_password = \"{pass}\"\n"));
    }
    Some(lines)
}

/// Waits for `child` to exit within `limit` (killing it and failing otherwise, naming
/// `what`); its exit status.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every message of `conv`, oldest first, as `(seq, client_msg_id)`, paged by history.
pub fn history_all(c: &mut Client, conv: ConvId) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        c.send(&ClientFrame::History(History { req_id: None, conv, before_seq: before, limit: Some(100) }));
        let page = match c.recv() {
            ServerFrame::HistoryPage(p) => p,
            other => panic!("expected history_page, got {other:?}"),
        };
        let first = page.messages.first().map(|m| m.seq);
        let mut chunk: Vec<_> = page.messages.into_iter().map(|m| (m.seq, m.client_msg_id)).collect();
        chunk.append(&mut out);
        out = chunk;
        if !page.has_more {
            return out;
        }
        before = first;
    }
}

/// A running server; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub shards: usize,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// A server with a fresh data dir and the test defaults.
    pub fn start(shards: usize) -> Server {
        Server::start_with(shards, "")
    }

    /// A server with a fresh data dir and extra TOML config lines.
    pub fn start_with(shards: usize, toml: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server::start_in(&tmp.path().join("data"), shards, toml);
        s._tmp = Some(tmp);
        s
    }

    /// A server on an existing data dir. The config is the test defaults (no send rate
    /// limit, so tests can send bursts) plus `toml`; the file lives beside `dir`.
    pub fn start_in(dir: &Path, shards: usize, toml: &str) -> Server {
        let cfg = dir.with_extension("toml");
        let mut defaults = String::from("admin_listen = \"127.0.0.1:0\"\n");
        if !toml.contains("send_rate") {
            defaults.push_str("send_rate = 0\n");
        }
        // Tests burst hundreds of frames on purpose; the limits tests set their own.
        if !toml.contains("max_frames_per_sec") {
            defaults.push_str("max_frames_per_sec = 65535\n");
        }
        if let Some(cql) = cql_storage(dir) {
            defaults.push_str(&cql);
            // A loaded 2-core machine running the node and the suite: a slow write is
            // not what these tests are about (tests/cql.rs sets its own).
            if !toml.contains("cql_request_timeout_ms") {
                defaults.push_str("cql_request_timeout_ms = 15000\n");
            }
        }
        std::fs::write(&cfg, format!("{defaults}{toml}\n")).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--no-pin", "--shards", &shards.to_string(), "--data-dir"])
            .arg(dir)
            .arg("--config")
            .arg(&cfg)
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("RUST_LOG", std::env::var("SB_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchboard");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child: Some(child),
            addr: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:1".parse().unwrap(),
            dir: dir.to_owned(),
            shards,
            _tmp: None,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let rest = line
                        .strip_prefix("switchboard listening on ws://")
                        .or_else(|| line.strip_prefix("switchboard listening on wss://"));
                    if let Some(rest) = rest {
                        server.addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        let admin = rest.split("admin http://").nth(1).expect("admin address in the listening line");
                        server.admin = admin.trim_end_matches(')').parse().unwrap();
                        return server;
                    }
                }
                Err(_) => {
                    let status = server.child.as_mut().unwrap().try_wait();
                    panic!("server not ready within {DEADLINE:?} (exit: {status:?})");
                }
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_ref().unwrap();
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        self.terminate_wait()
    }

    /// Waits (bounded) for the server to exit by itself.
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        wait_exit(&mut self.child.take().unwrap(), Duration::from_secs(60), "the server after SIGTERM")
    }

    /// Sends a signal (by name, e.g. "HUP") to the server.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A token minted by `switchboard token`.
    pub fn token(&self, user: &str, device: Option<&str>) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["token", "--user", user]).env("SWITCHBOARD_JWT_SECRET", SECRET);
        if let Some(d) = device {
            cmd.args(["--device", d]);
        }
        let out = cmd.output().expect("run switchboard token");
        assert!(out.status.success(), "token failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn connect(&self, user: &str, device: &str, enc: Encoding) -> Client {
        Client::connect(self.addr, &self.token(user, Some(device)), enc)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A WebSocket client speaking the Switchboard protocol.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub enc: Encoding,
    pub user: String,
    pub device: String,
}

/// The HTTP status of a refused upgrade, or None if it was accepted.
pub fn upgrade_status(addr: SocketAddr, token: Option<&str>) -> Option<u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    match tungstenite::client::client(req, stream) {
        Ok(_) => None,
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Some(resp.status().as_u16()),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

impl Client {
    pub fn connect(addr: SocketAddr, token: &str, enc: Encoding) -> Client {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
        req.headers_mut().insert("Sec-WebSocket-Protocol", enc.subprotocol().parse().unwrap());
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let (ws, _resp) = tungstenite::client::client(req, stream).expect("upgrade");
        let mut c = Client { ws, enc, user: String::new(), device: String::new() };
        match c.recv() {
            ServerFrame::Ready { user, device, encoding, .. } => {
                assert_eq!(encoding, enc.subprotocol());
                c.user = user;
                c.device = device;
            }
            other => panic!("expected ready, got {other:?}"),
        }
        c
    }

    pub fn send(&mut self, f: &ClientFrame) {
        let msg = match self.enc {
            Encoding::Json => WsMessage::text(String::from_utf8(wire::json::encode_client(f)).unwrap()),
            Encoding::FlatBuffers => WsMessage::binary(wire::fb::encode_client(f)),
        };
        self.ws.send(msg).expect("send");
    }

    /// Sends several frames with one flush.
    pub fn send_many(&mut self, fs: impl IntoIterator<Item = ClientFrame>) {
        for f in fs {
            let msg = match self.enc {
                Encoding::Json => WsMessage::text(String::from_utf8(wire::json::encode_client(&f)).unwrap()),
                Encoding::FlatBuffers => WsMessage::binary(wire::fb::encode_client(&f)),
            };
            self.ws.write(msg).expect("write");
        }
        self.ws.flush().expect("flush");
    }

    /// The next protocol frame (pings are answered by tungstenite). Panics on timeout
    /// or close.
    pub fn recv(&mut self) -> ServerFrame {
        loop {
            match self.ws.read() {
                Ok(WsMessage::Text(t)) => return wire::json::decode_server(t.as_bytes()).expect("decode json"),
                Ok(WsMessage::Binary(b)) => return wire::fb::decode_server(&b).expect("decode fb"),
                Ok(WsMessage::Close(c)) => panic!("{} closed by server: {c:?}", self.user),
                Ok(_) => continue,
                Err(e) => panic!("{}: no frame within {DEADLINE:?}: {e}", self.user),
            }
        }
    }

    /// Reads frames until `want` picks one (other frames are skipped); each read is
    /// bounded by the deadline.
    pub fn until<T>(&mut self, mut want: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        loop {
            let f = self.recv();
            if let Some(t) = want(&f) {
                return t;
            }
        }
    }

    /// The next frame, which must be an ack (panics with what came instead).
    pub fn ack(&mut self) -> wire::frame::Ack {
        match self.recv() {
            ServerFrame::Ack(ack) => ack,
            other => panic!("{}: expected an ack, got {other:?}", self.user),
        }
    }

    /// Reads until the server closes; returns the close code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.ws.read() {
                Ok(WsMessage::Close(Some(c))) => return c.code.into(),
                Ok(WsMessage::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        }
    }
}

/// A text `send` to a user.
pub fn send_to(user: &str, cmid: &str, body: &str) -> ClientFrame {
    ClientFrame::Send(wire::frame::Send {
        reply_to: None,
        target_seq: None,
        forward: None,
        client_msg_id: cmid.into(),
        target: wire::frame::Target::User(user.into()),
        body: body.as_bytes().to_vec(),
        kind: wire::frame::MsgKind::Text,
    })
}

/// The RSS of a process, in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// Opens a raw TCP connection and completes an upgrade by hand (no client library):
/// returns the stream positioned after the 101 response.
pub fn raw_upgrade(addr: SocketAddr, token: &str) -> TcpStream {
    raw_upgrade_with(TcpStream::connect(addr).unwrap(), token)
}

/// Like [`raw_upgrade`] from a socket whose receive buffer is pinned small (no
/// autotuning): a reader that stops reading backs up into the server quickly.
pub fn raw_upgrade_small_rcvbuf(addr: SocketAddr, token: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(8192).unwrap();
    sock.connect(&addr.into()).unwrap();
    raw_upgrade_with(sock.into(), token)
}

fn raw_upgrade_with(mut s: TcpStream, token: &str) -> TcpStream {
    use std::io::Read;
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write_upgrade_request(&mut s, token);
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during upgrade");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Writes a WebSocket upgrade request with a bearer token.
fn write_upgrade_request(s: &mut TcpStream, token: &str) {
    write_upgrade_request_with(s, token, "");
}

/// An upgrade request with `extra` header lines (each ending in `\r\n`).
fn write_upgrade_request_with(s: &mut TcpStream, token: &str, extra: &str) {
    use std::io::Write;
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    )
    .unwrap();
}

/// Reads and discards until the server closes the TCP connection (EOF or reset);
/// panics if it stays open past the deadline.
pub fn wait_for_eof(s: &mut TcpStream) {
    use std::io::Read;
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection still open after {DEADLINE:?}: {e}"),
        }
        assert!(Instant::now() < deadline, "connection still open after {DEADLINE:?}");
    }
}

/// The raw HTTP response to an upgrade attempt (status line, headers, body).
/// Upgrades and keeps the connection (`Ok`), or returns the refusal's response text.
pub fn upgrade_response_keep(addr: SocketAddr, token: &str) -> Result<TcpStream, String> {
    let r = upgrade_response_on(addr, token, "");
    if r.0.starts_with("HTTP/1.1 101") {
        Ok(r.1)
    } else {
        Err(r.0)
    }
}

pub fn upgrade_response(addr: SocketAddr, token: &str) -> String {
    upgrade_response_on(addr, token, "").0
}

/// The raw HTTP response to an upgrade with `extra` header lines (`Origin: ...\r\n`).
pub fn upgrade_response_with(addr: SocketAddr, token: &str, extra: &str) -> String {
    upgrade_response_on(addr, token, extra).0
}

fn upgrade_response_on(addr: SocketAddr, token: &str, extra: &str) -> (String, TcpStream) {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write_upgrade_request_with(&mut s, token, extra);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), s)
}

/// The sum over shards of a metric from the admin endpoint's `/metrics`.
pub fn metric_total(server: &Server, name: &str) -> u64 {
    let (status, metrics) = admin_request(server, "GET", "/metrics");
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A plain HTTP request to the admin endpoint: (status, body).
pub fn admin_request(server: &Server, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(server.admin).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A masked client frame: `first` is the frame's first byte (FIN, RSV bits, opcode);
/// any payload length.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n < 65536 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}
