//! One shard of the gateway: its sockets, connections and users, and the event loop
//! that drives them. The message path (conversations, storage, fan-out) is in
//! `messaging`; both are `impl Shard`.
//!
//! Ownership: everything in [`Shard`] belongs to one executor thread and is reached
//! through one `Rc<RefCell<Shard>>`; tasks borrow it only between awaits. Other shards
//! are reached only with [`Route`]s over the mesh.
//!
//! A turn: handle a batch of events (ring completions, a mesh batch, a storage
//! completion), then [`Shard::finish_turn`] runs local routes, starts the next group
//! commit, writes each dirty connection once, submits the ring and flushes the mesh.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use shard::ids::{home_of_conv, home_of_user, ConnId, ConnRef, MessageIdGen, ShardId};
use shard::mesh::Mesh;
use shard::runtime::ShardCtx;
use slab::Slab;
use storage::Store;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use wire::error::{close, ErrorCode};
use wire::frame::{ClientFrame, ErrorFrame, ServerFrame, Target};
use wire::Encoding;

use crate::auth::Verifier;
use crate::config::Config;
use crate::conn::{same_gen, token, untoken, Conn, Op, Phase};
use crate::messaging::Conversations;
use crate::reactor::{self, Completion, Recv, Ring};
use crate::route::{Handoff, Route, SendReq};
use crate::upgrade::{self, Refusal};
use crate::ws;

/// What a shard needs to start.
pub struct ShardSetup {
    /// Immutable configuration.
    pub cfg: Arc<Config>,
    /// This shard's listener (SO_REUSEPORT, shared port).
    pub listener: RawFd,
    /// This shard's storage partition.
    pub store: Arc<dyn Store>,
    /// Token secret.
    pub secret: Arc<Vec<u8>>,
    /// Told once the shard accepts connections.
    pub ready: std::sync::mpsc::Sender<ShardId>,
}

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
    /// Token verification.
    verifier: Verifier,
    /// The socket ring.
    ring: Ring,
    /// The listener.
    listener: RawFd,
    /// Connections on this shard.
    pub(crate) conns: Slab<Conn>,
    /// Generation of the next connection.
    next_gen: u32,
    /// Users homed here with at least one connection: their connections.
    /// Invariant: every `ConnId` listed is an `Open` connection of that user.
    pub(crate) users: HashMap<Rc<str>, Vec<ConnId>>,
    /// Conversations homed here (see `messaging`).
    pub(crate) convs: Conversations,
    /// This shard's storage partition.
    pub(crate) store: Arc<dyn Store>,
    /// Message ids minted here.
    pub(crate) ids: MessageIdGen,
    /// Routes to this shard itself, run before the turn ends.
    inbox: VecDeque<Route>,
    /// Connections with bytes to send this turn.
    pub(crate) dirty: Vec<ConnId>,
    /// The mesh.
    mesh: Rc<Mesh<Route>>,
    /// Read buffer shared by all connections (taken out while in use).
    scratch: Vec<u8>,
    /// Connections opened, adopted or closed since start (drives memory release).
    churn: u64,
    /// Failed accepts since start (EMFILE and friends).
    accept_failures: u64,
    /// When an accept failure was last logged (at most one line a second).
    accept_warned: std::time::Instant,
}

/// Pause before accepting again after an accept error.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs one shard until the process exits.
pub async fn run(ctx: ShardCtx<Route>, setup: ShardSetup) {
    let ring = match Ring::new(setup.cfg.ring_entries) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(shard = ctx.id.0, "cannot create the socket ring: {e}");
            std::process::exit(1);
        }
    };
    let waker = ring.waker();
    let me = ctx.id;
    let shard = Rc::new_cyclic(|this: &Weak<RefCell<Shard>>| {
        let w = this.clone();
        let mesh = Mesh::connect(ctx.mesh, move |_from, batch| {
            if let Some(s) = w.upgrade() {
                let mut s = s.borrow_mut();
                for r in batch {
                    s.on_route(r);
                }
                s.finish_turn();
            }
        });
        let scratch_len = setup.cfg.max_frame + 16 * 1024;
        RefCell::new(Shard {
            me,
            shards: ctx.shards,
            this: this.clone(),
            verifier: Verifier::hs256(&setup.secret, setup.cfg.jwt_leeway_secs),
            ring,
            listener: setup.listener,
            conns: Slab::new(),
            next_gen: 1,
            users: HashMap::new(),
            convs: Conversations::default(),
            store: setup.store,
            ids: MessageIdGen::new(setup.cfg.host_id, me),
            inbox: VecDeque::new(),
            dirty: Vec::new(),
            mesh,
            scratch: vec![0; scratch_len],
            churn: 0,
            accept_failures: 0,
            accept_warned: std::time::Instant::now() - std::time::Duration::from_secs(2),
            cfg: setup.cfg,
        })
    });
    {
        let mut s = shard.borrow_mut();
        let listener = s.listener;
        s.ring.accept(listener, token(Op::Accept, ConnId { slot: 0, gen: 0 }));
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

/// Once a second: give memory freed by connection churn back to the OS.
async fn housekeeping(shard: Weak<RefCell<Shard>>) {
    let mut seen_churn = 0;
    loop {
        glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
        let Some(s) = shard.upgrade() else { return };
        let churn = s.borrow().churn;
        if churn != seen_churn {
            seen_churn = churn;
            reactor::release_freed_memory();
        }
    }
}

impl Shard {
    /// Sends a route to shard `to` (this shard: run before the turn ends).
    pub(crate) fn route(&mut self, to: ShardId, r: Route) {
        if to == self.me {
            self.inbox.push_back(r);
        } else {
            self.mesh.push(to, r);
        }
    }

    /// Ends a turn: local routes, next group commit, writes, ring submit, mesh flush.
    pub(crate) fn finish_turn(&mut self) {
        loop {
            while let Some(r) = self.inbox.pop_front() {
                self.on_route(r);
            }
            self.kick_commit();
            self.flush_writes();
            if self.inbox.is_empty() {
                break;
            }
        }
        self.ring.submit();
        self.mesh.flush();
    }

    /// Runs `job` on the executor's blocking pool, then `done` on this shard.
    pub(crate) fn blocking<R: std::marker::Send + 'static>(
        &self,
        job: impl FnOnce() -> R + std::marker::Send + 'static,
        done: impl FnOnce(&mut Shard, R) + 'static,
    ) {
        let this = self.this.clone();
        glommio::spawn_local(async move {
            let r = glommio::executor().spawn_blocking(job).await;
            if let Some(s) = this.upgrade() {
                let mut s = s.borrow_mut();
                done(&mut s, r);
                s.finish_turn();
            }
        })
        .detach();
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen)
    }

    fn on_route(&mut self, r: Route) {
        match r {
            Route::Handoff(h) => self.adopt(h),
            Route::Send(req) => self.on_send(req),
            Route::ToConn { to, frame } => self.send_frame(to.conn, &frame),
            Route::Deliver { msg, recipients, except } => self.deliver(msg, &recipients, except),
            Route::History { from, user, req } => self.on_history(from, user, req),
            Route::Sync { from, user, points } => self.on_sync(from, user, points),
            Route::SyncDone { to, convs } => self.on_sync_done(to.conn, convs),
        }
    }

    // ---- ring events ----

    fn on_completion(&mut self, c: Completion) {
        let Some((op, id)) = untoken(c.token) else { return };
        if op == Op::Accept {
            if c.result >= 0 {
                self.on_accept(c.result);
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
                self.on_readable(id);
                if let Some(conn) = self.conn_mut(id) {
                    if !conn.read_armed && conn.phase != Phase::Closing {
                        conn.read_armed = true;
                        let (fd, multi) = (conn.fd, conn.phase == Phase::Open);
                        self.ring.poll(fd, libc::POLLIN as u32, multi, token(Op::Read, id));
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
            let listener = self.listener;
            return self.ring.accept(listener, t);
        }
        let this = self.this.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(ACCEPT_BACKOFF).await;
            if let Some(s) = this.upgrade() {
                let mut s = s.borrow_mut();
                let listener = s.listener;
                s.ring.accept(listener, t);
                s.finish_turn();
            }
        })
        .detach();
    }

    fn on_accept(&mut self, fd: RawFd) {
        self.churn += 1;
        reactor::set_nodelay(fd);
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let slot = self.conns.insert(Conn::accepted(fd, gen));
        let id = ConnId { slot: slot as u32, gen };
        self.conns[slot].read_armed = true;
        // One-shot while handshaking: after the upgrade nothing is armed, so the socket
        // can move to another shard.
        self.ring.poll(fd, libc::POLLIN as u32, false, token(Op::Read, id));
    }

    fn on_readable(&mut self, id: ConnId) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(conn) = self.conn_mut(id) {
            let fd = conn.fd;
            match reactor::recv(fd, &mut scratch) {
                Recv::Data(n) => self.on_bytes(id, &mut scratch[..n]),
                Recv::WouldBlock => break,
                Recv::Closed => {
                    self.close(id);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    fn on_bytes(&mut self, id: ConnId, data: &mut [u8]) {
        let Some(conn) = self.conn_mut(id) else { return };
        match conn.phase {
            Phase::Closing => {}
            Phase::Handshake => {
                conn.inbuf.extend_from_slice(data);
                self.try_handshake(id);
            }
            Phase::Open if conn.inbuf.is_empty() => {
                let used = self.on_frames(id, data);
                if let Some(conn) = self.conn_mut(id) {
                    if conn.phase == Phase::Open && used < data.len() {
                        conn.inbuf = data[used..].to_vec();
                    }
                }
            }
            Phase::Open => {
                let mut buf = std::mem::take(&mut conn.inbuf);
                buf.extend_from_slice(data);
                let used = self.on_frames(id, &mut buf);
                if let Some(conn) = self.conn_mut(id) {
                    if conn.phase == Phase::Open && used < buf.len() {
                        buf.drain(..used);
                        conn.inbuf = buf;
                    }
                }
            }
        }
    }

    // ---- the upgrade ----

    fn try_handshake(&mut self, id: ConnId) {
        let max = self.cfg.max_handshake;
        let Some(conn) = self.conn_mut(id) else { return };
        let (req, len) = match upgrade::parse(&conn.inbuf, max) {
            upgrade::Parsed::Partial => return,
            upgrade::Parsed::Refuse(r) => return self.refuse(id, &r),
            upgrade::Parsed::Done { req, len } => (req, len),
        };
        let claims = match req.token.as_deref().map(|t| self.verifier.verify(t)) {
            None => Err(crate::auth::AuthError::Missing),
            Some(r) => r,
        };
        let claims = match claims {
            Ok(c) => c,
            Err(e) => {
                return self.refuse(id, &Refusal { status: 401, code: "unauthorized", message: e.to_string() });
            }
        };
        let device = claims.device.or(req.device.clone()).unwrap_or_else(|| "default".to_owned());
        if let Err(e) = wire::frame::check::user_id("device", &device) {
            return self.refuse(id, &Refusal { status: 400, code: "bad_request", message: e.to_string() });
        }
        let conn = self.conns.remove(id.slot as usize);
        let mut pending_out = Vec::with_capacity(256);
        upgrade::accept(&req, &mut pending_out);
        let handoff = Handoff {
            fd: conn.fd,
            device,
            encoding: req.encoding,
            pending_in: conn.inbuf[len..].to_vec(),
            pending_out,
            user: claims.sub,
        };
        let home = home_of_user(&handoff.user, self.shards);
        self.route(home, Route::Handoff(handoff));
    }

    fn refuse(&mut self, id: ConnId, r: &Refusal) {
        let Some(conn) = self.conn_mut(id) else { return };
        conn.inbuf = Vec::new();
        upgrade::refuse(r, &mut conn.out);
        conn.phase = Phase::Closing;
        conn.close_after_flush = true;
        self.mark_dirty(id);
    }

    /// Takes in an upgraded socket whose user is homed here.
    fn adopt(&mut self, h: Handoff) {
        self.churn += 1;
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let user: Rc<str> = match self.users.get_key_value(h.user.as_str()) {
            Some((k, _)) => k.clone(),
            None => Rc::from(h.user.as_str()),
        };
        let mut conn = Conn::accepted(h.fd, gen);
        conn.phase = Phase::Open;
        conn.encoding = h.encoding;
        conn.user = Some(user.clone());
        conn.device = h.device.into_boxed_str();
        conn.out = h.pending_out;
        conn.read_armed = true;
        let fd = conn.fd;
        let slot = self.conns.insert(conn);
        let id = ConnId { slot: slot as u32, gen };
        self.users.entry(user.clone()).or_default().push(id);
        self.ring.poll(fd, libc::POLLIN as u32, true, token(Op::Read, id));
        let ready = ServerFrame::Ready {
            user: user.to_string(),
            device: self.conns[slot].device.to_string(),
            shard: self.me.0,
            max_frame: self.cfg.max_frame as u32,
            encoding: h.encoding.subprotocol().to_owned(),
        };
        self.send_frame(id, &ready);
        if !h.pending_in.is_empty() {
            let mut early = h.pending_in;
            self.on_bytes(id, &mut early);
        }
    }

    // ---- WebSocket frames ----

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    fn on_frames(&mut self, id: ConnId, buf: &mut [u8]) -> usize {
        let max = self.cfg.max_frame;
        let mut pos = 0;
        loop {
            match self.conn_mut(id) {
                Some(c) if c.phase == Phase::Open => {}
                _ => return buf.len(),
            }
            match ws::next(&buf[pos..], max) {
                ws::Next::Incomplete => return pos,
                ws::Next::Violation(code, reason) => {
                    self.fail(id, code, reason);
                    return buf.len();
                }
                ws::Next::Frame(f) => {
                    let payload = pos + f.payload.start..pos + f.payload.end;
                    ws::unmask(&mut buf[payload.clone()], f.mask);
                    pos += f.len;
                    self.on_frame(id, f.fin, f.opcode, &buf[payload]);
                }
            }
        }
    }

    fn on_frame(&mut self, id: ConnId, fin: bool, opcode: OpCode, payload: &[u8]) {
        let max = self.cfg.max_frame;
        let Some(conn) = self.conn_mut(id) else { return };
        match opcode {
            OpCode::Control(Control::Ping) => {
                ws::write_frame(&mut conn.out, OpCode::Control(Control::Pong), payload);
                self.mark_dirty(id);
            }
            OpCode::Control(Control::Close) => {
                let code = match payload {
                    [] => close::NORMAL,
                    [_] => return self.fail(id, close::PROTOCOL_ERROR, "close payload of one byte"),
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                };
                conn.phase = Phase::Closing;
                conn.close_after_flush = true;
                ws::write_close(&mut conn.out, code, "");
                self.mark_dirty(id);
            }
            OpCode::Data(Data::Continue) => {
                let Some(op) = conn.frag_op else {
                    return self.fail(id, close::PROTOCOL_ERROR, "continuation frame without a message");
                };
                if conn.frag.len() + payload.len() > max {
                    return self.fail(id, close::TOO_BIG, "message exceeds max_frame");
                }
                conn.frag.extend_from_slice(payload);
                if fin {
                    let whole = std::mem::take(&mut conn.frag);
                    conn.frag_op = None;
                    self.on_message(id, op, &whole);
                }
            }
            OpCode::Data(op) => {
                if conn.frag_op.is_some() {
                    return self.fail(id, close::PROTOCOL_ERROR, "new message inside a fragmented one");
                }
                if fin {
                    self.on_message(id, op, payload);
                } else {
                    conn.frag_op = Some(op);
                    conn.frag = payload.to_vec();
                }
            }
            OpCode::Control(_) => {} // pong, and reserved opcodes (rejected by ws::next)
        }
    }

    fn on_message(&mut self, id: ConnId, op: Data, payload: &[u8]) {
        let Some(conn) = self.conn_mut(id) else { return };
        let encoding = conn.encoding;
        match (op, encoding) {
            (Data::Binary, Encoding::Json) => {
                return self.fail(id, close::UNSUPPORTED_DATA, "binary frame on a switchboard.v1.json connection")
            }
            (Data::Text, Encoding::FlatBuffers) => {
                return self.fail(id, close::UNSUPPORTED_DATA, "text frame on a switchboard.v1.fb connection")
            }
            (Data::Text, _) if std::str::from_utf8(payload).is_err() => {
                return self.fail(id, close::INVALID_PAYLOAD, "text frame is not UTF-8")
            }
            _ => {}
        }
        match encoding.decode_client(payload) {
            Ok(frame) => self.on_client_frame(id, frame),
            Err(e) => self.send_error(id, e.code(), e.to_string(), None),
        }
    }

    fn on_client_frame(&mut self, id: ConnId, frame: ClientFrame) {
        let (max_body, shards, me) = (self.cfg.max_body, self.shards, self.me);
        let Some(conn) = self.conn_mut(id) else { return };
        let Some(user) = conn.user.clone() else { return };
        let from = ConnRef { shard: me, conn: id };
        match frame {
            ClientFrame::Hello { sync } => {
                if conn.sync.is_some() {
                    return self.send_error(id, ErrorCode::BadValue, "a sync is already running".into(), None);
                }
                conn.sync = Some((shards as u16, 0));
                for k in 0..shards {
                    let r = Route::Sync { from, user: user.to_string(), points: sync.clone() };
                    self.route(ShardId(k as u16), r);
                }
            }
            ClientFrame::Send(send) => {
                if send.body.len() > max_body {
                    let msg = format!("body of {} bytes exceeds max_body ({max_body})", send.body.len());
                    return self.send_error(id, ErrorCode::BodyTooLarge, msg, Some(send.client_msg_id));
                }
                let (conv, dm_peer) = match &send.target {
                    Target::User(peer) => (shard::ids::dm_conv(&user, peer), Some(peer.clone())),
                    Target::Conv(c) => (*c, None),
                };
                let req =
                    SendReq { from, user: user.to_string(), device: conn.device.to_string(), conv, dm_peer, send };
                self.route(home_of_conv(conv, shards), Route::Send(req));
            }
            ClientFrame::History(req) => {
                let home = home_of_conv(req.conv, shards);
                self.route(home, Route::History { from, user: user.to_string(), req });
            }
        }
    }

    fn on_sync_done(&mut self, id: ConnId, convs: u32) {
        let Some(conn) = self.conn_mut(id) else { return };
        let Some((left, total)) = conn.sync else { return };
        if left <= 1 {
            conn.sync = None;
            self.send_frame(id, &ServerFrame::Synced { convs: total + convs });
        } else {
            conn.sync = Some((left - 1, total + convs));
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
        let Some(conn) = self.conn_mut(id) else { return };
        if conn.phase != Phase::Open {
            return;
        }
        let enc = conn.encoding;
        ws::write_frame_with(&mut conn.out, data_opcode(enc), |o| enc.encode_server(frame, o));
        self.mark_dirty(id);
    }

    /// The one place an error becomes an `error` frame.
    pub(crate) fn send_error(&mut self, id: ConnId, code: ErrorCode, message: String, ref_id: Option<String>) {
        self.send_frame(id, &error_frame(code, message, ref_id));
    }

    /// Closes the WebSocket with `code` after flushing what is queued.
    fn fail(&mut self, id: ConnId, code: u16, reason: &str) {
        let Some(conn) = self.conn_mut(id) else { return };
        tracing::debug!(code, reason, "closing connection");
        ws::write_close(&mut conn.out, code, reason);
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
        let Some(conn) = self.conn_mut(id) else { return };
        conn.dirty = false;
        if !conn.out.is_empty() && !conn.write_armed {
            match reactor::send(conn.fd, &conn.out) {
                Ok(n) if n == conn.out.len() => conn.out = Vec::new(),
                Ok(n) => {
                    conn.out.drain(..n);
                    conn.write_armed = true;
                    let fd = conn.fd;
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

    /// Forgets a connection and closes its socket.
    fn close(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(id.slot as usize).filter(|c| c.gen == id.gen) else { return };
        let conn_fd = conn.fd;
        self.churn += 1;
        let conn = self.conns.remove(id.slot as usize);
        if let Some(user) = &conn.user {
            if let Some(list) = self.users.get_mut(&**user) {
                list.retain(|c| *c != id);
                if list.is_empty() {
                    self.users.remove(&**user);
                }
            }
        }
        if conn.read_armed {
            self.ring.cancel_poll(token(Op::Read, id));
        }
        if conn.write_armed {
            self.ring.cancel_poll(token(Op::Write, id));
        }
        reactor::close(conn_fd);
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
    ServerFrame::Error(ErrorFrame { code, message, ref_id })
}
