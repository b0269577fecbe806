//! One shard of the gateway, the edge around its [`Core`]: the listener, sockets,
//! connection slab, TLS sessions, WebSocket framing, ring and mesh. Bytes become events
//! for the core; the core's effects become frames on sockets, routes on the mesh, reads
//! on the blocking pool and commits on the commit log. No business rule lives here.
//!
//! Ownership: everything in [`Shard`] belongs to one executor thread and is reached
//! through one `Rc<RefCell<Shard>>`; tasks borrow it only between awaits. Other shards
//! are reached only with [`Envelope`]s over the mesh.
//!
//! A turn: handle a batch of events (ring completions, a mesh batch, a storage
//! completion), then [`Shard::finish_turn`] carries out the core's effects, starts the
//! next group commit, writes each dirty connection once, submits the ring and flushes
//! the mesh.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard::core::limits::TokenBucket;
use shard::core::{Core, Effect, Refused};
use shard::ids::{home_of_user, now_ms, ConnId, ShardId};
use shard::mesh::Mesh;
use shard::runtime::ShardCtx;
use slab::Slab;
use storage::Store;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use wire::error::{close, ErrorCode};
use wire::frame::{ErrorFrame, ServerFrame};
use wire::Encoding;

use crate::admin::{Drain, ShardStats};
use crate::auth::Verifier;
use crate::config::Config;
use crate::conn::{same_gen, token, untoken, Conn, Op, Phase};
use crate::reactor::{self, Completion, Recv, Ring};
use crate::revocation::{Revocations, Revoke};
use crate::route::{Envelope, Handoff};
use crate::upgrade::{self, Refusal};
use crate::ws;

/// What a shard needs to start.
pub struct ShardSetup {
    /// Immutable configuration.
    pub cfg: Arc<Config>,
    /// This shard's listener (SO_REUSEPORT, shared port).
    pub listener: OwnedFd,
    /// This shard's storage partition.
    pub store: Arc<dyn Store>,
    /// The same partition in a CQL cluster: reads and commits are submitted to it and
    /// awaited (no blocking pool).
    pub cql: Option<Arc<storage_cql::Partition>>,
    /// This shard's commit log (`None`: commit to the store directly).
    pub log: Option<LogSetup>,
    /// Token verification (shared, read-only).
    pub verifier: Arc<Verifier>,
    /// Told once the shard accepts connections.
    pub ready: std::sync::mpsc::Sender<ShardId>,
    /// Set by the signal thread to start a graceful drain; shards report back here.
    pub drain: Arc<Drain>,
    /// Published figures, one entry per shard.
    pub stats: Arc<Vec<ShardStats>>,
    /// Upgraded connections on the host (all shards), against `max_connections`.
    pub host_conns: Arc<std::sync::atomic::AtomicUsize>,
    /// Revoked devices at start.
    pub revoked: Revocations,
    /// New revocations from the admin thread (acknowledged once applied).
    pub revoke_rx: crossbeam_channel::Receiver<(Revoke, crossbeam_channel::Sender<()>)>,
    /// TLS configuration (`None`: plain WS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Reloaded TLS configurations (SIGHUP).
    pub tls_rx: crossbeam_channel::Receiver<Arc<rustls::ServerConfig>>,
}

/// Where a shard's commit log is and what `storage::log::recover` left in it.
pub struct LogSetup {
    /// The partition directory holding `commit.log`.
    pub dir: std::path::PathBuf,
    /// The (empty) generation to append to.
    pub generation: u64,
    /// Bytes of disk the log may use.
    pub capacity: u64,
}

/// What a socket's read poll waits for: data, and the peer's shutdown (so a poll that
/// fires with both is known to need reading to the end).
const READ_EVENTS: u32 = (libc::POLLIN | libc::POLLRDHUP) as u32;
/// Housekeeping period: presence windows, sweeps and drain steps run on this beat.
const TICK: Duration = Duration::from_millis(250);

/// A shard's state.
pub struct Shard {
    /// This shard.
    pub(crate) me: ShardId,
    /// Number of shards. Invariant: equals `mesh.shards()`.
    pub(crate) shards: usize,
    /// Weak self-reference for tasks spawned from handlers.
    pub(crate) this: Weak<RefCell<Shard>>,
    /// Configuration.
    pub(crate) cfg: Arc<Config>,
    /// The shard's tables and rules.
    pub(crate) core: Core,
    /// Token verification (shared, read-only).
    verifier: Arc<Verifier>,
    /// The socket ring.
    ring: Ring,
    /// The listener (`None` once draining).
    listener: Option<OwnedFd>,
    /// Connections on this shard.
    pub(crate) conns: Slab<Conn>,
    /// Generation of the next connection.
    next_gen: u32,
    /// Handshake admission (upgrades per second on this shard).
    handshakes: TokenBucket,
    /// Coarse clock: seconds since the shard started (sweeps, timeouts).
    pub(crate) now: u32,
    /// When the shard started.
    started: Instant,
    /// Ticks since start.
    ticks: u64,
    /// Drain requests and reports.
    drain: Arc<Drain>,
    /// Connections to close per tick while draining (`None`: not draining).
    draining: Option<usize>,
    /// Published figures (this shard writes only `stats[me]`).
    stats: Arc<Vec<ShardStats>>,
    /// Connections open on the whole host (shared by the shards: `max_connections` is
    /// per host). Read and updated with relaxed atomics on accept, adoption and close.
    host_conns: Arc<std::sync::atomic::AtomicUsize>,
    /// Revoked devices (this shard's copy).
    revoked: Revocations,
    /// New revocations, drained on the beat with `try_recv` (never blocks).
    revoke_rx: crossbeam_channel::Receiver<(Revoke, crossbeam_channel::Sender<()>)>,
    /// TLS configuration for new connections (`None`: plain WS).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Reloaded TLS configurations, drained on the beat.
    tls_rx: crossbeam_channel::Receiver<Arc<rustls::ServerConfig>>,
    /// Decrypted bytes of the TLS connection being read (taken out while in use).
    plain: Vec<u8>,
    /// Ciphertext of the TLS connection being flushed (taken out while in use).
    wire: Vec<u8>,
    /// This shard's storage partition.
    pub(crate) store: Arc<dyn Store>,
    /// The partition in a CQL cluster (`None`: embedded, reached on the blocking pool).
    cql: Option<Arc<storage_cql::Partition>>,
    /// This shard's commit log, and the logged writes on their way to `store`.
    pub(crate) log: Option<crate::commitlog::CommitLog>,
    /// A commit is being made durable (the core's batch, or one held for a checkpoint).
    pub(crate) committing: bool,
    /// When the last commit started (the commit window counts from here).
    last_commit: Option<Instant>,
    /// A timer will start the next commit when the window has passed.
    commit_timer: bool,
    /// Handoffs to this shard itself, adopted before the turn ends.
    inbox: VecDeque<Box<Handoff>>,
    /// Connections with bytes to send this turn.
    pub(crate) dirty: Vec<ConnId>,
    /// The core's effects being carried out (its buffer is reused turn after turn).
    effects: Vec<Effect>,
    /// Open connections not read while the mesh is backlogged (each listed once).
    paused: Vec<ConnId>,
    /// The mesh.
    mesh: Rc<Mesh<Envelope>>,
    /// Read buffer shared by all connections (taken out while in use).
    scratch: Vec<u8>,
    /// permessage-deflate compressor and decompressor, reset per message (no
    /// connection keeps compression state).
    pub(crate) deflate: crate::deflate::Codec,
    /// The last inflated message (taken out while in use).
    inflated: Vec<u8>,
    /// Connections opened, adopted or closed since start (drives memory release).
    churn: u64,
    /// `churn` plus the core's table sizes when memory was last released.
    churn_seen: u64,
    /// Failed accepts since start (EMFILE and friends).
    accept_failures: u64,
    /// Bytes read from sockets since start (published on the beat).
    bytes_in: u64,
    /// Bytes written to sockets since start (published on the beat).
    bytes_out: u64,
    /// When an accept failure was last logged (at most one line a second).
    accept_warned: std::time::Instant,
}

/// Pause before accepting again after an accept error.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs one shard until the process exits.
pub async fn run(ctx: ShardCtx<Envelope>, setup: ShardSetup) {
    let ring = match Ring::new(setup.cfg.ring_entries) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(shard = ctx.id.0, "cannot create the socket ring: {e}");
            std::process::exit(1);
        }
    };
    let waker = ring.waker();
    let me = ctx.id;
    let log = match &setup.log {
        None => None,
        Some(l) => match crate::commitlog::CommitLog::open(&l.dir, l.generation, l.capacity).await {
            Ok(log) => Some(log),
            Err(e) => {
                tracing::error!(shard = ctx.id.0, "cannot open the commit log in {}: {e}", l.dir.display());
                std::process::exit(1);
            }
        },
    };
    let shard = Rc::new_cyclic(|this: &Weak<RefCell<Shard>>| {
        let w = this.clone();
        let w2 = this.clone();
        let on_batch = move |_from, batch: Vec<Envelope>| {
            if let Some(s) = w.upgrade() {
                let mut s = s.borrow_mut();
                for r in batch {
                    s.on_envelope(r);
                }
                s.finish_turn();
            }
        };
        let on_space = move || {
            if let Some(s) = w2.upgrade() {
                let mut s = s.borrow_mut();
                s.resume_reads();
                s.finish_turn();
            }
        };
        let mesh = Mesh::connect(ctx.mesh, setup.cfg.mesh_backlog, on_batch, on_space);
        let scratch_len = setup.cfg.max_frame + 16 * 1024;
        RefCell::new(Shard {
            me,
            shards: ctx.shards,
            this: this.clone(),
            core: Core::new(me, ctx.shards, setup.cfg.core()),
            verifier: setup.verifier,
            ring,
            listener: Some(setup.listener),
            conns: Slab::new(),
            next_gen: 1,
            handshakes: TokenBucket::full(setup.cfg.handshake_burst, now_ms()),
            now: 0,
            started: Instant::now(),
            ticks: 0,
            drain: setup.drain,
            draining: None,
            stats: setup.stats,
            host_conns: setup.host_conns,
            revoked: setup.revoked,
            revoke_rx: setup.revoke_rx,
            tls: setup.tls,
            tls_rx: setup.tls_rx,
            plain: Vec::with_capacity(32 * 1024),
            wire: Vec::with_capacity(WIRE_KEEP),
            store: setup.store,
            cql: setup.cql,
            log,
            committing: false,
            last_commit: None,
            commit_timer: false,
            inbox: VecDeque::new(),
            dirty: Vec::new(),
            effects: Vec::new(),
            paused: Vec::new(),
            mesh,
            scratch: vec![0; scratch_len],
            deflate: crate::deflate::Codec::default(),
            inflated: Vec::new(),
            churn: 0,
            churn_seen: 0,
            accept_failures: 0,
            bytes_in: 0,
            bytes_out: 0,
            accept_warned: std::time::Instant::now() - std::time::Duration::from_secs(2),
            cfg: setup.cfg,
        })
    });
    {
        let mut s = shard.borrow_mut();
        if let Some(l) = s.listener.as_ref().map(|l| l.as_raw_fd()) {
            s.ring.accept(l, token(Op::Accept, ConnId { slot: 0, gen: 0 }));
        }
        s.finish_turn();
    }
    glommio::spawn_local(housekeeping(Rc::downgrade(&shard))).detach();
    let _ = setup.ready.send(me);
    let mut done = Vec::with_capacity(256);
    loop {
        reactor::wait(&waker).await;
        let mut s = shard.borrow_mut();
        s.ring.completions(&mut done);
        for c in done.drain(..) {
            s.on_completion(c);
        }
        s.finish_turn();
    }
}

/// The shard's beat: heartbeats and timeouts, presence windows, typing expiry, drain,
/// and returning memory freed by connection churn.
async fn housekeeping(shard: Weak<RefCell<Shard>>) {
    loop {
        glommio::timer::sleep(TICK).await;
        let Some(s) = shard.upgrade() else { return };
        let mut s = s.borrow_mut();
        s.tick();
        s.finish_turn();
    }
}

impl Shard {
    /// This shard's published figures.
    pub(crate) fn stats(&self) -> &ShardStats {
        &self.stats[self.me.index()]
    }

    fn tick(&mut self) {
        self.ticks += 1;
        self.stats().connections.store(self.conns.len() as u64, Ordering::Relaxed);
        self.now = self.started.elapsed().as_secs() as u32;
        let per_sec = (1000 / TICK.as_millis() as u64).max(1);
        let window_ticks = (self.cfg.presence_window_ms as u64 / TICK.as_millis() as u64).max(1);
        self.core.tick(now_ms(), self.ticks.is_multiple_of(window_ticks));
        self.resume_reads();
        self.publish_counts();
        if self.ticks.is_multiple_of(per_sec) {
            self.sweep();
            // Connections or core tables came and went: give freed pages back.
            let c = self.core.counts();
            let churn = self.churn + (c.users + c.convs + c.reads) as u64;
            if churn != self.churn_seen {
                self.churn_seen = churn;
                reactor::release_freed_memory();
            }
        }
        while let Ok((r, applied)) = self.revoke_rx.try_recv() {
            self.apply_revocation(r);
            let _ = applied.send(());
        }
        while let Ok(cfg) = self.tls_rx.try_recv() {
            tracing::info!(shard = self.me.0, "TLS certificate reloaded");
            self.tls = Some(cfg);
        }
        if self.draining.is_none() && self.drain.requested.load(Ordering::Relaxed) {
            self.start_drain();
        }
        if let Some(per_tick) = self.draining {
            self.drain_step(per_tick);
        }
    }

    /// Table sizes and mesh backlogs for the metrics endpoint.
    fn publish_counts(&self) {
        let (c, st) = (self.core.counts(), self.stats());
        for (gauge, v) in [
            (&st.convs, c.convs),
            (&st.conv_bytes, c.conv_bytes),
            (&st.users, c.users),
            (&st.negative, c.negative),
            (&st.reads, c.reads),
            (&st.queued, c.queued),
            (&st.list_parts, c.list_parts),
        ] {
            gauge.store(v as u64, Ordering::Relaxed);
        }
        st.convs_evicted.store(c.evicted, Ordering::Relaxed);
        st.bytes_in.store(self.bytes_in, Ordering::Relaxed);
        st.bytes_out.store(self.bytes_out, Ordering::Relaxed);
        for (k, b) in st.mesh_backlog.iter().enumerate() {
            b.store(self.mesh.backlog(ShardId(k as u16)) as u64, Ordering::Relaxed);
        }
    }

    /// One pass over every connection: ping the quiet, close the silent, the slow
    /// handshakes and the closings that never finished. No timer per connection: the
    /// cost is one slab walk a second (two integers per connection).
    fn sweep(&mut self) {
        let (now, ping, idle, hs) =
            (self.now, self.cfg.ping_interval_secs, self.cfg.idle_timeout_secs, self.cfg.handshake_timeout_secs);
        let grace = self.cfg.closing_grace_secs;
        let mut to_close = Vec::new();
        let mut to_idle = Vec::new();
        let mut to_ping = Vec::new();
        for (slot, c) in self.conns.iter_mut() {
            let id = ConnId { slot: slot as u32, gen: c.gen };
            let quiet = now.saturating_sub(c.last_seen);
            // The clock counts whole seconds: `>` makes every timeout at least its
            // configured length (and at most one second and a beat more), never early.
            match c.phase {
                Phase::Handshake if quiet > hs => to_close.push(id),
                Phase::Closing if quiet > grace => to_close.push(id),
                Phase::Open if quiet > idle => to_idle.push(id),
                Phase::Open if quiet >= ping && now.saturating_sub(c.pinged_at) >= ping => {
                    c.pinged_at = now;
                    to_ping.push(id);
                }
                _ => {}
            }
        }
        for id in to_close {
            if self.conn_mut(id).is_some_and(|c| c.phase != Phase::Closing) {
                ShardStats::bump(&self.stats().timeouts);
            }
            self.close(id);
        }
        // A silent peer is told why (a close frame it may never read: the closing grace
        // then ends the socket); its presence goes offline now.
        for id in to_idle {
            ShardStats::bump(&self.stats().timeouts);
            self.detach(id);
            self.fail(id, close::IDLE, "idle timeout: no frame or pong within idle_timeout_secs");
        }
        for id in to_ping {
            if let Some(c) = self.conn_mut(id) {
                ws::write_frame(&mut c.out, OpCode::Control(Control::Ping), b"");
                self.mark_dirty(id);
            }
        }
    }

    /// Records a revocation and closes the device's connections homed here.
    fn apply_revocation(&mut self, r: Revoke) {
        self.revoked.insert(&r);
        self.core.revoke(&r.user, &r.device, now_ms());
    }

    /// Start closing connections over `drain_secs`. The listener stays open until the
    /// process exits, so a client that still reaches this host is told `503` with
    /// `Retry-After` (not refused by the kernel, not admitted and closed with 1012).
    fn start_drain(&mut self) {
        let ticks = (self.cfg.drain_secs as usize * 1000 / TICK.as_millis() as usize).max(1);
        self.draining = Some(self.conns.len().div_ceil(ticks).max(1));
        tracing::info!(shard = self.me.0, connections = self.conns.len(), "draining");
    }

    /// A drain was asked for: on this shard's next tick, or already started.
    fn drain_asked(&self) -> bool {
        self.draining.is_some() || self.drain.requested.load(Ordering::Relaxed)
    }

    fn drain_step(&mut self, per_tick: usize) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase == Phase::Open)
            .take(per_tick)
            .map(|(slot, c)| ConnId { slot: slot as u32, gen: c.gen })
            .collect();
        for id in ids {
            match self.conn_mut(id).map(|c| c.phase) {
                Some(Phase::Open) => self.fail(id, close::RESTART, "server restarting; reconnect with backoff"),
                _ => self.close(id),
            }
        }
        // Upgrades refused during the drain (never counted as connections) do not hold
        // it up: the exit closes them with the listener.
        let mut idle = self.conns.iter().all(|(_, c)| !c.counted && c.phase != Phase::Open)
            && self.inbox.is_empty()
            && self.core.is_idle()
            && !self.committing
            && self.log.as_ref().is_none_or(|l| l.is_idle());
        // A clean stop leaves an empty commit log: the next start has nothing to replay
        // (a replay then means the process did not stop cleanly).
        if idle && self.log.as_ref().is_some_and(|l| !l.is_empty()) {
            self.empty_log_for_exit();
            idle = false;
        }
        self.drain.idle[self.me.index()].store(idle, Ordering::Relaxed);
    }

    /// Ends a turn: the core's effects, local handoffs, next group commit, writes, ring
    /// submit, mesh flush.
    pub(crate) fn finish_turn(&mut self) {
        loop {
            self.apply_effects();
            while let Some(h) = self.inbox.pop_front() {
                self.adopt(*h);
            }
            self.kick_commit();
            self.flush_writes();
            if self.inbox.is_empty() && !self.core.has_effects() {
                break;
            }
        }
        self.ring.submit();
        self.mesh.flush();
    }

    /// Awaits `fut` in a task of its own, then runs `done` on this shard and ends the
    /// turn. The one way a shard continues after an await: glommio polls a new task
    /// inline, inside our caller's borrow of the shard, so the task yields first and the
    /// borrow below can never overlap it.
    pub(crate) fn after<R: 'static>(
        &self,
        fut: impl std::future::Future<Output = R> + 'static,
        done: impl FnOnce(&mut Shard, R) + 'static,
    ) {
        let this = self.this.clone();
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            let r = fut.await;
            if let Some(s) = this.upgrade() {
                let mut s = s.borrow_mut();
                done(&mut s, r);
                s.finish_turn();
            }
        })
        .detach();
    }

    /// Runs `job` on the executor's blocking pool, then `done` on this shard.
    pub(crate) fn blocking<R: std::marker::Send + 'static>(
        &self,
        job: impl FnOnce() -> R + std::marker::Send + 'static,
        done: impl FnOnce(&mut Shard, R) + 'static,
    ) {
        self.after(async move { glommio::executor().spawn_blocking(job).await }, done);
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen)
    }

    fn on_envelope(&mut self, e: Envelope) {
        match e {
            Envelope::Handoff(h) => self.adopt(*h),
            Envelope::Core(r) => self.core.route(r, now_ms()),
        }
    }

    // ---- ring events ----

    fn on_completion(&mut self, c: Completion) {
        let Some((op, id)) = untoken(c.token) else { return };
        if op == Op::Accept {
            if c.result >= 0 {
                self.on_accept(reactor::accepted(c.result));
            } else {
                self.accept_failures += 1;
                let now = std::time::Instant::now();
                if now.duration_since(self.accept_warned) > std::time::Duration::from_secs(1) {
                    let e = std::io::Error::from_raw_os_error(-c.result);
                    tracing::warn!(shard = self.me.0, failures = self.accept_failures, "accept failed: {e}");
                    self.accept_warned = now;
                }
            }
            if !c.more {
                self.rearm_accept(c.result < 0);
            }
            return;
        }
        // Ignore completions for connections that are gone or whose slot was reused.
        let Some(conn) = self.conns.get_mut(id.slot as usize) else { return };
        if !same_gen(conn.gen, id.gen) {
            return;
        }
        let id = ConnId { slot: id.slot, gen: conn.gen };
        match op {
            Op::Read => {
                if !c.more {
                    conn.read_armed = false;
                }
                // A poll reports the socket's state when it fired: unless the peer has
                // shut down (or an error is pending), one short read empties it, and
                // bytes arriving later fire the poll again.
                let ended = c.result < 0 || c.result & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32 != 0;
                if conn.phase == Phase::Open && self.mesh.backlogged() {
                    // Back-pressure: a peer shard is behind; new work waits in the
                    // socket (and then in the client) rather than in memory here.
                    if !conn.paused {
                        conn.paused = true;
                        self.paused.push(id);
                    }
                } else {
                    self.on_readable(id, ended);
                }
                if let Some(conn) = self.conn_mut(id) {
                    if !conn.read_armed && conn.phase != Phase::Closing {
                        conn.read_armed = true;
                        let (fd, multi) = (conn.fd.as_raw_fd(), conn.phase == Phase::Open);
                        self.ring.poll(fd, READ_EVENTS, multi, token(Op::Read, id));
                    }
                }
            }
            Op::Write => {
                conn.write_armed = false;
                self.flush_conn(id);
            }
            Op::Accept => {}
        }
    }

    /// Re-arms the multishot accept. After a failure (EMFILE when out of descriptors,
    /// ENOBUFS, ...) wait a little first: re-arming at once would spin on the same error
    /// while the queued connections wait in the kernel backlog.
    fn rearm_accept(&mut self, after_failure: bool) {
        let t = token(Op::Accept, ConnId { slot: 0, gen: 0 });
        if !after_failure {
            if let Some(l) = self.listener.as_ref().map(|l| l.as_raw_fd()) {
                self.ring.accept(l, t);
            }
            return;
        }
        self.after(glommio::timer::sleep(ACCEPT_BACKOFF), move |s, ()| {
            if let Some(l) = s.listener.as_ref().map(|l| l.as_raw_fd()) {
                s.ring.accept(l, t);
            }
        });
    }

    fn on_accept(&mut self, fd: OwnedFd) {
        self.churn += 1;
        ShardStats::bump(&self.stats().accepted);
        reactor::set_nodelay(fd.as_fd());
        let raw = fd.as_raw_fd();
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let slot = self.conns.insert(Conn::accepted(fd, gen, self.now));
        let id = ConnId { slot: slot as u32, gen };
        self.conns[slot].read_armed = true;
        if let Some(cfg) = &self.tls {
            match crate::tls::Session::new(cfg.clone()) {
                Ok(c) => self.conns[slot].tls = Some(Box::new(c)),
                Err(e) => {
                    tracing::warn!("cannot start a TLS session: {e}");
                    self.conns[slot].read_armed = false;
                    return self.close(id);
                }
            }
        }
        // One-shot while handshaking: after the upgrade nothing is armed, so the socket
        // can move to another shard.
        self.ring.poll(raw, READ_EVENTS, false, token(Op::Read, id));
    }

    /// Reads the connections paused by back-pressure, while the mesh has room.
    fn resume_reads(&mut self) {
        while !self.mesh.backlogged() {
            let Some(id) = self.paused.pop() else { return };
            if let Some(c) = self.conn_mut(id) {
                c.paused = false;
                // Read to the end: the poll that fired may have reported a shutdown.
                self.on_readable(id, true);
            }
        }
    }

    /// Reads what the socket holds. `ended`: the peer may have shut down, so read until
    /// the socket says so (a short read alone does not show the end of the stream).
    fn on_readable(&mut self, id: ConnId, ended: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(conn) = self.conn_mut(id) {
            let tls = conn.tls.is_some();
            match reactor::recv(conn.fd.as_fd(), &mut scratch) {
                Recv::Data(n) => {
                    self.bytes_in += n as u64;
                    if tls {
                        self.on_tls_bytes(id, &mut scratch[..n]);
                    } else {
                        self.on_bytes(id, &mut scratch[..n]);
                    }
                    if n < scratch.len() && !ended {
                        break;
                    }
                }
                Recv::WouldBlock => break,
                Recv::Closed => {
                    self.close(id);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Feeds TLS records to the connection's session and its plaintext to `on_bytes`.
    fn on_tls_bytes(&mut self, id: ConnId, data: &mut [u8]) {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let Some(session) = self.conn_mut(id).and_then(|c| c.tls.as_mut()) else { return self.plain = plain };
        let read = session.read(data, &mut plain);
        if !session.unsent.is_empty() {
            self.mark_dirty(id);
        }
        match read {
            Ok(input) => {
                if !plain.is_empty() {
                    self.on_bytes(id, &mut plain);
                }
                if input == crate::tls::Input::PeerClosed {
                    // Nothing more will come: send what is queued (and our
                    // close_notify), then close.
                    if let Some(c) = self.conn_mut(id) {
                        c.close_after_flush = true;
                    }
                    self.mark_dirty(id);
                }
            }
            Err(e) => {
                tracing::debug!("TLS error: {e}");
                ShardStats::bump(&self.stats().tls_failures);
                // Send the alert rustls queued (nothing else can be encrypted now),
                // then close: the flush closes once it is out (or at once if it fails).
                if let Some(c) = self.conn_mut(id) {
                    c.out = Vec::new();
                    c.close_after_flush = true;
                    c.phase = Phase::Closing;
                }
                self.flush_conn(id);
            }
        }
        self.plain = plain;
    }

    fn on_bytes(&mut self, id: ConnId, data: &mut [u8]) {
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else { return };
        match conn.phase {
            Phase::Closing => {}
            Phase::Handshake => {
                conn.inbuf.extend_from_slice(data);
                self.try_handshake(id);
            }
            Phase::Open if conn.inbuf.is_empty() => {
                conn.last_seen = now;
                let used = self.on_frames(id, data);
                if used < data.len() && self.partial_frame_ok(id, &data[used..], 0) {
                    if let Some(conn) = self.conn_mut(id) {
                        conn.inbuf = data[used..].to_vec();
                    }
                }
            }
            Phase::Open => {
                conn.last_seen = now;
                let mut buf = std::mem::take(&mut conn.inbuf);
                let seen = buf.len();
                buf.extend_from_slice(data);
                let used = self.on_frames(id, &mut buf);
                // Bytes of the frame still incomplete that an earlier read checked.
                let seen = if used == 0 { seen } else { 0 };
                if used < buf.len() && self.partial_frame_ok(id, &buf[used..], seen) {
                    if let Some(conn) = self.conn_mut(id) {
                        buf.drain(..used);
                        conn.inbuf = buf;
                    }
                }
            }
        }
    }

    // ---- the upgrade ----

    fn try_handshake(&mut self, id: ConnId) {
        let limits = upgrade::Limits {
            max: self.cfg.max_handshake,
            max_url: self.cfg.max_url,
            deflate: self.cfg.permessage_deflate,
        };
        let Some(conn) = self.conn_mut(id) else { return };
        let (req, len) = match upgrade::parse(&conn.inbuf, limits) {
            upgrade::Parsed::Partial => return,
            upgrade::Parsed::Refuse(r) => return self.refuse(id, &r),
            upgrade::Parsed::Done { req, len } => (req, len),
        };
        // Admission before any expensive work (token verification, handoff).
        let retry = self.cfg.retry_after_secs;
        if self.drain_asked() {
            return self.refuse_upgrade(
                id,
                &req,
                Refusal::busy("draining", "server restarting; retry another host or later", retry),
            );
        }
        let (rate, burst) = (self.cfg.handshake_rate, self.cfg.handshake_burst);
        if let Err(wait_ms) = self.handshakes.take(rate, burst, now_ms()) {
            // The configured back-off, or longer when the bucket needs longer to refill.
            let secs = wait_ms.div_ceil(1000).max(retry);
            let r = Refusal::busy("handshake_rate", "too many new connections; retry later", secs);
            return self.refuse_upgrade(id, &req, r);
        }
        if !upgrade::origin_allowed(&self.cfg.allowed_origins, req.origin.as_deref()) {
            let origin = req.origin.as_deref().unwrap_or_default();
            return self.refuse_upgrade(
                id,
                &req,
                Refusal::new(403, "forbidden_origin", format!("origin {origin} is not allowed")),
            );
        }
        let claims = match req.token.as_deref().map(|t| self.verifier.verify(t)) {
            None => Err(crate::auth::AuthError::Missing),
            Some(r) => r,
        };
        let claims = match claims {
            Ok(c) => c,
            Err(e) => {
                return self.refuse_upgrade(id, &req, Refusal::new(401, "unauthorized", e.to_string()));
            }
        };
        let device = claims.device.or(req.device.clone()).unwrap_or_else(|| "default".to_owned());
        if let Err(e) = wire::frame::check::user_id("device", &device) {
            return self.refuse_upgrade(id, &req, Refusal::new(400, "bad_request", e.to_string()));
        }
        if self.revoked.is_revoked(&claims.sub, &device, claims.iat) {
            return self.refuse_upgrade(id, &req, Refusal::new(401, "unauthorized", "device revoked: sign in again"));
        }
        // The host-wide connection count: taken here, carried by the handoff, given
        // back when the adopted connection closes.
        let open = self.host_conns.fetch_add(1, Ordering::Relaxed);
        if open >= self.cfg.max_connections {
            self.host_conns.fetch_sub(1, Ordering::Relaxed);
            let r = Refusal::busy("connection_limit", "connection limit reached; retry later", retry);
            return self.refuse_upgrade(id, &req, r);
        }
        let conn = self.conns.remove(id.slot as usize);
        let mut pending_out = Vec::with_capacity(256);
        upgrade::accept(&req, &mut pending_out);
        let handoff = Box::new(Handoff {
            fd: conn.fd,
            device,
            encoding: req.encoding,
            deflate: req.deflate,
            pending_in: conn.inbuf[len..].to_vec(),
            pending_out,
            user: claims.sub,
            tls: conn.tls,
            close_refusals: req.close_refusals,
        });
        let home = home_of_user(&handoff.user, self.shards);
        if home == self.me {
            self.inbox.push_back(handoff);
        } else {
            self.mesh.push(home, Envelope::Handoff(handoff));
        }
    }

    /// Refuses a parsed upgrade: with its HTTP status, or, when the client asked for
    /// refusals it can see (`?refusals=close`: a browser's WebSocket API shows no HTTP
    /// status), by accepting the upgrade and closing at once with 4000 + the status
    /// (4429 for the handshake rate) and a JSON reason.
    fn refuse_upgrade(&mut self, id: ConnId, req: &upgrade::Request, r: Refusal) {
        if !req.close_refusals {
            return self.refuse(id, &r);
        }
        let Some(conn) = self.conn_mut(id) else { return };
        conn.inbuf = Vec::new();
        let mut upgraded = Vec::with_capacity(256);
        upgrade::accept(req, &mut upgraded);
        self.close_refused(id, &r, upgraded);
    }

    /// Refuses an upgraded connection (`upgraded`: its 101, not yet sent) with the
    /// close code and reason `r` becomes for `?refusals=close` clients.
    fn close_refused(&mut self, id: ConnId, r: &Refusal, upgraded: Vec<u8>) {
        ShardStats::bump(&self.stats().refused);
        self.stats().refusal(r.code);
        let (code, reason) = upgrade::refusal_close(r);
        tracing::debug!(shard = self.me.0, code, "upgrade refused with a close frame: {}", r.message);
        let Some(conn) = self.conn_mut(id) else { return };
        conn.out = upgraded;
        self.fail(id, code, &reason);
    }

    fn refuse(&mut self, id: ConnId, r: &Refusal) {
        ShardStats::bump(&self.stats().refused);
        self.stats().refusal(r.code);
        tracing::debug!(shard = self.me.0, status = r.status, code = r.code, "upgrade refused: {}", r.message);
        let now = self.now;
        let Some(conn) = self.conn_mut(id) else { return };
        conn.inbuf = Vec::new();
        upgrade::refuse(r, &mut conn.out);
        conn.last_seen = now;
        conn.phase = Phase::Closing;
        conn.close_after_flush = true;
        self.mark_dirty(id);
    }

    /// Takes in an upgraded socket whose user is homed here. The core replaces an older
    /// connection of the same device (4000) and refuses one past
    /// `max_devices_per_user` (503).
    fn adopt(&mut self, h: Handoff) {
        self.churn += 1;
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        if let Some(tls) = &h.tls {
            ShardStats::bump(&self.stats().tls_handshakes);
            if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                ShardStats::bump(&self.stats().tls_resumed);
            }
        }
        let mut conn = Conn::accepted(h.fd, gen, self.now);
        conn.tls = h.tls;
        conn.encoding = h.encoding;
        conn.deflate = h.deflate;
        conn.counted = true;
        let fd = conn.fd.as_raw_fd();
        let slot = self.conns.insert(conn);
        let id = ConnId { slot: slot as u32, gen };
        if let Err(Refused::DeviceLimit(max)) = self.core.conn_opened(id, &h.user, &h.device, now_ms()) {
            let r = Refusal::busy("device_limit", format!("at most {max} devices per user"), self.cfg.retry_after_secs);
            self.conns[slot].read_armed = true;
            self.ring.poll(fd, READ_EVENTS, false, token(Op::Read, id));
            if !h.close_refusals {
                return self.refuse(id, &r);
            }
            // Upgraded already (the 101 is in `pending_out`): close with the code.
            return self.close_refused(id, &r, h.pending_out);
        }
        let c = &mut self.conns[slot];
        c.phase = Phase::Open;
        c.out = h.pending_out;
        c.read_armed = true;
        self.ring.poll(fd, READ_EVENTS, true, token(Op::Read, id));
        // The 101 goes out this turn, with or without a `ready` behind it.
        self.mark_dirty(id);
        if !self.cfg.echo {
            let ready = ServerFrame::Ready {
                user: h.user,
                device: h.device,
                shard: self.me.0,
                max_frame: self.cfg.max_frame as u32,
                encoding: h.encoding.subprotocol().to_owned(),
            };
            self.send_frame(id, &ready);
        }
        if !h.pending_in.is_empty() {
            let mut early = h.pending_in;
            self.on_bytes(id, &mut early);
        }
    }

    // ---- WebSocket frames ----

    /// Keeps an incomplete frame only while the connection is open and, for text, while
    /// what arrived of it can still be UTF-8 (RFC 6455 8.1: fail fast, not after the
    /// whole frame). `seen` bytes of `rest` were checked by an earlier read.
    fn partial_frame_ok(&mut self, id: ConnId, rest: &[u8], seen: usize) -> bool {
        let Some(conn) = self.conn_mut(id) else { return false };
        if conn.phase != Phase::Open {
            return false;
        }
        let carry = match ws::partial_header(rest) {
            Some((OpCode::Data(Data::Text), false, ..)) => &[][..],
            Some((OpCode::Data(Data::Continue), ..)) if conn.frag_op == Some(Data::Text) && !conn.frag_deflated => {
                &conn.frag[ws::char_start(&conn.frag)..]
            }
            _ => return true,
        };
        if ws::partial_text_ok(rest, seen, carry) {
            return true;
        }
        self.fail(id, close::INVALID_PAYLOAD, "text is not UTF-8");
        false
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    fn on_frames(&mut self, id: ConnId, buf: &mut [u8]) -> usize {
        let max = self.cfg.max_frame;
        let mut pos = 0;
        loop {
            match self.conn_mut(id) {
                Some(c) if c.phase == Phase::Open => {}
                _ => return buf.len(),
            }
            let deflate = self.conn_mut(id).is_some_and(|c| c.deflate.on());
            match ws::next(&buf[pos..], max, deflate) {
                ws::Next::Incomplete => return pos,
                ws::Next::Violation(code, reason) => {
                    self.fail(id, code, reason);
                    return buf.len();
                }
                ws::Next::Frame(f) => {
                    let payload = pos + f.payload.start..pos + f.payload.end;
                    ws::unmask(&mut buf[payload.clone()], f.mask);
                    pos += f.len;
                    self.on_frame(id, f.fin, f.rsv1, f.opcode, &buf[payload]);
                }
            }
        }
    }

    fn on_frame(&mut self, id: ConnId, fin: bool, rsv1: bool, opcode: OpCode, payload: &[u8]) {
        let (max, now) = (self.cfg.max_frame, self.now);
        let (max_rate, max_fragments) = (self.cfg.max_frames_per_sec, self.cfg.max_fragments);
        let Some(conn) = self.conn_mut(id) else { return };
        if conn.frames_at != now {
            conn.frames_at = now;
            conn.frames = 0;
        }
        conn.frames = conn.frames.saturating_add(1);
        if u32::from(conn.frames) > max_rate {
            return self.fail(id, close::POLICY, "too many frames per second");
        }
        match opcode {
            OpCode::Control(Control::Ping) => {
                ws::write_frame(&mut conn.out, OpCode::Control(Control::Pong), payload);
                self.mark_dirty(id);
            }
            OpCode::Control(Control::Close) => {
                let code = match ws::close_code(payload) {
                    Ok(code) => code,
                    Err((code, reason)) => return self.fail(id, code, reason),
                };
                conn.phase = Phase::Closing;
                conn.close_after_flush = true;
                ws::write_close(&mut conn.out, code, "");
                self.stats[self.me.index()].close(code);
                self.mark_dirty(id);
            }
            OpCode::Data(Data::Continue) => {
                let Some(op) = conn.frag_op else {
                    return self.fail(id, close::PROTOCOL_ERROR, "continuation frame without a message");
                };
                if conn.frag.len() + payload.len() > max {
                    return self.fail(id, close::TOO_BIG, "message exceeds max_frame");
                }
                conn.fragments = conn.fragments.saturating_add(1);
                if u32::from(conn.fragments) > max_fragments {
                    return self.fail(id, close::POLICY, "too many fragments in one message");
                }
                let checked = ws::char_start(&conn.frag);
                conn.frag.extend_from_slice(payload);
                if op == Data::Text && !conn.frag_deflated && !ws::utf8_prefix_ok(&conn.frag[checked..]) {
                    return self.fail(id, close::INVALID_PAYLOAD, "text is not UTF-8");
                }
                if fin {
                    let whole = std::mem::take(&mut conn.frag);
                    let deflated = std::mem::replace(&mut conn.frag_deflated, false);
                    conn.frag_op = None;
                    self.on_whole(id, op, deflated, &whole);
                }
            }
            OpCode::Data(op) => {
                if conn.frag_op.is_some() {
                    return self.fail(id, close::PROTOCOL_ERROR, "new message inside a fragmented one");
                }
                if fin {
                    self.on_whole(id, op, rsv1, payload);
                } else {
                    if op == Data::Text && !rsv1 && !ws::utf8_prefix_ok(payload) {
                        return self.fail(id, close::INVALID_PAYLOAD, "text is not UTF-8");
                    }
                    conn.frag_op = Some(op);
                    conn.frag_deflated = rsv1;
                    conn.frag = payload.to_vec();
                    conn.fragments = 1;
                }
            }
            OpCode::Control(_) => {} // pong, and reserved opcodes (rejected by ws::next)
        }
    }

    /// A whole message as it came off the wire: inflated first if it is compressed.
    fn on_whole(&mut self, id: ConnId, op: Data, deflated: bool, payload: &[u8]) {
        if !deflated {
            return self.on_message(id, op, payload);
        }
        let mut inflated = std::mem::take(&mut self.inflated);
        match self.deflate.inflate(payload, self.cfg.max_frame, &mut inflated) {
            Ok(()) => self.on_message(id, op, &inflated),
            Err(crate::deflate::InflateError::TooBig) => {
                self.fail(id, close::TOO_BIG, "message inflates past max_frame")
            }
            Err(crate::deflate::InflateError::Corrupt) => {
                self.fail(id, close::INVALID_PAYLOAD, "compressed message is not valid deflate data")
            }
        }
        // Keep a buffer for the next message only while it is small.
        inflated.clear();
        if inflated.capacity() <= 64 * 1024 {
            self.inflated = inflated;
        }
    }

    fn on_message(&mut self, id: ConnId, op: Data, payload: &[u8]) {
        if op == Data::Text && std::str::from_utf8(payload).is_err() {
            return self.fail(id, close::INVALID_PAYLOAD, "text frame is not UTF-8");
        }
        #[cfg(feature = "echo")]
        if self.cfg.echo {
            return self.echo(id, op, payload);
        }
        let Some(conn) = self.conn_mut(id) else { return };
        let encoding = conn.encoding;
        match (op, encoding) {
            (Data::Binary, Encoding::Json) => {
                return self.fail(id, close::UNSUPPORTED_DATA, "binary frame on a switchboard.v1.json connection")
            }
            (Data::Text, Encoding::FlatBuffers) => {
                return self.fail(id, close::UNSUPPORTED_DATA, "text frame on a switchboard.v1.fb connection")
            }
            _ => {}
        }
        match encoding.decode_client(payload) {
            Ok(frame) => self.core.client_frame(id, frame, now_ms()),
            Err(e) => {
                tracing::debug!(shard = self.me.0, code = e.code().name(), "frame refused: {e}");
                self.send_error(id, e.code(), e.to_string(), encoding.ref_id(payload))
            }
        }
    }

    // ---- output ----

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Queues a frame for a connection (ignored if it is gone).
    pub(crate) fn send_frame(&mut self, id: ConnId, frame: &ServerFrame) {
        if let ServerFrame::Error(e) = frame {
            self.stats().error_frame(e.code);
            if e.code == ErrorCode::RateLimited {
                ShardStats::bump(&self.stats().rate_limited);
            }
        }
        let Some(conn) = self.conn_mut(id) else { return };
        if conn.phase != Phase::Open {
            return;
        }
        let enc = conn.encoding;
        if conn.deflate.on() {
            let mut payload = Vec::with_capacity(128);
            enc.encode_server(frame, &mut payload);
            return self.send_data(id, data_opcode(enc), &payload);
        }
        ws::write_frame_with(&mut conn.out, data_opcode(enc), |o| enc.encode_server(frame, o));
        self.queued(id);
    }

    /// Queues one data message, compressed if the connection negotiated it.
    fn send_data(&mut self, id: ConnId, opcode: OpCode, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else { return };
        if conn.deflate.compresses(payload.len()) {
            self.deflate.write_frame(&mut conn.out, opcode, payload);
        } else {
            ws::write_frame(&mut conn.out, opcode, payload);
        }
        self.queued(id);
    }

    /// Conformance-testing reflector (`serve --echo`): a whole message goes back as it
    /// came, instead of being decoded.
    #[cfg(feature = "echo")]
    fn echo(&mut self, id: ConnId, op: Data, payload: &[u8]) {
        self.send_data(id, OpCode::Data(op), payload);
    }

    /// After a frame was queued for `id`: schedule the flush, and enforce the
    /// slow-reader bound at once while the socket is known full.
    fn queued(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else { return };
        // While the socket is known full, the queue only grows: enforce the bound now.
        // Otherwise the flush at the end of the turn tries the socket first.
        let over = conn.write_armed && conn.backlog() > self.cfg.max_outbound;
        self.mark_dirty(id);
        if over {
            self.overflow(id);
        }
    }

    /// The bytes a connection's socket would not take passed `max_outbound`: its peer
    /// does not read. Drop its queue (what it missed is stored and comes back by sync),
    /// keeping only the rest of a frame already partly sent, and queue a 1008 close
    /// behind it: a peer that is merely slow reads the close; one that never reads is
    /// dropped when the closing grace ends.
    pub(crate) fn overflow(&mut self, id: ConnId) {
        tracing::debug!("closing a slow reader");
        ShardStats::bump(&self.stats().slow_readers);
        let Some(conn) = self.conn_mut(id) else { return };
        let keep = conn.out_partial as usize;
        conn.out.truncate(keep);
        conn.out.shrink_to_fit();
        self.detach(id);
        self.fail(id, close::POLICY, "outbound queue over max_outbound (slow reader)");
    }

    /// The one place an error becomes an `error` frame.
    pub(crate) fn send_error(&mut self, id: ConnId, code: ErrorCode, message: String, ref_id: Option<String>) {
        self.send_frame(id, &error_frame(code, message, ref_id));
    }

    /// Closes the WebSocket with `code` after flushing what is queued.
    fn fail(&mut self, id: ConnId, code: u16, reason: &str) {
        let now = self.now;
        if self.conn_mut(id).is_none() {
            return;
        }
        self.stats().close(code);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (user, device) = self.core.conn_identity(id).unwrap_or(("", ""));
            tracing::debug!(shard = self.me.0, conn = id.slot, user, device, code, reason, "closing connection");
        }
        let Some(conn) = self.conn_mut(id) else { return };
        ws::write_close(&mut conn.out, code, reason);
        conn.last_seen = now;
        conn.phase = Phase::Closing;
        conn.close_after_flush = true;
        conn.inbuf = Vec::new();
        conn.frag = Vec::new();
        self.mark_dirty(id);
    }

    fn flush_writes(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            self.flush_conn(id);
        }
        // Reuse the list's allocation.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush_conn(&mut self, id: ConnId) {
        let max_outbound = self.cfg.max_outbound;
        let Some(conn) = self.conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else { return };
        conn.dirty = false;
        if conn.tls.is_some() {
            return self.flush_tls(id);
        }
        if !conn.out.is_empty() && !conn.write_armed {
            let sent = reactor::send(conn.fd.as_fd(), &conn.out);
            if let Ok(n) = sent {
                self.bytes_out += n as u64;
            }
            match sent {
                Ok(n) if n == conn.out.len() => {
                    conn.out = Vec::new();
                    conn.out_partial = 0;
                }
                Ok(n) => {
                    conn.out_partial = ws::partial_after(&conn.out, conn.out_partial as usize, n) as u32;
                    conn.out.drain(..n);
                    if conn.out.len() > max_outbound {
                        // What the socket refused is past the bound: a slow reader. Its
                        // queue shrinks to the close frame; flush that (arms POLLOUT).
                        self.overflow(id);
                        return self.flush_conn(id);
                    }
                    conn.write_armed = true;
                    let fd = conn.fd.as_raw_fd();
                    self.ring.poll(fd, libc::POLLOUT as u32, false, token(Op::Write, id));
                    return;
                }
                Err(_) => return self.close(id),
            }
        }
        if conn.out.is_empty() && conn.close_after_flush {
            self.close(id);
        }
    }

    /// Encrypts what is queued and writes TLS records until the socket is full. While a
    /// POLLOUT is armed, new output waits in `out` (plaintext) so the slow-reader bound
    /// applies as for plain connections; ciphertext the socket refused waits in the
    /// session's `unsent`, ahead of it.
    fn flush_tls(&mut self, id: ConnId) {
        let mut wire = std::mem::take(&mut self.wire);
        let flushed = match self.conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) {
            Some(conn) if !conn.write_armed => flush_session(conn, &mut wire, &mut self.bytes_out),
            _ => TlsFlush::Wait,
        };
        wire.clear();
        if wire.capacity() > WIRE_KEEP {
            // After a large backlog: keep the usual size, not the peak.
            wire = Vec::with_capacity(WIRE_KEEP);
        }
        self.wire = wire;
        match flushed {
            TlsFlush::Wait => {}
            TlsFlush::Full(fd) => {
                if let Some(conn) = self.conn_mut(id) {
                    conn.write_armed = true;
                }
                self.ring.poll(fd, libc::POLLOUT as u32, false, token(Op::Write, id));
            }
            TlsFlush::Done => {
                if self.conn_mut(id).is_some_and(|c| c.close_after_flush) {
                    self.close(id);
                }
            }
            TlsFlush::Failed => self.close(id),
        }
    }

    /// Forgets a connection and closes its socket.
    fn close(&mut self, id: ConnId) {
        if self.conn_mut(id).is_none() {
            return;
        }
        self.churn += 1;
        self.detach(id);
        let conn = self.conns.remove(id.slot as usize);
        if conn.read_armed {
            self.ring.cancel_poll(token(Op::Read, id));
        }
        if conn.write_armed {
            self.ring.cancel_poll(token(Op::Write, id));
        }
        if conn.counted {
            self.host_conns.fetch_sub(1, Ordering::Relaxed);
        }
        reactor::close(conn.fd);
    }

    /// Tells the core a connection gets nothing more (it may still flush a close).
    fn detach(&mut self, id: ConnId) {
        self.core.conn_closed(id, now_ms());
    }
}

/// A batch this large commits without waiting for the commit window.
const COMMIT_BATCH_MAX: usize = 1024;

impl Shard {
    /// Carries out what the core asked for.
    fn apply_effects(&mut self) {
        // One buffer goes back and forth with the core: no allocation per turn.
        let mut effects = std::mem::take(&mut self.effects);
        while self.core.has_effects() {
            self.core.take_effects(&mut effects);
            for e in effects.drain(..) {
                match e {
                    Effect::Frame { to, frame } => {
                        if let ServerFrame::Ack(a) = &frame {
                            if !a.duplicate {
                                let us = now_ms().saturating_sub(a.ts).saturating_mul(1000);
                                self.stats().send_ack.observe(&crate::admin::LATENCY_BUCKETS_US, us);
                            }
                        }
                        self.send_frame(to, &frame)
                    }
                    Effect::Deliver { conv, seq, msg, to } => {
                        let us = now_ms().saturating_sub(msg.ts).saturating_mul(1000);
                        self.stats().send_deliver.observe(&crate::admin::LATENCY_BUCKETS_US, us);
                        self.deliver(&msg.msg_ref(conv, seq), &to)
                    }
                    Effect::Route { to, route } => self.mesh.push(to, Envelope::Core(route)),
                    Effect::Read { id, req } => {
                        let done = move |s: &mut Shard, r: Result<storage::read::ReadDone, storage::StoreError>| {
                            if r.is_err() {
                                ShardStats::bump(&s.stats().storage_errors);
                            }
                            s.core.read_done(id, r, now_ms())
                        };
                        match &self.cql {
                            Some(cql) => self.after(cql.submit_read(req), done),
                            None => {
                                let store = self.store.clone();
                                self.read_store(move || storage::read::execute(&*store, &req), done);
                            }
                        }
                    }
                    Effect::Close { conn, code, reason } => self.fail(conn, code, reason),
                }
            }
        }
        self.effects = effects;
    }

    /// Writes a stored message to connections on this shard, encoding it at most once
    /// per encoding (and compressing it at most once per encoding).
    fn deliver(&mut self, msg: &wire::frame::MsgRef<'_>, to: &[ConnId]) {
        let mut encoded: [Option<Vec<u8>>; 2] = [None, None];
        // Each message is compressed on its own, so every such connection gets the same bytes.
        let mut deflated: [Option<Vec<u8>>; 2] = [None, None];
        let mut overflowed = Vec::new();
        let mut delivered = 0u64;
        for &id in to {
            let Some(conn) = self.conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else { continue };
            if conn.phase != Phase::Open {
                continue;
            }
            let enc = conn.encoding;
            let bytes = encoded[enc as usize].get_or_insert_with(|| {
                let mut out = Vec::with_capacity(128);
                ws::write_frame_with(&mut out, data_opcode(enc), |o| enc.encode_msg(msg, o));
                out
            });
            // Connections without compression never look past the encoded frame.
            let payload = if conn.deflate.on() { ws::own_payload(bytes) } else { &[] };
            if conn.deflate.compresses(payload.len()) {
                let codec = &mut self.deflate;
                let z = deflated[enc as usize].get_or_insert_with(|| {
                    let mut out = Vec::with_capacity(payload.len() / 2 + 26);
                    codec.write_frame(&mut out, data_opcode(enc), payload);
                    out
                });
                conn.out.extend_from_slice(z);
            } else {
                conn.out.extend_from_slice(bytes);
            }
            delivered += 1;
            if conn.write_armed && conn.backlog() > self.cfg.max_outbound {
                overflowed.push(id);
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
        self.stats().deliveries.fetch_add(delivered, Ordering::Relaxed);
        for id in overflowed {
            self.overflow(id);
        }
    }

    /// Starts a group commit of what the core queued, unless one is running or the
    /// commit window since the last start has not passed (then a timer starts it).
    /// Measured (docs/BENCHMARKS.md): a 1 ms window raised messages per fdatasync from
    /// 1.5 to 2.7 at 5,000 msg/s but left server CPU per message unchanged, so it is off
    /// by default.
    pub(crate) fn kick_commit(&mut self) {
        if self.committing || self.commit_timer || !self.core.wants_commit() {
            return;
        }
        let window = Duration::from_micros(self.cfg.commit_window_us);
        let wait = self.last_commit.map_or(Duration::ZERO, |t| window.saturating_sub(t.elapsed()));
        if !wait.is_zero() && self.core.counts().queued < COMMIT_BATCH_MAX {
            self.commit_timer = true;
            self.after(glommio::timer::sleep(wait), |s, ()| {
                s.commit_timer = false;
                s.kick_commit();
            });
            return;
        }
        if self.log_blocked() {
            return;
        }
        let Some(writes) = self.core.take_commit() else { return };
        self.committing = true;
        self.last_commit = Some(Instant::now());
        if self.log.is_some() {
            return self.log_commit(writes);
        }
        if let Some(cql) = &self.cql {
            let writes: Arc<[storage::model::Write]> = writes.into();
            let done = writes.clone();
            return self.after(cql.submit_commit(writes), move |s, r| s.on_committed(&done, r));
        }
        let store = self.store.clone();
        self.blocking(
            move || {
                let r = store.commit(&writes);
                (writes, r)
            },
            move |s, (writes, r)| s.on_committed(&writes, r),
        );
    }

    /// A commit is durable (or failed): the core acks and fans out (or refuses).
    pub(crate) fn on_committed(&mut self, writes: &[storage::model::Write], r: Result<(), storage::StoreError>) {
        self.committing = false;
        if let Some(started) = self.last_commit {
            self.stats().observe_commit(started.elapsed());
        }
        if r.is_err() {
            ShardStats::bump(&self.stats().storage_errors);
        }
        if r.is_ok() {
            let stats = self.stats();
            stats.commits.fetch_add(1, Ordering::Relaxed);
            let messages = writes.iter().filter(|w| matches!(w, storage::model::Write::Message { .. })).count();
            stats.messages_stored.fetch_add(messages as u64, Ordering::Relaxed);
        }
        self.core.commit_done(r, now_ms());
        self.checkpoint();
    }
}

/// The WebSocket opcode that carries frames of an encoding.
pub(crate) fn data_opcode(enc: Encoding) -> OpCode {
    match enc {
        Encoding::Json => OpCode::Data(Data::Text),
        Encoding::FlatBuffers => OpCode::Data(Data::Binary),
    }
}

/// Builds an `error` frame.
pub(crate) fn error_frame(code: ErrorCode, message: String, ref_id: Option<String>) -> ServerFrame {
    ServerFrame::Error(ErrorFrame { code, message, ref_id, retry_after_ms: None })
}

/// Capacity of the shard's ciphertext buffer kept between flushes.
const WIRE_KEEP: usize = 64 * 1024;

/// What flushing a TLS connection came to.
enum TlsFlush {
    /// Nothing to do now (a POLLOUT is armed, or the connection is gone).
    Wait,
    /// The socket is full: arm POLLOUT on this descriptor.
    Full(std::os::fd::RawFd),
    /// Everything queued was sent.
    Done,
    /// Encryption or the socket failed: close.
    Failed,
}

/// Encrypts `conn.out` and sends it after any ciphertext still waiting. The ciphertext
/// is built in the shard's `wire` buffer; only what the socket refuses stays with the
/// connection.
fn flush_session(conn: &mut Conn, wire: &mut Vec<u8>, bytes_out: &mut u64) -> TlsFlush {
    let Some(session) = conn.tls.as_mut() else { return TlsFlush::Wait };
    wire.clear();
    wire.append(&mut session.unsent);
    session.unsent = Vec::new();
    if !conn.out.is_empty() {
        let out = std::mem::take(&mut conn.out);
        conn.out_partial = 0;
        if let Err(e) = session.write(&out, wire) {
            tracing::debug!("TLS error while encrypting: {e}");
            return TlsFlush::Failed;
        }
    }
    if conn.close_after_flush {
        session.close_notify(wire);
    }
    if wire.is_empty() {
        return TlsFlush::Done;
    }
    let sent = reactor::send(conn.fd.as_fd(), wire);
    if let Ok(n) = sent {
        *bytes_out += n as u64;
    }
    match sent {
        Ok(n) if n == wire.len() => TlsFlush::Done,
        Ok(n) => {
            session.unsent = wire[n..].to_vec();
            TlsFlush::Full(conn.fd.as_raw_fd())
        }
        Err(_) => TlsFlush::Failed,
    }
}
