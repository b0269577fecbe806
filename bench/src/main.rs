//! `switchboard-bench`: the load generator. Whole-system measurements against a running
//! gateway, over real sockets, on loopback only.
//!
//! Scenarios (each bounded in count and time; each prints a live progress line on
//! stderr, a human summary at the end and, with `--json`, one JSON report on stdout,
//! schema `switchboard-bench/1` in docs/BENCHMARKS.md):
//! - `storm`: N connections at a target rate from a range of source addresses, held
//!   with heartbeats; connect rate, failures by reason, server memory per connection.
//! - `chat`: U users, DM and group mix, message sizes; ack and delivery latency,
//!   throughput, loss, duplicates, order; server CPU per message.
//! - `fanout`: one group of G members; deliveries per second, latency to the last member.
//! - `reconnect`: everyone drops and reconnects at once with sync; time to resync, loss.
//! - `merge`: combines the JSON reports of several client processes run together.
//! - `idle`: the simple blocking memory probe (N idle connections, RSS per connection).
//!
//! The client runs on glommio executors (`--threads`), thread-per-core like the gateway.
#![forbid(unsafe_code)]

mod chat;
mod fanout;
mod net;
mod reconnect;
mod report;
mod storm;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use wire::Encoding;

#[derive(Parser)]
#[command(name = "switchboard-bench", about = "Load generator for a running Switchboard gateway (loopback only)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every network scenario shares.
#[derive(Args, Clone)]
struct Common {
    /// Gateway address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// HS256 secret the gateway verifies tokens with.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// Source addresses to connect from, e.g. 127.0.0.2-127.0.0.40 (spreads ephemeral ports).
    #[arg(long)]
    sources: Option<String>,
    /// Connect with WSS, trusting this CA / self-signed certificate (PEM).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: no session resumption (every handshake is a full one).
    #[arg(long)]
    no_resume: bool,
    /// With --tls-ca: offer rustls's cipher suite order (AES-256-GCM first) instead of
    /// the one browsers and the mobile platforms' TLS stacks offer (AES-128-GCM first).
    #[arg(long)]
    rustls_suite_order: bool,
    /// Frame encoding: fb or json.
    #[arg(long, default_value = "fb")]
    encoding: String,
    /// Offer permessage-deflate as browsers do (the gateway needs `permessage_deflate =
    /// true`); messages this client sends are compressed too.
    #[arg(long)]
    deflate: bool,
    /// Client executors (threads).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// User id prefix (use a new one per run, and per process when several run together).
    #[arg(long, default_value = "bench")]
    tag: String,
    /// The gateway's pid: report its memory and CPU time from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    json: bool,
}

impl Common {
    fn target(&self) -> anyhow::Result<net::Target> {
        if !self.addr.ip().is_loopback() {
            bail!("switchboard-bench targets loopback addresses only");
        }
        let encoding = match self.encoding.as_str() {
            "fb" => Encoding::FlatBuffers,
            "json" => Encoding::Json,
            other => bail!("unknown encoding {other} (fb or json)"),
        };
        Ok(net::Target {
            addr: self.addr,
            sources: self.sources.as_deref().map(net::parse_sources).transpose()?.unwrap_or_default(),
            tls: self
                .tls_ca
                .as_deref()
                .map(|ca| net::tls_config(ca, !self.no_resume, self.rustls_suite_order))
                .transpose()?,
            encoding,
            secret: self.secret.clone(),
            deflate: self.deflate,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N connections at a target rate, hold them with heartbeats; connect rate,
    /// failures by reason, server memory per connection.
    Storm {
        #[command(flatten)]
        common: Common,
        /// Connections to open (one process holds at most ~19,900 here: use several).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds to hold the connections once all are open.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// Client ping interval while holding, in seconds.
        #[arg(long, default_value_t = 15)]
        heartbeat: u64,
        /// Most upgrades in flight per client executor.
        #[arg(long, default_value_t = 2048)]
        max_inflight: usize,
    },
    /// Users sending DMs and group messages at a target rate; latency, throughput,
    /// loss, duplicates, order; server CPU per message.
    Chat {
        #[command(flatten)]
        common: Common,
        /// Connected users (even).
        #[arg(long, default_value_t = 2000)]
        users: usize,
        /// Messages per second, all users together (open loop).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Body bytes: N, or MIN-MAX for a uniform spread (at least 24).
        #[arg(long, default_value = "64")]
        body: String,
        /// Groups (members are consecutive users).
        #[arg(long, default_value_t = 0)]
        groups: usize,
        /// Members per group.
        #[arg(long, default_value_t = 10)]
        group_size: usize,
        /// Fraction of messages sent to a group (0..1).
        #[arg(long, default_value_t = 0.0)]
        group_share: f64,
        /// Receipts mix: acknowledge every received message with `delivered` and every
        /// other one with `read` too.
        #[arg(long)]
        receipts: bool,
    },
    /// One group of G connected members, M messages a second: deliveries per second,
    /// latency to the last member.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Members (all connected).
        #[arg(long, default_value_t = 5000)]
        members: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Body bytes (at least 16).
        #[arg(long, default_value_t = 64)]
        body: usize,
    },
    /// Everyone drops and reconnects at once with sync: time until all are resynced, loss.
    Reconnect {
        #[command(flatten)]
        common: Common,
        /// Users (even).
        #[arg(long, default_value_t = 2000)]
        users: usize,
        /// Messages per user to its partner before the drop.
        #[arg(long, default_value_t = 5)]
        before: usize,
        /// Messages each user is sent while away (keep at most the server's sync_per_conv).
        #[arg(long, default_value_t = 5)]
        missed: usize,
        /// Writer connections sending while the users are away.
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
    /// Merge the JSON reports of several processes that ran one scenario together.
    Merge {
        /// Report files (one JSON report each).
        files: Vec<std::path::PathBuf>,
    },
    /// Hold N idle authenticated connections (blocking client) and report server memory
    /// per connection.
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
        /// Offer permessage-deflate (the gateway needs `permessage_deflate = true`).
        #[arg(long)]
        deflate: bool,
    },
}

/// A client executor and whether its future has finished (or panicked).
pub struct Exec<T: Send + 'static> {
    handle: glommio::ExecutorJoinHandle<T>,
    done: Arc<AtomicBool>,
}

impl<T: Send + 'static> Exec<T> {
    /// True once the executor's future returned or panicked.
    pub fn is_finished(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits for the result.
    pub fn join(self) -> anyhow::Result<T> {
        self.handle.join().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

struct DoneGuard(Arc<AtomicBool>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts `threads` glommio executors; executor t runs the future `make(t)()` builds.
pub fn spawn_executors<T, G, F>(
    threads: usize,
    name: &str,
    mut make: impl FnMut(usize) -> G,
) -> anyhow::Result<Vec<Exec<T>>>
where
    T: Send + 'static,
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    let mut out = Vec::with_capacity(threads);
    for t in 0..threads {
        let done = Arc::new(AtomicBool::new(false));
        let (gen, d) = (make(t), done.clone());
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("{name}-{t}"))
            .io_memory(1 << 20)
            .spawn(move || async move {
                let _guard = DoneGuard(d);
                gen().await
            })
            .map_err(|e| anyhow::anyhow!("starting a client executor: {e}"))?;
        out.push(Exec { handle, done });
    }
    Ok(out)
}

fn body_range(s: &str) -> anyhow::Result<(usize, usize)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    Ok((lo.trim().parse().context("body size")?, hi.trim().parse().context("body size")?))
}

/// Prints the human summary (stderr) and, with `--json`, the report (stdout).
fn finish(report: &serde_json::Value, json: bool) {
    summary(report);
    if json {
        println!("{report}");
    }
}

fn ms(v: &serde_json::Value) -> String {
    format!("{:.2} ms", v.as_f64().unwrap_or(0.0) / 1000.0)
}

fn summary(r: &serde_json::Value) {
    let c = &r["connections"];
    let m = &r["messages"];
    eprintln!(
        "{} ({} process(es), {:.1} s):",
        r["scenario"].as_str().unwrap_or("?"),
        r["processes"],
        r["wall_secs"].as_f64().unwrap_or(0.0)
    );
    if c.is_object() {
        eprintln!(
            "  connections: {} of {} opened ({:.0}/s), {} failed {}",
            c["opened"],
            c["target"],
            c["opened_per_sec"].as_f64().unwrap_or(0.0),
            c["failed"],
            if c["failures"].as_object().is_some_and(|f| !f.is_empty()) {
                c["failures"].to_string()
            } else {
                String::new()
            }
        );
    }
    if m.as_object().is_some_and(|o| !o.is_empty()) {
        eprintln!("  messages: {m}");
    }
    for (name, h) in r["latency"].as_object().into_iter().flatten() {
        eprintln!(
            "  {name}: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
            ms(&h["p50_us"]),
            ms(&h["p90_us"]),
            ms(&h["p99_us"]),
            ms(&h["p999_us"]),
            ms(&h["max_us"]),
            h["count"]
        );
    }
    let s = &r["server"];
    if let Some(b) = s["bytes_per_conn"].as_f64() {
        eprintln!("  server RSS: {} -> {} bytes, {b:.0} B per connection", s["rss_before"], s["rss_after"]);
    }
    if let Some(cpu) = s["cpu_us_per_msg"].as_f64() {
        eprintln!("  server CPU: {cpu:.1} us per message");
    }
}

use report::rss;

/// A plain or TLS client stream.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Upgrades one connection and reads its `ready` frame.
fn open(
    addr: SocketAddr,
    token: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    deflate: bool,
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
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{}\
         Authorization: Bearer {token}\r\n\r\n",
        if deflate { net::DEFLATE_OFFER } else { "" }
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
                let payload = &frame[2..2 + (frame[1] & 0x7f) as usize];
                let payload = if frame[0] & 0x40 != 0 { net::inflate(payload)? } else { payload.to_vec() };
                if !String::from_utf8_lossy(&payload).contains("\"ready\"") {
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
    deflate: bool,
) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("switchboard-bench targets loopback addresses only");
    }
    let tls = tls_ca.map(|ca| net::tls_config(ca, true, false)).transpose()?;
    let before = rss(pid)?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let token = net::token(secret, &format!("idle-{i}"), "bench");
        conns.push(open(addr, &token, tls.as_ref(), deflate).with_context(|| format!("connection {i}"))?);
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
        "{{\"scenario\":\"idle\",\"tls\":{},\"deflate\":{deflate},\"connections\":{n},\"rss_before\":{before},\"rss_after\":{after},\
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
        Cmd::Idle { addr, secret, connections, server_pid, hold, tls_ca, deflate } => {
            idle(addr, &secret, connections, server_pid, hold, tls_ca.as_deref(), deflate)
        }
        Cmd::Storm { common, connections, rate, hold, heartbeat, max_inflight } => {
            let args = storm::StormArgs {
                target: common.target()?,
                connections,
                rate,
                threads: common.threads,
                hold_secs: hold,
                heartbeat_secs: heartbeat,
                tag: common.tag.clone(),
                max_inflight,
                resume: !common.no_resume,
            };
            finish(&storm::run(args, common.server_pid)?, common.json);
            Ok(())
        }
        Cmd::Chat { common, users, rate, secs, body, groups, group_size, group_share, receipts } => {
            let args = chat::ChatArgs {
                target: common.target()?,
                users,
                rate,
                secs,
                body: body_range(&body)?,
                groups,
                group_size,
                group_share,
                threads: common.threads,
                tag: common.tag.clone(),
                receipts,
            };
            finish(&chat::run(args, common.server_pid)?, common.json);
            Ok(())
        }
        Cmd::Fanout { common, members, rate, secs, body } => {
            let args = fanout::FanoutArgs {
                target: common.target()?,
                members,
                rate,
                secs,
                body,
                threads: common.threads,
                tag: common.tag.clone(),
            };
            finish(&fanout::run(args, common.server_pid)?, common.json);
            Ok(())
        }
        Cmd::Reconnect { common, users, before, missed, writers } => {
            let args = reconnect::ReconnectArgs {
                target: common.target()?,
                users,
                before,
                missed,
                writers,
                threads: common.threads,
                tag: common.tag.clone(),
            };
            finish(&reconnect::run(args, common.server_pid)?, common.json);
            Ok(())
        }
        Cmd::Merge { files } => {
            let reports = files
                .iter()
                .map(|f| -> anyhow::Result<serde_json::Value> {
                    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                    serde_json::from_str(text.trim()).with_context(|| format!("parsing {}", f.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            finish(&report::merge(&reports)?, true);
            Ok(())
        }
    }
}
