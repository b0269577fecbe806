//! `serve`: checks the data directory, opens one storage partition per shard, binds one
//! SO_REUSEPORT listener per shard on the same port, starts the shards, and prints the
//! listening line once every shard accepts.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::Context as _;
use socket2::{Domain, Socket, Type};

use crate::admin::Drain;
use crate::config::Config;
use crate::service::{self, ShardSetup};

/// Listen backlog per shard (glommio's own bind hard-codes 1024).
const BACKLOG: i32 = 4096;

fn listener(addr: SocketAddr) -> anyhow::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    s.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    s.listen(BACKLOG)?;
    Ok(s)
}

/// Refuses a port another process already listens on. The shards' listeners share
/// their port through SO_REUSEPORT, which would also let them join another gateway's
/// (or anything's) listeners on it, and the kernel would then split new connections
/// between the two processes. A socket bound without SO_REUSEPORT cannot share the
/// port, so it tells whether anyone holds it.
fn check_port_free(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Connections of an earlier run still in TIME_WAIT do not count as a holder.
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "{addr} is already in use by another process (another switchboard?): refusing to share it. \
             Give each instance its own `listen` (and `admin_listen` and `data_dir`)"
        ),
        Err(e) => Err(e).with_context(|| format!("binding {addr}")),
        Ok(()) => Ok(()),
    }
}

/// Binds `n` listeners on one port (the first picks it when `addr` has port 0).
pub fn listeners(addr: SocketAddr, n: usize) -> anyhow::Result<(SocketAddr, Vec<OwnedFd>)> {
    let first = listener(addr)?;
    let bound = first.local_addr()?.as_socket().context("listener has no inet address")?;
    let mut fds = vec![OwnedFd::from(first)];
    for _ in 1..n {
        fds.push(OwnedFd::from(listener(bound)?));
    }
    Ok((bound, fds))
}

/// The shards' storage: one partition each, on this host's disk or in a CQL cluster.
struct Backend {
    /// The CQL cluster connection (`None`: embedded).
    cluster: Option<storage_cql::Cluster>,
    /// Each shard's partition, as the synchronous interface.
    stores: Vec<Arc<dyn storage::Store>>,
    /// Each shard's commit log (embedded storage only).
    logs: Vec<Option<crate::service::LogSetup>>,
    /// Each shard's CQL partition, which reads and commits are submitted to.
    cql: Vec<Option<Arc<storage_cql::Partition>>>,
}

/// Opens the configured storage: the embedded partitions (replaying their commit logs),
/// or a connection to the CQL cluster (schema created or migrated, shard count checked).
fn open_storage(cfg: &Config, shards: usize) -> anyhow::Result<Backend> {
    // The data directory holds the revocation list and development secrets either way.
    storage::layout::check_shard_count(&cfg.data_dir, shards)?;
    if cfg.storage == "cql" {
        let cluster = storage_cql::Cluster::connect(&cfg.cql()?, shards)?;
        tracing::info!(nodes = ?cfg.cql_nodes, keyspace = %cfg.cql_keyspace, "storing in the CQL cluster");
        let parts: Vec<Arc<storage_cql::Partition>> = (0..shards).map(|k| Arc::new(cluster.partition(k))).collect();
        return Ok(Backend {
            stores: parts.iter().map(|p| p.clone() as Arc<dyn storage::Store>).collect(),
            logs: (0..shards).map(|_| None).collect(),
            cql: parts.into_iter().map(Some).collect(),
            cluster: Some(cluster),
        });
    }
    let mut stores: Vec<Arc<dyn storage::Store>> = Vec::with_capacity(shards);
    let mut logs = Vec::with_capacity(shards);
    for k in 0..shards {
        let dir = storage::layout::partition_dir(&cfg.data_dir, k);
        let store =
            storage::embedded::EmbeddedStore::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        // Always replay what a previous run logged, even with the log now off.
        let log_path = dir.join(storage::log::FILE_NAME);
        let recovered =
            storage::log::recover(&log_path, &store).with_context(|| format!("replaying {}", log_path.display()))?;
        if recovered.records > 0 {
            // A drain empties the log: records here mean the last run did not stop cleanly.
            tracing::warn!(
                shard = k,
                records = recovered.records,
                writes = recovered.writes,
                "the last run did not stop cleanly: replayed its commit log (every acknowledged message is kept)"
            );
        }
        logs.push((cfg.commit_log_mib > 0).then_some(crate::service::LogSetup {
            dir,
            generation: recovered.generation,
            capacity: cfg.commit_log_mib << 20,
        }));
        stores.push(Arc::new(store));
    }
    Ok(Backend { cluster: None, stores, logs, cql: (0..shards).map(|_| None).collect() })
}

/// Runs the gateway until the process is stopped.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    // First, before any thread exists (fjall starts its own): only the drain thread
    // may receive SIGTERM/SIGINT; every thread started later inherits the mask.
    crate::reactor::block_termination_signals()?;
    if !cfg.huge_pages {
        // Before the storage and shard threads allocate: with transparent huge pages the
        // allocator's first touches fault in 2 MiB pages, a fixed ~9 MB of RSS that
        // dwarfs a thousand idle connections (docs/BENCHMARKS.md).
        crate::reactor::disable_huge_pages()?;
    }
    let shards = cfg.shard_count();
    anyhow::ensure!((1..=128).contains(&shards), "shards must be 1..=128 (got {shards})");
    cfg.validate()?;
    // Before opening storage: a second gateway on this port must not start at all.
    check_port_free(cfg.listen)?;
    let verifier = Arc::new(cfg.verifier()?);
    let backend = open_storage(&cfg, shards)?;
    let (bound, fds) = listeners(cfg.listen, shards)?;
    let drain = Arc::new(Drain::new(shards));
    let stats: Arc<Vec<crate::admin::ShardStats>> =
        Arc::new((0..shards).map(|_| crate::admin::ShardStats::new(shards)).collect());
    let host_conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let revoked = crate::revocation::load(&cfg.data_dir)?;
    let (revoke_txs, revoke_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| crossbeam_channel::unbounded()).unzip();
    let desk = crate::admin::RevokeDesk { data_dir: cfg.data_dir.clone(), list: revoked.clone(), shards: revoke_txs };
    let extra = backend.cluster.as_ref().map(|c| c.metrics_handle());
    let opts = crate::admin::Options { metrics: extra, ws_port: bound.port(), token: cfg.admin_token.clone() };
    let admin = crate::admin::start(cfg.admin_listen, stats.clone(), drain.clone(), desk, opts)?;
    let tls_files = cfg.tls_files()?;
    let tls = tls_files.as_ref().map(|(c, k)| crate::tls::server_config(c, k)).transpose()?;
    let (tls_txs, tls_rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| crossbeam_channel::unbounded()).unzip();
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let cfg = Arc::new(cfg);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rt = shard::runtime::RuntimeConfig {
        shards,
        pin: cfg.pin,
        io_memory: cfg.io_memory,
        mesh_capacity: 1024,
        spin_before_park: std::time::Duration::from_micros(cfg.spin_before_park_us),
    };
    let data_dir = cfg.data_dir.clone();
    let Backend { cluster, stores, logs, cql } = backend;
    let setups: Vec<ShardSetup> = fds
        .into_iter()
        .zip(stores)
        .zip(logs)
        .zip(cql)
        .zip(revoke_rxs)
        .zip(tls_rxs)
        .map(|(((((listener, store), log), cql), revoke_rx), tls_rx)| ShardSetup {
            cql,
            tls: tls.clone(),
            tls_rx,
            revoked: revoked.clone(),
            revoke_rx,
            cfg: cfg.clone(),
            listener,
            store,
            log,
            verifier: verifier.clone(),
            ready: ready_tx.clone(),
            drain: drain.clone(),
            stats: stats.clone(),
            host_conns: host_conns.clone(),
        })
        .collect();
    drop(ready_tx);
    let announcer = std::thread::spawn(move || {
        let started = ready_rx.iter().take(shards).count();
        if started == shards {
            // Written, not printed: a closed stdout (a pipe whose reader left) must not
            // panic a thread of the server.
            let mut out = std::io::stdout();
            let _ = writeln!(
                out,
                "switchboard listening on {scheme}://{bound} ({shards} shards, data in {}, admin http://{admin})",
                data_dir.display()
            );
            let _ = out.flush();
        }
    });
    let drain_secs = cfg.drain_secs;
    std::thread::spawn(move || drain_on_signal(&drain, drain_secs, tls_files, tls_txs));
    shard::runtime::run(&rt, setups, service::run)?;
    let _ = announcer.join();
    // The driver stops once every shard (and its partition) has.
    drop(cluster);
    Ok(())
}

/// Waits for SIGTERM/SIGINT, asks the shards to drain, and exits 0 once every shard has
/// closed its connections and finished its storage commits (or after the drain window
/// plus a grace period, with what is durable already durable).
fn drain_on_signal(
    drain: &Drain,
    drain_secs: u32,
    tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    tls_txs: Vec<crossbeam_channel::Sender<Arc<rustls::ServerConfig>>>,
) {
    let sig = loop {
        let sig = crate::reactor::wait_for_termination();
        if sig != libc::SIGHUP {
            break sig;
        }
        // SIGHUP: reload the certificate; new connections use it.
        match &tls_files {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some((c, k)) => match crate::tls::server_config(c, k) {
                Ok(cfg) => {
                    tls_txs.iter().for_each(|tx| drop(tx.send(cfg.clone())));
                    tracing::info!(cert = %c.display(), "SIGHUP: TLS certificate reloaded");
                }
                Err(e) => tracing::error!("SIGHUP: keeping the old certificate: {e:#}"),
            },
        }
    };
    let cause = if crate::admin::DRAIN_REQUESTED.load(std::sync::atomic::Ordering::Relaxed) {
        "POST /drain"
    } else if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    tracing::info!(cause, drain_secs, "draining: no new connections; closing existing ones with 1012");
    drain.requested.store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(drain_secs as u64 + 15);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let idle = drain.idle.iter().all(|i| i.load(std::sync::atomic::Ordering::Relaxed));
        if idle || std::time::Instant::now() > deadline {
            if !idle {
                tracing::warn!("drain window over with work left; exiting (acknowledged messages are durable)");
            }
            // Exit 0 even when stdout is gone (see the listening line).
            let mut out = std::io::stdout();
            let _ = writeln!(out, "switchboard drained");
            let _ = out.flush();
            std::process::exit(0);
        }
    }
}
