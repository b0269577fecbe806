//! `switchboard-bench`: whole-system measurements against a running gateway.
//!
//! `idle` opens N authenticated plain-WS connections (one user each), checks each got
//! its `ready` frame, and reports the server's RSS growth per connection. Loopback only.
//! The full load generator (storms at a target rate, chat mixes, latency histograms)
//! is tracked separately; see docs/BENCHMARKS.md.
#![forbid(unsafe_code)]

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
    }
}
