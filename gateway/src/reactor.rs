//! Each shard's own io_uring ring for its sockets.
//!
//! Why not glommio's `TcpStream`: a glommio stream plus its io source, task future and
//! read buffer cost ~2.9 KB per idle connection at best (RSS growth of a minimal
//! glommio server holding 10,000 idle streams, measured before this reactor was
//! written), and the budget is 1 KB. Here a
//! socket is registered once with a multishot `POLL_ADD`; when it becomes readable the
//! shard reads with a non-blocking `recv` into one per-shard scratch buffer. An idle
//! connection therefore holds no buffer and no future, only its slab entry, and the
//! kernel keeps the poll registration.
//!
//! The ring's completions are signalled on an eventfd that the shard awaits through
//! glommio (`BufferedFile::read_at` on the eventfd is an io_uring read on glommio's own
//! ring), so the executor keeps running its other tasks (mesh, storage completions)
//! while sockets are idle. Writes are non-blocking `send`s; only when a socket's send
//! buffer is full is a one-shot `POLLOUT` armed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use glommio::io::BufferedFile;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// One completion.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The token given when the operation was submitted.
    pub token: u64,
    /// The kernel's result (`-errno` on failure).
    pub result: i32,
    /// False when a multishot operation has ended and must be re-armed.
    pub more: bool,
}

/// A shard's socket ring.
pub struct Ring {
    /// The ring itself. Only poll/accept/cancel operations are submitted: none of them
    /// points into user memory, so no buffer has to outlive a submission.
    ring: IoUring,
    /// The eventfd the kernel signals on every completion, wrapped for glommio.
    /// Invariant: registered with `ring` for its whole life.
    wake: Rc<BufferedFile>,
}

impl Ring {
    /// A ring with `entries` submission slots.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::builder().setup_cqsize(entries * 4).build(entries)?;
        // SAFETY: eventfd(2) has no memory-safety preconditions; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        ring.submitter().register_eventfd(efd)?;
        // SAFETY: `efd` is a fresh, valid descriptor that nothing else owns; the
        // BufferedFile takes sole ownership and closes it when dropped.
        let wake = Rc::new(unsafe { BufferedFile::from_raw_fd(efd) });
        Ok(Ring { ring, wake })
    }

    /// The eventfd to await (see [`wait`]).
    pub fn waker(&self) -> Rc<BufferedFile> {
        self.wake.clone()
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built here (PollAdd, PollRemove, AcceptMulti with no
            // address output) refers to no user memory; the fd is only a number to the
            // kernel, and a stale fd yields an error completion, not unsafety.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Queue full: hand what is queued to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {e}");
            }
        }
    }

    /// Accepts connections on `listener` until cancelled (multishot); accepted sockets
    /// are non-blocking and close-on-exec.
    pub fn accept(&mut self, listener: RawFd, token: u64) {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(token);
        self.push(e);
    }

    /// Watches `fd` for `events` (POLLIN / POLLOUT); `multi` keeps it armed.
    pub fn poll(&mut self, fd: RawFd, events: u32, multi: bool, token: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd), events).multi(multi).build().user_data(token);
        self.push(e);
    }

    /// Cancels the poll submitted with `token` (its completions are ignored anyway
    /// once the token is stale).
    pub fn cancel_poll(&mut self, token: u64) {
        let e = opcode::PollRemove::new(token).build().user_data(0);
        self.push(e);
    }

    /// Cancels any operation submitted with `token` (the multishot accept, on drain).
    pub fn cancel(&mut self, token: u64) {
        let e = opcode::AsyncCancel::new(token).build().user_data(0);
        self.push(e);
    }

    /// Hands queued submissions to the kernel (one syscall per shard turn).
    pub fn submit(&mut self) {
        if !self.ring.submission().is_empty() {
            if let Err(e) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {e}");
            }
        }
    }

    /// Takes every available completion.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            out.push(Completion { token: cqe.user_data(), result: cqe.result(), more: cqueue::more(cqe.flags()) });
        }
    }
}

/// Waits until the ring has signalled completions. Call with no borrow of the shard held.
pub async fn wait(wake: &BufferedFile) {
    // An 8-byte read of an eventfd returns (and resets) its counter once it is non-zero.
    if let Err(e) = wake.read_at(0, 8).await {
        tracing::error!(fd = wake.as_raw_fd(), "waiting on the ring's eventfd failed: {e}");
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Sends as much of `buf` as the socket takes now: `Ok(n)` bytes sent (possibly 0 when
/// the socket buffer is full), `Err` when the connection is broken.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `fd` is an open descriptor for the duration of the borrow; `buf` is a live
    // slice for the duration of the call and `len` is its length.
    let n =
        unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(0),
        io::ErrorKind::Interrupted => Ok(0),
        _ => Err(e),
    }
}

/// Outcome of one non-blocking receive.
#[derive(Debug)]
pub enum Recv {
    /// `n` bytes were read.
    Data(usize),
    /// Nothing more right now.
    WouldBlock,
    /// The peer closed or the connection broke.
    Closed,
}

/// Reads what the socket has into `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Recv {
    // SAFETY: `fd` is an open descriptor for the duration of the borrow; `buf` is a
    // live, exclusively borrowed slice and `len` is its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n > 0 {
        return Recv::Data(n as usize);
    }
    if n == 0 {
        return Recv::Closed;
    }
    match io::Error::last_os_error().kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Recv::WouldBlock,
        _ => Recv::Closed,
    }
}

/// Turns Nagle off on a freshly accepted socket: glommio leaves it on, and with it a
/// relay's p50 latency was 7 ms at 5,000 msg/s (a delayed-ACK stall per small frame).
pub fn set_nodelay(fd: BorrowedFd<'_>) {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is open for the duration of the borrow; `one` outlives the call and
    // the length passed is its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Shuts a socket down and closes it (dropping the descriptor closes it).
pub fn close(fd: OwnedFd) {
    // SAFETY: `fd` is open until it is dropped below. Shutdown first so the peer sees
    // the FIN even while a cancelled poll still holds a file reference.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
    drop(fd);
}

/// Takes ownership of the descriptor an accept completion returned (`raw >= 0`).
pub fn accepted(raw: RawFd) -> OwnedFd {
    debug_assert!(raw >= 0);
    // SAFETY: a successful accept completion hands the shard a new descriptor that
    // nothing else refers to; this is the only place it is wrapped, once per completion.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Returns memory this thread freed to the OS (mimalloc: process delayed cross-thread
/// frees, purge empty pages). A shard calls it from its housekeeping tick after
/// connection churn: otherwise the handshake garbage of a connection storm stays
/// resident on an idle shard thread, because mimalloc purges only when the thread
/// allocates again (measured: 1,439 vs 535 bytes/connection at 10,000 idle connections).
pub fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions; it only touches the calling thread's
    // heap (and the global allocator is mimalloc, see main.rs).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`): later page
/// faults map 4 KiB pages even where the allocator asked for huge ones.
pub fn disable_huge_pages() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes no pointers; it sets a flag on
    // this process's memory map.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it starts later,
/// so that only [`wait_for_termination`] receives them. Call before starting the shards.
pub fn block_termination_signals() -> io::Result<()> {
    // SAFETY: the sigset is initialised by sigemptyset before use and outlives the calls;
    // pthread_sigmask only changes this thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits (blocking this thread) for SIGTERM, SIGINT or SIGHUP; returns the signal number.
pub fn wait_for_termination() -> i32 {
    // SAFETY: as above; sigwait writes the received signal into `sig`, a live local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let mut sig: libc::c_int = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// Clock ticks per second, the unit of CPU times in `/proc` (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions and takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    t.max(1) as f64
}

/// Sends SIGTERM to this process (the admin drain command), so that the signal thread
/// runs the one drain path.
pub fn request_termination() {
    // SAFETY: kill(2) with our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}
