//! Configuration: defaults, then a TOML file (`--config`), then environment variables
//! (`SWITCHBOARD_*`), then flags. Every limit lives here; README lists them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything `serve` needs. Immutable once the shards start (shared read-only).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the WebSocket listener (one SO_REUSEPORT socket per shard).
    pub listen: SocketAddr,
    /// Address of the admin endpoint (health, readiness, metrics, drain).
    pub admin_listen: SocketAddr,
    /// Bearer token `POST /drain` and `POST /revoke` need (`switchboard admin` sends
    /// it). Required when `admin_listen` is not a loopback address.
    pub admin_token: Option<String>,
    /// TLS certificate chain (PEM). With `tls_key`, the listener speaks WSS only.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Serve WSS with a self-signed development certificate kept in the data dir.
    pub tls_dev: bool,
    /// Number of shards; 0 = one per online CPU.
    pub shards: usize,
    /// Pin shard k to CPU k.
    pub pin: bool,
    /// Where the embedded store keeps its partitions (and, with any storage, the
    /// revocation list and the development TLS certificate and token secret).
    pub data_dir: PathBuf,
    /// Where messages are stored: `embedded` (on this host's disk, in `data_dir`) or
    /// `cql` (a ScyllaDB or Cassandra cluster, `cql_nodes`).
    pub storage: String,
    /// CQL contact points, `host:port` (with `storage = "cql"`).
    pub cql_nodes: Vec<String>,
    /// The keyspace (created at start if missing).
    pub cql_keyspace: String,
    /// Replication strategy of a keyspace the gateway creates.
    pub cql_replication_class: String,
    /// Replication factor of a keyspace the gateway creates.
    pub cql_replication_factor: u32,
    /// Consistency of every CQL read and write: `local_quorum`, `quorum`, `one`, `all`...
    pub cql_consistency: String,
    /// CQL username (with `cql_password`).
    pub cql_username: Option<String>,
    /// CQL password.
    pub cql_password: Option<String>,
    /// Speak TLS to the cluster, trusting this CA certificate (PEM).
    pub cql_tls_ca: Option<PathBuf>,
    /// A CQL request's deadline, in ms, retries included; beyond, the client gets a
    /// retryable `internal` and nothing is acknowledged.
    pub cql_request_timeout_ms: u64,
    /// How long connecting to the cluster may take at start, in seconds.
    pub cql_connect_timeout_secs: u64,
    /// CQL requests (reads and commits) one shard may have in flight; beyond, the
    /// request is refused with a retryable `internal`.
    pub cql_max_in_flight: usize,
    /// How long a message's dedupe row lives in the cluster, in seconds (resends older
    /// than that and no longer in memory are stored again).
    pub cql_dedupe_ttl_secs: u32,
    /// Threads of the CQL driver's runtime.
    pub cql_threads: usize,
    /// HS256 secret for tokens. When unset, a random one is created in `data_dir/jwt-secret`.
    pub jwt_secret: Option<String>,
    /// Accepted clock skew when checking `exp` and `nbf`, in seconds.
    pub jwt_leeway_secs: u64,
    /// A public key (PEM: Ed25519 for EdDSA tokens, RSA for RS256) the token issuer signs with.
    pub jwt_public_key: Option<PathBuf>,
    /// A JWKS file of public keys (EdDSA, RS256), chosen by the token's `kid`.
    pub jwt_jwks: Option<PathBuf>,
    /// Required `iss` claim.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    pub jwt_audience: Option<String>,
    /// Largest WebSocket frame (and reassembled message) accepted, in bytes. Larger: close 1009.
    pub max_frame: usize,
    /// Largest message body, in bytes. Larger: `body_too_large`.
    pub max_body: usize,
    /// Largest HTTP upgrade request (request line + headers), in bytes. Larger: HTTP 431.
    pub max_handshake: usize,
    /// Longest request target (path and query) of the upgrade, in bytes. Longer: HTTP 414.
    pub max_url: usize,
    /// Frames a connection may send per second (any kind); more: close 1008.
    pub max_frames_per_sec: u32,
    /// Fragments one message may arrive in; more: close 1008.
    pub max_fragments: u32,
    /// Conversations one `hello` may list; more: `bad_value`.
    pub max_sync_convs: usize,
    /// Most messages in one history page.
    pub history_max: u32,
    /// Messages per history page when the request names no limit.
    pub history_default: u32,
    /// Newest messages replayed per conversation on `hello` before `has_more`.
    pub sync_per_conv: u32,
    /// Most members a group may have (`group` add/create beyond it: `limit_exceeded`).
    pub max_group_members: usize,
    /// Recent `(sender, client_msg_id)` pairs remembered per conversation for dedupe.
    pub dedupe_window: usize,
    /// Shortest time between the starts of two group commits on a shard, in µs (0: commit
    /// as soon as the previous one finished). An idle shard commits at once; under load
    /// this caps fdatasyncs per second and lets batches grow.
    pub commit_window_us: u64,
    /// Size of each shard's commit log in MiB (0: no log; each group commit is a synced
    /// batch of the store itself). With the log, a group commit is one direct `O_DSYNC`
    /// write on the shard's ring and the store is written unsynced off the ack path; a
    /// full log makes the shard flush the store and start the log again.
    pub commit_log_mib: u64,
    /// This host's id (0..32), part of every message id.
    pub host_id: u8,
    /// Memory glommio locks per shard for io_uring buffers, in bytes.
    pub io_memory: usize,
    /// How long an idle shard keeps polling before it sleeps, in µs (0: sleep at once).
    /// Spinning trades CPU for fewer sleeps and wake-ups.
    pub spin_before_park_us: u64,
    /// Allow transparent huge pages. Off by default: 2 MiB pages make RSS grow in
    /// steps of megabytes, which costs more than it saves for a gateway whose memory is
    /// many small per-connection entries.
    pub huge_pages: bool,
    /// Submission queue entries of each shard's socket ring.
    pub ring_entries: u32,
    /// Ping a connection silent for this long, in seconds.
    pub ping_interval_secs: u32,
    /// Close a connection silent (no frame, no pong) for this long, in seconds.
    pub idle_timeout_secs: u32,
    /// Close a connection that has not completed its upgrade within this many seconds.
    pub handshake_timeout_secs: u32,
    /// Most connections on this host (split evenly over shards); beyond: HTTP 503.
    pub max_connections: usize,
    /// Most devices connected at once per user; beyond: HTTP 503.
    pub max_devices_per_user: usize,
    /// Upgrades per second each shard completes (0 = unlimited); beyond: HTTP 503.
    pub handshake_rate: u32,
    /// Upgrades a shard may complete in a burst above `handshake_rate`.
    pub handshake_burst: u32,
    /// Messages per second a user may send (0 = unlimited); beyond: `rate_limited`.
    pub send_rate: u32,
    /// Messages a user may send in a burst above `send_rate`.
    pub send_burst: u32,
    /// Bytes queued for a connection that does not read; beyond: close 1008.
    pub max_outbound: usize,
    /// `Retry-After` seconds sent with HTTP 503.
    pub retry_after_secs: u32,
    /// Presence changes are published at most once per window, in ms.
    pub presence_window_ms: u32,
    /// A typing indicator without refresh expires after this many seconds.
    pub typing_ttl_secs: u32,
    /// Seconds after sending during which a message's sender may edit it.
    pub edit_window_secs: u64,
    /// Seconds after sending during which a message's sender may delete it for
    /// everyone (a group admin may at any time).
    pub delete_window_secs: u64,
    /// Largest `size` a media reference may announce, in bytes; beyond: `limit_exceeded`.
    pub media_max_bytes: u64,
    /// MIME types media references may name: exact (`application/pdf`) or a whole type
    /// ending in `/` (`image/`); others: `limit_exceeded`.
    pub media_types: Vec<String>,
    /// `typing` frames per second a user may send (0 = unlimited); beyond: `rate_limited`.
    pub typing_rate: u32,
    /// `typing` frames a user may send in a burst above `typing_rate`.
    pub typing_burst: u32,
    /// `history` requests and `hello` syncs per second per user (0 = unlimited).
    pub history_rate: u32,
    /// History requests and syncs a user may make in a burst above `history_rate`.
    pub history_burst: u32,
    /// `presence_sub`, `presence_unsub` and `presence_set` frames per second per user
    /// (0 = unlimited).
    pub presence_rate: u32,
    /// Presence frames a user may send in a burst above `presence_rate`.
    pub presence_burst: u32,
    /// Users one connection may watch (`presence_sub`); beyond: `limit_exceeded`.
    pub max_presence_subs: usize,
    /// MiB of memory (estimated) per shard for loaded conversations; idle ones beyond
    /// it are evicted (and reloaded from storage on next use).
    pub conv_memory_mib: usize,
    /// Conversation ids per shard remembered as missing, so asking again costs no read.
    pub negative_cache: usize,
    /// Requests that may wait for one conversation to load; beyond: `unavailable`.
    pub max_waiters: usize,
    /// Storage reads in flight per shard; beyond: `unavailable` (retryable).
    pub max_reads: usize,
    /// Accepted messages per shard waiting for a commit; beyond: `unavailable`.
    pub max_commit_queue: usize,
    /// Batches a shard may have waiting for room in the mesh channel to one peer; beyond,
    /// it stops reading its clients until the peer catches up.
    pub mesh_backlog: usize,
    /// Log level: `error`, `warn`, `info`, `debug` or `trace`, or a filter such as
    /// `info,switchboard::service=debug` (`RUST_LOG`, when set, wins).
    pub log_level: String,
    /// Log lines as `text` (colours only on a terminal) or `json` (one object a line).
    pub log_format: String,
    /// Seconds over which a drain (SIGTERM) spreads its 1012 closes.
    pub drain_secs: u32,
    /// Seconds a closing connection (close frame or refusal queued) may take to read it
    /// before its TCP connection is ended.
    pub closing_grace_secs: u32,
    /// Browser origins (`https://app.example.com`) allowed to open a connection; an
    /// upgrade with another `Origin` gets 403 `forbidden_origin`. Empty: any origin.
    /// Requests without `Origin` (not from a browser) are not affected.
    pub allowed_origins: Vec<String>,
    /// Accept permessage-deflate (RFC 7692) when a client offers it. Each message is
    /// compressed on its own (no context takeover either way), so a connection keeps no
    /// compression state; it costs CPU per message instead.
    pub permessage_deflate: bool,
    /// Conformance-testing reflector: every message is written back instead of being
    /// handled. Only in a build with the `echo` cargo feature.
    pub echo: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:9000".parse().expect("literal address"),
            admin_listen: "127.0.0.1:9100".parse().expect("literal address"),
            admin_token: None,
            tls_cert: None,
            tls_key: None,
            tls_dev: false,
            shards: 0,
            pin: true,
            data_dir: PathBuf::from("./data"),
            storage: "embedded".into(),
            cql_nodes: vec!["127.0.0.1:9042".into()],
            cql_keyspace: "switchboard".into(),
            cql_replication_class: "NetworkTopologyStrategy".into(),
            cql_replication_factor: 3,
            cql_consistency: "local_quorum".into(),
            cql_username: None,
            cql_password: None,
            cql_tls_ca: None,
            cql_request_timeout_ms: 5000,
            cql_connect_timeout_secs: 30,
            cql_max_in_flight: 1024,
            cql_dedupe_ttl_secs: 30 * 24 * 3600,
            cql_threads: 2,
            jwt_secret: None,
            jwt_leeway_secs: 30,
            jwt_public_key: None,
            jwt_jwks: None,
            jwt_issuer: None,
            jwt_audience: None,
            max_frame: 64 * 1024,
            max_body: 48 * 1024,
            max_handshake: 8 * 1024,
            max_url: 2048,
            max_frames_per_sec: 1000,
            max_fragments: 64,
            max_sync_convs: 1000,
            history_max: 100,
            history_default: 50,
            sync_per_conv: 50,
            max_group_members: 10_000,
            dedupe_window: 1024,
            commit_window_us: 0,
            commit_log_mib: 64,
            host_id: 0,
            io_memory: 1 << 20,
            spin_before_park_us: 0,
            huge_pages: false,
            ring_entries: 4096,
            ping_interval_secs: 30,
            idle_timeout_secs: 90,
            handshake_timeout_secs: 10,
            max_connections: 1_000_000,
            max_devices_per_user: 10,
            handshake_rate: 20_000,
            handshake_burst: 20_000,
            send_rate: 20,
            send_burst: 50,
            max_outbound: 1 << 20,
            retry_after_secs: 5,
            presence_window_ms: 2000,
            typing_ttl_secs: 6,
            edit_window_secs: 15 * 60,
            delete_window_secs: 48 * 3600,
            media_max_bytes: 100 << 20,
            media_types: ["image/", "video/", "audio/", "application/pdf"].map(String::from).to_vec(),
            typing_rate: 5,
            typing_burst: 10,
            history_rate: 20,
            history_burst: 40,
            presence_rate: 20,
            presence_burst: 40,
            max_presence_subs: 1024,
            conv_memory_mib: 256,
            negative_cache: 65_536,
            max_waiters: 1024,
            max_reads: 4096,
            max_commit_queue: 16_384,
            mesh_backlog: 256,
            log_level: "info".into(),
            log_format: "text".into(),
            drain_secs: 10,
            closing_grace_secs: 5,
            allowed_origins: Vec::new(),
            permessage_deflate: false,
            echo: false,
        }
    }
}

impl Config {
    /// Sets keys from `(key, value)` pairs, each value written as in the TOML file (a
    /// value that is not TOML is taken as a string). `source` names where they came
    /// from in errors. An unknown key or a value of the wrong type is refused, named.
    pub fn apply_overrides(&mut self, pairs: &[(String, String)], source: &str) -> anyhow::Result<()> {
        for (key, raw) in pairs {
            let mut obj = serde_json::to_value(&*self)?;
            let map = obj.as_object_mut().expect("a config serializes to an object");
            anyhow::ensure!(
                map.contains_key(key.as_str()),
                "{source}: `{key}` is not a configuration key (switchboard.example.toml lists them all)"
            );
            let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
                Ok(mut t) => serde_json::to_value(t.remove("v").expect("parsed above"))?,
                Err(_) => serde_json::Value::String(raw.clone()),
            };
            map.insert(key.clone(), value);
            *self = serde_json::from_value(obj).map_err(|e| anyhow::anyhow!("{source}: `{key}` = {raw:?}: {e}"))?;
        }
        Ok(())
    }

    /// The `SWITCHBOARD_<KEY>` variables among `vars`, as `(key, value)` pairs
    /// (`SWITCHBOARD_CONFIG`, the file's path, is not a key). Every other
    /// `SWITCHBOARD_*` variable must name a key: a typo is refused, not ignored.
    pub fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vars
            .filter_map(|(k, v)| Some((k.strip_prefix("SWITCHBOARD_")?.to_ascii_lowercase(), v)))
            .filter(|(k, _)| k != "config")
            .collect();
        out.sort();
        out
    }

    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// Rejects limits that cannot work together.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.echo || cfg!(feature = "echo"),
            "echo: this build has no echo mode (build with `--features echo`; for conformance testing only)"
        );
        anyhow::ensure!(self.host_id < 32, "host_id must be below 32");
        anyhow::ensure!(
            self.admin_listen.ip().is_loopback() || self.admin_token.is_some(),
            "admin_token is required when admin_listen ({}) is not a loopback address",
            self.admin_listen
        );
        anyhow::ensure!(
            self.admin_token.as_ref().is_none_or(|t| t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic())),
            "admin_token must be at least 16 printable characters"
        );
        anyhow::ensure!(self.max_frame >= 1024, "max_frame must be at least 1024 bytes");
        anyhow::ensure!(self.max_body <= self.max_frame, "max_body must not exceed max_frame");
        anyhow::ensure!(self.max_handshake >= 512, "max_handshake must be at least 512 bytes");
        anyhow::ensure!(self.max_url >= 64, "max_url must be at least 64 bytes");
        anyhow::ensure!(
            (1..=65_535).contains(&self.max_frames_per_sec),
            "max_frames_per_sec must be between 1 and 65535 (a connection counts its frames in 16 bits)"
        );
        anyhow::ensure!(self.max_fragments >= 1, "max_fragments must be at least 1");
        anyhow::ensure!(self.history_max >= 1, "history_max must be at least 1");
        anyhow::ensure!(
            (1..=self.history_max).contains(&self.history_default),
            "history_default must be between 1 and history_max"
        );
        anyhow::ensure!(self.sync_per_conv >= 1, "sync_per_conv must be at least 1");
        anyhow::ensure!(self.max_group_members >= 2, "max_group_members must be at least 2");
        anyhow::ensure!(self.dedupe_window >= 1, "dedupe_window must be at least 1");
        anyhow::ensure!(self.shards <= 128, "shards must be at most 128 (0: one per CPU)");
        anyhow::ensure!(self.ring_entries.is_power_of_two(), "ring_entries must be a power of two");
        anyhow::ensure!(
            self.io_memory >= 64 * 1024,
            "io_memory must be at least 65536 bytes (io_uring buffer memory glommio locks per shard)"
        );
        anyhow::ensure!(self.ping_interval_secs >= 1, "ping_interval_secs must be at least 1");
        anyhow::ensure!(
            self.idle_timeout_secs > self.ping_interval_secs,
            "idle_timeout_secs must exceed ping_interval_secs"
        );
        anyhow::ensure!(self.handshake_timeout_secs >= 1, "handshake_timeout_secs must be at least 1");
        anyhow::ensure!(self.max_devices_per_user >= 1, "max_devices_per_user must be at least 1");
        anyhow::ensure!(self.max_outbound >= self.max_frame, "max_outbound must be at least max_frame");
        anyhow::ensure!(self.presence_window_ms >= 50, "presence_window_ms must be at least 50");
        anyhow::ensure!(self.typing_ttl_secs >= 1, "typing_ttl_secs must be at least 1");
        anyhow::ensure!(
            self.media_types.iter().all(|t| t.contains('/') && !t.starts_with('/')),
            "media_types are MIME types (`application/pdf`) or whole types ending in `/` (`image/`)"
        );
        anyhow::ensure!(self.max_presence_subs >= 1, "max_presence_subs must be at least 1");
        anyhow::ensure!(self.conv_memory_mib >= 1, "conv_memory_mib must be at least 1");
        anyhow::ensure!(self.max_waiters >= 1, "max_waiters must be at least 1");
        anyhow::ensure!(self.max_reads >= 1, "max_reads must be at least 1");
        anyhow::ensure!(self.max_commit_queue >= 1, "max_commit_queue must be at least 1");
        anyhow::ensure!(self.mesh_backlog >= 2, "mesh_backlog must be at least 2");
        anyhow::ensure!(matches!(self.log_format.as_str(), "text" | "json"), "log_format must be \"text\" or \"json\"");
        anyhow::ensure!(matches!(self.storage.as_str(), "embedded" | "cql"), "storage must be \"embedded\" or \"cql\"");
        if self.storage == "cql" {
            self.cql()?;
        }
        anyhow::ensure!(
            tracing_subscriber::EnvFilter::try_new(&self.log_level).is_ok(),
            "log_level is not a level or filter: {:?}",
            self.log_level
        );
        anyhow::ensure!(
            self.commit_log_mib == 0 || self.commit_log_mib.saturating_mul(1 << 20) >= 8 * self.max_frame as u64,
            "commit_log_mib must be 0 (off) or hold 8 frames of max_frame bytes"
        );
        Ok(())
    }

    /// The certificate and key files to serve WSS with, if any (creating the
    /// development certificate for `tls_dev`).
    pub fn tls_files(&self) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
        match (&self.tls_cert, &self.tls_key, self.tls_dev) {
            (Some(c), Some(k), _) => Ok(Some((c.clone(), k.clone()))),
            (None, None, true) => crate::tls::dev_cert(&self.data_dir).map(Some),
            (None, None, false) => Ok(None),
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        }
    }

    /// The CQL backend's settings (checked).
    pub fn cql(&self) -> anyhow::Result<storage_cql::Config> {
        anyhow::ensure!(!self.cql_nodes.is_empty(), "cql_nodes must name at least one host:port");
        anyhow::ensure!(
            storage_cql::schema::valid_keyspace(&self.cql_keyspace),
            "cql_keyspace must be letters, digits and _ (starting with a letter, at most 48)"
        );
        anyhow::ensure!(self.cql_replication_factor >= 1, "cql_replication_factor must be at least 1");
        anyhow::ensure!(
            self.cql_replication_class.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'),
            "cql_replication_class must be a strategy class name"
        );
        let consistency = storage_cql::parse_consistency(&self.cql_consistency)
            .ok_or_else(|| anyhow::anyhow!("cql_consistency is not a consistency level: {:?}", self.cql_consistency))?;
        let credentials = match (&self.cql_username, &self.cql_password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => anyhow::bail!("cql_username and cql_password go together"),
        };
        anyhow::ensure!(self.cql_request_timeout_ms >= 1, "cql_request_timeout_ms must be at least 1");
        anyhow::ensure!(self.cql_connect_timeout_secs >= 1, "cql_connect_timeout_secs must be at least 1");
        anyhow::ensure!(self.cql_max_in_flight >= 1, "cql_max_in_flight must be at least 1");
        anyhow::ensure!(self.cql_dedupe_ttl_secs >= 60, "cql_dedupe_ttl_secs must be at least 60");
        anyhow::ensure!((1..=16).contains(&self.cql_threads), "cql_threads must be 1..=16");
        Ok(storage_cql::Config {
            nodes: self.cql_nodes.clone(),
            keyspace: self.cql_keyspace.clone(),
            replication_class: self.cql_replication_class.clone(),
            replication_factor: self.cql_replication_factor,
            consistency,
            credentials,
            tls_ca: self.cql_tls_ca.clone(),
            request_timeout: std::time::Duration::from_millis(self.cql_request_timeout_ms),
            connect_timeout: std::time::Duration::from_secs(self.cql_connect_timeout_secs),
            max_in_flight: self.cql_max_in_flight,
            dedupe_ttl_secs: self.cql_dedupe_ttl_secs,
            threads: self.cql_threads,
        })
    }

    /// What the shard core enforces.
    pub fn core(&self) -> shard::core::CoreConfig {
        shard::core::CoreConfig {
            host_id: self.host_id,
            max_body: self.max_body,
            max_sync_convs: self.max_sync_convs,
            history_default: self.history_default,
            history_max: self.history_max,
            sync_per_conv: self.sync_per_conv,
            max_group_members: self.max_group_members,
            dedupe_window: self.dedupe_window,
            max_devices_per_user: self.max_devices_per_user,
            edit_window_ms: self.edit_window_secs.saturating_mul(1000),
            delete_window_ms: self.delete_window_secs.saturating_mul(1000),
            media_max_bytes: self.media_max_bytes,
            media_types: self.media_types.clone(),
            send_rate: self.send_rate,
            send_burst: self.send_burst,
            typing_rate: self.typing_rate,
            typing_burst: self.typing_burst,
            history_rate: self.history_rate,
            history_burst: self.history_burst,
            presence_rate: self.presence_rate,
            presence_burst: self.presence_burst,
            max_presence_subs: self.max_presence_subs,
            typing_ttl_ms: u64::from(self.typing_ttl_secs) * 1000,
            conv_memory: self.conv_memory_mib << 20,
            negative_cache: self.negative_cache,
            max_waiters: self.max_waiters,
            max_reads: self.max_reads,
            max_commit_queue: self.max_commit_queue,
            // Random per process: std's RandomState is seeded from the OS.
            hash_seed: std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), self.host_id),
        }
    }

    /// The shard count to run with.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            self.shards
        }
    }

    /// The token secret: configured, or the development secret kept in the data dir
    /// (created on first use, readable only by its owner).
    pub fn resolve_secret(&self) -> anyhow::Result<Vec<u8>> {
        self.secret(true)
    }

    /// The HS256 secret `serve` uses, for `switchboard token`: the configured one, or the
    /// development secret in the data directory. Never creates one: a token signed with
    /// a secret no server has would only earn a 401, so a missing secret is an error
    /// that names the directory looked in.
    pub fn read_secret(&self) -> anyhow::Result<Vec<u8>> {
        self.secret(false)
    }

    fn secret(&self, create: bool) -> anyhow::Result<Vec<u8>> {
        if let Some(s) = &self.jwt_secret {
            if s.len() < 16 {
                anyhow::bail!("jwt_secret must be at least 16 bytes");
            }
            return Ok(s.as_bytes().to_vec());
        }
        let path = self.data_dir.join("jwt-secret");
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().as_bytes().to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                let shown = std::path::absolute(&path).unwrap_or(path);
                anyhow::bail!(
                    "no token secret: {} does not exist. Run `switchboard serve` with this data directory \
                     once (it creates a development secret there), point --data-dir at the server's, or pass \
                     the server's secret with --jwt-secret / SWITCHBOARD_JWT_SECRET",
                    shown.display()
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::create_dir_all(&self.data_dir)?;
                let secret: String = (0..48).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect();
                let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                f.write_all(secret.as_bytes())?;
                tracing::warn!(path = %path.display(), "no jwt_secret configured: created a development secret");
                Ok(secret.into_bytes())
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }
}

impl Config {
    /// The token verifier: the HS256 secret (configured, or the development secret when
    /// no public key is configured either), the public key and the JWKS.
    pub fn verifier(&self) -> anyhow::Result<crate::auth::Verifier> {
        let has_public = self.jwt_public_key.is_some() || self.jwt_jwks.is_some();
        let secret = if self.jwt_secret.is_some() || !has_public { Some(self.resolve_secret()?) } else { None };
        let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
            p.as_ref()
                .map(|p| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display())))
                .transpose()
        };
        let pem = read(&self.jwt_public_key)?;
        let jwks = read(&self.jwt_jwks)?.map(String::from_utf8).transpose()?;
        crate::auth::Verifier::new(&crate::auth::KeySources {
            secret: secret.as_deref(),
            public_pem: pem.as_deref(),
            jwks: jwks.as_deref(),
            issuer: self.jwt_issuer.as_deref(),
            audience: self.jwt_audience.as_deref(),
            leeway_secs: self.jwt_leeway_secs,
        })
    }
}

/// Parses durations such as `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}: expected e.g. 90s, 30m, 24h, 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("bad duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        Config::default().validate().unwrap();
        let bad: Config = toml::from_str("history_max = 0").unwrap();
        assert!(bad.validate().is_err());
        let bad: Config = toml::from_str("max_body = 100000").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn cql_settings_are_checked_with_the_key_named() {
        let cql = |extra: &str| toml::from_str::<Config>(&format!("storage = \"cql\"\n{extra}")).unwrap();
        let good = cql("cql_nodes = [\"10.0.0.1:9042\", \"10.0.0.2:9042\"]\ncql_consistency = \"quorum\"");
        good.validate().unwrap();
        let c = good.cql().unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.consistency, scylla_consistency("quorum"));
        assert_eq!(c.request_timeout, std::time::Duration::from_secs(5));
        for (extra, key) in [
            ("cql_nodes = []", "cql_nodes"),
            ("cql_keyspace = \"a-b\"", "cql_keyspace"),
            ("cql_consistency = \"most\"", "cql_consistency"),
            ("cql_username = \"u\"", "cql_username"),
            ("cql_max_in_flight = 0", "cql_max_in_flight"),
            ("cql_replication_factor = 0", "cql_replication_factor"),
            ("cql_replication_class = \"x'}; DROP\"", "cql_replication_class"),
            ("cql_dedupe_ttl_secs = 1", "cql_dedupe_ttl_secs"),
            ("cql_threads = 0", "cql_threads"),
        ] {
            let e = cql(extra).validate().unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = toml::from_str::<Config>("storage = \"s3\"").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("storage"), "{e}");
        // Embedded storage does not look at the CQL keys.
        toml::from_str::<Config>("cql_nodes = []").unwrap().validate().unwrap();
    }

    fn scylla_consistency(s: &str) -> storage_cql::Consistency {
        storage_cql::parse_consistency(s).unwrap()
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_typos() {
        let c: Config = toml::from_str("max_frame = 1024\nshards = 2").unwrap();
        assert_eq!((c.max_frame, c.shards, c.history_max), (1024, 2, 100));
        assert!(toml::from_str::<Config>("max_frames = 1").is_err());
        let d = Config::default();
        assert_eq!((d.huge_pages, d.spin_before_park_us), (false, 0), "huge pages off, no spinning by default");
        let c: Config = toml::from_str("huge_pages = true\nspin_before_park_us = 50").unwrap();
        assert_eq!((c.huge_pages, c.spin_before_park_us), (true, 50));
    }

    /// `switchboard.example.toml` names every key; what it sets is the default; what it
    /// shows commented out (keys without a default) is a valid example.
    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        let text = include_str!("../../switchboard.example.toml");
        let parsed: Config = toml::from_str(text).expect("the example file parses");
        let defaults = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), defaults, "a value in the example is not the default");
        let named = |key: &str| {
            text.lines().any(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                l.strip_prefix(key).is_some_and(|rest| rest.starts_with(" = "))
            })
        };
        for key in defaults.as_object().unwrap().keys() {
            assert!(named(key), "switchboard.example.toml does not name `{key}`");
        }
        let examples: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| defaults.get(k).is_some()))
            .map(|l| format!("{l}\n"))
            .collect();
        let with_examples: Config = toml::from_str(&format!("{text}\n{examples}")).expect("the examples parse");
        for l in examples.lines() {
            let key = l.split_once(" = ").unwrap().0;
            assert!(!serde_json::to_value(&with_examples).unwrap()[key].is_null(), "{key}");
        }
    }
}
