//! `switchboard-bench`: whole-system measurements against a running gateway.
//!
//! `idle` opens N authenticated plain-WS connections (one user each), checks each got
//! its `ready` frame, and reports the server's RSS growth per connection. Loopback only.
//! The full load generator (storms at a target rate, chat mixes, latency histograms)
//! is tracked separately; see docs/BENCHMARKS.md.
#![forbid(unsafe_code)]

mod chat;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchboard-bench", about = "Measure a running Switchboard gateway (loopback only)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N idle authenticated connections and report server memory per connection.
    Idle {
        /// Gateway address (must be loopback).
        #[arg(long, default_value = "127.0.0.1:9000")]
        addr: SocketAddr,
        /// HS256 secret the gateway verifies tokens with.
        #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
        secret: String,
        /// Connections to open (this machine allows ~19,900 per process).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The gateway's pid, to read its RSS from /proc.
        #[arg(long)]
        server_pid: u32,
        /// Seconds to hold the connections after the measurement.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Connect with WSS, trusting this CA / self-signed certificate (PEM).
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
    },
    /// DM traffic at a target rate: latency (send->ack, send->deliver), throughput,
    /// loss, duplicates, order; server CPU per message with --server-pid.
    Chat {
        /// Gateway address (must be loopback).
        #[arg(long, default_value = "127.0.0.1:9000")]
        addr: SocketAddr,
        /// HS256 secret the gateway verifies tokens with.
        #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
        secret: String,
        /// Sender/receiver pairs (two connections each).
        #[arg(long, default_value_t = 1000)]
        pairs: usize,
        /// Messages per second, all pairs together (open loop).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Body bytes (at least 16: send time and sequence number).
        #[arg(long, default_value_t = 64)]
        body: usize,
        /// Client executors.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The gateway's pid: report its CPU time per message.
        #[arg(long)]
        server_pid: Option<u32>,
        /// User id prefix (use a new one per run against the same data).
        #[arg(long, default_value = "chat")]
        tag: String,
    },
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    Ok(fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0))
}

fn pct(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50_us": h.value_at_quantile(0.5), "p90_us": h.value_at_quantile(0.9),
        "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
        "count": h.len(),
    })
}

fn chat(args: chat::ChatArgs, server_pid: Option<u32>) -> anyhow::Result<()> {
    let cpu0 = server_pid.map(cpu_ticks).transpose()?;
    let (s, wall) = chat::run(&args)?;
    let cpu1 = server_pid.map(cpu_ticks).transpose()?;
    let server_cpu_us = cpu0.zip(cpu1).map(|(a, b)| (b - a) * 10_000);
    let per_msg = server_cpu_us.map(|us| us as f64 / s.delivered.max(1) as f64);
    let lost = s.sent.saturating_sub(s.delivered);
    let report = serde_json::json!({
        "scenario": "chat", "pairs": args.pairs, "target_rate": args.rate, "secs": args.secs, "body": args.body,
        "threads": args.threads, "sent": s.sent, "acked": s.acked, "delivered": s.delivered, "lost": lost,
        "duplicates": s.duplicates, "out_of_order": s.out_of_order,
        "achieved_rate": s.delivered as f64 / args.secs as f64, "wall_secs": wall.as_secs_f64(),
        "ack_latency": pct(&s.ack), "deliver_latency": pct(&s.deliver),
        "server_cpu_us": server_cpu_us, "server_cpu_us_per_msg": per_msg,
    });
    eprintln!(
        "chat: {} pairs, {} msg/s target, {} s: sent {}, acked {}, delivered {}, lost {}, dup {}, reordered {}",
        args.pairs, args.rate, args.secs, s.sent, s.acked, s.delivered, lost, s.duplicates, s.out_of_order
    );
    eprintln!(
        "  send->deliver p50 {} us  p99 {} us  p99.9 {} us  max {} us;  send->ack p50 {} us  p99 {} us",
        s.deliver.value_at_quantile(0.5),
        s.deliver.value_at_quantile(0.99),
        s.deliver.value_at_quantile(0.999),
        s.deliver.max(),
        s.ack.value_at_quantile(0.5),
        s.ack.value_at_quantile(0.99)
    );
    if let Some(p) = per_msg {
        eprintln!("  server CPU {p:.1} us per delivered message");
    }
    println!("{report}");
    Ok(())
}

fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading server /proc status")?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

fn token(secret: &str, user: &str) -> anyhow::Result<String> {
    let now = shard::ids::now_ms() / 1000;
    let claims = serde_json::json!({"sub": user, "exp": now + 3600, "iat": now, "device": "bench"});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// A plain or TLS client stream.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn tls_config(ca: &std::path::Path) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(ca)?[..]) {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(cfg))
}

/// Upgrades one connection and reads its `ready` frame.
fn open(
    addr: SocketAddr,
    token: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let mut s: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
            Box::new(rustls::StreamOwned::new(rustls::ClientConnection::new(cfg.clone(), name)?, tcp))
        }
    };
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed during upgrade");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                bail!("refused: {}", String::from_utf8_lossy(&buf[..end]));
            }
            let frame = &buf[end + 4..];
            // A ready frame is short: 2-byte header, 7-bit length.
            if frame.len() >= 2 && frame.len() >= 2 + (frame[1] & 0x7f) as usize {
                if !String::from_utf8_lossy(&frame[2..]).contains("\"ready\"") {
                    bail!("first frame was not ready");
                }
                return Ok(s);
            }
        }
    }
}

fn idle(
    addr: SocketAddr,
    secret: &str,
    n: usize,
    pid: u32,
    hold: u64,
    tls_ca: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("switchboard-bench targets loopback addresses only");
    }
    let tls = tls_ca.map(tls_config).transpose()?;
    let before = rss(pid)?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let token = token(secret, &format!("idle-{i}"))?;
        conns.push(open(addr, &token, tls.as_ref()).with_context(|| format!("connection {i}"))?);
        if (i + 1) % 1000 == 0 {
            eprint!("\r{} connections, {:.0}/s", i + 1, (i + 1) as f64 / started.elapsed().as_secs_f64());
        }
    }
    let elapsed = started.elapsed();
    // Let the server settle (allocator purges of handshake buffers).
    std::thread::sleep(Duration::from_secs(2));
    let after = rss(pid)?;
    eprintln!();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "{{\"scenario\":\"idle\",\"tls\":{},\"connections\":{n},\"rss_before\":{before},\"rss_after\":{after},\
         \"bytes_per_conn\":{per:.0},\"connect_secs\":{:.3}}}",
        tls.is_some(),
        elapsed.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(hold));
    drop(conns);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Idle { addr, secret, connections, server_pid, hold, tls_ca } => {
            idle(addr, &secret, connections, server_pid, hold, tls_ca.as_deref())
        }
        Cmd::Chat { addr, secret, pairs, rate, secs, body, threads, server_pid, tag } => {
            chat(chat::ChatArgs { addr, secret, pairs, rate, secs, body, threads, tag }, server_pid)
        }
    }
}
