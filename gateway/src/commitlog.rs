//! The shard's commit log: group commits made durable on the shard's own io_uring ring.
//!
//! Without it, each group commit is one fjall batch with an fdatasync on glommio's
//! blocking pool: two thread hand-offs and a thread wake-up per commit, which measured
//! as a third of the gateway's CPU (docs/BENCHMARKS.md). With it, a commit is one record
//! appended to `commit.log` with one direct `O_DSYNC` write submitted by the shard
//! itself; the ack follows its completion. The writes then reach the store unsynced
//! ([`storage::Store::apply`]) in larger batches on the blocking pool, off the ack path:
//! when [`APPLY_BATCH`] writes are waiting, [`APPLY_DELAY`] after the first, or at once
//! when a read needs them. Every store read waits for the writes acknowledged before it
//! ([`Shard::read_store`]), so history and sync never miss an acked message.
//!
//! When the next record does not fit, the shard checkpoints: it stops appending, applies
//! what is left, flushes the store ([`storage::Store::flush`]) and writes a new header
//! (a new random generation), which empties the log. A failed append also starts a new
//! generation before the next one, so the log never holds a gap. The format and the
//! replay at start-up are in `storage::log`.

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{DmaFile, OpenOptions};
use storage::log::{encode_header, encode_record, new_generation, HEADER_LEN, RECORD_ALIGN};
use storage::model::Write;
use storage::StoreError;

use crate::service::Shard;

/// Writes waiting for the store that start an apply at once.
pub const APPLY_BATCH: usize = 2048;
/// The longest a logged write waits before it is applied, when nothing reads.
pub const APPLY_DELAY: Duration = Duration::from_millis(5);
/// Pause before applying again after the store failed (reads arriving meanwhile wait
/// for the retry, they do not start one).
const APPLY_RETRY: Duration = Duration::from_millis(100);

type AfterApplied = Box<dyn FnOnce(&mut Shard, Result<(), StoreError>)>;

/// One shard's commit log and the writes on their way to its store.
pub struct CommitLog {
    file: Rc<DmaFile>,
    /// Records start and end on multiples of this (the device's direct-I/O unit).
    align: u64,
    /// The file's size; a record past it waits for a checkpoint.
    capacity: u64,
    generation: u64,
    /// Number of the next record in this generation.
    number: u64,
    /// Offset of the next record.
    pos: u64,
    /// Start a new generation before the next append (the log is full or a write failed).
    restart: bool,
    /// A checkpoint is under way: no appends until it ends.
    checkpointing: bool,
    /// The checkpoint's flush and header write are running.
    flushing: bool,
    /// Batches logged since start.
    appended: u64,
    /// Of those, batches the store has applied.
    applied: u64,
    /// Logged writes not yet handed to the store, in log order.
    pending: Vec<Write>,
    /// An apply is running on the blocking pool (at most one, so they apply in order).
    applying: bool,
    /// A timer will start the next apply.
    apply_timer: bool,
    /// The store failed: no apply before the retry timer fires.
    apply_backoff: bool,
    /// Applies failed in a row, and when one was last logged (at most one line a second).
    apply_failures: u64,
    apply_failure_logged: Option<std::time::Instant>,
    /// Reads waiting for the store to apply batch `.0`.
    reads: Vec<(u64, AfterApplied)>,
    /// An append is being written.
    appending: bool,
    /// A batch that did not fit, waiting for the checkpoint to append it.
    held: Option<Vec<Write>>,
}

impl CommitLog {
    /// Opens the log of a partition after `storage::log::recover` gave it `generation`
    /// (an empty log), and reserves `capacity` bytes of disk for it.
    pub async fn open(dir: &Path, generation: u64, capacity: u64) -> io::Result<CommitLog> {
        let path = dir.join(storage::log::FILE_NAME);
        // Readable too: glommio probes the device with a read when it opens the file.
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DSYNC).dma_open(&path).await?;
        let align = file.alignment().max(RECORD_ALIGN);
        if !align.is_multiple_of(RECORD_ALIGN) || align > HEADER_LEN {
            let msg = format!("the device's direct-I/O unit ({align} bytes) is not supported for the commit log");
            return Err(io::Error::new(io::ErrorKind::Unsupported, msg));
        }
        zero_fill(&file, capacity).await?;
        Ok(CommitLog {
            file: Rc::new(file),
            align,
            capacity,
            generation,
            number: 0,
            pos: HEADER_LEN,
            restart: false,
            checkpointing: false,
            flushing: false,
            appended: 0,
            applied: 0,
            pending: Vec::new(),
            applying: false,
            apply_timer: false,
            apply_backoff: false,
            apply_failures: 0,
            apply_failure_logged: None,
            reads: Vec::new(),
            appending: false,
            held: None,
        })
    }

    /// Nothing is being logged, applied or checkpointed (drain waits for this).
    pub fn is_idle(&self) -> bool {
        !self.checkpointing && !self.applying && self.pending.is_empty() && self.held.is_none()
    }

    /// The log holds records of this generation.
    pub fn is_empty(&self) -> bool {
        self.number == 0 && !self.restart
    }

    /// The encoded record for `writes`, padded to `align`.
    fn record(&self, writes: &[Write]) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        encode_record(self.generation, self.number, writes, self.align, &mut bytes)?;
        Ok(bytes)
    }

    fn dma(&self, bytes: &[u8]) -> glommio::io::DmaBuffer {
        let mut buf = self.file.alloc_dma_buffer(bytes.len());
        buf.as_bytes_mut().copy_from_slice(bytes);
        buf
    }
}

/// Writes zeros up to `capacity` once (a file that reached it is left alone). Written
/// blocks make an append a pure overwrite: no block map or size to update, so the
/// kernel issues the direct write at once instead of handing it to an io-wq thread, and
/// O_DSYNC adds only the device cache flush. Measured (docs/BENCHMARKS.md): into a
/// preallocated but unwritten file, every append went to an io-wq thread (0.4 s of CPU
/// per 4 s at 20,000 msg/s); into a written one, none did.
async fn zero_fill(file: &DmaFile, capacity: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let size = file.file_size().await?;
    if size >= capacity {
        return Ok(());
    }
    let mut zeros = file.alloc_dma_buffer(CHUNK as usize);
    zeros.as_bytes_mut().fill(0);
    let zeros = Rc::new(zeros);
    // Recovery has run, so nothing after the header is live. Whole chunks: the file may
    // end up to one chunk past `capacity`, which appends never reach.
    let mut pos = (size / CHUNK * CHUNK).max(HEADER_LEN);
    while pos < capacity {
        match file.write_rc_at(zeros.clone(), pos).await? {
            0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "zero-filling the commit log wrote nothing")),
            n => pos += n as u64,
        }
    }
    Ok(file.fdatasync().await?)
}

/// Where a batch goes.
enum Place {
    /// Appended at this offset.
    At(u64),
    /// After a checkpoint.
    Later,
    /// Larger than the whole log: committed to the store directly, the log being empty.
    TooLarge,
}

impl Shard {
    /// Makes a commit's `writes` durable through the commit log; `on_committed` follows.
    pub(crate) fn log_commit(&mut self, writes: Vec<Write>) {
        let Some(log) = self.log.as_mut() else {
            // Not called without a log; refuse rather than drop the batch if it were.
            let e = StoreError::Unavailable("no commit log".into());
            return self.on_committed(&writes, Err(e));
        };
        let bytes = match log.record(&writes) {
            Ok(b) => b,
            Err(e) => return self.on_committed(&writes, Err(e)),
        };
        let len = bytes.len() as u64;
        // A batch committed past the log must not be older than anything in it (replay
        // would put older metadata over it): it waits for an empty log.
        let place = if len > log.capacity - HEADER_LEN && log.number == 0 && !log.restart {
            Place::TooLarge
        } else if log.restart || log.pos + len > log.capacity {
            Place::Later
        } else {
            Place::At(log.pos)
        };
        match place {
            Place::At(pos) => {
                log.pos += len;
                log.number += 1;
                let (file, buf) = (log.file.clone(), log.dma(&bytes));
                log.appending = true;
                self.after(async move { file.write_at(buf, pos).await }, move |s, r| {
                    let r = match r {
                        Ok(n) if n as u64 == len => Ok(()),
                        Ok(n) => Err(StoreError::Unavailable(format!("commit log: short write ({n} of {len} bytes)"))),
                        Err(e) => Err(StoreError::Unavailable(format!("commit log: {e}"))),
                    };
                    s.on_logged(writes, r)
                });
            }
            Place::Later => {
                // The commit stays in flight: appended after the checkpoint.
                log.restart = true;
                log.held = Some(writes);
                self.checkpoint();
            }
            Place::TooLarge => {
                // Rare (a huge group's metadata in a small log): commit it durably to the
                // store itself. The log is empty and everything before it applied.
                self.stats().log_bypasses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let store = self.store.clone();
                self.read_store(
                    move || {
                        let r = store.commit(&writes);
                        Ok((writes, r))
                    },
                    move |s, r| match r {
                        Ok((writes, r)) => s.on_committed(&writes, r),
                        Err(e) => s.on_committed(&[], Err(e)),
                    },
                );
            }
        }
    }

    /// Starts a checkpoint that empties the log (at the end of a drain, once idle).
    pub(crate) fn empty_log_for_exit(&mut self) {
        if let Some(log) = self.log.as_mut() {
            if !log.restart {
                log.restart = true;
                self.checkpoint();
            }
        }
    }

    /// True while a checkpoint must run before the next append (started or continued here).
    pub(crate) fn log_blocked(&mut self) -> bool {
        match &self.log {
            Some(log) if log.restart || log.checkpointing => {
                self.checkpoint();
                true
            }
            _ => false,
        }
    }

    fn on_logged(&mut self, writes: Vec<Write>, r: Result<(), StoreError>) {
        let ok = r.is_ok();
        if let Some(log) = self.log.as_mut() {
            log.appending = false;
            if ok {
                // Counted before the acks go out, so a read asked for after them waits
                // for these writes to reach the store.
                log.appended += 1;
            } else {
                // Whatever reached the disk of this record must never be read back after
                // a later record: the next append starts a new generation.
                log.restart = true;
            }
        }
        self.on_committed(&writes, r);
        if let (true, Some(log)) = (ok, self.log.as_mut()) {
            log.pending.extend(writes);
        }
        self.kick_apply(false);
    }

    /// Hands logged writes to the store when enough wait, when they have waited
    /// [`APPLY_DELAY`], or at once when `now`, a read or a checkpoint needs them.
    pub(crate) fn kick_apply(&mut self, now: bool) {
        let Some(log) = self.log.as_mut() else { return };
        if log.applying || log.pending.is_empty() || log.apply_backoff {
            return;
        }
        let urgent = now || !log.reads.is_empty() || log.checkpointing || log.pending.len() >= APPLY_BATCH;
        if !urgent {
            if !log.apply_timer {
                log.apply_timer = true;
                self.after(glommio::timer::sleep(APPLY_DELAY), |s, ()| {
                    if let Some(log) = s.log.as_mut() {
                        log.apply_timer = false;
                    }
                    s.kick_apply(true);
                });
            }
            return;
        }
        log.applying = true;
        let writes = std::mem::take(&mut log.pending);
        let upto = log.appended;
        let store = self.store.clone();
        self.blocking(
            move || {
                let r = store.apply(&writes);
                (writes, r)
            },
            move |s, (writes, r)| s.on_applied(upto, writes, r),
        );
    }

    fn on_applied(&mut self, upto: u64, writes: Vec<Write>, r: Result<(), StoreError>) {
        let Some(log) = self.log.as_mut() else { return };
        log.applying = false;
        if let Err(e) = r {
            return self.on_apply_failed(writes, &e);
        }
        log.applied = upto;
        log.apply_failures = 0;
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut log.reads).into_iter().partition(|(n, _)| *n <= upto);
        log.reads = wait;
        self.stats().store_applies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (_, f) in ready {
            f(self, Ok(()));
        }
        self.checkpoint();
        self.kick_apply(false);
    }

    /// The store refused logged writes. They stay durable in the log and first in line;
    /// what waits on them (reads, a checkpoint's queued sends) is answered `internal`
    /// now, and the apply is tried again after [`APPLY_RETRY`]. An engine that stays
    /// broken (fjall poisons itself after a failed journal write) gets the log replayed
    /// into it on the next start.
    fn on_apply_failed(&mut self, writes: Vec<Write>, e: &StoreError) {
        let Some(log) = self.log.as_mut() else { return };
        let later = std::mem::replace(&mut log.pending, writes);
        log.pending.extend(later);
        log.apply_failures += 1;
        if log.apply_failure_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            log.apply_failure_logged = Some(std::time::Instant::now());
            let n = log.apply_failures;
            tracing::error!(shard = self.me.0, failures = n, "applying logged writes to the store failed: {e}");
        }
        let reads = std::mem::take(&mut log.reads);
        // A checkpoint cannot finish without the store: refuse what waits for it
        // rather than keep the senders waiting (the next send tries again).
        let stuck = std::mem::replace(&mut log.checkpointing, false);
        log.apply_backoff = true;
        for (_, f) in reads {
            f(self, Err(StoreError::Unavailable(e.to_string())));
        }
        if stuck {
            self.refuse_queued(e);
        }
        self.after(glommio::timer::sleep(APPLY_RETRY), |s, ()| {
            if let Some(log) = s.log.as_mut() {
                log.apply_backoff = false;
            }
            s.kick_apply(true);
        });
    }

    /// Runs the store read `job` on the blocking pool once the store holds every write
    /// logged so far, then `done` on this shard.
    pub(crate) fn read_store<T: std::marker::Send + 'static>(
        &mut self,
        job: impl FnOnce() -> Result<T, StoreError> + std::marker::Send + 'static,
        done: impl FnOnce(&mut Shard, Result<T, StoreError>) + 'static,
    ) {
        let Some(log) = self.log.as_mut().filter(|l| l.applied < l.appended) else {
            return self.blocking(job, done);
        };
        let after: AfterApplied = Box::new(move |s, r| match r {
            Ok(()) => s.blocking(job, done),
            Err(e) => done(s, Err(e)),
        });
        log.reads.push((log.appended, after));
        self.kick_apply(true);
    }

    /// Starts or continues a checkpoint that `restart` asks for: once no append runs and
    /// the store has applied everything, flush the store and write a new header.
    pub(crate) fn checkpoint(&mut self) {
        let Some(log) = self.log.as_mut() else { return };
        if !log.restart || log.flushing || log.appending {
            return;
        }
        log.checkpointing = true;
        if log.applied < log.appended {
            return self.kick_apply(true);
        }
        let generation = match new_generation() {
            Ok(g) => g,
            Err(e) => return self.on_checkpointed(0, Err(e)),
        };
        log.flushing = true;
        let (file, header) = (log.file.clone(), log.dma(&encode_header(generation)));
        let store = self.store.clone();
        let work = async move {
            glommio::executor().spawn_blocking(move || store.flush()).await?;
            match file.write_at(header, 0).await {
                Ok(n) if n as u64 == HEADER_LEN => Ok(()),
                Ok(n) => Err(StoreError::Unavailable(format!("commit log: short header write ({n} bytes)"))),
                Err(e) => Err(StoreError::Unavailable(format!("commit log: {e}"))),
            }
        };
        self.after(work, move |s, r| s.on_checkpointed(generation, r));
    }

    fn on_checkpointed(&mut self, generation: u64, r: Result<(), StoreError>) {
        let Some(log) = self.log.as_mut() else { return };
        log.checkpointing = false;
        log.flushing = false;
        match r {
            Ok(()) => {
                log.generation = generation;
                log.number = 0;
                log.pos = HEADER_LEN;
                log.restart = false;
                let held = log.held.take();
                self.stats().log_checkpoints.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(writes) = held {
                    self.log_commit(writes);
                }
            }
            Err(e) => {
                // Nothing queued can be made durable now: fail it (retryable); the next
                // send tries the checkpoint again.
                tracing::error!(shard = self.me.0, "commit log checkpoint failed: {e}");
                self.refuse_queued(&e);
            }
        }
    }

    /// Answers the held batch and every queued send `internal` (retryable): nothing can
    /// be made durable now.
    fn refuse_queued(&mut self, e: &StoreError) {
        if let Some(held) = self.log.as_mut().and_then(|l| l.held.take()) {
            self.on_committed(&held, Err(StoreError::Unavailable(e.to_string())));
        }
        self.core.refuse_queued(e, shard::ids::now_ms());
    }
}
