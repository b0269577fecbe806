//! `chat`: DM traffic at a target rate over real connections, measuring send→ack and
//! send→deliver latency (HDR histograms), throughput, loss, duplicates and order.
//!
//! Runs on glommio executors (one per `--threads`), so the client is thread-per-core
//! like the server. Each pair is a sender and a receiver connection (FlatBuffers);
//! the sender sends open-loop at `rate / pairs` messages a second. Every body starts
//! with its send time (ns since the run started) and the pair's sequence number, so
//! the receiver measures delivery latency and checks each message arrives once, in order.

use std::cell::RefCell;
use std::io::Cursor;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
use tungstenite::protocol::frame::FrameHeader;
use wire::frame::{ClientFrame, MsgKind, Send, ServerFrame, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChatArgs {
    /// Gateway address (loopback).
    pub addr: SocketAddr,
    /// Token secret.
    pub secret: String,
    /// Sender/receiver pairs (2 connections each).
    pub pairs: usize,
    /// Messages per second, all pairs together.
    pub rate: u64,
    /// Seconds of sending.
    pub secs: u64,
    /// Body size in bytes (at least 16).
    pub body: usize,
    /// Client executors.
    pub threads: usize,
    /// Prefix for user ids (distinct runs do not share conversations).
    pub tag: String,
}

/// Results of one executor (merged at the end).
pub struct Stats {
    /// Send→ack latency, µs.
    pub ack: Histogram<u64>,
    /// Send→deliver latency, µs.
    pub deliver: Histogram<u64>,
    /// Messages sent.
    pub sent: u64,
    /// Acks received.
    pub acked: u64,
    /// Messages delivered to receivers (first copy).
    pub delivered: u64,
    /// Deliveries of a sequence number already seen.
    pub duplicates: u64,
    /// Deliveries ahead of the next expected sequence number.
    pub out_of_order: u64,
}

impl Stats {
    fn new() -> Stats {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Stats { ack: h(), deliver: h(), sent: 0, acked: 0, delivered: 0, duplicates: 0, out_of_order: 0 }
    }

    fn merge(&mut self, o: &Stats) {
        let _ = self.ack.add(&o.ack);
        let _ = self.deliver.add(&o.deliver);
        self.sent += o.sent;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
    }
}

fn masked_binary(payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x82);
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

/// Reads server frames from a connection.
struct Reader<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: futures_lite::AsyncRead + Unpin> Reader<R> {
    /// The next FlatBuffers server frame (skips control frames).
    async fn next(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            let mut cur = Cursor::new(&self.buf[..]);
            if let Some((h, len)) = FrameHeader::parse(&mut cur)? {
                let start = cur.position() as usize;
                let end = start + len as usize;
                if self.buf.len() >= end {
                    let frame = if h.opcode
                        == tungstenite::protocol::frame::coding::OpCode::Data(
                            tungstenite::protocol::frame::coding::Data::Binary,
                        ) {
                        Some(wire::fb::decode_server(&self.buf[start..end])?)
                    } else {
                        None
                    };
                    self.buf.drain(..end);
                    if let Some(f) = frame {
                        return Ok(f);
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 16384];
            let n = self.r.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn connect(
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<(Reader<futures_lite::io::ReadHalf<TcpStream>>, futures_lite::io::WriteHalf<TcpStream>)> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| anyhow::anyhow!("nodelay: {e}"))?;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: switchboard.v1.fb\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    anyhow::ensure!(buf.starts_with(b"HTTP/1.1 101"), "refused: {}", String::from_utf8_lossy(&buf[..end]));
    let (r, w) = futures_lite::io::split(s);
    let mut reader = Reader { r, buf: buf[end..].to_vec() };
    match reader.next().await? {
        ServerFrame::Ready { .. } => Ok((reader, w)),
        other => anyhow::bail!("expected ready, got {other:?}"),
    }
}

/// One executor's share of the pairs.
async fn shard_main(args: ChatArgs, pairs: Vec<usize>, epoch: Instant) -> Stats {
    let stats = Rc::new(RefCell::new(Stats::new()));
    let per_pair_rate = args.rate as f64 / args.pairs as f64;
    let mut tasks = Vec::new();
    for p in pairs {
        let (a, b) = (format!("{}-a{p}", args.tag), format!("{}-b{p}", args.tag));
        let ta = crate::token(&args.secret, &a).expect("token");
        let tb = crate::token(&args.secret, &b).expect("token");
        let (mut ra, mut wa) = match connect(args.addr, &ta).await {
            Ok(c) => c,
            Err(e) => panic!("connecting {a}: {e}"),
        };
        let (mut rb, _wb) = match connect(args.addr, &tb).await {
            Ok(c) => c,
            Err(e) => panic!("connecting {b}: {e}"),
        };
        let send_times: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::new()));
        let total = (per_pair_rate * args.secs as f64).round() as u64;
        // Receiver: delivery latency, order, duplicates.
        let st = stats.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut next = 0u64;
            while next < total {
                let Ok(ServerFrame::Msg(m)) = rb.next().await else { break };
                let now = epoch.elapsed().as_nanos() as u64;
                let sent_at = u64::from_le_bytes(m.body[0..8].try_into().expect("16-byte header"));
                let n = u64::from_le_bytes(m.body[8..16].try_into().expect("16-byte header"));
                let mut s = st.borrow_mut();
                if n < next {
                    s.duplicates += 1;
                    continue;
                }
                if n > next {
                    s.out_of_order += 1;
                }
                next = n + 1;
                s.delivered += 1;
                let _ = s.deliver.record(now.saturating_sub(sent_at) / 1000);
            }
        }));
        // Acks for the sender.
        let (st, times) = (stats.clone(), send_times.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut acked = 0;
            while acked < total {
                let Ok(f) = ra.next().await else { break };
                if let ServerFrame::Ack(a) = f {
                    let now = epoch.elapsed().as_nanos() as u64;
                    let n: usize = a.client_msg_id.parse().unwrap_or(usize::MAX);
                    if let Some(t) = times.borrow().get(n) {
                        let mut s = st.borrow_mut();
                        s.acked += 1;
                        let _ = s.ack.record(now.saturating_sub(*t) / 1000);
                    }
                    acked += 1;
                }
            }
        }));
        // Sender: open loop at the pair's rate.
        let (st, body_len) = (stats.clone(), args.body.max(16));
        tasks.push(glommio::spawn_local(async move {
            let start = Instant::now();
            let mut frame = Vec::with_capacity(body_len + 64);
            for n in 0..total {
                let due = start + Duration::from_secs_f64(n as f64 / per_pair_rate);
                let now = Instant::now();
                if due > now {
                    glommio::timer::sleep(due - now).await;
                }
                let t = epoch.elapsed().as_nanos() as u64;
                let mut body = vec![b'x'; body_len];
                body[0..8].copy_from_slice(&t.to_le_bytes());
                body[8..16].copy_from_slice(&n.to_le_bytes());
                send_times.borrow_mut().push(t);
                let f = ClientFrame::Send(Send {
                    client_msg_id: n.to_string(),
                    target: Target::User(b.clone()),
                    body,
                    kind: MsgKind::Data,
                });
                frame.clear();
                masked_binary(&wire::fb::encode_client(&f), &mut frame);
                if wa.write_all(&frame).await.is_err() {
                    break;
                }
                st.borrow_mut().sent += 1;
            }
            let _ = wa.flush().await;
        }));
    }
    // Wait for everything, bounded: sending time plus a 10 s grace for stragglers.
    let deadline = glommio::timer::sleep(Duration::from_secs(args.secs + 10));
    let all = async {
        for t in tasks {
            t.await;
        }
    };
    futures_lite::future::or(all, deadline).await;
    Rc::try_unwrap(stats).map(RefCell::into_inner).unwrap_or_else(|rc| {
        let mut s = Stats::new();
        s.merge(&rc.borrow());
        s
    })
}

/// Runs the scenario; returns merged statistics and the wall time.
pub fn run(args: &ChatArgs) -> anyhow::Result<(Stats, Duration)> {
    anyhow::ensure!(args.addr.ip().is_loopback(), "switchboard-bench targets loopback addresses only");
    anyhow::ensure!(
        args.pairs >= 1 && args.threads >= 1 && args.rate >= 1,
        "pairs, threads and rate must be at least 1"
    );
    let epoch = Instant::now();
    let mut handles = Vec::new();
    for t in 0..args.threads {
        let pairs: Vec<usize> = (0..args.pairs).filter(|p| p % args.threads == t).collect();
        let a = args.clone();
        handles.push(
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name(&format!("bench-{t}"))
                .io_memory(1 << 20)
                .spawn(move || shard_main(a, pairs, epoch))
                .map_err(|e| anyhow::anyhow!("starting a client executor: {e}"))?,
        );
    }
    let mut total = Stats::new();
    for h in handles {
        total.merge(&h.join().map_err(|e| anyhow::anyhow!("client executor failed: {e}"))?);
    }
    Ok((total, epoch.elapsed()))
}
