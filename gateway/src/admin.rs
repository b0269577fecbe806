//! The admin endpoint: health, readiness, Prometheus metrics, and a drain command.
//!
//! Served by one plain thread with blocking sockets, off the shards: operators and
//! scrapers are few and slow, and nothing here touches a shard's state. Shards publish
//! their figures into [`ShardStats`]: per-shard atomics written only by their shard
//! (relaxed stores and adds, no locks, no contention) and read here.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when accepting connections, 503 while draining |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /drain` | starts a graceful drain (same as SIGTERM) |
//! | `POST /revoke?user=U&device=D` | revokes a device: live connections close (4003), older tokens stop working |

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::revocation::{self, Revocations, Revoke};

/// What the admin thread owns for revocations.
pub struct RevokeDesk {
    /// The data directory (where the list is persisted).
    pub data_dir: std::path::PathBuf,
    /// The current list.
    pub list: Revocations,
    /// One sender per shard; each shard answers on the enclosed channel once applied.
    pub shards: Vec<crossbeam_channel::Sender<(Revoke, crossbeam_channel::Sender<()>)>>,
}

/// Shared between the signal thread and the shards: read once per housekeeping tick,
/// never on a hot path.
pub struct Drain {
    /// A drain was requested (SIGTERM / SIGINT).
    pub requested: AtomicBool,
    /// `idle[k]`: shard k is draining and has no connection and no pending commit.
    pub idle: Vec<AtomicBool>,
}

impl Drain {
    /// For `shards` shards.
    pub fn new(shards: usize) -> Drain {
        Drain { requested: AtomicBool::new(false), idle: (0..shards).map(|_| AtomicBool::new(false)).collect() }
    }
}

/// A drain was asked for with `POST /drain` (so the signal thread logs why it drains).
pub static DRAIN_REQUESTED: AtomicBool = AtomicBool::new(false);

/// One shard's published figures. Invariant: only shard k writes `stats[k]`.
#[derive(Default)]
pub struct ShardStats {
    /// Open connections now (set every tick).
    pub connections: AtomicU64,
    /// Sockets accepted.
    pub accepted: AtomicU64,
    /// Upgrades refused (401, 503, ...).
    pub refused: AtomicU64,
    /// Messages stored (acknowledged) by this shard as a conversation home.
    pub messages_stored: AtomicU64,
    /// Group commits completed.
    pub commits: AtomicU64,
    /// `msg` frames written to devices.
    pub deliveries: AtomicU64,
    /// Sends refused with `rate_limited`.
    pub rate_limited: AtomicU64,
    /// Connections closed for not reading (outbound queue over `max_outbound`).
    pub slow_readers: AtomicU64,
    /// Connections closed for silence (heartbeat) or slow handshakes.
    pub timeouts: AtomicU64,
    /// WSS connections upgraded (TLS handshake done), counted by the user's home shard.
    pub tls_handshakes: AtomicU64,
    /// Of those, the ones that resumed an earlier session (a ticket) instead of a full handshake.
    pub tls_resumed: AtomicU64,
    /// Group commits by duration (`COMMIT_BUCKETS_US`).
    pub commit: Histo,
    /// From a message's acceptance at its conversation's home to its ack written to the
    /// sender (`LATENCY_BUCKETS_US`; the acceptance time has ms resolution).
    pub send_ack: Histo,
    /// From a message's acceptance to its delivery to the recipients on this shard.
    pub send_deliver: Histo,
    /// Batches of logged writes applied to the store (commit log on).
    pub store_applies: AtomicU64,
    /// Commit log checkpoints (store flushed, log emptied).
    pub log_checkpoints: AtomicU64,
    /// Group commits larger than the whole commit log, written to the store directly.
    pub log_bypasses: AtomicU64,
    /// Conversations in memory (loaded or loading), set every tick.
    pub convs: AtomicU64,
    /// Estimated bytes of loaded conversations (against `conv_memory_mib`).
    pub conv_bytes: AtomicU64,
    /// Conversations evicted since start.
    pub convs_evicted: AtomicU64,
    /// Users in memory.
    pub users: AtomicU64,
    /// Conversation ids in the negative cache.
    pub negative: AtomicU64,
    /// Storage reads in flight.
    pub reads: AtomicU64,
    /// Conversation-list parts waiting for (or in) a group commit.
    pub list_parts: AtomicU64,
    /// Messages waiting for a group commit.
    pub queued: AtomicU64,
    /// `mesh_backlog[k]`: batches towards shard k waiting for room in the channel.
    pub mesh_backlog: Vec<AtomicU64>,
    /// Upgrades refused, by [`REFUSAL_CODES`].
    pub refused_by: [AtomicU64; REFUSAL_CODES.len()],
    /// `error` frames sent, by `wire::error::ErrorCode::ALL`.
    pub errors_by: [AtomicU64; wire::error::ErrorCode::ALL.len()],
    /// Close frames sent, by [`CLOSE_CODES`] (the last counts every other code).
    pub closes_by: [AtomicU64; CLOSE_CODES.len() + 1],
    /// TLS connections that failed (handshake or records).
    pub tls_failures: AtomicU64,
    /// Bytes read from sockets (ciphertext for WSS).
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets (ciphertext for WSS).
    pub bytes_out: AtomicU64,
    /// Storage calls that failed (commits and reads).
    pub storage_errors: AtomicU64,
}

/// The `code` of every upgrade refusal (HTTP answers before the WebSocket starts).
pub const REFUSAL_CODES: [&str; 11] = [
    "bad_request",
    "connection_limit",
    "device_limit",
    "draining",
    "forbidden_origin",
    "handshake_rate",
    "headers_too_large",
    "method_not_allowed",
    "unauthorized",
    "upgrade_required",
    "uri_too_long",
];

/// The WebSocket close codes the server sends, counted one by one.
pub const CLOSE_CODES: [u16; 17] =
    [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 4000, 4003, 4400, 4401, 4403, 4408, 4429, 4503];

/// Upper bounds (µs) of the commit-duration histogram's buckets.
pub const COMMIT_BUCKETS_US: [u64; 10] = [250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];

impl ShardStats {
    /// Figures of one shard among `shards`.
    pub fn new(shards: usize) -> ShardStats {
        ShardStats { mesh_backlog: (0..shards).map(|_| AtomicU64::new(0)).collect(), ..Default::default() }
    }

    /// Adds one to a counter (its shard is the only writer).
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused upgrade by its code.
    pub fn refusal(&self, code: &str) {
        if let Some(i) = REFUSAL_CODES.iter().position(|c| *c == code) {
            Self::bump(&self.refused_by[i]);
        }
    }

    /// Counts an `error` frame sent.
    pub fn error_frame(&self, code: wire::error::ErrorCode) {
        if let Some(i) = wire::error::ErrorCode::ALL.iter().position(|c| *c == code) {
            Self::bump(&self.errors_by[i]);
        }
    }

    /// Counts a close frame sent.
    pub fn close(&self, code: u16) {
        let i = CLOSE_CODES.iter().position(|c| *c == code).unwrap_or(CLOSE_CODES.len());
        Self::bump(&self.closes_by[i]);
    }

    /// Records one group commit (from the start of the batch to the storage's answer,
    /// failed ones included).
    pub fn observe_commit(&self, took: Duration) {
        self.commit.observe(&COMMIT_BUCKETS_US, took.as_micros().min(u64::MAX as u128) as u64);
    }
}

/// A histogram a shard writes and the admin thread reads: `le[i]` counts the values of
/// at most `bounds[i]` and more than the bound before; `le[bounds.len()]`, larger ones.
#[derive(Default)]
pub struct Histo {
    le: [AtomicU64; 16],
    sum_us: AtomicU64,
}

impl Histo {
    /// Counts one value of `us` microseconds against `bounds` (at most 15).
    pub fn observe(&self, bounds: &[u64], us: u64) {
        let i = bounds.iter().position(|&b| us <= b).unwrap_or(bounds.len());
        ShardStats::bump(&self.le[i]);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Upper bounds (µs) of the send→ack and send→deliver histograms' buckets.
pub const LATENCY_BUCKETS_US: [u64; 12] =
    [1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000];

/// Appends a histogram family, one series per shard, in seconds.
fn histogram(
    out: &mut String,
    stats: &[ShardStats],
    name: &str,
    help: &str,
    bounds: &[u64],
    get: fn(&ShardStats) -> &Histo,
) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
    for (k, s) in stats.iter().enumerate() {
        let h = get(s);
        let mut count = 0;
        for (i, bucket) in h.le.iter().take(bounds.len() + 1).enumerate() {
            count += bucket.load(Ordering::Relaxed);
            let le = bounds.get(i).map_or("+Inf".to_owned(), |&us| format!("{}", us as f64 / 1e6));
            out.push_str(&format!("{name}_bucket{{shard=\"{k}\",le=\"{le}\"}} {count}\n"));
        }
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum{{shard=\"{k}\"}} {sum}\n{name}_count{{shard=\"{k}\"}} {count}\n"));
    }
}

/// One exported family with a label: name, help, label name, label values, and the
/// counters (one per value).
type Labelled = (&'static str, &'static str, &'static str, Vec<String>, fn(&ShardStats) -> &[AtomicU64]);

/// One exported series: name, type, help, and where to read it.
type Series = (&'static str, &'static str, &'static str, fn(&ShardStats) -> &AtomicU64);

/// The web console: a chat client and a live view of this gateway, one static page.
const CONSOLE: &str = include_str!("console.html");

/// More metrics to export beside the shards' (the storage backend's).
pub type ExtraMetrics = Option<Arc<dyn Fn(&mut String) + Send + Sync>>;

/// What the admin endpoint serves beside the shards' figures.
pub struct Options {
    /// The storage backend's metrics.
    pub metrics: ExtraMetrics,
    /// The WebSocket listener's port (the console connects there).
    pub ws_port: u16,
    /// When set, `POST /drain` and `POST /revoke` need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// Whether the request's headers carry `Authorization: Bearer <token>` (compared in
/// time independent of where they differ).
fn authorized(headers: &[String], token: &str) -> bool {
    headers.iter().any(|h| {
        let Some((name, value)) = h.split_once(':') else { return false };
        let Some(given) = value.trim().strip_prefix("Bearer ") else { return false };
        name.trim().eq_ignore_ascii_case("authorization")
            && given.len() == token.len()
            && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

fn metrics(stats: &[ShardStats], drain: &Drain, extra: &ExtraMetrics) -> String {
    let mut out = String::new();
    if let Some(f) = extra {
        f(&mut out);
    }
    let series: [Series; 22] = [
        ("switchboard_connections", "gauge", "Open connections.", |s| &s.connections),
        ("switchboard_accepted_total", "counter", "Sockets accepted.", |s| &s.accepted),
        ("switchboard_upgrades_refused_total", "counter", "Upgrades refused (401, 503, ...).", |s| &s.refused),
        ("switchboard_messages_stored_total", "counter", "Messages durably stored and acknowledged.", |s| {
            &s.messages_stored
        }),
        ("switchboard_commits_total", "counter", "Group commits (one durable sync each).", |s| &s.commits),
        ("switchboard_store_applies_total", "counter", "Batches of logged writes applied to the store.", |s| {
            &s.store_applies
        }),
        ("switchboard_log_checkpoints_total", "counter", "Commit log checkpoints (store flushed, log emptied).", |s| {
            &s.log_checkpoints
        }),
        (
            "switchboard_log_bypasses_total",
            "counter",
            "Group commits larger than the commit log, synced to the store directly.",
            |s| &s.log_bypasses,
        ),
        ("switchboard_deliveries_total", "counter", "msg frames written to devices.", |s| &s.deliveries),
        ("switchboard_rate_limited_total", "counter", "Sends refused with rate_limited.", |s| &s.rate_limited),
        ("switchboard_slow_reader_closes_total", "counter", "Connections closed for not reading.", |s| &s.slow_readers),
        ("switchboard_timeouts_total", "counter", "Connections closed by heartbeat or handshake timeout.", |s| {
            &s.timeouts
        }),
        ("switchboard_tls_handshakes_total", "counter", "WSS connections upgraded.", |s| &s.tls_handshakes),
        ("switchboard_tls_resumed_total", "counter", "WSS handshakes that resumed a session.", |s| &s.tls_resumed),
        ("switchboard_conversations", "gauge", "Conversations in memory.", |s| &s.convs),
        ("switchboard_conversation_bytes", "gauge", "Estimated bytes of loaded conversations.", |s| &s.conv_bytes),
        ("switchboard_conversations_evicted_total", "counter", "Idle conversations evicted.", |s| &s.convs_evicted),
        ("switchboard_users", "gauge", "Users in memory (connected or watched).", |s| &s.users),
        ("switchboard_negative_cache", "gauge", "Conversation ids remembered as missing.", |s| &s.negative),
        ("switchboard_storage_reads", "gauge", "Storage reads in flight.", |s| &s.reads),
        ("switchboard_commit_queue", "gauge", "Messages waiting for a group commit.", |s| &s.queued),
        ("switchboard_list_parts", "gauge", "Conversation-list parts waiting for a group commit.", |s| &s.list_parts),
    ];
    for (name, kind, help, get) in series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (k, s) in stats.iter().enumerate() {
            out.push_str(&format!("{name}{{shard=\"{k}\"}} {}\n", get(s).load(Ordering::Relaxed)));
        }
    }
    histogram(
        &mut out,
        stats,
        "switchboard_commit_duration_seconds",
        "Group commits by duration (batch start to the storage's answer).",
        &COMMIT_BUCKETS_US,
        |s| &s.commit,
    );
    histogram(
        &mut out,
        stats,
        "switchboard_send_ack_seconds",
        "From a message's acceptance at its conversation's home to its ack written to the sender (ms resolution).",
        &LATENCY_BUCKETS_US,
        |s| &s.send_ack,
    );
    histogram(
        &mut out,
        stats,
        "switchboard_send_deliver_seconds",
        "From a message's acceptance to its delivery to the recipients on this shard (ms resolution).",
        &LATENCY_BUCKETS_US,
        |s| &s.send_deliver,
    );
    let labelled: [Labelled; 3] = [
        (
            "switchboard_upgrades_refused_by_reason_total",
            "Upgrades refused, by the refusal's code.",
            "reason",
            REFUSAL_CODES.iter().map(|c| c.to_string()).collect(),
            |s| &s.refused_by,
        ),
        (
            "switchboard_error_frames_total",
            "error frames sent, by code.",
            "code",
            wire::error::ErrorCode::ALL.iter().map(|c| c.name().to_owned()).collect(),
            |s| &s.errors_by,
        ),
        (
            "switchboard_closes_total",
            "WebSocket close frames sent, by close code.",
            "code",
            CLOSE_CODES.iter().map(|c| c.to_string()).chain(["other".to_owned()]).collect(),
            |s| &s.closes_by,
        ),
    ];
    for (name, help, label, values, get) in labelled {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for (k, s) in stats.iter().enumerate() {
            for (v, c) in values.iter().zip(get(s)) {
                out.push_str(&format!("{name}{{shard=\"{k}\",{label}=\"{v}\"}} {}\n", c.load(Ordering::Relaxed)));
            }
        }
    }
    let plain: [Series; 4] = [
        ("switchboard_tls_failures_total", "counter", "TLS connections that failed.", |s| &s.tls_failures),
        ("switchboard_bytes_received_total", "counter", "Bytes read from sockets.", |s| &s.bytes_in),
        ("switchboard_bytes_sent_total", "counter", "Bytes written to sockets.", |s| &s.bytes_out),
        ("switchboard_storage_errors_total", "counter", "Storage commits and reads that failed.", |s| {
            &s.storage_errors
        }),
    ];
    for (name, kind, help, get) in plain {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (k, s) in stats.iter().enumerate() {
            out.push_str(&format!("{name}{{shard=\"{k}\"}} {}\n", get(s).load(Ordering::Relaxed)));
        }
    }
    let (cpu, fds, start) = process_figures();
    for (name, kind, help, v) in [
        ("switchboard_process_cpu_seconds_total", "counter", "CPU time of the process (user and system).", cpu),
        ("switchboard_process_open_fds", "gauge", "Open file descriptors.", fds),
        ("switchboard_process_start_time_seconds", "gauge", "Start time, seconds since the epoch.", start),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
    out.push_str(&format!(
        "# HELP switchboard_build_info The running build.\n# TYPE switchboard_build_info gauge\nswitchboard_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    ));
    let name = "switchboard_mesh_backlog";
    out.push_str(&format!(
        "# HELP {name} Batches waiting for room in the mesh channel to another shard.\n# TYPE {name} gauge\n"
    ));
    for (k, s) in stats.iter().enumerate() {
        for (to, b) in s.mesh_backlog.iter().enumerate().filter(|(to, _)| *to != k) {
            out.push_str(&format!("{name}{{shard=\"{k}\",to=\"{to}\"}} {}\n", b.load(Ordering::Relaxed)));
        }
    }
    let name = "switchboard_process_resident_bytes";
    out.push_str(&format!(
        "# HELP {name} Resident memory of the process.\n# TYPE {name} gauge\n{name} {}\n",
        resident_bytes()
    ));
    let draining = u8::from(drain.requested.load(Ordering::Relaxed));
    out.push_str(&format!(
        "# HELP switchboard_draining 1 while draining.\n# TYPE switchboard_draining gauge\nswitchboard_draining {draining}\n"
    ));
    out
}

/// CPU seconds, open descriptors and start time (seconds since the epoch) of this
/// process, from `/proc` (zeros where unavailable).
fn process_figures() -> (f64, f64, f64) {
    let tick = crate::reactor::clock_ticks_per_sec();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (field(14) + field(15)) / tick;
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(0.0);
    let start = boot + field(22) / tick;
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0);
    (cpu, fds, start)
}

/// Resident set size from `/proc/self/statm` (0 where unavailable).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn respond(s: TcpStream, status: &str, body: &str, content_type: &str) {
    respond_with(s, status, body, content_type, "", true);
}

/// Writes a response; `extra` is more header lines, each ending in CRLF. Without
/// `with_body` (a HEAD request) the headers describe the body that is left out.
fn respond_with(mut s: TcpStream, status: &str, body: &str, content_type: &str, extra: &str, with_body: bool) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
        body.len(),
        if with_body { body } else { "" }
    );
}

/// The methods each admin path answers (for 405's `Allow`), or `None` for an unknown path.
fn allowed(path: &str) -> Option<&'static str> {
    match path.split('?').next().unwrap_or("") {
        "/healthz" | "/readyz" | "/metrics" | "/console" | "/" => Some("GET, HEAD"),
        "/drain" | "/revoke" => Some("POST"),
        _ => None,
    }
}

fn query(path: &str, key: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    let raw = q.split('&').find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))?;
    crate::upgrade::percent_decode(raw)
}

fn revoke(s: TcpStream, path: &str, desk: &mut RevokeDesk) {
    let text = "text/plain; charset=utf-8";
    let (Some(user), Some(device)) = (query(path, "user"), query(path, "device")) else {
        return respond(s, "400 Bad Request", "POST /revoke?user=U&device=D\n", text);
    };
    let revoked_at = shard::ids::now_ms() / 1000;
    let r = Revoke { user, device, revoked_at };
    desk.list.insert(&r);
    if let Err(e) = revocation::save(&desk.data_dir, &desk.list) {
        return respond(s, "500 Internal Server Error", &format!("could not persist the revocation: {e}\n"), text);
    }
    // Answer only once every shard enforces it (each applies it on its next beat).
    let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
    for tx in &desk.shards {
        let _ = tx.send((r.clone(), ack_tx.clone()));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let applied = (0..desk.shards.len()).take_while(|_| ack_rx.recv_deadline(deadline).is_ok()).count();
    tracing::info!(user = %r.user, device = %r.device, applied, "device revoked");
    if applied < desk.shards.len() {
        return respond(s, "202 Accepted", "persisted; not yet applied by every shard\n", text);
    }
    respond(s, "200 OK", &format!("{{\"revoked_at\":{revoked_at}}}\n"), "application/json");
}

fn serve_one(s: TcpStream, stats: &[ShardStats], drain: &Drain, desk: &mut RevokeDesk, opts: &Options) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    if reader.read_line(&mut line).is_err() || line.len() > 1024 {
        return;
    }
    // The headers (at most 32 lines of 1 KiB), for the admin token.
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.len() > 1024 || headers.len() > 32 {
            return;
        }
        if h.trim().is_empty() {
            break;
        }
        headers.push(h);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "POST" && opts.token.as_deref().is_some_and(|t| !authorized(&headers, t)) {
        return respond(
            s,
            "401 Unauthorized",
            "this admin endpoint needs Authorization: Bearer <admin_token>\n",
            "text/plain; charset=utf-8",
        );
    }
    let text = "text/plain; charset=utf-8";
    // HEAD is GET without the body (health checkers and load balancers use it).
    let (method, with_body) = if method == "HEAD" { ("GET", false) } else { (method, true) };
    let get = |s, status, body: &str, ctype| respond_with(s, status, body, ctype, "", with_body);
    match (method, path) {
        ("GET", "/healthz") => get(s, "200 OK", "ok\n", text),
        ("POST", p) if p.starts_with("/revoke?") || p == "/revoke" => revoke(s, p, desk),
        ("GET", "/readyz") if drain.requested.load(Ordering::Relaxed) => {
            get(s, "503 Service Unavailable", "draining\n", text)
        }
        ("GET", "/readyz") => get(s, "200 OK", "ready\n", text),
        ("GET", "/console") | ("GET", "/") => {
            let page = format!("<script>window.SWITCHBOARD_WS_PORT={}</script>\n{CONSOLE}", opts.ws_port);
            get(s, "200 OK", &page, "text/html; charset=utf-8")
        }
        ("GET", "/metrics") => get(s, "200 OK", &metrics(stats, drain, &opts.metrics), "text/plain; version=0.0.4"),
        ("POST", "/drain") => {
            // The same path as an operator's SIGTERM: the signal thread starts the drain.
            // The shards refuse upgrades from now on, before the 202 goes out (the signal
            // thread sets the same flag a moment later).
            DRAIN_REQUESTED.store(true, Ordering::Relaxed);
            drain.requested.store(true, Ordering::Relaxed);
            crate::reactor::request_termination();
            respond(s, "202 Accepted", "draining\n", text)
        }
        (m, p) => match allowed(p) {
            Some(allow) => respond_with(
                s,
                "405 Method Not Allowed",
                &format!("{m} is not allowed here: use {allow}\n"),
                text,
                &format!("Allow: {allow}\r\n"),
                with_body,
            ),
            None => get(
                s,
                "404 Not Found",
                "try /console, /healthz, /readyz, /metrics, POST /drain or POST /revoke\n",
                text,
            ),
        },
    }
}

/// Binds the admin listener; returns its address. Requests are served one at a time
/// on a dedicated thread.
pub fn start(
    addr: SocketAddr,
    stats: Arc<Vec<ShardStats>>,
    drain: Arc<Drain>,
    mut desk: RevokeDesk,
    opts: Options,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("binding admin {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        for s in listener.incoming().flatten() {
            serve_one(s, &stats, &drain, &mut desk, &opts);
        }
    })?;
    Ok(bound)
}
